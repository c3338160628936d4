"""When each device of a rolling run may start: batches, an error budget, canaries (no I/O).

Operators roll a change out a few devices at a time and stop when too many go
wrong.  The options follow the tools they know:

- ``batch`` is Ansible's ``serial`` ("Controlling playbook execution:
  strategies and more"): a number of devices, or a percentage of the targets;
  each batch finishes before the next starts (concurrency still applies inside
  a batch).  A percentage is rounded up, at least 1 (Ansible's ``pct_to_int``
  rounds down): 25 % of 10 devices is batches of 3, never more batches than asked.
- ``max_errors`` is AWS Systems Manager Run Command's ``MaxErrors`` ("Using
  rate controls") and Ansible's ``max_fail_percentage``: a number, or a
  percentage of the targets (rounded down).  Once MORE rows than that have
  failed, no new device is started; devices already running finish.
  ``max_errors=0`` stops after the first failure, as ``MaxErrors`` 0 does.
- ``canary=N``: the first N targets run first, as a batch of their own; if any
  of them fails, no other device starts.

A row "failed" when its status is anything but ``ok``: ``error``, ``timeout``,
``offline``, ``auth_failed``, ``disconnected`` and ``cancelled`` too (a device
whose change was interrupted is in an unknown state, which is what a budget
guards against).  Devices that never started get a ``skipped`` row whose
``error`` is :attr:`Rollout.skip_reason`.

:class:`Rollout` is a small state machine; the fleet asks it which devices may
start (:meth:`~Rollout.ready`, :meth:`~Rollout.may_start`) and tells it what
started and how each finished (:meth:`~Rollout.start`, :meth:`~Rollout.finish`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ..client.result import ResultStatus

__all__ = [
    "Rollout",
    "batch_option",
    "canary_option",
    "max_errors_option",
    "parse_batch",
    "parse_canary",
    "parse_max_errors",
]

_NUMBER = re.compile(r"\d+")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def _amount(value: object) -> tuple[int | None, float | None]:
    """``3`` or ``"3"`` → (3, None); ``"25%"`` → (None, 25.0); anything else → (None, None)."""
    if isinstance(value, bool):
        return None, None
    if isinstance(value, int):
        return value, None
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return int(text), None
        if m := _PERCENT.fullmatch(text):
            return None, float(m.group(1))
    return None, None


def parse_batch(value: int | str, targets: int) -> int:
    """Devices per batch: ``N`` (at least 1), or ``"P%"`` of ``targets`` rounded up, at least 1."""
    number, percent = _amount(value)
    if number is not None and number >= 1:
        return number
    if percent is not None and 0 < percent <= 100:
        return max(1, math.ceil(targets * percent / 100))
    raise ValueError(f"batch must be a positive number or a percentage like 25% (not {str(value)!r})")


def parse_max_errors(value: int | str, targets: int) -> int:
    """Failed rows allowed before no new device starts: ``N`` (0 or more), or ``"P%"`` of ``targets`` rounded down."""
    number, percent = _amount(value)
    if number is not None and number >= 0:
        return number
    if percent is not None and 0 <= percent <= 100:
        return math.floor(targets * percent / 100)
    raise ValueError(f"max_errors must be a number (0 or more) or a percentage like 10% (not {str(value)!r})")


def parse_canary(value: int | str) -> int:
    """Canary devices: a positive number."""
    number, _ = _amount(value)
    if number is not None and number >= 1:
        return number
    raise ValueError(f"canary must be a positive number of devices (not {str(value)!r})")


def _as_given(value: int | str) -> int | str:
    """A checked option as the fleet takes it: a number as ``int``, a percentage as its text."""
    number, _ = _amount(value)
    return number if number is not None else str(value).strip()


def batch_option(value: int | str) -> int | str:
    """``--batch`` checked before any device starts (:func:`parse_batch`'s ValueError when wrong)."""
    parse_batch(value, 1)
    return _as_given(value)


def max_errors_option(value: int | str) -> int | str:
    """``--max-errors`` checked before any device starts (:func:`parse_max_errors`'s ValueError when wrong)."""
    parse_max_errors(value, 1)
    return _as_given(value)


def canary_option(value: int | str) -> int:
    """``--canary`` checked before any device starts (:func:`parse_canary`'s ValueError when wrong)."""
    return parse_canary(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _names(ids: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


class Rollout:
    """Which of ``targets`` (in this order) may start now, given what has started and finished.

    With no option every target is in one batch and nothing ever stops the run.
    Bad options raise :class:`ValueError` saying what is wanted.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        batch: int | str | None = None,
        max_errors: int | str | None = None,
        canary: int | str | None = None,
    ) -> None:
        ids = list(dict.fromkeys(targets))
        self.targets = ids
        self.max_errors_spec = None if max_errors is None else str(max_errors).strip()
        self.max_errors = None if max_errors is None else parse_max_errors(max_errors, len(ids))
        self.canary = 0 if canary is None else min(parse_canary(canary), len(ids))
        size = len(ids) if batch is None else parse_batch(batch, len(ids))
        self.batch = size
        canaries, rest = ids[: self.canary], ids[self.canary :]
        batches = [canaries] if canaries else []
        batches += [rest[i : i + size] for i in range(0, len(rest), max(size, 1))]
        self.batches: tuple[tuple[str, ...], ...] = tuple(tuple(b) for b in batches)
        self._batch_of = {d: n for n, b in enumerate(self.batches) for d in b}
        self._left = [len(b) for b in self.batches]  # devices of each batch not finished yet
        self._open = 0  # the first batch with one left (len(batches): all done); a scan per call was O(N²)
        self._skip_finished_batches()
        self.started: set[str] = set()
        self.finished: dict[str, str] = {}  # device id → status
        self.failed: list[str] = []  # in the order they finished
        self._failed_canaries: list[str] = []  # kept by finish(): stop_reason is asked at every start

    @property
    def active(self) -> bool:
        """Do the options change anything (batches, a budget, canaries)?"""
        return len(self.batches) > 1 or self.max_errors is not None

    # -- the policy -----------------------------------------------------------

    @property
    def stop_reason(self) -> str | None:
        """Why no new device may start (a canary failed, the budget is spent), or None."""
        canaries = self._failed_canaries
        if canaries:
            if len(canaries) == 1:
                return f"the canary {canaries[0]} failed"
            return f"the canaries {_names(canaries)} failed"
        if self.max_errors is not None and len(self.failed) > self.max_errors:
            limit = str(self.max_errors)
            if self.max_errors_spec is not None and self.max_errors_spec.endswith("%"):
                limit = f"{self.max_errors_spec} ({self.max_errors} of {len(self.targets)} devices)"
            return f"{_plural(len(self.failed), 'device')} failed, more than --max-errors {limit}"
        return None

    @property
    def skip_reason(self) -> str:
        """The ``error`` of a device that never started: ``not started: the canary device-01 failed``."""
        return f"not started: {self.stop_reason or 'the run stopped'}"

    def _current(self) -> int | None:
        """The first batch with a device not finished yet (None: all done)."""
        return self._open if self._open < len(self.batches) else None

    def ready(self) -> list[str]:
        """The devices that may start now, in order: the current batch's not yet started; none once stopped."""
        current = self._current()
        if current is None or self.stop_reason is not None:
            return []
        return [d for d in self.batches[current] if d not in self.started]

    def may_start(self, device_id: str) -> bool:
        """May ``device_id`` start now?  (Asked again at the moment it would start: the budget may be spent.)"""
        return (
            device_id not in self.started
            and self.stop_reason is None
            and self._batch_of.get(device_id) == self._current()
        )

    def start(self, device_id: str) -> None:
        """``device_id`` has started."""
        if not self.may_start(device_id):
            raise ValueError(f"{device_id} may not start now: ask may_start() first")
        self.started.add(device_id)

    def finish(self, device_id: str, status: str) -> None:
        """``device_id`` has finished with ``status``; anything but ``ok`` counts against the budget."""
        if device_id not in self.started or device_id in self.finished:
            raise ValueError(f"{device_id} is not running: start() it before finish()")
        self.finished[device_id] = status
        self._left[self._batch_of[device_id]] -= 1
        self._skip_finished_batches()
        if status != ResultStatus.OK:
            self.failed.append(device_id)
            if self._is_canary(device_id):
                self._failed_canaries.append(device_id)

    def _skip_finished_batches(self) -> None:
        while self._open < len(self.batches) and self._left[self._open] == 0:
            self._open += 1

    def not_started(self) -> list[str]:
        """The targets that have not started, in order (once the run is over: the ``skipped`` ones)."""
        return [d for d in self.targets if d not in self.started]

    def _is_canary(self, device_id: str) -> bool:
        return self.canary > 0 and self._batch_of.get(device_id) == 0

"""Which devices printed something else: against a baseline (:class:`Drift`) or the fleet (:class:`Outliers`).

After a run the fleet question is "which devices are not like the others?".
:meth:`Results.diff <tunnelnb.fleet.results.Results.diff>` answers it against a reference (a
device of the run, or a known-good text) with a unified diff per device;
:meth:`Results.outliers <tunnelnb.fleet.results.Results.outliers>` against the fleet itself:
devices whose output few others share.  Outputs are compared the way ``Results.groups()``
compares them (the caller passes its ``normalise``, so this module and :mod:`.results` do
not import each other), after removing what the caller says to ``ignore`` (timestamps, pids).
Every row of the run keeps a row: a device whose command failed is "not compared", with its
status and reason, never left out.  How the two reports show themselves (escaped: device
output is untrusted) is :mod:`.driftview`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..client.result import CommandResult, ResultStatus
from .driftview import FAILED_COLUMNS, NOT_COMPARED_STYLE, SAME_STYLES, Report, cell, plural, some
from .text import clip, one_line

__all__ = [
    "DEFAULT_SHARE",
    "DRIFT_COLUMNS",
    "FAILED_COLUMNS",
    "OUTLIER_COLUMNS",
    "SMALL_FLEET",
    "Drift",
    "IgnorePatterns",
    "Outliers",
    "comparable",
    "compile_ignore",
    "diff_results",
    "find_outliers",
]

Normalise = Callable[[str | None], str]
IgnorePatterns = str | re.Pattern[str] | Iterable[str | re.Pattern[str]] | None

DRIFT_COLUMNS = ("device_id", "status", "same", "lines_added", "lines_removed", "diff")
OUTLIER_COLUMNS = ("device_id", "group", "group_size", "share", "first_line", "diff")
_OUTLIER_DTYPES = tuple(zip(OUTLIER_COLUMNS, (str, "int64", "int64", "float64", str, str), strict=True))

#: Default outlier rule: a group holding at most this share of the ok devices (and smaller than the largest) …
DEFAULT_SHARE = 0.10
#: … or, in a fleet of fewer ok devices than this, any group smaller than the largest.  Below 20
#: devices 10 % is less than two, so a share rule could flag only lone devices (none below 10),
#: while an operator of a small fleet asks "who is not like the majority?".
SMALL_FLEET = 20

BASELINE = "baseline"
"""The ``diff`` cell of the baseline device's own row."""

_DIGITS = re.compile(r"\d+")


# -- comparing ------------------------------------------------------------------------------


def compile_ignore(ignore: IgnorePatterns) -> tuple[re.Pattern[str], ...]:
    """The ``ignore`` argument as compiled patterns: one regex (string or compiled), a list of them, or None."""
    if ignore is None:
        return ()
    items = [ignore] if isinstance(ignore, str | re.Pattern) else list(ignore)
    patterns = []
    for item in items:
        if isinstance(item, re.Pattern):
            patterns.append(item)
        elif isinstance(item, str):
            try:
                patterns.append(re.compile(item))
            except re.error as exc:
                raise ValueError(
                    f"ignore pattern {item!r} is not a valid regular expression ({exc}): "
                    "fix it, or quote it with re.escape()."
                ) from None
        else:
            raise TypeError(f"ignore takes regular expressions (strings), not {type(item).__name__}: pass r'pid=\\d+'.")
    return tuple(patterns)


def comparable(text: str | None, normalise: Normalise, patterns: Sequence[re.Pattern[str]] = ()) -> str:
    """``text`` as compared: ``normalise``-d, then every match of ``patterns`` removed from each line.

    A line that held nothing but ignored text is dropped (``r"^Last login:.*"`` drops the
    line; ``r"\\d+ ms"`` only the duration); blank lines the device printed stay.
    """
    base = normalise(text)
    if not patterns:
        return base
    kept = []
    for line in base.split("\n"):
        cut = line
        for pattern in patterns:
            cut = pattern.sub("", cut)
        cut = cut.rstrip()
        if cut or not line:
            kept.append(cut)
    return normalise("\n".join(kept))


def _lines(text: str) -> list[str]:
    return text.split("\n") if text else []


def _unified(reference: str, text: str, fromfile: str, tofile: str, context: int) -> tuple[str, int, int]:
    """The unified diff from ``reference`` to ``text`` ("" when equal), lines added, lines removed."""
    a, b = _lines(reference), _lines(text)
    added = removed = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        if tag in ("replace", "delete"):
            removed += i2 - i1
        if tag in ("replace", "insert"):
            added += j2 - j1
    diff = "\n".join(difflib.unified_diff(a, b, fromfile, tofile, n=context, lineterm=""))
    return diff, added, removed


def _failure(row: CommandResult) -> str:
    """``offline: device device-12 is offline``, ``error (exit 2): …``: why a row has no output to compare."""
    text = row.status or "no status"
    if row.exit_code is not None:
        text += f" (exit {row.exit_code})"
    return text + (f": {one_line(row.error, 300)}" if row.error else "")


@dataclass(frozen=True)
class _Group:
    output: str
    devices: tuple[str, ...]


def _outputs(
    rows: Sequence[CommandResult], normalise: Normalise, patterns: Sequence[re.Pattern[str]]
) -> list[str | None]:
    """Each row's comparable output; None for a row that is not ok (its output is not the device's answer)."""
    return [comparable(r.stdout, normalise, patterns) if r.status == ResultStatus.OK else None for r in rows]


def _grouped(rows: Sequence[CommandResult], outputs: Sequence[str | None]) -> list[_Group]:
    """The ok rows grouped by comparable output, biggest first (ties in order of appearance)."""
    found: dict[str, list[str]] = {}
    for row, output in zip(rows, outputs, strict=True):
        if output is not None:
            found.setdefault(output, []).append(row.device_id)
    ordered = sorted(found.items(), key=lambda item: -len(item[1]))
    return [_Group(output, tuple(devices)) for output, devices in ordered]


def _frame(**columns: tuple[Sequence[Any], Any]) -> pd.DataFrame:
    """A DataFrame from ``name=(values, dtype)``: the dtypes hold even with no rows."""
    return pd.DataFrame({name: pd.Series(list(values), dtype=dtype) for name, (values, dtype) in columns.items()})


def _looks_like_device_id(text: str, ids: Sequence[str]) -> bool:
    """One word shaped like these results' ids but for its digits (``device-99`` among ``device-01`` …)."""
    if not text or any(c.isspace() for c in text):
        return False
    shape = _DIGITS.sub("0", text)
    return any(_DIGITS.sub("0", i) == shape for i in ids)


def _reference(
    rows: Sequence[CommandResult],
    outputs: Sequence[str | None],
    baseline: str | None,
    normalise: Normalise,
    patterns: Sequence[re.Pattern[str]],
) -> tuple[str, str, str | None]:
    """(label, comparable reference text, the baseline device or None) for :func:`diff_results`."""
    if baseline is None:
        groups = _grouped(rows, outputs)
        if not groups:
            raise ValueError(
                "no device ran the command successfully, so there is no majority output to compare with: "
                "pass a baseline device id or the reference text."
            )
        return f"majority ({plural(len(groups[0].devices), 'device')})", groups[0].output, None
    if not isinstance(baseline, str):
        raise TypeError(f"baseline is a device id or the reference text, not {type(baseline).__name__}.")
    ids = list(dict.fromkeys(row.device_id for row in rows))
    if baseline in ids:
        row, output = [(r, o) for r, o in zip(rows, outputs, strict=True) if r.device_id == baseline][-1]
        if output is None:
            raise ValueError(
                f"{baseline} cannot be the baseline, its command did not succeed ({_failure(row)}): "
                "pass a device whose status is ok, or the reference text itself."
            )
        return f"{baseline} (baseline)", output, baseline
    if _looks_like_device_id(baseline, ids):
        raise ValueError(
            f"{baseline} is not in these results: pass one of {some(ids)}, or the reference text itself "
            "(a text ending in a newline is never taken for a device id)."
        )
    return BASELINE, comparable(baseline, normalise, patterns), None


def diff_results(
    rows: Sequence[CommandResult],
    baseline: str | None = None,
    *,
    normalise: Normalise,
    context: int = 3,
    ignore: IgnorePatterns = None,
) -> Drift:
    """Each row's output against a reference: the work of ``Results.diff`` (see it for the arguments)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"context is a number of lines, 0 or more, not {context!r}.")
    patterns = compile_ignore(ignore)
    outputs = _outputs(rows, normalise, patterns)
    label, reference, baseline_id = _reference(rows, outputs, baseline, normalise, patterns)
    cells: list[tuple[bool | None, int | None, int | None, str]] = []
    for row, output in zip(rows, outputs, strict=True):
        if output is None:
            cells.append((None, None, None, f"not compared: {_failure(row)}"))
            continue
        diff, plus, minus = _unified(reference, output, label, row.device_id, context)
        cells.append((not diff, plus, minus, BASELINE if row.device_id == baseline_id else diff))
    frame = _frame(
        device_id=([r.device_id for r in rows], str),
        status=([r.status or "" for r in rows], str),
        same=([c[0] for c in cells], "boolean"),
        lines_added=([c[1] for c in cells], "Int64"),
        lines_removed=([c[2] for c in cells], "Int64"),
        diff=([c[3] for c in cells], str),
    )
    return Drift(frame, _failed(rows), baseline=label, reference=reference)


def _failed(rows: Sequence[CommandResult]) -> pd.DataFrame:
    """The rows that are not ok: :data:`FAILED_COLUMNS`."""
    bad = [r for r in rows if r.status != ResultStatus.OK]
    return _frame(
        device_id=([r.device_id for r in bad], str),
        status=([r.status or "" for r in bad], str),
        exit_code=([r.exit_code for r in bad], "Int64"),
        error=([r.error or "" for r in bad], str),
    )


def _first_line(text: str) -> str:
    return clip(text.partition("\n")[0], 80)


def find_outliers(
    rows: Sequence[CommandResult],
    *,
    normalise: Normalise,
    threshold: float | None = None,
    ignore: IgnorePatterns = None,
) -> Outliers:
    """Devices whose output few others share: the work of ``Results.outliers`` (see it for the arguments)."""
    if threshold is not None and (isinstance(threshold, bool) or not 0 < threshold < 1):
        raise ValueError(f"threshold is a share of the ok devices, between 0 and 1 (0.1 for 10 %), not {threshold!r}.")
    outputs = _outputs(rows, normalise, compile_ignore(ignore))
    groups = _grouped(rows, outputs)
    n = sum(len(g.devices) for g in groups)
    largest = len(groups[0].devices) if groups else 0
    share = DEFAULT_SHARE if threshold is None else threshold

    def is_outlier(size: int) -> bool:
        if size >= largest:  # the majority (or a group as big) is never an outlier
            return False
        return (threshold is None and n < SMALL_FLEET) or size <= share * n + 1e-9

    if threshold is None and n < SMALL_FLEET:
        rule = f"smaller than the largest group (fewer than {SMALL_FLEET} ok devices)"
    else:
        rule = f"smaller than the largest group and at most {share:.0%} of the ok devices"
    majority = groups[0].output if groups else ""
    label = f"majority (group 1, {plural(largest, 'device')})"
    number = {g.output: (k, g) for k, g in enumerate(groups, 1)}
    found = []
    for row, output in zip(rows, outputs, strict=True):
        if output is not None and is_outlier(len(number[output][1].devices)):
            k, group = number[output]
            diff, _, _ = _unified(majority, output, label, row.device_id, 3)
            found.append((row.device_id, k, len(group.devices), len(group.devices) / n, _first_line(output), diff))
    frame = _frame(**{name: ([f[i] for f in found], dtype) for i, (name, dtype) in enumerate(_OUTLIER_DTYPES)})
    table = _frame(
        group=(range(1, len(groups) + 1), "int64"),
        size=([len(g.devices) for g in groups], "int64"),
        share=([len(g.devices) / n for g in groups], "float64"),
        outlier=([is_outlier(len(g.devices)) for g in groups], bool),
        first_line=([_first_line(g.output) for g in groups], str),
        devices=([list(g.devices) for g in groups], object),
    )
    return Outliers(frame, _failed(rows), groups=table, majority=majority, rule=rule)


class Drift(Report):
    """Each device's output against a baseline, made by ``Results.diff``.

    :attr:`df` has one row per result, :data:`DRIFT_COLUMNS`: ``same`` is a nullable
    boolean (``<NA>`` when the row failed: not compared, its ``diff`` says why),
    ``lines_added``/``lines_removed`` nullable integers, ``diff`` the unified diff
    ("" when the same, ``baseline`` on the baseline device's own row).
    """

    kind = "Drift"
    lists_failed = False

    def __init__(self, frame: pd.DataFrame, failed: pd.DataFrame, *, baseline: str, reference: str) -> None:
        super().__init__(frame, failed)
        self.baseline = baseline
        """What outputs were compared with: ``device-01 (baseline)``, ``baseline`` (a text) or ``majority (…)``."""
        self.reference = reference
        """The reference output as compared (normalised, ignored parts removed)."""

    @property
    def differs(self) -> list[str]:
        """The devices whose output differs from the baseline, in order."""
        return [d for d, s in zip(self._df.device_id, self._df.same, strict=True) if s is not pd.NA and not s]

    def summary(self) -> str:
        """``2 of 5 devices differ from device-01 (baseline) · not compared: 1 offline``"""
        compared = plural(int(self._df.same.notna().sum()), "device")
        return f"{len(self.differs)} of {compared} differ from {self.baseline}{self._not_compared()}"

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        rows, styles = [], []
        for r in self._df.itertuples(index=False):
            if r.same is pd.NA:
                word, note, style = "not compared", str(r.diff).removeprefix("not compared: "), NOT_COMPARED_STYLE
            else:
                word, style = ("same" if r.same else "differs"), SAME_STYLES[bool(r.same)]
                note = BASELINE if r.diff == BASELINE else ""
            rows.append([r.device_id, r.status, word, cell(r.lines_added), cell(r.lines_removed), note])
            styles.append(style)
        return ["device_id", "status", "same", "+", "-", "note"], rows, styles

    def _sections(self) -> list[tuple[str, str]]:
        sections = []
        for r in self._df.itertuples(index=False):
            if r.same is not pd.NA and not r.same:
                sections.append((f"{r.device_id}: +{r.lines_added} -{r.lines_removed}", str(r.diff)))
        return sections


class Outliers(Report):
    """Devices whose output few others share, made by ``Results.outliers``.

    :attr:`df` has one row per outlier device, in run order, :data:`OUTLIER_COLUMNS`
    (``diff`` against the majority output); :attr:`groups` every output group of the ok
    devices; :attr:`failed` the rows not compared, so every device is accounted for.
    """

    kind = "Outliers"

    def __init__(
        self, frame: pd.DataFrame, failed: pd.DataFrame, *, groups: pd.DataFrame, majority: str, rule: str
    ) -> None:
        super().__init__(frame, failed)
        self._groups = groups
        self.majority = majority
        """The largest group's output, as compared: what the outliers are diffed against."""
        self.rule = rule
        """When a group is an outlier, in words."""

    @property
    def groups(self) -> pd.DataFrame:
        """The ok devices by output, ``group`` 1 the largest: ``size``, ``share``, ``outlier``, ``first_line``,
        ``devices`` (a copy)."""
        return self._groups.copy()

    @property
    def devices(self) -> list[str]:
        """The outlier devices, in run order."""
        return list(self._df.device_id)

    def summary(self) -> str:
        """``2 outliers among 9 ok devices in 3 groups · not compared: 1 offline · outlier: …``"""
        n = int(self._groups["size"].sum())
        if not n:
            return f"no device ran the command successfully: nothing to compare{self._not_compared()}"
        found = f"{plural(len(self._df), 'outlier')} among {n} ok devices in {plural(len(self._groups), 'group')}"
        return f"{found}{self._not_compared()} · outlier: {self.rule}"

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        rows, styles = [], []
        for g in self._groups.itertuples(index=False):
            rows.append([str(g.group), str(g.size), f"{g.share:.0%}", "yes" if g.outlier else "", g.first_line])
            rows[-1].append(some(g.devices, 10))
            styles.append(SAME_STYLES[False] if g.outlier else "")
        return ["group", "size", "share", "outlier", "first_line", "devices"], rows, styles

    def _sections(self) -> list[tuple[str, str]]:
        sections = []
        for g in self._groups[self._groups.outlier].itertuples(index=False):
            devices = [d for d in self.devices if d in set(g.devices)]
            sections.append((f"group {g.group} ({g.share:.0%}): {some(devices, 10)}", self.diff_of(devices[0])))
        return sections

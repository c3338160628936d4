"""One device's part of a fan-out: a session from the pool, logged in, the work, and always a row.

Every fleet operation that touches devices (:meth:`Fleet.run`, :meth:`Fleet.login`,
:meth:`Fleet.each` and what builds on it, such as file transfers) comes through
:func:`run_device`, so they all fail the same way: an offline device is
``offline``, a refused login ``auth_failed``, a dropped session ``disconnected``,
and a bug in tunnelnb costs that one row, never the table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..client.backend import PlatformBackend
from ..client.result import CommandResult, ResultStatus
from ..client.session import DeviceSession
from ..errors import AuthFailed, DeviceOffline, PlatformError, TunnelnbError
from .exitcodes import apply_ok_codes
from .logins import Logins, keep_working_login
from .partial import Partial, partial_row
from .pool import SessionPool
from .results import Results

__all__ = ["RECORDED", "RUNNING_COMMAND", "DeviceJob", "DeviceWork", "FleetParts", "command_work", "run_device"]

log = logging.getLogger(__name__)

#: What a fleet does on one device once its session is logged in: returns the device's row.
DeviceWork = Callable[[DeviceSession], Awaitable[CommandResult]]

#: ``on_output(device_id, text)``: a device's output as it arrives.
OutputCallback = Callable[[str, str], None]

#: The user's command a device's task is running (set by the fleet per device task), so
#: that a backend that cannot answer (a replay whose cassette lacks it) can name it.
RUNNING_COMMAND: ContextVar[str | None] = ContextVar("tunnelnb_running_command", default=None)

#: Where a run's table goes besides the history: ``None`` for ``fleet.last_results``
#: (the foreground's, what an interrupted cell reports), a list for a background job's
#: task (:mod:`tunnelnb.fleet.jobs`), which must not replace the foreground's.
RECORDED: ContextVar[list[Results] | None] = ContextVar("tunnelnb_recorded", default=None)


@dataclass
class FleetParts:
    """What a device's part of a run uses of its fleet: the fleet hands over its own pieces."""

    backend: Callable[[], PlatformBackend]  # the fleet's backend now (a cassette may swap it between runs)
    pool: SessionPool
    logins: Logins
    running: dict[str, str]  # device id → the label of what it is doing now (the dashboard's "running")
    last: dict[str, CommandResult]  # device id → its last command's row (the dashboard's "last status")
    changed: Callable[[str | None], None]  # tells the fleet's watchers
    set_online: Callable[[str, bool], None]  # what a run learnt of a device's presence
    close: Callable[[list[str]], Awaitable[None]]


@dataclass
class DeviceJob:
    """What every device of one fan-out does: ``work`` (None: log in only) under ``label``, within ``timeout``."""

    label: str
    work: DeviceWork | None
    timeout: float
    progress: dict[str, Partial] = field(default_factory=dict)


def command_work(
    command: str,
    timeout: float,
    on_output: OutputCallback | None,
    ok_codes: tuple[int, ...],
    verify: bool,
    progress: dict[str, Partial],
) -> DeviceWork:
    """The work of :meth:`Fleet.run`: the command in the device's shell, its output kept for a cancelled row."""

    async def work(session: DeviceSession) -> CommandResult:
        device_id = session.device_id
        done = progress[device_id]

        def callback(text: str) -> None:
            done.chunks.append(text)
            if on_output is not None:
                on_output(device_id, text)

        result = await session.run(command, timeout=timeout, on_output=callback, verify=verify)
        return apply_ok_codes(result, ok_codes)

    return work


async def run_device(parts: FleetParts, job: DeviceJob, device_id: str) -> CommandResult:
    """The device's row for ``job``, with the fleet's bookkeeping (running, last result, online) around it."""
    try:
        result = await _device_row(parts, job, device_id)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug must cost one row, never the table
        log.exception("device %s: the run failed", device_id)
        error = f"tunnelnb failed on this device ({type(exc).__name__}: {exc}); the next run starts afresh"
        result = partial_row(
            device_id, job.label, ResultStatus.DISCONNECTED, error, job.progress.get(device_id), datetime.now(UTC)
        )
        await parts.close([device_id])
    if job.work is not None:
        parts.last[device_id] = result
    if result.status == ResultStatus.OFFLINE:
        parts.set_online(device_id, False)
    elif result.status in (ResultStatus.OK, ResultStatus.ERROR, ResultStatus.TIMEOUT):
        parts.set_online(device_id, True)
    parts.changed(device_id)
    return result


async def _device_row(parts: FleetParts, job: DeviceJob, device_id: str) -> CommandResult:
    label, timeout = job.label, job.timeout
    RUNNING_COMMAND.set(label)  # this device's task only: names the command if a replay has no answer
    clock = parts.backend().clock_for(device_id)
    started_at = clock.now()
    t0 = clock.monotonic()
    job.progress[device_id] = Partial(clock, t0, started_at)

    def row(status: str, error: str) -> CommandResult:
        return CommandResult(device_id, label, status, None, "", clock.monotonic() - t0, started_at, error)

    try:
        session = await parts.pool.acquire(device_id, timeout)
    except asyncio.CancelledError:
        raise
    except DeviceOffline as exc:
        return row(ResultStatus.OFFLINE, str(exc))
    except (TunnelnbError, PlatformError) as exc:
        return row(ResultStatus.DISCONNECTED, str(exc))
    parts.running[device_id] = label  # after the wait for a run that holds the device
    parts.changed(device_id)
    try:
        logins = parts.logins
        changed = logins.take_changed(device_id)
        if changed or not session.logged_in:
            credentials = logins.get(device_id)
            if credentials is None:
                return row(
                    ResultStatus.AUTH_FAILED,
                    "no login for this device: fleet.login(targets, user=..., password_env=...)",
                )
            was_working = session.logged_in
            try:
                await session.login(*credentials, timeout=min(timeout, 30.0))
                logins.worked(device_id, credentials)
            except AuthFailed as exc:
                if changed and was_working:
                    return row(ResultStatus.AUTH_FAILED, await keep_working_login(logins, session, exc))
                return row(ResultStatus.AUTH_FAILED, str(exc))
            except DeviceOffline as exc:
                return row(ResultStatus.OFFLINE, str(exc))
            except TunnelnbError as exc:  # LoginError, or the session closed or dropped meanwhile
                return row(ResultStatus.DISCONNECTED, str(exc))
        if job.work is None:
            return CommandResult(device_id, label, ResultStatus.OK, 0, "", clock.monotonic() - t0, started_at, "")
        try:
            result = await job.work(session)
        except asyncio.CancelledError:
            raise
        except TunnelnbError as exc:
            return row(ResultStatus.DISCONNECTED, str(exc))
        if not isinstance(result, CommandResult):
            raise TypeError(f"the work of {label!r} returned {type(result).__name__}, not a CommandResult")
        # The row counts the device's whole part of the run: a new tunnel and a login included.
        return dataclasses.replace(
            result, device_id=device_id, command=label, started_at=started_at, duration_s=clock.monotonic() - t0
        )
    finally:
        parts.running.pop(device_id, None)
        await parts.pool.release(device_id)

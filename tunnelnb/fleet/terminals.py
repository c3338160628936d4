"""An interactive terminal to one device of a fleet: :func:`open_terminal`.

The device's session comes from the fleet's pool and logs in with the
fleet's login for it, as a run's would (:meth:`Fleet.each`), so a device that is
offline, refuses the login or is busy with another run says so the same way;
the attempt is a row in :attr:`Fleet.history` (command ``shell``), never in
``last_results``.  Once attached the session keeps its place in the pool (it is
not evicted for another device) and runs on that device are ``skipped`` rows
until the terminal detaches (:mod:`tunnelnb.client.terminal`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..client.result import CommandResult, ResultStatus
from ..client.session import DeviceSession
from ..client.terminal import Terminal
from ..errors import TargetError, TerminalError
from ..protocol.shell import PTY_COLS, PTY_ROWS
from .devicerun import RECORDED
from .results import Results

if TYPE_CHECKING:
    from .fleet import Fleet

__all__ = ["SHELL_LABEL", "open_terminal"]

#: Tasks waiting for a terminal to end (held here so they are not collected).
_WATCHERS: set[asyncio.Task[None]] = set()

#: The ``command`` of a terminal's row in the history.
SHELL_LABEL = "shell"


async def open_terminal(
    fleet: Fleet,
    device_id: str,
    on_output: Callable[[bytes], None],
    *,
    on_note: Callable[[str], None] | None = None,
    rows: int = PTY_ROWS,
    cols: int = PTY_COLS,
    timeout: float = 30.0,
) -> Terminal:
    """Attach a terminal to ``device_id``'s shell; :class:`TerminalError` (one sentence, ``.status``) if it cannot be.

    ``on_output(data)`` gets the device's terminal output as bytes; ``on_note(text)``
    one line when the link is lost, comes back or the terminal ends.
    """
    if fleet.api.recording_frames:
        raise TerminalError(
            "a cassette recording is on (%tunnel record): it would keep every key typed in the terminal, "
            "passwords at prompts included; stop it first (%tunnel record --stop)",
            "error",
        )
    try:
        ids = fleet.select([device_id]) if device_id else []
    except TargetError as exc:
        raise TerminalError(str(exc), "error") from None
    if len(ids) != 1:
        raise TerminalError(f"{device_id!r} is not one device: a terminal goes to one device id", "error")
    attached: list[Terminal] = []

    async def attach(session: DeviceSession) -> CommandResult:
        def row(status: str, error: str = "") -> CommandResult:
            return CommandResult(device_id, SHELL_LABEL, status, None, "", 0.0, datetime.now(UTC), error)

        try:
            terminal = await session.attach(on_output, on_note=on_note, rows=rows, cols=cols, timeout=timeout)
        except TerminalError as exc:
            return row(exc.status, str(exc))
        attached.append(terminal)
        return row(ResultStatus.OK)

    recorded: list[Results] = []
    token = RECORDED.set(recorded)  # the history has the row; last_results stays the last run's
    try:
        results = await fleet.each(SHELL_LABEL, ids, attach, timeout=timeout)
    finally:
        RECORDED.reset(token)
    if attached:
        terminal = attached[0]
        task = asyncio.ensure_future(_free_slot_when_done(fleet, terminal))
        _WATCHERS.add(task)
        task.add_done_callback(_WATCHERS.discard)
        return terminal
    row = results[ids[0]]
    raise TerminalError(f"no terminal to {device_id}: {row.status}: {row.error or 'no reason given'}", row.status)


async def _free_slot_when_done(fleet: Fleet, terminal: Terminal) -> None:
    """An attached session keeps its pool slot; once the terminal ends, a run waiting for a slot may take it."""
    await terminal.wait_closed()
    await fleet._pool.wake()

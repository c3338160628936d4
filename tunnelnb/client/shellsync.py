"""Quietening a freshly logged-in shell: the one login-and-sync script.

Used by a live :class:`~tunnelnb.client.session.DeviceSession` after ``connect``
and after a Ctrl-C, and by a replay going live (:mod:`tunnelnb.cassette.golive`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..protocol.shell import Finished, Output, command_script, setup_script
from .clock import Clock

__all__ = ["ShellEvents", "sync_shell"]

#: What a running command's parser hands the waiting coroutine: output, the end, or a failure.
ShellEvents = asyncio.Queue[Output | Finished | BaseException]


async def sync_shell(
    send_text: Callable[[str], Awaitable[None]], events: ShellEvents, marker: str, clock: Clock, deadline: float
) -> None:
    """Quieten the shell and wait until a framed no-op comes back.

    Early input may be lost (a C SDK device answers ``connect_response`` before
    its shell exists), so the same no-op is typed again now and then, with the
    wait doubling up to 4 s; it keeps one marker, so a slow first answer still
    counts.  ``events`` gets the no-op's parser events; a failure put there is
    raised.  :class:`TimeoutError` at ``deadline`` (read from ``clock``).
    """
    script = setup_script() + command_script(marker, "true")
    wait = 0.5
    while True:
        await send_text(script)
        try:
            async with clock.timeout_at(min(deadline, clock.monotonic() + wait)):
                while not isinstance(event := await events.get(), Finished):
                    if isinstance(event, BaseException):
                        raise event
                return
        except TimeoutError:
            if clock.monotonic() >= deadline:
                raise
        wait = min(wait * 2, 4.0)

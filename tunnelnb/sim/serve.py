"""The ``tunnelnb sim`` command: a simulated fleet that runs until SIGINT or SIGTERM.

Kept apart from :mod:`tunnelnb.sim.fleet` because it is the process's side of it
(signals, what the operator reads), which :mod:`tunnelnb.cli` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from ..errors import TunnelnbError
from .fleet import SimulatedFleet
from .workers import ShardedFleet

__all__ = ["serve"]


async def serve(
    *,
    stop: asyncio.Event | None = None,
    out: Callable[[str], None] | None = None,
    workers: int = 1,
    **kwargs: Any,
) -> None:
    """Run a simulated fleet until SIGINT or SIGTERM (the ``tunnelnb sim`` command).

    ``kwargs`` are :class:`SimulatedFleet`'s (``platform_url``, ``api_token``,
    ``devices``, …); with ``workers`` > 1 they are :class:`ShardedFleet`'s, and the
    devices run in that many processes (a worker that dies stops them all and raises
    :class:`~tunnelnb.errors.TunnelnbError`).  Prints a summary once every device is
    up; with no ``password`` it makes one up and prints it once, as ``tunnelnb
    platform`` does with its API token.  ``stop`` ends it early (for tests); ``out``
    replaces print.
    """
    emit = out or (lambda line: print(line, flush=True))
    generated = kwargs.get("password") is None
    fleet: SimulatedFleet | ShardedFleet
    fleet = ShardedFleet(workers=workers, **kwargs) if workers > 1 else SimulatedFleet(**kwargs)
    loop = asyncio.get_running_loop()
    stopping = stop or asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stopping.set)
            installed.append(sig)
    failure = ""
    try:
        await fleet.start()
        for line in fleet.summary():
            emit(line)
        user, password = fleet.login()
        if generated:
            emit(
                f"no login password given; the devices accept user {user!r} with: "
                f"export TUNNELNB_LOGIN_PASSWORD={password}"
            )
        else:
            emit(f"login: user {user!r} with the password given")
        failure = await _until_stopped(stopping, fleet)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await fleet.stop()
        emit("simulated fleet stopped")
    if failure:
        raise TunnelnbError(failure)


async def _until_stopped(stopping: asyncio.Event, fleet: SimulatedFleet | ShardedFleet) -> str:
    """Wait for ``stopping``, or for a worker's death; what the operator must hear of it, if anything."""
    if not isinstance(fleet, ShardedFleet):
        await stopping.wait()
        return ""
    stopped = asyncio.ensure_future(stopping.wait())
    failed = asyncio.ensure_future(fleet.wait_for_failure())
    try:
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, failed):
            task.cancel()
        await asyncio.gather(stopped, failed, return_exceptions=True)
    return failed.result() if failed.done() and not failed.cancelled() else ""

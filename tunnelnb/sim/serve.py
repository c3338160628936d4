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

from .fleet import SimulatedFleet

__all__ = ["serve"]


async def serve(*, stop: asyncio.Event | None = None, out: Callable[[str], None] | None = None, **kwargs: Any) -> None:
    """Run a simulated fleet until SIGINT or SIGTERM (the ``tunnelnb sim`` command).

    ``kwargs`` are :class:`SimulatedFleet`'s (``platform_url``, ``api_token``,
    ``devices``, …).  Prints a summary once every device is up; with no
    ``password`` it makes one up and prints it once, as ``tunnelnb platform`` does
    with its API token.  ``stop`` ends it early (for tests); ``out`` replaces print.
    """
    emit = out or (lambda line: print(line, flush=True))
    generated = kwargs.get("password") is None
    fleet = SimulatedFleet(**kwargs)
    loop = asyncio.get_running_loop()
    stopping = stop or asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stopping.set)
            installed.append(sig)
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
        await stopping.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await fleet.stop()
        emit("simulated fleet stopped")

"""The ``tunnelnb agent`` command: one :class:`~.agent.Agent`, run until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from .agent import Agent

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def serve(**kwargs: Any) -> None:
    """Run an agent until SIGINT or SIGTERM (the ``tunnelnb agent`` command)."""
    agent = Agent(**kwargs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        async with agent:
            log.info(
                "agent for device %r connected to %s; shells via %s",
                agent.device_id,
                agent.mqtt_url or agent.platform_url,
                agent.shell_target(),
            )
            started = time.monotonic()
            await stop.wait()
            log.info("stopping after %.0f s", time.monotonic() - started)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)

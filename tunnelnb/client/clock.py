"""Time and randomness as a device session reads them.

A session reads the time (to time commands and to give up waiting) and draws a
few random ids (request ids, shell marker ids).  It reads them all from a
:class:`Clock` its platform backend hands out per device (``api.clock_for(device_id)``),
never from :mod:`time` or :mod:`os` directly.  Live, that is the real clock; a
cassette recording (:mod:`tunnelnb.cassette`)
writes down every reading, and a replay reads them back and runs the waits on
virtual time, so a replayed run gives the same durations, timestamps and marker
ids as the recorded one, and a recorded 30-second timeout replays at once.

``monotonic()`` is in the event loop's time base (``loop.time()``) for the live
clock; deadlines given to :meth:`Clock.timeout_at` are in the clock's own base.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["LIVE_CLOCK", "Clock"]


class Clock:
    """The real clock and the system's randomness (what a live session uses)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and deadlines)."""
        return time.monotonic()

    def now(self) -> datetime:
        """The wall-clock time, in UTC (for ``started_at``)."""
        return datetime.now(UTC)

    def timeout(self, delay: float) -> Any:
        """``async with clock.timeout(delay)``: :func:`asyncio.timeout` on this clock."""
        return asyncio.timeout(delay)

    def timeout_at(self, deadline: float) -> Any:
        """``async with clock.timeout_at(deadline)``, ``deadline`` read from :meth:`monotonic`."""
        loop = asyncio.get_running_loop()
        return asyncio.timeout_at(loop.time() + (deadline - time.monotonic()))

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

    def token_hex(self, nbytes: int) -> str:
        """``nbytes`` random bytes as hex (request ids, marker ids)."""
        return os.urandom(nbytes).hex()


LIVE_CLOCK = Clock()

"""Virtual time for a replay: timers that fire when everything else waits, in deadline order.

A replay serves recorded messages and lets recorded waits (a command's
timeout, a reconnect's back-off) end without waiting for real.  The driver
steps only once the event loop has settled: a number of consecutive
``asyncio.sleep(0)`` rounds in which no replayed session touched the replay
(every clock reading, frame and platform call counts as activity).  That is
deterministic, since it counts scheduling rounds and never reads the wall
clock or asyncio's private run queue; a session whose reaction to a message
takes more rounds than :data:`SETTLE_ROUNDS` without touching its clock would
be stepped early, and none does (each step of a session reads its clock).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from ..client.clock import Clock
from .stream import ReplayStream

__all__ = ["SETTLE_ROUNDS", "ReplayClock", "ReplaySource", "Timer", "VirtualTime", "VirtualTimeout"]

log = logging.getLogger(__name__)

#: Scheduling rounds without replay activity after which the loop counts as settled.
SETTLE_ROUNDS = 64


class Timer:
    """A wait on virtual time: fired by the replay, or handed to the real clock when its device goes live."""

    __slots__ = ("cancelled", "deadline", "dev", "fire", "to_real")

    def __init__(
        self, dev: str | None, deadline: float, fire: Callable[[], None], to_real: Callable[[float], Any]
    ) -> None:
        self.dev = dev
        self.deadline = deadline
        self.fire = fire
        self.to_real = to_real
        self.cancelled = False


class VirtualTime:
    """The replay's driver: after each settle, ``deliver()`` releases a message, else the earliest timer fires.

    ``deliver(deadline)`` releases the next recorded message due no later than
    ``deadline`` (None: any) and says whether it did; ``advance(dev, t)`` moves a
    device's virtual time on to ``t`` before one of its timers fires.
    """

    def __init__(self, deliver: Callable[[float | None], bool], advance: Callable[[str | None, float], None]) -> None:
        self._deliver = deliver
        self._advance = advance
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._activity = 0
        self._wake: asyncio.Event | None = None
        self._driver: asyncio.Task[None] | None = None
        self.closed = False

    def poke(self) -> None:
        """Note activity (it postpones the next step)."""
        self._activity += 1
        if self._wake is not None:
            self._wake.set()

    def awake(self) -> None:
        """Note activity, and make sure the driver runs."""
        self.poke()
        if self.closed:
            return
        if self._driver is None or self._driver.done():
            self._wake = asyncio.Event()
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="tunnelnb-replay")

    def add_timer(
        self, dev: str | None, deadline: float, *, fire: Callable[[], None], to_real: Callable[[float], Any]
    ) -> Timer:
        timer = Timer(dev, deadline, fire, to_real)
        heapq.heappush(self._timers, (deadline, next(self._seq), timer))
        self.awake()
        return timer

    def timers_of(self, dev: str | None) -> list[Timer]:
        """The pending timers of a device (to hand them to the real clock when it goes live)."""
        return [timer for _, _, timer in self._timers if timer.dev == dev and not timer.cancelled]

    async def close(self) -> None:
        self.closed = True
        if self._driver is not None:
            self._driver.cancel()
            try:
                await self._driver
            except (asyncio.CancelledError, Exception):
                pass
            self._driver = None

    async def _drive(self) -> None:
        assert self._wake is not None
        while not self.closed:
            await self._settle()
            try:
                progressed = self._step()
            except Exception:  # never leave a replay hanging on a bug here
                log.exception("replay driver failed")
                progressed = False
            if not progressed:
                self._wake.clear()
                await self._wake.wait()

    async def _settle(self) -> None:
        """Return once :data:`SETTLE_ROUNDS` scheduling rounds passed without replay activity."""
        calm = 0
        while calm < SETTLE_ROUNDS:
            mark = self._activity
            await asyncio.sleep(0)
            calm = calm + 1 if self._activity == mark else 0

    def _step(self) -> bool:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        timer = self._timers[0][2] if self._timers else None
        if self._deliver(timer.deadline if timer is not None else None):
            return True
        if timer is not None:
            heapq.heappop(self._timers)
            self._advance(timer.dev, timer.deadline)
            timer.fire()
            return True
        return False


class ReplaySource(Protocol):
    """What a replay's clocks read from the replaying backend."""

    path: Path
    recorded_at: datetime
    time: VirtualTime

    def stream(self, dev: str | None) -> ReplayStream: ...

    def reading(self, dev: str | None, kind: str) -> dict[str, Any] | None: ...

    def live_clock(self, dev: str | None) -> Clock: ...


class VirtualTimeout:
    """``async with clock.timeout_at(deadline)`` on a replay's virtual time (real time once live)."""

    def __init__(self, clock: ReplayClock, deadline: float) -> None:
        self._clock = clock
        self._deadline = deadline
        self._cm: Any = None
        self._timer: Any = None

    async def __aenter__(self) -> Any:
        api, dev = self._clock.api, self._clock.dev
        if api.stream(dev).live:
            self._cm = api.live_clock(dev).timeout_at(self._deadline)
            return await self._cm.__aenter__()
        self._cm = asyncio.timeout(None)
        entered = await self._cm.__aenter__()
        cm = self._cm
        self._timer = api.time.add_timer(
            dev,
            self._deadline,
            fire=lambda: cm.reschedule(asyncio.get_running_loop().time()),
            to_real=cm.reschedule,
        )
        return entered

    async def __aexit__(self, *exc: Any) -> bool | None:
        if self._timer is not None:
            self._timer.cancelled = True
        result: bool | None = await self._cm.__aexit__(*exc)
        return result


class ReplayClock(Clock):
    """A device's recorded clock readings and random ids, and waits on virtual time."""

    def __init__(self, api: ReplaySource, dev: str | None) -> None:
        self.api = api
        self.dev = dev
        self._fills = itertools.count(1)

    def monotonic(self) -> float:
        event = self.api.reading(self.dev, "clock")
        stream = self.api.stream(self.dev)
        if stream.live:
            return self.api.live_clock(self.dev).monotonic()
        return float(event["t"]) if event is not None else stream.vnow

    def now(self) -> datetime:
        event = self.api.reading(self.dev, "now")
        stream = self.api.stream(self.dev)
        if stream.live:
            return self.api.live_clock(self.dev).now()
        if event is not None:
            return datetime.fromisoformat(str(event["value"]))
        return self.api.recorded_at + timedelta(seconds=stream.vnow)

    def token_hex(self, nbytes: int) -> str:
        event = self.api.reading(self.dev, "random")
        if self.api.stream(self.dev).live:
            return self.api.live_clock(self.dev).token_hex(nbytes)
        if event is not None and len(str(event["value"])) == 2 * nbytes:
            return str(event["value"])
        seed = f"{self.api.path}:{self.dev}:{next(self._fills)}".encode()
        return hashlib.sha256(seed).hexdigest()[: 2 * nbytes]

    def timeout(self, delay: float) -> Any:
        return VirtualTimeout(self, self.monotonic() + delay)

    def timeout_at(self, deadline: float) -> Any:
        return VirtualTimeout(self, deadline)

    async def sleep(self, delay: float) -> None:
        api = self.api
        stream = api.stream(self.dev)
        if stream.live:
            await api.live_clock(self.dev).sleep(delay)
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        timer = api.time.add_timer(
            self.dev, stream.vnow + delay, fire=wake, to_real=lambda when: loop.call_at(when, wake)
        )
        try:
            await done
        finally:
            timer.cancelled = True

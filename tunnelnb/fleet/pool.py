"""The fleet's session pool: one session per device, at most ``max_sessions`` of them at once.

IoTDA lets at most 100 devices be logged in at once per instance, so a fleet
keeps that many sessions; when a device needs one and the pool is full, the
least recently used idle session is closed to make room, and when every
session is busy the device waits for one to be released.  A device busy with
one run waits for it before another run uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from ..client.session import DeviceSession

__all__ = ["SessionPool"]


class SessionPool:
    """Device sessions by device id, reused across runs, least recently used first to go."""

    def __init__(self, max_sessions: int, make: Callable[[str], DeviceSession]) -> None:
        self.max_sessions = max_sessions
        self._make = make
        self._sessions: OrderedDict[str, DeviceSession] = OrderedDict()
        self._busy: set[str] = set()
        self._changed = asyncio.Condition()

    @property
    def sessions(self) -> Mapping[str, DeviceSession]:
        return self._sessions

    @property
    def busy(self) -> bool:
        """Is some device's session in use by a run?"""
        return bool(self._busy)

    def get(self, device_id: str) -> DeviceSession | None:
        return self._sessions.get(device_id)

    async def acquire(self, device_id: str, timeout: float) -> DeviceSession:
        """The device's session, marked busy; a new one is opened (within ``timeout``) when needed.

        A device is used by one run at a time: a second run (a background job and a
        cell) waits here until the first releases it, so it neither logs in twice
        nor has its session evicted under it.  ``timeout`` does not count that wait.
        """
        evicted: DeviceSession | None = None
        async with self._changed:
            while True:
                if device_id in self._busy:
                    await self._changed.wait()
                    continue
                session = self._sessions.get(device_id)
                if session is not None and not session.closed:
                    self._sessions.move_to_end(device_id)
                    self._busy.add(device_id)
                    return session
                if len(self._sessions) < self.max_sessions:
                    break
                victim = next((d for d, s in self._sessions.items() if d not in self._busy and not s.attached), None)
                if victim is not None:
                    evicted = self._sessions.pop(victim)
                    break
                await self._changed.wait()
            session = self._make(device_id)
            self._sessions[device_id] = session
            self._busy.add(device_id)
        try:
            if evicted is not None:
                await evicted.close()  # frees its login before another device takes the slot
            await session.open(timeout=timeout)
        except BaseException:
            async with self._changed:
                if self._sessions.get(device_id) is session:
                    del self._sessions[device_id]
                self._busy.discard(device_id)
                self._changed.notify_all()
            with contextlib.suppress(Exception):
                await session.close()
            raise
        return session

    async def wake(self) -> None:
        """A session stopped holding its place (a terminal detached): whoever waits for a slot looks again."""
        async with self._changed:
            self._changed.notify_all()

    async def release(self, device_id: str) -> None:
        async with self._changed:
            self._busy.discard(device_id)
            self._changed.notify_all()

    def detach(self, ids: Iterable[str] | None = None) -> list[DeviceSession]:
        """Take sessions out of the pool (all when ``ids`` is None), for the caller to close."""
        if ids is None:
            taken = list(self._sessions.values())
            self._sessions.clear()
            return taken
        return [self._sessions.pop(d) for d in ids if d in self._sessions]

"""The fleet's session pool: one session per device, at most ``max_sessions`` of them at once.

IoTDA lets at most 100 devices be logged in at once per instance, so a fleet
keeps that many sessions; when a device needs one and the pool is full, the
least recently used idle session is closed to make room, and when every
session is busy the device waits for one to be released.  A device busy with
one run waits for it before another run uses it.

**Opened ahead.**  A run on more devices than its concurrency opens the tunnels
of the devices next in line while earlier ones work (:meth:`SessionPool.open_ahead`):
creating a tunnel and the device joining it take about two round trips that
would otherwise start only when a slot frees.  Such a session holds a tunnel,
not a login, so it counts neither against ``max_sessions`` nor as busy; the
device's :meth:`~SessionPool.acquire` takes it over (its outcome, an error
included, is the device's, exactly as if it had been opened then).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from ..client.session import DeviceSession
from ..errors import DeviceOffline

__all__ = ["SessionPool"]


class SessionPool:
    """Device sessions by device id, reused across runs, least recently used first to go."""

    def __init__(self, max_sessions: int, make: Callable[[str], DeviceSession]) -> None:
        self.max_sessions = max_sessions
        self._make = make
        self._sessions: OrderedDict[str, DeviceSession] = OrderedDict()
        self._busy: set[str] = set()
        self._changed = asyncio.Condition()
        self._ahead: dict[str, asyncio.Task[DeviceSession]] = {}  # device id → its session opening ahead

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
        opening = self._ahead.pop(device_id, None)
        if opening is not None:
            return await self._take_ahead(device_id, opening, timeout)
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
                evicted = self._victim()
                if evicted is not None:
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

    def open_ahead(self, device_id: str, timeout: float, *, most: int) -> None:
        """Start opening ``device_id``'s tunnel now, for its :meth:`acquire` to take over (see the module's doc).

        Nothing happens when the device has a session already (in the pool or opening),
        or ``most`` sessions are opening ahead already: together with the pool's, the
        tunnels stay within what the tenant allows (IoTDA: 1,000).
        """
        if device_id in self._ahead or device_id in self._sessions or len(self._ahead) >= most:
            return
        session = self._make(device_id)

        async def opening() -> DeviceSession:
            try:
                await session.open(timeout=timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await session.close()
                raise
            return session

        task = asyncio.ensure_future(opening())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved by acquire, or dropped
        self._ahead[device_id] = task

    async def _take_ahead(self, device_id: str, opening: asyncio.Task[DeviceSession], timeout: float) -> DeviceSession:
        """:meth:`acquire` of a device whose session was opening ahead: its outcome, then a place in the pool.

        An offline device (or one that never joined) gets that row at once, as found
        while it waited (trying again would wait for a join twice); any other failure
        (the tenant's tunnel limit, a refused WebSocket) is tried again the ordinary
        way, so opening ahead never costs a device its row.
        """
        try:
            session = await asyncio.shield(opening)
        except asyncio.CancelledError:
            if not opening.done():  # we were cancelled, not the opening: it must not outlive the run
                opening.cancel()
            raise
        except DeviceOffline:
            raise
        except Exception:
            return await self.acquire(device_id, timeout)
        evicted: DeviceSession | None = None
        spare: DeviceSession | None = None
        try:
            async with self._changed:
                while True:
                    if device_id in self._busy:
                        await self._changed.wait()
                        continue
                    current = self._sessions.get(device_id)
                    if current is not None and not current.closed:  # another run made one meanwhile: use that
                        self._sessions.move_to_end(device_id)
                        self._busy.add(device_id)
                        spare = session
                        break
                    if len(self._sessions) < self.max_sessions or (evicted := self._victim()) is not None:
                        self._sessions[device_id] = current = session
                        self._busy.add(device_id)
                        break
                    await self._changed.wait()
        except BaseException:
            await session.close()
            raise
        for extra in (evicted, spare):
            if extra is not None:
                with contextlib.suppress(Exception):
                    await extra.close()
        return current

    def _victim(self) -> DeviceSession | None:
        """Take the least recently used session that is neither busy nor attached out of the pool (None: none)."""
        victim = next((d for d, s in self._sessions.items() if d not in self._busy and not s.attached), None)
        return None if victim is None else self._sessions.pop(victim)

    async def drop_ahead(self, ids: Iterable[str] | None = None) -> None:
        """Cancel or close the sessions opened ahead that no run took over (all when ``ids`` is None)."""
        taken = [d for d in (list(self._ahead) if ids is None else ids) if d in self._ahead]
        tasks = [self._ahead.pop(d) for d in taken]
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, DeviceSession):  # opened before the cancel: close it
                with contextlib.suppress(Exception):
                    await outcome.close()

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

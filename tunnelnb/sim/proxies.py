"""Misbehaving links: a loopback TCP proxy between a device's agent and the platform.

The ``slow`` devices' links pass a :class:`LinkProxy` that delays what the device
sends, the ``flaky`` devices' one that cuts their tunnel connections after a budget of
bytes (see :mod:`tunnelnb.sim.fleet`).  Plain TCP, so it suits a local ``http://``
platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

__all__ = ["LinkProxy"]

log = logging.getLogger(__name__)


class LinkProxy:
    """Forwards a device's connections to the platform; delays or cuts what the device sends.

    ``delay``: seconds added to every byte from the device (order kept, throughput
    not throttled).  ``cut_budgets``: a callable giving, for each new tunnel
    connection (``…/device-connect``), how many bytes from the device it carries
    before the proxy cuts it (TCP reset on both sides).  The device link is never cut.
    """

    def __init__(
        self, host: str, port: int, *, delay: float = 0.0, cut_budgets: Callable[[], int] | None = None
    ) -> None:
        self.upstream = (host, port)
        self.delay = delay
        self.cut_budgets = cut_budgets
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conns.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            self._conns.add(up_writer)
            first = await reader.read(65536)
            if not first:
                return
            budget = None
            if self.cut_budgets is not None and b"/device-connect" in first.split(b"\r\n", 1)[0]:
                budget = self.cut_budgets()
            pumps = [
                asyncio.create_task(self._upstream(reader, up_writer, first, budget)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The proxy is closing.  A stream server's handler must not end cancelled:
            # asyncio (3.11) would log the CancelledError as an unhandled exception.
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._conns.discard(w)
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes, budget: int | None
    ) -> None:
        """Device → platform: delayed by ``delay``, cut after ``budget`` bytes (the request head is free)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def feed() -> None:
            queue.put_nowait((loop.time() + self.delay, first))
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait((loop.time() + self.delay, b""))

        feeder = asyncio.create_task(feed())
        sent = -len(first)
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if budget is not None and sent + len(data) > budget:
                    writer.write(data[: max(0, budget - sent)])
                    self.cuts += 1
                    log.info("flaky link: cutting a tunnel connection after %d bytes", budget)
                    return
                sent += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await feeder

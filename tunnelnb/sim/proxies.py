"""Misbehaving links: a loopback TCP proxy between a device's agent and the platform.

The ``slow`` devices' links pass a :class:`LinkProxy` that delays what the device
sends, the ``flaky`` devices' one that cuts their tunnel connections after a budget of
bytes (see :mod:`tunnelnb.sim.fleet`).  With a delay each way it stands for a network
path's latency (``bench/wan.py``: half a round trip each way).  Plain TCP, so it suits
a local ``http://`` platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

__all__ = ["LinkProxy"]

log = logging.getLogger(__name__)


class LinkProxy:
    """Forwards a device's connections to the platform; delays or cuts what the device sends.

    ``delay``: seconds added to every byte from the device (order kept, throughput
    not throttled); ``return_delay``: the same for every byte to the device (0: none).
    ``cut_budgets``: a callable giving, for each new tunnel
    connection (``…/device-connect``), how many bytes from the device it carries
    before the proxy cuts it (TCP reset on both sides).  The device link is never cut.
    ``backlog``: the listening socket's queue of connections not yet accepted
    (asyncio's default, 100; more for a proxy that many clients connect to at once).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        delay: float = 0.0,
        return_delay: float = 0.0,
        cut_budgets: Callable[[], int] | None = None,
        backlog: int = 100,
    ) -> None:
        self.upstream = (host, port)
        self.delay = delay
        self.return_delay = return_delay
        self.cut_budgets = cut_budgets
        self.backlog = backlog
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=self.backlog)
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
                asyncio.create_task(self._downstream(up_reader, writer)),
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

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Platform → device: delayed by ``return_delay`` when it is set."""
        if self.return_delay <= 0:
            await self._pump(reader, writer)
            return
        async with contextlib.aclosing(_delayed(reader, self.return_delay)) as chunks:
            async for data in chunks:
                writer.write(data)
                await writer.drain()

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes, budget: int | None
    ) -> None:
        """Device → platform: delayed by ``delay``, cut after ``budget`` bytes (the request head is free)."""
        sent = -len(first)
        async with contextlib.aclosing(_delayed(reader, self.delay, first)) as chunks:
            async for data in chunks:
                if budget is not None and sent + len(data) > budget:
                    writer.write(data[: max(0, budget - sent)])
                    self.cuts += 1
                    log.info("flaky link: cutting a tunnel connection after %d bytes", budget)
                    return
                sent += len(data)
                writer.write(data)
                await writer.drain()


async def _delayed(reader: asyncio.StreamReader, delay: float, first: bytes = b"") -> AsyncGenerator[bytes, None]:
    """What ``reader`` gives, each chunk ``delay`` seconds after it arrived, in order, until end of stream.

    Reading goes on meanwhile (into memory), so the delay adds latency without
    throttling throughput.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def feed() -> None:
        try:
            if first:
                queue.put_nowait((loop.time() + delay, first))
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + delay, data))
        finally:  # the end of the stream (a reset too) is delayed like the bytes
            queue.put_nowait((loop.time() + delay, b""))

    feeder = asyncio.create_task(feed())
    try:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            yield data
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await feeder

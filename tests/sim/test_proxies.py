"""The link proxy: bytes and order kept, each direction delayed only when asked, cuts unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tunnelnb.sim.proxies import LinkProxy

WAIT = 10.0  # bound on every wait for bytes that must arrive
HELD = 30.0  # a delay no test waits out: bytes under it have certainly not arrived yet


class Upstream:
    """A loopback TCP server that records what it receives and echoes it back."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.got_bytes = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                self.received += data
                self.got_bytes.set()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        for w in self._writers:
            w.transport.abort()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def proxied(
    upstream: Upstream, **options: float
) -> AsyncIterator[tuple[LinkProxy, asyncio.StreamReader, asyncio.StreamWriter]]:
    proxy = LinkProxy("127.0.0.1", upstream.port, **options)
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield proxy, reader, writer
    finally:
        writer.transport.abort()
        await proxy.close()


async def _echo_through(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: list[bytes]) -> bytes:
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    return await asyncio.wait_for(reader.readexactly(sum(map(len, chunks))), WAIT)


def _chunks() -> list[bytes]:
    # Every byte value, chunks from 1 byte to 200 KB (more than one read of the proxy), in a known order.
    sizes = [1, 7, 65536, 3, 200_000, 4096, 1]
    return [os.urandom(size) for size in sizes]


async def test_without_delays_bytes_pass_both_ways_in_order(upstream: Upstream) -> None:
    async with proxied(upstream) as (proxy, reader, writer):
        chunks = _chunks()
        echoed = await _echo_through(reader, writer, chunks)
    assert echoed == b"".join(chunks)
    assert bytes(upstream.received) == b"".join(chunks)
    assert (proxy.delay, proxy.return_delay, proxy.backlog) == (0.0, 0.0, 100)


async def test_delays_each_way_keep_bytes_and_order(upstream: Upstream) -> None:
    async with proxied(upstream, delay=0.02, return_delay=0.03, backlog=1024) as (proxy, reader, writer):
        chunks = _chunks()
        echoed = await _echo_through(reader, writer, chunks)
        # A second exchange on the same connection: delays do not reorder across round trips.
        again = await _echo_through(reader, writer, [b"second", b"-", b"round"])
    assert echoed == b"".join(chunks)
    assert again == b"second-round"
    assert bytes(upstream.received) == b"".join(chunks) + b"second-round"
    assert (proxy.delay, proxy.return_delay, proxy.backlog) == (0.02, 0.03, 1024)


async def test_return_delay_holds_only_what_goes_back(upstream: Upstream) -> None:
    async with proxied(upstream, return_delay=HELD) as (_, reader, writer):
        writer.write(b"ping")
        await writer.drain()
        await asyncio.wait_for(upstream.got_bytes.wait(), WAIT)  # the way there is not delayed
        assert bytes(upstream.received) == b"ping"
        with pytest.raises(TimeoutError):  # the echo is held back for HELD seconds
            await asyncio.wait_for(reader.read(1), 0.3)


async def test_delay_holds_what_goes_to_the_upstream(upstream: Upstream) -> None:
    async with proxied(upstream, delay=HELD) as (_, _reader, writer):
        writer.write(b"ping")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(upstream.got_bytes.wait(), 0.3)
        assert bytes(upstream.received) == b""


async def test_end_of_stream_reaches_the_other_side_through_delays(upstream: Upstream) -> None:
    async with proxied(upstream, delay=0.01, return_delay=0.01) as (_, reader, writer):
        assert await _echo_through(reader, writer, [b"last words"]) == b"last words"
        writer.write_eof()  # the upstream sees the end, closes; the proxy ends the connection
        assert await asyncio.wait_for(reader.read(), WAIT) == b""


async def test_cut_budget_still_cuts_tunnel_connections_with_delays(upstream: Upstream) -> None:
    head = b"GET /v5/iot/tunnels/t/device-connect HTTP/1.1\r\n\r\n"
    proxy = LinkProxy("127.0.0.1", upstream.port, delay=0.01, return_delay=0.01, cut_budgets=lambda: 10)
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(head)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(head)), WAIT) == head  # the head is free
        writer.write(b"0123456789abcdef")
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(), WAIT)  # cut: the connection ends (reset)
        except ConnectionResetError:
            pass
    finally:
        writer.transport.abort()
        await proxy.close()
    assert proxy.cuts == 1
    assert bytes(upstream.received)[len(head) :] == b"0123456789"

"""The relay writes a message at once when its peer keeps up, and queues it when not (issue 18).

A message is checked once and relayed as the bytes received.  When the peer's outbox
is empty and its connection's write buffer has room, the reader writes it directly
(no wait on the peer is possible then); otherwise it waits in the outbox, and every
later message waits behind it, so the order holds from one path to the other and back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.server.test_platform import TOKEN, WAIT, open_tunnel, recv, recv_frame, recv_text
from tests.server.test_relay_backpressure import _stalled_tunnel, slow_http  # noqa: F401 - a fixture
from tunnelnb.protocol.frames import Frame, Op, decode_frame, encode_frame
from tunnelnb.server.platform import Platform
from tunnelnb.server.platform.model import Side
from tunnelnb.server.platform.sockets import Outbox

PAYLOAD = "y" * 4000
BACKED_UP = 256 * 1024  # bytes waiting in the outbox: dozens of messages


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    async with Platform(api_token=TOKEN) as p:
        yield p


@pytest.fixture
async def http(platform: Platform) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every message that waited in an outbox (rather than being written at once), in order."""
    messages: list[bytes] = []
    post = Outbox.post

    def spy(self: Outbox, message: bytes) -> bool:
        messages.append(message)
        return post(self, message)

    monkeypatch.setattr(Outbox, "post", spy)
    return messages


async def test_a_peer_that_keeps_up_gets_each_message_written_at_once(
    http: aiohttp.ClientSession, platform: Platform, queued: list[bytes]
) -> None:
    t = await open_tunnel(http, platform, "d1")
    assert [decode_frame(m).op for m in queued] == [Op.CONNECT_TUNNEL]  # the platform's own frame waits its turn
    queued.clear()
    for i in range(1, 31):
        output = encode_frame(Frame(Op.COMMAND_RESPONSE, f"r{i}", "é\r\n" * 50 * i))  # up to 9,000 bytes of data
        await t.dev.send_str(output)
        assert await recv_text(t.app) == output  # byte for byte
        command = encode_frame(Frame.command(f"c{i}", f"echo {i}\n"))
        await t.app.send_str(command)
        assert await recv_text(t.dev) == command
    assert queued == []
    # A pong is the platform's own: it goes through the outbox, as before.
    await t.dev.send_str(encode_frame(Frame(Op.PING, "p1")))
    assert await recv_frame(t.dev) == Frame(Op.PONG, "p1")
    assert [decode_frame(m) for m in queued] == [Frame(Op.PONG, "p1")]


async def test_order_holds_from_direct_writes_to_the_outbox_and_back(
    http: aiohttp.ClientSession,
    slow_http: aiohttp.ClientSession,  # noqa: F811 - the fixture
    platform: Platform,
    queued: list[bytes],
) -> None:
    platform.stall_timeout = 60.0
    platform.max_backlog_bytes = 256 * 1024 * 1024
    t = await _stalled_tunnel(http, slow_http, platform)
    queued.clear()
    sent: list[str] = []

    async def burst(count: int) -> None:
        for _ in range(count):
            rid = f"r{len(sent)}"
            await t.dev.send_str(encode_frame(Frame(Op.COMMAND_RESPONSE, rid, PAYLOAD)))
            sent.append(rid)
        await t.dev.send_str(encode_frame(Frame(Op.PING, rid)))  # answered once all before it were relayed
        assert await recv_frame(t.dev) == Frame(Op.PONG, rid)

    # The application reads nothing: the first messages fill its connection's buffers, then they queue.
    for _ in range(300):
        await burst(8)
        if platform._relay.backlog(t.tunnel_id, Side.SOURCE) >= BACKED_UP:
            break
    waited = [f.request_id for f in map(decode_frame, queued) if f.op is Op.COMMAND_RESPONSE]  # not the pongs
    assert 0 < len(waited) < len(sent)
    first = sent.index(waited[0])
    assert first > 0  # the ones before it were written at once
    assert waited == sent[first:]  # from the first that waited on, every one waited

    # It reads again while the device goes on: no message overtakes one that waits, as the
    # connection's buffer drains and the outbox empties.
    connection = t.app._response.connection
    assert connection is not None and connection.transport is not None
    connection.transport.resume_reading()
    reader = asyncio.create_task(_ids(t.app, len(sent) + 40 * 8))
    for _ in range(40):
        await burst(8)
    before = len(sent)
    assert await reader == sent
    queued.clear()
    await burst(8)
    assert await _ids(t.app, 8) == sent[before:]
    assert [decode_frame(m) for m in queued] == [Frame(Op.PONG, sent[-1])]  # only the platform's own pong waited
    assert platform._relay.backlog(t.tunnel_id, Side.SOURCE) == 0


async def _ids(app: aiohttp.ClientWebSocketResponse, count: int) -> list[str]:
    ids: list[str] = []
    async with asyncio.timeout(WAIT):
        while len(ids) < count:
            msg = await app.receive()
            assert msg.type is WSMsgType.TEXT, msg
            frame = decode_frame(msg.data)
            assert frame.op is Op.COMMAND_RESPONSE and frame.data == PAYLOAD, frame
            ids.append(frame.request_id)
    return ids


async def test_a_route_wrapper_that_passes_its_own_text_still_relays_the_bytes(
    http: aiohttp.ClientSession, platform: Platform
) -> None:
    original = platform._route
    seen: list[str] = []

    async def copying(tunnel: Any, conn: Any, frame: Frame, text: str) -> None:
        copy = "".join(list(text))  # equal text, another object: encoded again, to the same bytes
        assert copy is not text
        seen.append(copy)
        await original(tunnel, conn, frame, copy)

    platform._route = copying  # type: ignore[method-assign]
    t = await open_tunnel(http, platform, "d1")
    output = '{"operation_type" : "command_response", "request_id": "r-1", "data": "日本語 ✓ \\udc80 \\r\\n"}'
    await t.dev.send_str(output)
    assert await recv_text(t.app) == output
    command = encode_frame(Frame.command("c-1", "printf 'é'\n"))
    await t.app.send_str(command)
    msg = await recv(t.dev)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, command)
    assert seen == [output, command]


class _Sockets:
    """What an Outbox uses of Sockets: ``room`` says whether a send completes at once; else it waits for ``gate``."""

    def __init__(self) -> None:
        self.room = False
        self.gate = asyncio.Event()
        self.sent: list[bytes] = []

    def can_take(self, ws: object, size: int) -> bool:
        return self.room

    async def send(self, ws: object, message: bytes) -> bool:
        if not self.room:
            await self.gate.wait()
        self.sent.append(message)
        return True


async def test_a_message_never_overtakes_one_that_waits_in_the_outbox() -> None:
    sockets = _Sockets()
    slow: list[str] = []
    box = Outbox(object(), sockets, stall_timeout=lambda: WAIT, max_backlog=lambda: 1 << 20, on_slow=slow.append)  # type: ignore[arg-type]
    try:
        assert await box.deliver(b"1")  # no room: it waits in the outbox
        await asyncio.sleep(0)  # the outbox's task starts sending it, and waits
        assert (sockets.sent, box.backlog) == ([], 1)
        sockets.room = True  # the connection has room again while "1" still waits ...
        assert await box.deliver(b"22")  # ... so "22" waits behind it rather than going at once
        assert (sockets.sent, box.backlog) == ([], 3)
        sockets.gate.set()
        await box.flush(WAIT)
        assert (sockets.sent, box.backlog) == ([b"1", b"22"], 0)
        assert await box.deliver(b"333")  # nothing waits and there is room: written at once
        assert sockets.sent == [b"1", b"22", b"333"]
        assert slow == []
    finally:
        box.stop()

"""An application that stops reading does not take the device side down with it (issue 14).

On loopback with the in-process platform: a raw device side floods ``command_response``
frames towards an application side that reads nothing (its transport paused, its
receive buffer small), and keeps pinging -- with protocol ``ping`` frames and with
WebSocket pings.  The relay must keep answering the device while the application's
outbox is backed up, drop the application once it has stalled for ``stall_timeout``
(or fallen ``max_backlog_bytes`` behind), tell the device with a ``disconnect`` 503,
and let the device serve the next application.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohappyeyeballs import AddrInfoType
from aiohttp import WSMsgType

from tests.server.test_platform import (
    SECRET,
    TOKEN,
    WAIT,
    api,
    eventually,
    link,
    next_notify,
    recv,
    recv_frame,
    side,
    state,
)
from tunnelnb.protocol.frames import CloseCode, Frame, Op, Status, decode_frame, encode_frame
from tunnelnb.server.platform import Platform
from tunnelnb.server.platform.model import Side

PAYLOAD = "x" * 4000  # each command_response is about 4.1 kB, well under the 10 kB message limit
BURST = 8  # command_responses per round, before the round's pings
PACE = 0.02  # seconds between rounds: about 1.6 MB/s towards the application
MAX_ROUNDS = 1000  # the bound on every flood (about 20 s at the pace)
BACKED_UP = 64 * 1024  # bytes waiting for the application: its writer is stuck behind its socket


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    async with Platform(api_token=TOKEN) as p:
        yield p


@pytest.fixture
async def http(platform: Platform) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _small_receive_buffer(addr_info: AddrInfoType) -> socket.socket:
    """A client socket with a 4 kB receive buffer (set before connecting, so the window stays small)."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


@pytest.fixture
async def slow_http(platform: Platform) -> AsyncIterator[aiohttp.ClientSession]:
    """The stalling application's session: small receive buffers."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=_small_receive_buffer)) as s:
        yield s


@dataclass
class Stalled:
    tunnel_id: str
    created: dict[str, object]
    dev: aiohttp.ClientWebSocketResponse
    app: aiohttp.ClientWebSocketResponse


async def _stalled_tunnel(http: aiohttp.ClientSession, slow_http: aiohttp.ClientSession, platform: Platform) -> Stalled:
    """A tunnel whose device side sees WebSocket pongs (autoping off) and whose application reads nothing."""
    platform.add_device("dev-1", SECRET)
    link_ws = await link(http, platform, "dev-1")
    created = await api(http, platform, "POST", "/tunnels", body={"device_id": "dev-1"})
    assert created.status == 201, created.text
    tunnel_id = created.body["tunnel_id"]
    note = await next_notify(link_ws)
    async with asyncio.timeout(WAIT):
        dev = await http.ws_connect(
            note.tunnel_uri, headers={"tunnel_access_token": note.tunnel_access_token}, autoping=False
        )
    await eventually(lambda: state(platform, tunnel_id, "device") == "CONNECTED")
    app = await side(slow_http, created.body["tunnel_uri"], created.body["tunnel_access_token"])
    assert (await recv_frame(app)).op is Op.CONNECT_TUNNEL
    connection = app._response.connection
    assert connection is not None and connection.transport is not None
    connection.transport.pause_reading()  # the application stops reading
    return Stalled(tunnel_id, created.body, dev, app)


@dataclass
class Flood:
    """What the device saw while it flooded the stalled application."""

    rounds: int = 0
    started: float = 0.0
    backed_up: float | None = None  # when the application's outbox first held BACKED_UP bytes
    answered_backed_up: int = 0  # rounds whose pings were both answered while it was backed up
    last_answer: float = 0.0
    dropped: float | None = None  # when the device got the disconnect
    disconnect: Frame | None = None
    sent: list[str] = field(default_factory=list)  # request ids of the command_responses, in order


async def _flood_until_disconnect(platform: Platform, t: Stalled) -> Flood:
    """Rounds of BURST command_responses, a protocol ping and a WebSocket ping, each round's pings
    answered before the next; until the device hears that the application is gone."""
    flood = Flood(started=time.monotonic())
    for n in range(MAX_ROUNDS):
        for _ in range(BURST):
            rid = f"r{len(flood.sent)}"
            await t.dev.send_str(encode_frame(Frame(Op.COMMAND_RESPONSE, rid, PAYLOAD)))
            flood.sent.append(rid)
        await t.dev.send_str(encode_frame(Frame(Op.PING, f"p{n}")))
        await t.dev.ping(f"w{n}".encode())
        want = {("pong", f"p{n}"), ("PONG", f"w{n}")}
        while want:
            msg = await recv(t.dev)
            if msg.type is WSMsgType.PONG:
                want.remove(("PONG", msg.data.decode()))
                continue
            assert msg.type is WSMsgType.TEXT, msg  # never a close: the device side stays open
            frame = decode_frame(msg.data)
            if frame.op is Op.DISCONNECT:
                assert flood.disconnect is None, frame
                flood.dropped, flood.disconnect = time.monotonic(), frame
                continue
            assert frame == Frame(Op.PONG, f"p{n}"), frame
            want.remove(("pong", frame.request_id))
        flood.rounds = n + 1
        now = time.monotonic()
        if flood.disconnect is not None:
            return flood
        flood.last_answer = now
        if platform._relay.backlog(t.tunnel_id, Side.SOURCE) >= BACKED_UP:
            if flood.backed_up is None:
                flood.backed_up = now
            flood.answered_backed_up += 1
        await asyncio.sleep(PACE)
    raise AssertionError(f"the application was not dropped after {MAX_ROUNDS} rounds")


async def _drain_app(app: aiohttp.ClientWebSocketResponse) -> tuple[list[str], aiohttp.WSMessage]:
    """Resume the stalled application and read what reached it: the request ids, then the closing message."""
    connection = app._response.connection
    assert connection is not None and connection.transport is not None
    connection.transport.resume_reading()
    ids: list[str] = []
    async with asyncio.timeout(WAIT):
        while True:
            msg = await app.receive()
            if msg.type is not WSMsgType.TEXT:
                return ids, msg
            frame = decode_frame(msg.data)
            assert frame.op is Op.COMMAND_RESPONSE and frame.data == PAYLOAD, frame.op
            ids.append(frame.request_id)


async def _device_serves_a_new_application(http: aiohttp.ClientSession, platform: Platform, t: Stalled) -> None:
    await t.dev.send_str(encode_frame(Frame(Op.PING, "after")))
    assert decode_frame((await recv(t.dev)).data) == Frame(Op.PONG, "after")
    app = await side(http, str(t.created["tunnel_uri"]), str(t.created["tunnel_access_token"]))
    assert (await recv_frame(app)).op is Op.CONNECT_TUNNEL
    command = encode_frame(Frame.command("next-1", "uptime\n"))
    await app.send_str(command)
    assert (await recv(t.dev)).data == command
    output = encode_frame(Frame(Op.COMMAND_RESPONSE, "next-1", "up 1 day\r\n"))
    await t.dev.send_str(output)
    assert (await recv(app)).data == output
    assert state(platform, t.tunnel_id, "source") == "CONNECTED"
    assert state(platform, t.tunnel_id, "device") == "CONNECTED"
    await app.close()


def _report(name: str, flood: Flood, limit: str) -> None:
    assert flood.dropped is not None
    backed = "never" if flood.backed_up is None else f"{flood.backed_up - flood.started:.2f} s"
    print(
        f"\n{name}: backed up after {backed}; device answered {flood.answered_backed_up} rounds of pings while "
        f"backed up; application dropped {flood.dropped - flood.started:.2f} s into the flood ({limit}); "
        f"{flood.rounds} rounds, {len(flood.sent)} command_responses"
    )


async def test_a_stalled_application_is_dropped_after_the_stall_limit_and_the_device_stays(
    http: aiohttp.ClientSession, slow_http: aiohttp.ClientSession, platform: Platform
) -> None:
    stall = 1.5
    platform.stall_timeout = stall
    platform.max_backlog_bytes = 256 * 1024 * 1024  # the time limit, not the budget, ends it here
    t = await _stalled_tunnel(http, slow_http, platform)

    flood = await _flood_until_disconnect(platform, t)
    _report("stall limit", flood, f"stall_timeout {stall} s")

    # The device was answered all along while the application's outbox was backed up ...
    assert flood.backed_up is not None and flood.dropped is not None
    assert flood.last_answer - flood.backed_up >= stall - 0.5
    assert flood.answered_backed_up >= 10
    # ... and the application went once nothing could reach it for the limit, not before.
    assert flood.dropped - flood.started >= stall
    assert flood.dropped - flood.backed_up <= stall + 1.0
    assert flood.disconnect is not None
    assert flood.disconnect.data == {
        "status_code": Status.PEER_GONE,
        "status_msg": f"the application left tunnel {t.tunnel_id}: it stopped reading: "
        f"nothing could be sent to it for {stall:g} s",
    }
    assert Status.PEER_GONE == "503"
    assert state(platform, t.tunnel_id, "source") == "DISCONNECTED"
    assert state(platform, t.tunnel_id, "device") == "CONNECTED"
    assert platform._relay.backlog(t.tunnel_id, Side.SOURCE) == 0

    # The application, reading again, gets an unbroken prefix of the frames in order, then 1011.
    ids, last = await _drain_app(t.app)
    assert ids == flood.sent[: len(ids)] and len(ids) >= 16
    assert last.type is WSMsgType.CLOSE, last
    assert last.data == CloseCode.INTERNAL_ERROR
    assert last.extra == f"stopped reading: nothing could be sent to it for {stall:g} s"

    await _device_serves_a_new_application(http, platform, t)


async def test_an_application_too_far_behind_is_dropped_at_the_byte_budget(
    http: aiohttp.ClientSession, slow_http: aiohttp.ClientSession, platform: Platform
) -> None:
    budget = 512 * 1024
    platform.stall_timeout = 60.0  # the budget, not the time limit, ends it here
    platform.max_backlog_bytes = budget
    t = await _stalled_tunnel(http, slow_http, platform)

    flood = await _flood_until_disconnect(platform, t)
    _report("byte budget", flood, f"max_backlog_bytes {budget}")

    assert flood.dropped is not None and flood.disconnect is not None
    assert flood.dropped - flood.started < 10.0  # far sooner than the 60 s stall limit
    assert flood.disconnect.data == {
        "status_code": "503",
        "status_msg": f"the application left tunnel {t.tunnel_id}: it fell behind by more than {budget} bytes",
    }
    assert state(platform, t.tunnel_id, "source") == "DISCONNECTED"
    assert state(platform, t.tunnel_id, "device") == "CONNECTED"

    ids, last = await _drain_app(t.app)
    assert ids == flood.sent[: len(ids)]
    assert last.type is WSMsgType.CLOSE, last
    assert (last.data, last.extra) == (CloseCode.INTERNAL_ERROR, f"fell behind by more than {budget} bytes")

    await _device_serves_a_new_application(http, platform, t)

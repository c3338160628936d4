"""The platform under abuse (issue 14): idle floods, refused WebSockets, bad bodies, RFC 6455 breaches.

Real platforms on 127.0.0.1 with small limits, so each flood is a few hundred
connections and each wait a fraction of a second.  Every test ends by showing the
platform still serves a normal call.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import resource
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.server.test_platform import TOKEN, Tunnel, api, assert_error, assert_relays, open_tunnel
from tunnelnb.protocol.frames import Op, Status, decode_frame
from tunnelnb.server.platform import ErrorCode, Platform
from tunnelnb.server.platform.logthrottle import RepeatFilter
from tunnelnb.server.platform.wsframes import FrameCheck

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0


# ---------------------------------------------------------------------------
# Helpers


async def raw_connect(platform: Platform) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(platform.base_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = WAIT) -> bytes:
    """What the platform sent before it closed; a reset (the platform closed with our bytes unread) counts as closed."""
    async with asyncio.timeout(timeout):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def parse_http(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def client_frame(opcode: int, payload: bytes, *, mask: bool = True) -> bytes:
    """One final client frame (payload under 126 bytes), masked unless told otherwise."""
    assert len(payload) < 126
    key = os.urandom(4)
    head = bytes([0x80 | opcode, (0x80 if mask else 0) | len(payload)])
    if not mask:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def raw_websocket(url: str, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake by hand: aiohttp's client always masks, and these tests must not."""
    rest = url.removeprefix("ws://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\ntunnel_access_token: {token}\r\n\r\n"
        ).encode()
    )
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def server_close_code(reader: asyncio.StreamReader) -> int:
    """Read server frames until the close frame; its code."""
    async with asyncio.timeout(WAIT):
        while True:
            first, second = await reader.readexactly(2)
            payload = await reader.readexactly(second & 0x7F)
            if first & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big")


@pytest.fixture
async def small() -> AsyncIterator[Platform]:
    """A platform with small limits: 0.5 s to authenticate, 60 pending connections, 40 per address."""
    async with Platform(
        api_token=TOKEN, header_timeout=0.5, max_pending_connections=60, max_pending_per_address=40
    ) as p:
        yield p


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def assert_serves(http: aiohttp.ClientSession, platform: Platform) -> None:
    resp = await api(http, platform, "GET", "/devices")
    assert resp.status == 200, resp.text


# ---------------------------------------------------------------------------
# 1. Connection hygiene


async def test_silent_and_byte_at_a_time_connections_are_closed_at_the_header_timeout(http):
    async with Platform(api_token=TOKEN, header_timeout=0.5, max_pending_per_address=500) as platform:
        silent = [await raw_connect(platform) for _ in range(150)]
        dribbling = [await raw_connect(platform) for _ in range(150)]

        async def dribble(writer: asyncio.StreamWriter) -> None:
            for byte in b"GET /v5/iot/demo/devices HTTP/1.1\r\nHost: x\r\n":
                if writer.is_closing():
                    return
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        dribblers = [asyncio.create_task(dribble(w)) for _, w in dribbling]
        ends = await asyncio.gather(*(read_to_eof(r) for r, _ in silent + dribbling))
        assert ends == [b""] * 300  # closed without a word: nothing was asked
        assert platform.guard is not None
        assert platform.guard.stats.timed_out == 300
        assert platform.guard.pending == 0
        for task in dribblers:
            task.cancel()
        await asyncio.gather(*dribblers, return_exceptions=True)
        for _, w in silent + dribbling:
            w.close()
        await assert_serves(http, platform)


async def test_pending_connections_over_the_per_address_cap_get_503(small, http):
    held = [await raw_connect(small) for _ in range(40)]
    reader, writer = await raw_connect(small)
    writer.write(b"GET /v5/iot/demo/devices HTTP/1.1\r\nHost: x\r\n\r\n")
    status, body = parse_http(await read_to_eof(reader))
    assert status == 503
    assert body == {
        "error_code": ErrorCode.TOO_MANY_CONNECTIONS,
        "error_msg": "Too many connections from 127.0.0.1 are waiting to authenticate; try again later.",
    }
    assert ErrorCode.TOO_MANY_CONNECTIONS == "IOTDA.000503"
    assert small.guard is not None and small.guard.stats.refused == 1
    writer.close()
    # The held ones are shed at the header timeout; then the platform serves again.
    await asyncio.gather(*(read_to_eof(r) for r, _ in held))
    for _, w in held:
        w.close()
    await assert_serves(http, small)


async def test_pending_connections_over_the_total_cap_get_503(http):
    async with Platform(
        api_token=TOKEN, header_timeout=0.5, max_pending_connections=30, max_pending_per_address=1000
    ) as platform:
        held = [await raw_connect(platform) for _ in range(30)]
        refused = [await raw_connect(platform) for _ in range(20)]
        answers = [parse_http(await read_to_eof(r)) for r, _ in refused]
        assert {status for status, _ in answers} == {503}
        assert {body["error_msg"] for _, body in answers} == {
            "Too many connections are waiting to authenticate; try again later."
        }
        await asyncio.gather(*(read_to_eof(r) for r, _ in held))
        for _, w in held + refused:
            w.close()
        await assert_serves(http, platform)


async def test_authenticated_connections_do_not_count_against_the_cap(small, http):
    # Keep-alive REST connections and WebSockets, once authenticated, are not pending.
    sessions = [aiohttp.ClientSession() for _ in range(50)]
    try:
        for session in sessions:
            await assert_serves(session, small)
        assert small.guard is not None
        assert small.guard.pending == 0 and small.guard.open >= 50
        await asyncio.sleep(0.8)  # past the header timeout: trusted connections stay
        assert small.guard.open >= 50 and small.guard.stats.timed_out == 0
        # A wrong token is no authentication: such a connection is shed.
        resp = await api(http, small, "GET", "/devices", token="wrong")
        assert_error(resp, 401, ErrorCode.UNAUTHORIZED)
        await asyncio.sleep(0.8)
        assert small.guard.stats.timed_out == 1
    finally:
        for session in sessions:
            await session.close()


async def test_platform_raises_its_open_files_limit_and_says_so(caplog):
    caplog.set_level(logging.INFO, logger="tunnelnb.server.platform.app")
    async with Platform(api_token=TOKEN):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or soft == hard
    assert any(f"open-files limit {soft}" in r.getMessage() for r in caplog.records)


def test_repeated_log_lines_are_rate_limited():
    now = [100.0]
    throttle = RepeatFilter(window=10.0, clock=lambda: now[0])

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, text, None, None)

    passed = [throttle.filter(record("socket.accept() out of system resource")) for _ in range(500)]
    assert passed == [True] + [False] * 499
    assert throttle.filter(record("another line"))  # a different line is not held back
    now[0] += 10.0
    later = record("socket.accept() out of system resource")
    assert throttle.filter(later)
    assert later.getMessage() == "socket.accept() out of system resource (499 more like this in the last 10 s)"


# ---------------------------------------------------------------------------
# 2. No leak on refusal


async def test_refused_websockets_leave_no_memory_behind(http):
    # heartbeat on, as `tunnelnb platform` runs: aiohttp re-armed it after close and held ~11 KiB each.
    async with Platform(api_token=TOKEN, heartbeat=20.0) as platform:
        t = await open_tunnel(http, platform, "leaky")
        await drop_app(t)
        uri, token = t.created["tunnel_uri"], t.created["tunnel_access_token"]

        async def refuse_one(payload: str) -> None:
            ws = await http.ws_connect(uri, headers={"tunnel_access_token": token})
            first = await ws.receive()  # connect_tunnel: the device side is there
            assert decode_frame(first.data).op is Op.CONNECT_TUNNEL
            await ws.send_str(payload)
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1007, msg
            disconnect = decode_frame(await t.dev.receive_str())
            assert disconnect.data["status_code"] == Status.MALFORMED

        for _ in range(30):  # warm caches and pools
            await refuse_one("{not json")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(300):
                await refuse_one("{not json")
            await asyncio.sleep(0.1)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        per_connection = (after - before) / 300
        assert per_connection < 1024, f"{per_connection:.0f} bytes kept per refused connection"
        await assert_relays(await _reconnect_app(http, t))


async def drop_app(t: Tunnel) -> None:
    """Close the tunnel's application side; the device hears so."""
    await t.app.close()
    gone = decode_frame(await t.dev.receive_str())
    assert gone.op is Op.DISCONNECT and gone.data["status_code"] == Status.PEER_GONE


async def _reconnect_app(http: aiohttp.ClientSession, t: Tunnel) -> Tunnel:
    app = await http.ws_connect(
        t.created["tunnel_uri"], headers={"tunnel_access_token": t.created["tunnel_access_token"]}
    )
    assert decode_frame(await app.receive_str()).op is Op.CONNECT_TUNNEL
    t.app = app
    return t


# ---------------------------------------------------------------------------
# 3. Bad bodies are 4xx with IoTDA's error body


@pytest.mark.parametrize(
    ("raw", "status", "code", "word"),
    [
        ("[" * 30_000 + "]" * 30_000, 400, ErrorCode.BAD_REQUEST_BODY, "nested too deeply"),
        ("[" * 100_000 + "]" * 100_000, 413, "IOTDA.000413", "too large"),  # past the 64 KiB limit first
        ('{"a":' * 5_000 + "1" + "}" * 5_000, 400, ErrorCode.BAD_REQUEST_BODY, "nested too deeply"),
        ('{"device_id": "x", "pad": "' + "x" * 200_000 + '"}', 413, "IOTDA.000413", "too large"),
        ('{"device_id": "\xff"}'.encode("latin-1"), 400, ErrorCode.BAD_REQUEST_BODY, "not valid JSON"),
        (
            '{"auth_info": {"secret": "s"}, "device_id": "d", "tags": [{"tag_key": []}]}',
            400,
            ErrorCode.INVALID_INPUT,
            "tags",
        ),
        (
            '{"auth_info": {"secret": "s"}, "device_id": "d", "tags": [{"tag_key": {"a": 1}}]}',
            400,
            ErrorCode.INVALID_INPUT,
            "tags",
        ),
        ('{"auth_info": [], "device_id": "d"}', 400, ErrorCode.INVALID_INPUT, "auth_info"),
        ('{"auth_info": {"secret": 5}, "node_id": "n"}', 400, ErrorCode.INVALID_INPUT, "secret"),
        (
            '{"auth_info": {"secret": "s"}, "node_id": "n", "device_id": ["d"]}',
            400,
            ErrorCode.INVALID_INPUT,
            "device_id",
        ),
        ("[1, 2]", 400, ErrorCode.BAD_REQUEST_BODY, "JSON object"),
    ],
)
async def test_bad_add_device_bodies_are_4xx_never_500(http, caplog, raw, status, code, word):
    async with Platform(api_token=TOKEN) as platform:
        headers = {"Content-Type": "application/json"}
        url = f"{platform.base_url}/v5/iot/{platform.project_id}/devices"
        async with http.post(url, data=raw, headers={"X-Auth-Token": TOKEN, **headers}) as r:
            assert r.status == status, await r.text()
            body = await r.json()
        assert set(body) == {"error_code", "error_msg"}
        assert body["error_code"] == code
        assert word in body["error_msg"]
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        await assert_serves(http, platform)


async def test_bad_add_tunnel_body_types_are_400(http):
    async with Platform(api_token=TOKEN) as platform:
        for body in ({"device_id": 5}, {"device_id": ["x"]}, {"device_id": {"a": 1}}, {"device_id": None}):
            resp = await api(http, platform, "POST", "/tunnels", body=body)
            assert_error(resp, 400, ErrorCode.INVALID_INPUT, "device_id")


# ---------------------------------------------------------------------------
# 4. WebSocket strictness (RFC 6455)


@pytest.fixture
async def tunnel(http) -> AsyncIterator[tuple[Platform, Tunnel]]:
    async with Platform(api_token=TOKEN) as platform:
        yield platform, await open_tunnel(http, platform, "strict")


async def _strict_case(tunnel: tuple[Platform, Tunnel], http: aiohttp.ClientSession, frame: bytes) -> int:
    _, t = tunnel
    await drop_app(t)
    reader, writer = await raw_websocket(t.created["tunnel_uri"], t.created["tunnel_access_token"])
    writer.write(frame)
    code = await server_close_code(reader)
    writer.close()
    # The device hears the application is gone, and a new application side works.
    disconnect = decode_frame(await t.dev.receive_str())
    assert disconnect.op is Op.DISCONNECT and disconnect.data["status_code"] == Status.PEER_GONE
    await assert_relays(await _reconnect_app(http, t))
    return code


async def test_unmasked_client_frame_is_closed_1002(tunnel, http):
    text = b'{"operation_type":"ping","request_id":"1"}'
    assert await _strict_case(tunnel, http, client_frame(0x1, text, mask=False)) == 1002
    assert tunnel[0].guard is not None and tunnel[0].guard.stats.failed_websockets == 1


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000, 65535])
async def test_invalid_close_codes_are_closed_1002(tunnel, http, code):
    assert await _strict_case(tunnel, http, client_frame(0x8, code.to_bytes(2, "big"))) == 1002


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
async def test_valid_close_codes_are_answered_with_1000(tunnel, http, code):
    # aiohttp answers every valid close with 1000 (normal closure): not a protocol error.
    _, t = tunnel
    await drop_app(t)
    reader, writer = await raw_websocket(t.created["tunnel_uri"], t.created["tunnel_access_token"])
    writer.write(client_frame(0x8, code.to_bytes(2, "big")))
    assert await server_close_code(reader) == 1000
    writer.close()


def test_frame_check_reads_headers_split_anywhere():
    stream = client_frame(0x1, b"x" * 100) + client_frame(0x9, b"") + client_frame(0x8, (1000).to_bytes(2, "big"))
    check = FrameCheck()
    assert [check.feed(stream[i : i + 1]) for i in range(len(stream))] == [None] * len(stream)
    check = FrameCheck()
    assert check.feed(client_frame(0x1, b"ok") + client_frame(0x1, b"no", mask=False)) == (
        "the client sent an unmasked frame (RFC 6455, section 5.1)"
    )


async def test_aiohttp_level_refusals_still_close_as_before(tunnel, http):
    # aiohttp's own checks (here: a reserved opcode) keep their close codes.
    _, t = tunnel
    await drop_app(t)
    reader, writer = await raw_websocket(t.created["tunnel_uri"], t.created["tunnel_access_token"])
    writer.write(client_frame(0x3, b"x"))
    assert await server_close_code(reader) == 1002
    writer.close()
    await expect_close_or_disconnect(t)


async def expect_close_or_disconnect(t: Tunnel) -> None:
    frame = decode_frame(await t.dev.receive_str())
    assert frame.op is Op.DISCONNECT and frame.data["status_code"] == Status.MALFORMED

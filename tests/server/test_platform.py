"""The local IoTDA-compatible platform, over real sockets.

Each test runs a real platform on 127.0.0.1 and talks to it with real aiohttp
clients: REST calls with ``X-Auth-Token``, device links that authenticate as a
device does, and both WebSocket sides of tunnels.  Tests of bad input end by
relaying through an unrelated tunnel, to show one misbehaving party cannot hurt
the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tunnelnb.errors import PlatformError
from tunnelnb.protocol.devicelink import (
    LINK_PATH,
    PASSWORD_HEADER,
    TIMESTAMP_HEADER,
    TunnelNotify,
    device_password,
    link_timestamp,
    parse_event,
)
from tunnelnb.protocol.frames import Frame, Op, Status, decode_frame, encode_frame
from tunnelnb.server.platform import ErrorCode, Platform, serve

TOKEN = "test-api-token-1234"
SECRET = "device-secret-5678"
WAIT = 5.0  # seconds: the bound on every single wait
TIME_RE = re.compile(r"^\d{8}T\d{6}Z$")


# ---------------------------------------------------------------------------
# Helpers


@dataclass
class Resp:
    status: int
    body: Any
    headers: Any
    text: str


@dataclass
class Tunnel:
    tunnel_id: str
    device_id: str
    created: dict[str, Any]
    notify: TunnelNotify
    link: aiohttp.ClientWebSocketResponse
    app: aiohttp.ClientWebSocketResponse
    dev: aiohttp.ClientWebSocketResponse


async def api(
    http: aiohttp.ClientSession,
    platform: Platform,
    method: str,
    path: str,
    *,
    body: Any = None,
    raw: str | None = None,
    token: str | None = TOKEN,
    project: str | None = None,
    headers: dict[str, str] | None = None,
) -> Resp:
    url = f"{platform.base_url}/v5/iot/{project or platform.project_id}{path}"
    hdrs = {} if token is None else {"X-Auth-Token": token}
    hdrs.update(headers or {})
    async with asyncio.timeout(WAIT), http.request(method, url, json=body, data=raw, headers=hdrs) as r:
        text = await r.text()
        parsed = json.loads(text) if text and r.content_type == "application/json" else None
        return Resp(r.status, parsed, r.headers, text)


def assert_error(resp: Resp, status: int, code: str, *words: str) -> None:
    assert resp.status == status, resp.text
    assert set(resp.body) == {"error_code", "error_msg"}, resp.text
    assert resp.body["error_code"] == code
    for word in words:
        assert word in resp.body["error_msg"]


async def eventually(predicate: Any) -> None:
    """Poll the platform's state: it offers no event for a test to wait on, and polling is bounded."""
    async with asyncio.timeout(WAIT):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def recv(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    async with asyncio.timeout(WAIT):
        return await ws.receive()


async def recv_text(ws: aiohttp.ClientWebSocketResponse) -> str:
    msg = await recv(ws)
    assert msg.type is WSMsgType.TEXT, msg
    return msg.data


async def recv_frame(ws: aiohttp.ClientWebSocketResponse) -> Frame:
    return decode_frame(await recv_text(ws))


async def expect_close(ws: aiohttp.ClientWebSocketResponse, code: int, reason: str | None = None) -> str:
    msg = await recv(ws)
    assert msg.type is WSMsgType.CLOSE, msg
    assert msg.data == code, msg
    if reason is not None:
        assert reason in msg.extra, msg
    return msg.extra


async def expect_disconnect(ws: aiohttp.ClientWebSocketResponse, status: str, *words: str) -> Frame:
    frame = await recv_frame(ws)
    assert frame.op is Op.DISCONNECT, frame
    assert frame.data["status_code"] == status, frame
    for word in words:
        assert word in frame.data["status_msg"], frame
    return frame


async def expect_silence(ws: aiohttp.ClientWebSocketResponse, seconds: float = 0.2) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            msg = await ws.receive()
            pytest.fail(f"unexpected message {msg}")


async def link(
    http: aiohttp.ClientSession,
    platform: Platform,
    device_id: str,
    secret: str = SECRET,
    *,
    stamp: str | None = None,
    password: str | None = None,
) -> aiohttp.ClientWebSocketResponse:
    """Open a device link the way a device authenticates, and wait until the device is ONLINE."""
    stamp = stamp or link_timestamp()
    headers = {TIMESTAMP_HEADER: stamp, PASSWORD_HEADER: password or device_password(secret, stamp)}
    async with asyncio.timeout(WAIT):
        ws = await http.ws_connect(platform.base_url + LINK_PATH.format(device_id=device_id), headers=headers)
    await eventually(lambda: platform.devices[device_id]["status"] == "ONLINE")
    return ws


async def next_notify(link_ws: aiohttp.ClientWebSocketResponse) -> TunnelNotify:
    notes = parse_event(await recv_text(link_ws))
    assert len(notes) == 1
    return notes[0]


async def side(http: aiohttp.ClientSession, uri: str, token: str | None) -> aiohttp.ClientWebSocketResponse:
    headers = {} if token is None else {"tunnel_access_token": token}
    async with asyncio.timeout(WAIT):
        return await http.ws_connect(uri, headers=headers)


async def handshake_status(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    """The HTTP status of a WebSocket handshake (101 when it succeeds)."""
    # Not pytest.raises: a kept traceback holds aiohttp's request frames past the session's end.
    try:
        async with asyncio.timeout(WAIT):
            ws = await http.ws_connect(url, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


def state(platform: Platform, tunnel_id: str, which: str) -> str:
    return platform.tunnels[tunnel_id][f"{which}_connect_state"]["status"]


async def open_tunnel(http: aiohttp.ClientSession, platform: Platform, device_id: str) -> Tunnel:
    """Device, link, AddTunnel, device side, then application side (which gets connect_tunnel)."""
    if device_id not in platform.devices:
        platform.add_device(device_id, SECRET)
    link_ws = await link(http, platform, device_id)
    created = await api(http, platform, "POST", "/tunnels", body={"device_id": device_id})
    assert created.status == 201, created.text
    tunnel_id = created.body["tunnel_id"]
    note = await next_notify(link_ws)
    dev = await side(http, note.tunnel_uri, note.tunnel_access_token)
    await eventually(lambda: state(platform, tunnel_id, "device") == "CONNECTED")
    app = await side(http, created.body["tunnel_uri"], created.body["tunnel_access_token"])
    first = await recv_frame(app)
    assert first.op is Op.CONNECT_TUNNEL and first.data is None
    return Tunnel(tunnel_id, device_id, created.body, note, link_ws, app, dev)


async def assert_relays(t: Tunnel) -> None:
    """A command reaches the device and pretty-printed output reaches the application, byte for byte."""
    command = encode_frame(Frame.command("chk-1", "uptime\n"))
    await t.app.send_str(command)
    assert await recv_text(t.dev) == command
    output = encode_frame(Frame(Op.COMMAND_RESPONSE, "chk-1", " 10:00 up 1 day\r\n"), pretty=True)
    await t.dev.send_str(output)
    assert await recv_text(t.app) == output


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture
async def platform():
    async with Platform(api_token=TOKEN) as p:
        yield p


@pytest.fixture
async def http(platform):
    """A client session, closed before the platform stops so every client socket ends cleanly."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bystander(http, platform) -> Tunnel:
    """An unrelated, working tunnel on the same platform."""
    return await open_tunnel(http, platform, "bystander")


# ---------------------------------------------------------------------------
# REST: devices


async def test_add_device_rest_show_and_defaults(http, platform):
    resp = await api(
        http,
        platform,
        "POST",
        "/devices",
        body={
            "node_id": "node-1",
            "product_id": "prod",
            "fw_version": "2.1",
            "tags": [{"tag_key": "site", "tag_value": "edge"}],
            "auth_info": {"auth_type": "SECRET", "secret": SECRET},
        },
        headers={"Instance-Id": "ignored-instance"},
    )
    assert resp.status == 201, resp.text
    assert SECRET not in resp.text
    assert resp.headers["X-Request-Id"]
    info = resp.body
    assert info["device_id"] == "prod_node-1"  # IoTDA's default: product_id + "_" + node_id
    assert info["device_name"] == "node-1"
    assert info["status"] == "OFFLINE"
    assert info["fw_version"] == "2.1" and info["sw_version"] is None
    assert info["tags"] == [{"tag_key": "site", "tag_value": "edge"}]
    assert TIME_RE.match(info["create_time"])

    shown = await api(http, platform, "GET", "/devices/prod_node-1")
    assert shown.status == 200 and shown.body == info

    # The Python method has the same effect and shape.
    made = platform.add_device("py-dev", "x", tags={"k": "v"}, sw_version="1.0")
    assert made["node_id"] == "py-dev" and made["tags"] == [{"tag_key": "k", "tag_value": "v"}]
    assert (await api(http, platform, "GET", "/devices/py-dev")).body == made


async def test_add_device_duplicate_is_409(http, platform):
    platform.add_device("dup", SECRET)
    resp = await api(
        http, platform, "POST", "/devices", body={"device_id": "dup", "node_id": "n", "auth_info": {"secret": "s"}}
    )
    assert_error(resp, 409, ErrorCode.DEVICE_EXISTS, "dup")
    with pytest.raises(PlatformError) as err:
        platform.add_device("dup", SECRET)
    assert err.value.status == 409


@pytest.mark.parametrize(
    ("raw", "code", "word"),
    [
        ("{not json", ErrorCode.BAD_REQUEST_BODY, "JSON"),
        ("[1, 2]", ErrorCode.BAD_REQUEST_BODY, "object"),
        ("", ErrorCode.BAD_REQUEST_BODY, "JSON"),
        (json.dumps({"node_id": "n"}), ErrorCode.INVALID_INPUT, "auth_info"),
        (json.dumps({"auth_info": {"secret": "s"}}), ErrorCode.INVALID_INPUT, "node_id"),
        (json.dumps({"node_id": "n", "auth_info": {"auth_type": "CERTIFICATES"}}), ErrorCode.INVALID_INPUT, "SECRET"),
        (json.dumps({"node_id": "n", "auth_info": {"secret": ""}}), ErrorCode.INVALID_INPUT, "secret"),
        (json.dumps({"node_id": "a/b", "auth_info": {"secret": "s"}}), ErrorCode.INVALID_INPUT, "node_id"),
        (json.dumps({"device_id": "../x", "node_id": "n", "auth_info": {"secret": "s"}}), ErrorCode.INVALID_INPUT, ""),
        (json.dumps({"node_id": "n", "tags": "x", "auth_info": {"secret": "s"}}), ErrorCode.INVALID_INPUT, "tags"),
        (json.dumps({"node_id": "n", "fw_version": 3, "auth_info": {"secret": "s"}}), ErrorCode.INVALID_INPUT, "fw"),
    ],
)
async def test_add_device_bad_bodies_are_400(http, platform, bystander, raw, code, word):
    resp = await api(http, platform, "POST", "/devices", raw=raw, headers={"Content-Type": "application/json"})
    assert_error(resp, 400, code, word)
    assert set(platform.devices) == {"bystander"}
    await assert_relays(bystander)


async def test_rest_auth_and_generic_errors_are_json(http, platform, bystander, monkeypatch):
    platform.add_project("other", "other-token")
    platform.add_device("theirs", SECRET, project_id="other")

    assert_error(await api(http, platform, "GET", "/devices", token=None), 401, ErrorCode.UNAUTHORIZED, "X-Auth-Token")
    assert_error(await api(http, platform, "GET", "/devices", token="wrong"), 401, ErrorCode.UNAUTHORIZED)
    assert_error(await api(http, platform, "GET", "/devices", project="other"), 403, ErrorCode.FORBIDDEN, "other")
    assert_error(await api(http, platform, "GET", "/devices", project="nope"), 404, ErrorCode.PROJECT_NOT_FOUND)
    # Each project sees only its own devices.
    assert_error(await api(http, platform, "GET", "/devices/theirs"), 404, ErrorCode.DEVICE_NOT_FOUND, "theirs")
    mine = await api(http, platform, "GET", "/devices/theirs", project="other", token="other-token")
    assert mine.status == 200 and mine.body["device_id"] == "theirs"
    listed = await api(http, platform, "GET", "/devices")
    assert [d["device_id"] for d in listed.body["devices"]] == ["bystander"]

    # Unknown paths and methods: JSON, not aiohttp's HTML pages.
    async with http.get(platform.base_url + "/nowhere") as r:
        assert r.status == 404 and (await r.json())["error_code"] == "IOTDA.000404"
    resp = await api(http, platform, "PATCH", "/devices")
    assert_error(resp, 405, "IOTDA.000405", "PATCH")
    # A plain GET on a WebSocket endpoint with a valid token is a clear 400.
    async with http.get(
        bystander.created["tunnel_uri"].replace("ws://", "http://"),
        headers={"tunnel_access_token": bystander.created["tunnel_access_token"]},
    ) as r:
        assert r.status == 400 and "WebSocket" in (await r.json())["error_msg"]

    # An unexpected exception is a 500 JSON body without a traceback.
    def boom(*args: Any) -> None:
        raise RuntimeError("internal detail")

    monkeypatch.setattr(platform, "_device_of", boom)
    resp = await api(http, platform, "GET", "/devices/bystander")
    assert_error(resp, 500, "IOTDA.000500")
    assert "internal detail" not in resp.text and "Traceback" not in resp.text
    monkeypatch.undo()
    await assert_relays(bystander)


async def test_list_devices_paging(http, platform):
    ids = [f"dev-{i:02d}" for i in range(23)]
    for device_id in reversed(ids):  # insertion order must not matter: pages follow sorted ids
        platform.add_device(device_id, SECRET, tags={"n": device_id[-2:]})
    online = await link(http, platform, "dev-03")

    first = await api(http, platform, "GET", "/devices")
    assert first.status == 200
    assert [d["device_id"] for d in first.body["devices"]] == ids[:10]
    assert first.body["page"] == {"count": 23, "marker": "dev-09"}
    statuses = {d["device_id"]: d["status"] for d in first.body["devices"]}
    assert statuses["dev-03"] == "ONLINE" and statuses["dev-04"] == "OFFLINE"
    assert set(first.body["devices"][0]) >= {
        "device_id",
        "node_id",
        "device_name",
        "status",
        "fw_version",
        "sw_version",
        "product_id",
        "tags",
    }

    second = await api(http, platform, "GET", "/devices?marker=dev-09")
    assert [d["device_id"] for d in second.body["devices"]] == ids[10:20]
    third = await api(http, platform, "GET", f"/devices?marker={second.body['page']['marker']}")
    assert [d["device_id"] for d in third.body["devices"]] == ids[20:]
    assert third.body["page"] == {"count": 23, "marker": "dev-22"}
    empty = await api(http, platform, "GET", "/devices?marker=dev-22")
    assert empty.body == {"devices": [], "page": {"count": 23, "marker": None}}

    offset = await api(http, platform, "GET", "/devices?limit=3&offset=5")
    assert [d["device_id"] for d in offset.body["devices"]] == ids[5:8]
    both = await api(http, platform, "GET", "/devices?limit=2&offset=1&marker=dev-10")
    assert [d["device_id"] for d in both.body["devices"]] == ["dev-12", "dev-13"]
    everything = await api(http, platform, "GET", "/devices?limit=50")
    assert len(everything.body["devices"]) == 23

    for bad in ("limit=0", "limit=51", "limit=abc", "limit=-1"):
        assert_error(await api(http, platform, "GET", f"/devices?{bad}"), 400, ErrorCode.LIMIT_OUT_OF_RANGE, "limit")
    assert_error(await api(http, platform, "GET", "/devices?offset=-1"), 400, ErrorCode.INVALID_INPUT, "offset")
    await online.close()


# ---------------------------------------------------------------------------
# REST: tunnels


async def test_add_tunnel_notifies_device_and_shows_info(http, platform):
    platform.add_device("d1", SECRET)
    link_ws = await link(http, platform, "d1")
    resp = await api(http, platform, "POST", "/tunnels", body={"device_id": "d1"})
    assert resp.status == 201, resp.text
    body = resp.body
    assert set(body) == {"tunnel_id", "tunnel_access_token", "expires_in", "tunnel_uri"}
    tid = body["tunnel_id"]
    ws_base = platform.base_url.replace("http://", "ws://")
    assert body["tunnel_uri"] == f"{ws_base}/v5/iot/tunnels/{tid}/source-connect"
    assert body["expires_in"] == 86400

    note = await next_notify(link_ws)
    assert note.tunnel_uri == f"{ws_base}/v5/iot/tunnels/{tid}/device-connect"
    assert note.tunnel_access_token and note.tunnel_access_token != body["tunnel_access_token"]
    assert 86390 <= note.expires_in <= 86400

    info = (await api(http, platform, "GET", f"/tunnels/{tid}")).body
    assert info["tunnel_id"] == tid and info["device_id"] == "d1"
    assert info["status"] == "OPEN" and info["closed_time"] is None
    assert TIME_RE.match(info["create_time"])
    for which in ("source_connect_state", "device_connect_state"):
        assert info[which]["status"] == "DISCONNECTED" and TIME_RE.match(info[which]["last_update_time"])

    platform.add_device("d2", SECRET)
    link2 = await link(http, platform, "d2")
    other = await api(http, platform, "POST", "/tunnels", body={"device_id": "d2"})
    listed = await api(http, platform, "GET", "/tunnels")
    assert [t["tunnel_id"] for t in listed.body["tunnels"]] == [tid, other.body["tunnel_id"]]
    only = await api(http, platform, "GET", "/tunnels?device_id=d2")
    assert [t["tunnel_id"] for t in only.body["tunnels"]] == [other.body["tunnel_id"]]
    none = await api(http, platform, "GET", "/tunnels?device_id=ghost")
    assert none.body == {"tunnels": []}
    assert_error(await api(http, platform, "GET", "/tunnels/no-such-id"), 404, ErrorCode.TUNNEL_NOT_FOUND)
    await link2.close()


async def test_add_tunnel_constraints(http, platform, bystander):
    platform.add_device("sleepy", SECRET)
    assert_error(await api(http, platform, "POST", "/tunnels", body={}), 400, ErrorCode.INVALID_INPUT, "device_id")
    assert_error(
        await api(http, platform, "POST", "/tunnels", body={"device_id": 7}), 400, ErrorCode.INVALID_INPUT, "device_id"
    )
    assert_error(
        await api(http, platform, "POST", "/tunnels", raw="nope", headers={"Content-Type": "application/json"}),
        400,
        ErrorCode.BAD_REQUEST_BODY,
    )
    assert_error(
        await api(http, platform, "POST", "/tunnels", body={"device_id": "ghost"}),
        404,
        ErrorCode.DEVICE_NOT_FOUND,
        "ghost",
    )
    assert_error(
        await api(http, platform, "POST", "/tunnels", body={"device_id": "sleepy"}),
        400,
        ErrorCode.DEVICE_OFFLINE,
        "offline",
    )
    # One tunnel per device: the message names the existing tunnel.
    again = await api(http, platform, "POST", "/tunnels", body={"device_id": "bystander"})
    assert_error(again, 409, ErrorCode.TUNNEL_EXISTS, bystander.tunnel_id)
    assert len(platform.tunnels) == 1
    await assert_relays(bystander)


async def test_tunnel_limit_per_project(http):
    async with Platform(api_token=TOKEN, max_tunnels=2) as p:
        links = []
        for name in ("a", "b", "c"):
            p.add_device(name, SECRET)
            links.append(await link(http, p, name))
        a = await api(http, p, "POST", "/tunnels", body={"device_id": "a"})
        assert (await api(http, p, "POST", "/tunnels", body={"device_id": "b"})).status == 201
        full = await api(http, p, "POST", "/tunnels", body={"device_id": "c"})
        assert_error(full, 400, ErrorCode.TUNNEL_LIMIT, "2")
        # Closed tunnels still count; deleted ones do not.
        assert (await api(http, p, "PUT", f"/tunnels/{a.body['tunnel_id']}")).status == 204
        assert (await api(http, p, "POST", "/tunnels", body={"device_id": "c"})).status == 400
        assert (await api(http, p, "DELETE", f"/tunnels/{a.body['tunnel_id']}")).status == 204
        assert (await api(http, p, "POST", "/tunnels", body={"device_id": "c"})).status == 201
        for ws in links:
            await ws.close()


async def test_close_tunnel_tells_both_sides_then_delete(http, platform, bystander):
    t = await open_tunnel(http, platform, "d1")
    # Only a closed tunnel can be deleted.
    assert_error(
        await api(http, platform, "DELETE", f"/tunnels/{t.tunnel_id}"),
        400,
        ErrorCode.TUNNEL_NOT_CLOSED,
        "close it first",
    )

    assert (await api(http, platform, "PUT", f"/tunnels/{t.tunnel_id}")).status == 204
    for ws in (t.app, t.dev):
        await expect_disconnect(ws, Status.TUNNEL_CLOSED, "tunnel closed")
        await expect_close(ws, 1000)
    info = (await api(http, platform, "GET", f"/tunnels/{t.tunnel_id}")).body
    assert info["status"] == "CLOSED" and TIME_RE.match(info["closed_time"])
    assert info["source_connect_state"]["status"] == "DISCONNECTED"
    assert info["device_connect_state"]["status"] == "DISCONNECTED"
    assert (await api(http, platform, "PUT", f"/tunnels/{t.tunnel_id}")).status == 204  # idempotent

    # The device side cannot come back to a closed tunnel on its own.
    dev = await side(http, t.notify.tunnel_uri, t.notify.tunnel_access_token)
    await expect_close(dev, 1000, "tunnel closed")

    assert (await api(http, platform, "DELETE", f"/tunnels/{t.tunnel_id}")).status == 204
    assert_error(await api(http, platform, "GET", f"/tunnels/{t.tunnel_id}"), 404, ErrorCode.TUNNEL_NOT_FOUND)
    assert_error(await api(http, platform, "PUT", f"/tunnels/{t.tunnel_id}"), 404, ErrorCode.TUNNEL_NOT_FOUND)
    assert_error(await api(http, platform, "DELETE", f"/tunnels/{t.tunnel_id}"), 404, ErrorCode.TUNNEL_NOT_FOUND)
    assert (
        await handshake_status(http, t.created["tunnel_uri"], {"tunnel_access_token": t.created["tunnel_access_token"]})
        == 404
    )
    listed = await api(http, platform, "GET", "/tunnels")
    assert [x["tunnel_id"] for x in listed.body["tunnels"]] == [bystander.tunnel_id]
    await assert_relays(bystander)


async def test_closed_tunnel_reopens_on_source_connect(http, platform):
    t = await open_tunnel(http, platform, "d1")
    assert (await api(http, platform, "PUT", f"/tunnels/{t.tunnel_id}")).status == 204
    for ws in (t.app, t.dev):
        await expect_disconnect(ws, Status.TUNNEL_CLOSED)
        await expect_close(ws, 1000)

    app = await side(http, t.created["tunnel_uri"], t.created["tunnel_access_token"])
    note = await next_notify(t.link)  # the device is told again
    assert note.tunnel_uri == t.notify.tunnel_uri
    info = platform.tunnels[t.tunnel_id]
    assert info["status"] == "OPEN" and info["closed_time"] is None
    dev = await side(http, note.tunnel_uri, note.tunnel_access_token)
    assert (await recv_frame(app)).op is Op.CONNECT_TUNNEL
    await assert_relays(Tunnel(t.tunnel_id, t.device_id, t.created, note, t.link, app, dev))


async def test_reopen_refused_while_device_has_another_open_tunnel(http, platform):
    t = await open_tunnel(http, platform, "d1")
    assert (await api(http, platform, "PUT", f"/tunnels/{t.tunnel_id}")).status == 204
    newer = await api(http, platform, "POST", "/tunnels", body={"device_id": "d1"})
    assert newer.status == 201
    async with http.get(
        t.created["tunnel_uri"].replace("ws://", "http://"),
        headers={"tunnel_access_token": t.created["tunnel_access_token"]},
    ) as r:
        body = await r.json()
    assert r.status == 409 and newer.body["tunnel_id"] in body["error_msg"]
    assert platform.tunnels[t.tunnel_id]["status"] == "CLOSED"


# ---------------------------------------------------------------------------
# Tunnel WebSockets: authentication


async def test_unknown_tunnel_is_404_before_upgrade(http, platform):
    uri = platform.base_url.replace("http://", "ws://") + "/v5/iot/tunnels/nope/source-connect"
    assert await handshake_status(http, uri, {"tunnel_access_token": "whatever"}) == 404
    async with http.get(uri.replace("ws://", "http://").replace("source", "device")) as r:
        assert r.status == 404
        assert (await r.json())["error_code"] == ErrorCode.TUNNEL_NOT_FOUND


async def test_expired_token_is_401_before_upgrade(http, platform, bystander):
    platform.add_device("d1", SECRET)
    link_ws = await link(http, platform, "d1")
    created = (await api(http, platform, "POST", "/tunnels", body={"device_id": "d1"})).body
    note = await next_notify(link_ws)
    real = time.time
    platform.clock = lambda: real() + 86400 + 1
    try:
        for uri, token in (
            (created["tunnel_uri"], created["tunnel_access_token"]),
            (note.tunnel_uri, note.tunnel_access_token),
        ):
            assert await handshake_status(http, uri, {"tunnel_access_token": token}) == 401
            async with http.get(uri.replace("ws://", "http://"), headers={"tunnel_access_token": token}) as r:
                assert r.status == 401
                assert (await r.json())["error_code"] == "IOTDA.019705"
    finally:
        platform.clock = real
    # Connections made before expiry keep working.
    await assert_relays(bystander)


async def test_wrong_or_missing_token_closes_1002(http, platform, bystander):
    tunnel_id = bystander.tunnel_id
    for uri, token in (
        (bystander.created["tunnel_uri"], "wrong-token"),
        (bystander.created["tunnel_uri"], None),
        (bystander.created["tunnel_uri"], bystander.notify.tunnel_access_token),  # the device's token
        (bystander.notify.tunnel_uri, bystander.created["tunnel_access_token"]),  # the application's token
    ):
        ws = await side(http, uri, token)
        assert ws.protocol is None
        await expect_close(ws, 1002, "authentication failed")
    # The legitimate sides were not evicted.
    assert state(platform, tunnel_id, "source") == "CONNECTED"
    assert state(platform, tunnel_id, "device") == "CONNECTED"
    await assert_relays(bystander)


async def test_token_with_surrounding_whitespace_is_accepted(http, platform):
    platform.add_device("d1", SECRET)
    link_ws = await link(http, platform, "d1")
    created = (await api(http, platform, "POST", "/tunnels", body={"device_id": "d1"})).body
    note = await next_notify(link_ws)
    dev = await side(http, note.tunnel_uri, f"  {note.tunnel_access_token}\t")
    await eventually(lambda: state(platform, created["tunnel_id"], "device") == "CONNECTED")
    app = await side(http, created["tunnel_uri"], f" {created['tunnel_access_token']} ")
    assert (await recv_frame(app)).op is Op.CONNECT_TUNNEL
    await assert_relays(Tunnel(created["tunnel_id"], "d1", created, note, link_ws, app, dev))


# ---------------------------------------------------------------------------
# Tunnel WebSockets: relay


async def test_relay_is_byte_exact(http, platform):
    t = await open_tunnel(http, platform, "d1")
    connect = encode_frame(Frame.connect("r-1", "ops", "pw-hunter2", port=22))
    await t.app.send_str(connect)
    assert await recv_text(t.dev) == connect
    # The C SDK: no data key, pretty-printed with tabs.
    response = (
        '{\n\t"operation_type":\t"connect_response",\n\t"tunnel_service_type":\t"ssh",\n\t"request_id":\t"r-1"\n}'
    )
    await t.dev.send_str(response)
    assert await recv_text(t.app) == response
    # Non-ASCII, escapes and odd spacing survive untouched, in order.
    sent = [
        '{"operation_type" : "command_response", "request_id": "r-1", "data": "h\\u00e9llo \\ud83d\\ude00 \\r\\n"}',
        json.dumps({"operation_type": "command_response", "request_id": "r-1", "data": "日本語 ✓"}, ensure_ascii=False),
        '{"operation_type":"disconnect","request_id":"x","data":{"status_code":"408","status_msg":"idle"}}',
    ]
    for text in sent:
        await t.dev.send_str(text)
    assert [await recv_text(t.app) for _ in sent] == sent


async def test_ping_is_answered_not_relayed(http, platform):
    t = await open_tunnel(http, platform, "d1")
    await t.app.send_str(encode_frame(Frame(Op.PING, "ping-app")))
    pong = await recv_frame(t.app)
    assert pong.op is Op.PONG and pong.request_id == "ping-app" and pong.data is None
    await t.dev.send_str('{"operation_type":"ping","request_id":"ping-dev"}')
    pong = await recv_frame(t.dev)
    assert pong.op is Op.PONG and pong.request_id == "ping-dev" and pong.data is None
    # Neither ping crossed the tunnel: the next thing each side gets is the relay check.
    await assert_relays(t)


async def test_device_may_only_send_responses_and_disconnect(http, platform):
    t = await open_tunnel(http, platform, "d1")
    for op in (Op.COMMAND, Op.CONNECT_TUNNEL, Op.PONG):
        await t.dev.send_str(encode_frame(Frame(op, "sneaky", "x" if op is Op.COMMAND else None)))
    await assert_relays(t)  # the application saw none of them
    # The application side may send anything but ping.
    await t.app.send_str(encode_frame(Frame(Op.DISCONNECT, "bye", {"status_code": "200", "status_msg": "done"})))
    assert (await recv_frame(t.dev)).op is Op.DISCONNECT


async def test_connect_tunnel_when_application_connects_first(http, platform):
    platform.notify_grace = 0.5
    platform.add_device("d1", SECRET)
    link_ws = await link(http, platform, "d1")
    created = (await api(http, platform, "POST", "/tunnels", body={"device_id": "d1"})).body
    first_note = await next_notify(link_ws)
    app = await side(http, created["tunnel_uri"], created["tunnel_access_token"])
    # One notify per tunnel: the application connecting first sends no second one within the
    # grace period (the C SDK reconnects on every notify, which would break a login under way).
    await expect_silence(link_ws, 0.3)
    # Frames sent while the device is absent are dropped, not queued.
    await app.send_str(encode_frame(Frame.command("early", "lost\n")))
    await expect_silence(app, 0.1)
    # The device has not joined within the grace period while the application waits: one reminder.
    resent = await next_notify(link_ws)
    assert resent.tunnel_uri == first_note.tunnel_uri
    assert resent.tunnel_access_token == first_note.tunnel_access_token
    dev = await side(http, resent.tunnel_uri, resent.tunnel_access_token)
    announced = await recv_frame(app)
    assert announced.op is Op.CONNECT_TUNNEL and announced.data is None and announced.request_id
    t = Tunnel(created["tunnel_id"], "d1", created, resent, link_ws, app, dev)
    await assert_relays(t)  # the device's first frame is the check, not "early"
    await expect_silence(link_ws, 0.7)  # joined: no more notifies


async def test_a_dropped_device_side_is_notified_again_only_if_it_does_not_come_back(http, platform):
    platform.notify_grace = 0.5
    t = await open_tunnel(http, platform, "d1")
    await t.dev.close()
    await expect_disconnect(t.app, Status.PEER_GONE, "device d1 left the tunnel")
    # Not at once: a C SDK device reconnects by itself, and a notify would make it reconnect again.
    await expect_silence(t.link, 0.3)
    again = await next_notify(t.link)  # it did not come back within the grace period
    assert again.tunnel_uri == t.notify.tunnel_uri
    dev = await side(http, again.tunnel_uri, again.tunnel_access_token)
    assert (await recv_frame(t.app)).op is Op.CONNECT_TUNNEL
    await dev.close()
    await expect_disconnect(t.app, Status.PEER_GONE, "device d1 left the tunnel")
    # This time it comes back by itself within the grace period: no notify.
    dev = await side(http, again.tunnel_uri, again.tunnel_access_token)
    assert (await recv_frame(t.app)).op is Op.CONNECT_TUNNEL
    await expect_silence(t.link, 0.8)


async def test_newer_connection_evicts_older_with_4000(http, platform):
    t = await open_tunnel(http, platform, "d1")
    app2 = await side(http, t.created["tunnel_uri"], t.created["tunnel_access_token"])
    await expect_close(t.app, 4000, "replaced by a newer connection")
    assert (await recv_frame(app2)).op is Op.CONNECT_TUNNEL  # the device is still there
    t.app = app2
    dev2 = await side(http, t.notify.tunnel_uri, t.notify.tunnel_access_token)
    await expect_close(t.dev, 4000, "replaced by a newer connection")
    # The application hears of the new device side, not of a departure.
    assert (await recv_frame(app2)).op is Op.CONNECT_TUNNEL
    t.dev = dev2
    await assert_relays(t)
    assert state(platform, t.tunnel_id, "device") == "CONNECTED"


async def test_device_drop_tells_application_503(http, platform, bystander):
    t = await open_tunnel(http, platform, "d1")
    await t.dev.close()
    await expect_disconnect(t.app, Status.PEER_GONE, "device d1 left the tunnel")
    # The state was current by the time the application heard.
    info = platform.tunnels[t.tunnel_id]
    assert info["device_connect_state"]["status"] == "DISCONNECTED"
    assert info["source_connect_state"]["status"] == "CONNECTED"
    assert info["status"] == "OPEN"

    # And the other way round.
    dev = await side(http, t.notify.tunnel_uri, t.notify.tunnel_access_token)
    assert (await recv_frame(t.app)).op is Op.CONNECT_TUNNEL
    await t.app.close()
    await expect_disconnect(dev, Status.PEER_GONE, "application")
    await eventually(lambda: state(platform, t.tunnel_id, "source") == "DISCONNECTED")
    await assert_relays(bystander)


# ---------------------------------------------------------------------------
# Tunnel WebSockets: bad messages


@pytest.mark.parametrize("sender", ["app", "dev"])
async def test_oversize_message_closes_sender_1009_and_tells_peer_413(http, platform, bystander, sender):
    t = await open_tunnel(http, platform, "d1")
    src, peer = (t.app, t.dev) if sender == "app" else (t.dev, t.app)
    op = Op.COMMAND if sender == "app" else Op.COMMAND_RESPONSE
    overhead = len(encode_frame(Frame(op, "big", "")))
    exact = encode_frame(Frame(op, "big", "é" * ((10_240 - overhead) // 2)))  # 2 bytes per é: at the limit
    assert len(exact.encode()) <= 10_240
    await src.send_str(exact)
    assert await recv_text(peer) == exact  # the limit itself is allowed
    too_big = encode_frame(Frame(op, "big", "é" * ((10_240 - overhead) // 2 + 1)))
    await src.send_str(too_big)
    label = "application" if sender == "app" else "device"
    await expect_disconnect(peer, Status.MESSAGE_TOO_BIG, label, "10240")
    reason = await expect_close(src, 1009, "10240")
    assert len(reason.encode()) <= 123
    which = "source" if sender == "app" else "device"
    assert state(platform, t.tunnel_id, which) == "DISCONNECTED"
    await assert_relays(bystander)


async def test_huge_message_tripping_aiohttp_limit_is_treated_the_same(http, platform, bystander):
    t = await open_tunnel(http, platform, "d1")
    await t.app.send_str(encode_frame(Frame.command("huge", "x" * (4 * 10_240 + 2048))))
    await expect_disconnect(t.dev, Status.MESSAGE_TOO_BIG, "application")
    await expect_close(t.app, 1009)
    await assert_relays(bystander)


@pytest.mark.parametrize(
    ("sender", "payload", "problem"),
    [
        ("dev", "not json at all", "not JSON"),
        ("dev", '{"operation_type":"command_response","request_id":"r","data":42}', "data must be"),
        ("app", '{"operation_type":"' + "x" * 300 + '","request_id":"r"}', "unknown operation_type"),
        ("app", '{"operation_type":"command","data":"ls"}', "no request_id"),
        ("app", b"\x00\x01binary", "binary"),
    ],
)
async def test_malformed_message_closes_sender_1007_and_tells_peer_422(
    http, platform, bystander, sender, payload, problem
):
    t = await open_tunnel(http, platform, "d1")
    src, peer = (t.app, t.dev) if sender == "app" else (t.dev, t.app)
    if isinstance(payload, bytes):
        await src.send_bytes(payload)
    else:
        await src.send_str(payload)
    label = "application" if sender == "app" else "device"
    told = await expect_disconnect(peer, Status.MALFORMED, label)
    assert len(told.data["status_msg"]) <= 256  # a long problem is cut short for the peer too
    reason = await expect_close(src, 1007, problem)
    assert len(reason.encode()) <= 123
    # The peer stays connected and hears when the sender comes back.
    if sender == "dev":
        t.dev = await side(http, t.notify.tunnel_uri, t.notify.tunnel_access_token)
        assert (await recv_frame(t.app)).op is Op.CONNECT_TUNNEL
    else:
        t.app = await side(http, t.created["tunnel_uri"], t.created["tunnel_access_token"])
        assert (await recv_frame(t.app)).op is Op.CONNECT_TUNNEL
    await assert_relays(t)
    await assert_relays(bystander)


# ---------------------------------------------------------------------------
# Device links


async def test_link_authentication_failures(http, platform, bystander):
    platform.add_device("d1", SECRET)
    url = platform.base_url + LINK_PATH.format(device_id="d1")
    now = datetime.now(UTC)
    stamp = link_timestamp(now)
    stale = link_timestamp(now - timedelta(hours=4))
    cases = [
        ({TIMESTAMP_HEADER: stamp, PASSWORD_HEADER: device_password("wrong-secret", stamp)}, 401),
        ({TIMESTAMP_HEADER: stale, PASSWORD_HEADER: device_password(SECRET, stale)}, 401),
        ({TIMESTAMP_HEADER: "2024-01-01", PASSWORD_HEADER: device_password(SECRET, "2024-01-01")}, 401),
        ({TIMESTAMP_HEADER: "2024139912", PASSWORD_HEADER: device_password(SECRET, "2024139912")}, 401),
        ({PASSWORD_HEADER: device_password(SECRET, stamp)}, 401),
        ({}, 401),
    ]
    for headers, status in cases:
        assert await handshake_status(http, url, headers) == status
        async with http.get(url, headers=headers) as r:
            assert r.status == status
            assert (await r.json())["error_code"] == ErrorCode.UNAUTHORIZED
    async with http.get(platform.base_url + LINK_PATH.format(device_id="ghost")) as r:
        assert r.status == 404 and (await r.json())["error_code"] == ErrorCode.DEVICE_NOT_FOUND
    # Right credentials, but not a WebSocket request.
    good = {TIMESTAMP_HEADER: stamp, PASSWORD_HEADER: device_password(SECRET, stamp)}
    async with http.get(url, headers=good) as r:
        assert r.status == 400 and "WebSocket" in (await r.json())["error_msg"]
    assert platform.devices["d1"]["status"] == "OFFLINE"
    # Within the clock skew is fine, on either side of now.
    for hours in (-2, 1):
        ws = await link(http, platform, "d1", stamp=link_timestamp(now + timedelta(hours=hours)))
        await ws.close()
        await eventually(lambda: platform.devices["d1"]["status"] == "OFFLINE")
    await assert_relays(bystander)


async def test_link_eviction_offline_and_notify_resend(http, platform):
    t = await open_tunnel(http, platform, "d1")
    # A newer link evicts the older; the device side is connected, so no notify is resent.
    link2 = await link(http, platform, "d1")
    await expect_close(t.link, 4000, "replaced by a newer connection")
    await expect_silence(link2)
    assert platform.devices["d1"]["status"] == "ONLINE"

    # Device side gone, link gone: the device is OFFLINE but its tunnel stays OPEN.
    await t.dev.close()
    await expect_disconnect(t.app, Status.PEER_GONE)
    await link2.close()
    await eventually(lambda: platform.devices["d1"]["status"] == "OFFLINE")
    assert platform.tunnels[t.tunnel_id]["status"] == "OPEN"
    shown = await api(http, platform, "GET", "/devices/d1")
    assert shown.body["status"] == "OFFLINE"

    # Coming back online, the device is told about its open tunnel again.
    link3 = await link(http, platform, "d1")
    note = await next_notify(link3)
    assert note.tunnel_uri == t.notify.tunnel_uri
    dev = await side(http, note.tunnel_uri, note.tunnel_access_token)
    assert (await recv_frame(t.app)).op is Op.CONNECT_TUNNEL
    t.dev = dev
    await assert_relays(t)


async def test_link_messages_from_device_are_ignored(http, platform):
    platform.add_device("d1", SECRET)
    link_ws = await link(http, platform, "d1")
    await link_ws.send_str('{"services": []}')
    await link_ws.send_bytes(b"\x01")
    resp = await api(http, platform, "POST", "/tunnels", body={"device_id": "d1"})
    assert resp.status == 201
    assert (await next_notify(link_ws)).tunnel_uri.endswith(f"/{resp.body['tunnel_id']}/device-connect")


# ---------------------------------------------------------------------------
# Life cycle, logging, serve()


async def test_stop_says_goodbye_everywhere(http):
    p = Platform(api_token=TOKEN)
    await p.start()
    try:
        t = await open_tunnel(http, p, "d1")
    except BaseException:
        await p.stop()
        raise
    await p.stop()
    for ws in (t.app, t.dev):
        await expect_disconnect(ws, Status.TUNNEL_CLOSED, "platform shutting down")
        await expect_close(ws, 1001)
    await expect_close(t.link, 1001)
    assert p.devices["d1"]["status"] == "OFFLINE"
    await p.stop()  # idempotent
    with pytest.raises(aiohttp.ClientConnectionError):
        await api(http, p, "GET", "/devices")


async def test_no_secrets_in_logs(http, platform, caplog):
    caplog.set_level(logging.DEBUG)
    t = await open_tunnel(http, platform, "d1")
    await t.app.send_str(encode_frame(Frame.connect("c", "ops", "pw-hunter2")))
    await recv_text(t.dev)
    await t.dev.send_str("broken {")
    await expect_disconnect(t.app, Status.MALFORMED)
    bad = await side(http, t.created["tunnel_uri"], "guessed-token")
    await expect_close(bad, 1002)
    await api(http, platform, "GET", "/devices", token="wrong-api-token")
    assert (await api(http, platform, "PUT", f"/tunnels/{t.tunnel_id}")).status == 204
    stamp = link_timestamp()
    secrets_seen = [
        TOKEN,
        SECRET,
        "pw-hunter2",
        "wrong-api-token",
        "guessed-token",
        t.created["tunnel_access_token"],
        t.notify.tunnel_access_token,
        device_password(SECRET, stamp),
    ]
    text = caplog.text
    assert f"tunnel {t.tunnel_id}" in text  # lifecycle is logged with ids
    assert "device d1 online" in text
    for secret in secrets_seen:
        assert secret not in text


async def test_serve_prints_url_and_stops_on_sigterm(http, capsys):
    task = asyncio.create_task(serve(api_token=TOKEN, project_id="p1"))
    out = ""
    async with asyncio.timeout(WAIT):
        while "http://" not in out:
            assert not task.done(), task
            await asyncio.sleep(0.01)
            out += capsys.readouterr().out
    base_url = out.strip().splitlines()[-1]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
    async with http.get(f"{base_url}/v5/iot/p1/devices", headers={"X-Auth-Token": TOKEN}) as r:
        assert r.status == 200 and (await r.json())["devices"] == []
    signal.raise_signal(signal.SIGTERM)
    async with asyncio.timeout(WAIT):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{base_url}/v5/iot/p1/devices"):
            pass


def test_constructor_and_projects():
    p = Platform()
    assert len(p.api_token) >= 20  # a random token when none is given
    assert Platform().api_token != p.api_token
    p.add_project("other", "tok-2")
    with pytest.raises(ValueError, match="already exists"):
        p.add_project("other", "tok-3")
    with pytest.raises(ValueError, match="own"):
        p.add_project("third", "tok-2")
    with pytest.raises(PlatformError) as err:
        p.add_device("x", SECRET, project_id="nowhere")
    assert err.value.status == 404
    with pytest.raises(ValueError):
        Platform(max_tunnels=0)
    assert "tok-2" not in repr(p) and p.api_token not in repr(p)

"""The C SDK's habits (``quirks="c-sdk"`` and ``"c-sdk-1.1"``) against real parts.

Today's C SDK (huaweicloud-iot-device-sdk-c, ``src/tunnel/``) copies raw
2,048-byte reads into its JSON text, so a character split between two reads
makes a text message that is not valid UTF-8, and stray heap bytes can follow a
full read; it reconnects on every ``tunnel_notify`` and after any close but
1000/1002/4000, each time without its SSH session; it answers every SSH failure
with ``disconnect`` 400.  These tests run the agent in those modes against the
real platform and the real client (split characters arrive whole, junk is shown,
nothing is closed for its encoding) and against the frame-by-frame stand-in of
``test_agent`` (the connection habits, frame for frame).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.conftest import SSH_PASSWORD, SSH_USER, Devices
from tests.server import test_agent
from tests.server.test_agent import _ANY, PASSWORD, USER, WAIT, DeviceSide, FakePlatform, _free_port, _tunnel, _until
from tests.server.test_platform import TOKEN, expect_close, expect_disconnect, open_tunnel, recv
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.protocol.frames import Frame, Op, Status, encode_frame
from tunnelnb.server.agent import Agent
from tunnelnb.server.agent.quirks import C_SDK_CHANNEL_FAILED, StrayBytes, cjson_escape, encode_as
from tunnelnb.server.platform import Platform

# test_agent's stand-in for the platform, and its agents against an in-process SSH server.
fake_platform = test_agent.fake_platform
sshd = test_agent.sshd
make_agent = test_agent.make_agent

C_SDKS = ["c-sdk", "c-sdk-1.1"]
#: 5 bytes a pair: 2,048-byte reads split one of the characters at almost every boundary.
PAIR = "é中"


def _utf8(message: bytes) -> bool:
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Relayed:
    """Records the device messages the platform relays (its late-bound ``_route``), as bytes."""

    def __init__(self, platform: Platform) -> None:
        self.device: list[bytes] = []
        original = platform._route

        async def recording(tunnel: Any, conn: Any, frame: Frame, text: str) -> None:
            if conn.side.label == "device":
                self.device.append(text.encode("utf-8", "surrogateescape"))
            await original(tunnel, conn, frame, text)

        platform._route = recording  # type: ignore[method-assign]


# ---------------------------------------------------------------------------
# Output: raw bytes through the real platform to the real client


def _pairs_file(tmp_path: Path, pairs: int) -> str:
    text = "".join(PAIR * 60 + "\n" for _ in range(pairs // 60))
    (tmp_path / "pairs.txt").write_text(text, encoding="utf-8")
    return text


async def test_split_characters_reach_the_client_whole(
    api: PlatformAPI, platform: Platform, devices: Devices, ssh_server, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="tunnelnb.server.agent")
    relayed = _Relayed(platform)
    await devices.add("dev-c", ssh_port=ssh_server.port, quirks="c-sdk", stray_bytes=0)
    text = _pairs_file(tmp_path, 6000)  # 30,000 bytes of output in 15 reads or more
    async with DeviceSession(api, "dev-c") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        r = await dev.run(f"cat {tmp_path}/pairs.txt", timeout=20)
        assert (r.status, r.exit_code) == (ResultStatus.OK, 0), r.error
        assert r.stdout == text  # every character, split or not, exactly once
        assert (await dev.run("echo still here")).stdout == "still here\n"
    # The platform relayed messages that are not valid UTF-8 and did not close the device for them.
    assert any(not _utf8(message) for message in relayed.device)
    assert not any(b"\\udc" in message for message in relayed.device)  # raw bytes, not escapes
    assert not [r for r in caplog.records if "1007" in r.getMessage()]


async def test_stray_bytes_are_shown_not_fatal(api: PlatformAPI, devices: Devices, ssh_server, tmp_path: Path) -> None:
    # Stray bytes after every full read: output that must be exact needs a checksum (verify=True).
    await devices.add("dev-s", ssh_port=ssh_server.port, quirks="c-sdk", stray_bytes=1.0, stray_seed=7)
    text = _pairs_file(tmp_path, 6000)
    async with DeviceSession(api, "dev-s") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        r = await dev.run(f"cat {tmp_path}/pairs.txt", timeout=5)
        # The end marker may be damaged too (rarely: it would have to straddle a full read).
        assert r.status in (ResultStatus.OK, ResultStatus.TIMEOUT), r
        assert r.stdout and r.stdout != text
        assert r.stdout.count(PAIR) >= 0.9 * text.count(PAIR)  # what the junk did not hit is there
        assert "\ufffd" in r.stdout  # bytes that are no character are shown, not dropped
        r = await dev.run("echo still here", timeout=10)
        assert (r.status, r.stdout) == (ResultStatus.OK, "still here\n")


def test_stray_bytes_are_seeded_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = StrayBytes(0.5, "s"), StrayBytes(0.5, "s")
    draws = [a.after_full_read() for _ in range(200)]
    assert draws == [b.after_full_read() for _ in range(200)]
    junk = [d for d in draws if d]
    assert 60 < len(junk) < 140
    assert all(1 <= len(d) <= 80 and b"\0" not in d for d in junk)
    assert not any(StrayBytes(0.0, "s").after_full_read() for _ in range(100))
    assert all(StrayBytes(1.0, "s").after_full_read() for _ in range(100))
    with pytest.raises(ValueError, match="probability"):
        StrayBytes(1.5, "s")
    monkeypatch.setenv("TUNNELNB_STRAY_BYTES", "0:9")
    assert Agent("http://x", "d", "s", quirks="c-sdk").stray_bytes.probability == 0
    monkeypatch.setenv("TUNNELNB_STRAY_BYTES", "0.5:9")
    env, same = Agent("http://x", "d", "s", quirks="c-sdk").stray_bytes, StrayBytes(0.5, "9")
    assert [env.after_full_read() for _ in range(20)] == [same.after_full_read() for _ in range(20)]
    monkeypatch.setenv("TUNNELNB_STRAY_BYTES", "often")
    with pytest.raises(ValueError, match="TUNNELNB_STRAY_BYTES"):
        Agent("http://x", "d", "s", quirks="c-sdk")


def test_c_sdk_frames_carry_raw_bytes_as_cjson_prints_them() -> None:
    raw = b'a"\\\n\x01' + "中".encode()[:2]
    message = encode_as("c-sdk", Frame(Op.COMMAND_RESPONSE, "r1", raw.decode("utf-8", "surrogateescape")))
    skeleton = encode_frame(Frame(Op.COMMAND_RESPONSE, "r1", ""), pretty=True).encode()
    assert message == skeleton.replace(b'""\n}', b'"a\\"\\\\\\n\\u0001\xe4\xb8"\n}')
    assert cjson_escape(b"\b\f\r\t\x1f\x7f\xff") == b"\\b\\f\\r\\t\\u001f\x7f\xff"
    assert not _utf8(message)
    # The other modes stay valid UTF-8 (escapes).
    assert b"\\udcb8" in encode_as("none", Frame(Op.COMMAND_RESPONSE, "r1", raw.decode("utf-8", "surrogateescape")))


# ---------------------------------------------------------------------------
# The platform: a device's bytes are relayed as they are; the application stays strict


async def test_platform_relays_a_device_message_that_is_not_utf8_byte_for_byte() -> None:
    async with Platform(api_token=TOKEN) as platform, aiohttp.ClientSession() as http:
        t = await open_tunnel(http, platform, "raw-1")
        # An application that reads bytes, as tunnelnb's client does (it replaces the first: 4000).
        app = await http.ws_connect(
            t.created["tunnel_uri"],
            headers={"tunnel_access_token": t.created["tunnel_access_token"]},
            decode_text=False,
        )
        await expect_close(t.app, 4000)
        assert (await recv(app)).type is WSMsgType.TEXT  # connect_tunnel
        message = b'{\n\t"operation_type":\t"command_response",\n\t"request_id":\t"r",\n\t"data":\t"x\xe4\xb8"\n}'
        await t.dev.send_frame(message, WSMsgType.TEXT)
        got = await recv(app)
        assert (got.type, got.data) == (WSMsgType.TEXT, message)
        # Still a frame: one that is not JSON is refused (1007) whatever its encoding.
        await t.dev.send_frame(b'{"operation_type":\xff}', WSMsgType.TEXT)
        await expect_close(t.dev, 1007, "not JSON")
        assert b'"status_code":"422"' in (await recv(app)).data
        # The application side stays strict.
        t.dev = await http.ws_connect(
            t.notify.tunnel_uri, headers={"tunnel_access_token": t.notify.tunnel_access_token}
        )
        assert (await recv(app)).type is WSMsgType.TEXT  # connect_tunnel again
        await app.send_frame(b'{"operation_type":"command","request_id":"c","data":"\xe4\xb8"}', WSMsgType.TEXT)
        await expect_disconnect(t.dev, Status.MALFORMED, "application")
        msg = await recv(app)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1007) and "not valid UTF-8" in msg.extra
        await app.close()
        await t.dev.close()
        await t.link.close()


# ---------------------------------------------------------------------------
# The connection's habits, frame for frame (FakePlatform, test_agent's stand-in)


@pytest.mark.parametrize("quirks", C_SDKS)
async def test_every_notify_makes_a_new_connection_and_a_new_ssh_session(
    fake_platform: FakePlatform, make_agent, quirks: str
) -> None:
    agent, first = await _tunnel(fake_platform, make_agent, quirks=quirks, stray_bytes=0)
    await first.login()
    assert await first.run("V=first") == ("", 0, _ANY)
    await fake_platform.notify("t1")  # the very tunnel it is connected to
    second = await fake_platform.accept()
    async with asyncio.timeout(WAIT):
        await first.closed.wait()
    assert first.close_code == 1000
    await _until(lambda: agent.tunnel_connects == 1)  # a new connection, not a reconnect
    assert not agent.ssh_connected
    await second.login()
    assert await second.run('echo "[$V]"') == ("[]\n", 0, _ANY)  # a new shell


@pytest.mark.parametrize("quirks", C_SDKS)
async def test_a_notify_during_the_login_loses_it(fake_platform: FakePlatform, make_agent, quirks: str) -> None:
    agent, first = await _tunnel(fake_platform, make_agent, quirks=quirks, stray_bytes=0)
    await first.send(Frame.connect("c1", USER, PASSWORD))
    await fake_platform.notify("t1")
    second = await fake_platform.accept()
    async with asyncio.timeout(WAIT):
        await first.closed.wait()
    # The application saw connect_response (sent before SSH is tried), then the device left: no
    # disconnect, no output.  On the new connection the device waits for a new connect.
    assert [f.op for f in _drain(first)] == [Op.CONNECT_RESPONSE]
    assert first.close_code == 1000
    with pytest.raises(TimeoutError):
        await second.recv(timeout=0.3)
    assert not agent.ssh_connected
    await second.login()
    assert await second.run("echo again") == ("again\n", 0, _ANY)


def _drain(side: DeviceSide) -> list[Frame]:
    frames = []
    while not side.frames.empty():
        frames.append(side.frames.get_nowait())
    return frames


@pytest.mark.parametrize("quirks", ["none", *C_SDKS])
async def test_a_repeated_notify_is_kept_only_by_a_well_behaved_agent(
    fake_platform: FakePlatform, make_agent, quirks: str
) -> None:
    agent, first = await _tunnel(fake_platform, make_agent, quirks=quirks, stray_bytes=0)
    await _until(lambda: agent.tunnel_connected)
    await fake_platform.notify("t1")
    if quirks == "none":
        with pytest.raises(TimeoutError):
            await fake_platform.accept(timeout=0.3)
        assert not first.closed.is_set()
    else:
        await fake_platform.accept()
        assert first.closed.is_set() and first.close_code == 1000


@pytest.mark.parametrize("quirks", C_SDKS)
@pytest.mark.parametrize("failure", ["wrong password", "no SSH server"])
async def test_every_ssh_failure_is_disconnect_400(
    fake_platform: FakePlatform, make_agent, quirks: str, failure: str
) -> None:
    kwargs = {"ssh_port": _free_port()} if failure == "no SSH server" else {}
    _, dev = await _tunnel(fake_platform, make_agent, quirks=quirks, **kwargs)
    await dev.send(Frame.connect("c1", USER, "nope" if failure == "wrong password" else PASSWORD))
    assert await dev.recv() == Frame(Op.CONNECT_RESPONSE, "c1", None)
    expected = Frame(
        Op.DISCONNECT, "c1", {"status_code": "400", "status_msg": "WssClientListenerOnMsg: Create SSH channel failed"}
    )
    assert await dev.recv() == expected
    assert dev.raw[1] == encode_frame(expected, pretty=True)
    assert C_SDK_CHANNEL_FAILED == expected.data["status_msg"]
    assert "nope" not in "".join(dev.raw)


@pytest.mark.parametrize("quirks", C_SDKS)
async def test_reconnects_after_1007_with_a_new_ssh_session(
    fake_platform: FakePlatform, make_agent, quirks: str
) -> None:
    agent, first = await _tunnel(fake_platform, make_agent, quirks=quirks, stray_bytes=0)
    await first.login()
    assert await first.run("V=first") == ("", 0, _ANY)
    await first.ws.close(code=1007, message=b"a message the protocol cannot carry")
    second = await fake_platform.accept()
    await _until(lambda: agent.tunnel_connects == 2)  # the same tunnel, reconnected
    await _until(lambda: not agent.ssh_connected)  # the SSH session went with the old connection
    with pytest.raises(TimeoutError):
        await second.recv(timeout=0.3)  # and nothing is said of it
    await second.login()
    assert await second.run('echo "[$V]"') == ("[]\n", 0, _ANY)

"""The device agent against real parts: an aiohttp stand-in for the platform, ShellServer, /bin/sh on PTYs.

The local platform module is developed separately, so :class:`FakePlatform`
plays its role for one device: the device link (checking the agent's
IoTDA-style login headers) and the device side of tunnels, which the tests
drive frame by frame.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import re
import socket
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import WSMsgType, web

from tunnelnb.errors import DeviceAuthError, PlatformUnreachable
from tunnelnb.protocol.devicelink import (
    LINK_PATH,
    PASSWORD_HEADER,
    TIMESTAMP_HEADER,
    device_password,
    link_timestamp,
    tunnel_notify,
)
from tunnelnb.protocol.frames import SSH_IDLE_REQUEST_ID, Frame, Op, Status, decode_frame, encode_frame
from tunnelnb.protocol.shell import CommandParser, Finished, Output, TerminalText, command_script, setup_script
from tunnelnb.server.agent import Agent, c_sdk_json_size
from tunnelnb.server.sshserver import ShellServer

DEVICE_ID = "dev-1"
SECRET = "device-secret"
USER, PASSWORD = "ops", "pw-ops"
WAIT = 10.0  # upper bound of every wait; the happy paths take milliseconds


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


_ANY = _Any()  # matches anything: for the frames part of DeviceSide.run's result


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"


async def _until(predicate, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls process and socket state
            await asyncio.sleep(0.01)


class DeviceSide:
    """The platform's end of one device-side tunnel WebSocket, driven by a test."""

    def __init__(self, ws: web.WebSocketResponse, tunnel_id: str) -> None:
        self.ws = ws
        self.tunnel_id = tunnel_id
        self.raw: list[str] = []  # each message received, its bytes decoded with surrogateescape
        self.wire: list[bytes] = []  # each message received, as the bytes it was
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.term = TerminalText()
        self._ids = (f"r{i}" for i in itertools.count(1))
        self._markers = itertools.count(1)

    def next_id(self) -> str:
        return next(self._ids)

    async def send(self, frame: Frame) -> None:
        await self.ws.send_str(encode_frame(frame))

    async def recv(self, timeout: float = WAIT) -> Frame:
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def expect(self, op: Op, timeout: float = WAIT) -> Frame:
        """The next frame of type ``op``, skipping output (banners, prompts)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if frame.op is op:
                    return frame
                assert frame.op is Op.COMMAND_RESPONSE, f"expected {op}, got {frame!r}"

    async def login(self, user: str = USER, password: str = PASSWORD) -> Frame:
        """connect → connect_response, then quieten the shell (docs/architecture.md, "Shell framing")."""
        rid = self.next_id()
        await self.send(Frame.connect(rid, user, password))
        response = await self.expect(Op.CONNECT_RESPONSE)
        assert response.request_id == rid
        await self.send(Frame.command(self.next_id(), setup_script()))
        return response

    async def run(self, command: str, timeout: float = WAIT) -> tuple[str, int, list[Frame]]:
        """Run one framed command: its output, exit code, and the command_response frames seen."""
        marker = f"t{next(self._markers)}"
        await self.send(Frame.command(self.next_id(), command_script(marker, command)))
        parser = CommandParser(marker)
        out: list[str] = []
        seen: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                assert frame.op is Op.COMMAND_RESPONSE, f"unexpected {frame!r}"
                seen.append(frame)
                for event in parser.feed(self.term.feed(frame.data)):
                    if isinstance(event, Output):
                        out.append(event.text)
                    elif isinstance(event, Finished):
                        return "".join(out), event.exit_code, seen

    async def output_until(self, needle: str, timeout: float = WAIT) -> tuple[str, list[Frame]]:
        """Cleaned output up to ``needle``, and the frames that carried it."""
        text, seen = "", []
        async with asyncio.timeout(timeout):
            while needle not in text:
                frame = await self.frames.get()
                if frame.op is Op.PONG:
                    continue
                assert frame.op is Op.COMMAND_RESPONSE, f"unexpected {frame!r}"
                seen.append(frame)
                text += self.term.feed(frame.data)
        return text, seen


class FakePlatform:
    """The platform's role for one device: device link and device-connect WebSockets."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.sides: asyncio.Queue[DeviceSide] = asyncio.Queue()
        self.links: list[web.WebSocketResponse] = []
        self.link_ready = asyncio.Event()
        self.link_attempts = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(LINK_PATH.format(device_id="{device_id}"), self._link)
        app.router.add_get("/v5/iot/tunnels/{tunnel_id}/device-connect", self._device_connect)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _link(self, request: web.Request) -> web.StreamResponse:
        self.link_attempts += 1
        if request.match_info["device_id"] != DEVICE_ID:
            return web.json_response({"error_code": "IOTDA.014000", "error_msg": "no such device"}, status=404)
        stamp = request.headers.get(TIMESTAMP_HEADER, "")
        given = request.headers.get(PASSWORD_HEADER, "")
        now = datetime.now(UTC)
        fresh = {link_timestamp(now), link_timestamp(now - timedelta(hours=1))}
        if stamp not in fresh or not hmac.compare_digest(given, device_password(SECRET, stamp)):
            return web.json_response({"error_code": "IOTDA.000002", "error_msg": "bad device password"}, status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.links.append(ws)
        self.link_ready.set()
        async for _ in ws:
            pass
        return ws

    async def notify(self, tunnel_id: str = "t1", token: str | None = None) -> None:
        """Create a tunnel and tell the device about it on its link."""
        token = token or f"token-{tunnel_id}"
        self.tokens[tunnel_id] = token
        async with asyncio.timeout(WAIT):
            await self.link_ready.wait()
        uri = self.url.replace("http://", "ws://") + f"/v5/iot/tunnels/{tunnel_id}/device-connect"
        await self.links[-1].send_str(json.dumps(tunnel_notify(uri, token, 86400)))

    async def accept(self, timeout: float = WAIT) -> DeviceSide:
        async with asyncio.timeout(timeout):
            return await self.sides.get()

    async def _device_connect(self, request: web.Request) -> web.StreamResponse:
        tunnel_id = request.match_info["tunnel_id"]
        expected = self.tokens.get(tunnel_id)
        given = request.headers.get("tunnel_access_token", "")
        if expected is None or not hmac.compare_digest(given, expected):
            return web.json_response({"error_code": "IOTDA.019705", "error_msg": "bad tunnel token"}, status=401)
        ws = web.WebSocketResponse(decode_text=False)  # as the platform: a C SDK's text need not be UTF-8
        await ws.prepare(request)
        side = DeviceSide(ws, tunnel_id)
        self.sides.put_nowait(side)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    side.wire.append(msg.data)
                    side.raw.append(msg.data.decode("utf-8", "surrogateescape"))
                    side.frames.put_nowait(decode_frame(msg.data, max_bytes=None))
        finally:
            side.close_code = ws.close_code
            side.closed.set()
        return ws


@pytest.fixture
async def fake_platform():
    p = FakePlatform()
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def sshd():
    async with ShellServer(users={USER: PASSWORD}) as srv:
        yield srv


@pytest.fixture
async def make_agent(fake_platform: FakePlatform, sshd: ShellServer):
    agents: list[Agent] = []

    async def make(**kwargs) -> Agent:
        kwargs.setdefault("ssh_port", sshd.port)
        kwargs.setdefault("reconnect_step", 0.05)
        device_id = kwargs.pop("device_id", DEVICE_ID)
        secret = kwargs.pop("secret", SECRET)
        agent = Agent(fake_platform.url, device_id, secret, **kwargs)
        await agent.start()
        agents.append(agent)
        await agent.wait_online(WAIT)
        return agent

    yield make
    for agent in agents:
        await agent.stop()


async def _tunnel(fake_platform: FakePlatform, make_agent, **kwargs) -> tuple[Agent, DeviceSide]:
    agent = await make_agent(**kwargs)
    await fake_platform.notify("t1")
    return agent, await fake_platform.accept()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Device link


async def test_device_link_auth_errors_are_clear(fake_platform: FakePlatform) -> None:
    with pytest.raises(DeviceAuthError, match="HTTP 401"):
        await Agent(fake_platform.url, DEVICE_ID, "wrong-secret").start()
    with pytest.raises(DeviceAuthError, match=r"does not know device 'ghost' \(HTTP 404\)"):
        await Agent(fake_platform.url, "ghost", SECRET).start()
    assert fake_platform.link_attempts == 2  # one try each, no retry loop
    with pytest.raises(PlatformUnreachable):
        await Agent(f"http://127.0.0.1:{_free_port()}", DEVICE_ID, SECRET).start()


async def test_device_link_reconnects_after_a_drop(fake_platform: FakePlatform, make_agent) -> None:
    agent = await make_agent()
    assert agent.online
    await fake_platform.links[0].close(code=1011)
    await _until(lambda: len(fake_platform.links) == 2 and agent.online)
    await fake_platform.notify("t1")  # the new link carries notifications
    await fake_platform.accept()


# ---------------------------------------------------------------------------
# Login


async def test_login_ok_sends_connect_response(fake_platform: FakePlatform, make_agent) -> None:
    agent, dev = await _tunnel(fake_platform, make_agent)
    await _until(lambda: agent.tunnel_connected)
    assert not agent.ssh_connected
    response = await dev.login()
    assert response.data is None
    assert '"data":null' in dev.raw[0]  # compact JSON, data present and null
    assert agent.ssh_connected


async def test_wrong_password_is_a_401_disconnect(fake_platform: FakePlatform, make_agent, sshd: ShellServer) -> None:
    _, dev = await _tunnel(fake_platform, make_agent)
    await dev.send(Frame.connect("c1", USER, "nope"))
    frame = await dev.expect(Op.DISCONNECT)
    assert frame.request_id == "c1"
    assert frame.data == {
        "status_code": Status.AUTH_FAILED,
        "status_msg": f"SSH login refused for user 'ops' on 127.0.0.1:{sshd.port}: wrong user name or password",
    }
    assert "nope" not in "".join(dev.raw)


async def test_unreachable_ssh_server_is_a_400_disconnect(fake_platform: FakePlatform, make_agent) -> None:
    port = _free_port()
    _, dev = await _tunnel(fake_platform, make_agent, ssh_port=port)
    await dev.send(Frame.connect("c1", USER, PASSWORD, port=22))  # the frame's port is ignored
    frame = await dev.expect(Op.DISCONNECT)
    assert frame.data["status_code"] == Status.CHANNEL_FAILED
    assert frame.data["status_msg"] == f"cannot reach the SSH server at 127.0.0.1:{port}: Connection refused"


async def test_local_shell_checks_credentials(fake_platform: FakePlatform, make_agent) -> None:
    agent, dev = await _tunnel(fake_platform, make_agent, local_shell=("admin", "pw-local"), ssh_port=_free_port())
    await dev.send(Frame.connect("c1", "admin", "wrong"))
    frame = await dev.expect(Op.DISCONNECT)
    assert frame.data["status_code"] == Status.AUTH_FAILED
    assert "'admin'" in frame.data["status_msg"]
    await dev.login("admin", "pw-local")
    out, code, _ = await dev.run("echo $USER; tty <&2")
    assert code == 0 and out.startswith("admin\n/dev/pts/")
    assert agent.ssh_connected


async def test_commands_before_connect_are_ignored(fake_platform: FakePlatform, make_agent) -> None:
    _, dev = await _tunnel(fake_platform, make_agent)
    await dev.send(Frame.command("early", "echo too-early\n"))
    await dev.send(Frame(Op.PING, "p1"))
    assert (await dev.recv()) == Frame(Op.PONG, "p1")  # the ping was answered, the command was not


# ---------------------------------------------------------------------------
# Commands and output


async def test_command_output_and_exit_codes(fake_platform: FakePlatform, make_agent) -> None:
    _, dev = await _tunnel(fake_platform, make_agent)
    await dev.login()
    out, code, frames = await dev.run("echo hi")
    assert (out, code) == ("hi\n", 0)
    assert frames[-1].request_id == f"r{3}"  # the latest command's id (connect r1, setup r2, this r3)
    out, code, _ = await dev.run("printf 'caf\\303\\251 '; false")
    assert (out, code) == ("café ", 1)
    await dev.run("cd /tmp; V=kept")
    assert await dev.run('echo "$PWD $V"') == ("/tmp kept\n", 0, _ANY)


@pytest.mark.parametrize("limit", [10_240, 2048])
async def test_big_output_respects_the_message_limit(fake_platform: FakePlatform, make_agent, limit: int) -> None:
    _, dev = await _tunnel(fake_platform, make_agent, max_message_bytes=limit)
    await dev.login()
    out, code, frames = await dev.run("head -c 300000 /dev/urandom | base64", timeout=20)
    assert code == 0
    # 400,000 base64 characters in lines of 76: 5,264 lines
    assert len(out) == 400_000 + 5_264 and re.fullmatch(r"[A-Za-z0-9+/=\n]+", out)
    sizes = [len(raw.encode()) for raw in dev.raw]
    assert max(sizes) <= limit
    assert len(frames) < 405_264 / 512  # coalesced, not a frame per PTY read


async def test_output_goes_as_compact_frames_encoded_once(fake_platform: FakePlatform, make_agent) -> None:
    limit = 1024
    _, dev = await _tunnel(fake_platform, make_agent, max_message_bytes=limit)
    await dev.login()
    start = len(dev.wire)
    # Escapes (\\, ", \n, ESC as \u001b) and two-byte characters at every offset of a frame.
    out, code, _ = await dev.run("yes 'é \"q\" \\\\ x\033[0m' | head -n 2000", timeout=20)
    assert (out, code) == ('é "q" \\\\ x\n' * 2000, 0)  # the terminal text, its escape sequence shown as nothing
    wire = dev.wire[start:]
    assert "".join(decode_frame(m).data for m in wire).count('é "q" \\\\ x\x1b[0m\n') == 2000
    assert len(wire) >= 2000 * 17 // limit  # 17 bytes a line, more escaped: frames of about 1 kB
    for message in wire:
        frame = decode_frame(message)
        assert message == encode_frame(frame).encode()  # compact, exactly as encode_frame writes it
        assert len(message) <= limit


async def test_shell_exit_reports_its_status(fake_platform: FakePlatform, make_agent) -> None:
    agent, dev = await _tunnel(fake_platform, make_agent)
    await dev.login()
    await dev.send(Frame.command("bye", "exit 7\n"))
    frame = await dev.expect(Op.DISCONNECT)
    assert frame.data == {"status_code": Status.SESSION_ENDED, "status_msg": "the shell exited with status 7"}
    assert frame.request_id == "bye"
    await _until(lambda: not agent.ssh_connected)
    await dev.login()  # the tunnel stays; a new login works


async def test_second_connect_replaces_the_session(fake_platform: FakePlatform, make_agent) -> None:
    _, dev = await _tunnel(fake_platform, make_agent)
    await dev.login()
    await dev.run("V=first")
    await dev.login()
    assert await dev.run('echo "[$V]"') == ("[]\n", 0, _ANY)


async def test_disconnect_from_platform_ends_the_session(fake_platform: FakePlatform, make_agent) -> None:
    agent, dev = await _tunnel(fake_platform, make_agent)
    await dev.login()
    await dev.send(Frame.disconnect("d1", Status.PEER_GONE, "the application left"))
    await _until(lambda: not agent.ssh_connected)
    assert agent.tunnel_connected
    await dev.send(Frame(Op.PING, "p"))
    assert (await dev.expect(Op.PONG)).request_id == "p"  # no "shell exited" report in between


async def test_idle_session_is_closed_with_408(fake_platform: FakePlatform, make_agent) -> None:
    agent, dev = await _tunnel(fake_platform, make_agent, idle_timeout=0.4)
    await dev.login()
    await dev.run("true")
    frame = await dev.expect(Op.DISCONNECT, timeout=3)
    assert frame.request_id == SSH_IDLE_REQUEST_ID
    assert frame.data == {"status_code": Status.SSH_IDLE, "status_msg": "SSH session idle for 0.4 s"}
    assert not agent.ssh_connected
    with pytest.raises(TimeoutError):
        await dev.recv(timeout=0.3)  # and nothing else, no "shell exited"


# ---------------------------------------------------------------------------
# Quirks


def _utf8(message: bytes) -> bool:
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def test_c_sdk_quirk(fake_platform: FakePlatform, make_agent) -> None:
    _, dev = await _tunnel(fake_platform, make_agent, quirks="c-sdk", stray_bytes=0)
    await dev.send(Frame.connect("c1", USER, PASSWORD))
    response = await dev.recv()
    assert response.op is Op.CONNECT_RESPONSE and response.request_id == "c1"
    first = json.loads(dev.raw[0])
    assert "data" not in first and dev.raw[0].startswith("{\n\t")
    await dev.send(Frame.command("s1", "stty -echo; PS1=''\n"))
    # command_response carries the latest id received, whatever its frame.
    await dev.send(Frame.command("k1", "sleep 0.3; echo l''ate\n"))
    await dev.send(Frame(Op.PING, "p-latest"))
    _, frames = await dev.output_until("late")
    assert frames[-1].request_id == "p-latest"
    assert all(raw.startswith("{\n\t") for raw in dev.raw)

    # Raw 2,048-byte chunks split UTF-8 characters and travel as raw bytes (no \\udcXX escapes):
    # text messages that are not valid UTF-8.  The client reassembles the characters.
    await dev.send(Frame.command("k2", "yes xé | head -n 3000 | tr -d '\\n'; echo; echo e''nd\n"))
    text, frames = await dev.output_until("end")
    assert "xé" * 3000 in text
    assert any(not _utf8(wire) for wire in dev.wire)  # a character was split
    assert not any(b"\\udc" in wire for wire in dev.wire)
    assert max(len(f.data.encode("utf-8", "surrogateescape")) for f in frames) <= 2048  # stray_bytes=0

    # Today's C SDK prints each chunk into a buffer of its size: nothing is lost.
    await dev.send(Frame.command("k3", "head -c 6000 /dev/zero | tr '\\0' '\\042'; sleep 0.3; echo; echo af''ter\n"))
    text, _ = await dev.output_until("after")
    assert text.count('"') == 6000


async def test_c_sdk_quirk_splits_a_read_whose_json_is_over_the_limit(fake_platform: FakePlatform, make_agent) -> None:
    # 2,048 control bytes print as 12,288 bytes of \u0001 escapes: over the platform's 10,240 bytes, so the
    # read goes in pieces (each as the C SDK would print it), never as one message over the limit.
    _, dev = await _tunnel(fake_platform, make_agent, quirks="c-sdk", stray_bytes=0)
    await dev.send(Frame.connect("c1", USER, PASSWORD))
    assert (await dev.recv()).op is Op.CONNECT_RESPONSE
    await dev.send(Frame.command("s1", "stty -echo; PS1=''\n"))
    await dev.send(Frame.command("k1", "head -c 20000 /dev/zero | tr '\\0' '\\1'; echo; echo e''nd\n"))
    text, frames = await dev.output_until("end")
    assert text.count("\x01") == 20000
    assert all(raw.startswith("{\n\t") for raw in dev.raw)  # pretty, as cJSON prints
    assert max(len(wire) for wire in dev.wire) <= 10_240
    assert max(len(wire) for wire in dev.wire) > 10_000  # a full read's pieces fill the limit
    assert all(f.data.count("\x01") <= 2048 for f in frames)


async def test_c_sdk_1_1_quirk_drops_what_overflows_its_buffer(fake_platform: FakePlatform, make_agent) -> None:
    _, dev = await _tunnel(fake_platform, make_agent, quirks="c-sdk-1.1")
    await dev.send(Frame.connect("c1", USER, PASSWORD))
    response = await dev.recv()
    assert response.op is Op.CONNECT_RESPONSE and response.request_id == "c1"
    assert "data" not in json.loads(dev.raw[0]) and dev.raw[0].startswith("{\n\t")
    await dev.send(Frame.command("s1", "stty -echo; PS1=''\n"))
    # Raw bytes too: a split character makes a message that is not valid UTF-8.
    await dev.send(Frame.command("k2", "yes xé | head -n 3000 | tr -d '\\n'; echo; echo e''nd\n"))
    text, _ = await dev.output_until("end")
    assert "xé" * 3000 in text
    assert any(not _utf8(wire) for wire in dev.wire)
    # A chunk whose JSON does not fit v1.1's 2,304-byte buffer is silently lost:
    # 2,048 quotes escape to 4,096 bytes.
    await dev.send(Frame.command("k3", "head -c 6000 /dev/zero | tr '\\0' '\\042'; sleep 0.3; echo; echo af''ter\n"))
    text, _ = await dev.output_until("after")
    assert text.count('"') < 6000
    assert all(len(wire) < 2304 for wire in dev.wire)  # its NUL makes the 2,304th byte


def test_c_sdk_json_size_counts_like_cjson() -> None:
    raw = b'a"\\\n\x01\xc3'
    base = c_sdk_json_size("r1", b"")
    assert c_sdk_json_size("r1", raw) - base == 1 + 2 + 2 + 2 + 6 + 1
    pretty = encode_frame(Frame(Op.COMMAND_RESPONSE, "r1", "abc"), pretty=True)
    assert c_sdk_json_size("r1", b"abc") == len(pretty.encode()) + 1  # + the C string's NUL


async def test_csharp_sdk_quirk(fake_platform: FakePlatform, make_agent) -> None:
    _, dev = await _tunnel(fake_platform, make_agent, quirks="csharp-sdk")
    await dev.send(Frame.connect("c1", USER, PASSWORD))
    response = await dev.recv()
    assert response.op is Op.CONNECT_RESPONSE and response.request_id == "c1"
    assert isinstance(response.data, str)  # the shell's first output (its prompt)
    assert "\n" not in dev.raw[0]  # compact JSON
    await dev.send(Frame.command("s1", setup_script()))
    out, code, frames = await dev.run("printf 'caf\\303\\251%.0s' $(seq 600)")
    assert code == 0 and out == "café" * 600
    assert {f.request_id for f in frames} == {"c1"}
    assert max(len(f.data.encode()) for f in frames) <= 1024
    assert not any("\\udc" in raw for raw in dev.raw)  # characters are never split


# ---------------------------------------------------------------------------
# Tunnel connection


async def test_tunnel_drop_reconnects_and_keeps_the_shell(fake_platform: FakePlatform, make_agent) -> None:
    agent, dev = await _tunnel(fake_platform, make_agent)
    await dev.login()
    await dev.run("V=survives")
    await dev.ws.close(code=1011)
    again = await fake_platform.accept()
    again.term = dev.term
    assert await again.run('echo "$V"') == ("survives\n", 0, _ANY)
    assert agent.tunnel_connects == 2


async def test_output_while_disconnected_is_delivered_after_reconnect(fake_platform: FakePlatform, make_agent) -> None:
    _, dev = await _tunnel(fake_platform, make_agent, reconnect_step=0.3)
    await dev.login()
    await dev.run("true")
    await dev.send(Frame.command("k", "sleep 0.1; echo la''ter\n"))
    await dev.ws.close(code=1011)
    again = await fake_platform.accept()
    again.term = dev.term
    await again.output_until("later")


async def test_close_4000_means_no_reconnect(fake_platform: FakePlatform, make_agent) -> None:
    agent, dev = await _tunnel(fake_platform, make_agent)
    await dev.login()
    await dev.ws.close(code=4000)
    await _until(lambda: not agent.tunnel_connected and not agent.ssh_connected)
    with pytest.raises(TimeoutError):
        await fake_platform.accept(timeout=0.5)  # ten back-off steps


async def test_new_notify_replaces_the_tunnel(fake_platform: FakePlatform, make_agent) -> None:
    agent, old = await _tunnel(fake_platform, make_agent)
    await old.login()
    await fake_platform.notify("t2")
    new = await fake_platform.accept()
    assert new.tunnel_id == "t2"
    async with asyncio.timeout(WAIT):
        await old.closed.wait()
    assert old.close_code == 1000
    await new.login()
    assert await new.run("echo fresh") == ("fresh\n", 0, _ANY)
    assert agent.tunnel_connected


async def test_repeated_notify_for_the_same_tunnel_keeps_the_connection(
    fake_platform: FakePlatform, make_agent
) -> None:
    agent, dev = await _tunnel(fake_platform, make_agent)
    await dev.login()
    await dev.run("V=same")
    await fake_platform.notify("t1", token="token-t1")  # what the platform sends when the app connects
    with pytest.raises(TimeoutError):
        await fake_platform.accept(timeout=0.3)
    assert await dev.run('echo "$V"') == ("same\n", 0, _ANY)
    assert agent.tunnel_connects == 1


async def test_stop_says_goodbye_and_leaves_no_child_processes(fake_platform: FakePlatform, sshd: ShellServer) -> None:
    agent = Agent(fake_platform.url, DEVICE_ID, SECRET, local_shell=("admin", "pw"), ssh_port=_free_port())
    await agent.start()
    await fake_platform.notify("t1")
    dev = await fake_platform.accept()
    await dev.login("admin", "pw")
    out, _, _ = await dev.run("sleep 30 & echo $! $$")
    pids = [int(p) for p in out.split()]
    assert not any(_gone(p) for p in pids)
    await agent.stop()
    frame = await dev.expect(Op.DISCONNECT)
    assert frame.data == {"status_code": Status.SESSION_ENDED, "status_msg": "agent stopping"}
    async with asyncio.timeout(WAIT):
        await dev.closed.wait()
    assert dev.close_code == 1000
    await _until(lambda: all(_gone(p) for p in pids), timeout=3)
    assert not agent.online

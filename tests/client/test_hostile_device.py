"""A hostile device against a real application, through the real local platform.

The device side of the tunnel is :class:`FakeDevice`: a raw WebSocket the test
drives.  It joins the way the agent does (device link, ``tunnel_notify``,
``device-connect`` with the token header), answers ``connect`` with
``connect_response`` and answers each framed command the application types by
printing the markers itself (docs/architecture.md, *Shell framing*) -- or by
doing something hostile instead: markers split at every byte, a megabyte of junk,
forged and absurd end markers, ``disconnect`` in the middle of a command, frames
that are not frames, leaving during the login.  The application is a real
:class:`~tunnelnb.fleet.fleet.Fleet` (or :class:`~tunnelnb.client.session.DeviceSession`)
on the real :class:`~tunnelnb.server.platform.Platform`, on loopback.

After every hostile case the same fleet must run ``echo ok`` as ``ok``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import pandas as pd
import pytest
from aiohttp import WSMsgType

from tunnelnb.client import session as session_module
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import ProtocolError
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.fleet.results import Results
from tunnelnb.protocol import shell
from tunnelnb.protocol.devicelink import (
    LINK_PATH,
    PASSWORD_HEADER,
    TIMESTAMP_HEADER,
    TunnelNotify,
    device_password,
    link_timestamp,
    parse_event,
)
from tunnelnb.protocol.frames import (
    FINAL_CLOSE_CODES,
    CloseCode,
    Frame,
    Op,
    Status,
    chunk_text,
    decode_frame,
    encode_frame,
)
from tunnelnb.server.platform import Platform

pytestmark = pytest.mark.timeout(60)

DEVICE = "hostile-01"
USER, PASSWORD = "ops", "fake-device-password"
WAIT = 5.0  # seconds: the bound on every wait of the harness itself
RUN_TIMEOUT = 5.0  # seconds: the timeout= of a command that should finish


# ---------------------------------------------------------------------------
# The fake device

#: What a device does with one framed command: ``reply(device, marker_id, command)``.
Reply = Callable[["FakeDevice", str, str], Awaitable[None]]
#: What a device does with a ``connect`` frame; True when it handled it (no default answer).
ConnectHook = Callable[["FakeDevice", Frame], Awaitable[bool]]

# The text command_script() makes (the typed text; its %s keeps an echo from matching a marker).
_SCRIPT = re.compile(
    r"printf '__TNB_B_%s__\\n' (?P<id>[A-Za-z0-9]+)\n"
    r"\{ (?P<body>.*?)\n\} </dev/null\n"
    r"printf '__TNB_E_%s_%d__\\n' (?P=id) \$\?\n",
    re.DOTALL,
)
_HEREDOC = re.compile(
    r"eval \"\$\(base64 -d <<'__TNB_H_[A-Za-z0-9]+__'\n(?P<b64>.*)\n__TNB_H_[A-Za-z0-9]+__\n\)\"\Z", re.DOTALL
)


def typed_command(body: str) -> str:
    """The user's command back out of the body command_script() wrapped it in."""
    m = _HEREDOC.match(body)
    if m:
        return base64.b64decode(m["b64"].replace("\n", "")).decode("utf-8", "surrogateescape")
    if body.startswith("eval '") and body.endswith("'"):
        return body[len("eval '") : -1].replace("'\\''", "'")
    raise AssertionError(f"not a body command_script() makes: {body!r}")


def toy_shell(command: str) -> tuple[str, int]:
    """What the fake device's "shell" prints for ``command``, and its exit status."""
    if command in ("true", ":"):
        return "", 0
    if command == "false":
        return "", 1
    if command == "echo":
        return "\n", 0
    if command.startswith("echo "):
        return command[len("echo ") :] + "\n", 0
    return f"sh: {command.split()[0] if command.split() else command}: not found\n", 127


def markers(marker_id: str, stdout: str, code: int | str = 0) -> str:
    """What a shell prints for a framed command: begin marker, output, end marker."""
    return f"__TNB_B_{marker_id}__\n{stdout}__TNB_E_{marker_id}_{code}__\n"


class FakeDevice:
    """A device whose tunnel side is a raw WebSocket driven by the test.

    :meth:`start` registers it on the platform and opens its device link (ONLINE);
    every ``tunnel_notify`` on the link makes it join that tunnel (``device-connect``
    with the token header), and a tunnel socket the platform drops with a code the
    device SDKs reconnect after (not 1000, 1002, 4000) is reopened at once, as a
    real device would.

    It answers ``connect`` with ``connect_response`` (or ``disconnect`` 401 for a
    wrong password), unless :attr:`on_connect` handles it; then each framed command
    typed into its "shell" goes to ``replies[command]`` (default: :meth:`answer` with
    :func:`toy_shell`'s output).  A ``disconnect`` either way ends the shell: commands
    typed without a shell are ignored (kept in :attr:`ignored`) until the next
    ``connect``.  Ctrl-C discards what was typed ahead, as a terminal does.
    """

    def __init__(self, platform: Platform, http: aiohttp.ClientSession, device_id: str = DEVICE) -> None:
        self.platform = platform
        self.http = http
        self.device_id = device_id
        self.secret = "fake-secret-" + device_id
        self.replies: dict[str, Reply] = {}
        self.on_connect: ConnectHook | None = None
        self.note: TunnelNotify | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.shell_open = False
        self.latest_id = ""
        self.joins = 0  # device-connect sockets opened
        self.connects = 0  # connect frames received
        self.commands: list[str] = []  # framed commands typed while a shell was open
        self.received: list[Frame] = []
        self.ignored: list[str] = []
        self.close_codes: list[int | None] = []  # of tunnel sockets the platform closed
        self.errors: list[BaseException] = []  # raised by its tasks (replies included); stop() raises the first
        self._link: aiohttp.ClientWebSocketResponse | None = None
        self._typed = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def __repr__(self) -> str:
        return f"<FakeDevice {self.device_id} joins={self.joins} connects={self.connects} shell={self.shell_open}>"

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Register the device and open its device link; returns once the platform lists it ONLINE."""
        self.platform.add_device(self.device_id, self.secret)
        stamp = link_timestamp()
        headers = {TIMESTAMP_HEADER: stamp, PASSWORD_HEADER: device_password(self.secret, stamp)}
        url = self.platform.base_url + LINK_PATH.format(device_id=self.device_id)
        async with asyncio.timeout(WAIT):
            self._link = await self.http.ws_connect(url, headers=headers)
        self._spawn(self._link_loop(self._link))
        await eventually(lambda: self.platform.devices[self.device_id]["status"] == "ONLINE")

    async def stop(self) -> None:
        self._stopping = True
        for ws in (self.ws, self._link):
            if ws is not None and not ws.closed:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(WAIT):
                        await ws.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.errors:  # a bug of the harness or of a test's reply: fail the test that made it
            raise self.errors[0]

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())

    # -- the device link and the tunnel socket ---------------------------------------

    async def _link_loop(self, link: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in link:
            if msg.type is not WSMsgType.TEXT:
                continue
            for note in parse_event(msg.data):
                if self.ws is not None and not self.ws.closed and self.note == note:
                    continue  # a repeated notify of the tunnel it is in
                self.note = note
                await self.join()

    async def join(self) -> None:
        """Open ``device-connect`` of the latest notified tunnel (leaving the previous socket, if any)."""
        assert self.note is not None, "no tunnel_notify yet"
        old, self.ws = self.ws, None
        if old is not None and not old.closed:
            await old.close()
        async with asyncio.timeout(WAIT):
            ws = await self.http.ws_connect(
                self.note.tunnel_uri, headers={"tunnel_access_token": self.note.tunnel_access_token}
            )
        self.ws = ws
        self.joins += 1
        self._spawn(self._read_loop(ws))

    async def leave(self) -> None:
        """Close the tunnel socket as a device leaving the tunnel (the platform tells the application 503)."""
        ws, self.ws = self.ws, None
        self.shell_open = False
        if ws is not None and not ws.closed:
            await ws.close()

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.ERROR:
                break
            if msg.type is not WSMsgType.TEXT:
                continue
            await self._on_frame(decode_frame(msg.data, max_bytes=None))
        if ws is not self.ws or self._stopping:
            return  # left or replaced on purpose
        self.close_codes.append(ws.close_code)
        self.ws = None
        self.shell_open = False
        if ws.close_code not in FINAL_CLOSE_CODES:
            await self.join()  # as the device SDKs do after a drop

    async def _on_frame(self, frame: Frame) -> None:
        self.received.append(frame)
        self.latest_id = frame.request_id
        if frame.op is Op.CONNECT:
            self.connects += 1
            self._typed = ""
            if self.on_connect is not None and await self.on_connect(self, frame):
                return
            await self.accept(frame)
        elif frame.op is Op.COMMAND:
            await self._on_typed(frame.data)
        elif frame.op is Op.DISCONNECT:
            self.shell_open = False
        elif frame.op is Op.PING:
            await self.send(Frame(Op.PONG, frame.request_id))

    async def accept(self, connect: Frame) -> None:
        """Answer a ``connect``: ``connect_response`` and a new shell, or ``disconnect`` 401."""
        if connect.data.get("username") != USER or connect.data.get("password") != PASSWORD:
            await self.disconnect(Status.AUTH_FAILED, "wrong user name or password")
            return
        self.shell_open = True
        await self.send(Frame(Op.CONNECT_RESPONSE, connect.request_id, None))

    async def _on_typed(self, text: str) -> None:
        if not self.shell_open:
            self.ignored.append(text)
            return
        self._typed += text
        if "\x03" in self._typed:  # Ctrl-C: the terminal flushes typed-ahead input
            self._typed = self._typed.rsplit("\x03", 1)[1]
        while (m := _SCRIPT.search(self._typed)) is not None:
            self._typed = self._typed[m.end() :]
            command = typed_command(m["body"])
            self.commands.append(command)
            reply = self.replies.get(command, FakeDevice.answer_toy)
            await reply(self, m["id"], command)

    # -- what the device sends ---------------------------------------------------------

    async def send_raw(self, data: str | bytes) -> None:
        """One WebSocket message exactly as given (text or binary)."""
        assert self.ws is not None, "not in a tunnel"
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def send(self, frame: Frame) -> None:
        await self.send_raw(encode_frame(frame))

    async def output(self, text: str) -> None:
        """Terminal output as ``command_response`` frames, each within the platform's size limit."""
        for frame in chunk_text(text, self.latest_id, max_bytes=self.platform.max_message_bytes):
            await self.send(frame)

    async def output_pieces(self, pieces: Iterable[str]) -> None:
        """One ``command_response`` frame per piece."""
        for piece in pieces:
            await self.send(Frame(Op.COMMAND_RESPONSE, self.latest_id, piece))

    async def answer(self, marker_id: str, stdout: str, code: int | str = 0) -> None:
        await self.output(markers(marker_id, stdout, code))

    async def answer_toy(self, marker_id: str, command: str) -> None:
        await self.answer(marker_id, *toy_shell(command))

    async def disconnect(self, status: str, message: str) -> None:
        """``disconnect`` to the application; the shell is gone, the tunnel socket stays open."""
        self.shell_open = False
        await self.send(Frame.disconnect(self.latest_id, status, message))


# ---------------------------------------------------------------------------
# Helpers and fixtures


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll state no event announces (the platform's, the device's), within WAIT."""
    async with asyncio.timeout(WAIT):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def device_side(platform: Platform, device_id: str = DEVICE) -> str:
    """The device-side state of the device's open tunnel on the platform ("" without one)."""
    for tunnel in platform.tunnels.values():
        if tunnel["device_id"] == device_id and tunnel["status"] == "OPEN":
            return tunnel["device_connect_state"]["status"]
    return ""


async def run_row(fleet: Fleet, command: str, *, timeout: float = RUN_TIMEOUT) -> tuple[Any, pd.Series]:
    """Run ``command`` on the fake device; its result and its row of the table (which must build)."""
    res: Results = await fleet.run(command, DEVICE, timeout=timeout)
    assert len(res) == 1
    df = res.df
    assert list(df.device_id) == [DEVICE]
    return res[DEVICE], df.iloc[0]


async def assert_next_ok(fleet: Fleet, note: str = "") -> None:
    """The next plain command on the same fleet is ``ok``; its ``error`` is ``note`` (a recovery's)."""
    result, row = await run_row(fleet, "echo ok")
    assert (result.status, result.exit_code, result.stdout, result.error) == ("ok", 0, "ok\n", note), result
    assert (row.status, row.exit_code, row.stdout, row.error) == ("ok", 0, "ok\n", note)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def device(platform: Platform, http: aiohttp.ClientSession) -> AsyncIterator[FakeDevice]:
    dev = FakeDevice(platform, http)
    await dev.start()
    try:
        yield dev
    finally:
        await dev.stop()


@pytest.fixture
async def fleet(api: PlatformAPI, device: FakeDevice) -> AsyncIterator[Fleet]:
    """A fleet logged in to the fake device (the first ``echo ok`` is ok)."""
    f = Fleet(api, login=(USER, PASSWORD), join_timeout=WAIT)
    await f.refresh()
    try:
        await assert_next_ok(f)
        assert device.connects == 1
        yield f
    finally:
        await f.close("*")


# ---------------------------------------------------------------------------
# The harness itself


async def test_the_fake_device_serves_a_device_session(api: PlatformAPI, device: FakeDevice):
    async with DeviceSession(api, DEVICE, join_timeout=WAIT) as session:
        await session.login(USER, PASSWORD, timeout=WAIT)
        result = await session.run("echo hello 'quoted' world", timeout=RUN_TIMEOUT)
        assert (result.status, result.exit_code, result.stdout, result.error) == ("ok", 0, "hello 'quoted' world\n", "")
        failed = await session.run("false", timeout=RUN_TIMEOUT)
        assert (failed.status, failed.exit_code, failed.stdout) == ("error", 1, "")
        tabbed = await session.run("echo a\tb", timeout=RUN_TIMEOUT)  # typed as a base64 here-document
        assert (tabbed.status, tabbed.stdout) == ("ok", "a\tb\n")
    assert device.commands == ["true", "echo hello 'quoted' world", "false", "echo a\tb"]  # the login's no-op first
    assert device.connects == 1 and device.joins == 1


# ---------------------------------------------------------------------------
# 1. Markers split at every byte


async def test_markers_split_into_one_character_frames(fleet: Fleet, device: FakeDevice):
    async def one_char_frames(dev: FakeDevice, marker_id: str, command: str) -> None:
        text = f"__TNB_B_{marker_id}__\r\nhello\r\nworld\r\n__TNB_E_{marker_id}_0__\r\n"
        await dev.output_pieces(text)

    device.replies["split"] = one_char_frames
    result, row = await run_row(fleet, "split")
    assert (result.status, result.exit_code, result.stdout, result.error) == ("ok", 0, "hello\nworld\n", "")
    assert (row.status, row.exit_code, row.stdout) == ("ok", 0, "hello\nworld\n")
    await assert_next_ok(fleet)


async def test_markers_split_in_two_at_every_position(fleet: Fleet, device: FakeDevice):
    lengths: dict[str, int] = {}

    async def two_frames(dev: FakeDevice, marker_id: str, command: str) -> None:
        text = markers(marker_id, "a b\n", 0)
        cut = int(command.split()[1])
        lengths[command] = len(text)
        await dev.output_pieces([text[:cut], text[cut:]])

    cut = 1
    while True:  # every cut of the text in two non-empty frames (the marker id's length may grow)
        command = f"cut {cut}"
        device.replies[command] = two_frames
        result, _ = await run_row(fleet, command)
        assert (result.status, result.exit_code, result.stdout, result.error) == ("ok", 0, "a b\n", ""), cut
        if cut >= lengths[command] - 1:
            break
        cut += 1
    assert cut > 40
    await assert_next_ok(fleet)


# ---------------------------------------------------------------------------
# 2. A megabyte of junk before the begin marker


def junk(size: int, marker_id: str) -> str:
    """``size`` characters of noise full of near-markers (never this command's begin marker)."""
    rng = random.Random(1)
    pieces = [
        "__TNB_B_",
        "__TNB_E_",
        f"__TNB_E_{marker_id}_0__\n",
        f"__TNB_B_{marker_id}_",
        f"__TNB_B_{marker_id}x__\n",
        "__TNB_B_other__\n",
        "\x1b[31m",
        "\x1b]0;title\x07",
        "\r\n",
        "\r",
        "é中😀",
        "_",
        "__",
    ]
    out: list[str] = []
    total = 0
    while total < size:
        piece = rng.choice(pieces) if rng.random() < 0.3 else "".join(rng.choices("abcdefXYZ012 _", k=40))
        out.append(piece)
        total += len(piece)
    # Pieces may meet to form the real begin marker: break every such meeting.
    return "".join(out)[:size].replace(f"__TNB_B_{marker_id}__", f"__TNB_B_{marker_id}_X_")


async def test_a_megabyte_of_junk_before_the_begin_marker(fleet: Fleet, device: FakeDevice):
    async def flood(dev: FakeDevice, marker_id: str, command: str) -> None:
        await dev.output(junk(1 << 20, marker_id))
        await dev.answer(marker_id, "after the flood\n", 0)

    device.replies["flood"] = flood
    result, row = await run_row(fleet, "flood", timeout=20)
    assert (result.status, result.exit_code, result.stdout, result.error) == ("ok", 0, "after the flood\n", "")
    assert row.stdout == "after the flood\n"
    await assert_next_ok(fleet)


# ---------------------------------------------------------------------------
# 3. Forged end markers before the real one


async def test_forged_end_markers_are_output(fleet: Fleet, device: FakeDevice):
    previous: list[str] = []

    async def remember(dev: FakeDevice, marker_id: str, command: str) -> None:
        previous.append(marker_id)
        await dev.answer(marker_id, "", 0)

    stdout_of: dict[str, str] = {}

    async def forge(dev: FakeDevice, marker_id: str, command: str) -> None:
        stdout = (
            "before\n"
            "__TNB_E_wrongid_0__\n"  # another id
            f"__TNB_E_{previous[0]}_0__\n"  # the previous command's id
            f"__TNB_E_{marker_id}1_0__\n"  # this id with a digit more
            f"__TNB_E_{marker_id[:-1]}_0__\n"  # this id with a digit less
            f"__TNB_E_{marker_id.upper()}_0__\n"  # another case
            f"__TNB_B_{marker_id}__\n"  # the begin marker again
            "after\n"
        )
        stdout_of["forged"] = stdout
        await dev.answer(marker_id, stdout, 0)

    device.replies["previous"] = remember
    device.replies["forged"] = forge
    assert (await run_row(fleet, "previous"))[0].status == "ok"
    result, row = await run_row(fleet, "forged")
    assert (result.status, result.exit_code, result.error) == ("ok", 0, "")
    assert result.stdout == stdout_of["forged"]
    assert row.stdout == stdout_of["forged"]
    await assert_next_ok(fleet)


# ---------------------------------------------------------------------------
# 4, 5. End markers whose exit status is no shell's


async def test_an_exit_status_of_30_digits_is_an_error_row(fleet: Fleet, device: FakeDevice):
    digits = "123456789012345678901234567890"

    async def huge(dev: FakeDevice, marker_id: str, command: str) -> None:
        await dev.answer(marker_id, "partial\n", digits)

    device.replies["huge"] = huge
    result, row = await run_row(fleet, "huge")
    assert (result.status, result.exit_code, result.stdout) == ("error", None, "partial\n")
    assert result.error == shell.bad_exit_status(digits)
    assert row.status == "error" and row.exit_code is pd.NA and row.error == shell.bad_exit_status(digits)
    await assert_next_ok(fleet)


async def test_an_exit_status_of_5000_digits_is_an_error_row(fleet: Fleet, device: FakeDevice):
    digits = "9" * 5000

    async def endless(dev: FakeDevice, marker_id: str, command: str) -> None:
        text = markers(marker_id, "partial\n", digits)
        await dev.output_pieces(text[i : i + 700] for i in range(0, len(text), 700))

    device.replies["endless"] = endless
    timeout = 3.0
    t0 = time.monotonic()
    result, row = await run_row(fleet, "endless", timeout=timeout)
    assert time.monotonic() - t0 < timeout
    assert (result.status, result.exit_code, result.stdout) == ("error", None, "partial\n")
    assert result.error.startswith("the end marker's exit status"), result.error
    assert row.status == "error" and row.exit_code is pd.NA and row.error == result.error
    await assert_next_ok(fleet)


# ---------------------------------------------------------------------------
# 6. A non-numeric exit status


def parser_ends_on(text: str) -> bool:
    """Does the real parser take ``text`` (one command's output) as ended?"""
    parser = shell.CommandParser("probe1")
    events = parser.feed(text.replace("__MARKER__", "probe1"))
    return any(isinstance(e, shell.Finished) for e in events)


async def test_a_non_numeric_exit_status(fleet: Fleet, device: FakeDevice):
    async def letters(dev: FakeDevice, marker_id: str, command: str) -> None:
        await dev.answer(marker_id, "partial\n", "abc")  # and nothing more

    device.replies["letters"] = letters
    result, row = await run_row(fleet, "letters", timeout=1.0)
    if parser_ends_on(markers("__MARKER__", "partial\n", "abc")):
        assert (result.status, result.exit_code, result.stdout) == ("error", None, "partial\n")
    else:  # not an end marker: the command never ends, its text is output
        assert (result.status, result.exit_code) == ("timeout", None), result
        assert result.stdout == f"partial\n__TNB_E_{device_marker(device, 'letters')}_abc__\n"
        assert row.exit_code is pd.NA
    await assert_next_ok(fleet)  # the reader survived; the shell answers after the Ctrl-C


def device_marker(device: FakeDevice, command: str) -> str:
    """The marker id of the (last) framed command ``command`` the device received."""
    ids = [
        m["id"]
        for frame in device.received
        if frame.op is Op.COMMAND
        for m in _SCRIPT.finditer(frame.data)
        if typed_command(m["body"]) == command
    ]
    assert ids, f"the device never got {command!r}"
    return ids[-1]


# ---------------------------------------------------------------------------
# 7. disconnect in the middle of a command


@pytest.mark.parametrize("status", [Status.PEER_GONE, Status.TUNNEL_CLOSED, Status.CHANNEL_FAILED, "418"])
async def test_disconnect_mid_command_then_a_new_shell(fleet: Fleet, device: FakeDevice, status: str):
    async def hang_up(dev: FakeDevice, marker_id: str, command: str) -> None:
        await dev.output(f"__TNB_B_{marker_id}__\npartial\n")
        await dev.disconnect(status, f"hostile disconnect {status}")

    device.replies["hang up"] = hang_up
    result, row = await run_row(fleet, "hang up")
    assert (result.status, result.exit_code, result.stdout) == ("disconnected", None, "partial\n")
    assert row.status == "disconnected" and row.exit_code is pd.NA
    assert device.ws is not None and not device.ws.closed  # the device kept its socket
    await assert_next_ok(fleet, session_module.NOTE_NEW_SHELL)
    assert device.connects == 2  # the session logged in again for a new shell
    await assert_next_ok(fleet)


# ---------------------------------------------------------------------------
# 8. Messages that are not frames


NOT_FRAMES: dict[str, str | bytes] = {
    "not JSON": "this is not JSON {",
    "truncated JSON": '{"operation_type":"command_response","request_id":"1","data":"abc',
    "a JSON array": "[1, 2, 3]",
    "a JSON string": '"command_response"',
    "an object without operation_type": '{"hello": "world"}',
    "an unknown operation": json.dumps({"operation_type": "reboot", "request_id": "1", "data": None}),
    "no request_id": json.dumps({"operation_type": "command_response", "data": "x"}),
    "data a number": json.dumps({"operation_type": "command_response", "request_id": "1", "data": 42}),
    "data a list": json.dumps({"operation_type": "command_response", "request_id": "1", "data": ["x"]}),
    "data null": json.dumps({"operation_type": "command_response", "request_id": "1", "data": None}),
    "binary garbage": b"\x00\xff\xfe binary",
    "a binary frame": encode_frame(Frame(Op.COMMAND_RESPONSE, "1", "binary but valid\n")).encode(),
}


@pytest.mark.parametrize("kind", list(NOT_FRAMES))
async def test_messages_that_are_not_frames(fleet: Fleet, device: FakeDevice, platform: Platform, kind: str):
    message = NOT_FRAMES[kind]
    refused = isinstance(message, bytes)  # the platform takes only text messages, and only valid frames
    try:
        decode_frame(message)
    except ProtocolError:
        refused = True

    async def garbage(dev: FakeDevice, marker_id: str, command: str) -> None:
        await dev.output(f"__TNB_B_{marker_id}__\nbefore\n")
        await dev.send_raw(message)
        if not refused:
            await dev.output(f"after\n__TNB_E_{marker_id}_0__\n")

    device.replies["garbage"] = garbage
    result, row = await run_row(fleet, "garbage")
    if refused:
        # The platform closes the device side (1007) and tells the application: the row is
        # disconnected; the device reconnects as the SDKs do, and the next command logs in again.
        assert (result.status, result.exit_code, result.stdout) == ("disconnected", None, "before\n"), result
        assert row.exit_code is pd.NA
        await eventually(lambda: device.close_codes == [CloseCode.MALFORMED] and device.joins == 2)
        await eventually(lambda: device_side(platform) == "CONNECTED")
        await assert_next_ok(fleet, session_module.NOTE_NEW_SHELL)
    else:
        assert (result.status, result.exit_code, result.stdout) == ("ok", 0, "before\nafter\n")
        await assert_next_ok(fleet)


# Frames the platform does relay, though no device should send them mid-command.
ODD_FRAMES: dict[str, Callable[[str], str]] = {
    "a spurious connect_response": lambda rid: encode_frame(Frame(Op.CONNECT_RESPONSE, rid, None)),
    "a connect_response with data": lambda rid: encode_frame(Frame(Op.CONNECT_RESPONSE, rid, {"x": [1, 2]})),
    "empty output": lambda rid: encode_frame(Frame(Op.COMMAND_RESPONSE, rid, "")),
    "pretty-printed output": lambda rid: encode_frame(Frame(Op.COMMAND_RESPONSE, rid, "middle\n"), pretty=True),
    "extra fields and another service": lambda rid: json.dumps(
        {
            "operation_type": "command_response",
            "tunnel_service_type": "rdp",
            "request_id": "",
            "data": "more\n",
            "extra": {"nested": [None, True]},
        }
    ),
    "a connect_tunnel from the device": lambda rid: encode_frame(Frame(Op.CONNECT_TUNNEL, rid, None)),
    "a command from the device": lambda rid: encode_frame(Frame.command(rid, "rm -rf /\n")),
    "a connect from the device": lambda rid: encode_frame(Frame.connect(rid, "root", "x")),
    "a ping": lambda rid: encode_frame(Frame(Op.PING, rid, None)),
    "a pong": lambda rid: encode_frame(Frame(Op.PONG, rid, "pong")),
}
ODD_OUTPUT = {"pretty-printed output": "middle\n", "extra fields and another service": "more\n"}


@pytest.mark.parametrize("kind", list(ODD_FRAMES))
async def test_odd_frames_the_platform_relays_are_ignored(fleet: Fleet, device: FakeDevice, kind: str):
    async def odd(dev: FakeDevice, marker_id: str, command: str) -> None:
        await dev.output(f"__TNB_B_{marker_id}__\nbefore\n")
        await dev.send_raw(ODD_FRAMES[kind](dev.latest_id))
        await dev.output(f"after\n__TNB_E_{marker_id}_0__\n")

    device.replies["odd"] = odd
    result, _ = await run_row(fleet, "odd")
    expected = "before\n" + ODD_OUTPUT.get(kind, "") + "after\n"
    assert (result.status, result.exit_code, result.stdout, result.error) == ("ok", 0, expected, "")
    assert device.close_codes == []
    await assert_next_ok(fleet)


# ---------------------------------------------------------------------------
# 9. The device leaves and rejoins during the login


@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["at-once", "after-the-application-noticed"])
async def test_device_leaves_and_rejoins_before_answering_connect(api: PlatformAPI, device: FakeDevice, delay: float):
    async def flaky(dev: FakeDevice, connect: Frame) -> bool:
        if dev.connects > 1:
            return False
        await dev.leave()  # before answering, as a C SDK device reconnecting on a repeated tunnel_notify
        await asyncio.sleep(delay)
        if dev.ws is None:  # meanwhile a new tunnel_notify may have brought it back already
            await dev.join()
        return True

    device.on_connect = flaky
    fleet = Fleet(api, login=(USER, PASSWORD), join_timeout=WAIT)
    await fleet.refresh()
    try:
        res = await fleet.login(DEVICE, timeout=10)
        row = res[DEVICE]
        assert (row.status, row.exit_code, row.error) == ("ok", 0, ""), row
        assert res.df.status.tolist() == ["ok"]
        assert device.joins == 2 and device.connects == 2
        await assert_next_ok(fleet)
    finally:
        await fleet.close("*")


async def test_a_shell_that_never_answers_the_login_gets_a_new_connect(
    api: PlatformAPI, device: FakeDevice, monkeypatch: pytest.MonkeyPatch
):
    # The C SDK's libssh session can be corrupted by a write racing its reader thread; it
    # then fails every write silently.  After LOGIN_SYNC_S the login sends connect again,
    # and the SDK opens a new SSH session.
    monkeypatch.setattr(session_module, "LOGIN_SYNC_S", 1.0)

    async def corrupted(dev: FakeDevice, connect: Frame) -> bool:
        if dev.connects > 1:
            return False
        await dev.send(Frame(Op.CONNECT_RESPONSE, connect.request_id, None))  # the shell stays closed: no answers
        return True

    device.on_connect = corrupted
    fleet = Fleet(api, login=(USER, PASSWORD), join_timeout=WAIT)
    await fleet.refresh()
    try:
        res = await fleet.login(DEVICE, timeout=10)
        row = res[DEVICE]
        assert (row.status, row.exit_code, row.error) == ("ok", 0, ""), row
        assert device.connects == 2 and device.ignored  # the no-ops typed into the dead session went nowhere
        await assert_next_ok(fleet)
    finally:
        await fleet.close("*")

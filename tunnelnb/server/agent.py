"""The device agent: a tunnel's device side, bridged to an SSH login shell.

No device SDK in Python implements IoTDA's Secure Tunnel, so this is the
device half of tunnelnb.  An :class:`Agent` keeps the *device link* to the
platform open (see :mod:`tunnelnb.protocol.devicelink`); each ``tunnel_notify`` event
opens the device-side tunnel WebSocket; a ``connect`` frame logs in to the
device's SSH server (or spawns a local PTY shell) and from then on ``command``
frames are typed into the shell and its terminal output streams back as
``command_response`` frames (DESIGN §1).

``quirks`` makes the agent send what the official device SDKs send, so the
client is tested against real devices' habits:

* ``"c-sdk"`` (huaweicloud-iot-device-sdk-c): ``connect_response`` goes out
  before SSH is even tried, without a ``data`` key; JSON is pretty-printed;
  ``command_response.request_id`` is the latest request id received; output is
  read in raw chunks of at most 2,048 bytes (coalesced for a few ms) cut
  anywhere (a UTF-8 character may be split: the bytes travel as
  ``surrogateescape`` escapes), and a chunk whose JSON does not fit cJSON's
  2,304-byte buffer is silently dropped.
* ``"csharp-sdk"`` (huaweicloud-iot-device-sdk-csharp): ``connect_response``
  carries the shell's first output; ``request_id`` is always the ``connect``'s;
  output goes in chunks of at most 1,024 bytes, decoded correctly.
* ``"none"``: well-behaved; output coalesced into frames as large as the
  platform allows, ``request_id`` of the latest ``command``.

The ``port`` a ``connect`` frame may carry (the C# SDK reads it) is ignored on
purpose: the device, not the cloud, decides where its SSH server is
(``ssh_host``/``ssh_port``), so the tunnel cannot be used to probe other ports.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hmac
import json
import logging
import os
import signal
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncssh

from ..errors import DeviceAuthError, PlatformUnreachable, ProtocolError, TunnelnbError
from ..protocol.devicelink import (
    LINK_PATH,
    PASSWORD_HEADER,
    TIMESTAMP_HEADER,
    TunnelNotify,
    device_password,
    link_timestamp,
    parse_event,
)
from ..protocol.frames import (
    DEFAULT_MAX_MESSAGE_BYTES,
    SSH_IDLE_REQUEST_ID,
    CloseCode,
    Frame,
    Op,
    RequestIds,
    Status,
    chunk_text,
    decode_frame,
    encode_frame,
)
from .sshserver import PtyProcess

__all__ = ["QUIRKS", "Agent", "c_sdk_json_size", "output_frames", "serve"]

log = logging.getLogger("tunnelnb.server.agent")

QUIRKS = ("none", "c-sdk", "csharp-sdk")

#: Close codes after which the device SDKs do not reconnect: normal, auth failed, replaced.
NO_RECONNECT_CODES = frozenset({1000, 1002, 4000})
#: Output kept while the tunnel is down (counted in characters of JSON text); beyond it the
#: shell is paused until the tunnel is back.
OFFLINE_BUFFER_BYTES = 1 << 20
#: How long to wait for more output before sending a short frame ("none" quirk).
COALESCE_SECONDS = 0.005
#: Output read ahead of the tunnel before the shell is paused.
_INBOX_HIGH_WATER = 512 * 1024
#: The C SDK's read buffer and its cJSON print buffer (TUNNEL_SSH_RSPBUFF_LEN / TUNNEL_WSSCLIENT_RSPMSG_LEN).
C_SDK_READ_BYTES = 2048
C_SDK_JSON_BYTES = 2304
#: The C# SDK's read buffer.
CSHARP_READ_BYTES = 1024
#: How long the C# quirk waits for the shell's first output to put in connect_response.
CSHARP_FIRST_OUTPUT_SECONDS = 1.0
_SSH_CONNECT_TIMEOUT = 10.0
#: How long closing a WebSocket waits for the peer's close frame.
_WS_CLOSE_TIMEOUT = 2.0


def _ws_timeout() -> Any:
    """ws_connect's close timeout: a ClientWSTimeout since aiohttp 3.11, a float before."""
    cls = getattr(aiohttp, "ClientWSTimeout", None)
    return cls(ws_close=_WS_CLOSE_TIMEOUT) if cls is not None else _WS_CLOSE_TIMEOUT


class _LoginFailed(Exception):
    """Opening the shell failed; carries the ``disconnect`` status to report."""

    def __init__(self, status_code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _reason(exc: BaseException) -> str:
    """A short human reason: ``Connection refused`` rather than ``[Errno 111] Connect call failed …``."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        detail = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        return f"its TLS certificate is not trusted ({detail}): give its CA bundle (--ca-bundle)"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, asyncssh.DisconnectError) and exc.reason:
        return exc.reason
    return str(exc) or type(exc).__name__


# cJSON escapes '"', '\\' and control characters: \b \f \n \r \t take 2 bytes, the others \u00XX (6).
_C_SPECIAL = bytes(range(32)) + b'"\\'
_C_NOT_SPECIAL = bytes(b for b in range(256) if b not in _C_SPECIAL)
_C_SHORT = b'\b\f\n\r\t"\\'


def c_sdk_json_size(request_id: str, raw: bytes) -> int:
    """Bytes the C SDK needs to print a command_response carrying ``raw``, its NUL included.

    The C SDK formats with ``cJSON_PrintPreallocated(..., 2304, formatted)``:
    bytes >= 0x80 are copied as they are (one byte each), ``"``, ``\\`` and
    control characters are escaped.  Pretty JSON with tabs has the same length
    as cJSON's formatted output.
    """
    frame = Frame(Op.COMMAND_RESPONSE, request_id, "")
    overhead = len(encode_frame(frame, pretty=True).encode("utf-8", "surrogatepass"))
    special = raw.translate(None, _C_NOT_SPECIAL)
    short = len(special) - len(special.translate(None, _C_SHORT))
    return overhead + len(raw) + short + 5 * (len(special) - short) + 1


def output_frames(text: str, request_id: str, max_bytes: int) -> Iterator[Frame]:
    """``chunk_text``'s frames, found faster for terminal output.

    ``chunk_text`` starts from a guess that fits only escape-free text; PTY
    output has ``\\r\\n`` on every line, so each frame would cost it a binary
    search over JSON encodings.  Scaling the guess by the measured density
    lands within a step or two; ``chunk_text`` still checks every piece.
    """
    budget = max_bytes - len(encode_frame(Frame(Op.COMMAND_RESPONSE, request_id, "")).encode())
    pos, n = 0, len(text)
    while pos < n:
        end = min(n, pos + max(budget, 1))
        while True:
            cost = len(json.dumps(text[pos:end], ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2
            if cost <= budget or end - pos <= 1:
                break
            end = pos + max(1, (end - pos) * budget // cost - 1)
        yield from chunk_text(text[pos:end], request_id, max_bytes=max_bytes)
        pos = end


class _Inbox:
    """Shell output waiting to be framed; pauses the producer above a high-water mark."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._want = 1
        self._paused = False
        self.pause: Callable[[], None] = lambda: None
        self.resume: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def finished(self) -> bool:
        """All output has been taken."""
        return self.eof and not self._buf

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > _INBOX_HIGH_WATER and not self._paused:
            self._paused = True
            self.pause()
        if len(self._buf) >= self._want:
            self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait_for(self, want: int, timeout: float | None) -> None:
        if len(self._buf) >= want or self.eof:
            return
        self._want = want
        self._waiter = self._loop.create_future()
        handle = None if timeout is None else self._loop.call_later(timeout, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._want = 1
            if handle is not None:
                handle.cancel()

    async def wait(self, *, timeout: float | None = None, fill: int = 1, linger: float = 0.0) -> None:
        """Wait for output (or its end); then up to ``linger`` more seconds until ``fill`` bytes are pending."""
        await self._wait_for(1, timeout)
        if linger > 0 and fill > 1:
            await self._wait_for(fill, linger)

    def take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        if self._paused and len(self._buf) <= _INBOX_HIGH_WATER // 2:
            self._paused = False
            self.resume()
        return data


# ---------------------------------------------------------------------------
# Shell backends: an SSH login, or a PTY shell spawned directly


class _SSHClientSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self, inbox: _Inbox) -> None:
        self._inbox = inbox

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._inbox.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inbox.feed_eof()


class _SSHBackend:
    """An interactive PTY shell over SSH, as ``ssh -t user@host`` would open it."""

    def __init__(self, conn: asyncssh.SSHClientConnection, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._conn = conn
        self._chan = chan

    @classmethod
    async def open(
        cls, host: str, port: int, username: str, password: str, term_size: tuple[int, int], inbox: _Inbox
    ) -> _SSHBackend:
        where = f"{host}:{port}"
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    host,
                    port,
                    username=username,
                    password=password,
                    known_hosts=None,
                    client_keys=None,
                    agent_path=None,
                    config=None,
                    preferred_auth="password,keyboard-interactive",
                    connect_timeout=_SSH_CONNECT_TIMEOUT,
                ),
                _SSH_CONNECT_TIMEOUT + 5,
            )
        except asyncssh.PermissionDenied:
            raise _LoginFailed(
                Status.AUTH_FAILED, f"SSH login refused for user {username!r} on {where}: wrong user name or password"
            ) from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise _LoginFailed(
                Status.CHANNEL_FAILED, f"cannot reach the SSH server at {where}: {_reason(exc)}"
            ) from None
        try:
            chan, _ = await conn.create_session(
                lambda: _SSHClientSession(inbox), term_type="xterm", term_size=term_size, encoding=None
            )
        except (OSError, asyncssh.Error) as exc:
            conn.close()
            raise _LoginFailed(
                Status.CHANNEL_FAILED, f"the SSH server at {where} refused a shell: {_reason(exc)}"
            ) from None
        inbox.pause = chan.pause_reading
        inbox.resume = chan.resume_reading
        return cls(conn, chan)

    def write(self, data: bytes) -> None:
        if not self._chan.is_closing():
            self._chan.write(data)

    async def exit_code(self) -> int | None:
        """The shell's exit status (128+N for a signal); None if the session ended without one."""
        rc = self._chan.get_returncode()
        return None if rc is None else (rc if rc >= 0 else 128 - rc)

    async def close(self) -> None:
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), 2)


class _LocalBackend:
    """A PTY shell spawned by the agent itself (``--local-shell``): no SSH server needed."""

    def __init__(self, proc: PtyProcess) -> None:
        self._proc = proc

    @classmethod
    def open(cls, argv: Sequence[str], username: str, term_size: tuple[int, int], inbox: _Inbox) -> _LocalBackend:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "USER": username,
            "LOGNAME": username,
            "SHELL": argv[0],
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TERM": "xterm",
        }
        try:
            proc = PtyProcess(
                argv, cols=term_size[0], rows=term_size[1], env=env, on_data=inbox.feed, on_eof=inbox.feed_eof
            )
        except OSError as exc:
            raise _LoginFailed(Status.CHANNEL_FAILED, f"cannot start the shell {argv[0]}: {_reason(exc)}") from None
        inbox.pause = proc.pause_reading
        inbox.resume = proc.resume_reading
        return cls(proc)

    def write(self, data: bytes) -> None:
        self._proc.write(data)

    async def exit_code(self) -> int | None:
        rc = await self._proc.wait()
        return rc if rc >= 0 else 128 - rc

    async def close(self) -> None:
        await self._proc.close()


# ---------------------------------------------------------------------------
# One login session inside a tunnel


class _ShellSession:
    """A ``connect`` frame's shell: login, output pump, idle timer, end-of-session report."""

    def __init__(self, tunnel: _Tunnel, connect: Frame) -> None:
        self.tunnel = tunnel
        self.agent = tunnel.agent
        self.connect_id = connect.request_id
        self.last_command_id: str | None = None
        data = connect.data
        self.username: str = data["username"]
        self._password: str = data["password"]
        self.inbox = _Inbox()
        self.backend: _SSHBackend | _LocalBackend | None = None
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._last_input = self._loop.time()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ended = False  # once set, this session sends no more frames
        self._cancelled = False
        self.task = asyncio.create_task(self._run(), name=f"tunnelnb-agent-session-{self.connect_id}")

    @property
    def ready(self) -> bool:
        return self.backend is not None and not self.ended

    def output_id(self) -> str:
        """The request_id stamped on output, as the chosen SDK would."""
        quirks = self.agent.quirks
        if quirks == "c-sdk":
            return self.tunnel.latest_id
        if quirks == "csharp-sdk":
            return self.connect_id
        return self.last_command_id or self.connect_id

    def write(self, data: bytes, request_id: str) -> None:
        """Type ``data`` into the shell (queued until the login is done)."""
        self.last_command_id = request_id
        self._last_input = self._loop.time()
        if self.backend is not None:
            self.backend.write(data)
        else:
            self._pending.append(data)

    def cancel(self) -> None:
        """End the session without a report (replaced, disconnected, agent stopping).

        Cancels the task once only: a second cancel would interrupt its cleanup.
        """
        self.ended = True
        if not self._cancelled:
            self._cancelled = True
            self.task.cancel()

    async def _run(self) -> None:
        agent = self.agent
        try:
            try:
                self.backend = await self._open()
            except _LoginFailed as exc:
                log.warning("login for user %r failed: %s", self.username, exc.message)
                await self._report(Frame.disconnect(self.connect_id, exc.status_code, exc.message))
                return
            finally:
                self._password = ""
            log.info("shell open for user %r (%s)", self.username, agent._shell_target())
            for data in self._pending:
                self.backend.write(data)
            self._pending.clear()
            if agent.quirks == "csharp-sdk":
                await self.inbox.wait(timeout=CSHARP_FIRST_OUTPUT_SECONDS)
                first = self._decoder.decode(self.inbox.take(CSHARP_READ_BYTES))
                await self.tunnel.send(Frame(Op.CONNECT_RESPONSE, self.connect_id, first))
            elif agent.quirks == "none":
                await self.tunnel.send(Frame(Op.CONNECT_RESPONSE, self.connect_id, None))
            self._last_input = self._loop.time()  # the idle clock starts once the shell is up
            self._arm_idle(agent.idle_timeout)
            await self._pump()
            code = await self.backend.exit_code()
            message = "the SSH session ended" if code is None else f"the shell exited with status {code}"
            log.info("session of user %r ended: %s", self.username, message)
            await self._report(Frame.disconnect(self.output_id(), Status.SESSION_ENDED, message))
        except Exception as exc:  # a bug: say so instead of leaving the application waiting
            log.exception("shell session of user %r failed", self.username)
            await self._report(Frame.disconnect(self.output_id(), Status.SESSION_ENDED, f"the agent failed: {exc}"))
        finally:
            self.ended = True
            if self._idle_handle is not None:
                self._idle_handle.cancel()
            if self.backend is not None:
                await self.backend.close()
            self.tunnel._session_done(self)

    async def _open(self) -> _SSHBackend | _LocalBackend:
        agent = self.agent
        if agent.local_shell is not None:
            user, password = agent.local_shell
            ok_user = hmac.compare_digest(self.username.encode("utf-8", "surrogatepass"), user.encode())
            ok_password = hmac.compare_digest(self._password.encode("utf-8", "surrogatepass"), password.encode())
            if not (ok_user and ok_password):
                raise _LoginFailed(
                    Status.AUTH_FAILED,
                    f"SSH login refused for user {self.username!r} on the local shell: wrong user name or password",
                )
            return _LocalBackend.open(agent.shell, self.username, agent.term_size, self.inbox)
        return await _SSHBackend.open(
            agent.ssh_host, agent.ssh_port, self.username, self._password, agent.term_size, self.inbox
        )

    async def _report(self, frame: Frame) -> None:
        """Send the session's last word, unless the session was cancelled meanwhile."""
        if not self.ended:
            self.ended = True
            await self.tunnel.send(frame)

    # -- idle timeout ------------------------------------------------------------

    def _arm_idle(self, delay: float) -> None:
        if self.agent.idle_timeout > 0:
            self._idle_handle = self._loop.call_later(max(delay, 0.0), self._idle_check)

    def _idle_check(self) -> None:
        remaining = self._last_input + self.agent.idle_timeout - self._loop.time()
        if remaining > 0:
            self._arm_idle(remaining)
            return
        seconds = f"{self.agent.idle_timeout:g}"
        log.info("session of user %r idle for %s s: closing it", self.username, seconds)
        self.cancel()  # no "shell exited" report: the idle disconnect says it all
        frame = Frame.disconnect(SSH_IDLE_REQUEST_ID, Status.SSH_IDLE, f"SSH session idle for {seconds} s")
        self.tunnel.spawn(self.tunnel.send(frame))

    # -- output ----------------------------------------------------------------

    async def _pump(self) -> None:
        quirks = self.agent.quirks
        if quirks == "c-sdk":
            await self._pump_c_sdk()
        elif quirks == "csharp-sdk":
            await self._pump_chunks(CSHARP_READ_BYTES)
        else:
            await self._pump_coalesced()

    async def _pump_coalesced(self) -> None:
        """Send what is there at once; output that arrives while a send is in flight is batched.

        No timer: a short reply goes out as soon as it is read (a linger of a few
        milliseconds was most of a trivial command's round trip), while a stream
        fills frames by itself because it piles up during each send.
        """
        inbox, limit = self.inbox, self.agent.max_message_bytes
        while True:
            await inbox.wait()
            await asyncio.sleep(0)  # reads that are ready in this loop turn join the batch
            text = self._decoder.decode(inbox.take(4 * limit), inbox.finished)
            if text:
                for frame in output_frames(text, self.output_id(), limit):
                    await self.tunnel.send_output(frame)
            if inbox.finished:
                return

    async def _pump_chunks(self, size: int) -> None:
        """The C# SDK: reads of at most ``size`` bytes, decoded without splitting characters."""
        inbox = self.inbox
        while True:
            await inbox.wait()
            carried = len(self._decoder.getstate()[0])  # part of a character from the last read
            text = self._decoder.decode(inbox.take(size - carried), inbox.finished)
            if text:
                await self.tunnel.send_output(Frame(Op.COMMAND_RESPONSE, self.output_id(), text))
            if inbox.finished:
                return

    async def _pump_c_sdk(self) -> None:
        """The C SDK: raw reads of at most 2,048 bytes; what does not fit its JSON buffer is lost.

        Its reader thread blocks in each send, so output piles up meanwhile and
        is read in full buffers: coalesce for a few milliseconds, as it would.
        """
        inbox = self.inbox
        while True:
            await inbox.wait(fill=C_SDK_READ_BYTES, linger=COALESCE_SECONDS)
            raw = inbox.take(C_SDK_READ_BYTES)
            nul = raw.find(b"\0")
            if nul >= 0:
                raw = raw[:nul]  # a C string ends at its first NUL
            if raw:
                request_id = self.output_id()
                size = c_sdk_json_size(request_id, raw)
                if size > C_SDK_JSON_BYTES:
                    log.debug("c-sdk quirk: dropped %d bytes of output (%d-byte JSON)", len(raw), size)
                else:
                    text = raw.decode("utf-8", "surrogateescape")
                    await self.tunnel.send_output(Frame(Op.COMMAND_RESPONSE, request_id, text))
            if inbox.finished:
                return


# ---------------------------------------------------------------------------
# One tunnel (the device-side WebSocket of a tunnel_notify)


class _Tunnel:
    """The device side of one tunnel: its WebSocket (reconnected after drops) and its shell session."""

    def __init__(self, agent: Agent, notify: TunnelNotify, after: asyncio.Task[None] | None) -> None:
        self.agent = agent
        self.uri = notify.tunnel_uri
        self._token = notify.tunnel_access_token
        self.ws: aiohttp.ClientWebSocketResponse | None = None  # live: backlog flushed
        self._connecting: aiohttp.ClientWebSocketResponse | None = None
        self._backlog: deque[str] = deque()
        self._backlog_bytes = 0
        self._send_lock = asyncio.Lock()
        self._online = asyncio.Event()
        self._wake = asyncio.Event()  # cuts the reconnect back-off short (close, or a repeated notify)
        self.closing = False
        self.latest_id = ""
        self.session: _ShellSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connects = 0
        self.task = asyncio.create_task(self._run(after), name="tunnelnb-agent-tunnel")

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    def serves(self, notify: TunnelNotify) -> bool:
        """Is ``notify`` about this very tunnel (same URI and token), still being served?"""
        return (
            not self.closing
            and self.uri == notify.tunnel_uri
            and hmac.compare_digest(self._token.encode(), notify.tunnel_access_token.encode())
        )

    def retry_now(self) -> None:
        """Skip the rest of a reconnect back-off."""
        self._wake.set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sending -----------------------------------------------------------------

    async def send(self, frame: Frame) -> None:
        """Send now, or keep for after the reconnect while the tunnel is down."""
        text = self.agent._encode(frame)
        async with self._send_lock:
            ws = self.ws
            if ws is not None and not ws.closed:
                try:
                    await ws.send_str(text)
                    return
                except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                    log.debug("tunnel send failed (%s): keeping the frame for the reconnect", exc)
            if ws is not None:  # it broke: offline until the reconnect has flushed the backlog
                self.ws = None
                self._online.clear()
            if self.closing:
                return
            self._backlog.append(text)
            self._backlog_bytes += len(text)

    async def send_output(self, frame: Frame) -> None:
        """Send a command_response; wait while the offline backlog is full (the shell then pauses)."""
        agent = self.agent
        if agent.quirks != "none" and agent._encoded_size(frame) > agent.max_message_bytes:
            # Never exceed the platform's limit, even where the emulated SDK would.
            for piece in chunk_text(frame.data, frame.request_id, max_bytes=agent._output_budget()):
                await self.send(piece)
        else:
            await self.send(frame)
        while self._backlog_bytes >= OFFLINE_BUFFER_BYTES and not self.closing:
            await self._online.wait()

    # -- connection ----------------------------------------------------------------

    async def _run(self, after: asyncio.Task[None] | None) -> None:
        agent = self.agent
        attempt = 0
        try:
            if after is not None:  # the replaced tunnel closes first (one device-side socket at a time)
                await asyncio.wait({after})
            while not self.closing:
                ws = None
                try:
                    ws = await agent._http.ws_connect(
                        self.uri,
                        headers={"tunnel_access_token": self._token},
                        heartbeat=agent.heartbeat,
                        timeout=_ws_timeout(),
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status in (401, 403, 404):
                        log.error("the platform refused the tunnel connection (HTTP %d): giving up", exc.status)
                        return
                    log.warning("tunnel connection refused (HTTP %d)", exc.status)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("cannot open the tunnel connection: %s", _reason(exc))
                if ws is not None:
                    attempt = 0
                    self._connecting = ws
                    await self._serve(ws)
                    if self.closing:
                        return
                    code = ws.close_code
                    if code in NO_RECONNECT_CODES:
                        log.info("tunnel connection closed by the platform (code %s)", code)
                        return
                    log.warning("tunnel connection lost (code %s): reconnecting", code)
                attempt += 1
                if attempt > agent.reconnect_tries:
                    log.error("tunnel connection lost for good after %d tries", agent.reconnect_tries)
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), agent.reconnect_step * min(attempt, 10))
        finally:
            self.closing = True
            self._online.set()  # release output waiting for a reconnect that will not come
            await self._end_session()
            ws, self.ws, self._connecting = self._connecting, None, None
            if ws is not None and not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close(code=CloseCode.NORMAL)
            agent._tunnel_done(self)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Flush what was kept while offline, then handle frames until the socket closes."""
        self.connects += 1
        async with self._send_lock:
            try:
                while self._backlog:
                    await ws.send_str(self._backlog[0])
                    self._backlog_bytes -= len(self._backlog.popleft())
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                pass  # broken again: stay offline; the receive loop below ends at once and we reconnect
            else:
                self.ws = ws
                self._online.set()
        log.info("tunnel connected (%s)", "reconnect" if self.connects > 1 else "first connection")
        try:
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    try:
                        await self._on_message(msg.data)
                    except Exception:  # a bug must not take the tunnel down
                        log.exception("failed to handle a tunnel message")
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    log.warning("tunnel connection error: %s", ws.exception())
                    break
        finally:
            self.ws = None
            self._online.clear()

    async def _on_message(self, data: str | bytes) -> None:
        if self.closing:
            return
        try:
            frame = decode_frame(data, max_bytes=None)
        except ProtocolError as exc:
            log.warning("ignoring a malformed tunnel message: %s", exc)
            return
        self.latest_id = frame.request_id
        op = frame.op
        if op is Op.CONNECT:
            if self.agent.quirks == "c-sdk":  # the C SDK answers before it even tries SSH
                await self.send(Frame(Op.CONNECT_RESPONSE, frame.request_id, None))
            old, self.session = self.session, _ShellSession(self, frame)
            if old is not None:
                log.info("a new connect replaces the session of user %r", old.username)
                self.spawn(self._cancel(old))
        elif op is Op.COMMAND:
            session = self.session
            if session is None:
                log.warning("command %r ignored: no shell session is open (connect first)", frame.request_id)
                return
            try:
                raw = frame.data.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = frame.data.encode("utf-8", "replace")
            session.write(raw, frame.request_id)
        elif op is Op.DISCONNECT:
            status = frame.data.get("status_code") if isinstance(frame.data, dict) else None
            log.info("the platform sent disconnect (status %s): ending the shell session", status)
            # In the background: the platform's close frame follows at once and must be read
            # while the shell winds down, or the close times out and looks like a drop (1006).
            self.spawn(self._end_session())
        elif op is Op.PING:
            await self.send(Frame(Op.PONG, frame.request_id, None))
        else:
            log.debug("ignoring %s frame", op)

    def _session_done(self, session: _ShellSession) -> None:
        if self.session is session:
            self.session = None

    @staticmethod
    async def _cancel(session: _ShellSession) -> None:
        session.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await session.task

    async def _end_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await self._cancel(session)

    async def close(self, goodbye: Frame | None = None) -> None:
        """End the session, optionally say ``goodbye``, close the socket with 1000; idempotent."""
        self.closing = True  # from now on incoming frames are ignored and nothing reconnects
        self._wake.set()
        await self._end_session()
        if goodbye is not None and self.connected:
            await self.send(goodbye)
        ws = self._connecting
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=CloseCode.NORMAL)
        # _run ends by itself once its socket is closed; cancel it if it is stuck connecting.
        await asyncio.wait({self.task}, timeout=1.0)
        if not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# ---------------------------------------------------------------------------
# The agent


class Agent:
    """A device: keeps its link to the platform and serves the tunnels it is told about.

    Use as ``async with Agent(url, device_id, secret, ssh_port=22) as agent``.
    ``local_shell=(user, password)`` spawns a PTY shell (``shell``) directly
    instead of logging in to an SSH server.  ``heartbeat`` is the WebSocket
    ping interval (None: no pings).  See the module docstring for ``quirks``.

    ``mqtt_url`` (``mqtt://HOST[:PORT]`` or ``mqtts://…``) takes the tunnel
    notifications from an MQTT broker, as an IoTDA device does, instead of the
    device link (``platform_url`` is then unused and may be empty): see
    :mod:`tunnelnb.server.mqtt` for the credentials, ``mqtt_check_timestamp`` (client
    id sign type 1) and ``mqtt_presence`` (off for a real IoTDA broker).
    """

    def __init__(
        self,
        platform_url: str,
        device_id: str,
        device_secret: str,
        *,
        ssh_host: str = "127.0.0.1",
        ssh_port: int = 22,
        local_shell: tuple[str, str] | None = None,
        shell: Sequence[str] = ("/bin/sh",),
        quirks: str = "none",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout: float = 600.0,
        heartbeat: float | None = 20.0,
        term_size: tuple[int, int] = (128, 30),
        reconnect_tries: int = 10,
        reconnect_step: float = 1.0,
        ssl: ssl_module.SSLContext | bool = True,
        mqtt_url: str | None = None,
        mqtt_check_timestamp: bool = False,
        mqtt_presence: bool = True,
    ) -> None:
        if quirks not in QUIRKS:
            raise ValueError(f"quirks must be one of {', '.join(QUIRKS)}, not {quirks!r}")
        if not shell:
            raise ValueError("shell must name a program")
        if max_message_bytes < 256:
            raise ValueError(f"max_message_bytes={max_message_bytes} leaves no room for output")
        self.platform_url = (platform_url or "").rstrip("/")
        if not self.platform_url and mqtt_url is None:
            raise ValueError("give the platform's URL (device link) or an MQTT broker's (mqtt_url)")
        self.mqtt_url = mqtt_url
        self.mqtt_check_timestamp = mqtt_check_timestamp
        self.mqtt_presence = mqtt_presence
        self._mqtt: Any = None  # a tunnelnb.server.mqtt.DeviceMqtt while started with mqtt_url
        self.device_id = device_id
        self._secret = device_secret
        self.ssh_host = ssh_host
        self.ssh_port = ssh_port
        self.local_shell = local_shell
        self.shell = tuple(shell)
        self.quirks = quirks
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.heartbeat = heartbeat
        self.term_size = term_size
        self.reconnect_tries = reconnect_tries
        self.reconnect_step = reconnect_step
        self.ssl = ssl  # for https/wss platforms: True verifies (system CAs), a context (a CA bundle), False not
        self.link_url = self.platform_url + LINK_PATH.format(device_id=quote(device_id, safe=""))
        self._http: aiohttp.ClientSession = None  # type: ignore[assignment]  # set by start()
        self._link_ws: aiohttp.ClientWebSocketResponse | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._online = asyncio.Event()
        self._tunnel: _Tunnel | None = None
        self._closing_tunnels: set[asyncio.Task[None]] = set()  # replaced tunnels, closing
        self._stopping = False
        self._ids = RequestIds("agent")
        # Extra bytes pretty-printing adds to a frame, for the size guard of the quirks.
        empty = Frame(Op.COMMAND_RESPONSE, "", "")
        self._pretty_extra = len(encode_frame(empty, pretty=True)) - len(encode_frame(empty))

    # -- state, for tests and the CLI -------------------------------------------------

    @property
    def online(self) -> bool:
        """The device link (or the MQTT connection) is up (the platform lists the device as ONLINE)."""
        if self._mqtt is not None:
            return bool(self._mqtt.connected)
        return self._link_ws is not None and not self._link_ws.closed

    @property
    def tunnel_connected(self) -> bool:
        return self._tunnel is not None and self._tunnel.connected

    @property
    def ssh_connected(self) -> bool:
        session = self._tunnel.session if self._tunnel is not None else None
        return session is not None and session.ready

    @property
    def tunnel_connects(self) -> int:
        """How many times the current tunnel's WebSocket has connected (reconnects included)."""
        return self._tunnel.connects if self._tunnel is not None else 0

    async def wait_online(self, timeout: float = 10.0) -> None:
        """Wait until the device link is up; TimeoutError if it is not within ``timeout``."""
        await asyncio.wait_for(self._online.wait(), timeout)

    def _shell_target(self) -> str:
        return "local shell" if self.local_shell is not None else f"SSH {self.ssh_host}:{self.ssh_port}"

    # -- frames ----------------------------------------------------------------

    def _encode(self, frame: Frame) -> str:
        if self.quirks != "c-sdk":
            return encode_frame(frame)
        if frame.op is Op.CONNECT_RESPONSE and frame.data is None:
            obj = frame.to_dict()
            del obj["data"]  # cJSON_AddStringToObject(..., NULL) adds nothing
            return json.dumps(obj, indent="\t")
        return encode_frame(frame, pretty=True)

    def _encoded_size(self, frame: Frame) -> int:
        return len(self._encode(frame).encode("utf-8", "surrogatepass"))

    def _output_budget(self) -> int:
        return self.max_message_bytes - (self._pretty_extra if self.quirks == "c-sdk" else 0)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the device link; raises DeviceAuthError (401/404) or PlatformUnreachable at once."""
        if self._link_task is not None:
            return
        self._stopping = False
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, connect=15),
            connector=aiohttp.TCPConnector(ssl=self.ssl),
        )
        try:
            if self.mqtt_url is not None:
                self._link_task = await self._start_mqtt()
                return
            ws = await self._connect_link()
        except BaseException:
            await self._http.close()
            raise
        self._link_task = asyncio.create_task(self._link_loop(ws), name=f"tunnelnb-agent-link-{self.device_id}")

    async def stop(self) -> None:
        """End shell sessions, tell the app (``disconnect`` 410 "agent stopping"), close sockets with 1000."""
        if self._link_task is None:
            return
        self._stopping = True
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            session = tunnel.session
            request_id = session.output_id() if session is not None else tunnel.latest_id or self._ids.next()
            await tunnel.close(Frame.disconnect(request_id, Status.SESSION_ENDED, "agent stopping"))
        if self._closing_tunnels:
            await asyncio.gather(*self._closing_tunnels, return_exceptions=True)
        mqtt, self._mqtt = self._mqtt, None
        if mqtt is not None:
            await mqtt.stop()  # OFFLINE, then a clean DISCONNECT
        ws = self._link_ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=CloseCode.NORMAL)
        self._link_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._link_task
        self._link_task = None
        await self._http.close()
        log.info("agent for device %r stopped", self.device_id)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- MQTT (tunnelnb.server.mqtt) ---------------------------------------------------------

    async def _start_mqtt(self) -> asyncio.Task[None]:
        """Connect to the broker and subscribe (DeviceAuthError, PlatformUnreachable); the reconnect loop's task."""
        from ..errors import BrokerAuthError
        from .mqtt import DeviceMqtt

        assert self.mqtt_url is not None
        mqtt = DeviceMqtt(
            self.mqtt_url,
            self.device_id,
            self._secret,
            on_notify=self._open_tunnel,  # the same notify handling as on the device link
            on_connected=self._mqtt_connected,
            check_timestamp=self.mqtt_check_timestamp,
            presence=self.mqtt_presence,
            ssl=self.ssl,
            reconnect_step=self.reconnect_step,
        )
        self._mqtt = mqtt
        try:
            await mqtt.start()
        except BrokerAuthError as exc:
            self._mqtt = None
            raise DeviceAuthError(f"{exc} of device {self.device_id!r}: check the device secret") from None
        except BaseException:
            self._mqtt = None
            raise
        assert mqtt.task is not None
        return mqtt.task

    def _mqtt_connected(self, up: bool) -> None:
        if up:
            self._online.set()
            log.info("device %r online (MQTT %s)", self.device_id, self.mqtt_url)
        else:
            self._online.clear()

    # -- device link ---------------------------------------------------------------

    async def _connect_link(self) -> aiohttp.ClientWebSocketResponse:
        stamp = link_timestamp()
        headers = {TIMESTAMP_HEADER: stamp, PASSWORD_HEADER: device_password(self._secret, stamp)}
        try:
            return await self._http.ws_connect(
                self.link_url, headers=headers, heartbeat=self.heartbeat, timeout=_ws_timeout()
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise DeviceAuthError(
                    f"the platform at {self.platform_url} refused device {self.device_id!r} (HTTP 401): "
                    "check the device secret"
                ) from None
            if exc.status == 404:
                raise DeviceAuthError(
                    f"the platform at {self.platform_url} does not know device {self.device_id!r} (HTTP 404): "
                    "register the device first"
                ) from None
            raise TunnelnbError(
                f"the platform at {self.platform_url} refused the device link of {self.device_id!r} (HTTP {exc.status})"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PlatformUnreachable(f"cannot reach the platform at {self.platform_url}: {_reason(exc)}") from None

    async def _link_loop(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        """Read the link; after a drop reconnect forever with linear back-off (step, 2 step … 10 step)."""
        attempt = 0
        while True:
            if ws is not None:
                attempt = 0
                self._link_ws = ws
                self._online.set()
                log.info("device %r online (link %s)", self.device_id, self.link_url)
                try:
                    await self._read_link(ws)
                finally:
                    self._link_ws = None
                    self._online.clear()
                if self._stopping:
                    return
                if ws.close_code == CloseCode.REPLACED:
                    log.warning("device link of %r replaced by a newer one: not reconnecting", self.device_id)
                    return
                log.warning("device link lost (code %s): reconnecting", ws.close_code)
            attempt += 1
            await asyncio.sleep(self.reconnect_step * min(attempt, 10))
            try:
                ws = await self._connect_link()
            except TunnelnbError as exc:
                ws = None
                log.warning("device link retry %d failed: %s", attempt, exc)

    async def _read_link(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            try:
                notes = parse_event(msg.data)
            except ProtocolError as exc:
                log.warning("ignoring a malformed device event: %s", exc)
                continue
            for notify in notes:
                self._open_tunnel(notify)

    def _open_tunnel(self, notify: TunnelNotify) -> None:
        """Serve a newly notified tunnel; it replaces the current one (closed with 1000)."""
        if self._stopping:
            return
        current = self._tunnel
        if current is not None and current.serves(notify):
            # The platform repeats a notify while it sees no device connection (e.g. when the
            # application connects first); replacing our socket would only make it churn.
            log.info("repeated tunnel notify for %s: keeping the current connection", notify.tunnel_uri)
            current.retry_now()
            return
        log.info("tunnel notify: connecting to %s", notify.tunnel_uri)
        previous, closing = self._tunnel, None
        if previous is not None:
            closing = asyncio.create_task(previous.close())
            self._closing_tunnels.add(closing)
            closing.add_done_callback(self._closing_tunnels.discard)
        self._tunnel = _Tunnel(self, notify, closing)

    def _tunnel_done(self, tunnel: _Tunnel) -> None:
        if self._tunnel is tunnel:
            self._tunnel = None


async def serve(**kwargs: Any) -> None:
    """Run an agent until SIGINT or SIGTERM (the ``tunnelnb agent`` command)."""
    agent = Agent(**kwargs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        async with agent:
            log.info(
                "agent for device %r connected to %s; shells via %s",
                agent.device_id,
                agent.mqtt_url or agent.platform_url,
                agent._shell_target(),
            )
            started = time.monotonic()
            await stop.wait()
            log.info("stopping after %.0f s", time.monotonic() - started)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)

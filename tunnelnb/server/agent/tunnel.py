"""The device side of one tunnel: the WebSocket a ``tunnel_notify`` tells the agent to open.

:class:`Tunnel` connects to the tunnel URI with its access token, reconnects
after drops (keeping output for the reconnect, up to a bound), answers pings
and hands ``connect``/``command``/``disconnect`` frames to its
:class:`~.session.ShellSession`.

An abandoned shell is stopped, not fed into the void.  The application is gone
when the platform says so (a ``disconnect`` frame: the session ends at once) or
when the device's WebSocket drops, since the platform then tells the application
"device left" and a client treats that shell as lost.  After a drop the tunnel
waits ``abandon_grace`` seconds (reconnecting meanwhile) for any frame from the
application; if none comes, it types Ctrl-C into the shell, waits a moment, and
ends the session (closing the SSH channel, or hanging up on the local shell).

The C SDK modes (:data:`~.quirks.C_SDK_QUIRKS`) do what that SDK does instead:
every close of the WebSocket ends the shell session at once (``wss_client.c``,
``WssClientListenerOnClose`` → ``SSHClientSessionDestroy``), the reconnect comes
without it, and nothing is kept while the socket is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import aiohttp

from ...errors import ProtocolError
from ...protocol.devicelink import TunnelNotify
from ...protocol.frames import CloseCode, Frame, Op, chunk_text, decode_frame
from .quirks import C_SDK_QUIRKS, encode_as, output_budget
from .session import ShellSession
from .shells import reason

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["WS_TIMEOUT", "Tunnel"]

log = logging.getLogger(__name__)

#: Close codes after which the device SDKs do not reconnect: normal, auth failed, replaced.
NO_RECONNECT_CODES = frozenset({1000, 1002, 4000})
#: Output kept while the tunnel is down (counted in bytes of JSON text); beyond it the
#: shell is paused until the tunnel is back.
OFFLINE_BUFFER_BYTES = 1 << 20
#: ws_connect's timeout (for the device link too): how long closing waits for the peer's close frame.
WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_close=2.0)
#: Between the Ctrl-C typed into an abandoned shell and closing it: time for the job to
#: handle SIGINT (and for the byte to reach an SSH server) before the hang-up.
INTERRUPT_SECONDS = 0.3


class Tunnel:
    """The device side of one tunnel: its WebSocket (reconnected after drops) and its shell session."""

    def __init__(self, agent: Agent, notify: TunnelNotify, after: asyncio.Task[None] | None) -> None:
        self.agent = agent
        self.uri = notify.tunnel_uri
        self._token = notify.tunnel_access_token
        self.ws: aiohttp.ClientWebSocketResponse | None = None  # live: backlog flushed
        self._connecting: aiohttp.ClientWebSocketResponse | None = None
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._send_lock = asyncio.Lock()
        self._online = asyncio.Event()
        self._wake = asyncio.Event()  # cuts the reconnect back-off short (close, or a repeated notify)
        self.closing = False
        self.latest_id = ""
        self.session: ShellSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._abandon: asyncio.TimerHandle | None = None  # armed while the application may be gone
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
        """Send now, or keep for after the reconnect while the tunnel is down (the C SDK drops it).

        Always a text message, even where the emulated SDK's bytes are not valid
        UTF-8 (:func:`~.quirks.encode_as`).
        """
        await self._send(encode_as(self.agent.quirks, frame), frame.op)

    async def _send(self, message: bytes, op: Op) -> None:
        """Send an encoded ``op`` message as it is, or keep it (see :meth:`send`)."""
        async with self._send_lock:
            ws = self.ws
            if ws is not None and not ws.closed:
                try:
                    await ws.send_frame(message, aiohttp.WSMsgType.TEXT)
                    return
                except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                    log.debug("tunnel send failed (%s): keeping the frame for the reconnect", exc)
            if ws is not None:  # it broke: offline until the reconnect has flushed the backlog
                self.ws = None
                self._online.clear()
            if self.closing:
                return
            if (
                self.agent.quirks in C_SDK_QUIRKS
            ):  # WssClientSendRsp sends on whatever connection there is, or not at all
                log.debug("c-sdk quirk: %s frame dropped, the tunnel connection is down", op)
                return
            self._backlog.append(message)
            self._backlog_bytes += len(message)

    async def send_output(self, frame: Frame) -> None:
        """Send a command_response as the emulated SDK encodes it; wait while the offline backlog is full."""
        agent = self.agent
        message = encode_as(agent.quirks, frame)
        if len(message) > agent.max_message_bytes:
            # Never exceed the platform's limit, even where the emulated SDK would.
            budget = output_budget(agent.quirks, agent.max_message_bytes)
            for piece in chunk_text(frame.data, frame.request_id, max_bytes=budget):
                await self.send(piece)
        else:
            await self._send(message, frame.op)
        await self._paced()

    async def send_output_message(self, message: bytes) -> None:
        """Send a command_response already encoded (:func:`~tunnelnb.protocol.frames.encode_chunks`) as it is."""
        await self._send(message, Op.COMMAND_RESPONSE)
        await self._paced()

    async def _paced(self) -> None:
        """Wait while the offline backlog is full (the shell then pauses)."""
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
                    ws = await agent.http.ws_connect(
                        self.uri,
                        headers={"tunnel_access_token": self._token},
                        heartbeat=agent.heartbeat,
                        timeout=WS_TIMEOUT,
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status in (401, 403, 404):
                        log.error("the platform refused the tunnel connection (HTTP %d): giving up", exc.status)
                        return
                    log.warning("tunnel connection refused (HTTP %d)", exc.status)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("cannot open the tunnel connection: %s", reason(exc))
                if ws is not None:
                    attempt = 0
                    self._connecting = ws
                    await self._serve(ws)
                    if agent.quirks in C_SDK_QUIRKS:  # the SDK destroys its SSH session on every close
                        await self._end_session()
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
            agent.tunnel_done(self)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Flush what was kept while offline, then handle frames until the socket closes."""
        self.connects += 1
        async with self._send_lock:
            try:
                while self._backlog:
                    await ws.send_frame(self._backlog[0], aiohttp.WSMsgType.TEXT)
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
            if not self.closing and self.agent.quirks not in C_SDK_QUIRKS:
                self._application_maybe_gone()

    # -- an application that went away ---------------------------------------------

    def _application_maybe_gone(self) -> None:
        """The socket dropped: the platform told the application the device left; wait for it to come back."""
        session = self.session
        if session is None or session.ended or self._abandon is not None:
            return
        grace = self.agent.abandon_grace
        log.info(
            "tunnel connection lost with the shell of user %r open: ending it unless the application "
            "is heard from within %g s",
            session.username,
            grace,
        )
        self._abandon = asyncio.get_running_loop().call_later(grace, self._abandoned, session)

    def _application_back(self) -> None:
        if self._abandon is not None:
            self._abandon.cancel()
            self._abandon = None
            log.info("the application is back: keeping the shell")

    def _abandoned(self, session: ShellSession) -> None:
        self._abandon = None
        if self.session is not session or session.ended:
            return
        log.warning(
            "no word from the application for %g s since the tunnel connection was lost: "
            "interrupting the shell of user %r (Ctrl-C) and ending its session",
            self.agent.abandon_grace,
            session.username,
        )
        self.spawn(self._end_session(abandoned=True))

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
        if op in (Op.CONNECT, Op.COMMAND):  # only the application sends these: it is there
            self._application_back()
        if op is Op.CONNECT:
            if self.agent.quirks in C_SDK_QUIRKS:  # the C SDK answers before it even tries SSH
                await self.send(Frame(Op.CONNECT_RESPONSE, frame.request_id, None))
            old, self.session = self.session, ShellSession(self, frame)
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
            log.info("the platform sent disconnect (status %s): interrupting and ending the shell session", status)
            # The platform's word is final (and a client takes the shell as gone): no grace.
            # In the background: the platform's close frame follows at once and must be read
            # while the shell winds down, or the close times out and looks like a drop (1006).
            self.spawn(self._end_session(abandoned=True))
        elif op is Op.PING:
            await self.send(Frame(Op.PONG, frame.request_id, None))
        else:
            log.debug("ignoring %s frame", op)

    def session_done(self, session: ShellSession) -> None:
        if self.session is session:
            self.session = None

    @staticmethod
    async def _cancel(session: ShellSession, *, abandoned: bool = False) -> None:
        """End ``session`` (Ctrl-C, then close); ``abandoned``: give the Ctrl-C a moment first."""
        if abandoned and session.interrupt():
            session.ended = True  # nobody to tell: no "shell exited" report if the Ctrl-C ends the shell
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(session.task), INTERRUPT_SECONDS)
        session.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await session.task

    async def _end_session(self, *, abandoned: bool = False) -> None:
        if self._abandon is not None:
            self._abandon.cancel()
            self._abandon = None
        session, self.session = self.session, None
        if session is not None:
            await self._cancel(session, abandoned=abandoned)

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

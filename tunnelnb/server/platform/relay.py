"""The Secure Tunnel relay: each tunnel's ``source-connect`` and ``device-connect`` WebSockets.

:class:`Relay` authenticates each side with its tunnel access token, gives a side's
slot to the newest connection, tells the application when both sides are there,
relays every valid frame between them as the exact bytes received, and ends sides
that break the rules -- always telling the peer why with a disconnect frame.

A device's text message need not be valid UTF-8: the C SDK copies raw terminal bytes
into its JSON, so a character split between two of its 2,048-byte reads makes a
message that is not (docs/architecture.md, "The platform").  The tunnel sockets are
read as bytes (``decode_text=False``): a device's message is checked as a frame
(:func:`~tunnelnb.protocol.frames.decode_frame` reads such bytes with
``surrogateescape``) and relayed byte for byte, never closed with 1007 for its
encoding.  The application side stays strict: tunnelnb's client always sends valid
UTF-8, a device SDK types what it gets into a terminal, and an aiohttp device (the
agent) would close on such a message; an application's message that is not valid
UTF-8 is refused (1007) as before.

A message is checked once (:func:`~tunnelnb.protocol.frames.decode_frame` on its text,
decoded once: strictly for an application, with ``surrogateescape`` for a device) and
relayed as the very bytes object received, never encoded again.

Each side is read by its handler and written by a task of its own, through a bounded
outbox (issue 14): a side that stops reading never stops the platform from reading
the other, so a device keeps its pings answered and its WebSocket open while the
application stalls.  A side whose outbox makes no progress for ``stall_timeout``
seconds, or holds more than ``max_backlog_bytes``, is closed (1011) and its peer is
told it is gone (disconnect 503), as when a side leaves.  When the outbox is empty and
the connection's write buffer has room (:meth:`Sockets.can_take`), a relayed message
is written at once by the reader, which cannot wait there, saving the outbox task's
turn of the event loop on every hop of a short reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import WebSocketError, WSMsgType, web

from ...errors import PlatformError, ProtocolError
from ...protocol.frames import CloseCode, Frame, Op, Status, decode_frame, encode_frame, require_utf8
from .auth import same_secret
from .model import CLOSED, CONNECTED, DISCONNECTED, OPEN, Conn, ErrorCode, Side, Tunnel, open_tunnel_of
from .sockets import Outbox, Sockets

if TYPE_CHECKING:
    from .app import Platform

__all__ = ["DEFAULT_MAX_BACKLOG_BYTES", "DEFAULT_STALL_TIMEOUT", "TUNNEL_TOKEN_HEADER", "Relay"]

logger = logging.getLogger(__name__)

TUNNEL_TOKEN_HEADER = "tunnel_access_token"

#: Seconds a side's outbox may go without sending anything before the side is closed.
DEFAULT_STALL_TIMEOUT = 30.0
#: Bytes of messages that may wait for one side before it is closed for falling behind.
DEFAULT_MAX_BACKLOG_BYTES = 8 * 1024 * 1024

#: Seconds the platform gives a side it ends to take its last messages and the close handshake.
_END_GRACE = 5.0

#: What a device may send to the application; anything else it sends is dropped.
#: (A tuple: found by identity, without hashing, whose Enum.__hash__ runs in Python.)
_DEVICE_TO_APP = (Op.COMMAND_RESPONSE, Op.CONNECT_RESPONSE, Op.DISCONNECT)


def _brief(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: a peer's message must stay far below the size limit."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Relay:
    """The tunnel WebSockets of the platform's ``tunnels`` (shared with the REST API, which creates them).

    ``notify`` sees that a tunnel's device hears of it when the application connects
    first, and ``device_dropped`` when the device's side leaves an open tunnel (the
    registry's one-notify-per-tunnel policy); ``route`` handles each valid frame received (:meth:`route` unless given);
    ``platform`` supplies the clock, ``token_ttl``, ``max_message_bytes`` and whether
    it is shutting down, read when needed.
    """

    def __init__(
        self,
        platform: Platform,
        tunnels: dict[str, Tunnel],
        *,
        sockets: Sockets,
        notify: Callable[[Tunnel], Awaitable[None]],
        device_dropped: Callable[[Tunnel], None],
        route: Callable[[Tunnel, Conn, Frame, str], Awaitable[None]] | None = None,
    ) -> None:
        self._platform = platform
        self._tunnels = tunnels
        self._sockets = sockets
        self._notify = notify
        self._device_dropped = device_dropped
        self._route = route if route is not None else self.route
        #: Close handshakes of CloseDeviceTunnel and of sides too slow to keep,
        #: running in the background (shutdown awaits them).
        self.handshakes: set[asyncio.Task[None]] = set()
        self._outboxes: dict[Conn, Outbox] = {}
        #: The message being routed: its text (what ``route`` is given) and the bytes it came as.
        self._routing: tuple[str, bytes] | None = None

    def expired(self, tunnel: Tunnel) -> bool:
        """Whether the tunnel's access tokens have expired."""
        return self._platform.clock() >= tunnel.create_time + self._platform.token_ttl

    def backlog(self, tunnel_id: str, side: Side) -> int:
        """Bytes waiting to be sent to the tunnel's ``side`` (0 when it is not connected)."""
        tunnel = self._tunnels.get(tunnel_id)
        conn = None if tunnel is None else tunnel.conns[side]
        box = None if conn is None else self._outboxes.get(conn)
        return 0 if box is None else box.backlog

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    # ------------------------------------------------------------------
    # Closing tunnels and shutting down

    def close_tunnel(self, tunnel: Tunnel) -> None:
        """CloseDeviceTunnel's part: free both sides now, finish their close handshakes in the background.

        A busy device can take seconds to answer, and the caller has nothing to wait for.
        """
        for conn in tunnel.conns.values():
            if conn is not None:
                self.detach(tunnel, conn)
                self._background(self.dismiss(tunnel, conn, Status.TUNNEL_CLOSED, "tunnel closed", CloseCode.NORMAL))

    def goodbyes(self) -> list[Awaitable[Any]]:
        """For shutdown: a goodbye (disconnect, then close 1001) for every connected tunnel side."""
        goodbyes: list[Awaitable[Any]] = []
        for tunnel in list(self._tunnels.values()):
            for conn in tunnel.conns.values():
                if conn is not None:
                    goodbyes.append(
                        self.dismiss(tunnel, conn, Status.TUNNEL_CLOSED, "platform shutting down", CloseCode.GOING_AWAY)
                    )
        return goodbyes

    # ------------------------------------------------------------------
    # The WebSocket handlers

    async def source_connect(self, request: web.Request) -> web.StreamResponse:
        return await self._tunnel_socket(request, Side.SOURCE)

    async def device_connect(self, request: web.Request) -> web.StreamResponse:
        return await self._tunnel_socket(request, Side.DEVICE)

    async def _tunnel_socket(self, request: web.Request, side: Side) -> web.StreamResponse:
        tunnel_id = request.match_info["tunnel_id"]
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None:
            raise PlatformError(404, ErrorCode.TUNNEL_NOT_FOUND, f"Tunnel {tunnel_id} does not exist.")
        if self._platform.closing:
            raise PlatformError(503, ErrorCode.SHUTTING_DOWN, "The platform is shutting down.")
        presented = request.headers.get(TUNNEL_TOKEN_HEADER, "").strip()
        authentic = bool(presented) and same_secret(presented, tunnel.token(side))
        if authentic and self.expired(tunnel):
            raise PlatformError(
                401, ErrorCode.TUNNEL_TOKEN_EXPIRED, "The tunnel access token has expired; create a new tunnel."
            )
        if authentic and side is Side.SOURCE and tunnel.status == CLOSED:
            other = open_tunnel_of(self._tunnels, tunnel.device_id, besides=tunnel)
            if other is not None:
                raise PlatformError(
                    409,
                    ErrorCode.TUNNEL_EXISTS,
                    f"Tunnel {tunnel_id} cannot reopen: device {tunnel.device_id} has open tunnel {other.tunnel_id}.",
                )
        ws = await self._sockets.upgrade(request, decode_text=False)  # messages as bytes: see the module's doc
        try:
            await self._run_side(tunnel, side, ws, authentic)
        except Exception:
            logger.exception("tunnel %s: %s side failed", tunnel_id, side.label)
            await self._sockets.close(ws, CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._sockets.forget(ws)
        return ws

    async def _run_side(self, tunnel: Tunnel, side: Side, ws: web.WebSocketResponse, authentic: bool) -> None:
        if not authentic:
            # After the upgrade, so the device SDKs see close code 1002 and stop retrying.
            logger.warning("tunnel %s: %s side failed authentication", tunnel.tunnel_id, side.label)
            await self._sockets.close(ws, CloseCode.AUTH_FAILED, "authentication failed")
            return
        if self._tunnels.get(tunnel.tunnel_id) is not tunnel:  # deleted during the upgrade
            await self._sockets.close(ws, CloseCode.NORMAL, "tunnel deleted")
            return
        if tunnel.status == CLOSED:
            if side is Side.DEVICE or open_tunnel_of(self._tunnels, tunnel.device_id, besides=tunnel) is not None:
                logger.info("tunnel %s: refusing the %s side, the tunnel is closed", tunnel.tunnel_id, side.label)
                await self._sockets.close(ws, CloseCode.NORMAL, "tunnel closed")
                return
            tunnel.status, tunnel.closed_time = OPEN, None
            tunnel.notified_at = None  # a new episode: the device is notified at once
            logger.info("tunnel %s of device %s reopened", tunnel.tunnel_id, tunnel.device_id)
        conn = Conn(ws, side)
        self._outboxes[conn] = Outbox(
            ws,
            self._sockets,
            stall_timeout=lambda: self._platform.stall_timeout,
            max_backlog=lambda: self._platform.max_backlog_bytes,
            on_slow=lambda reason: self._background(self._drop_slow(tunnel, conn, reason)),
        )
        try:
            await self._attach(tunnel, conn)
            await self._pump(tunnel, conn)
        finally:
            await self._detach_and_tell(tunnel, conn)
            box = self._outboxes.pop(conn)
            if not ws.closed:
                await box.flush(_END_GRACE)
            box.stop()
            if not ws.closed:
                with contextlib.suppress(ConnectionResetError):
                    await self._sockets.close_or_abort(ws, CloseCode.NORMAL, "", _END_GRACE + 1)

    # ------------------------------------------------------------------
    # A side's slot

    async def _attach(self, tunnel: Tunnel, conn: Conn) -> None:
        """Make ``conn`` its side's connection: evict the old one, then announce per the protocol."""
        side = conn.side
        old = tunnel.conns[side]
        tunnel.conns[side] = conn
        tunnel.states[side] = (CONNECTED, self._platform.clock())
        logger.info("tunnel %s: %s connected (device %s)", tunnel.tunnel_id, side.label, tunnel.device_id)
        if old is not None:
            logger.info("tunnel %s: the newer %s connection replaces the older one", tunnel.tunnel_id, side.label)
            await self._end(old, CloseCode.REPLACED, "replaced by a newer connection")
        app, device = tunnel.conns[Side.SOURCE], tunnel.conns[Side.DEVICE]
        if app is not None and device is not None:
            self._post_frame(app, Frame(Op.CONNECT_TUNNEL, self._sockets.ids.next(), None))
        elif side is Side.SOURCE:
            await self._notify(tunnel)  # the device may have missed the first notify

    def detach(self, tunnel: Tunnel, conn: Conn) -> bool:
        """Free ``conn``'s side if it still holds it; True if it did."""
        if tunnel.conns[conn.side] is not conn:
            return False
        tunnel.conns[conn.side] = None
        tunnel.states[conn.side] = (DISCONNECTED, self._platform.clock())
        logger.info("tunnel %s: %s disconnected (device %s)", tunnel.tunnel_id, conn.side.label, tunnel.device_id)
        return True

    async def _detach_and_tell(self, tunnel: Tunnel, conn: Conn) -> None:
        if not self.detach(tunnel, conn) or self._platform.closing or tunnel.status != OPEN:
            return
        peer = tunnel.conns[conn.side.peer]
        if peer is not None:
            self._post_frame(
                peer, Frame.disconnect(self._sockets.ids.next(), Status.PEER_GONE, self._left(tunnel, conn))
            )
        if conn.side is Side.DEVICE:
            self._device_dropped(tunnel)  # told again if it does not rejoin by itself

    @staticmethod
    def _left(tunnel: Tunnel, conn: Conn) -> str:
        """What the peer of ``conn`` is told when ``conn`` leaves."""
        if conn.side is Side.DEVICE:
            return f"device {tunnel.device_id} left the tunnel"
        return f"the application left tunnel {tunnel.tunnel_id}"

    async def dismiss(self, tunnel: Tunnel, conn: Conn, status: str, message: str, code: int) -> None:
        """The platform ends ``conn``: a disconnect frame saying why, then the close frame."""
        self.detach(tunnel, conn)
        self._post_frame(conn, Frame.disconnect(self._sockets.ids.next(), status, message))
        await self._end(conn, code, message)

    async def _end(self, conn: Conn, code: int, reason: str) -> None:
        """Close ``conn`` after what was posted to it, giving it :data:`_END_GRACE` seconds to take it all."""
        box = self._outboxes.get(conn)
        if box is not None:
            await box.flush(_END_GRACE)
            box.stop()
        await self._sockets.close_or_abort(conn.ws, code, reason, _END_GRACE + 1)

    async def _drop_slow(self, tunnel: Tunnel, conn: Conn, reason: str) -> None:
        """End a side that stopped taking its messages, and tell its peer it is gone (503), as when a side leaves."""
        logger.warning("tunnel %s: closing the %s side: %s", tunnel.tunnel_id, conn.side.label, reason)
        if self.detach(tunnel, conn) and not self._platform.closing and tunnel.status == OPEN:
            peer = tunnel.conns[conn.side.peer]
            if peer is not None:
                message = f"{self._left(tunnel, conn)}: it {reason}"
                self._post_frame(peer, Frame.disconnect(self._sockets.ids.next(), Status.PEER_GONE, message))
        # Its outbox has stopped; the close frame waits behind what it did not read, so allow a
        # moment for it to resume, then cut the connection.
        await self._sockets.close_or_abort(conn.ws, CloseCode.INTERNAL_ERROR, reason, _END_GRACE)

    def _post(self, conn: Conn, message: bytes) -> bool:
        """Queue ``message`` for ``conn`` (never waits); False if it is gone or being dropped."""
        box = self._outboxes.get(conn)
        return box is not None and box.post(message)

    def _post_frame(self, conn: Conn, frame: Frame) -> bool:
        return self._post(conn, encode_frame(frame).encode("utf-8"))

    async def _forward(self, conn: Conn, text: str) -> bool:
        """Deliver the message received as ``text`` to ``conn`` (never waits on it); False if it is gone.

        The message being routed goes as the bytes object received; any other
        ``text`` (a wrapper of :meth:`route` may pass its own) is encoded with
        ``surrogateescape``, which gives back the bytes it was decoded from.
        """
        box = self._outboxes.get(conn)
        if box is None:
            return False
        routing = self._routing
        if routing is not None and routing[0] is text:
            return await box.deliver(routing[1])
        return await box.deliver(text.encode("utf-8", "surrogateescape"))

    async def _refuse(self, tunnel: Tunnel, conn: Conn, code: int, reason: str, status: str, peer_message: str) -> None:
        """Close a side that sent something unacceptable, and tell its peer why the side is gone."""
        logger.warning("tunnel %s: closing the %s side (%d): %s", tunnel.tunnel_id, conn.side.label, code, reason)
        self.detach(tunnel, conn)
        peer = tunnel.conns[conn.side.peer]
        if peer is not None:
            self._post_frame(peer, Frame.disconnect(self._sockets.ids.next(), status, peer_message))
        await self._end(conn, code, reason)

    # ------------------------------------------------------------------
    # Relaying

    async def _pump(self, tunnel: Tunnel, conn: Conn) -> None:
        """Read one side until it ends, relaying each valid frame as the exact bytes received."""
        ws, label, limit = conn.ws, conn.side.label, self._platform.max_message_bytes
        while True:
            try:
                msg = await ws.receive()
            except ConnectionResetError:  # dropped while aiohttp answered a ping: the side is gone
                return
            if msg.type is WSMsgType.TEXT:
                raw: bytes = msg.data  # decode_text=False
                size = len(raw)
                if size > limit:
                    await self._refuse(
                        tunnel,
                        conn,
                        CloseCode.TOO_BIG,
                        f"message of {size} bytes exceeds the {limit}-byte limit",
                        Status.MESSAGE_TOO_BIG,
                        f"the {label} sent a message of {size} bytes, over the {limit}-byte limit",
                    )
                    return
                try:
                    if conn.side is Side.SOURCE:
                        text = require_utf8(raw)  # the application side stays strict (see the module's doc)
                    else:  # a device's bytes that are not UTF-8 ride in the text as lone surrogates
                        text = raw.decode("utf-8", "surrogateescape")
                    frame = decode_frame(text, max_bytes=None)
                except ProtocolError as exc:
                    await self._refuse(
                        tunnel,
                        conn,
                        CloseCode.MALFORMED,
                        str(exc),
                        Status.MALFORMED,
                        f"the {label} sent a malformed message: {_brief(str(exc))}",
                    )
                    return
                self._routing = (text, raw)  # route() forwards these very bytes
                try:
                    await self._route(tunnel, conn, frame, text)
                finally:
                    self._routing = None
            elif msg.type is WSMsgType.BINARY:
                await self._refuse(
                    tunnel,
                    conn,
                    CloseCode.MALFORMED,
                    "binary messages are not supported; send JSON text frames",
                    Status.MALFORMED,
                    f"the {label} sent a binary message",
                )
                return
            elif msg.type is WSMsgType.ERROR:
                await self._on_ws_error(tunnel, conn, msg.data)
                return
            else:  # CLOSE, CLOSING, CLOSED
                return

    async def _on_ws_error(self, tunnel: Tunnel, conn: Conn, exc: object) -> None:
        """aiohttp refused a message itself (and already closed the socket): tell the peer as we would."""
        if not isinstance(exc, WebSocketError):
            logger.debug("tunnel %s: %s connection failed: %r", tunnel.tunnel_id, conn.side.label, exc)
            return  # a dropped connection: the peer hears "peer gone"
        label = conn.side.label
        if exc.code == CloseCode.TOO_BIG:
            status = Status.MESSAGE_TOO_BIG
            message = f"the {label} sent a message over the {self._platform.max_message_bytes}-byte limit"
        else:
            status, message = Status.MALFORMED, f"the {label} broke the WebSocket protocol: {_brief(str(exc))}"
        await self._refuse(tunnel, conn, exc.code, str(exc), status, message)

    async def route(self, tunnel: Tunnel, conn: Conn, frame: Frame, text: str) -> None:
        """Handle one valid frame from ``conn``: answer a PING, else relay ``text`` to the peer if it may go there.

        ``text`` is the message received, decoded (with ``surrogateescape`` from a
        device: a C SDK's need not be valid UTF-8); :meth:`_forward` sends the very
        bytes received.
        """
        if frame.op is Op.PING:
            self._post_frame(conn, Frame(Op.PONG, frame.request_id, None, frame.service_type))
            return
        if conn.side is Side.DEVICE and frame.op not in _DEVICE_TO_APP:
            logger.debug("tunnel %s: dropping a %s frame from the device", tunnel.tunnel_id, frame.op)
            return
        peer = tunnel.conns[conn.side.peer]
        if peer is None:
            logger.debug(
                "tunnel %s: dropping a %s frame, the %s is not connected",
                tunnel.tunnel_id,
                frame.op,
                conn.side.peer.label,
            )
            return
        await self._forward(peer, text)

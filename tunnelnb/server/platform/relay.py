"""The Secure Tunnel relay: each tunnel's ``source-connect`` and ``device-connect`` WebSockets.

:class:`Relay` authenticates each side with its tunnel access token, gives a side's
slot to the newest connection, tells the application when both sides are there,
relays every valid frame between them as the exact text received, and ends sides
that break the rules -- always telling the peer why with a disconnect frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WebSocketError, WSMsgType, web

from ...errors import PlatformError, ProtocolError
from ...protocol.frames import CloseCode, Frame, Op, Status, decode_frame
from .auth import same_secret
from .model import CLOSED, CONNECTED, DISCONNECTED, OPEN, Conn, ErrorCode, Side, Tunnel, open_tunnel_of
from .sockets import Sockets

if TYPE_CHECKING:
    from .app import Platform

__all__ = ["TUNNEL_TOKEN_HEADER", "Relay"]

logger = logging.getLogger(__name__)

TUNNEL_TOKEN_HEADER = "tunnel_access_token"

#: What a device may send to the application; anything else it sends is dropped.
_DEVICE_TO_APP = frozenset({Op.CONNECT_RESPONSE, Op.COMMAND_RESPONSE, Op.DISCONNECT})


def _brief(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: a peer's message must stay far below the size limit."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Relay:
    """The tunnel WebSockets of the platform's ``tunnels`` (shared with the REST API, which creates them).

    ``notify`` tells a tunnel's device about it (again) when the application connects
    first; ``route`` handles each valid frame received (:meth:`route` unless given);
    ``platform`` supplies the clock, ``token_ttl``, ``max_message_bytes`` and whether
    it is shutting down, read when needed.
    """

    def __init__(
        self,
        platform: Platform,
        tunnels: dict[str, Tunnel],
        *,
        sockets: Sockets,
        notify: Callable[[Tunnel], Awaitable[bool]],
        route: Callable[[Tunnel, Conn, Frame, str], Awaitable[None]] | None = None,
    ) -> None:
        self._platform = platform
        self._tunnels = tunnels
        self._sockets = sockets
        self._notify = notify
        self._route = route if route is not None else self.route
        #: Close handshakes of CloseDeviceTunnel, running in the background (shutdown awaits them).
        self.handshakes: set[asyncio.Task[None]] = set()

    def expired(self, tunnel: Tunnel) -> bool:
        """Whether the tunnel's access tokens have expired."""
        return self._platform.clock() >= tunnel.create_time + self._platform.token_ttl

    # ------------------------------------------------------------------
    # Closing tunnels and shutting down

    def close_tunnel(self, tunnel: Tunnel) -> None:
        """CloseDeviceTunnel's part: free both sides now, finish their close handshakes in the background.

        A busy device can take seconds to answer, and the caller has nothing to wait for.
        """
        for conn in tunnel.conns.values():
            if conn is not None:
                self.detach(tunnel, conn)
                task = asyncio.create_task(
                    self.dismiss(tunnel, conn, Status.TUNNEL_CLOSED, "tunnel closed", CloseCode.NORMAL)
                )
                self.handshakes.add(task)
                task.add_done_callback(self.handshakes.discard)

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
        ws = await self._sockets.upgrade(request)
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
            logger.info("tunnel %s of device %s reopened", tunnel.tunnel_id, tunnel.device_id)
        conn = Conn(ws, side)
        try:
            await self._attach(tunnel, conn)
            await self._pump(tunnel, conn)
        finally:
            await self._detach_and_tell(tunnel, conn)
            if not ws.closed:
                with contextlib.suppress(ConnectionResetError):
                    await ws.close()

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
            await self._sockets.close(old.ws, CloseCode.REPLACED, "replaced by a newer connection")
        app, device = tunnel.conns[Side.SOURCE], tunnel.conns[Side.DEVICE]
        if app is not None and device is not None:
            await self._sockets.send_frame(app.ws, Frame(Op.CONNECT_TUNNEL, self._sockets.ids.next(), None))
        elif side is Side.SOURCE:
            await self._notify(tunnel)  # the device may have missed or dropped the first notify

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
        if peer is None:
            return
        if conn.side is Side.DEVICE:
            message = f"device {tunnel.device_id} left the tunnel"
        else:
            message = f"the application left tunnel {tunnel.tunnel_id}"
        await self._sockets.send_frame(peer.ws, Frame.disconnect(self._sockets.ids.next(), Status.PEER_GONE, message))

    async def dismiss(self, tunnel: Tunnel, conn: Conn, status: str, message: str, code: int) -> None:
        """The platform ends ``conn``: a disconnect frame saying why, then the close frame."""
        self.detach(tunnel, conn)
        await self._sockets.send_frame(conn.ws, Frame.disconnect(self._sockets.ids.next(), status, message))
        await self._sockets.close(conn.ws, code, message)

    async def _refuse(self, tunnel: Tunnel, conn: Conn, code: int, reason: str, status: str, peer_message: str) -> None:
        """Close a side that sent something unacceptable, and tell its peer why the side is gone."""
        logger.warning("tunnel %s: closing the %s side (%d): %s", tunnel.tunnel_id, conn.side.label, code, reason)
        self.detach(tunnel, conn)
        peer = tunnel.conns[conn.side.peer]
        if peer is not None:
            await self._sockets.send_frame(peer.ws, Frame.disconnect(self._sockets.ids.next(), status, peer_message))
        await self._sockets.close(conn.ws, code, reason)

    # ------------------------------------------------------------------
    # Relaying

    async def _pump(self, tunnel: Tunnel, conn: Conn) -> None:
        """Read one side until it ends, relaying each valid frame as the exact text received."""
        ws, label, limit = conn.ws, conn.side.label, self._platform.max_message_bytes
        while True:
            try:
                msg = await ws.receive()
            except ConnectionResetError:  # dropped while aiohttp answered a ping: the side is gone
                return
            if msg.type is WSMsgType.TEXT:
                text: str = msg.data
                size = len(text.encode("utf-8", "surrogatepass"))
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
                await self._route(tunnel, conn, frame, text)
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
        """Handle one valid frame from ``conn``: answer a PING, else relay ``text`` to the peer if it may go there."""
        if frame.op is Op.PING:
            await self._sockets.send_frame(conn.ws, Frame(Op.PONG, frame.request_id, None, frame.service_type))
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
        await self._sockets.send(peer.ws, text)

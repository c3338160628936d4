"""The application side of one tunnel's WebSocket: frames in, frames out.

Thin on purpose: it opens ``source-connect`` with the token header, encodes and
decodes frames with :mod:`tunnelnb.protocol.frames`, answers nothing by itself, and
turns the platform's refusals and close codes into tunnelnb errors.  The
session above it decides what frames mean.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp

from ..errors import ProtocolError, TunnelAuthError, TunnelClosed, TunnelError, TunnelGone
from ..protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, FINAL_CLOSE_CODES, CloseCode, Frame, decode_frame, encode_frame

__all__ = ["TunnelSocket", "WebSocketLike", "tunnel_closed"]

log = logging.getLogger(__name__)


def tunnel_closed(code: int | None, reason: str = "") -> TunnelClosed:
    """The error for a WebSocket that closed with ``code``; ``final`` when reconnecting makes no sense."""
    return TunnelClosed(code, reason, _close_message(code, reason), final=code in FINAL_CLOSE_CODES)


def _close_message(code: int | None, reason: str) -> str:
    if code == CloseCode.AUTH_FAILED:
        return "the platform rejected the tunnel token (close 1002): create a new tunnel"
    if code == CloseCode.REPLACED:
        return "another connection took over this tunnel (close 4000): only one application may use it"
    if code == CloseCode.TOO_BIG:
        detail = f": {reason}" if reason else ""
        return f"the platform closed the tunnel because a message was too big (close 1009){detail}"
    detail = f" ({reason})" if reason else ""
    return f"tunnel connection closed with code {code}{detail}"


class WebSocketLike(Protocol):
    """What a :class:`TunnelSocket` uses of aiohttp's client WebSocket.

    A cassette recording wraps the live one in an object of this shape, and a
    replay serves recorded messages through one, so both run the same decoding.
    """

    @property
    def closed(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    async def receive(self) -> Any: ...

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class TunnelSocket:
    """One open ``source-connect`` WebSocket."""

    def __init__(self, ws: WebSocketLike, *, max_message_bytes: int) -> None:
        self._ws = ws
        self.max_message_bytes = max_message_bytes
        #: The largest message received so far, in bytes (a cheap check on devices' chunking).
        self.max_received_bytes = 0

    @property
    def ws(self) -> WebSocketLike:
        """The WebSocket underneath (for a recording to wrap: ``TunnelSocket(Wrapper(sock.ws), ...)``)."""
        return self._ws

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        uri: str,
        token: str,
        *,
        heartbeat: float | None = 20.0,
        timeout: float = 15.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> TunnelSocket:
        try:
            async with asyncio.timeout(timeout):
                ws = await session.ws_connect(
                    uri,
                    headers={"tunnel_access_token": token},
                    heartbeat=heartbeat,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                    max_msg_size=4 * max_message_bytes + 1024,
                    compress=0,
                    decode_text=False,  # frames are parsed from bytes: no second UTF-8 pass
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise TunnelAuthError(
                    "the platform refused the tunnel token (HTTP 401: expired or wrong): create a new tunnel"
                ) from None
            if exc.status == 404:
                raise TunnelGone("no such tunnel on the platform (HTTP 404): it was deleted; open a new one") from None
            raise TunnelError(f"the platform refused the tunnel connection (HTTP {exc.status})") from None
        except aiohttp.ClientConnectionError as exc:
            raise TunnelError(f"cannot open the tunnel WebSocket at {_strip_query(uri)}: {exc}") from None
        except TimeoutError:
            raise TunnelError(f"no answer opening the tunnel WebSocket within {timeout:g} s") from None
        return cls(ws, max_message_bytes=max_message_bytes)

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def send(self, frame: Frame) -> None:
        text = encode_frame(frame)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))  # (valid UTF-8: surrogates are escaped)
        if size > self.max_message_bytes:
            raise ValueError(f"{frame.op} frame of {size} bytes exceeds the {self.max_message_bytes}-byte limit")
        try:
            await self._ws.send_str(text)
        except (ConnectionResetError, aiohttp.ClientConnectionError) as exc:
            raise tunnel_closed(self._ws.close_code, str(exc)) from None

    async def receive(self) -> Frame:
        """The next valid frame; malformed ones are logged and skipped, never fatal."""
        while True:
            msg = await self._ws.receive()
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                self.max_received_bytes = max(self.max_received_bytes, len(msg.data))
                try:
                    return decode_frame(msg.data, max_bytes=None)
                except ProtocolError as exc:
                    log.warning("skipping a malformed frame from the platform: %s", exc)
                    continue
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise tunnel_closed(self._ws.close_code or 1006, str(msg.data))
            # CLOSE, CLOSING, CLOSED
            reason = msg.extra if isinstance(msg.extra, str) else ""
            raise tunnel_closed(self._ws.close_code, reason)

    async def close(self, code: int = CloseCode.NORMAL) -> None:
        if not self._ws.closed:
            try:
                await self._ws.close(code=code)
            except (ConnectionResetError, aiohttp.ClientConnectionError):
                pass


def _strip_query(uri: str) -> str:
    return uri.split("?", 1)[0]

"""WebSocket plumbing shared by the tunnel relay and the device links.

:class:`Sockets` accepts the upgrades (with the platform's heartbeat and size limit),
keeps the set of open server-side WebSockets so shutdown can close the stragglers,
and sends and closes without raising when the peer is already gone -- or, for a
peer that stopped reading, without waiting on it for ever (:meth:`Sockets.close_or_abort`).
:class:`Outbox` is one tunnel side's queue of outgoing messages, sent by a task of
its own so that a peer that stops reading never blocks whoever posts to it (issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from ...protocol.frames import Frame, RequestIds, encode_frame
from .model import bad_input

if TYPE_CHECKING:
    from .app import Platform

__all__ = ["Outbox", "PlatformWebSocket", "Sockets", "close_reason"]

logger = logging.getLogger(__name__)

_MAX_CLOSE_REASON = 123  # bytes: a close frame's payload is at most 125, 2 of them the code
_WS_CLOSE_TIMEOUT = 5.0  # seconds to wait for the peer's close frame
_MAX_FRAME_HEADER = 14  # bytes a WebSocket frame adds to its payload at most (RFC 6455, section 5.2)


def close_reason(text: str) -> bytes:
    """``text`` as a close reason: UTF-8, cut to 123 bytes between characters."""
    raw = text.encode("utf-8", "replace")[:_MAX_CLOSE_REASON]
    return raw.decode("utf-8", "ignore").encode("utf-8")


class PlatformWebSocket(web.WebSocketResponse):
    """aiohttp's server WebSocket, without a heartbeat once it is closed.

    aiohttp 3.14 re-arms the heartbeat timer whenever data arrives (the callback it
    gives the connection), even after :meth:`close` cancelled it: the peer's answer
    to our close frame re-arms it.  The timer then keeps the response, its request
    and the connection's buffers alive for a heartbeat and a pong wait (30 s by
    default) -- about 11 KiB for every WebSocket the platform closes first, which is
    every refused one (1007, 1009).  Refusing thousands a minute grew memory without
    bound; with this, a closed socket is freed when its handler returns.
    """

    def _reset_heartbeat(self) -> None:
        if self.closed:
            return
        super()._reset_heartbeat()


class Sockets:
    """The platform's open WebSockets, and the request ids of the frames the platform itself sends.

    ``platform`` supplies ``heartbeat`` and ``max_message_bytes``, read at each upgrade.
    """

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self.open: set[web.WebSocketResponse] = set()
        self.ids = RequestIds()
        #: Each open socket's connection, so one whose peer stopped reading can be cut.
        self._transports: dict[web.WebSocketResponse, asyncio.Transport] = {}

    async def upgrade(self, request: web.Request, *, decode_text: bool = True) -> web.WebSocketResponse:
        """Accept the request's WebSocket upgrade and track the socket; the caller must :meth:`forget` it.

        ``decode_text=False``: text messages are received as the bytes they are, not
        checked as UTF-8 (nor closed with 1007 when they are not): the tunnel relay.
        """
        ws = self._new_ws(decode_text)
        if not ws.can_prepare(request).ok:
            raise bad_input("This endpoint accepts only WebSocket upgrade requests.")
        await ws.prepare(request)
        self.open.add(ws)
        if request.transport is not None:
            self._transports[ws] = request.transport
        return ws

    def forget(self, ws: web.WebSocketResponse) -> None:
        """Stop tracking ``ws``: its handler is done with it."""
        self.open.discard(ws)
        self._transports.pop(ws, None)

    def _new_ws(self, decode_text: bool) -> web.WebSocketResponse:
        # aiohttp's own limit sits well above ours, so oversize messages reach the relay,
        # which closes with a reason and tells the peer.
        return PlatformWebSocket(
            heartbeat=self._platform.heartbeat,
            max_msg_size=4 * self._platform.max_message_bytes + 1024,
            timeout=_WS_CLOSE_TIMEOUT,
            decode_text=decode_text,
        )

    @staticmethod
    async def send(ws: web.WebSocketResponse, message: str | bytes) -> bool:
        """Send a text message (bytes go as they are, valid UTF-8 or not); False if closed or the send failed."""
        if ws.closed:
            return False
        try:
            if isinstance(message, bytes):
                await ws.send_frame(message, WSMsgType.TEXT)
            else:
                await ws.send_str(message)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("send failed: %r", exc)
            return False
        return True

    def can_take(self, ws: web.WebSocketResponse, size: int) -> bool:
        """Whether sending a ``size``-byte message to ``ws`` now completes without waiting.

        True when the connection's write buffer is at or below its low-water mark
        (so aiohttp's writer is not paused) and stays at or below its high-water mark
        with the message in it (so it does not pause now), and nothing compresses:
        an uncompressed ``send_frame`` then only hands the bytes to the transport.
        """
        transport = self._transports.get(ws)
        if transport is None or transport.is_closing() or ws.compress:
            return False
        low, high = transport.get_write_buffer_limits()
        buffered = transport.get_write_buffer_size()
        return buffered <= low and buffered + size + _MAX_FRAME_HEADER <= high

    async def send_frame(self, ws: web.WebSocketResponse, frame: Frame) -> bool:
        return await self.send(ws, encode_frame(frame))

    @staticmethod
    async def close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` (cut to fit), ignoring a peer that is already gone."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=code, message=close_reason(reason))

    async def close_or_abort(self, ws: web.WebSocketResponse, code: int, reason: str, timeout: float) -> None:
        """:meth:`close`, but cut the connection if that takes over ``timeout`` seconds.

        A peer that stopped reading never takes the close frame (queued behind the data
        it did not read) and never answers it; closing the transport would wait for that
        data to drain just as long.  Aborting frees the socket now.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.close(ws, code, reason)
        except TimeoutError:
            logger.debug("close (%d) timed out after %g s: aborting the connection", code, timeout)
            transport = self._transports.get(ws)
            if transport is not None:
                transport.abort()


class Outbox:
    """One side's outgoing messages, sent in order by a task of its own.

    :meth:`post` never waits, so whoever posts (the other side's reader, most of the
    time) keeps reading.  ``on_slow`` is called once, with a reason, when the side
    falls behind: a send has not completed within ``stall_timeout()`` seconds, or a
    message would take the backlog over ``max_backlog()`` bytes.  The outbox stops
    then, dropping what it holds.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        sockets: Sockets,
        *,
        stall_timeout: Callable[[], float | None],
        max_backlog: Callable[[], int],
        on_slow: Callable[[str], None],
    ) -> None:
        self._ws = ws
        self._sockets = sockets
        self._stall_timeout = stall_timeout
        self._max_backlog = max_backlog
        self._on_slow = on_slow
        self._queue: deque[bytes] = deque()
        #: Bytes of the messages waiting, the one being sent included.
        self.backlog = 0
        self._stopped = False
        self._ready = asyncio.Event()  # messages are waiting
        self._idle = asyncio.Event()  # nothing waits, nothing is being sent (or stopped)
        self._idle.set()
        self._task = asyncio.create_task(self._run())

    def post(self, message: bytes) -> bool:
        """Queue ``message`` (a text message's bytes) for sending; False if the outbox has stopped, or stops now
        because the side fell behind."""
        if self._stopped:
            return False
        size = len(message)
        limit = self._max_backlog()
        if self._queue and self.backlog + size > limit:
            self._slow(f"fell behind by more than {limit} bytes")
            return False
        self._queue.append(message)
        self.backlog += size
        self._idle.clear()
        self._ready.set()
        return True

    async def deliver(self, message: bytes) -> bool:
        """:meth:`post`, or send ``message`` now when nothing waits and the socket takes it without waiting.

        The direct send cannot wait on the peer (:meth:`Sockets.can_take`), so the
        reader that delivers keeps reading; it saves the outbox task's turn.
        """
        if self._queue or self._stopped or not self._sockets.can_take(self._ws, len(message)):
            return self.post(message)
        return await self._sockets.send(self._ws, message)

    async def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds until everything posted is sent (or the outbox stopped)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    def stop(self) -> None:
        """Send nothing more: drop what waits, end the task."""
        self._stopped = True
        self._queue.clear()
        self.backlog = 0
        self._idle.set()
        if asyncio.current_task() is not self._task:
            self._task.cancel()

    def _slow(self, reason: str) -> None:
        if not self._stopped:
            self.stop()
            self._on_slow(reason)

    async def _run(self) -> None:
        try:
            while True:
                await self._ready.wait()
                if not self._queue:
                    self._ready.clear()
                    self._idle.set()
                    continue
                message = self._queue[0]
                if self._sockets.can_take(self._ws, len(message)):  # no wait, so no stall to guard against
                    sent = await self._sockets.send(self._ws, message)
                else:
                    timeout = self._stall_timeout()
                    try:
                        async with asyncio.timeout(timeout):
                            sent = await self._sockets.send(self._ws, message)
                    except TimeoutError:
                        self._slow(f"stopped reading: nothing could be sent to it for {timeout:g} s")
                        return
                if not sent:  # closed or failed: nothing more will go out
                    return
                self._queue.popleft()
                self.backlog -= len(message)
        finally:
            self._stopped = True
            self._queue.clear()
            self.backlog = 0
            self._idle.set()

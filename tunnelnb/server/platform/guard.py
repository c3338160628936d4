"""Connection hygiene below aiohttp: caps, deadlines and WebSocket strictness per TCP connection.

aiohttp's server closes a connection that has not sent a complete request within
``keepalive_timeout`` of its start, and an idle keep-alive connection after the same
time; the platform sets it (:class:`~.app.Platform`'s ``idle_timeout``).  What aiohttp
has no setting for lives here, in a protocol wrapped around each of aiohttp's
:class:`~aiohttp.web_protocol.RequestHandler`:

* a cap on connections that have not yet authenticated -- in total and per source
  address -- refused with HTTP 503 and IoTDA's JSON error body, before aiohttp sees
  them, so a flood of idle connections cannot take every file descriptor;
* a deadline (``header_timeout``) by which a connection must have been answered with
  a success (an authenticated REST call, a WebSocket upgrade), else it is closed:
  this bounds silent connections, headers sent a byte at a time, slow bodies and
  clients that only collect 401s;
* after a WebSocket upgrade, :class:`~.wsframes.FrameCheck` over the client's bytes:
  an unmasked frame or an invalid close code fails the connection with close 1002.

A connection becomes *trusted* when the platform prepares a response below 400 on it
(:meth:`ConnectionGuard.on_response`, an ``on_response_prepare`` hook), which covers
every authenticated call and upgrade without touching the handlers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .model import ErrorCode
from .wsframes import PROTOCOL_ERROR, FrameCheck, close_frame

__all__ = ["ConnectionGuard", "GuardSettings", "GuardedSite"]

logger = logging.getLogger(__name__)

_LINGER = 2.0  # seconds a refused connection may take to read its 503 before it is cut
_MAX_LINGERING = 256  # refused connections lingering at once; beyond, refusals are cut at once


@dataclass(frozen=True)
class GuardSettings:
    """The limits of :class:`ConnectionGuard` (see :class:`~.app.Platform` for their meaning)."""

    max_pending: int = 1024
    max_pending_per_address: int = 256
    header_timeout: float = 10.0


@dataclass
class _Stats:
    """Counters for benchmarks and tests: what was accepted, refused and timed out."""

    accepted: int = 0
    refused: int = 0
    timed_out: int = 0
    failed_websockets: int = 0
    by_address: Counter[str] = field(default_factory=Counter)


class _Conn(asyncio.Protocol):
    """One TCP connection: forwards every event to aiohttp's handler, unless refused or failed."""

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_inner = make_inner
        self._inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.address = ""
        self.pending = False
        self.lingering = False
        self.frames: FrameCheck | None = None
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        refusal = self._guard.admit(self)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def _refuse(self, transport: asyncio.Transport, message: str) -> None:
        body = json.dumps({"error_code": ErrorCode.TOO_MANY_CONNECTIONS, "error_msg": message}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n"
        )
        transport.write(head.encode("ascii") + body)
        if self._guard.lingering >= _MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        # Half-close and read what the client already sent, so the 503 is not lost to a reset.
        try:
            transport.write_eof()
        except OSError:  # the client is gone already (ENOTCONN): nothing to linger for
            transport.abort()
            return
        self.lingering = True
        self._guard.lingering += 1
        self.deadline = asyncio.get_running_loop().call_later(_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return  # a refused connection: discard
        if self.frames is not None and self.frames.feed(data) is not None:
            self._fail_websocket(self.frames.failed or "")
            return
        self._inner.data_received(data)

    def _fail_websocket(self, reason: str) -> None:
        """RFC 6455, section 7.1.7: send close 1002 and drop the TCP connection; aiohttp sees it lost."""
        self._guard.stats.failed_websockets += 1
        logger.warning("WebSocket from %s: %s; closing with %d", self.address, reason, PROTOCOL_ERROR)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(close_frame(PROTOCOL_ERROR, reason))
            transport.close()
        self.frames = None

    def eof_received(self) -> bool | None:
        if self._inner is None:
            if self.transport is not None:
                self.transport.close()
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.release(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None  # aiohttp's handler holds buffers: let it go now
        self.transport = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class ConnectionGuard:
    """Counts, caps and times out the platform's connections that have not authenticated yet."""

    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self.stats = _Stats()
        self.lingering = 0
        self._pending: Counter[str] = Counter()
        self._pending_total = 0
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}

    @property
    def pending(self) -> int:
        """Connections open now that have not authenticated."""
        return self._pending_total

    @property
    def open(self) -> int:
        """Connections open now, trusted or not (refused ones excluded)."""
        return len(self._conns)

    def protocol_factory(self, server: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` wrapping aiohttp's ``server`` (a :class:`web.Server`)."""
        return lambda: _Conn(self, server)

    def admit(self, conn: _Conn) -> str | None:
        """Count ``conn`` as pending and arm its deadline; or the reason to refuse it."""
        limits, address = self.settings, conn.address
        if self._pending_total >= limits.max_pending:
            why = "Too many connections are waiting to authenticate; try again later."
        elif self._pending[address] >= limits.max_pending_per_address:
            why = f"Too many connections from {address} are waiting to authenticate; try again later."
        else:
            assert conn.transport is not None
            self._conns[conn.transport] = conn
            self._pending[address] += 1
            self._pending_total += 1
            conn.pending = True
            conn.deadline = asyncio.get_running_loop().call_later(limits.header_timeout, self._expire, conn)
            self.stats.accepted += 1
            return None
        self.stats.refused += 1
        self.stats.by_address[address] += 1
        logger.warning("refusing a connection from %s: %s", address, why)
        return why

    def _expire(self, conn: _Conn) -> None:
        conn.deadline = None
        if conn.pending and conn.transport is not None:
            self.stats.timed_out += 1
            logger.info(
                "closing a connection from %s: not authenticated within %g s",
                conn.address,
                self.settings.header_timeout,
            )
            conn.transport.close()  # aiohttp's handler hears connection_lost, as from the peer

    def _trust(self, conn: _Conn) -> None:
        if conn.pending:
            conn.pending = False
            self._pending_total -= 1
            self._pending[conn.address] -= 1
            if not self._pending[conn.address]:
                del self._pending[conn.address]
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None

    def release(self, conn: _Conn) -> None:
        """``conn`` is gone: forget it."""
        if conn.transport is not None:
            self._conns.pop(conn.transport, None)
        if conn.lingering:
            conn.lingering = False
            self.lingering -= 1
        self._trust(conn)

    async def on_response(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: a success trusts the connection; a 101 starts checking its frames."""
        conn = self._conns.get(request.transport) if request.transport is not None else None
        if conn is None or response.status >= 400:
            return
        self._trust(conn)
        if response.status == 101:
            conn.frames = FrameCheck()


class GuardedSite(web.BaseSite):
    """aiohttp's TCP site, with each connection wrapped by a :class:`ConnectionGuard`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol_factory(server),
            self._host or None,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )

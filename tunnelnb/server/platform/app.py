"""The :class:`Platform`: settings, state, the aiohttp application and its life cycle.

The platform owns what it knows (devices, tunnels) and hands it to
the collaborators that serve it: :class:`~.auth.Auth` (REST credentials),
:class:`~.devices.DeviceRegistry` (devices, device links, MQTT logins, notifications),
:class:`~.broker.DeviceBroker` (its MQTT broker, while it runs),
:class:`~.relay.Relay` (tunnel WebSockets) and :class:`~.rest.RestApi`.  They read
the platform's settings live, so a test can replace :attr:`Platform.clock`.
Also here: :func:`serve`, the ``tunnelnb platform`` command's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ...errors import PlatformError
from ...protocol import signing
from ...protocol.devicelink import LINK_PATH
from ...protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, CloseCode, Frame
from ..oslimits import raise_open_files_limit
from . import logthrottle
from .auth import Auth
from .broker import DeviceBroker
from .devices import DeviceRegistry
from .guard import ConnectionGuard, GuardedSite, GuardSettings
from .http import MAX_BODY_BYTES, error_middleware, stamp_request_id
from .model import Conn, Device, ErrorCode, Tunnel
from .relay import DEFAULT_MAX_BACKLOG_BYTES, DEFAULT_STALL_TIMEOUT, Relay
from .rest import RestApi
from .sockets import Sockets

__all__ = ["Platform", "serve"]

logger = logging.getLogger(__name__)

_SHUTDOWN_TIMEOUT = 5.0


class Platform:
    """The local IoTDA-compatible platform, in memory.

    ``api_token`` is the default project's ``X-Auth-Token`` (random when omitted);
    ``ak`` and ``sk``, an access key pair for the default project: REST calls signed
    with it as Huawei Cloud's SDKs sign them (:mod:`tunnelnb.protocol.signing`) are accepted too,
    when their ``X-Sdk-Date`` is within ``signature_clock_skew`` seconds of the clock;
    ``token_ttl`` is how long a tunnel's access tokens stay valid, counted from the
    tunnel's creation; ``heartbeat`` is the WebSocket ping interval (None disables it);
    ``link_clock_skew`` is how far a device's ``X-Device-Timestamp`` may stray from
    the platform's clock.  ``clock`` (seconds since the epoch) can be replaced, so
    token expiry and timestamp checks are testable without waiting.

    ``mqtt_port`` runs the platform's own MQTT broker on ``host`` (0 picks a free
    port; None, the default here, runs none), and ``mqtts_port`` a TLS listener of it
    with ``ssl_context`` (:mod:`.broker`): devices log in there as on IoTDA, are
    ONLINE while connected, and get their ``tunnel_notify`` published to
    ``$oc/devices/{device_id}/sys/events/down`` with QoS 1; devices on a device link
    keep getting theirs over the link.  :attr:`mqtt_urls` are the addresses bound.
    ``notify_grace`` is how long a device has to join a tunnel before it is notified
    again (:mod:`.devices`: one notify per tunnel).

    Connection hygiene (docs: issue 14; :mod:`.guard`): ``header_timeout`` is how long a
    connection may take to be answered with a success (an authenticated call, a
    WebSocket upgrade) before it is closed; ``idle_timeout``, how long an authenticated
    keep-alive connection may idle (aiohttp's ``keepalive_timeout``: also the deadline
    for each later request's headers).  At most ``max_pending_connections`` connections
    may wait to authenticate at once, ``max_pending_per_address`` of them from one
    address (the total is also kept under a quarter of the open-files limit); more are
    refused with 503.  Request bodies are at most ``max_body_bytes`` (413 beyond).
    """

    def __init__(
        self,
        *,
        project_id: str = "demo",
        api_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_tunnels: int = 1000,
        token_ttl: int = 86400,
        heartbeat: float | None = 20.0,
        link_clock_skew: int = 2 * 3600,
        ak: str | None = None,
        sk: str | None = None,
        signature_clock_skew: int = signing.DEFAULT_MAX_SKEW,
        ssl_context: ssl.SSLContext | None = None,
        mqtt_port: int | None = None,
        mqtts_port: int | None = None,
        notify_grace: float = 5.0,
        header_timeout: float = 10.0,
        idle_timeout: float = 75.0,
        max_pending_connections: int = 1024,
        max_pending_per_address: int = 256,
        max_body_bytes: int = MAX_BODY_BYTES,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
    ) -> None:
        if mqtts_port is not None and ssl_context is None:
            raise ValueError("mqtts_port needs ssl_context (the certificate to serve)")
        if notify_grace <= 0:
            raise ValueError("notify_grace must be positive")
        if max_message_bytes < 64:
            raise ValueError(f"max_message_bytes={max_message_bytes} is too small to carry a frame")
        if max_tunnels < 1:
            raise ValueError("max_tunnels must be at least 1")
        if token_ttl < 1:
            raise ValueError("token_ttl must be at least 1 second")
        if (ak is None) != (sk is None):
            raise ValueError("ak and sk go together: give both or neither")
        if signature_clock_skew < 0:
            raise ValueError("signature_clock_skew must not be negative")
        if header_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("header_timeout and idle_timeout must be positive")
        if max_pending_connections < 1 or max_pending_per_address < 1 or max_body_bytes < 1024:
            raise ValueError("the connection caps must be at least 1, max_body_bytes at least 1024")
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_pending_connections = max_pending_connections
        self.max_pending_per_address = max_pending_per_address
        self.max_body_bytes = max_body_bytes
        #: A tunnel side that takes nothing for this many seconds (None: no limit), or that this many
        #: bytes wait for, is closed and its peer told: a stalled application never holds its device.
        #: Both are read live.
        self.stall_timeout = stall_timeout
        self.max_backlog_bytes = max_backlog_bytes
        #: The running platform's connection guard (None while stopped): counters for tests and benchmarks.
        self.guard: ConnectionGuard | None = None
        self.project_id = project_id
        self.ssl_context = ssl_context  # https:// and wss:// when given (see tunnelnb.tls.server_ssl)
        self.api_token = api_token if api_token is not None else secrets.token_urlsafe(24)
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_tunnels = max_tunnels
        self.token_ttl = token_ttl
        self.heartbeat = heartbeat
        self.link_clock_skew = link_clock_skew
        self.signature_clock_skew = signature_clock_skew
        self.clock: Callable[[], float] = time.time
        self.base_url = ""
        self._devices: dict[str, Device] = {}
        self._tunnels: dict[str, Tunnel] = {}
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.mqtt_port = mqtt_port
        self.mqtts_port = mqtts_port
        self.notify_grace = notify_grace
        #: ``mqtt://HOST:PORT`` (and ``mqtts://…``) of the running broker; empty without one.
        self.mqtt_urls: list[str] = []
        self._auth = Auth(self)
        self._sockets = Sockets(self)
        self._registry = DeviceRegistry(self, self._devices, self._tunnels, sockets=self._sockets)
        # _route and _device_of are late-bound, so they can be replaced on a platform instance:
        # bench/relay.py wraps _route to count the frames relayed, a test makes _device_of fail.
        self._relay = Relay(
            self,
            self._tunnels,
            sockets=self._sockets,
            notify=self._registry.want_notify,
            device_dropped=self._registry.device_dropped,
            route=lambda tunnel, conn, frame, text: self._route(tunnel, conn, frame, text),
        )
        self._rest = RestApi(
            self,
            self._tunnels,
            auth=self._auth,
            registry=self._registry,
            relay=self._relay,
            device_of=lambda project_id, device_id: self._device_of(project_id, device_id),
        )
        self.add_project(project_id, self.api_token)
        if ak is not None and sk is not None:
            self.add_access_key(ak, sk)

    def __repr__(self) -> str:
        return f"Platform(base_url={self.base_url!r}, project_id={self.project_id!r})"

    @property
    def closing(self) -> bool:
        """True while :meth:`stop` is under way: new WebSockets are refused, departures go unannounced."""
        return self._closing

    # ------------------------------------------------------------------
    # In-process administration and views

    def add_project(self, project_id: str, api_token: str) -> None:
        """Add a project (a tenant) whose REST calls authenticate with ``api_token``."""
        self._auth.add_project(project_id, api_token)

    def add_access_key(self, ak: str, sk: str, *, project_id: str | None = None) -> None:
        """Accept REST calls signed with the key pair ``ak``/``sk`` for ``project_id`` (the default project)."""
        self._auth.add_access_key(ak, sk, project_id if project_id is not None else self.project_id)

    def add_device(
        self,
        device_id: str,
        secret: str,
        *,
        project_id: str | None = None,
        node_id: str | None = None,
        device_name: str | None = None,
        product_id: str | None = None,
        fw_version: str | None = None,
        sw_version: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register a device, as REST AddDevice does; raises :class:`PlatformError` like it."""
        project = project_id if project_id is not None else self.project_id
        if project not in self._auth.projects:
            raise PlatformError(404, ErrorCode.PROJECT_NOT_FOUND, f"Project {project} does not exist.")
        return self._registry.create(
            project,
            device_id=device_id,
            node_id=node_id if node_id is not None else device_id,
            secret=secret,
            device_name=device_name,
            product_id=product_id,
            fw_version=fw_version,
            sw_version=sw_version,
            tags=dict(tags or {}),
        )

    @property
    def devices(self) -> dict[str, dict[str, Any]]:
        """A snapshot of every device's info (as ShowDevice returns it), by device id."""
        return {device_id: device.info() for device_id, device in self._devices.items()}

    @property
    def tunnels(self) -> dict[str, dict[str, Any]]:
        """A snapshot of every tunnel's TunnelInfo, by tunnel id."""
        return {tunnel_id: tunnel.info() for tunnel_id, tunnel in self._tunnels.items()}

    def _device_of(self, project_id: str, device_id: str) -> Device:
        return self._registry.device_of(project_id, device_id)

    async def _route(self, tunnel: Tunnel, conn: Conn, frame: Frame, text: str) -> None:
        await self._relay.route(tunnel, conn, frame, text)

    # ------------------------------------------------------------------
    # Life cycle

    def build_app(self) -> web.Application:
        """The aiohttp application; :meth:`start` serves it, tests may mount it elsewhere."""
        app = web.Application(middlewares=[error_middleware], client_max_size=self.max_body_bytes)
        app.on_response_prepare.append(stamp_request_id)
        app.on_response_prepare.append(self._on_response_prepare)
        r = app.router
        # WebSocket routes first: their paths must never be taken for a project's.
        r.add_get("/v5/iot/tunnels/{tunnel_id}/source-connect", self._relay.source_connect)
        r.add_get("/v5/iot/tunnels/{tunnel_id}/device-connect", self._relay.device_connect)
        r.add_get(LINK_PATH, self._registry.device_link)
        self._rest.add_routes(r)
        return app

    async def start(self) -> None:
        """Bind ``host:port`` (0 picks a free port) and set :attr:`base_url`."""
        if self._runner is not None:
            raise RuntimeError("the platform is already running")
        logthrottle.install()
        guard = ConnectionGuard(self._guard_settings())
        runner = web.AppRunner(
            self.build_app(),
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            # aiohttp closes a connection without a complete request this long after it opened
            # or after its last response; the guard times out the unauthenticated sooner.
            keepalive_timeout=self.idle_timeout,
        )
        await runner.setup()
        try:
            await GuardedSite(runner, self.host, self.port, guard, ssl_context=self.ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.guard = guard
        self._runner = runner
        port = runner.addresses[0][1]
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        self.base_url = f"{'https' if self.ssl_context else 'http'}://{host}:{port}"
        logger.debug("platform started on %s (project %s)", self.base_url, self.project_id)
        if self.mqtt_port is not None or self.mqtts_port is not None:
            await self._start_broker()  # on failure it stops the platform again, and raises

    async def stop(self) -> None:
        """Say goodbye on every tunnel side, close every WebSocket with 1001, then the server."""
        runner = self._runner
        if runner is None:
            return
        self._closing = True
        try:
            await self._stop_broker()
            goodbyes: list[Awaitable[Any]] = [*self._relay.goodbyes(), *self._registry.goodbyes()]
            goodbyes.extend(self._relay.handshakes)
            await asyncio.gather(*goodbyes, return_exceptions=True)
            # Anything left: sockets between upgrade and registration, or being refused.
            left = list(self._sockets.open)
            rest = [self._sockets.close(ws, CloseCode.GOING_AWAY, "platform shutting down") for ws in left]
            await asyncio.gather(*rest, return_exceptions=True)
            await runner.cleanup()
        finally:
            self._runner = None
            self.guard = None
            self._closing = False
        logger.info("platform stopped")

    def _guard_settings(self) -> GuardSettings:
        """The guard's limits: raise the open-files limit first, and keep pending connections under a quarter of it."""
        limit = raise_open_files_limit()
        cap = max(16, min(self.max_pending_connections, limit // 4))
        logger.info(
            "open-files limit %d: at most %d connections may wait to authenticate (%d per address), for %g s",
            limit,
            cap,
            min(cap, self.max_pending_per_address),
            self.header_timeout,
        )
        return GuardSettings(
            max_pending=cap,
            max_pending_per_address=min(cap, self.max_pending_per_address),
            header_timeout=self.header_timeout,
        )

    async def _on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.guard is not None:
            await self.guard.on_response(request, response)

    async def __aenter__(self) -> Platform:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------
    # The MQTT broker (.broker): device access as on IoTDA

    async def _start_broker(self) -> None:
        listen: list[tuple[str, int, ssl.SSLContext | None]] = []
        if self.mqtt_port is not None:
            listen.append((self.host, self.mqtt_port, None))
        if self.mqtts_port is not None:
            listen.append((self.host, self.mqtts_port, self.ssl_context))
        broker = DeviceBroker(self._registry, listen, login_timeout=self.header_timeout)
        try:
            await broker.start()
        except BaseException:
            await self.stop()
            raise
        self._registry.broker = broker
        self.mqtt_urls = [url.replace("://0.0.0.0:", "://127.0.0.1:") for url in broker.urls]

    async def _stop_broker(self) -> None:
        broker, self._registry.broker = self._registry.broker, None
        self.mqtt_urls = []
        if broker is not None:
            await broker.stop()


async def serve(**kwargs: Any) -> None:
    """Run a platform until SIGINT or SIGTERM (the ``tunnelnb platform`` command).

    Prints the base URL on stdout once it accepts connections, so scripts can read it.
    ``kwargs`` are :class:`Platform`'s.
    """
    platform = Platform(**kwargs)
    await platform.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stopping.set)
            installed.append(sig)
    try:
        logger.info("tunnelnb platform listening on %s", platform.base_url)
        print(platform.base_url, flush=True)
        for url in platform.mqtt_urls:  # after the base URL, which scripts read from the first line
            logger.info("MQTT device access on %s", url)
            print(url, flush=True)
        await stopping.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await platform.stop()

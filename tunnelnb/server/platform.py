"""A local Huawei Cloud IoTDA-compatible platform: REST control plane, tunnel relay, device links.

One aiohttp application serves three things:

* the IoTDA REST calls tunnelnb uses (AddDevice, ListDevices, ShowDevice, AddTunnel,
  ListDeviceTunnels, ShowDeviceTunnel, CloseDeviceTunnel, DeleteDeviceTunnel), with
  IoTDA's paths, JSON shapes, error bodies and constraints (DESIGN §1), authenticated
  by ``X-Auth-Token`` or by an AK/SK signature as Huawei Cloud's SDKs make them
  (:mod:`tunnelnb.protocol.signing`), so the official SDK runs against it unmodified;
* the Secure Tunnel WebSockets: the application's ``source-connect`` and the device's
  ``device-connect`` side of each tunnel, relayed frame by frame;
* device links (:mod:`tunnelnb.protocol.devicelink`): the WebSocket through which a device is
  ONLINE and learns of its tunnels, standing in for IoTDA's MQTT events -- or, with
  ``mqtt_url``, those MQTT events themselves, through a broker (:mod:`tunnelnb.server.mqtt`).

All state lives in memory: projects, devices, tunnels and tokens vanish when the
process stops.  That is deliberate: the platform serves demos, tests and benchmarks,
where a fresh start is what one wants.

Device ids are unique across the whole platform, not only within a project, because
the device-link path carries no project id.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import json
import logging
import re
import secrets
import signal
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WebSocketError, WSMsgType, web

from ..errors import PlatformError, ProtocolError
from ..protocol import signing
from ..protocol.devicelink import (
    LINK_PATH,
    PASSWORD_HEADER,
    TIMESTAMP_HEADER,
    device_password,
    event_time,
    tunnel_notify,
)
from ..protocol.frames import (
    DEFAULT_MAX_MESSAGE_BYTES,
    CloseCode,
    Frame,
    Op,
    RequestIds,
    Status,
    decode_frame,
    encode_frame,
)

__all__ = ["ErrorCode", "Platform", "Side", "serve"]

logger = logging.getLogger(__name__)

AUTH_HEADER = "X-Auth-Token"
PROJECT_HEADER = "X-Project-Id"  # the SDK's BasicCredentials sign it into every request
_ACCESS_KEY = "access key"
TUNNEL_TOKEN_HEADER = "tunnel_access_token"
REQUEST_ID_HEADER = "X-Request-Id"


class ErrorCode:
    """``error_code`` values of REST error bodies, in one place.

    Codes marked *IoTDA* are the real platform's, *API Gateway* those of the gateway in
    front of it (Huawei Cloud's "API Request Signing Guide", error codes); the others
    follow IoTDA's numbering (0140xx devices, 0197xx tunnels).  Errors without a
    specific meaning (unknown path, wrong method, internal error) use
    ``IOTDA.000<HTTP status>``.
    """

    UNAUTHORIZED = "IOTDA.000002"  # IoTDA, 401: missing or wrong credentials
    IAM_AUTH = "APIGW.0301"  # API Gateway, 401: "Incorrect IAM authentication information: ..." (AK/SK)
    FORBIDDEN = "IOTDA.000004"  # IoTDA, 403: the token is valid, but not for this project
    INVALID_INPUT = "IOTDA.000006"  # IoTDA, 400: a parameter is missing or has a wrong value
    BAD_REQUEST_BODY = "IOTDA.000008"  # IoTDA, 400: the body is not JSON or not an object
    LIMIT_OUT_OF_RANGE = "IOTDA.000017"  # IoTDA, 400: ListDevices limit outside 1..50
    PROJECT_NOT_FOUND = "IOTDA.000404"  # 404
    DEVICE_NOT_FOUND = "IOTDA.014000"  # 404
    DEVICE_EXISTS = "IOTDA.014001"  # 409
    TUNNEL_NOT_FOUND = "IOTDA.019700"  # 404
    DEVICE_OFFLINE = "IOTDA.019701"  # 400: tunnels are created only for online devices
    TUNNEL_EXISTS = "IOTDA.019702"  # 409: one open tunnel per device
    TUNNEL_LIMIT = "IOTDA.019703"  # 400: max_tunnels per project
    TUNNEL_NOT_CLOSED = "IOTDA.019706"  # 400: only a closed tunnel can be deleted
    TUNNEL_TOKEN_EXPIRED = "IOTDA.019705"  # IoTDA, 401
    SHUTTING_DOWN = "IOTDA.000503"  # 503

    @staticmethod
    def for_status(status: int) -> str:
        """The generic code of an HTTP error that has no specific one."""
        return f"IOTDA.000{status}"




OPEN, CLOSED = "OPEN", "CLOSED"
CONNECTED, DISCONNECTED = "CONNECTED", "DISCONNECTED"
ONLINE, OFFLINE = "ONLINE", "OFFLINE"

#: What a device may send to the application; anything else it sends is dropped.
_DEVICE_TO_APP = frozenset({Op.CONNECT_RESPONSE, Op.COMMAND_RESPONSE, Op.DISCONNECT})

#: Project, device, node and product ids: safe in URL paths (no slash, no leading dot).
_ID_RE = re.compile(r"[A-Za-z0-9_@:-][A-Za-z0-9_.@:-]{0,127}")
_TIMESTAMP_RE = re.compile(r"\d{10}")
_MAX_CLOSE_REASON = 123  # bytes: a close frame's payload is at most 125, 2 of them the code
_WS_CLOSE_TIMEOUT = 5.0  # seconds to wait for the peer's close frame
_SHUTDOWN_TIMEOUT = 5.0


class Side(enum.Enum):
    """The two ends of a tunnel."""

    SOURCE = "source"  # the application (source-connect)
    DEVICE = "device"  # the device (device-connect)

    @property
    def peer(self) -> Side:
        return Side.DEVICE if self is Side.SOURCE else Side.SOURCE

    @property
    def label(self) -> str:
        return "application" if self is Side.SOURCE else "device"


@dataclass(eq=False)
class _Device:
    device_id: str
    project_id: str
    node_id: str
    device_name: str
    product_id: str | None
    fw_version: str | None
    sw_version: str | None
    tags: dict[str, str]
    secret: str = field(repr=False)
    create_time: float
    link: web.WebSocketResponse | None = None
    #: ``ws://host:port`` as the device reached us: its tunnel_notify URIs use it.
    link_base: str = ""
    #: The session id of the device's MQTT connection while it is ONLINE there (tunnelnb.server.mqtt), else None.
    mqtt_session: str | None = None

    @property
    def online(self) -> bool:
        """ONLINE: its device link is open, or an authenticated MQTT connection of it is up."""
        return self.link is not None or self.mqtt_session is not None

    def info(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "node_id": self.node_id,
            "device_name": self.device_name,
            "product_id": self.product_id,
            "status": ONLINE if self.online else OFFLINE,
            "fw_version": self.fw_version,
            "sw_version": self.sw_version,
            "tags": [{"tag_key": k, "tag_value": v} for k, v in self.tags.items()],
            "create_time": _fmt_time(self.create_time),
        }


@dataclass(eq=False)
class _Conn:
    """One WebSocket on one side of a tunnel.

    Whoever ends a connection on purpose (eviction, CloseDeviceTunnel, a refused
    message, shutdown) frees its slot first, so the handler's own exit finds the
    slot taken or empty and sends no "peer gone" disconnect on top.
    """

    ws: web.WebSocketResponse
    side: Side


@dataclass(eq=False)
class _Tunnel:
    tunnel_id: str
    project_id: str
    device_id: str
    source_token: str = field(repr=False)
    device_token: str = field(repr=False)
    create_time: float
    status: str = OPEN
    closed_time: float | None = None
    conns: dict[Side, _Conn | None] = field(default_factory=lambda: dict.fromkeys(Side))
    states: dict[Side, tuple[str, float]] = field(default_factory=dict)

    def token(self, side: Side) -> str:
        return self.source_token if side is Side.SOURCE else self.device_token

    def info(self) -> dict[str, Any]:
        def state(side: Side) -> dict[str, Any]:
            status, when = self.states[side]
            return {"last_update_time": _fmt_time(when), "status": status}

        return {
            "tunnel_id": self.tunnel_id,
            "device_id": self.device_id,
            "create_time": _fmt_time(self.create_time),
            "closed_time": _fmt_time(self.closed_time),
            "status": self.status,
            "source_connect_state": state(Side.SOURCE),
            "device_connect_state": state(Side.DEVICE),
        }


def _fmt_time(when: float | None) -> str | None:
    return None if when is None else event_time(datetime.fromtimestamp(when, UTC))


def _same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison that also copes with non-ASCII header values."""
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _close_reason(text: str) -> bytes:
    """``text`` as a close reason: UTF-8, cut to 123 bytes between characters."""
    raw = text.encode("utf-8", "replace")[:_MAX_CLOSE_REASON]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def _brief(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: a peer's message must stay far below the size limit."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_input(message: str) -> PlatformError:
    return PlatformError(400, ErrorCode.INVALID_INPUT, message)


def _optional_str(value: Any, name: str, *, max_len: int = 256) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise _bad_input(f"{name} must be a string of at most {max_len} characters.")
    return value


def _id_field(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise _bad_input(
            f"{name} must be 1 to 128 letters, digits or the characters _ - . : @ (not starting with a dot)."
        )
    return value


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

    ``mqtt_url`` (``mqtt://[user:password@]HOST[:PORT]`` or ``mqtts://…``, TLS
    verified per ``mqtt_ssl``) also sends the notifications through an MQTT broker,
    as IoTDA does: a device that is ONLINE by MQTT presence (see :mod:`tunnelnb.server.mqtt`)
    gets its ``tunnel_notify`` published to ``$oc/devices/{device_id}/sys/events/down``
    with QoS 1; devices on a device link keep getting theirs over the link.
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
        mqtt_url: str | None = None,
        mqtt_ssl: ssl.SSLContext | bool = True,
    ) -> None:
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
        self._projects: dict[str, str] = {}  # project id -> api token
        self._access_keys: dict[str, tuple[str, str]] = {}  # access key -> (secret key, project id)
        self._devices: dict[str, _Device] = {}
        self._tunnels: dict[str, _Tunnel] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._goodbyes: set[asyncio.Task[None]] = set()
        self._ids = RequestIds()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.mqtt_url = mqtt_url
        self.mqtt_ssl = mqtt_ssl
        self._mqtt: Any = None  # a tunnelnb.server.mqtt.PlatformMqtt while running with mqtt_url
        self._presence: dict[str, Any] = {}  # device id -> its latest tunnelnb.server.mqtt.Presence
        self.add_project(project_id, self.api_token)
        if ak is not None and sk is not None:
            self.add_access_key(ak, sk)

    def __repr__(self) -> str:
        return f"Platform(base_url={self.base_url!r}, project_id={self.project_id!r})"

    # ------------------------------------------------------------------
    # In-process administration and views

    def add_project(self, project_id: str, api_token: str) -> None:
        """Add a project (a tenant) whose REST calls authenticate with ``api_token``."""
        _id_field(project_id, "project_id")
        if not api_token:
            raise ValueError("api_token must not be empty")
        if project_id in self._projects:
            raise ValueError(f"project {project_id} already exists")
        if any(_same_secret(api_token, token) for token in self._projects.values()):
            raise ValueError("api_token is already used by another project; each project needs its own")
        self._projects[project_id] = api_token

    def add_access_key(self, ak: str, sk: str, *, project_id: str | None = None) -> None:
        """Accept REST calls signed with the key pair ``ak``/``sk`` for ``project_id`` (the default project)."""
        project = project_id if project_id is not None else self.project_id
        if project not in self._projects:
            raise ValueError(f"project {project} does not exist")
        if not ak or not sk:
            raise ValueError("ak and sk must not be empty")
        if any(c.isspace() or c in ",/=" for c in ak):
            raise ValueError("ak must not contain spaces or the characters , / =")
        if ak in self._access_keys:
            raise ValueError("this access key is already registered")
        self._access_keys[ak] = (sk, project)

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
        if project not in self._projects:
            raise PlatformError(404, ErrorCode.PROJECT_NOT_FOUND, f"Project {project} does not exist.")
        return self._create_device(
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

    # ------------------------------------------------------------------
    # Life cycle

    def build_app(self) -> web.Application:
        """The aiohttp application; :meth:`start` serves it, tests may mount it elsewhere."""
        app = web.Application(middlewares=[self._error_middleware])
        app.on_response_prepare.append(self._stamp_request_id)
        r = app.router
        # WebSocket routes first: their paths must never be taken for a project's.
        r.add_get("/v5/iot/tunnels/{tunnel_id}/source-connect", self._source_connect)
        r.add_get("/v5/iot/tunnels/{tunnel_id}/device-connect", self._device_connect)
        r.add_get(LINK_PATH, self._device_link)
        r.add_post("/v5/iot/{project_id}/devices", self._rest_add_device)
        r.add_get("/v5/iot/{project_id}/devices", self._rest_list_devices)
        r.add_get("/v5/iot/{project_id}/devices/{device_id}", self._rest_show_device)
        r.add_post("/v5/iot/{project_id}/tunnels", self._rest_add_tunnel)
        r.add_get("/v5/iot/{project_id}/tunnels", self._rest_list_tunnels)
        r.add_get("/v5/iot/{project_id}/tunnels/{tunnel_id}", self._rest_show_tunnel)
        r.add_put("/v5/iot/{project_id}/tunnels/{tunnel_id}", self._rest_close_tunnel)
        r.add_delete("/v5/iot/{project_id}/tunnels/{tunnel_id}", self._rest_delete_tunnel)
        return app

    async def start(self) -> None:
        """Bind ``host:port`` (0 picks a free port) and set :attr:`base_url`."""
        if self._runner is not None:
            raise RuntimeError("the platform is already running")
        runner = web.AppRunner(self.build_app(), shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        self.base_url = f"{'https' if self.ssl_context else 'http'}://{host}:{port}"
        logger.debug("platform started on %s (project %s)", self.base_url, self.project_id)
        if self.mqtt_url is not None:
            await self._start_mqtt()  # on failure it stops the platform again, and raises

    async def stop(self) -> None:
        """Say goodbye on every tunnel side, close every WebSocket with 1001, then the server."""
        runner = self._runner
        if runner is None:
            return
        self._closing = True
        try:
            await self._stop_mqtt()
            goodbyes: list[Awaitable[Any]] = []
            for tunnel in list(self._tunnels.values()):
                for conn in tunnel.conns.values():
                    if conn is not None:
                        goodbyes.append(
                            self._dismiss(
                                tunnel, conn, Status.TUNNEL_CLOSED, "platform shutting down", CloseCode.GOING_AWAY
                            )
                        )
            for device in self._devices.values():
                if device.link is not None:
                    goodbyes.append(self._close_ws(device.link, CloseCode.GOING_AWAY, "platform shutting down"))
            goodbyes.extend(self._goodbyes)
            await asyncio.gather(*goodbyes, return_exceptions=True)
            # Anything left: sockets between upgrade and registration, or being refused.
            rest = [self._close_ws(ws, CloseCode.GOING_AWAY, "platform shutting down") for ws in list(self._sockets)]
            await asyncio.gather(*rest, return_exceptions=True)
            await runner.cleanup()
        finally:
            self._runner = None
            self._closing = False
        logger.info("platform stopped")

    async def __aenter__(self) -> Platform:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------
    # HTTP plumbing

    @web.middleware
    async def _error_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every error becomes IoTDA's JSON error body: never HTML, never a traceback."""
        request_id = uuid.uuid4().hex
        try:
            return await handler(request)
        except PlatformError as exc:
            status, code, message = exc.status, exc.error_code, exc.error_msg
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            status, code, message = exc.status, ErrorCode.for_status(exc.status), _http_error_message(request, exc)
        except Exception:
            logger.exception("unexpected error in %s %s (request %s)", request.method, request.path, request_id)
            status, code = 500, ErrorCode.for_status(500)
            message = f"The platform failed to handle request {request_id}; its log has the details."
        logger.debug("%s %s -> %d %s (request %s)", request.method, request.path, status, code, request_id)
        return web.json_response(
            {"error_code": code, "error_msg": message}, status=status, headers={REQUEST_ID_HEADER: request_id}
        )

    @staticmethod
    async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
        if REQUEST_ID_HEADER not in response.headers:
            response.headers[REQUEST_ID_HEADER] = uuid.uuid4().hex

    async def _authorize(self, request: web.Request) -> str:
        """The project of the request's path, once ``X-Auth-Token`` or an AK/SK signature proves access to it."""
        project_id = request.match_info["project_id"]
        owner, credential = await self._authenticate(request)
        if project_id not in self._projects:
            raise PlatformError(404, ErrorCode.PROJECT_NOT_FOUND, f"Project {project_id} does not exist.")
        if owner != project_id:
            raise PlatformError(
                403, ErrorCode.FORBIDDEN, f"The {credential} does not grant access to project {project_id}."
            )
        header_project = request.headers.get(PROJECT_HEADER, "").strip()
        if credential == _ACCESS_KEY and header_project and header_project != project_id:
            raise PlatformError(
                403,
                ErrorCode.FORBIDDEN,
                f"The {PROJECT_HEADER} header ({header_project}) does not match project {project_id} of the path.",
            )
        return project_id

    async def _authenticate(self, request: web.Request) -> tuple[str, str]:
        """``(project, credential)`` of the request: an ``X-Auth-Token``, else an AK/SK signature.

        A token, when present, decides alone.  A signed request's failures are
        API Gateway's ``APIGW.0301`` errors, with its wording.
        """
        token = request.headers.get(AUTH_HEADER, "").strip()
        if token or signing.AUTHORIZATION_HEADER not in request.headers:
            owner = None
            if token:
                owner = next((p for p, t in self._projects.items() if _same_secret(token, t)), None)
            if owner is None:
                raise PlatformError(
                    401,
                    ErrorCode.UNAUTHORIZED,
                    f"The {AUTH_HEADER} header is missing or not valid (or sign the request with an access key).",
                )
            return owner, AUTH_HEADER
        body = await request.read()
        try:
            verified = signing.verify(
                request.method,
                request.raw_path,
                request.headers,
                body,
                secret_for=self._secret_for,
                now=self._now(),
                max_skew=self.signature_clock_skew,
            )
        except signing.SignatureError as exc:
            key = signing.mask(exc.access_key) if exc.access_key else "-"
            logger.warning(
                "%s %s: AK/SK signature refused (%s, ak %s)", request.method, request.path, exc.reason.value, key
            )
            raise PlatformError(
                401, ErrorCode.IAM_AUTH, f"Incorrect IAM authentication information: {exc.detail}"
            ) from None
        return self._access_keys[verified.access_key][1], _ACCESS_KEY

    def _secret_for(self, access_key: str) -> str | None:
        entry = self._access_keys.get(access_key)
        return entry[0] if entry is not None else None

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.text())
        except (ValueError, UnicodeDecodeError):
            raise PlatformError(400, ErrorCode.BAD_REQUEST_BODY, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise PlatformError(400, ErrorCode.BAD_REQUEST_BODY, "The request body must be a JSON object.")
        return body

    def _now(self) -> float:
        return self.clock()

    # ------------------------------------------------------------------
    # Devices (REST)

    def _create_device(
        self,
        project_id: str,
        *,
        device_id: Any,
        node_id: Any,
        secret: Any,
        device_name: Any,
        product_id: Any,
        fw_version: Any,
        sw_version: Any,
        tags: Mapping[Any, Any],
    ) -> dict[str, Any]:
        node_id = _id_field(node_id, "node_id")
        product_id = None if product_id is None else _id_field(product_id, "product_id")
        if device_id is None:  # IoTDA's rule: product_id + "_" + node_id
            device_id = f"{product_id}_{node_id}" if product_id else node_id
        device_id = _id_field(device_id, "device_id")
        if not isinstance(secret, str) or not secret:
            raise _bad_input("auth_info.secret must be a non-empty string.")
        for key, value in tags.items():
            if not isinstance(key, str) or not 0 < len(key) <= 64 or not isinstance(value, str) or len(value) > 128:
                raise _bad_input("Tags need a tag_key of 1 to 64 characters and a tag_value of at most 128.")
        if device_id in self._devices:
            raise PlatformError(409, ErrorCode.DEVICE_EXISTS, f"Device {device_id} already exists.")
        device = _Device(
            device_id=device_id,
            project_id=project_id,
            node_id=node_id,
            device_name=_optional_str(device_name, "device_name") or node_id,
            product_id=product_id,
            fw_version=_optional_str(fw_version, "fw_version"),
            sw_version=_optional_str(sw_version, "sw_version"),
            tags=dict(tags),
            secret=secret,
            create_time=self._now(),
        )
        self._devices[device_id] = device
        logger.info("device %s added to project %s", device_id, project_id)
        presence = self._presence.get(device_id)
        if presence is not None:  # its agent was on the broker before it was registered
            self._apply_presence(device, presence)
        return device.info()

    def _device_of(self, project_id: str, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is None or device.project_id != project_id:
            raise PlatformError(404, ErrorCode.DEVICE_NOT_FOUND, f"Device {device_id} does not exist.")
        return device

    async def _rest_add_device(self, request: web.Request) -> web.Response:
        project_id = await self._authorize(request)
        body = await self._json_body(request)
        auth = body.get("auth_info")
        if not isinstance(auth, dict):
            raise _bad_input('auth_info is required: {"auth_type": "SECRET", "secret": "..."}.')
        if auth.get("auth_type", "SECRET") != "SECRET":
            raise _bad_input("Only auth_info.auth_type SECRET is supported.")
        raw_tags = body.get("tags") or []
        if not isinstance(raw_tags, list) or not all(isinstance(t, dict) for t in raw_tags):
            raise _bad_input('tags must be a list of {"tag_key", "tag_value"} objects.')
        info = self._create_device(
            project_id,
            device_id=body.get("device_id"),
            node_id=body.get("node_id"),
            secret=auth.get("secret"),
            device_name=body.get("device_name"),
            product_id=body.get("product_id"),
            fw_version=body.get("fw_version"),
            sw_version=body.get("sw_version"),
            tags={t.get("tag_key"): t.get("tag_value", "") for t in raw_tags},
        )
        return web.json_response(info, status=201)

    async def _rest_list_devices(self, request: web.Request) -> web.Response:
        project_id = await self._authorize(request)
        limit = _int_query(request, "limit", default=10, low=1, high=50, code=ErrorCode.LIMIT_OUT_OF_RANGE)
        offset = _int_query(request, "offset", default=0, low=0, high=500, code=ErrorCode.INVALID_INPUT)
        marker = request.query.get("marker")
        ids = sorted(d.device_id for d in self._devices.values() if d.project_id == project_id)
        after = [i for i in ids if i > marker] if marker else ids
        page = after[offset : offset + limit]
        return web.json_response(
            {
                "devices": [self._devices[i].info() for i in page],
                "page": {"count": len(ids), "marker": page[-1] if page else None},
            }
        )

    async def _rest_show_device(self, request: web.Request) -> web.Response:
        project_id = await self._authorize(request)
        return web.json_response(self._device_of(project_id, request.match_info["device_id"]).info())

    # ------------------------------------------------------------------
    # Tunnels (REST)

    def _tunnel_of(self, project_id: str, tunnel_id: str) -> _Tunnel:
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None or tunnel.project_id != project_id:
            raise PlatformError(404, ErrorCode.TUNNEL_NOT_FOUND, f"Tunnel {tunnel_id} does not exist.")
        return tunnel

    def _open_tunnel_of(self, device_id: str, *, besides: _Tunnel | None = None) -> _Tunnel | None:
        return next(
            (t for t in self._tunnels.values() if t.device_id == device_id and t.status == OPEN and t is not besides),
            None,
        )

    def _expired(self, tunnel: _Tunnel) -> bool:
        return self._now() >= tunnel.create_time + self.token_ttl

    async def _rest_add_tunnel(self, request: web.Request) -> web.Response:
        project_id = await self._authorize(request)
        body = await self._json_body(request)
        device_id = body.get("device_id")
        if not isinstance(device_id, str) or not device_id:
            raise _bad_input("device_id is required and must be a string.")
        device = self._device_of(project_id, device_id)
        if not device.online:
            raise PlatformError(
                400,
                ErrorCode.DEVICE_OFFLINE,
                f"Device {device_id} is offline; a tunnel can be created only while the device is online.",
            )
        existing = self._open_tunnel_of(device_id)
        if existing is not None:
            raise PlatformError(
                409,
                ErrorCode.TUNNEL_EXISTS,
                f"Device {device_id} already has open tunnel {existing.tunnel_id}; use or close that one.",
            )
        count = sum(1 for t in self._tunnels.values() if t.project_id == project_id)
        if count >= self.max_tunnels:
            raise PlatformError(
                400,
                ErrorCode.TUNNEL_LIMIT,
                f"Project {project_id} already has the maximum of {self.max_tunnels} tunnels; delete closed ones.",
            )
        now = self._now()
        tunnel = _Tunnel(
            tunnel_id=str(uuid.uuid4()),
            project_id=project_id,
            device_id=device_id,
            source_token=secrets.token_urlsafe(32),
            device_token=secrets.token_urlsafe(32),
            create_time=now,
            states={side: (DISCONNECTED, now) for side in Side},
        )
        self._tunnels[tunnel.tunnel_id] = tunnel
        logger.info("tunnel %s created for device %s", tunnel.tunnel_id, device_id)
        await self._notify(tunnel)
        base = _ws_base(request)
        return web.json_response(
            {
                "tunnel_id": tunnel.tunnel_id,
                "tunnel_access_token": tunnel.source_token,
                "expires_in": self.token_ttl,
                "tunnel_uri": f"{base}/v5/iot/tunnels/{tunnel.tunnel_id}/source-connect",
            },
            status=201,
        )

    async def _rest_list_tunnels(self, request: web.Request) -> web.Response:
        project_id = await self._authorize(request)
        device_id = request.query.get("device_id")
        tunnels = [
            t.info()
            for t in self._tunnels.values()
            if t.project_id == project_id and (device_id is None or t.device_id == device_id)
        ]
        return web.json_response({"tunnels": tunnels})

    async def _rest_show_tunnel(self, request: web.Request) -> web.Response:
        project_id = await self._authorize(request)
        return web.json_response(self._tunnel_of(project_id, request.match_info["tunnel_id"]).info())

    async def _rest_close_tunnel(self, request: web.Request) -> web.Response:
        project_id = await self._authorize(request)
        tunnel = self._tunnel_of(project_id, request.match_info["tunnel_id"])
        if tunnel.status == OPEN:
            tunnel.status = CLOSED
            tunnel.closed_time = self._now()
            logger.info("tunnel %s of device %s closed", tunnel.tunnel_id, tunnel.device_id)
            # Answer now; the sides' close handshakes finish in the background (a busy
            # device can take seconds to answer, and the caller has nothing to wait for).
            for conn in tunnel.conns.values():
                if conn is not None:
                    self._detach(tunnel, conn)
                    task = asyncio.create_task(
                        self._dismiss(tunnel, conn, Status.TUNNEL_CLOSED, "tunnel closed", CloseCode.NORMAL)
                    )
                    self._goodbyes.add(task)
                    task.add_done_callback(self._goodbyes.discard)
        return web.Response(status=204)

    async def _rest_delete_tunnel(self, request: web.Request) -> web.Response:
        project_id = await self._authorize(request)
        tunnel = self._tunnel_of(project_id, request.match_info["tunnel_id"])
        if tunnel.status != CLOSED:
            raise PlatformError(
                400,
                ErrorCode.TUNNEL_NOT_CLOSED,
                f"Tunnel {tunnel.tunnel_id} is open; close it first (CloseDeviceTunnel), then delete it.",
            )
        del self._tunnels[tunnel.tunnel_id]
        logger.info("tunnel %s of device %s deleted", tunnel.tunnel_id, tunnel.device_id)
        return web.Response(status=204)

    # ------------------------------------------------------------------
    # Device links

    async def _device_link(self, request: web.Request) -> web.StreamResponse:
        device_id = request.match_info["device_id"]
        device = self._devices.get(device_id)
        if device is None:
            raise PlatformError(404, ErrorCode.DEVICE_NOT_FOUND, f"Device {device_id} does not exist.")
        if self._closing:
            raise PlatformError(503, ErrorCode.SHUTTING_DOWN, "The platform is shutting down.")
        self._check_device_login(device, request)
        ws = self._new_ws()
        if not ws.can_prepare(request).ok:
            raise _bad_input("This endpoint accepts only WebSocket upgrade requests.")
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            old = device.link
            device.link, device.link_base = ws, _ws_base(request)
            logger.info("device %s online", device_id)
            if old is not None:
                logger.info("device %s: a newer link replaces the older one", device_id)
                await self._close_ws(old, CloseCode.REPLACED, "replaced by a newer connection")
            for tunnel in list(self._tunnels.values()):
                if tunnel.device_id == device_id and tunnel.status == OPEN and tunnel.conns[Side.DEVICE] is None:
                    await self._notify(tunnel)
            # A link that drops while aiohttp answers its ping raises instead of closing.
            with contextlib.suppress(ConnectionResetError):
                async for msg in ws:
                    logger.debug("device %s: ignoring a %s message on its link", device_id, msg.type.name)
        finally:
            self._sockets.discard(ws)
            if device.link is ws:
                device.link = None
                logger.info("device %s offline", device_id)
        return ws

    def _check_device_login(self, device: _Device, request: web.Request) -> None:
        """IoTDA's device login: an HMAC of the secret, keyed by a recent YYYYMMDDHH timestamp."""
        stamp = request.headers.get(TIMESTAMP_HEADER, "").strip()
        password = request.headers.get(PASSWORD_HEADER, "").strip()
        if not stamp or not password:
            raise PlatformError(
                401,
                ErrorCode.UNAUTHORIZED,
                f"A device link needs the {TIMESTAMP_HEADER} and {PASSWORD_HEADER} headers.",
            )
        when = None
        if _TIMESTAMP_RE.fullmatch(stamp):
            with contextlib.suppress(ValueError):
                when = datetime.strptime(stamp, "%Y%m%d%H").replace(tzinfo=UTC).timestamp()
        if when is None:
            raise PlatformError(401, ErrorCode.UNAUTHORIZED, f"{TIMESTAMP_HEADER} must be UTC time as YYYYMMDDHH.")
        # The stamp names a whole hour: accept if now lies within the skew of that hour.
        now = self._now()
        if not when - self.link_clock_skew <= now < when + 3600 + self.link_clock_skew:
            logger.warning("device %s: link refused, timestamp %s is off the platform's clock", device.device_id, stamp)
            raise PlatformError(
                401,
                ErrorCode.UNAUTHORIZED,
                f"{TIMESTAMP_HEADER} {stamp} is more than {self.link_clock_skew} seconds off the platform's clock.",
            )
        if not _same_secret(password.lower(), device_password(device.secret, stamp)):
            logger.warning("device %s: link refused, wrong password", device.device_id)
            raise PlatformError(401, ErrorCode.UNAUTHORIZED, f"Device {device.device_id} failed authentication.")

    async def _notify(self, tunnel: _Tunnel) -> bool:
        """Send the device its tunnel_notify over its link, or over MQTT; False if it is offline."""
        device = self._devices.get(tunnel.device_id)
        if device is None or not device.online:
            logger.debug(
                "tunnel %s: device %s is offline; it will be notified when it links", tunnel.tunnel_id, tunnel.device_id
            )
            return False
        # Over MQTT the device never addressed us: its URI is our own base URL's.
        base = device.link_base if device.link is not None else "ws" + self.base_url.removeprefix("http")
        uri = f"{base}/v5/iot/tunnels/{tunnel.tunnel_id}/device-connect"
        remaining = max(0, int(tunnel.create_time + self.token_ttl - self._now()))
        when = datetime.fromtimestamp(self._now(), UTC)
        payload = json.dumps(tunnel_notify(uri, tunnel.device_token, remaining, when))
        if device.link is not None:
            sent = await self._send(device.link, payload)
        else:
            sent = self._mqtt is not None and await self._mqtt.publish_notify(device.device_id, payload)
        if sent:
            logger.info(
                "tunnel %s: notified device %s%s", tunnel.tunnel_id, tunnel.device_id, "" if device.link else " (MQTT)"
            )
        return sent

    # ------------------------------------------------------------------
    # MQTT (tunnelnb.server.mqtt): notifications through a broker, presence from it

    async def _start_mqtt(self) -> None:
        from .mqtt import PlatformMqtt

        assert self.mqtt_url is not None
        try:
            self._mqtt = PlatformMqtt(
                self.mqtt_url, on_presence=self._on_presence, on_connected=self._on_mqtt_connected, ssl=self.mqtt_ssl
            )
            await self._mqtt.start()
        except BaseException:
            self._mqtt = None
            await self.stop()
            raise
        logger.info("platform notifying devices through the MQTT broker at %s", self._mqtt.endpoint.url)

    async def _stop_mqtt(self) -> None:
        mqtt, self._mqtt = self._mqtt, None
        if mqtt is not None:
            await mqtt.stop()
            self._on_mqtt_connected(False)

    def _on_mqtt_connected(self, up: bool) -> None:
        """Without the broker, no MQTT device can be notified: they are OFFLINE until their presence comes back."""
        if not up:
            self._presence.clear()
            for device in self._devices.values():
                if device.mqtt_session is not None:
                    device.mqtt_session = None
                    logger.info("device %s offline (the MQTT broker is gone)", device.device_id)

    async def _on_presence(self, presence: Any) -> None:
        self._presence[presence.device_id] = presence  # also for a device registered later
        device = self._devices.get(presence.device_id)
        if device is not None and self._apply_presence(device, presence):
            for tunnel in list(self._tunnels.values()):
                if tunnel.device_id == device.device_id and tunnel.status == OPEN and tunnel.conns[Side.DEVICE] is None:
                    await self._notify(tunnel)

    def _apply_presence(self, device: _Device, presence: Any) -> bool:
        """Mark the device ONLINE/OFFLINE per an authentic presence message; True if it came online."""
        from .mqtt import verify_presence

        problem = verify_presence(presence, device.secret)
        if problem is not None:
            logger.warning("device %s: ignoring its MQTT presence: %s", device.device_id, problem)
            return False
        if presence.online:
            came = device.mqtt_session != presence.session
            device.mqtt_session = presence.session
            if came:
                logger.info("device %s online (MQTT)", device.device_id)
            return came
        if device.mqtt_session == presence.session:  # an OFFLINE of an older connection changes nothing
            device.mqtt_session = None
            logger.info("device %s offline (MQTT)", device.device_id)
        return False

    # ------------------------------------------------------------------
    # Tunnel WebSockets

    async def _source_connect(self, request: web.Request) -> web.StreamResponse:
        return await self._tunnel_socket(request, Side.SOURCE)

    async def _device_connect(self, request: web.Request) -> web.StreamResponse:
        return await self._tunnel_socket(request, Side.DEVICE)

    async def _tunnel_socket(self, request: web.Request, side: Side) -> web.StreamResponse:
        tunnel_id = request.match_info["tunnel_id"]
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None:
            raise PlatformError(404, ErrorCode.TUNNEL_NOT_FOUND, f"Tunnel {tunnel_id} does not exist.")
        if self._closing:
            raise PlatformError(503, ErrorCode.SHUTTING_DOWN, "The platform is shutting down.")
        presented = request.headers.get(TUNNEL_TOKEN_HEADER, "").strip()
        authentic = bool(presented) and _same_secret(presented, tunnel.token(side))
        if authentic and self._expired(tunnel):
            raise PlatformError(
                401, ErrorCode.TUNNEL_TOKEN_EXPIRED, "The tunnel access token has expired; create a new tunnel."
            )
        if authentic and side is Side.SOURCE and tunnel.status == CLOSED:
            other = self._open_tunnel_of(tunnel.device_id, besides=tunnel)
            if other is not None:
                raise PlatformError(
                    409,
                    ErrorCode.TUNNEL_EXISTS,
                    f"Tunnel {tunnel_id} cannot reopen: device {tunnel.device_id} has open tunnel {other.tunnel_id}.",
                )
        ws = self._new_ws()
        if not ws.can_prepare(request).ok:
            raise _bad_input("This endpoint accepts only WebSocket upgrade requests.")
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._run_side(tunnel, side, ws, authentic)
        except Exception:
            logger.exception("tunnel %s: %s side failed", tunnel_id, side.label)
            await self._close_ws(ws, CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._sockets.discard(ws)
        return ws

    async def _run_side(self, tunnel: _Tunnel, side: Side, ws: web.WebSocketResponse, authentic: bool) -> None:
        if not authentic:
            # After the upgrade, so the device SDKs see close code 1002 and stop retrying.
            logger.warning("tunnel %s: %s side failed authentication", tunnel.tunnel_id, side.label)
            await self._close_ws(ws, CloseCode.AUTH_FAILED, "authentication failed")
            return
        if self._tunnels.get(tunnel.tunnel_id) is not tunnel:  # deleted during the upgrade
            await self._close_ws(ws, CloseCode.NORMAL, "tunnel deleted")
            return
        if tunnel.status == CLOSED:
            if side is Side.DEVICE or self._open_tunnel_of(tunnel.device_id, besides=tunnel) is not None:
                logger.info("tunnel %s: refusing the %s side, the tunnel is closed", tunnel.tunnel_id, side.label)
                await self._close_ws(ws, CloseCode.NORMAL, "tunnel closed")
                return
            tunnel.status, tunnel.closed_time = OPEN, None
            logger.info("tunnel %s of device %s reopened", tunnel.tunnel_id, tunnel.device_id)
        conn = _Conn(ws, side)
        try:
            await self._attach(tunnel, conn)
            await self._pump(tunnel, conn)
        finally:
            await self._detach_and_tell(tunnel, conn)
            if not ws.closed:
                with contextlib.suppress(ConnectionResetError):
                    await ws.close()

    async def _attach(self, tunnel: _Tunnel, conn: _Conn) -> None:
        """Make ``conn`` its side's connection: evict the old one, then announce per the protocol."""
        side = conn.side
        old = tunnel.conns[side]
        tunnel.conns[side] = conn
        tunnel.states[side] = (CONNECTED, self._now())
        logger.info("tunnel %s: %s connected (device %s)", tunnel.tunnel_id, side.label, tunnel.device_id)
        if old is not None:
            logger.info("tunnel %s: the newer %s connection replaces the older one", tunnel.tunnel_id, side.label)
            await self._close_ws(old.ws, CloseCode.REPLACED, "replaced by a newer connection")
        app, device = tunnel.conns[Side.SOURCE], tunnel.conns[Side.DEVICE]
        if app is not None and device is not None:
            await self._send_frame(app.ws, Frame(Op.CONNECT_TUNNEL, self._ids.next(), None))
        elif side is Side.SOURCE:
            await self._notify(tunnel)  # the device may have missed or dropped the first notify

    def _detach(self, tunnel: _Tunnel, conn: _Conn) -> bool:
        """Free ``conn``'s side if it still holds it; True if it did."""
        if tunnel.conns[conn.side] is not conn:
            return False
        tunnel.conns[conn.side] = None
        tunnel.states[conn.side] = (DISCONNECTED, self._now())
        logger.info("tunnel %s: %s disconnected (device %s)", tunnel.tunnel_id, conn.side.label, tunnel.device_id)
        return True

    async def _detach_and_tell(self, tunnel: _Tunnel, conn: _Conn) -> None:
        if not self._detach(tunnel, conn) or self._closing or tunnel.status != OPEN:
            return
        peer = tunnel.conns[conn.side.peer]
        if peer is None:
            return
        if conn.side is Side.DEVICE:
            message = f"device {tunnel.device_id} left the tunnel"
        else:
            message = f"the application left tunnel {tunnel.tunnel_id}"
        await self._send_frame(peer.ws, Frame.disconnect(self._ids.next(), Status.PEER_GONE, message))

    async def _dismiss(self, tunnel: _Tunnel, conn: _Conn, status: str, message: str, code: int) -> None:
        """The platform ends ``conn``: a disconnect frame saying why, then the close frame."""
        self._detach(tunnel, conn)
        await self._send_frame(conn.ws, Frame.disconnect(self._ids.next(), status, message))
        await self._close_ws(conn.ws, code, message)

    async def _refuse(
        self, tunnel: _Tunnel, conn: _Conn, code: int, reason: str, status: str, peer_message: str
    ) -> None:
        """Close a side that sent something unacceptable, and tell its peer why the side is gone."""
        logger.warning("tunnel %s: closing the %s side (%d): %s", tunnel.tunnel_id, conn.side.label, code, reason)
        self._detach(tunnel, conn)
        peer = tunnel.conns[conn.side.peer]
        if peer is not None:
            await self._send_frame(peer.ws, Frame.disconnect(self._ids.next(), status, peer_message))
        await self._close_ws(conn.ws, code, reason)

    async def _pump(self, tunnel: _Tunnel, conn: _Conn) -> None:
        """Read one side until it ends, relaying each valid frame as the exact text received."""
        ws, label, limit = conn.ws, conn.side.label, self.max_message_bytes
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

    async def _on_ws_error(self, tunnel: _Tunnel, conn: _Conn, exc: object) -> None:
        """aiohttp refused a message itself (and already closed the socket): tell the peer as we would."""
        if not isinstance(exc, WebSocketError):
            logger.debug("tunnel %s: %s connection failed: %r", tunnel.tunnel_id, conn.side.label, exc)
            return  # a dropped connection: the peer hears "peer gone"
        label = conn.side.label
        if exc.code == CloseCode.TOO_BIG:
            status = Status.MESSAGE_TOO_BIG
            message = f"the {label} sent a message over the {self.max_message_bytes}-byte limit"
        else:
            status, message = Status.MALFORMED, f"the {label} broke the WebSocket protocol: {_brief(str(exc))}"
        await self._refuse(tunnel, conn, exc.code, str(exc), status, message)

    async def _route(self, tunnel: _Tunnel, conn: _Conn, frame: Frame, text: str) -> None:
        if frame.op is Op.PING:
            await self._send_frame(conn.ws, Frame(Op.PONG, frame.request_id, None, frame.service_type))
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
        await self._send(peer.ws, text)

    # ------------------------------------------------------------------
    # WebSocket helpers

    def _new_ws(self) -> web.WebSocketResponse:
        # aiohttp's own limit sits well above ours, so oversize messages reach _pump,
        # which closes with a reason and tells the peer.
        return web.WebSocketResponse(
            heartbeat=self.heartbeat,
            max_msg_size=4 * self.max_message_bytes + 1024,
            timeout=_WS_CLOSE_TIMEOUT,
        )

    async def _send(self, ws: web.WebSocketResponse, text: str) -> bool:
        if ws.closed:
            return False
        try:
            await ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("send failed: %r", exc)
            return False
        return True

    async def _send_frame(self, ws: web.WebSocketResponse, frame: Frame) -> bool:
        return await self._send(ws, encode_frame(frame))

    @staticmethod
    async def _close_ws(ws: web.WebSocketResponse, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=code, message=_close_reason(reason))


def _ws_base(request: web.Request) -> str:
    """``ws://host:port`` (or ``wss://``) as the client addressed us."""
    return f"{'wss' if request.secure else 'ws'}://{request.host}"


def _int_query(request: web.Request, name: str, *, default: int, low: int, high: int, code: str) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise PlatformError(400, code, f"{name} must be an integer from {low} to {high}.")
    return value


_HTTP_MESSAGES = {
    404: "No API at {path}.",
    413: "The request body is too large.",
}


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.method} is not allowed on {request.path}; use {allowed}."
    template = _HTTP_MESSAGES.get(exc.status)
    if template is not None:
        return template.format(path=request.path)
    return f"{exc.reason}."


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
        await stopping.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await platform.stop()

"""The platform's records and vocabulary: devices, tunnels, tunnel sides, error codes.

Plain data and the field rules REST and the in-process API share, kept apart from
the code that serves them so every other module of :mod:`tunnelnb.server.platform`
can use them without importing each other.
"""

from __future__ import annotations

import asyncio
import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ...errors import PlatformError
from ...protocol.devicelink import event_time

__all__ = [
    "CLOSED",
    "CONNECTED",
    "DISCONNECTED",
    "OFFLINE",
    "ONLINE",
    "OPEN",
    "Conn",
    "Device",
    "ErrorCode",
    "Side",
    "Tunnel",
    "bad_input",
    "fmt_time",
    "id_field",
    "open_tunnel_of",
    "optional_str",
]


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
    TOO_MANY_CONNECTIONS = "IOTDA.000503"  # 503: too many connections waiting to authenticate (guard.py)

    @staticmethod
    def for_status(status: int) -> str:
        """The generic code of an HTTP error that has no specific one."""
        return f"IOTDA.000{status}"


OPEN, CLOSED = "OPEN", "CLOSED"
CONNECTED, DISCONNECTED = "CONNECTED", "DISCONNECTED"
ONLINE, OFFLINE = "ONLINE", "OFFLINE"

#: Project, device, node and product ids: safe in URL paths (no slash, no leading dot).
_ID_RE = re.compile(r"[A-Za-z0-9_@:-][A-Za-z0-9_.@:-]{0,127}")


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
class Device:
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
    #: The client ids of its authenticated connections to the platform's MQTT broker (.broker).
    mqtt_clients: set[str] = field(default_factory=set)

    @property
    def online(self) -> bool:
        """ONLINE: its device link is open, or an authenticated MQTT connection of it is up."""
        return self.link is not None or bool(self.mqtt_clients)

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
            "create_time": fmt_time(self.create_time),
        }


@dataclass(eq=False)
class Conn:
    """One WebSocket on one side of a tunnel.

    Whoever ends a connection on purpose (eviction, CloseDeviceTunnel, a refused
    message, shutdown) frees its slot first, so the handler's own exit finds the
    slot taken or empty and sends no "peer gone" disconnect on top.
    """

    ws: web.WebSocketResponse
    side: Side


@dataclass(eq=False)
class Tunnel:
    tunnel_id: str
    project_id: str
    device_id: str
    source_token: str = field(repr=False)
    device_token: str = field(repr=False)
    create_time: float
    status: str = OPEN
    closed_time: float | None = None
    conns: dict[Side, Conn | None] = field(default_factory=lambda: dict.fromkeys(Side))
    states: dict[Side, tuple[str, float]] = field(default_factory=dict)
    #: When the device was last sent this tunnel's tunnel_notify (platform clock), and the pending re-check.
    notified_at: float | None = None
    notify_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def token(self, side: Side) -> str:
        return self.source_token if side is Side.SOURCE else self.device_token

    def info(self) -> dict[str, Any]:
        def state(side: Side) -> dict[str, Any]:
            status, when = self.states[side]
            return {"last_update_time": fmt_time(when), "status": status}

        return {
            "tunnel_id": self.tunnel_id,
            "device_id": self.device_id,
            "create_time": fmt_time(self.create_time),
            "closed_time": fmt_time(self.closed_time),
            "status": self.status,
            "source_connect_state": state(Side.SOURCE),
            "device_connect_state": state(Side.DEVICE),
        }


def open_tunnel_of(tunnels: dict[str, Tunnel], device_id: str, *, besides: Tunnel | None = None) -> Tunnel | None:
    """The device's open tunnel among ``tunnels`` other than ``besides`` (there is at most one), or None."""
    return next(
        (t for t in tunnels.values() if t.device_id == device_id and t.status == OPEN and t is not besides),
        None,
    )


def fmt_time(when: float | None) -> str | None:
    """A time (seconds since the epoch) as IoTDA writes it, or None."""
    return None if when is None else event_time(datetime.fromtimestamp(when, UTC))


def bad_input(message: str) -> PlatformError:
    """IoTDA's 400 for a missing or wrong parameter."""
    return PlatformError(400, ErrorCode.INVALID_INPUT, message)


def optional_str(value: Any, name: str, *, max_len: int = 256) -> str | None:
    """``value`` if it is None or a string of at most ``max_len`` characters; else a :func:`bad_input` error."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise bad_input(f"{name} must be a string of at most {max_len} characters.")
    return value


def id_field(value: Any, name: str) -> str:
    """``value`` if it is a valid project, device, node or product id; else a :func:`bad_input` error."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise bad_input(
            f"{name} must be 1 to 128 letters, digits or the characters _ - . : @ (not starting with a dot)."
        )
    return value

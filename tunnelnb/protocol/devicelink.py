"""How a device learns of its tunnels, sans-I/O.

IoTDA tells a device about a new tunnel with an MQTT event on
``$oc/devices/{device_id}/sys/events/down``.  The local platform carries the
very same JSON payload over a simpler *device link*: a WebSocket the device keeps
open at :data:`LINK_PATH`.  The link authenticates the way IoTDA's MQTT login
does, without sending the secret itself:

* header ``X-Device-Timestamp``: UTC time as ``YYYYMMDDHH``;
* header ``X-Device-Password``: hex ``HMAC-SHA256(key=timestamp, msg=device secret)``.

While the link is open the device is ``ONLINE``.  Each text message the platform
sends on it is one events/down payload (see :func:`tunnel_notify`); a newer link
for the same device replaces the older one (close code 4000).

:mod:`tunnelnb.server.mqtt` carries the same payload over MQTT instead, as IoTDA does,
with the same password derivation in the MQTT login.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import ProtocolError

__all__ = [
    "LINK_PATH",
    "TunnelNotify",
    "device_password",
    "link_timestamp",
    "parse_event",
    "tunnel_notify",
]

LINK_PATH = "/tunnelnb/v1/devices/{device_id}/link"
TIMESTAMP_HEADER = "X-Device-Timestamp"
PASSWORD_HEADER = "X-Device-Password"

TUNNEL_SERVICE_ID = "$tunnel_manager"
TUNNEL_NOTIFY = "tunnel_notify"


def link_timestamp(now: datetime | None = None) -> str:
    """The timestamp format of IoTDA's device login: ``YYYYMMDDHH`` in UTC."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H")


def device_password(secret: str, timestamp: str) -> str:
    """IoTDA's device password derivation: HMAC-SHA256 of the secret, keyed by the timestamp."""
    return hmac.new(timestamp.encode(), secret.encode(), hashlib.sha256).hexdigest()


def event_time(now: datetime | None = None) -> str:
    """IoTDA's time format, ``yyyyMMdd'T'HHmmss'Z'``."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def tunnel_notify(tunnel_uri: str, token: str, expires_in: int, when: datetime | None = None) -> dict[str, Any]:
    """The events/down payload IoTDA sends a device when a tunnel is created for it."""
    return {
        "services": [
            {
                "service_id": TUNNEL_SERVICE_ID,
                "event_type": TUNNEL_NOTIFY,
                "event_time": event_time(when),
                "paras": {"tunnel_uri": tunnel_uri, "tunnel_access_token": token, "expires_in": expires_in},
            }
        ]
    }


@dataclass(frozen=True, slots=True)
class TunnelNotify:
    """Where and with which token a device should open its side of a tunnel."""

    tunnel_uri: str
    tunnel_access_token: str
    expires_in: int

    def __repr__(self) -> str:
        return f"TunnelNotify(tunnel_uri={self.tunnel_uri!r}, expires_in={self.expires_in})"


def parse_event(payload: str | bytes | dict[str, Any]) -> list[TunnelNotify]:
    """The tunnel notifications in one events/down payload (other events are ignored).

    Raises :class:`ProtocolError` for a payload that is not an events/down object
    or a ``tunnel_notify`` whose ``paras`` lack the uri or token.
    """
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"device event is not JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError("device event is not JSON: nested too deeply") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("services"), list):
        raise ProtocolError("device event must be an object with a 'services' list")
    notes = []
    for service in payload["services"]:
        if not isinstance(service, dict):
            raise ProtocolError("device event 'services' entries must be objects")
        if service.get("service_id") != TUNNEL_SERVICE_ID or service.get("event_type") != TUNNEL_NOTIFY:
            continue
        paras = service.get("paras")
        if not isinstance(paras, dict):
            raise ProtocolError("tunnel_notify event has no 'paras' object")
        uri, token = paras.get("tunnel_uri"), paras.get("tunnel_access_token")
        if not isinstance(uri, str) or not isinstance(token, str):
            raise ProtocolError("tunnel_notify paras need string tunnel_uri and tunnel_access_token")
        expires = paras.get("expires_in", 0)
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise ProtocolError("tunnel_notify paras.expires_in must be an integer")
        notes.append(TunnelNotify(uri, token, expires))
    return notes

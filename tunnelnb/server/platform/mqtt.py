"""The platform side of IoTDA's MQTT notifications: :class:`PlatformMqtt` and presence checks.

The local platform publishes each ``tunnel_notify`` to the device's events/down topic
with QoS 1, and hears the devices' presence messages, which it believes only when
:func:`verify_presence` accepts their credentials.  The wire format and the presence
pattern are in :mod:`tunnelnb.server.mqttbase`; the device's side is
:mod:`tunnelnb.server.mqtt`.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any

from ...errors import ProtocolError
from ...protocol.devicelink import device_password
from ..mqttbase import (
    CONNECT_TIMEOUT,
    KEEPALIVE,
    PRESENCE_WILDCARD,
    MqttConnection,
    Presence,
    events_down_topic,
    parse_client_id,
    parse_presence,
)

__all__ = ["PlatformMqtt", "verify_presence"]

log = logging.getLogger(__name__)


def verify_presence(presence: Presence, secret: str) -> str | None:
    """None if the message's credentials are right for the device's ``secret``; else why not.

    The platform checks what IoTDA's broker checks in a CONNECT: user name,
    client id and the HMAC password.  Not the timestamp's age: a retained
    message outlives the hour it was made in.
    """
    creds = presence.credentials
    try:
        device_id, _sign_type, stamp = parse_client_id(creds.client_id)
    except ValueError as exc:
        return str(exc)
    if device_id != presence.device_id or creds.username != presence.device_id:
        return "the client id or user name is not the device's"
    expected = device_password(secret, stamp)
    if not hmac.compare_digest(creds.password.lower().encode(), expected.encode()):
        return "wrong password"
    return None


class PlatformMqtt(MqttConnection):
    """The local platform's MQTT connection: publishes tunnel notifications, hears device presence.

    ``on_presence(device_id, presence)`` gets every well-formed presence message
    (retained ones on each (re)connection too); ``on_connected(up)`` is told
    when the broker connection comes up or goes down.  User name and password
    for the broker, if it wants any, come from the URL.
    """

    who = "the platform"

    def __init__(
        self,
        url: str,
        *,
        on_presence: Callable[[Presence], Awaitable[None]],
        on_connected: Callable[[bool], None] = lambda up: None,
        ssl: ssl_module.SSLContext | bool = True,
        reconnect_step: float = 1.0,
        keepalive: int = KEEPALIVE,
    ) -> None:
        super().__init__(url, on_connected=on_connected, ssl=ssl, reconnect_step=reconnect_step, keepalive=keepalive)
        self._on_presence = on_presence

    def _new_client(self) -> Any:
        return self._mqtt.Client(
            self.endpoint.host,
            self.endpoint.port,
            username=self.endpoint.username,
            password=self.endpoint.password,
            identifier=f"tunnelnb-platform-{secrets.token_hex(6)}",
            clean_session=True,
            keepalive=self.keepalive,
            timeout=CONNECT_TIMEOUT,
            tls_context=self._tls,
        )

    async def _on_connect(self, client: Any) -> None:
        await self._subscribe(client, PRESENCE_WILDCARD)

    async def _on_message(self, message: Any) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        if not payload:
            return  # a retained message being cleared
        try:
            presence = parse_presence(str(message.topic), payload)
        except ProtocolError as exc:
            log.warning("ignoring a malformed presence message on %s: %s", message.topic, exc)
            return
        await self._on_presence(presence)

    async def publish_notify(self, device_id: str, payload: str) -> bool:
        """Publish an events/down payload to the device (QoS 1); False if the broker did not take it."""
        return await self.publish(events_down_topic(device_id), payload.encode())

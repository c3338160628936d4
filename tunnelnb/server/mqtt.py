"""The device side of IoTDA's MQTT notifications: :class:`DeviceMqtt`, the agent's connection.

It logs in to the broker with IoTDA's device credentials (:func:`device_credentials`),
hands every ``tunnel_notify`` to the agent, and reconnects with linear back-off.  It
subscribes to nothing, as the C SDK's demo: IoTDA's broker (and the local platform's,
:mod:`tunnelnb.server.platform.broker`) subscribes each device to its own system topics
at connect -- and subscribing too could deliver each notify twice over overlapping
subscriptions.  The wire format and the connection it builds on are in
:mod:`tunnelnb.server.mqttbase`.
"""

from __future__ import annotations

import logging
import ssl as ssl_module
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..errors import ProtocolError
from ..protocol.devicelink import TunnelNotify, device_password, link_timestamp, parse_event
from .mqttbase import CONNECT_TIMEOUT, KEEPALIVE, MqttConnection, MqttCredentials, client_id, events_down_topic

__all__ = ["DeviceMqtt", "device_credentials"]

log = logging.getLogger(__name__)


def device_credentials(
    device_id: str, secret: str, *, now: datetime | None = None, check_timestamp: bool = False
) -> MqttCredentials:
    """IoTDA's MQTT login for ``device_id`` at ``now`` (the current UTC hour when omitted)."""
    stamp = link_timestamp(now)
    return MqttCredentials(
        client_id(device_id, stamp, check_timestamp=check_timestamp), device_id, device_password(secret, stamp)
    )


class DeviceMqtt(MqttConnection):
    """A device's MQTT connection: its tunnel notifications arrive here (see the module docstring).

    ``on_notify`` gets each ``tunnel_notify`` (the agent's notify handling);
    ``on_connected`` is told when the connection comes up or goes down.
    """

    def __init__(
        self,
        url: str,
        device_id: str,
        secret: str,
        *,
        on_notify: Callable[[TunnelNotify], None],
        on_connected: Callable[[bool], None] = lambda up: None,
        check_timestamp: bool = False,
        ssl: ssl_module.SSLContext | bool = True,
        reconnect_step: float = 1.0,
        keepalive: int = KEEPALIVE,
    ) -> None:
        super().__init__(url, on_connected=on_connected, ssl=ssl, reconnect_step=reconnect_step, keepalive=keepalive)
        if self.endpoint.username is not None or self.endpoint.password is not None:
            raise ValueError("a device logs in with its own credentials: remove user:password from the MQTT URL")
        self.device_id = device_id
        self.who = f"device {device_id}"
        self._secret = secret
        self.check_timestamp = check_timestamp
        self._on_notify = on_notify
        self.events_topic = events_down_topic(device_id)

    def _new_client(self) -> Any:
        # Fresh for every connection: the client id and password name the current hour.
        creds = device_credentials(self.device_id, self._secret, check_timestamp=self.check_timestamp)
        return self._mqtt.Client(
            self.endpoint.host,
            self.endpoint.port,
            username=creds.username,
            password=creds.password,
            identifier=creds.client_id,
            clean_session=True,  # as the device SDKs: nothing is queued while the device is away
            keepalive=self.keepalive,
            timeout=CONNECT_TIMEOUT,
            tls_context=self._tls,
        )

    async def _on_message(self, message: Any) -> None:
        topic = str(message.topic)
        if topic != self.events_topic:
            log.debug("device %s: ignoring a message on %s", self.device_id, topic)
            return
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        try:
            notes = parse_event(payload)
        except ProtocolError as exc:
            log.warning("device %s: ignoring a malformed device event: %s", self.device_id, exc)
            return
        for notify in notes:
            self._on_notify(notify)

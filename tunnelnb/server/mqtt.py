"""The device side of IoTDA's MQTT notifications: :class:`DeviceMqtt`, the agent's connection.

It logs in to the broker with IoTDA's device credentials (:func:`device_credentials`),
subscribes to its ``$oc/devices/{device_id}/sys/events/down`` topic, hands every
``tunnel_notify`` to the agent, announces the device's presence (retained ``ONLINE``,
an ``OFFLINE`` will) and reconnects with linear back-off.  The wire format, the
presence pattern and the connection it builds on are in :mod:`tunnelnb.server.mqttbase`;
the platform's side is :mod:`tunnelnb.server.platform.mqtt`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import ssl as ssl_module
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..errors import ProtocolError
from ..protocol.devicelink import TunnelNotify, device_password, link_timestamp, parse_event
from .mqttbase import (
    CONNECT_TIMEOUT,
    KEEPALIVE,
    PUBLISH_TIMEOUT,
    MqttConnection,
    MqttCredentials,
    client_id,
    events_down_topic,
    parse_presence,
    presence_message,
    presence_topic,
)

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
    ``presence=False`` for a real IoTDA broker, which knows who is online.
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
        presence: bool = True,
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
        self.presence = presence
        self._on_notify = on_notify
        self.events_topic = events_down_topic(device_id)
        self.presence_topic = presence_topic(device_id)
        self._session = ""
        self._credentials: MqttCredentials | None = None

    def _new_client(self) -> Any:
        mqtt = self._mqtt
        # Fresh for every connection: the client id and password name the current hour.
        creds = device_credentials(self.device_id, self._secret, check_timestamp=self.check_timestamp)
        self._credentials = creds
        self._session = secrets.token_hex(8)
        will = None
        if self.presence:
            will = mqtt.Will(self.presence_topic, presence_message(False, self._session, creds), qos=1, retain=True)
        return mqtt.Client(
            self.endpoint.host,
            self.endpoint.port,
            username=creds.username,
            password=creds.password,
            identifier=creds.client_id,
            clean_session=True,  # as the device SDKs: nothing is queued while the device is away
            will=will,
            keepalive=self.keepalive,
            timeout=CONNECT_TIMEOUT,
            tls_context=self._tls,
        )

    async def _on_connect(self, client: Any) -> None:
        await self._subscribe(client, self.events_topic)
        if self.presence:
            await self._subscribe(client, self.presence_topic)
            await self._announce(client)

    async def _announce(self, client: Any) -> None:
        assert self._credentials is not None
        payload = presence_message(True, self._session, self._credentials)
        await client.publish(self.presence_topic, payload, qos=1, retain=True, timeout=PUBLISH_TIMEOUT)

    async def _on_message(self, message: Any) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        if topic == self.events_topic:
            try:
                notes = parse_event(payload)
            except ProtocolError as exc:
                log.warning("device %s: ignoring a malformed device event: %s", self.device_id, exc)
                return
            for notify in notes:
                self._on_notify(notify)
        elif topic == self.presence_topic and payload:
            # An OFFLINE of an older connection of ours (a will the broker sent after we were back):
            # say again that we are online, so the retained message tells the truth.
            with contextlib.suppress(ProtocolError):
                presence = parse_presence(topic, payload)
                if not presence.online and presence.session != self._session and self._client is not None:
                    log.info("device %s: an older connection's OFFLINE came late: announcing again", self.device_id)
                    await self._announce(self._client)

    async def stop(self) -> None:
        """Publish OFFLINE (retained), then disconnect cleanly."""
        if self.presence and self._client is not None and self.connected and self._credentials is not None:
            await self.publish(
                self.presence_topic, presence_message(False, self._session, self._credentials), retain=True
            )
        await super().stop()

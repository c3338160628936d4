"""What :class:`.broker.DeviceBroker` needs of amqtt: its plugins, a broker class, a reader, the CONNECT parser.

amqtt loads plugins by dotted path and hands each its ``Config`` (through dacite:
a field typed ``Any`` passes the broker object as it is).  Imported when the broker
starts, so ``import tunnelnb.server.platform`` does not import amqtt.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amqtt.adapters import BufferReader, StreamReaderAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.connect import ConnectPacket
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

if TYPE_CHECKING:
    from .broker import DeviceBroker

__all__ = ["ConnectionReader", "IotdaAuthPlugin", "IotdaBroker", "IotdaTopicPlugin", "parse_connect"]


class IotdaBroker(Broker):
    """amqtt's broker, except that a client may publish to ``$`` topics the topic plugin allows.

    amqtt closes the connection of any client that publishes to a topic starting with
    ``$`` (its reading of MQTT-4.7.2-1, which is about wildcards not matching such
    topics), but every IoTDA device topic is ``$oc/devices/{device_id}/…``: a device
    reporting properties would be disconnected.  Such messages go to the topic plugin
    (:class:`IotdaTopicPlugin`: under the device's own prefix only) and are delivered;
    everything else is amqtt's.

    Also: amqtt looks for retained messages for every subscription in the broker on
    every connect -- each device has one, so a fleet's logins cost O(N²) (1.9 ms of
    CPU per connect at 1,000 devices, 2.9 ms at 2,000: bench/devices_mqtt.py).  IoTDA
    devices publish nothing retained, so with none held there is nothing to look for.
    """

    async def _publish_retained_messages_for_subscription(self, subscription: Any, session: Any) -> None:
        if self._retained_messages:
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> bool:
        message = wait_deliver.result()
        topic = getattr(message, "topic", None)
        if not topic or not topic.startswith("$") or "#" in topic or "+" in topic:
            return bool(await super()._handle_message_delivery(client_session, handler, wait_deliver))
        if await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH):
            await self._broadcast_message(client_session, topic, message.data)  # not retained: IoTDA retains nothing
        else:
            self.logger.info(f"{client_session.client_id} not allowed to publish to {topic}")
        return True


class ConnectionReader(StreamReaderAdapter):
    """amqtt's reader of a connection whose CONNECT was read already (``first``): it reads that first.

    ``last_read`` (the loop's clock) is when data last came: the broker's keep-alive check.
    """

    def __init__(self, reader: asyncio.StreamReader, first: bytes) -> None:
        super().__init__(reader)
        self._first = first
        self._loop = asyncio.get_running_loop()
        self.last_read = self._loop.time()

    async def read(self, n: int = -1) -> bytes:
        if not self._first:
            data = await super().read(n)
        elif n < 0:
            data, self._first = self._first + await super().read(n), b""
        else:
            data, self._first = self._first[:n], self._first[n:]
            if len(data) < n:
                data += await super().read(n - len(data))
        self.last_read = self._loop.time()
        return data


async def parse_connect(raw: bytes) -> ConnectPacket | None:
    """The MQTT 3.1.1 CONNECT packet in ``raw``; None if it is not one (amqtt then answers it as it does)."""
    try:
        packet = await ConnectPacket.from_stream(BufferReader(raw))
    except Exception:
        return None
    if packet.proto_name != "MQTT" or packet.proto_level != 4:
        return None
    return packet


@dataclass
class _Config:
    broker: Any = None  # the DeviceBroker


class IotdaAuthPlugin(BaseAuthPlugin):
    """IoTDA's device login, and the connect/disconnect events that make a device ONLINE/OFFLINE."""

    Config = _Config

    @property
    def _broker(self) -> DeviceBroker:
        broker: DeviceBroker = self.config.broker
        return broker

    async def authenticate(self, *, session: Any) -> bool:
        return self._broker.authenticate(session)

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        await self._broker.connected(client_session)

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Any) -> None:
        self._broker.disconnected(client_session)


class IotdaTopicPlugin(BaseTopicPlugin):
    """A device publishes, subscribes and receives only under its own ``$oc/devices/{device_id}/``."""

    Config = _Config

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None, action: Any = None) -> bool:
        broker: DeviceBroker = self.config.broker
        return broker.may_use(session, topic)

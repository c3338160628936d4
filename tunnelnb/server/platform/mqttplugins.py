"""amqtt's plugins for the platform's broker: thin adapters from amqtt's hooks to :class:`.broker.DeviceBroker`.

amqtt loads plugins by dotted path and hands each its ``Config`` (through dacite:
a field typed ``Any`` passes the broker object as it is).  Imported by amqtt when
the broker starts, so ``import tunnelnb.server.platform`` does not import amqtt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from .broker import own_prefix

if TYPE_CHECKING:
    from .broker import DeviceBroker

__all__ = ["IotdaAuthPlugin", "IotdaTopicPlugin"]


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
        if session is None:  # the platform's own publications
            return True
        device_id = session.username or ""
        return bool(device_id) and topic is not None and topic.startswith(own_prefix(device_id))

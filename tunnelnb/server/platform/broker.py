"""The platform's own MQTT broker: device access as IoTDA's broker does it.

IoTDA is its own MQTT broker, so it knows which devices are connected: a device is
ONLINE while an authenticated MQTT connection of it is up, and it hears its tunnel
notifications without subscribing to anything, because the broker subscribes each
device to its own system topics at connect (huaweicloud-iot-device-sdk-c says so in
``src/base/callback_func.c``; Huawei's "Topic" page lists ``$oc/devices/{device_id}/sys/…``
as subscribed by the platform).  :class:`DeviceBroker` does the same on the local
platform with amqtt, an asyncio MQTT 3.1.1 broker that runs in the platform's event
loop:

* **Login** exactly as IoTDA checks it (:meth:`DeviceAccess.mqtt_login`): client id
  ``{device_id}_0_{0|1}_{YYYYMMDDHH}``, user name = device id, password = hex
  HMAC-SHA256 of the secret keyed by the timestamp; anything else is refused in the
  CONNACK (code 5, not authorised).
* **Topics**: at connect the broker subscribes the device to ``$oc/devices/{id}/sys/#``
  with QoS 1; a device may publish and subscribe only under ``$oc/devices/{its id}/``.
* **Presence**: connect, disconnect and keep-alive expiry (1.5 times the client's
  keep-alive, amqtt's MQTT 3.1.1 rule) are reported to :class:`DeviceAccess`, and
  nothing else makes a device ONLINE.
* **Hygiene**: a connection that has not logged in within ``login_timeout`` seconds
  is closed, and a refused connection leaves nothing behind.

Why amqtt (0.12, 2026): it is maintained, pure Python and asyncio-native, so it
shares the platform's loop and its objects (no second process, no IPC to learn who is
online), and it has the three hooks IoTDA's behaviour needs: an authentication
plugin, a topic-filter plugin and connect/disconnect events.  mosquitto (C, fast)
would need an external auth and presence bridge, which is what the retired presence
messages were; hbmqtt is its unmaintained ancestor; gmqtt and aiomqtt are clients only.
The listeners are tunnelnb's own asyncio servers handed to amqtt as an "external"
listener, so they bind ``port=0``, IPv6 and the platform's TLS context like the
rest of the platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from typing import Any, Protocol

from ...errors import TunnelnbError

__all__ = ["DeviceAccess", "DeviceBroker", "own_prefix", "system_topics"]

logger = logging.getLogger(__name__)

#: The name amqtt knows tunnelnb's listeners by.
_LISTENER = "tunnelnb"
#: Seconds a connection may take to log in before it is closed (a peer that never sends CONNECT).
LOGIN_TIMEOUT = 10.0


def system_topics(device_id: str) -> str:
    """The filter IoTDA subscribes each device to at connect: its own system topics."""
    return f"$oc/devices/{device_id}/sys/#"


def own_prefix(device_id: str) -> str:
    """Where a device may publish and subscribe: under ``$oc/devices/{its id}/``."""
    return f"$oc/devices/{device_id}/"


class DeviceAccess(Protocol):
    """What the broker asks of the platform (:class:`tunnelnb.server.platform.devices.DeviceRegistry`)."""

    def mqtt_login(self, client_id: str, username: str, password: str) -> str | None:
        """The device id if these are a registered device's IoTDA credentials, else None."""

    async def mqtt_connected(self, device_id: str, client_id: str) -> None:
        """An authenticated connection of the device is up (and subscribed to its system topics)."""

    def mqtt_disconnected(self, device_id: str, client_id: str) -> None:
        """That connection is gone (DISCONNECT, a dropped socket, or keep-alive expiry)."""


class DeviceBroker:
    """An amqtt broker serving IoTDA's device access on ``listen`` addresses (see the module docstring).

    ``listen`` is a list of ``(host, port, ssl_context or None)``; ``port=0`` picks a
    free one.  After :meth:`start`, :attr:`urls` are the ``mqtt://`` / ``mqtts://``
    addresses actually bound.
    """

    def __init__(
        self,
        access: DeviceAccess,
        listen: list[tuple[str, int, ssl_module.SSLContext | None]],
        *,
        login_timeout: float = LOGIN_TIMEOUT,
    ) -> None:
        self._access = access
        self._listen = listen
        self.login_timeout = login_timeout
        self.urls: list[str] = []
        self._broker: Any = None
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        #: client id -> device id, for every authenticated connection that is up
        self._online: dict[str, str] = {}
        #: peers (writers) that have not logged in yet
        self._logged_in: set[tuple[str, int]] = set()

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start amqtt and the listeners; TunnelnbError if an address is taken."""
        try:
            from amqtt.broker import Broker
        except ImportError:  # pragma: no cover - amqtt is a dependency
            raise RuntimeError("the platform's MQTT broker needs amqtt: pip install amqtt") from None
        plugins = f"{__package__}.mqttplugins"
        config = {
            # "external": amqtt serves the connections tunnelnb's own servers accept (see _serve).
            "listeners": {"default": {"type": "external", "bind": "127.0.0.1:0"}, _LISTENER: {"type": "external"}},
            # Only these two: amqtt's defaults (anonymous login, $SYS topics, packet logging) stay off.
            "plugins": {
                f"{plugins}.IotdaAuthPlugin": {"broker": self},
                f"{plugins}.IotdaTopicPlugin": {"broker": self},
            },
        }
        self._broker = Broker(config, plugin_namespace=f"tunnelnb.broker.{id(self)}")
        await self._broker.start()
        try:
            for host, port, tls in self._listen:
                try:
                    server = await asyncio.start_server(self._serve, host, port, ssl=tls)
                except OSError as exc:
                    kind = "MQTTS" if tls else "MQTT"
                    flag = "--mqtts-port" if tls else "--mqtt-port"
                    raise TunnelnbError(
                        f"cannot serve {kind} on {host}:{port} ({exc.strerror or exc}): "
                        f"pick another {flag}, 0 for a free one, or --no-mqtt"
                    ) from None
                self._servers.append(server)
                bound = server.sockets[0].getsockname()
                shown = f"[{host}]" if ":" in host else host
                self.urls.append(f"{'mqtts' if tls else 'mqtt'}://{shown}:{bound[1]}")
        except BaseException:
            await self.stop()
            raise
        logger.info("MQTT device access on %s", ", ".join(self.urls))

    async def stop(self) -> None:
        """Close the listeners and every device connection (devices go OFFLINE)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        broker, self._broker = self._broker, None
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for client_id, device_id in list(self._online.items()):
            self._online.pop(client_id, None)
            self._access.mqtt_disconnected(device_id, client_id)
        self.urls = []

    # -- connections ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter

        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        key = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        watchdog = asyncio.get_running_loop().call_later(self.login_timeout, self._expire, key, writer)
        try:
            await self._broker.external_connected(StreamReaderAdapter(reader), StreamWriterAdapter(writer), _LISTENER)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a broken client must not take the broker down
            logger.debug("MQTT connection from %s ended: %r", key, exc)
        finally:
            watchdog.cancel()
            self._logged_in.discard(key)
            self._connections.discard(task)
            writer.close()  # not awaited: this may be a cancelled task

    def _expire(self, key: tuple[str, int], writer: asyncio.StreamWriter) -> None:
        if key not in self._logged_in:
            logger.info("MQTT connection from %s:%s did not log in within %g s: closed", *key, self.login_timeout)
            writer.close()

    # -- amqtt hooks (through the plugins) ------------------------------------------------

    def authenticate(self, session: Any) -> bool:
        device_id = self._access.mqtt_login(session.client_id or "", session.username or "", session.password or "")
        if device_id is None:
            logger.info("MQTT login refused for client id %r", session.client_id)
            # amqtt keeps a refused session in its table; drop it once the CONNACK is out.
            asyncio.get_running_loop().call_soon(self._forget_refused, session)
            return False
        return True

    def _forget_refused(self, session: Any) -> None:
        broker = self._broker
        if broker is None:
            return
        entry = broker._sessions.get(session.client_id)  # amqtt has no public call for this
        if entry is not None and entry[0] is session and session.client_id not in self._online:
            del broker._sessions[session.client_id]

    async def connected(self, session: Any) -> None:
        client_id, device_id = session.client_id, session.username
        self._logged_in.add((str(session.remote_address), int(session.remote_port or 0)))
        self._online[client_id] = device_id
        # IoTDA subscribes the device to its system topics itself, whether or not it subscribes.
        await self._broker.add_subscription((system_topics(device_id), 1), session)
        if self._online.get(client_id) == device_id:  # not gone meanwhile
            await self._access.mqtt_connected(device_id, client_id)

    def disconnected(self, session: Any) -> None:
        client_id = session.client_id
        if session.transitions.is_connected():  # a newer connection took this client id over
            return
        device_id = self._online.pop(client_id, None)
        if device_id is not None:
            self._access.mqtt_disconnected(device_id, client_id)

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish as the platform, QoS 1, to whoever is subscribed."""
        if self._broker is not None:
            await self._broker.internal_message_broadcast(topic, payload, 1)

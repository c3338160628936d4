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
  CONNACK (code 5, not authorised).  The CONNECT is checked before amqtt sees it: amqtt
  files a session under the client id before it asks for authentication, so a refused
  login would stay in its table, or take over (or, asking for a clean session, wipe
  the subscriptions of) the device already connected with that client id.
* **Topics**: at connect the broker subscribes the device to ``$oc/devices/{id}/sys/#``
  with QoS 1; a device may publish and subscribe only under ``$oc/devices/{its id}/``
  (amqtt alone would disconnect a client publishing to any ``$`` topic:
  :class:`.mqttplugins.IotdaBroker`).  A new connection with the client id of one that
  is up replaces it (MQTT-3.1.4-2), and the device stays ONLINE when the old one ends.
* **Presence**: connect, disconnect and keep-alive expiry are reported to
  :class:`DeviceAccess`, and nothing else makes a device ONLINE.  A connection silent
  for 1.5 times its keep-alive is closed (MQTT 3.1.1, 3.1.2.10): tunnelnb does it,
  since amqtt 0.12 only logs the timeout.
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
import os
import ssl as ssl_module
from typing import Any, Protocol

from ...errors import TunnelnbError

__all__ = ["DeviceAccess", "DeviceBroker", "own_prefix", "system_topics"]

logger = logging.getLogger(__name__)

#: The name amqtt knows tunnelnb's listeners by.
_LISTENER = "tunnelnb"
#: Seconds a connection may take to log in before it is closed (a peer that never sends CONNECT).
LOGIN_TIMEOUT = 10.0
#: The largest CONNECT read (a device's is a few hundred bytes; MQTT would allow 256 MiB).
MAX_CONNECT_BYTES = 65536
#: CONNACK: no session present, return code 5 (not authorised).
_NOT_AUTHORIZED = b"\x20\x02\x00\x05"


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
        #: client id -> (amqtt session, device id) of the authenticated connection that is up with it
        self._online: dict[str, tuple[Any, str]] = {}
        #: peer address -> writer, of every logged-in connection (to close one a newer connection replaces)
        self._writers: dict[tuple[str, int], asyncio.StreamWriter] = {}
        #: sessions amqtt refused (see authenticate), by peer address, to remove when their connection ends
        self._refused: dict[tuple[str, int], Any] = {}

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start amqtt and the listeners; TunnelnbError if an address is taken."""
        try:
            from .mqttplugins import IotdaBroker
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
        self._broker = IotdaBroker(config, plugin_namespace=f"tunnelnb.broker.{id(self)}")
        await self._broker.start()
        try:
            for host, port, tls in self._listen:
                try:
                    server = await asyncio.start_server(self._serve, host, port, ssl=tls)
                except OSError as exc:
                    kind = "MQTTS" if tls else "MQTT"
                    flag = "--mqtts-port" if tls else "--mqtt-port"
                    # asyncio's bind error carries errno and a sentence of its own: name the errno only.
                    why = os.strerror(exc.errno) if exc.errno else str(exc)
                    raise TunnelnbError(
                        f"cannot serve {kind} on {host}:{port} ({why}): "
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
        for client_id, (_, device_id) in list(self._online.items()):
            self._online.pop(client_id, None)
            self._access.mqtt_disconnected(device_id, client_id)
        self.urls = []

    # -- connections ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from amqtt.adapters import StreamWriterAdapter

        from .mqttplugins import ConnectionReader, parse_connect

        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        key = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        keep_alive: asyncio.Task[None] | None = None
        try:
            try:
                async with asyncio.timeout(self.login_timeout):
                    first = await _read_packet(reader)
            except TimeoutError:
                logger.info("MQTT connection from %s:%s did not log in within %g s: closed", *key, self.login_timeout)
                return
            except (asyncio.IncompleteReadError, ValueError, OSError) as exc:
                logger.debug("MQTT connection from %s ended before its CONNECT: %r", key, exc)
                return
            connect = await parse_connect(first)
            if connect is not None:  # else not MQTT 3.1.1's CONNECT: amqtt answers it, and keeps nothing
                client_id, user, password = connect.client_id or "", connect.username or "", connect.password or ""
                if self._access.mqtt_login(client_id, user, password) is None:
                    logger.info("MQTT login refused for client id %r", client_id)
                    writer.write(_NOT_AUTHORIZED)
                    with contextlib.suppress(OSError):
                        await writer.drain()
                    return
            adapter = ConnectionReader(reader, first)
            self._writers[key] = writer
            if connect is not None and connect.keep_alive > 0:
                keep_alive = asyncio.create_task(self._keep_alive(adapter, writer, 1.5 * connect.keep_alive, key))
            await self._broker.external_connected(adapter, StreamWriterAdapter(writer), _LISTENER)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a broken client must not take the broker down
            logger.debug("MQTT connection from %s ended: %r", key, exc)
        finally:
            if keep_alive is not None:
                keep_alive.cancel()
            if self._writers.get(key) is writer:
                del self._writers[key]
            refused = self._refused.pop(key, None)
            if refused is not None:
                self._forget_refused(refused)
            self._connections.discard(task)
            writer.close()  # not awaited: this may be a cancelled task

    @staticmethod
    async def _keep_alive(reader: Any, writer: asyncio.StreamWriter, limit: float, key: tuple[str, int]) -> None:
        """Close the connection once nothing has come for ``limit`` seconds (``reader``: a ConnectionReader)."""
        loop = asyncio.get_running_loop()
        while True:
            idle = loop.time() - reader.last_read
            if idle >= limit:
                break
            await asyncio.sleep(limit - idle)  # a deadline that moves with each read: not an Event
        logger.info("MQTT connection from %s:%s silent for %g s (1.5 times its keep-alive): closed", *key, limit)
        writer.close()

    # -- amqtt hooks (through the plugins) ------------------------------------------------

    def authenticate(self, session: Any) -> bool:
        device_id = self._access.mqtt_login(session.client_id or "", session.username or "", session.password or "")
        if device_id is None:
            # Rare: _serve checked this CONNECT already (the clock or the device changed since).
            logger.info("MQTT login refused for client id %r", session.client_id)
            # amqtt keeps a refused session in its table; _serve drops it when the connection ends.
            self._refused[_peer(session)] = session
            return False
        return True

    def _forget_refused(self, session: Any) -> None:
        broker = self._broker
        if broker is None:
            return
        entry = broker._sessions.get(session.client_id)  # amqtt has no public call for this
        if entry is not None and entry[0] is session:
            del broker._sessions[session.client_id]

    async def connected(self, session: Any) -> None:
        client_id, device_id = session.client_id, session.username
        old = self._online.get(client_id)
        self._online[client_id] = (session, device_id)
        if old is not None and old[0] is not session:
            # A new connection with the client id of one that is up replaces it (MQTT-3.1.4-2): a
            # device back before the broker noticed its old connection was gone.  amqtt has
            # dropped the old session (clean session) but not its connection: close that.
            writer = self._writers.get(_peer(old[0]))
            if writer is not None:
                logger.info("MQTT client %s connected again: its older connection is closed", client_id)
                writer.close()
        # IoTDA subscribes the device to its system topics itself, whether or not it subscribes.
        await self._broker.add_subscription((system_topics(device_id), 1), session)
        if (self._online.get(client_id) or (None,))[0] is session:  # not gone meanwhile
            await self._access.mqtt_connected(device_id, client_id)

    @staticmethod
    def may_use(session: Any, topic: str | None) -> bool:
        """Whether ``session`` may publish, subscribe or receive on ``topic``: under its device's own prefix.

        ``session`` None is the platform's own publications: anywhere.
        """
        if session is None:
            return True
        device_id = session.username or ""
        return bool(device_id) and topic is not None and topic.startswith(own_prefix(device_id))

    def disconnected(self, session: Any) -> None:
        client_id = session.client_id
        current = self._online.get(client_id)
        if current is None or current[0] is not session:  # a newer connection replaced this one
            return
        if session.transitions.is_connected():  # a newer connection took this (persistent) session over
            return
        del self._online[client_id]
        self._access.mqtt_disconnected(current[1], client_id)

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish as the platform, QoS 1, to whoever is subscribed."""
        if self._broker is not None:
            await self._broker.internal_message_broadcast(topic, payload, 1)


def _peer(session: Any) -> tuple[str, int]:
    """The address of an amqtt session's connection, as :meth:`DeviceBroker._serve` keys it."""
    return str(session.remote_address), int(session.remote_port or 0)


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    """One MQTT control packet, whole (fixed header included); ValueError if it is malformed or too large."""
    head = await reader.readexactly(1)
    length = 0
    for i in range(4):  # the remaining length: a variable-length integer of at most 4 bytes
        byte = await reader.readexactly(1)
        head += byte
        length += (byte[0] & 0x7F) << (7 * i)
        if not byte[0] & 0x80:
            break
    else:
        raise ValueError("malformed remaining length")
    if length > MAX_CONNECT_BYTES:
        raise ValueError(f"a first packet of {length} bytes")
    return head + await reader.readexactly(length)

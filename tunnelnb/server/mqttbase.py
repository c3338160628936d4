"""What the device's MQTT connection needs (``pip install 'tunnelnb[mqtt]'``): topics, client ids, the broker URL.

IoTDA tells a device about a new tunnel with an MQTT message on
``$oc/devices/{device_id}/sys/events/down`` (the payload of
:func:`tunnelnb.protocol.devicelink.tunnel_notify`).  The agent's
:class:`tunnelnb.server.mqtt.DeviceMqtt` reaches IoTDA's broker, or the local
platform's own (:mod:`tunnelnb.server.platform.broker`), which checks the same
credentials; both use what this module holds: the topics, IoTDA's client ids, the
broker URL, and :class:`MqttConnection`, one broker connection kept up with linear
back-off.

**Credentials** (checked against the official device SDKs:
huaweicloud-iot-device-sdk-c ``src/base/mqtt_base.c`` and ``hmac_sha256.c``,
huaweicloud-iot-device-sdk-python ``iot_device_sdk_python/utils/iot_util.py``):

* client id ``{device_id}_0_{sign_type}_{YYYYMMDDHH}``: ``0`` is the identity type
  (a device id), the sign type is ``0`` (the platform checks the password only;
  the C SDK's default) or ``1`` (it also checks the timestamp against its clock;
  the Python SDK's default), and the timestamp is the UTC hour;
* user name: the device id;
* password: hex HMAC-SHA256 of the device secret keyed by that timestamp -- the
  derivation the device link uses too (:func:`tunnelnb.protocol.devicelink.device_password`).

**Online** is the broker's view of the device's connection: IoTDA's, or the local
platform's broker, which knows who is connected.  (Before, the local platform sat
beside a stock broker and believed "presence" messages the agent published; a real
device SDK publishes none, so that is gone.)

``aiomqtt`` (on paho-mqtt) is imported only when a client is created, so
``import tunnelnb`` does not need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import BrokerAuthError, PlatformUnreachable, TunnelnbError

__all__ = [
    "CONNECT_TIMEOUT",
    "EVENTS_DOWN_TOPIC",
    "KEEPALIVE",
    "BrokerUnreachable",
    "MqttConnection",
    "MqttCredentials",
    "MqttEndpoint",
    "client_id",
    "events_down_topic",
    "parse_client_id",
    "parse_mqtt_url",
]

log = logging.getLogger(__name__)

EVENTS_DOWN_TOPIC = "$oc/devices/{device_id}/sys/events/down"
#: Seconds between MQTT PINGREQs; the broker drops a client silent for 1.5 times this.
KEEPALIVE = 60
#: How long one connection attempt (TCP, TLS, CONNACK) may take.
CONNECT_TIMEOUT = 10.0
_STAMP_RE = re.compile(r"\d{10}")
#: CONNACK codes that mean "wrong credentials": MQTT 3.1.1's 4 and 5, and their MQTT 5 reason codes.
_AUTH_CODES = frozenset({4, 5, 0x86, 0x87, 0x8C})


class BrokerUnreachable(PlatformUnreachable):
    """No MQTT broker answers at the given address (or it did not answer in time)."""


# ---------------------------------------------------------------------------
# Credentials (sans-I/O)


def client_id(device_id: str, timestamp: str, *, check_timestamp: bool = False) -> str:
    """IoTDA's MQTT client id for a device logging in with its secret: ``{device_id}_0_{0|1}_{timestamp}``."""
    return f"{device_id}_0_{1 if check_timestamp else 0}_{timestamp}"


def parse_client_id(value: str) -> tuple[str, str, str]:
    """``(device_id, sign_type, timestamp)`` of a client id made by :func:`client_id`; ValueError otherwise."""
    parts = value.rsplit("_", 3)
    if len(parts) != 4 or not parts[0] or parts[1] != "0" or parts[2] not in ("0", "1"):
        raise ValueError(f"not an IoTDA device client id: {value!r}")
    if not _STAMP_RE.fullmatch(parts[3]):
        raise ValueError(f"the client id's timestamp is not YYYYMMDDHH: {value!r}")
    return parts[0], parts[2], parts[3]


@dataclass(frozen=True, slots=True)
class MqttCredentials:
    """What a device puts in its MQTT CONNECT."""

    client_id: str
    username: str
    password: str = field(repr=False)


# ---------------------------------------------------------------------------
# Broker address


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where the broker is: ``mqtt://[user:password@]host[:port]`` (1883) or ``mqtts://…`` (8883, TLS)."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The address without credentials, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """Parse a broker URL; ValueError with a clear message if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not an MQTT broker URL: {url!r} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"an MQTT broker URL looks like mqtt://HOST[:PORT] or mqtts://HOST[:PORT], not {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an MQTT broker URL has no path, query or fragment: {url!r}")
    tls = scheme == "mqtts"
    return MqttEndpoint(
        host=parts.hostname,
        port=port if port is not None else (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _tls_context(endpoint: MqttEndpoint, ssl: ssl_module.SSLContext | bool) -> ssl_module.SSLContext | None:
    """The TLS context for ``mqtts://``: ``True`` verifies against the system CAs, ``False`` does not verify."""
    if not endpoint.tls:
        return None
    if isinstance(ssl, ssl_module.SSLContext):
        return ssl
    context = ssl_module.create_default_context()
    if not ssl:
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
    return context


def events_down_topic(device_id: str) -> str:
    """Where IoTDA publishes a device's events, ``tunnel_notify`` among them."""
    return EVENTS_DOWN_TOPIC.format(device_id=device_id)


# ---------------------------------------------------------------------------
# Connections (aiomqtt, imported on first use)


def _aiomqtt() -> Any:
    try:
        import aiomqtt
    except ImportError:
        raise TunnelnbError("MQTT needs the optional package aiomqtt: pip install 'tunnelnb[mqtt]'") from None
    return aiomqtt


def _connect_error(exc: Exception, endpoint: MqttEndpoint, who: str) -> TunnelnbError:
    """A clear error for a failed connection attempt."""
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if isinstance(code, int) and code in _AUTH_CODES:
        return BrokerAuthError(f"the MQTT broker at {endpoint.url} refused {who} ({rc}): check the credentials")
    reason = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        detail = reason.split("certificate verify failed:", 1)[-1].split("(_ssl.c", 1)[0].strip()
        return BrokerUnreachable(
            f"the MQTT broker at {endpoint.url}: its TLS certificate is not trusted ({detail}): "
            "give its CA bundle (--ca-bundle)"
        )
    return BrokerUnreachable(f"cannot reach the MQTT broker at {endpoint.url}: {reason}")


class MqttConnection:
    """One aiomqtt client per connection, reconnected with linear back-off (the device's side: :mod:`.mqtt`)."""

    who = "the client"

    def __init__(
        self,
        url: str,
        *,
        on_connected: Callable[[bool], None],
        ssl: ssl_module.SSLContext | bool,
        reconnect_step: float,
        keepalive: int,
    ) -> None:
        self._mqtt = _aiomqtt()
        self._on_connected = on_connected
        self.endpoint = parse_mqtt_url(url)
        self._tls = _tls_context(self.endpoint, ssl)
        self.reconnect_step = reconnect_step
        self.keepalive = keepalive
        self.connected = False
        self.connects = 0
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- to be provided -----------------------------------------------------------

    def _new_client(self) -> Any:
        raise NotImplementedError

    async def _on_message(self, message: Any) -> None:
        raise NotImplementedError

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self._on_connected(up)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The background task that keeps the connection (None before start and after stop)."""
        return self._task

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (raising BrokerUnreachable or BrokerAuthError), then keep connected in the background."""
        if self._task is not None:
            return
        self._stopping = False
        client = await self._connect()
        self._task = asyncio.create_task(self._run(client), name=f"tunnelnb-mqtt-{self.who}")

    async def stop(self) -> None:
        """Disconnect cleanly (a DISCONNECT: the broker publishes no will) and stop reconnecting."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _connect(self) -> Any:
        client = self._new_client()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.__aenter__()
        except TimeoutError:
            raise BrokerUnreachable(f"the MQTT broker at {self.endpoint.url} did not answer in time") from None
        except self._mqtt.MqttError as exc:
            raise _connect_error(exc, self.endpoint, self.who) from None
        self._client = client
        self.connects += 1
        self._set_connected(True)
        log.info("%s connected to the MQTT broker at %s", self.who, self.endpoint.url)
        return client

    @staticmethod
    async def _close(client: Any) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await client.__aexit__(None, None, None)

    async def _run(self, client: Any | None) -> None:
        attempt = 0
        while True:
            if client is not None:
                attempt = 0
                try:
                    async for message in client.messages:
                        try:
                            await self._on_message(message)
                        except Exception:  # a bug must not take the connection down
                            log.exception("%s: failed to handle an MQTT message", self.who)
                    reason = "the broker closed the connection"
                except self._mqtt.MqttError as exc:
                    cause = exc.__cause__ or exc
                    reason = str(cause) or type(cause).__name__
                finally:
                    self._client = None
                    self._set_connected(False)
                    await self._close(client)
                if self._stopping:
                    return
                log.warning("%s lost the MQTT broker at %s (%s): reconnecting", self.who, self.endpoint.url, reason)
            attempt += 1
            await asyncio.sleep(self.reconnect_step * min(attempt, 10))
            try:
                client = await self._connect()
            except Exception as exc:  # keep trying, whatever it was: the device must come back by itself
                client = None
                log.warning("%s: MQTT reconnect %d failed: %s", self.who, attempt, exc)

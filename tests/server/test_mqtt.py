"""Device access over MQTT: the platform's own broker (amqtt, in the platform's event loop).

Devices log in as on IoTDA (client id ``{device_id}_0_{0|1}_{YYYYMMDDHH}``, user name
the device id, password the HMAC of the secret keyed by the timestamp), are ONLINE
while connected, and hear their ``tunnel_notify`` on ``$oc/devices/{id}/sys/events/down``
without subscribing to anything.  The broker's behaviour is checked with paho-mqtt (a
client nobody here wrote) and with MQTT 3.1.1 packets built by hand; the whole path
with the agent (:class:`tunnelnb.server.agent.Agent`) and the ``tunnelnb`` command.
Every platform binds free loopback ports, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import SSH_PASSWORD, SSH_USER
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import PlatformError
from tunnelnb.server.agent import Agent
from tunnelnb.server.mqtt import device_credentials
from tunnelnb.server.mqttbase import BrokerUnreachable, MqttCredentials, client_id, parse_client_id, parse_mqtt_url
from tunnelnb.server.platform import Platform

API_TOKEN = "mqtt-test-token"
WAIT = 15.0  # upper bound of every wait; the happy paths take milliseconds


# ---------------------------------------------------------------------------
# Credentials and URLs, without a broker


def test_credentials_match_values_computed_independently() -> None:
    # Expected passwords from OpenSSL: printf '%s' SECRET | openssl dgst -sha256 -hmac TIMESTAMP
    when = datetime(2024, 1, 2, 3, 59, 59, tzinfo=UTC)
    creds = device_credentials("5f4e_node-1", "s3cr3t-Key!", now=when)
    assert creds == MqttCredentials(
        client_id="5f4e_node-1_0_0_2024010203",
        username="5f4e_node-1",
        password="0a85e2b5437d12171163b633bcd75b21261d709095a212e38ba3e46f738f6af1",
    )
    assert "0a85e2" not in repr(creds)  # the password never shows in a repr
    # Sign type 1 (the platform checks the timestamp too) changes the client id only.
    checked = device_credentials("5f4e_node-1", "s3cr3t-Key!", now=when, check_timestamp=True)
    assert checked.client_id == "5f4e_node-1_0_1_2024010203"
    assert checked.password == creds.password
    # The timestamp is the UTC hour, whatever the local zone: 07:30 at UTC+8 is 23:30 UTC the day before.
    east = datetime(2026, 1, 1, 7, 30, tzinfo=timezone(timedelta(hours=8)))
    other = device_credentials("dev-1", "device-secret", now=east)
    assert other.client_id == "dev-1_0_0_2025123123"
    assert other.password == "5d41f663a9469f19623ccc50a7bc8bce6ace5bd1b3aff5102f96bd5f92ed7ca0"
    assert client_id("dev-1", "2025123123", check_timestamp=True) == "dev-1_0_1_2025123123"


def test_parse_client_id() -> None:
    assert parse_client_id("prod_node_1_0_0_2024010203") == ("prod_node_1", "0", "2024010203")
    assert parse_client_id("dev-1_0_1_2025123123") == ("dev-1", "1", "2025123123")
    for bad in ("dev-1", "dev-1_0_2_2024010203", "dev-1_1_0_2024010203", "dev-1_0_0_20240102", "_0_0_2024010203"):
        with pytest.raises(ValueError):
            parse_client_id(bad)


def test_parse_mqtt_url() -> None:
    plain = parse_mqtt_url("mqtt://127.0.0.1")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("127.0.0.1", 1883, False, None)
    tls = parse_mqtt_url("mqtts://iot-mqtts.example.com")
    assert (tls.port, tls.tls, tls.url) == (8883, True, "mqtts://iot-mqtts.example.com:8883")
    auth = parse_mqtt_url("mqtt://plat%40form:p%3Ass@[::1]:1884/")
    assert (auth.host, auth.port, auth.username, auth.password) == ("::1", 1884, "plat@form", "p:ss")
    assert auth.url == "mqtt://[::1]:1884" and "p:ss" not in repr(auth)
    for bad in ("http://127.0.0.1:1883", "mqtt://", "127.0.0.1:1883", "mqtt://h:99999", "mqtt://h/topic"):
        with pytest.raises(ValueError):
            parse_mqtt_url(bad)


def test_importing_tunnelnb_needs_neither_aiomqtt_nor_amqtt() -> None:
    # The agent's MQTT client (aiomqtt) is optional; the platform's broker (amqtt) is imported when it starts.
    script = """
import asyncio, sys
sys.modules["aiomqtt"] = None  # as if it were not installed
import tunnelnb, tunnelnb.server.agent, tunnelnb.server.platform, tunnelnb.server.mqtt
assert "paho" not in sys.modules and "paho.mqtt" not in sys.modules
assert not [m for m in sys.modules if m == "amqtt" or m.startswith("amqtt.")], "amqtt imported"
print(tunnelnb.server.mqtt.device_credentials("d", "s").username)
from tunnelnb.errors import TunnelnbError
async def main():
    try:
        await tunnelnb.server.agent.Agent("", "d", "s", mqtt_url="mqtt://127.0.0.1:9").start()
    except TunnelnbError as exc:
        print("error:", exc)
    # The platform's broker does not need the agent's client library.
    async with tunnelnb.server.platform.Platform(mqtt_port=0, heartbeat=None) as platform:
        print(platform.mqtt_urls[0].split(":")[0], "amqtt" in sys.modules)
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "d",
        "error: MQTT needs the optional package aiomqtt: pip install 'tunnelnb[mqtt]'",
        "mqtt True",
    ]


# ---------------------------------------------------------------------------
# Helpers: the platform, paho-mqtt in a thread, MQTT packets by hand


@contextlib.asynccontextmanager
async def _platform(**kwargs: Any) -> AsyncIterator[tuple[Platform, PlatformAPI]]:
    kwargs.setdefault("mqtt_port", 0)
    async with Platform(api_token=API_TOKEN, heartbeat=None, **kwargs) as platform:
        async with PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=API_TOKEN) as api:
            yield platform, api


def _address(platform: Platform) -> tuple[str, int]:
    (url,) = platform.mqtt_urls
    endpoint = parse_mqtt_url(url)
    return endpoint.host, endpoint.port


@contextlib.asynccontextmanager
async def _agent(url: str, device_id: str, secret: str, ssh_port: int, **kwargs: Any) -> AsyncIterator[Agent]:
    agent = Agent("", device_id, secret, mqtt_url=url, ssh_port=ssh_port, heartbeat=None, **kwargs)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


async def _until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> float:
    """Wait until ``predicate()``; the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def _status(platform: Platform, device_id: str) -> str:
    return platform.devices[device_id]["status"]


def _away_from_the_hour_change() -> None:
    """The IoTDA password changes with the UTC hour: don't start a login test in its last seconds."""
    now = datetime.now(UTC)
    if now.minute == 59 and now.second >= 50:
        time.sleep(61 - now.second)


class Paho:
    """paho-mqtt 2 (MQTT 3.1.1) in its own network thread; the test's event loop (which runs the broker) polls it.

    ``connack`` is the reason code of the CONNACK (paho reports MQTT 3.1.1's return
    codes as MQTT 5 reason codes: 5 "not authorised" is ``Not authorized``, 135);
    ``messages`` are ``(topic, payload, monotonic time)``; ``subacks`` the granted
    QoS or failure (0x80) per subscription, by message id.
    """

    def __init__(self, creds: MqttCredentials, *, keepalive: int = 60, clean_session: bool = True) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client_id = creds.client_id
        self.keepalive = keepalive
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
            reconnect_on_failure=False,  # one connection per client: what the test made
        )
        self.client.username_pw_set(creds.username, creds.password)
        self.connack: Any = None
        self.messages: list[tuple[str, bytes, float]] = []
        self.subacks: dict[int, list[int]] = {}
        self.published: set[int] = set()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = lambda *args: self.disconnected.set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack = reason

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.messages.append((message.topic, bytes(message.payload), time.monotonic()))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        self.subacks[mid] = [r.value for r in reasons]

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.published.add(mid)

    async def connect(self, address: tuple[str, int]) -> Any:
        """Connect (in paho's thread) and wait for the CONNACK; its reason code."""
        self.client.connect_async(address[0], address[1], keepalive=self.keepalive)
        self.client.loop_start()
        await _until(lambda: self.connack is not None, f"a CONNACK for {self.client_id!r}")
        return self.connack

    async def subscribe(self, topic: str) -> list[int]:
        """Subscribe with QoS 1; what the SUBACK says (1 granted, 0x80 refused)."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        await _until(lambda: mid in self.subacks, f"the SUBACK for {topic!r}")
        return self.subacks[mid]

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the PUBACK."""
        info = self.client.publish(topic, payload, qos=1)
        await _until(lambda: info.mid in self.published, f"the PUBACK for {topic!r}")

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.asynccontextmanager
async def _paho(address: tuple[str, int], creds: MqttCredentials, **kwargs: Any) -> AsyncIterator[Paho]:
    """A paho client logged in with ``creds`` (asserts the CONNACK accepted it)."""
    client = Paho(creds, **kwargs)
    try:
        reason = await client.connect(address)
        assert (reason.value, str(reason)) == (0, "Success")
        yield client
    finally:
        client.close()


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    """An MQTT control packet: fixed header (remaining length as a variable-length integer) and body."""
    length, n = b"", len(body)
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([first_byte]) + length + body


def connect_packet(creds: MqttCredentials, *, keepalive: int = 60, password: str | None = None) -> bytes:
    """MQTT 3.1.1 CONNECT (clean session, user name and password), built from the specification by hand."""
    flags = 0x02 | 0x80 | 0x40
    variable = _utf8("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    payload = _utf8(creds.client_id) + _utf8(creds.username) + _utf8(password or creds.password)
    return _packet(0x10, variable + payload)


async def _raw_connect(
    address: tuple[str, int], creds: MqttCredentials, **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A TCP connection that sent a hand-made CONNECT: reader, writer and the 4 bytes of the CONNACK."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(connect_packet(creds, **kwargs))
    await writer.drain()
    connack = await asyncio.wait_for(reader.readexactly(4), WAIT)
    return reader, writer, connack


async def _eof_within(reader: asyncio.StreamReader, timeout: float) -> float:
    """Seconds until the server closes the connection (AssertionError if it does not within ``timeout``)."""
    started = time.monotonic()
    try:
        rest = await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        raise AssertionError(f"the broker kept the connection open for {timeout:g} s") from None
    except ConnectionResetError:
        rest = b""
    assert rest == b""
    return time.monotonic() - started


ACCEPTED = b"\x20\x02\x00\x00"  # CONNACK: no session present, connection accepted
NOT_AUTHORIZED = b"\x20\x02\x00\x05"  # CONNACK: return code 5, not authorised


def _notifies(spy: Paho, device_id: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in spy.messages if t == f"$oc/devices/{device_id}/sys/events/down"]


def _tunnel_of(event: dict[str, Any]) -> str:
    uri = event["services"][0]["paras"]["tunnel_uri"]
    m = re.fullmatch(r"ws://127\.0\.0\.1:\d+/v5/iot/tunnels/([^/]+)/device-connect", uri)
    assert m, uri
    return m.group(1)


# ---------------------------------------------------------------------------
# The broker, seen by paho-mqtt and by hand-made packets


async def test_a_device_that_subscribes_to_nothing_gets_one_notify_per_tunnel() -> None:
    _away_from_the_hour_change()
    grace = 3.0
    async with _platform(notify_grace=grace) as (platform, api):
        platform.add_device("dev-n", "dev-n-secret")
        creds = device_credentials("dev-n", "dev-n-secret")
        async with _paho(_address(platform), creds) as device:  # it never sends SUBSCRIBE
            await _until(lambda: _status(platform, "dev-n") == "ONLINE", "dev-n online")
            grant = await api.add_tunnel("dev-n")
            app = await api.open_tunnel_socket(grant, heartbeat=None)  # the application waits for the device
            try:
                await asyncio.sleep(1.0)  # well inside the grace period
                assert device.topics() == ["$oc/devices/dev-n/sys/events/down"]
                (event,) = _notifies(device, "dev-n")
                assert list(event) == ["services"]
                (service,) = event["services"]
                assert set(service) == {"service_id", "event_type", "event_time", "paras"}
                assert (service["service_id"], service["event_type"]) == ("$tunnel_manager", "tunnel_notify")
                assert re.fullmatch(r"\d{8}T\d{6}Z", service["event_time"]), service["event_time"]
                paras = service["paras"]
                assert set(paras) == {"tunnel_uri", "tunnel_access_token", "expires_in"}
                ws_base = "ws" + platform.base_url.removeprefix("http")
                assert paras["tunnel_uri"] == f"{ws_base}/v5/iot/tunnels/{grant.tunnel_id}/device-connect"
                assert isinstance(paras["tunnel_access_token"], str) and paras["tunnel_access_token"]
                assert paras["tunnel_access_token"] != grant.token  # the device side has its own token
                assert isinstance(paras["expires_in"], int) and 0 < paras["expires_in"] <= 86400

                # The device has not joined and the application still waits: one more after the grace period.
                await _until(lambda: len(device.messages) == 2, "the second notify", grace + WAIT)
                first, second = (when for _, _, when in device.messages)
                assert second - first >= grace - 0.1  # not before the grace period is over
                assert _tunnel_of(_notifies(device, "dev-n")[1]) == grant.tunnel_id
                await asyncio.sleep(grace * 0.6)
                assert len(device.messages) == 2  # and no other within the next grace period
            finally:
                await app.close()
            await api.close_tunnel(grant.tunnel_id)
            await api.delete_tunnel(grant.tunnel_id)
            before = len(device.messages)  # a third notify of the first tunnel may have raced the close

            # A second tunnel: a notify of its own, exactly one within the grace period.
            second_grant = await api.add_tunnel("dev-n")
            app = await api.open_tunnel_socket(second_grant, heartbeat=None)
            try:
                await _until(lambda: len(device.messages) > before, "the second tunnel's notify")
                await asyncio.sleep(1.0)
                later = [_tunnel_of(e) for e in _notifies(device, "dev-n")[before:]]
                assert later == [second_grant.tunnel_id]
            finally:
                await app.close()


async def test_logins_other_than_iotda_credentials_are_refused() -> None:
    _away_from_the_hour_change()
    async with _platform() as (platform, _api):
        platform.add_device("dev-a", "dev-a-secret")
        address = _address(platform)
        good = device_credentials("dev-a", "dev-a-secret")
        stamp = good.client_id.rsplit("_", 1)[1]
        five_hours_ago = datetime.now(UTC) - timedelta(hours=5)
        refused = {
            "wrong password": device_credentials("dev-a", "not-the-secret"),
            "wrong user name": MqttCredentials(good.client_id, "dev-b", good.password),
            "client id not IoTDA's": MqttCredentials("dev-a", "dev-a", good.password),
            "client id of another device": MqttCredentials(f"dev-b_0_0_{stamp}", "dev-a", good.password),
            "unknown device": device_credentials("ghost", "dev-a-secret"),
            "sign type 1, 5 hours old": device_credentials(
                "dev-a", "dev-a-secret", now=five_hours_ago, check_timestamp=True
            ),
        }
        for what, creds in refused.items():
            client = Paho(creds)
            try:
                reason = await client.connect(address)
                # The broker answers return code 5 ("not authorised", MQTT 3.1.1), which paho
                # reports as the MQTT 5 reason code 135 "Not authorized".
                assert (reason.value, str(reason), reason.is_failure) == (135, "Not authorized", True), what
                await _until(client.disconnected.is_set, f"the broker to close the refused connection ({what})")
            finally:
                client.close()
            assert _status(platform, "dev-a") == "OFFLINE", what
        # The bytes on the wire: CONNACK return code 5, then the connection is closed.
        reader, writer, connack = await _raw_connect(address, good, password="0" * 64)
        try:
            assert connack == NOT_AUTHORIZED
            await _eof_within(reader, WAIT)
        finally:
            writer.close()

        accepted = {
            "sign type 0": good,
            "sign type 1, this hour": device_credentials("dev-a", "dev-a-secret", check_timestamp=True),
            "sign type 0, 5 hours old (only sign type 1 checks the time)": device_credentials(
                "dev-a", "dev-a-secret", now=five_hours_ago
            ),
        }
        for what, creds in accepted.items():
            async with _paho(address, creds):
                await _until(lambda: _status(platform, "dev-a") == "ONLINE", f"dev-a online ({what})")
            await _until(lambda: _status(platform, "dev-a") == "OFFLINE", f"dev-a offline after {what}")


async def test_refused_logins_leave_nothing_in_the_broker() -> None:
    _away_from_the_hour_change()
    async with _platform() as (platform, _api):
        platform.add_device("dev-s", "dev-s-secret")
        address = _address(platform)
        # amqtt's session table is private; it is where a refused login used to stay behind
        # (a slow leak a stranger could grow), and there is no public way to look.
        sessions = platform._registry.broker._broker._sessions  # type: ignore[union-attr]

        async def refused(i: int) -> None:
            creds = device_credentials(f"dev-s{i % 3 or ''}", "wrong" if i % 2 else "dev-s-secret")
            if i % 3 == 0:
                creds = MqttCredentials(creds.client_id, creds.username, "f" * 64)
            reader, writer, connack = await _raw_connect(address, creds)
            try:
                assert connack == NOT_AUTHORIZED
                await _eof_within(reader, WAIT)
            finally:
                writer.close()

        for batch in range(5):
            await asyncio.gather(*(refused(batch * 10 + i) for i in range(10)))
        await asyncio.sleep(0.2)
        assert dict(sessions) == {}
        assert _status(platform, "dev-s") == "OFFLINE"


async def test_a_refused_login_with_an_online_devices_client_id_does_not_disturb_it() -> None:
    _away_from_the_hour_change()
    async with _platform() as (platform, api):
        platform.add_device("dev-t", "dev-t-secret")
        address = _address(platform)
        creds = device_credentials("dev-t", "dev-t-secret")
        async with _paho(address, creds) as device:
            await _until(lambda: _status(platform, "dev-t") == "ONLINE", "dev-t online")
            for clean in (True, False):  # whether the intruder asks for a clean session or not
                intruder = Paho(MqttCredentials(creds.client_id, creds.username, "0" * 64), clean_session=clean)
                try:
                    reason = await intruder.connect(address)
                    assert str(reason) == "Not authorized"
                    await _until(intruder.disconnected.is_set, "the intruder's connection to be closed")
                finally:
                    intruder.close()
            await asyncio.sleep(0.2)
            assert _status(platform, "dev-t") == "ONLINE"
            assert not device.disconnected.is_set()
            # Still subscribed to its system topics: it hears its tunnel.
            grant = await api.add_tunnel("dev-t")
            await _until(lambda: len(device.messages) == 1, "dev-t's notify")
            assert _tunnel_of(_notifies(device, "dev-t")[0]) == grant.tunnel_id


async def test_a_new_connection_with_the_same_client_id_replaces_the_older_one() -> None:
    # A device back (rebooted, or its network changed) before the broker noticed its
    # old connection was gone logs in again with the same client id within the hour.
    _away_from_the_hour_change()
    async with _platform() as (platform, api):
        platform.add_device("dev-r", "dev-r-secret")
        address = _address(platform)
        creds = device_credentials("dev-r", "dev-r-secret")
        old_reader, old_writer, connack = await _raw_connect(address, creds)
        try:
            assert connack == ACCEPTED
            await _until(lambda: _status(platform, "dev-r") == "ONLINE", "dev-r online")
            async with _paho(address, creds) as device:
                took = await _eof_within(old_reader, 5)  # MQTT-3.1.4-2: the broker closes the older one
                assert took < 2
                await asyncio.sleep(0.2)
                # The old connection's end does not take the device OFFLINE: the new one is up.
                assert _status(platform, "dev-r") == "ONLINE"
                grant = await api.add_tunnel("dev-r")
                await _until(lambda: len(device.messages) == 1, "dev-r's notify on its new connection")
                assert _tunnel_of(_notifies(device, "dev-r")[0]) == grant.tunnel_id
        finally:
            old_writer.close()
        await _until(lambda: _status(platform, "dev-r") == "OFFLINE", "dev-r offline after DISCONNECT", 5)


async def test_offline_follows_the_connection() -> None:
    _away_from_the_hour_change()
    async with _platform() as (platform, _api):
        platform.add_device("dev-o", "dev-o-secret")
        address = _address(platform)
        creds = device_credentials("dev-o", "dev-o-secret")

        # A device process killed (SIGKILL): its socket closes without a DISCONNECT.
        script = """
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, cid, user, password = sys.argv[1:]
c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)
c.username_pw_set(user, password)
c.on_connect = lambda client, userdata, flags, reason, properties: print("connack", reason, flush=True)
c.connect(host, int(port), keepalive=60)
c.loop_forever()
"""
        argv = [*map(str, address), creds.client_id, creds.username, creds.password]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, *argv, stdout=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), WAIT) == b"connack Success\n"
            await _until(lambda: _status(platform, "dev-o") == "ONLINE", "dev-o online")
        finally:
            proc.kill()
            await proc.wait()
        took = await _until(lambda: _status(platform, "dev-o") == "OFFLINE", "dev-o offline after a kill", 5)
        assert took < 2

        # Keep-alive expiry: a CONNECT with a keep-alive of 1 s, then silence.  MQTT 3.1.1
        # (3.1.2.10): the server closes the connection after 1.5 times the keep-alive.
        reader, writer, connack = await _raw_connect(address, creds, keepalive=1)
        try:
            assert connack == ACCEPTED
            await _until(lambda: _status(platform, "dev-o") == "ONLINE", "dev-o online (keep-alive 1 s)")
            took = await _eof_within(reader, 4)
            assert 1.0 <= took <= 3.0
            await _until(lambda: _status(platform, "dev-o") == "OFFLINE", "dev-o offline after keep-alive", 1)
        finally:
            writer.close()

        # ... while a client that keeps talking (paho's PINGREQs, keep-alive 1 s) stays.
        async with _paho(address, creds, keepalive=1) as pinging:
            await _until(lambda: _status(platform, "dev-o") == "ONLINE", "dev-o online (pinging)")
            await asyncio.sleep(3.5)
            assert _status(platform, "dev-o") == "ONLINE" and not pinging.disconnected.is_set()
            pinging.client.disconnect()  # a clean DISCONNECT
            took = await _until(lambda: _status(platform, "dev-o") == "OFFLINE", "dev-o offline after DISCONNECT", 5)
            assert took < 2


async def test_a_device_is_confined_to_its_own_topics() -> None:
    _away_from_the_hour_change()
    async with _platform() as (platform, _api):
        for device_id in ("dev-x", "dev-y"):
            platform.add_device(device_id, f"{device_id}-secret")
        address = _address(platform)
        async with (
            _paho(address, device_credentials("dev-x", "dev-x-secret")) as x,
            _paho(address, device_credentials("dev-y", "dev-y-secret")) as y,
        ):
            await _until(lambda: _status(platform, "dev-x") == _status(platform, "dev-y") == "ONLINE", "both online")
            # Another device's topics, or everything: SUBACK failure (0x80).
            for topic in ("$oc/devices/dev-y/sys/#", "#", "$oc/devices/+/sys/#", "$oc/devices/dev-y/user/x"):
                assert await x.subscribe(topic) == [0x80], topic
            # Its own: granted (QoS 1).
            assert await x.subscribe("$oc/devices/dev-x/user/#") == [1]
            assert await y.subscribe("$oc/devices/dev-y/user/#") == [1]

            # Publishing to another device's topics reaches nobody...
            await x.publish("$oc/devices/dev-y/sys/events/down", b'{"services": []}')
            await x.publish("$oc/devices/dev-y/user/hello", b"from x")
            # ... while under its own prefix it is delivered (to itself, the one subscriber).
            await x.publish("$oc/devices/dev-x/user/hello", b"to myself")
            await _until(lambda: len(x.messages) == 1, "x's own message")
            await asyncio.sleep(0.3)
            assert [(t, p) for t, p, _ in x.messages] == [("$oc/devices/dev-x/user/hello", b"to myself")]
            assert y.messages == []
            await y.publish("$oc/devices/dev-y/user/hello", b"y to itself")
            await _until(lambda: len(y.messages) == 1, "y's own message")
            assert [(t, p) for t, p, _ in y.messages] == [("$oc/devices/dev-y/user/hello", b"y to itself")]
            assert len(x.messages) == 1
            assert _status(platform, "dev-x") == _status(platform, "dev-y") == "ONLINE"


async def test_a_connection_that_never_logs_in_is_closed() -> None:
    _away_from_the_hour_change()
    async with _platform(header_timeout=1) as (platform, _api):
        platform.add_device("dev-l", "dev-l-secret")
        address = _address(platform)
        silent_reader, silent_writer = await asyncio.open_connection(*address)
        reader, writer, connack = await _raw_connect(address, device_credentials("dev-l", "dev-l-secret"))
        try:
            assert connack == ACCEPTED
            took = await _eof_within(silent_reader, 5)
            assert 0.9 <= took <= 3.0
            # The login timeout is for logging in only: the device (keep-alive 60 s) stays.
            await asyncio.sleep(1.5)
            assert _status(platform, "dev-l") == "ONLINE"
            writer.write(b"\xc0\x00")  # PINGREQ
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\xd0\x00"  # PINGRESP
        finally:
            silent_writer.close()
            writer.close()


# ---------------------------------------------------------------------------
# End to end with the agent


async def test_the_agent_runs_a_command_over_the_platforms_broker(ssh_server) -> None:
    async with _platform() as (platform, api):
        (url,) = platform.mqtt_urls
        assert re.fullmatch(r"mqtt://127\.0\.0\.1:\d+", url)
        platform.add_device("dev-1", "dev-1-secret")
        assert _status(platform, "dev-1") == "OFFLINE"
        with pytest.raises(PlatformError) as offline:
            await api.add_tunnel("dev-1")
        assert offline.value.error_code == "IOTDA.019701"  # only for online devices

        async with _agent(url, "dev-1", "dev-1-secret", ssh_server.port) as agent:
            assert agent.online and agent.platform_url == ""
            await _until(lambda: _status(platform, "dev-1") == "ONLINE", "the platform to see dev-1 online")
            async with DeviceSession(api, "dev-1") as dev:
                await dev.login(SSH_USER, SSH_PASSWORD)
                r = await dev.run("echo hello")
                assert (r.status, r.exit_code, r.stdout) == (ResultStatus.OK, 0, "hello\n")
                r = await dev.run("echo over mqtt; (exit 4)")
                assert (r.status, r.exit_code, r.stdout) == (ResultStatus.ERROR, 4, "over mqtt\n")
            assert platform._devices["dev-1"].link is None  # no device link: the notify went over MQTT
        took = await _until(lambda: _status(platform, "dev-1") == "OFFLINE", "dev-1 offline after the agent stopped")
        assert took < 2


async def test_a_restarted_agent_is_notified_again_of_the_open_tunnel(ssh_server) -> None:
    async with _platform(notify_grace=1) as (platform, api):
        (url,) = platform.mqtt_urls
        platform.add_device("dev-9", "dev-9-secret")
        first = Agent("", "dev-9", "dev-9-secret", mqtt_url=url, ssh_port=ssh_server.port, heartbeat=None)
        await first.start()
        try:
            await _until(lambda: _status(platform, "dev-9") == "ONLINE", "dev-9 online")
            async with DeviceSession(api, "dev-9", reconnect_step=0.2) as dev:
                await dev.login(SSH_USER, SSH_PASSWORD)
                assert (await dev.run("echo before")).stdout == "before\n"
                await first.stop()
                await _until(lambda: _status(platform, "dev-9") == "OFFLINE", "dev-9 offline")
                (tunnel,) = platform.tunnels.values()
                assert tunnel["status"] == "OPEN" and tunnel["device_connect_state"]["status"] == "DISCONNECTED"
                # A new agent comes online: the platform publishes the open tunnel's notify again.
                async with _agent(url, "dev-9", "dev-9-secret", ssh_server.port):
                    await _until(
                        lambda: platform.tunnels[tunnel["tunnel_id"]]["device_connect_state"]["status"] == "CONNECTED",
                        "the new agent to join the open tunnel",
                    )
                    r = await dev.run("echo after")
                    assert (r.status, r.stdout) == (ResultStatus.OK, "after\n")
        finally:
            await first.stop()


async def test_the_agent_reconnects_after_the_platform_restarts(ssh_server) -> None:
    first = Platform(api_token=API_TOKEN, heartbeat=None, mqtt_port=0)
    first.add_device("dev-3", "dev-3-secret")
    await first.start()
    try:
        (url,) = first.mqtt_urls
        port = _address(first)[1]
        async with _agent(url, "dev-3", "dev-3-secret", ssh_server.port, reconnect_step=0.2) as agent:
            await _until(lambda: _status(first, "dev-3") == "ONLINE", "dev-3 online")
            await first.stop()
            await _until(lambda: not agent.online, "the agent to notice the broker is gone", 10)
            # A new platform on the same MQTT port (its devices re-added: all state was in memory).
            async with _platform(mqtt_port=port) as (second, api):
                assert second.mqtt_urls == [url]
                second.add_device("dev-3", "dev-3-secret")
                took = await _until(lambda: agent.online, "the agent to reconnect by itself", 10)
                await _until(lambda: _status(second, "dev-3") == "ONLINE", "dev-3 online again", 10)
                assert agent._mqtt.connects >= 2 and took < 10
                async with DeviceSession(api, "dev-3") as dev:
                    await dev.login(SSH_USER, SSH_PASSWORD)
                    r = await dev.run("echo after restart")
                    assert (r.status, r.stdout) == (ResultStatus.OK, "after restart\n")
    finally:
        await first.stop()


@pytest.mark.parametrize("quirks", ["c-sdk", "c-sdk-1.1"])
async def test_the_c_sdk_modes_run_a_command_over_mqtt(ssh_server, quirks: str) -> None:
    async with _platform() as (platform, api):
        (url,) = platform.mqtt_urls
        platform.add_device("dev-q", "dev-q-secret")
        async with _agent(url, "dev-q", "dev-q-secret", ssh_server.port, quirks=quirks):
            await _until(lambda: _status(platform, "dev-q") == "ONLINE", "dev-q online")
            async with DeviceSession(api, "dev-q") as dev:
                await dev.login(SSH_USER, SSH_PASSWORD)
                r = await dev.run("echo quirks; printf 'a\\nb\\n' | wc -l")
                assert (r.status, r.exit_code, r.stdout.split()) == (ResultStatus.OK, 0, ["quirks", "2"])


async def test_mqtts_and_wss_with_certificate_verification(tmp_path: Path, ssh_server) -> None:
    from tests.client.test_tls import make_ca_and_leaf
    from tunnelnb.tls import client_ssl, server_ssl

    ca, leaf, key = make_ca_and_leaf(tmp_path)
    verify = client_ssl(str(ca))
    async with Platform(
        api_token=API_TOKEN, heartbeat=None, ssl_context=server_ssl(str(leaf), str(key)), mqtts_port=0
    ) as platform:
        assert platform.base_url.startswith("https://")
        (url,) = platform.mqtt_urls
        assert re.fullmatch(r"mqtts://127\.0\.0\.1:\d+", url)
        platform.add_device("dev-tls", "dev-tls-secret")
        # Without the CA the agent refuses the broker's certificate.
        with pytest.raises(BrokerUnreachable, match=r"TLS certificate is not trusted \(unable to get local issuer"):
            await Agent("", "dev-tls", "dev-tls-secret", mqtt_url=url, heartbeat=None).start()
        assert _status(platform, "dev-tls") == "OFFLINE"
        async with _agent(url, "dev-tls", "dev-tls-secret", ssh_server.port, ssl=verify):
            await _until(lambda: _status(platform, "dev-tls") == "ONLINE", "dev-tls online over mqtts")
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=verify))
            api = PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=API_TOKEN, session=http)
            try:
                async with DeviceSession(api, "dev-tls") as dev:
                    assert dev._grant is not None and dev._grant.tunnel_uri.startswith("wss://")
                    await dev.login(SSH_USER, SSH_PASSWORD)
                    r = await dev.run("echo over mqtts and wss")
                    assert (r.status, r.stdout) == (ResultStatus.OK, "over mqtts and wss\n")
            finally:
                await http.close()


# ---------------------------------------------------------------------------
# The command


async def test_cli_platform_broker_and_agent(tmp_path: Path) -> None:
    """`tunnelnb platform --mqtt-port 0` and `tunnelnb agent --mqtt` as processes; a command end to end."""
    from tests.cli.test_cli import TUNNELNB, clean_env, run, spawn

    token = "mqtt-cli-token"
    env = clean_env(
        TUNNELNB_API_TOKEN=token, TUNNELNB_DEVICE_SECRET="mqtt-secret", TUNNELNB_LOGIN_PASSWORD="mqtt-login"
    )
    argv = [TUNNELNB, "platform", "--port", "0", "--mqtt-port", "0"]
    with spawn("platform", argv, tmp_path, env) as platform:
        mqtt_url = (await platform.wait_line(re.compile(r"mqtt://127\.0\.0\.1:\d+"))).group(0)
        base_url, second = platform.stdout.split("\n")[:2]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url), platform.describe()
        assert second == mqtt_url
        async with PlatformAPI(base_url, project_id="demo", api_token=token) as api:
            await api.add_device("dev-mqtt", secret="mqtt-secret")
            argv = [TUNNELNB, "agent", "--mqtt", mqtt_url, "--device-id", "dev-mqtt", "--local-shell",
                    "--login-user", "ops"]  # fmt: skip
            with spawn("agent", argv, tmp_path, env) as agent:
                for _ in range(100):
                    if (await api.show_device("dev-mqtt"))["status"] == "ONLINE":
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail(f"the agent did not come online over MQTT: {agent.describe()}")
                async with DeviceSession(api, "dev-mqtt", delete_tunnel=True) as dev:
                    await dev.login("ops", "mqtt-login")
                    result = await dev.run("echo via-mqtt")
                    assert (result.status, result.stdout) == ("ok", "via-mqtt\n")

    # The MQTT port taken: one sentence naming the flag, exit status 1.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = await asyncio.to_thread(run, [TUNNELNB, "platform", "--port", "0", "--mqtt-port", str(port)], env)
    assert out.returncode == 1, out
    assert out.stdout == ""
    assert out.stderr == (
        f"tunnelnb: cannot serve MQTT on 127.0.0.1:{port} (Address already in use): "
        "pick another --mqtt-port, 0 for a free one, or --no-mqtt\n"
    )

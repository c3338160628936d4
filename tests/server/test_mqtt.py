"""Device notifications over MQTT: a real mosquitto (Debian's package) on a loopback port.

The agent logs in to the broker with IoTDA's device credentials, the local
platform publishes ``tunnel_notify`` to ``$oc/devices/{device_id}/sys/events/down``,
and a command runs end to end through :class:`tunnelnb.client.session.DeviceSession`.
Each test starts its own broker (a generated config, a free port), so retained
presence messages never leak between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SSH_PASSWORD, SSH_USER
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import BrokerAuthError, DeviceAuthError, PlatformError, PlatformUnreachable, ProtocolError
from tunnelnb.server.agent import Agent
from tunnelnb.server.mqtt import device_credentials
from tunnelnb.server.mqttbase import (
    BrokerUnreachable,
    MqttCredentials,
    Presence,
    client_id,
    parse_client_id,
    parse_mqtt_url,
    parse_presence,
    presence_message,
)
from tunnelnb.server.platform import Platform
from tunnelnb.server.platform.mqtt import verify_presence

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
API_TOKEN = "mqtt-test-token"
WAIT = 15.0  # upper bound of every wait; the happy paths take milliseconds


# ---------------------------------------------------------------------------
# Credentials and messages, without a broker


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


def test_presence_messages_are_checked_against_the_device_secret() -> None:
    creds = device_credentials("dev-1", "right-secret")
    topic = "tunnelnb/devices/dev-1/presence"
    presence = parse_presence(topic, presence_message(True, "s1", creds))
    assert presence == Presence("dev-1", True, "s1", creds)
    assert verify_presence(presence, "right-secret") is None
    assert verify_presence(presence, "wrong-secret") == "wrong password"
    # A message on another device's topic, or with another device's client id, is refused.
    assert verify_presence(parse_presence("tunnelnb/devices/dev-2/presence", presence_message(True, "s", creds)), "x")
    offline = parse_presence(topic, presence_message(False, "s1", creds))
    assert not offline.online
    for bad_topic, payload in [
        ("tunnelnb/devices/dev-1/other", presence_message(True, "s", creds)),
        (topic, b"not json"),
        (topic, b"[]"),
        (topic, json.dumps({"status": "MAYBE", "session": "s", "client_id": "c", "username": "u", "password": "p"})),
        (topic, json.dumps({"status": "ONLINE", "session": "s"})),
        (topic, b"{" * 100_000),
    ]:
        with pytest.raises(ProtocolError):
            parse_presence(bad_topic, payload if isinstance(payload, bytes) else payload.encode())


def test_importing_tunnelnb_does_not_need_aiomqtt() -> None:
    script = """
import asyncio, sys
sys.modules["aiomqtt"] = None  # as if it were not installed
import tunnelnb, tunnelnb.server.agent, tunnelnb.server.platform, tunnelnb.server.mqtt
assert "paho" not in sys.modules and "paho.mqtt" not in sys.modules
print(tunnelnb.server.mqtt.device_credentials("d", "s").username)
from tunnelnb.errors import TunnelnbError
async def main():
    for make in (lambda: tunnelnb.server.agent.Agent("", "d", "s", mqtt_url="mqtt://127.0.0.1:9"),
                 lambda: tunnelnb.server.platform.Platform(mqtt_url="mqtt://127.0.0.1:9")):
        try:
            await make().start()
        except TunnelnbError as exc:
            print("error:", exc)
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "d"
    assert lines[1:] == ["error: MQTT needs the optional package aiomqtt: pip install 'tunnelnb[mqtt]'"] * 2


# ---------------------------------------------------------------------------
# A real mosquitto


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """Debian's mosquitto on a loopback port with a generated config; restartable on the same port."""

    def __init__(
        self, workdir: Path, *, password_file: Path | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.password_file = password_file
        self.tls = tls  # (certificate, key): mqtts
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert MOSQUITTO is not None
        config = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr", "log_type all"]
        if self.password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        if self.tls is not None:
            lines += [f"certfile {self.tls[0]}", f"keyfile {self.tls[1]}"]
        config.write_text("\n".join(lines) + "\n")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Readable by the user mosquitto drops to when started as root (pytest's tmp_path is not).
    path = Path(tempfile.mkdtemp(prefix="tunnelnb-mosquitto-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker_factory(workdir: Path) -> Iterator[Callable[..., Mosquitto]]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto; .ci/run installs it)")
    pytest.importorskip("aiomqtt", reason="the MQTT extra is not installed: pip install 'tunnelnb[mqtt]'")
    brokers: list[Mosquitto] = []

    def make(**kwargs: object) -> Mosquitto:
        broker = Mosquitto(workdir, **kwargs)  # type: ignore[arg-type]
        broker.start()
        brokers.append(broker)
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return broker_factory()


@contextlib.asynccontextmanager
async def _platform(broker_url: str, **kwargs: object) -> AsyncIterator[tuple[Platform, PlatformAPI]]:
    async with Platform(api_token=API_TOKEN, heartbeat=None, mqtt_url=broker_url, **kwargs) as platform:  # type: ignore[arg-type]
        async with PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=API_TOKEN) as api:
            yield platform, api


@contextlib.asynccontextmanager
async def _agent(broker_url: str, device_id: str, secret: str, ssh_port: int, **kwargs: object) -> AsyncIterator[Agent]:
    agent = Agent("", device_id, secret, mqtt_url=broker_url, ssh_port=ssh_port, heartbeat=None, **kwargs)  # type: ignore[arg-type]
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


class Spy:
    """An MQTT client of the test's own that records what is published on a topic."""

    def __init__(self, url: str, topic: str) -> None:
        self.url, self.topic = url, topic
        self.messages: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Spy:
        import aiomqtt

        endpoint = parse_mqtt_url(self.url)
        ready = asyncio.get_running_loop().create_future()

        async def listen() -> None:
            async with aiomqtt.Client(endpoint.host, endpoint.port, identifier="spy-" + secrets.token_hex(4)) as c:
                await c.subscribe(self.topic, qos=1)
                ready.set_result(None)
                async for message in c.messages:
                    self.messages.append(bytes(message.payload))  # type: ignore[arg-type]

        self._task = asyncio.create_task(listen())
        await asyncio.wait_for(asyncio.shield(ready), WAIT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# ---------------------------------------------------------------------------
# End to end


async def test_a_device_online_through_mosquitto_runs_a_command(broker: Mosquitto, ssh_server) -> None:
    async with _platform(broker.url) as (platform, api), Spy(broker.url, "$oc/devices/dev-1/sys/events/down") as spy:
        platform.add_device("dev-1", "dev-1-secret")
        assert _status(platform, "dev-1") == "OFFLINE"
        with pytest.raises(PlatformError) as offline:
            await api.add_tunnel("dev-1")
        assert offline.value.error_code == "IOTDA.019701"  # only for online devices

        async with _agent(broker.url, "dev-1", "dev-1-secret", ssh_server.port) as agent:
            assert agent.online and agent.platform_url == ""
            await _until(lambda: _status(platform, "dev-1") == "ONLINE", "the platform to see dev-1 online")
            async with DeviceSession(api, "dev-1") as dev:
                await dev.login(SSH_USER, SSH_PASSWORD)
                r = await dev.run("echo hello from $(hostname >/dev/null && echo mqtt); (exit 4)")
                assert (r.status, r.exit_code, r.stdout) == (ResultStatus.ERROR, 4, "hello from mqtt\n")
                r = await dev.run("printf 'a\\nb\\n' | wc -l")
                assert (r.status, r.stdout.strip()) == (ResultStatus.OK, "2")
            assert platform._devices["dev-1"].link is None  # no device link: the notify went over MQTT

        # The exact IoTDA events/down payload, with a device-connect URI on the platform.
        assert spy.messages, "no tunnel_notify was published"
        event = json.loads(spy.messages[0])
        (service,) = event["services"]
        assert (service["service_id"], service["event_type"]) == ("$tunnel_manager", "tunnel_notify")
        paras = service["paras"]
        assert paras["tunnel_uri"].startswith("ws" + platform.base_url.removeprefix("http") + "/v5/iot/tunnels/")
        assert paras["tunnel_uri"].endswith("/device-connect")
        assert paras["expires_in"] > 0 and paras["tunnel_access_token"]
        # A clean stop publishes OFFLINE at once.
        await _until(lambda: _status(platform, "dev-1") == "OFFLINE", "dev-1 to go offline after the agent stopped")

    # What the broker saw: IoTDA's client id and user name, the QoS 1 subscription, the platform's QoS 1 publish.
    log = broker.log.read_text(errors="replace")
    assert re.search(r"New client connected from \S+ as dev-1_0_0_\d{10} \(p2, c1, k60, u'dev-1'\)", log), log
    assert re.search(r"SUBSCRIBE from dev-1_0_0_\d{10}\n\d+: \t\$oc/devices/dev-1/sys/events/down \(QoS 1\)", log)
    assert re.search(r"Received PUBLISH from tunnelnb-platform-\w+ \(d0, q1, r0, m\d+, '\$oc/devices/dev-1/sys/", log)


async def test_a_second_notify_replaces_the_first_connection(broker: Mosquitto, ssh_server) -> None:
    # Two platforms on one broker, one device registered on both: each AddTunnel sends the device a notify.
    async with _platform(broker.url) as (p1, api1), _platform(broker.url) as (p2, api2):
        for p in (p1, p2):
            p.add_device("dev-2", "dev-2-secret")
        async with _agent(broker.url, "dev-2", "dev-2-secret", ssh_server.port) as agent:
            await _until(lambda: _status(p1, "dev-2") == _status(p2, "dev-2") == "ONLINE", "dev-2 online on both")
            async with DeviceSession(api1, "dev-2") as first:
                await first.login(SSH_USER, SSH_PASSWORD)
                assert (await first.run("echo first")).stdout == "first\n"
                (t1,) = p1.tunnels.values()
                assert t1["device_connect_state"]["status"] == "CONNECTED"
                first_tunnel = agent._tunnel

                async with DeviceSession(api2, "dev-2") as second:
                    await second.login(SSH_USER, SSH_PASSWORD)
                    assert (await second.run("echo second")).stdout == "second\n"
                    # The agent left the first tunnel (close 1000) for the second one.
                    assert agent._tunnel is not first_tunnel and first_tunnel is not None
                    assert agent._tunnel.uri.startswith("ws" + p2.base_url.removeprefix("http"))
                    await _until(
                        lambda: p1.tunnels[t1["tunnel_id"]]["device_connect_state"]["status"] == "DISCONNECTED",
                        "the first tunnel's device side to be gone",
                    )
                    (t2,) = p2.tunnels.values()
                    assert t2["device_connect_state"]["status"] == "CONNECTED"


async def test_the_agent_reconnects_after_the_broker_restarts(broker: Mosquitto, ssh_server) -> None:
    async with _platform(broker.url) as (platform, api):
        platform.add_device("dev-3", "dev-3-secret")
        async with _agent(broker.url, "dev-3", "dev-3-secret", ssh_server.port, reconnect_step=0.2) as agent:
            await _until(lambda: _status(platform, "dev-3") == "ONLINE", "dev-3 online")
            broker.stop()
            await _until(lambda: not agent.online, "the agent to notice the broker is gone", 10)
            await _until(lambda: _status(platform, "dev-3") == "OFFLINE", "the platform to mark dev-3 offline", 10)
            with pytest.raises(PlatformError):
                await api.add_tunnel("dev-3")
            broker.start()  # same port; retained messages are gone (persistence false)
            took = await _until(lambda: agent.online, "the agent to reconnect", 10)
            await _until(lambda: _status(platform, "dev-3") == "ONLINE", "dev-3 online again", 10)
            assert agent._mqtt.connects == 2 and took < 10
            async with DeviceSession(api, "dev-3") as dev:
                await dev.login(SSH_USER, SSH_PASSWORD)
                assert (await dev.run("echo after restart")).stdout == "after restart\n"


async def test_a_wrong_secret_leaves_the_device_offline(broker: Mosquitto, ssh_server) -> None:
    async with _platform(broker.url) as (platform, api):
        platform.add_device("dev-4", "the-right-secret")
        # The anonymous broker lets it in; the platform, which knows the secret, does not believe it.
        async with _agent(broker.url, "dev-4", "a-wrong-secret", ssh_server.port) as agent:
            assert agent.online
            await asyncio.sleep(0.5)
            assert _status(platform, "dev-4") == "OFFLINE"
            with pytest.raises(PlatformError) as exc:
                await api.add_tunnel("dev-4")
            assert exc.value.error_code == "IOTDA.019701"


async def test_a_device_on_the_broker_before_it_is_registered_is_online_once_registered(
    broker: Mosquitto, ssh_server
) -> None:
    async with _platform(broker.url) as (platform, _api):
        async with _agent(broker.url, "dev-5", "dev-5-secret", ssh_server.port):
            await _until(lambda: "dev-5" in platform._presence, "its presence to reach the platform")
            info = platform.add_device("dev-5", "dev-5-secret")
            assert info["status"] == "ONLINE"


async def test_a_restarted_agent_is_notified_again_of_the_open_tunnel(broker: Mosquitto, ssh_server) -> None:
    async with _platform(broker.url) as (platform, api):
        platform.add_device("dev-9", "dev-9-secret")
        first = Agent("", "dev-9", "dev-9-secret", mqtt_url=broker.url, ssh_port=ssh_server.port, heartbeat=None)
        await first.start()
        try:
            await _until(lambda: _status(platform, "dev-9") == "ONLINE", "dev-9 online")
            async with DeviceSession(api, "dev-9", reconnect_step=0.2) as dev:
                await dev.login(SSH_USER, SSH_PASSWORD)
                assert (await dev.run("echo before")).stdout == "before\n"
                await first.stop()
                (tunnel,) = platform.tunnels.values()
                assert tunnel["status"] == "OPEN" and tunnel["device_connect_state"]["status"] == "DISCONNECTED"
                # A new agent comes online over MQTT: the platform publishes the open tunnel's notify again.
                async with _agent(broker.url, "dev-9", "dev-9-secret", ssh_server.port):
                    await _until(
                        lambda: platform.tunnels[tunnel["tunnel_id"]]["device_connect_state"]["status"] == "CONNECTED",
                        "the new agent to join the open tunnel",
                    )
                    r = await dev.run("echo after")
                    assert (r.status, r.stdout) == (ResultStatus.OK, "after\n")
        finally:
            await first.stop()


async def test_a_crashed_agent_goes_offline_through_its_will(broker: Mosquitto, ssh_server) -> None:
    script = """
import asyncio, sys
from tunnelnb.server.agent import Agent
async def main():
    agent = Agent("", "dev-6", "dev-6-secret", mqtt_url=sys.argv[1], heartbeat=None)
    await agent.start()
    print("online", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
    async with _platform(broker.url) as (platform, _api):
        platform.add_device("dev-6", "dev-6-secret")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, broker.url, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
            assert line == b"online\n"
            await _until(lambda: _status(platform, "dev-6") == "ONLINE", "dev-6 online")
        finally:
            proc.kill()  # SIGKILL: no DISCONNECT, no OFFLINE of its own
            await proc.wait()
        # mosquitto sees the socket close without a DISCONNECT and publishes the will.
        took = await _until(lambda: _status(platform, "dev-6") == "OFFLINE", "the will to mark dev-6 offline", 10)
        assert took < 5


async def test_unreachable_broker_fails_fast() -> None:
    pytest.importorskip("aiomqtt", reason="the MQTT extra is not installed: pip install 'tunnelnb[mqtt]'")
    url = f"mqtt://127.0.0.1:{_free_port()}"  # nobody listens there
    agent = Agent("", "dev-7", "secret", mqtt_url=url, heartbeat=None)
    started = time.monotonic()
    with pytest.raises(PlatformUnreachable) as exc:
        await agent.start()
    assert isinstance(exc.value, BrokerUnreachable) and url in str(exc.value)
    assert not agent.online
    platform = Platform(api_token=API_TOKEN, heartbeat=None, mqtt_url=url)
    with pytest.raises(BrokerUnreachable):
        await platform.start()
    assert platform._runner is None  # it stopped what it had started
    assert time.monotonic() - started < 10
    with pytest.raises(ValueError, match="its own credentials"):
        await Agent("", "dev-7", "secret", mqtt_url="mqtt://user:pw@127.0.0.1:1883").start()
    with pytest.raises(ValueError, match="platform's URL"):
        Agent("", "dev-7", "secret")


def _away_from_the_hour_change() -> None:
    """The IoTDA password changes with the UTC hour: don't start a login test in its last seconds."""
    now = datetime.now(UTC)
    if now.minute == 59 and now.second >= 55:
        time.sleep(61 - now.second)


def _password_file(workdir: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (hashed by mosquitto_passwd) for ``users``."""
    assert MOSQUITTO_PASSWD is not None
    path = workdir / "passwords"
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([MOSQUITTO_PASSWD, "-b", *create, str(path), user, password], check=True, timeout=30)
    path.chmod(0o644)
    return path


async def test_a_broker_that_checks_passwords_accepts_the_iotda_credentials(
    workdir: Path, broker_factory: Callable[..., Mosquitto], ssh_server
) -> None:
    if MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    _away_from_the_hour_change()
    creds = device_credentials("dev-8", "dev-8-secret")  # what IoTDA would hold for this hour
    password_file = _password_file(workdir, {creds.username: creds.password, "platform": "platform-pw"})
    broker = broker_factory(password_file=password_file)

    with pytest.raises(DeviceAuthError):
        await Agent("", "dev-8", "not-the-secret", mqtt_url=broker.url, heartbeat=None).start()
    with pytest.raises(BrokerAuthError):
        await Platform(api_token=API_TOKEN, heartbeat=None, mqtt_url=f"mqtt://platform:nope@127.0.0.1:{broker.port}").start()

    authed = f"mqtt://platform:platform-pw@127.0.0.1:{broker.port}"
    async with _platform(authed) as (platform, api):
        platform.add_device("dev-8", "dev-8-secret")
        async with _agent(broker.url, "dev-8", "dev-8-secret", ssh_server.port):
            await _until(lambda: _status(platform, "dev-8") == "ONLINE", "dev-8 online")
            async with DeviceSession(api, "dev-8") as dev:
                await dev.login(SSH_USER, SSH_PASSWORD)
                assert (await dev.run("echo authenticated")).stdout == "authenticated\n"


async def test_mqtts_and_wss_with_certificate_verification(workdir: Path, broker_factory, ssh_server) -> None:
    """The issue's acceptance: online through mosquitto, tunnel_notify, a command over wss://, verification on."""
    from tests.client.test_tls import make_ca_and_leaf
    from tunnelnb.tls import client_ssl, server_ssl

    ca, leaf, key = make_ca_and_leaf(workdir)
    for path in (leaf, key):
        path.chmod(0o644)  # mosquitto reads them as the user it drops to
    broker = broker_factory(tls=(leaf, key))
    assert broker.url.startswith("mqtts://")
    verify = client_ssl(str(ca))
    server = server_ssl(str(leaf), str(key))
    async with Platform(
        api_token=API_TOKEN, heartbeat=None, ssl_context=server, mqtt_url=broker.url, mqtt_ssl=verify
    ) as platform:
        assert platform.base_url.startswith("https://")
        platform.add_device("dev-tls", "dev-tls-secret")
        # Without the CA the agent refuses the broker's certificate.
        with pytest.raises(BrokerUnreachable, match=r"TLS certificate is not trusted \(unable to get local issuer"):
            await Agent("", "dev-tls", "dev-tls-secret", mqtt_url=broker.url, heartbeat=None).start()
        async with _agent(broker.url, "dev-tls", "dev-tls-secret", ssh_server.port, ssl=verify):
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


async def test_cli_platform_and_agent_over_mqtt(broker: Mosquitto, tmp_path: Path) -> None:
    """`tunnelnb platform --mqtt` and `tunnelnb agent --mqtt` (no device link) as processes; a command end to end."""
    import os
    import re

    from tests.cli.test_cli import TUNNELNB, spawn
    from tunnelnb.client.session import DeviceSession

    token = "mqtt-cli-token"
    env = {**os.environ, "TUNNELNB_API_TOKEN": token, "TUNNELNB_DEVICE_SECRET": "mqtt-secret",
           "TUNNELNB_LOGIN_PASSWORD": "mqtt-login"}  # fmt: skip
    with spawn("platform", [TUNNELNB, "platform", "--port", "0", "--mqtt", broker.url], tmp_path, env) as platform:
        url = (await platform.wait_line(re.compile(r"http://127\.0\.0\.1:\d+"))).group(0)
        async with PlatformAPI(url, project_id="demo", api_token=token) as api:
            await api.add_device("dev-mqtt", secret="mqtt-secret")
            argv = [TUNNELNB, "agent", "--mqtt", broker.url, "--device-id", "dev-mqtt", "--local-shell",
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

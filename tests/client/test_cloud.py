"""The Huawei Cloud backend (tunnelnb.client.cloud) and AK/SK signing on the local platform, on loopback.

The official SDK (``huaweicloudsdkiotda``'s ``IoTDAClient``) runs unmodified
against a real local platform started with an access key pair, through a custom
endpoint ``http://127.0.0.1:PORT``: every tunnel call and ListDevices are signed
by the SDK and verified by the platform, in both of the SDK's algorithms.  The
platform runs on the test's event loop, so an SDK call made on that loop's thread
would deadlock the test: every passing call here also shows the backend keeps the
SDK's blocking calls off the loop.  An audit hook records every outgoing
connection and name lookup: nothing leaves loopback (no IAM, no endpoint discovery,
no metadata service).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.conftest import API_TOKEN, SSH_PASSWORD, SSH_USER, Devices
from tunnelnb.client.api import PlatformAPI, TunnelGrant
from tunnelnb.errors import PlatformError, PlatformUnreachable, TunnelnbError
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.protocol import signing
from tunnelnb.server.platform import ErrorCode, Platform

try:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkcore.http.http_handler import HttpHandler
    from huaweicloudsdkcore.region.region import Region
    from huaweicloudsdkiotda.v5 import model
    from huaweicloudsdkiotda.v5.iotda_client import IoTDAClient

    from tunnelnb.client.cloud import ENV_AK, ENV_PROJECT_ID, ENV_SK, HuaweiCloudAPI, cloud_api_from_env
    from tunnelnb.errors import HuaweiCloudSDKMissing
except ImportError:  # pragma: no cover - tunnelnb[test] installs the SDK
    IoTDAClient = None

needs_sdk = pytest.mark.skipif(IoTDAClient is None, reason="the Huawei Cloud SDK is not installed (tunnelnb[test])")
pytestmark = needs_sdk

AK = "TNBTESTAK" + secrets.token_hex(6).upper()
SK = "tnb-test-sk-" + secrets.token_urlsafe(18)
REGION = "cn-north-4"
INSTANCE = "inst-0001"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy may take a loopback request elsewhere; no credential of the machine may leak in."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in (
        "HUAWEICLOUD_SDK_AK",
        "HUAWEICLOUD_SDK_SK",
        "HUAWEICLOUD_SDK_PROJECT_ID",
        "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def keyed(platform: Platform) -> Platform:
    """The shared platform fixture, now also accepting AK/SK signatures (X-Auth-Token still works)."""
    platform.add_access_key(AK, SK)
    return platform


def cloud_api(platform: Platform, **kwargs: Any) -> HuaweiCloudAPI:
    options: dict[str, Any] = {
        "region": REGION,
        "endpoint": platform.base_url,
        "project_id": platform.project_id,
        "ak": AK,
        "sk": SK,
        "timeout": 20.0,
    }
    return HuaweiCloudAPI(**(options | kwargs))


def sdk_client(platform: Platform, *, ak: str = AK, sk: str = SK, derived: bool, seen: list[Any]) -> Any:
    """The official IoTDA client as a user builds it, pointed at the platform; ``seen`` gets each signed request."""
    credentials = BasicCredentials(ak, sk, platform.project_id)
    if derived:
        credentials.with_derived_predicate(BasicCredentials.get_default_derived_predicate())
    handler = HttpHandler().add_request_handler(lambda **kw: seen.append(kw["request"]))
    return (
        IoTDAClient.new_builder()
        .with_credentials(credentials)
        .with_region(Region(REGION, platform.base_url))
        .with_http_handler(handler)
        .build()
    )


# --- every connection and name lookup, while recording --------------------------------------

_recording: list[tuple[str, Any]] | None = None
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _recording.append((event, args[1] if event == "socket.connect" else args[0]))


@contextlib.contextmanager
def only_loopback() -> Iterator[list[tuple[str, Any]]]:
    """Record outgoing connections and lookups (of every thread); fail if one is not on loopback."""
    global _recording, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # audit hooks cannot be removed: this one is inert outside the block
        _hook_installed = True
    _recording = seen = []
    try:
        yield seen
    finally:
        _recording = None
    strangers = [(event, where) for event, where in seen if not _is_loopback(where)]
    assert not strangers, f"connections beyond loopback: {strangers}"


def _is_loopback(where: Any) -> bool:
    host = where[0] if isinstance(where, tuple) else where
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str) or host.startswith("/") or host == "":
        return True  # a Unix socket path
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def test_the_loopback_audit_catches_strangers():
    assert _is_loopback(("127.0.0.1", 80)) and _is_loopback(("::1", 80, 0, 0)) and _is_loopback("localhost")
    assert not _is_loopback(("192.0.2.1", 443)) and not _is_loopback("iam.cn-north-4.myhuaweicloud.com")
    with pytest.raises(AssertionError, match="beyond loopback"), only_loopback():
        sys.audit("socket.getaddrinfo", "iam.cn-north-4.myhuaweicloud.com", 443, 0, 0, 0)  # an event, no lookup


# --- the official SDK client, unmodified ------------------------------------------------------


@pytest.mark.parametrize("derived", [False, True], ids=["SDK-HMAC-SHA256", "V11-HMAC-SHA256"])
async def test_official_sdk_client_runs_every_tunnel_call(keyed, devices: Devices, ssh_server, derived):
    await devices.add("dev-1", ssh_port=ssh_server.port)
    keyed.add_device("dev-2", "never-online")
    seen: list[Any] = []

    def scenario() -> dict[str, Any]:
        client = sdk_client(keyed, derived=derived, seen=seen)
        out: dict[str, Any] = {}
        try:
            listed = client.list_devices(model.ListDevicesRequest(instance_id=INSTANCE, limit=10))
            out["devices"] = {d.device_id: d.status for d in listed.devices}
            added = client.add_tunnel(
                model.AddTunnelRequest(instance_id=INSTANCE, body=model.AddTunnelDto(device_id="dev-1"))
            )
            out["added"] = added
            tid = added.tunnel_id
            out["listed"] = client.list_device_tunnels(
                model.ListDeviceTunnelsRequest(instance_id=INSTANCE, device_id="dev-1")
            ).tunnels
            out["all"] = client.list_device_tunnels(model.ListDeviceTunnelsRequest(instance_id=INSTANCE)).tunnels
            out["open"] = client.show_device_tunnel(model.ShowDeviceTunnelRequest(instance_id=INSTANCE, tunnel_id=tid))
            out["close"] = client.close_device_tunnel(
                model.CloseDeviceTunnelRequest(instance_id=INSTANCE, tunnel_id=tid)
            )
            out["closed"] = client.show_device_tunnel(
                model.ShowDeviceTunnelRequest(instance_id=INSTANCE, tunnel_id=tid)
            )
            out["delete"] = client.delete_device_tunnel(
                model.DeleteDeviceTunnelRequest(instance_id=INSTANCE, tunnel_id=tid)
            )
            out["after"] = client.list_device_tunnels(model.ListDeviceTunnelsRequest(instance_id=INSTANCE)).tunnels
        finally:
            client.get_http_client().close()
        return out

    with only_loopback() as wire:
        out = await asyncio.wait_for(asyncio.to_thread(scenario), 60)
    port = int(keyed.base_url.rsplit(":", 1)[1])
    assert ("socket.connect", ("127.0.0.1", port)) in wire  # the hook saw the SDK's connections

    assert out["devices"] == {"dev-1": "ONLINE", "dev-2": "OFFLINE"}
    added = out["added"]
    assert added.status_code == 201 and added.expires_in == 86400 and added.tunnel_access_token
    assert added.tunnel_uri == f"ws://{keyed.base_url.split('://')[1]}/v5/iot/tunnels/{added.tunnel_id}/source-connect"
    assert [t.tunnel_id for t in out["listed"]] == [added.tunnel_id] == [t.tunnel_id for t in out["all"]]
    assert out["open"].status == "OPEN" and out["open"].device_id == "dev-1"
    assert out["close"].status_code == 204 and out["delete"].status_code == 204
    assert out["closed"].status == "CLOSED" and out["closed"].closed_time
    assert out["after"] == []
    # What went on the wire: signed by the SDK in the algorithm asked for, Instance-Id and X-Project-Id included.
    assert len(seen) == 9
    algorithm = "V11-HMAC-SHA256" if derived else "SDK-HMAC-SHA256"
    for request in seen:
        auth = signing.parse_authorization(request.header_params["Authorization"])
        assert auth.algorithm == algorithm and auth.access_key == AK
        assert {"host", "x-sdk-date", "instance-id", "x-project-id"} <= set(auth.signed_headers)
        assert request.host == keyed.base_url.split("://")[1]
        if derived:
            assert auth.scope == f"{request.header_params['X-Sdk-Date'][:8]}/{REGION}/iotdm"


async def test_official_sdk_client_gets_401s_with_an_iotda_style_body(keyed):
    stale = signing.format_date(datetime.now(UTC) - timedelta(minutes=20))

    def attempt(**kwargs: Any) -> ClientRequestException:
        client = sdk_client(keyed, derived=False, seen=[], **kwargs.pop("keys", {}))
        client.preset_headers.update(kwargs.pop("headers", {}))
        try:
            client.list_devices(model.ListDevicesRequest())
        except ClientRequestException as exc:
            return exc
        finally:
            client.get_http_client().close()
        raise AssertionError("the platform accepted the request")

    with only_loopback():
        bad_sk = await asyncio.to_thread(attempt, keys={"sk": SK + "x"})
        unknown = await asyncio.to_thread(attempt, keys={"ak": "UNKNOWNAK00000000000"})
        old = await asyncio.to_thread(attempt, headers={"X-Sdk-Date": stale})  # signed, but 20 minutes old
    for exc in (bad_sk, unknown, old):
        assert exc.status_code == 401 and exc.error_code == "APIGW.0301"
        assert exc.error_msg.startswith("Incorrect IAM authentication information: ")
        assert exc.request_id  # X-Request-Id, as the SDK reports it
        assert SK not in str(exc)
    assert "verify aksk signature fail" in bad_sk.error_msg
    assert "ak not exist" in unknown.error_msg and "UNKN****" in unknown.error_msg
    assert f"signature expired, signature time:{stale}" in old.error_msg


# --- the backend: HuaweiCloudAPI ------------------------------------------------------------------


@pytest.fixture
def algorithms(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The algorithm of every signature the platform verified."""
    seen: list[str] = []
    real = signing.verify

    def verify(*args: Any, **kwargs: Any) -> signing.Verified:
        verified = real(*args, **kwargs)
        seen.append(verified.algorithm)
        return verified

    monkeypatch.setattr(signing, "verify", verify)
    return seen


@pytest.mark.parametrize(
    ("derived_auth", "algorithm"),
    [(None, "V11-HMAC-SHA256"), (True, "V11-HMAC-SHA256"), (False, "SDK-HMAC-SHA256")],
)
async def test_backend_calls(keyed, devices: Devices, ssh_server, algorithms, derived_auth, algorithm):
    await devices.add("dev-1", ssh_port=ssh_server.port)
    for i in range(60):  # more than one ListDevices page of 50
        keyed.add_device(f"idle-{i:02d}", "s")
    with only_loopback():
        async with cloud_api(keyed, derived_auth=derived_auth, instance_id=INSTANCE) as api:
            assert api.base_url == keyed.base_url and api.project_id == keyed.project_id
            listed = await api.list_devices()
            assert len(listed) == 61 and listed[0]["device_id"] == "dev-1" and listed[0]["status"] == "ONLINE"
            assert (await api.show_device("idle-07"))["status"] == "OFFLINE"
            grant = await api.add_tunnel("dev-1")
            assert isinstance(grant, TunnelGrant) and grant.expires_in == 86400
            assert grant.tunnel_uri.endswith(f"/v5/iot/tunnels/{grant.tunnel_id}/source-connect")
            assert grant.token not in repr(grant)
            assert [t["tunnel_id"] for t in await api.list_tunnels("dev-1")] == [grant.tunnel_id]
            assert await api.list_tunnels("idle-01") == []
            assert (await api.show_tunnel(grant.tunnel_id))["status"] == "OPEN"
            # The tunnel's WebSocket opens with the backend's session and the grant's token.
            async with api.session.ws_connect(grant.tunnel_uri, headers={"tunnel_access_token": grant.token}) as ws:
                assert not ws.closed
            assert await api.close_tunnel(grant.tunnel_id) is None
            assert (await api.show_tunnel(grant.tunnel_id))["status"] == "CLOSED"
            assert await api.delete_tunnel(grant.tunnel_id) is None
            assert await api.list_tunnels() == []
    assert set(algorithms) == {algorithm} and len(algorithms) >= 10


async def test_backend_calls_run_concurrently_off_the_loop(keyed):
    """Thirty calls at once on a pool of four threads; the platform answers them on this very loop."""
    for i in range(30):
        keyed.add_device(f"dev-{i:02d}", "s")
    async with cloud_api(keyed, max_workers=4) as api:
        shown = await asyncio.wait_for(asyncio.gather(*(api.show_device(f"dev-{i:02d}") for i in range(30))), 30)
        assert [d["device_id"] for d in shown] == [f"dev-{i:02d}" for i in range(30)]
        workers = {t.name for t in threading.enumerate() if t.name.startswith("tunnelnb-huaweicloud")}
        assert 2 <= len(workers) <= 4


async def test_backend_errors_are_platform_errors(keyed, monkeypatch):
    keyed.add_device("dev-off", "s")
    keyed.add_project("other", "other-token")
    with only_loopback():
        async with cloud_api(keyed, sk=SK + "x") as api:
            with pytest.raises(PlatformError) as bad_sk:
                await api.list_devices()
        async with cloud_api(keyed, ak="UNKNOWNAK00000000000") as api:
            with pytest.raises(PlatformError) as unknown:
                await api.add_tunnel("dev-off")
        async with cloud_api(keyed) as api:
            with pytest.raises(PlatformError) as offline:
                await api.add_tunnel("dev-off")
            with pytest.raises(PlatformError) as missing:
                await api.show_tunnel("no-such-tunnel")
            with pytest.raises(PlatformError) as no_device:
                await api.show_device("nobody")
        async with cloud_api(keyed, project_id="other") as api:
            with pytest.raises(PlatformError) as forbidden:
                await api.list_devices()
        # The platform's clock runs 20 minutes ahead: the SDK's X-Sdk-Date is stale there.
        monkeypatch.setattr(keyed, "clock", lambda: time.time() + 1200)
        async with cloud_api(keyed) as api:
            with pytest.raises(PlatformError) as stale:
                await api.close_tunnel("whatever")
    for err in (bad_sk, unknown, stale):
        assert err.value.status == 401 and err.value.error_code == ErrorCode.IAM_AUTH == "APIGW.0301"
        assert "HUAWEICLOUD_SDK_AK" in str(err.value) and SK not in str(err.value)
        assert "\n" not in str(err.value)
    assert "verify aksk signature fail" in bad_sk.value.error_msg
    assert "ak not exist" in unknown.value.error_msg
    assert "signature expired" in stale.value.error_msg
    assert (offline.value.status, offline.value.error_code) == (400, ErrorCode.DEVICE_OFFLINE)
    assert (missing.value.status, missing.value.error_code) == (404, ErrorCode.TUNNEL_NOT_FOUND)
    assert (no_device.value.status, no_device.value.error_code) == (404, ErrorCode.DEVICE_NOT_FOUND)
    assert (forbidden.value.status, forbidden.value.error_code) == (403, ErrorCode.FORBIDDEN)
    assert "iotda:tunnel:create" in str(forbidden.value)


async def test_unreachable_endpoint_is_platform_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nobody listens there
    api = HuaweiCloudAPI(region=REGION, endpoint=f"http://127.0.0.1:{port}", project_id="p", ak=AK, sk=SK, timeout=5)
    async with api:
        with pytest.raises(PlatformUnreachable) as info:
            await api.list_devices()
    assert str(info.value) == (
        f"cannot reach IoTDA at http://127.0.0.1:{port} for ListDevices (Connection refused): check the region or "
        "endpoint and the network"
    )


@pytest.mark.parametrize("call", ["ShowDeviceTunnel", "AddTunnel"])  # a GET's and a POST's read timeouts differ
async def test_a_silent_endpoint_times_out(call):
    hang = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hang.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HuaweiCloudAPI(
            region=REGION, endpoint=f"http://127.0.0.1:{port}", project_id="p", ak=AK, sk=SK, timeout=0.5
        ) as api:
            with pytest.raises(PlatformUnreachable, match=rf"did not answer {call} within 0\.5 s"):
                await (api.show_tunnel("t") if call == "ShowDeviceTunnel" else api.add_tunnel("d"))
    finally:
        hang.set()
        server.close()
        await server.wait_closed()


async def test_signed_and_token_requests_side_by_side(keyed, api: PlatformAPI):
    """The platform keeps accepting X-Auth-Token; an AK/SK of one project cannot reach another."""
    keyed.add_device("dev-1", "s")
    keyed.add_project("other", "other-token")
    keyed.add_access_key("OTHERAK0000000000000", "other-sk", project_id="other")
    assert [d["device_id"] for d in await api.list_devices()] == ["dev-1"]
    async with cloud_api(keyed, ak="OTHERAK0000000000000", sk="other-sk", project_id="other") as other:
        assert await other.list_devices() == []
    # Signed by hand: a request whose X-Project-Id names another project than its path is refused.
    url = f"{keyed.base_url}/v5/iot/{keyed.project_id}/devices"
    host = keyed.base_url.split("://")[1]
    async with aiohttp.ClientSession() as http:
        for project_header, status in ((keyed.project_id, 200), ("other", 403)):
            headers = {"Host": host, "X-Project-Id": project_header}
            headers |= signing.sign(
                "GET", f"/v5/iot/{keyed.project_id}/devices", headers, access_key=AK, secret_key=SK, when=time.time()
            )
            async with http.get(url, headers=headers) as resp:
                assert resp.status == status, await resp.text()
        # Neither a token nor a signature: the platform's usual 401.
        async with http.get(url) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["error_code"] == ErrorCode.UNAUTHORIZED
            assert "X-Auth-Token" in body["error_msg"]
        # A token wins over a signature when both are sent.
        async with http.get(url, headers={"X-Auth-Token": API_TOKEN, "Authorization": "SDK-HMAC-SHA256 junk"}) as resp:
            assert resp.status == 200
        async with http.get(url, headers={"Authorization": "Bearer abc"}) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["error_code"] == "APIGW.0301"
            assert "unsupported signing algorithm Bearer" in body["error_msg"]


def test_platform_key_arguments():
    with pytest.raises(ValueError, match="together"):
        Platform(ak="only-ak")
    platform = Platform(ak=AK, sk=SK)
    assert SK not in repr(platform)
    with pytest.raises(ValueError, match="already"):
        platform.add_access_key(AK, "another")
    with pytest.raises(ValueError, match="does not exist"):
        platform.add_access_key("NEWAK000000000", "x", project_id="nope")
    with pytest.raises(ValueError, match="spaces"):
        platform.add_access_key("bad ak", "x")
    with pytest.raises(ValueError, match="empty"):
        platform.add_access_key("NEWAK000000000", "")


# --- configuration ------------------------------------------------------------------------------


async def test_credentials_from_the_sdk_environment_variables(keyed, monkeypatch):
    monkeypatch.setenv(ENV_AK, AK)
    monkeypatch.setenv(ENV_SK, SK)
    monkeypatch.setenv(ENV_PROJECT_ID, keyed.project_id)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SECURITY_TOKEN", "temporary-key-token")  # signed along as X-Security-Token
    keyed.add_device("dev-1", "s")
    async with cloud_api_from_env(region=REGION, endpoint=keyed.base_url) as api:
        assert [d["device_id"] for d in await api.list_devices()] == ["dev-1"]
        text = repr(api)
        assert SK not in text and AK not in text and AK[:4] + "****" in text
        assert keyed.base_url in text and keyed.project_id in text and "temporary-key-token" not in text
    # Explicit keys never pick up the environment's token (it belongs to the environment's key).
    assert cloud_api(keyed)._security_token is None


def test_configuration_errors_say_what_to_set(monkeypatch):
    with pytest.raises(TunnelnbError, match="HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK"):
        cloud_api_from_env(region=REGION, project_id="p")
    monkeypatch.setenv(ENV_AK, AK)
    monkeypatch.setenv(ENV_SK, SK)
    with pytest.raises(TunnelnbError, match="HUAWEICLOUD_SDK_PROJECT_ID"):
        cloud_api_from_env(region=REGION)
    with pytest.raises(TunnelnbError, match="no region"):
        cloud_api_from_env(project_id="p", endpoint="http://127.0.0.1:9")
    with pytest.raises(TunnelnbError, match="no default endpoint in region 'xx-nowhere-9'"):
        cloud_api_from_env(project_id="p", region="xx-nowhere-9")
    # Nothing below contacts a network: building the client makes no call.
    by_region = cloud_api_from_env(region="cn-north-4", project_id="p", instance_id="i-1")
    assert by_region.base_url == "https://iotda.cn-north-4.myhuaweicloud.com"
    assert by_region.instance_id == "i-1" and "instance_id='i-1'" in repr(by_region)
    instance = cloud_api_from_env(project_id="p", endpoint="abc123.st1.iotda-app.ap-southeast-3.myhuaweicloud.com/")
    assert instance.region == "ap-southeast-3"
    assert instance.base_url == "https://abc123.st1.iotda-app.ap-southeast-3.myhuaweicloud.com"
    with pytest.raises(ValueError):
        HuaweiCloudAPI(region=REGION, project_id="p", ak=AK, sk=SK, max_workers=0)


def test_missing_sdk_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huaweicloudsdkiotda.v5.iotda_client", None)
    with pytest.raises(HuaweiCloudSDKMissing, match=r"pip install 'tunnelnb\[huaweicloud\]'") as info:
        HuaweiCloudAPI(region=REGION, project_id="p", ak=AK, sk=SK)
    assert isinstance(info.value, ImportError) and isinstance(info.value, TunnelnbError)


def test_importing_tunnelnb_does_not_import_the_sdk():
    code = (
        "import sys, tunnelnb, tunnelnb.client.cloud, tunnelnb.server.platform\n"
        "import tunnelnb.protocol.signing, tunnelnb.fleet.fleet\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('huaweicloudsdk'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- end to end: a fleet over the SDK backend ----------------------------------------------------------


async def test_fleet_over_the_sdk_backend_runs_commands(keyed, devices: Devices, ssh_server):
    for i in range(1, 4):
        await devices.add(f"device-0{i}", ssh_port=ssh_server.port)
    keyed.add_device("device-04", "never-online")
    with only_loopback():
        fleet = Fleet(cloud_api(keyed), login=(SSH_USER, SSH_PASSWORD))
        try:
            await fleet.refresh()
            assert list(fleet.devices().device_id) == ["device-01", "device-02", "device-03", "device-04"]
            res = await fleet.run("echo hello-$((40+2)); cd /tmp", timeout=20)
            again = await fleet.run("pwd", "device-0[1-3]", timeout=20)
        finally:
            await fleet.close()
    status = dict(zip(res.df.device_id, res.df.status, strict=True))
    assert status == {"device-01": "ok", "device-02": "ok", "device-03": "ok", "device-04": "offline"}
    assert set(res.df[res.df.status == "ok"].stdout) == {"hello-42\n"}
    assert "offline" in res.df.set_index("device_id").loc["device-04", "error"]
    assert set(again.df.stdout) == {"/tmp\n"}  # the same sessions, their shells' state kept
    assert SSH_PASSWORD not in fleet.history.to_csv() and SK not in fleet.history.to_csv()
    assert keyed.tunnels == {}  # every session's tunnel closed and deleted through the SDK

"""TLS: the platform on https/wss with a certificate made at test time; agents and clients verify it."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import SSH_PASSWORD, SSH_USER
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import InsecureTLSWarning, PlatformUnreachable
from tunnelnb.server.agent import Agent
from tunnelnb.server.platform import Platform
from tunnelnb.tls import client_ssl, server_ssl

API_TOKEN = "tls-token"


def make_ca_and_leaf(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a leaf for 127.0.0.1 / localhost signed by it: (ca.pem, leaf.pem, leaf.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunnelnb test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_ca_and_leaf(tmp_path)


@pytest.fixture
async def tls_platform(certs):
    _, leaf, key = certs
    async with Platform(api_token=API_TOKEN, heartbeat=None, ssl_context=server_ssl(str(leaf), str(key))) as p:
        yield p


async def test_a_command_end_to_end_over_https_and_wss_with_verification(tls_platform, certs, ssh_server):
    ca, _, _ = certs
    assert tls_platform.base_url.startswith("https://127.0.0.1:")
    tls_platform.add_device("dev-tls", "dev-secret")
    verify = client_ssl(str(ca))
    async with Agent(tls_platform.base_url, "dev-tls", "dev-secret", ssh_port=ssh_server.port, ssl=verify) as agent:
        await agent.wait_online()
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=verify))
        api = PlatformAPI(tls_platform.base_url, project_id=tls_platform.project_id, api_token=API_TOKEN, session=http)
        try:
            async with DeviceSession(api, "dev-tls") as dev:
                assert dev._grant is not None and dev._grant.tunnel_uri.startswith("wss://127.0.0.1:")
                await dev.login(SSH_USER, SSH_PASSWORD)
                result = await dev.run("echo over-tls")
                assert (result.status, result.stdout) == ("ok", "over-tls\n")
        finally:
            await http.close()


async def test_an_untrusted_certificate_is_a_clear_error(tls_platform):
    tls_platform.add_device("dev-tls", "dev-secret")
    agent = Agent(tls_platform.base_url, "dev-tls", "dev-secret")  # verifies against the system CAs
    with pytest.raises(PlatformUnreachable, match=r"TLS certificate is not trusted.*--ca-bundle"):
        await agent.start()
    api = PlatformAPI(tls_platform.base_url, project_id=tls_platform.project_id, api_token=API_TOKEN)
    try:
        with pytest.raises(PlatformUnreachable):
            await api.list_devices()
    finally:
        await api.close()


async def test_insecure_is_an_explicit_opt_out_that_warns(tls_platform):
    tls_platform.add_device("dev-tls", "dev-secret")
    with pytest.warns(InsecureTLSWarning, match="verification is off"):
        insecure = client_ssl(insecure=True)
    assert insecure is False
    async with Agent(tls_platform.base_url, "dev-tls", "dev-secret", ssl=insecure) as agent:
        await agent.wait_online()
        assert agent.online


def test_bad_certificate_files_are_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        server_ssl(str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot load the CA bundle"):
        client_ssl(str(tmp_path / "junk.pem"))
    assert isinstance(client_ssl(None), bool) and client_ssl(None) is True
    assert isinstance(server_ssl(*map(str, make_ca_and_leaf(tmp_path)[1:])), ssl.SSLContext)


async def test_cli_platform_on_https_and_an_agent_with_a_ca_bundle(certs, tmp_path):
    import os
    import re

    from tests.cli.test_cli import TUNNELNB, spawn

    ca, leaf, key = certs
    env = {**os.environ, "TUNNELNB_API_TOKEN": API_TOKEN, "TUNNELNB_DEVICE_SECRET": "dev-secret",
           "TUNNELNB_LOGIN_PASSWORD": "pw"}  # fmt: skip
    platform_argv = [
        TUNNELNB,
        "platform",
        "--port",
        "0",
        "--mqtt-port",
        "0",
        "--mqtts-port",
        "0",
        "--tls-cert",
        str(leaf),
        "--tls-key",
        str(key),
    ]
    with spawn("platform", platform_argv, tmp_path, env) as platform:
        url = (await platform.wait_line(re.compile(r"https://127\.0\.0\.1:\d+"))).group(0)
        verify = client_ssl(str(ca))
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=verify))
        api = PlatformAPI(url, project_id="demo", api_token=API_TOKEN, session=http)
        try:
            await api.add_device("dev-cli", secret="dev-secret")
            agent_argv = [TUNNELNB, "agent", "--platform", url, "--device-id", "dev-cli", "--local-shell",
                          "--login-user", "ops", "--ca-bundle", str(ca)]  # fmt: skip
            with spawn("agent", agent_argv, tmp_path, env) as agent:
                for _ in range(100):
                    if (await api.show_device("dev-cli"))["status"] == "ONLINE":
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail(f"the agent did not come online over https: {agent.describe()}")
            # Without the CA bundle the agent refuses the platform's certificate, in one sentence.
            with spawn("untrusting", agent_argv[:-2], tmp_path, env) as untrusting:
                assert await untrusting.wait_exit() != 0
                assert "TLS certificate is not trusted" in untrusting.stderr
                assert "Traceback" not in untrusting.stderr
        finally:
            await http.close()


async def test_a_simulated_fleet_joins_an_https_platform_with_a_ca_bundle(tls_platform, certs):
    from tunnelnb.fleet.fleet import Fleet
    from tunnelnb.sim import SimulatedFleet

    ca, _, _ = certs
    verify = client_ssl(str(ca))
    sim = SimulatedFleet(
        tls_platform.base_url, api_token=API_TOKEN, devices=2, seed=3, misbehaving=0, backend="local", ssl=verify
    )
    await sim.start()
    try:
        api = PlatformAPI(tls_platform.base_url, project_id=tls_platform.project_id, api_token=API_TOKEN, ssl=verify)
        async with Fleet(api, login=sim.login()) as fleet:
            res = await fleet.run("hostname", timeout=20)
            assert list(res.df.stdout) == ["device-01\n", "device-02\n"]
    finally:
        await sim.stop()

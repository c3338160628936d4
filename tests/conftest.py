"""Shared fixtures: real servers on loopback, started and stopped per test."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tunnelnb.client.api import PlatformAPI
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.server.agent import Agent
from tunnelnb.server.platform import Platform
from tunnelnb.server.sshserver import ShellServer

TUNNELNB = str(Path(sys.executable).with_name("tunnelnb"))  # the installed console script
API_TOKEN = "test-api-token-" + secrets.token_hex(4)
SSH_USER, SSH_PASSWORD = "ops", "ops-pass-" + secrets.token_hex(4)


@pytest.fixture(scope="session", autouse=True)
def local_shell_account() -> None:
    """``tunnelnb agent --local-shell --login-user ops`` started as root runs its shell as ``ops``.

    The agent refuses to give a login a root shell, so the account must exist on the
    machine (CI runs as root); a non-root run needs none: its shell is the runner's user.
    """
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(SSH_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", SSH_USER], check=True, capture_output=True)


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    async with Platform(api_token=API_TOKEN, heartbeat=None) as p:
        yield p


@pytest.fixture
async def api(platform: Platform) -> AsyncIterator[PlatformAPI]:
    async with PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=API_TOKEN) as client:
        yield client


@pytest.fixture
async def ssh_server(tmp_path: Path) -> AsyncIterator[ShellServer]:
    async with ShellServer(users={SSH_USER: SSH_PASSWORD}, cwd=str(tmp_path)) as srv:
        yield srv


@dataclass
class Devices:
    """Registers devices on the platform and runs their agents; stops them all at the end."""

    platform: Platform
    agents: list[Agent] = field(default_factory=list)

    async def add(self, device_id: str, *, secret: str | None = None, **agent_kwargs: Any) -> Agent:
        secret = secret or "secret-" + secrets.token_hex(4)
        self.platform.add_device(device_id, secret)
        agent = Agent(self.platform.base_url, device_id, secret, heartbeat=None, **agent_kwargs)
        await agent.start()
        await agent.wait_online(10)
        self.agents.append(agent)
        return agent

    async def add_all(self, ids: Sequence[str], **agent_kwargs: Any) -> None:
        """:meth:`add` each of ``ids``, in order (the platform lists them so)."""
        for device_id in ids:
            await self.add(device_id, **agent_kwargs)

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()


def device_ids(count: int) -> list[str]:
    """``device-01`` … ``device-NN``."""
    return [f"device-{i:02d}" for i in range(1, count + 1)]


@contextlib.asynccontextmanager
async def open_fleet(api: PlatformAPI, **options: Any) -> AsyncIterator[Fleet]:
    """A Fleet on the test platform with the test login, its inventory read; every session closed at the end."""
    fleet = Fleet(api, login=(SSH_USER, SSH_PASSWORD), **options)
    await fleet.refresh()
    try:
        yield fleet
    finally:
        await fleet.close("*")


@pytest.fixture
async def devices(platform: Platform) -> AsyncIterator[Devices]:
    d = Devices(platform)
    try:
        yield d
    finally:
        await d.stop()


# --- OpenSSH's sshd, from Debian's openssh-server, on a loopback port of its own ----------

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
OPENSSH_USER = "tunnelnb-test"


@dataclass(frozen=True)
class OpenSSHServer:
    host: str
    port: int
    user: str
    password: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_test_user(password: str) -> None:
    """A throw-away local user with a known password (sshd checks real accounts)."""
    try:
        pwd.getpwnam(OPENSSH_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", OPENSSH_USER], check=True, capture_output=True
        )
    subprocess.run(["chpasswd"], input=f"{OPENSSH_USER}:{password}\n", text=True, check=True, capture_output=True)


@pytest.fixture(scope="session")
def openssh() -> Iterator[OpenSSHServer]:
    if SSHD is None:
        pytest.skip("OpenSSH's sshd is not installed (Debian package openssh-server; .ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("running sshd with password logins for a test user needs root")
    password = "Tnb-" + secrets.token_urlsafe(12)
    _ensure_test_user(password)
    workdir = Path(tempfile.mkdtemp(prefix="tunnelnb-sshd-"))
    key = workdir / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    port = _free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {workdir / 'sshd.pid'}\n"
        "UsePAM no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
        f"AllowUsers {OPENSSH_USER}\nStrictModes no\nPrintMotd no\nAuthorizedKeysFile none\n"
    )
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
        yield OpenSSHServer("127.0.0.1", port, OPENSSH_USER, password)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def platform_and_sim_processes(
    api_token: str,
    login_password: str,
    *,
    devices: int = 3,
    platform_args: Sequence[str] = (),
    platform_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """``tunnelnb platform`` and a healthy ``tunnelnb sim`` of ``devices`` devices as processes; yields the URL."""
    procs: list[subprocess.Popen[str]] = []

    def start(args: list[str], env: dict[str, str]) -> str:
        proc = subprocess.Popen(
            [TUNNELNB, *args], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # both print one line once they serve
        if not first:
            proc.kill()
            raise AssertionError(f"tunnelnb {args[0]} did not start: {proc.stderr.read() if proc.stderr else ''}")
        return first.strip()

    try:
        url = start(
            ["platform", "--port", "0", "--mqtt-port", "0", "--log-level", "warning", *platform_args],
            {"TUNNELNB_API_TOKEN": api_token, **(platform_env or {})},
        )
        line = start(
            ["sim", "--platform", url, "--devices", str(devices), "--misbehaving", "0", "--log-level", "warning"],
            {"TUNNELNB_API_TOKEN": api_token, "TUNNELNB_LOGIN_PASSWORD": login_password},
        )
        assert f"{devices} simulated devices" in line
        yield url
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()

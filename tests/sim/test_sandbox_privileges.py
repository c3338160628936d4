"""No privilege surprises (issue 14): what a device's login shell can see and become.

* ``tunnelnb agent --local-shell`` started as root runs the shell as the
  ``--login-user`` account, with an environment of its own, so the login cannot
  read the device secret, the login password or an API token from any
  ``/proc/PID/environ``; without such an account it refuses to start.
* A simulated device's shell lives in a PID namespace of its own: ``ps -e`` and
  ``/proc`` show the sandbox's processes, not the host's.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
import subprocess
from collections.abc import AsyncIterator

import pytest

from tests.conftest import API_TOKEN, TUNNELNB
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.server.platform import Platform
from tunnelnb.sim import SimulatedFleet, make_profiles

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching the shell's user needs root")

LOGIN_USER = "nobody"  # Debian's unprivileged account; the tests need no account of their own


def _login_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(LOGIN_USER)
    except KeyError:
        pytest.skip(f"this machine has no {LOGIN_USER!r} account to run the shell as")


def _spawn_agent(url: str, device_id: str, secrets_: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            TUNNELNB,
            "agent",
            "--platform",
            url,
            "--device-id",
            device_id,
            "--local-shell",
            "--login-user",
            LOGIN_USER,
            "--log-level",
            "warning",
        ],
        env={**os.environ, **secrets_},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc


def _environ_of(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


@pytest.fixture
async def root_agent(platform: Platform, api: PlatformAPI) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """``tunnelnb agent --local-shell --login-user nobody`` as a root process; yields its device id and secrets."""
    _login_account()
    device_id = "dev-root"
    secrets_ = {
        "TUNNELNB_DEVICE_SECRET": "devsecret-" + secrets.token_hex(8),
        "TUNNELNB_LOGIN_PASSWORD": "loginpw-" + secrets.token_hex(8),
        "TUNNELNB_API_TOKEN": API_TOKEN,
    }
    platform.add_device(device_id, secrets_["TUNNELNB_DEVICE_SECRET"])
    proc = _spawn_agent(platform.base_url, device_id, secrets_)
    try:
        async with asyncio.timeout(30):
            while (await api.show_device(device_id)).get("status") != "ONLINE":
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                await asyncio.sleep(0.1)
        # root reads it: the secrets are there to find
        assert secrets_["TUNNELNB_DEVICE_SECRET"].encode() in _environ_of(proc.pid)
        yield device_id, secrets_
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


async def test_a_root_agents_local_shell_runs_as_the_login_user_and_finds_no_secrets(
    api: PlatformAPI, root_agent: tuple[str, dict[str, str]]
) -> None:
    device_id, secrets_ = root_agent
    account = _login_account()
    async with DeviceSession(api, device_id) as dev:
        await dev.login(LOGIN_USER, secrets_["TUNNELNB_LOGIN_PASSWORD"])

        async def run(command: str) -> str:
            r = await dev.run(command, timeout=30)
            assert r.exit_code is not None, (command, r)
            return r.stdout

        assert (await run("id -u; id -g")).split() == [str(account.pw_uid), str(account.pw_gid)]
        assert await run("cat /proc/1/environ 2>/dev/null | wc -c") == "0\n"
        leaked = await run("env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'")
        assert "TUNNELNB" not in leaked
        for name, value in secrets_.items():
            r = await dev.run(f"grep -rlF -- '{value}' /proc/*/environ 2>/dev/null", timeout=30)
            assert (r.status, r.stdout) == (ResultStatus.ERROR, ""), f"{name} readable in {r.stdout}"
        # sanity: the environments it cannot read are there, the agent's among them
        assert int(await run("ls -d /proc/[0-9]* | wc -l")) > 2


def test_a_root_agent_without_the_login_users_account_refuses_to_start(platform: Platform) -> None:
    user = "tunnelnb-no-such-user-" + secrets.token_hex(3)
    done = subprocess.run(
        [TUNNELNB, "agent", "--platform", platform.base_url, "--device-id", "x", "--local-shell", "--login-user", user],
        env={**os.environ, "TUNNELNB_DEVICE_SECRET": "s", "TUNNELNB_LOGIN_PASSWORD": "p"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"refusing to run the local shell as root: there is no account {user!r}" in done.stderr


async def test_a_simulated_devices_shell_sees_only_its_own_processes(platform: Platform, api: PlatformAPI) -> None:
    async with SimulatedFleet(
        platform.base_url,
        api_token=API_TOKEN,
        devices=make_profiles(1, seed=3, misbehaving=0),
        agent_options={"heartbeat": None},
    ) as fleet:
        if fleet.sandbox == "none":
            pytest.skip("no namespaces here: the simulated devices' shells run on the host")
        device_id = fleet.profiles[0].device_id
        async with DeviceSession(api, device_id) as dev:
            await dev.login(*fleet.login())
            r = await dev.run("echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '", timeout=30)
            assert r.status == ResultStatus.OK, r
            shell_pid, listed = r.stdout.splitlines()
            pids = [int(p) for p in listed.split()]
            assert shell_pid == "1"  # the login shell is the first process of its own namespace
            assert len(pids) <= 5, f"/proc lists other processes: {pids}"  # sh, ls, grep, sort, tr
            r = await dev.run("ps -e -o pid=,comm=", timeout=30)
            assert r.status == ResultStatus.OK, r
            names = [line.split(None, 1)[1] for line in r.stdout.strip().splitlines()]
            assert set(names) <= {"sh", "ps"}, names
            assert not re.search(r"python|tunnelnb|pytest", r.stdout)
            r = await dev.run("cat /proc/1/environ | tr '\\0' '\\n' | grep -c TUNNELNB", timeout=30)
            assert r.stdout.strip() == "0"

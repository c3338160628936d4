"""The ``tunnelnb`` command, as an operator runs it: real subprocesses on loopback.

Each process writes stdout and stderr to files under ``tmp_path`` (no pipe can fill
up and stall it), every wait has a deadline, and every process still running when a
test ends is killed with its whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunnelnb.client.api import PlatformAPI, TunnelGrant
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import PlatformError
from tunnelnb.server.platform import Platform

PYTHON = sys.executable
TUNNELNB = str(Path(sys.executable).parent / "tunnelnb")  # the installed console script
URL_LINE = re.compile(r"http://127\.0\.0\.1:(\d+)")
TOKEN_LINE = re.compile(r".*\bexport TUNNELNB_API_TOKEN=(\S+)")
WAIT = 10.0  # upper bound of every wait; the happy paths take well under a second

pytestmark = pytest.mark.timeout(60)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any TUNNELNB_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELNB_")}
    env.update(extra)
    return env


def closed_port() -> socket.socket:
    """A loopback socket that is bound but not listening: connecting to its port is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def run(argv: Sequence[str], env: dict[str, str], timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Proc:
    """A running ``tunnelnb`` process whose output goes to two files."""

    name: str
    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    argv: list[str] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return self.out_path.read_bytes().decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_bytes().decode("utf-8", "replace")

    def describe(self) -> str:
        return f"{self.name} (rc={self.popen.poll()})\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    async def wait_line(self, pattern: re.Pattern[str], timeout: float = WAIT) -> re.Match[str]:
        """The first complete stdout line that ``pattern`` matches in full."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stdout.split("\n")[:-1]:  # complete lines only
                if m := pattern.fullmatch(line.strip()):
                    return m
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited before printing {pattern.pattern!r}: {self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} printed no {pattern.pattern!r} within {timeout:g} s: {self.describe()}")
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float = WAIT) -> int:
        """The exit status, without blocking the event loop (an in-process platform may be serving)."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} still running after {timeout:g} s: {self.describe()}")
            await asyncio.sleep(0.05)
        return self.popen.returncode


@contextlib.contextmanager
def spawn(name: str, argv: list[str], tmp_path: Path, env: dict[str, str]) -> Iterator[Proc]:
    """Start ``argv`` in a session of its own; on the way out kill it (and its children) if still running."""
    with open(tmp_path / f"{name}.out", "wb") as out, open(tmp_path / f"{name}.err", "wb") as err:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )
        try:
            yield Proc(name, popen, tmp_path / f"{name}.out", tmp_path / f"{name}.err", argv)
        finally:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)  # the group: a --local-shell agent has shells
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(5)


class RecordingAPI(PlatformAPI):
    """PlatformAPI that remembers the tunnel grants it received (to look for their tokens in logs)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.grants: list[TunnelGrant] = []

    async def add_tunnel(self, device_id: str) -> TunnelGrant:
        grant = await super().add_tunnel(device_id)
        self.grants.append(grant)
        return grant


def assert_one_clear_error(stderr: str, *fragments: str) -> None:
    """stderr explains the failure in a sentence: no traceback, nothing else."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    final = [line for line in lines if line.startswith("tunnelnb: ")]
    assert len(final) == 1, stderr
    message = final[0].removeprefix("tunnelnb: ")
    for fragment in fragments:
        assert fragment in message, stderr
    # The agent also logs the same sentence at ERROR before raising; nothing else may appear.
    assert all(message in line for line in lines), stderr


# ---------------------------------------------------------------------------
# 1. platform + agent as processes, an application session in the test


async def test_platform_and_agent_processes_run_commands_stop_cleanly_and_log_no_secrets(tmp_path: Path) -> None:
    api_token = "cli-api-" + secrets.token_urlsafe(16)
    device_secret = "cli-dev-" + secrets.token_urlsafe(16)
    login_password = "cli-pw-" + secrets.token_urlsafe(16)
    device_id = "dev-cli"

    platform_argv = [PYTHON, "-m", "tunnelnb", "platform", "--port", "0", "--mqtt-port", "0", "--log-level", "debug"]
    with spawn("platform", platform_argv, tmp_path, clean_env(TUNNELNB_API_TOKEN=api_token)) as plat:
        url = (await plat.wait_line(URL_LINE)).group(0)
        async with RecordingAPI(url, project_id="demo", api_token=api_token, timeout=WAIT) as api:
            await api.add_device(device_id, device_secret, device_id=device_id)
            assert (await api.show_device(device_id))["status"] == "OFFLINE"

            agent_argv = [
                PYTHON, "-m", "tunnelnb", "agent", "--platform", url, "--device-id", device_id,
                "--local-shell", "--login-user", "ops", "--log-level", "debug",
            ]  # fmt: skip
            agent_env = clean_env(TUNNELNB_DEVICE_SECRET=device_secret, TUNNELNB_LOGIN_PASSWORD=login_password)
            with spawn("agent", agent_argv, tmp_path, agent_env) as agent:
                deadline = time.monotonic() + WAIT
                while (await api.show_device(device_id))["status"] != "ONLINE":
                    if agent.popen.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"the device did not come online: {agent.describe()}\n{plat.describe()}")
                    await asyncio.sleep(0.05)

                session = DeviceSession(api, device_id, join_timeout=3.0, reconnect_tries=1, reconnect_step=0.1)
                try:
                    await session.open()
                    await session.login("ops", login_password, timeout=WAIT)
                    uname = await session.run("uname -a", timeout=WAIT)
                    assert uname.status == ResultStatus.OK and uname.exit_code == 0, uname
                    assert uname.stdout.strip(), uname
                    answer = await session.run("echo $((6*7))", timeout=WAIT)
                    assert answer.ok and answer.stdout == "42\n", answer

                    agent.popen.send_signal(signal.SIGTERM)
                    assert await agent.wait_exit() == 0, agent.describe()
                    assert "stopped" in agent.stderr, agent.describe()

                    # The application side hears the device leave, and can no longer run anything.
                    deadline = time.monotonic() + WAIT
                    while session.joined:
                        assert time.monotonic() < deadline, "the session did not see the device leave"
                        await asyncio.sleep(0.05)
                    after = await session.run("echo still-there", timeout=5)
                    assert not after.ok and after.status in (ResultStatus.OFFLINE, ResultStatus.DISCONNECTED), after
                    assert "still-there" not in after.stdout
                    assert (await api.show_device(device_id))["status"] == "OFFLINE"
                finally:
                    await session.close()

        plat.popen.send_signal(signal.SIGINT)
        assert await plat.wait_exit() == 0, plat.describe()
        assert "platform stopped" in plat.stderr, plat.describe()

    assert api.grants, "the session created no tunnel"
    secrets_used = {
        "API token": api_token,
        "device secret": device_secret,
        "login password": login_password,
        **{f"tunnel access token {i}": g.token for i, g in enumerate(api.grants)},
    }
    logs = {name: p.stdout + p.stderr for name, p in (("platform", plat), ("agent", agent))}
    assert "DEBUG" in logs["platform"] and "DEBUG" in logs["agent"], "debug logging was not on"
    leaks = [
        f"{what} in the {name}'s output" for name, text in logs.items() for what, s in secrets_used.items() if s in text
    ]
    assert not leaks, leaks


# ---------------------------------------------------------------------------
# 2. a generated API token, shown once on stdout, never logged


async def test_platform_without_token_offers_a_generated_one_on_stdout_only(tmp_path: Path) -> None:
    argv = [TUNNELNB, "platform", "--port", "0", "--mqtt-port", "0", "--log-level", "debug"]
    with spawn("platform", argv, tmp_path, clean_env()) as plat:
        token = (await plat.wait_line(TOKEN_LINE)).group(1)
        url = (await plat.wait_line(URL_LINE)).group(0)
        async with PlatformAPI(url, project_id="demo", api_token=token, timeout=WAIT) as api:
            assert await api.list_devices() == []
        async with PlatformAPI(url, project_id="demo", api_token=token + "x", timeout=WAIT) as wrong:
            with pytest.raises(PlatformError) as refused:
                await wrong.list_devices()
            assert refused.value.status == 401
        plat.popen.send_signal(signal.SIGINT)
        assert await plat.wait_exit() == 0, plat.describe()

    offers = [line for line in plat.stdout.splitlines() if "TUNNELNB_API_TOKEN=" in line]
    assert len(offers) == 1, plat.stdout
    assert offers[0].strip().endswith(f"export TUNNELNB_API_TOKEN={token}")
    assert len(token) >= 16
    assert token not in plat.stderr, plat.stderr
    assert "platform stopped" in plat.stderr


# ---------------------------------------------------------------------------
# 3. the agent fails fast and clearly: wrong secret, unreachable platform


async def test_agent_with_wrong_secret_exits_with_one_clear_line(tmp_path: Path, platform: Platform) -> None:
    platform.add_device("dev-wrong", "the-right-secret")
    wrong = "wrong-" + secrets.token_hex(8)
    argv = [TUNNELNB, "agent", "--platform", platform.base_url, "--device-id", "dev-wrong", "--ssh", "127.0.0.1:9"]
    with spawn("agent", argv, tmp_path, clean_env(TUNNELNB_DEVICE_SECRET=wrong)) as agent:
        rc = await agent.wait_exit()
    assert rc != 0, agent.describe()
    assert_one_clear_error(agent.stderr, "dev-wrong", "401", "check the device secret")
    assert wrong not in agent.stdout + agent.stderr
    assert platform.devices["dev-wrong"]["status"] == "OFFLINE"


def test_agent_with_unreachable_platform_exits_with_one_clear_line() -> None:
    with closed_port() as s:
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        proc = run(
            [PYTHON, "-m", "tunnelnb", "agent", "--platform", url, "--device-id", "dev-x"],
            clean_env(TUNNELNB_DEVICE_SECRET="s3cret-" + secrets.token_hex(4)),
        )
    assert proc.returncode != 0, proc
    assert time.monotonic() - t0 < WAIT
    assert_one_clear_error(proc.stderr, "cannot reach the platform", url)


# ---------------------------------------------------------------------------
# 4. missing secrets are named


@pytest.mark.parametrize(
    ("extra_args", "env", "variable"),
    [
        ([], {}, "TUNNELNB_DEVICE_SECRET"),
        (["--local-shell"], {"TUNNELNB_DEVICE_SECRET": "s"}, "TUNNELNB_LOGIN_PASSWORD"),
    ],
    ids=["device-secret", "login-password"],
)
def test_agent_without_secret_names_the_variable(extra_args: list[str], env: dict[str, str], variable: str) -> None:
    with closed_port() as s:
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        proc = run([TUNNELNB, "agent", "--platform", url, "--device-id", "dev-x", *extra_args], clean_env(**env))
    assert proc.returncode != 0, proc
    assert variable in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------
# 5. help and the demo


def test_help_lists_subcommands_and_options() -> None:
    top = run([PYTHON, "-m", "tunnelnb", "--help"], clean_env())
    assert top.returncode == 0, top
    for command in ("platform", "agent", "demo"):
        assert command in top.stdout

    plat = run([TUNNELNB, "platform", "--help"], clean_env())
    assert plat.returncode == 0, plat
    for option in ("--host", "--port", "--project-id", "--api-token", "--token-ttl", "--log-level"):
        assert option in plat.stdout

    agent = run([TUNNELNB, "agent", "--help"], clean_env())
    assert agent.returncode == 0, agent
    for option in ("--platform", "--device-id", "--device-secret", "--ssh", "--local-shell", "--login-user"):
        assert option in agent.stdout


def test_no_subcommand_is_a_usage_error() -> None:
    proc = run([TUNNELNB], clean_env())
    assert proc.returncode == 2, proc
    assert "usage:" in proc.stderr


def test_demo_runs_commands_through_a_tunnel() -> None:
    proc = run([PYTHON, "-m", "tunnelnb", "demo", "--text"], clean_env(), timeout=30)
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert "$ uname -a" in lines, proc.stdout
    uname_output = lines[lines.index("$ uname -a") + 1]
    assert os.uname().sysname in uname_output and os.uname().release in uname_output, proc.stdout
    assert "exit code 3" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr

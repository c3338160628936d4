"""End to end: application → platform → agent → SSH → a real shell, and back.

Every test runs the real local platform, the real agent and a real shell on a
PTY (behind the embedded asyncssh server, a local shell, or OpenSSH's sshd), all
on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import SSH_PASSWORD, SSH_USER, Devices, OpenSSHServer
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import AuthFailed, DeviceOffline, LoginError, TunnelnbError
from tunnelnb.protocol.frames import DEFAULT_MAX_MESSAGE_BYTES
from tunnelnb.server.agent import Agent

QUIRKS = ["none", "c-sdk", "c-sdk-1.1", "csharp-sdk"]


def _utf8_text(size: int, seed: int = 7) -> str:
    """About ``size`` bytes of lines mixing ASCII, accents, CJK and emoji, ending in a newline."""
    rng = random.Random(seed)
    alphabet = "abcdefghij KLMNOP 0123456789 éàü ßø 中文字符 日本語 한국어 😀🚀 ✓ ≤≥"
    lines, total = [], 0
    while total < size:
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(40, 70)))
        lines.append(line)
        total += len(line.encode()) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture(params=["asyncssh", "local-shell"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


async def _device(devices: Devices, device_id: str, backend: str, ssh_server, **kwargs) -> None:
    if backend == "local-shell":
        await devices.add(device_id, local_shell=(SSH_USER, SSH_PASSWORD), **kwargs)
    else:
        await devices.add(device_id, ssh_port=ssh_server.port, **kwargs)


@pytest.fixture
async def session(api: PlatformAPI, devices: Devices, ssh_server, request) -> AsyncIterator[DeviceSession]:
    quirks = getattr(request, "param", "none")
    await devices.add("dev-1", ssh_port=ssh_server.port, quirks=quirks, stray_bytes=0)
    async with DeviceSession(api, "dev-1") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        yield dev


async def _check_core_commands(dev: DeviceSession, workdir: Path) -> None:
    """The issue's acceptance list: exit codes, scripts, cd, 1 MB of UTF-8, exactly."""
    r = await dev.run("true")
    assert (r.status, r.exit_code, r.stdout) == (ResultStatus.OK, 0, "")
    r = await dev.run("false")
    assert (r.status, r.exit_code) == (ResultStatus.ERROR, 1)
    assert r.error == "exit status 1"
    r = await dev.run("(exit 3)")
    assert (r.status, r.exit_code) == (ResultStatus.ERROR, 3)

    script = 'for i in 1 2 3; do\n  echo "line $i"\ndone\nif [ -d / ]; then echo yes; else echo no; fi\necho "err" >&2'
    r = await dev.run(script)
    assert r.exit_code == 0
    assert r.stdout == "line 1\nline 2\nline 3\nyes\nerr\n"

    r = await dev.run(f"cd {workdir}")
    assert r.exit_code == 0
    r = await dev.run("pwd; X=kept")
    assert r.stdout == f"{workdir}\n"
    r = await dev.run('echo "$X"; printf abc')
    assert r.stdout == "kept\nabc"

    text = _utf8_text(1_000_000)
    (workdir / "big.txt").write_text(text, encoding="utf-8")
    r = await dev.run("cat big.txt", timeout=60)
    assert r.status == ResultStatus.OK, r.error
    assert hashlib.sha256(r.stdout.encode()).hexdigest() == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("quirks", QUIRKS)
async def test_core_commands_exact_in_every_quirk_mode(api, devices, ssh_server, tmp_path, quirks):
    # Exact: no stray bytes after the C SDK's full reads (tests/server/test_csdk_quirks.py has them).
    await devices.add("dev-q", ssh_port=ssh_server.port, quirks=quirks, stray_bytes=0)
    async with DeviceSession(api, "dev-q") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        await _check_core_commands(dev, tmp_path)
        assert dev.max_received_bytes <= DEFAULT_MAX_MESSAGE_BYTES


async def test_core_commands_local_shell(api, devices, tmp_path):
    await devices.add("dev-local", local_shell=(SSH_USER, SSH_PASSWORD))
    async with DeviceSession(api, "dev-local") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        await _check_core_commands(dev, tmp_path)
        assert dev.max_received_bytes <= DEFAULT_MAX_MESSAGE_BYTES


@pytest.mark.openssh
@pytest.mark.parametrize("quirks", ["none", "c-sdk"])
async def test_core_commands_through_openssh(api, devices, tmp_path, openssh: OpenSSHServer, quirks):
    await devices.add("dev-openssh", ssh_host=openssh.host, ssh_port=openssh.port, quirks=quirks, stray_bytes=0)
    workdir = Path("/tmp") / f"tunnelnb-openssh-{quirks}"
    workdir.mkdir(exist_ok=True)
    workdir.chmod(0o777)
    async with DeviceSession(api, "dev-openssh") as dev:
        await dev.login(openssh.user, openssh.password)
        r = await dev.run("id -un; echo $0")
        assert r.stdout.splitlines()[0] == openssh.user
        await _check_core_commands(dev, workdir)


@pytest.mark.openssh
async def test_openssh_wrong_password_is_auth_failed(api, devices, openssh: OpenSSHServer):
    await devices.add("dev-openssh-bad", ssh_host=openssh.host, ssh_port=openssh.port)
    async with DeviceSession(api, "dev-openssh-bad") as dev:
        with pytest.raises(AuthFailed, match="wrong user name or password"):
            await dev.login(openssh.user, "not-the-password")


async def test_command_longer_than_one_message(api, devices, ssh_server):
    await devices.add("dev-long", ssh_port=ssh_server.port)
    async with DeviceSession(api, "dev-long") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        payload = "x" * 30_000 + "é" * 5000
        r = await dev.run(f"printf '%s' '{payload}' | wc -c")
        assert r.status == ResultStatus.OK
        assert int(r.stdout.strip()) == len(payload.encode())
        r = await dev.run("printf 'a\\tb\\n'; echo 'tab\there'")
        assert r.stdout == "a\tb\ntab\there\n"


@pytest.mark.parametrize("backend_kind", ["asyncssh", "local-shell"])
async def test_wrong_password_is_auth_failed_and_others_keep_working(api, devices, ssh_server, backend_kind):
    await _device(devices, "dev-bad", backend_kind, ssh_server)
    await _device(devices, "dev-good", backend_kind, ssh_server)
    async with DeviceSession(api, "dev-bad") as bad, DeviceSession(api, "dev-good") as good:
        with pytest.raises(AuthFailed, match="wrong user name or password"):
            await bad.login(SSH_USER, "wrong")
        await good.login(SSH_USER, SSH_PASSWORD)
        assert (await good.run("echo fine")).stdout == "fine\n"
        # run() turns the failed re-login into a row, not an exception
        bad._credentials = (SSH_USER, "still-wrong")
        r = await bad.run("true", timeout=5)
        assert r.status == ResultStatus.AUTH_FAILED
        assert "wrong user name or password" in r.error


async def test_unreachable_ssh_server_is_a_clear_login_error(api, devices):
    await devices.add("dev-nossh", ssh_port=1)  # nothing listens on port 1
    async with DeviceSession(api, "dev-nossh") as dev:
        with pytest.raises(LoginError) as exc:
            await dev.login(SSH_USER, SSH_PASSWORD)
    assert str(exc.value) == (
        "dev-nossh: the device could not open an SSH session (400 cannot reach the SSH server at "
        "127.0.0.1:1: Connection refused): check the user, the password and its SSH server"
    )


@pytest.mark.parametrize("quirks", ["c-sdk", "c-sdk-1.1"])
async def test_a_c_sdk_device_refusing_the_login_is_auth_failed(api, devices, ssh_server, quirks):
    # The C SDK answers every SSH failure with disconnect 400 "Create SSH channel failed"
    # (wss_client.c): the row says auth_failed and names both causes it can mean.
    await devices.add("dev-csdk", ssh_port=ssh_server.port, quirks=quirks)
    async with DeviceSession(api, "dev-csdk") as dev:
        with pytest.raises(AuthFailed) as exc:
            await dev.login(SSH_USER, "wrong")
        assert str(exc.value) == (
            "dev-csdk: the device could not open an SSH session (400 WssClientListenerOnMsg: Create SSH channel "
            "failed): wrong user or password, or its SSH server is down"
        )
        await dev.login(SSH_USER, SSH_PASSWORD)  # the right password still works on the same tunnel
        assert (await dev.run("echo fine")).stdout == "fine\n"


async def test_offline_device(api, platform, devices):
    platform.add_device("dev-off", "s")
    with pytest.raises(DeviceOffline, match="offline"):
        async with DeviceSession(api, "dev-off"):
            pass
    with pytest.raises(TunnelnbError, match="no device 'nope'"):
        async with DeviceSession(api, "nope"):
            pass


async def test_timeout_interrupts_and_the_next_command_works(api, devices, ssh_server):
    await devices.add("dev-slow", ssh_port=ssh_server.port)
    async with DeviceSession(api, "dev-slow") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        r = await dev.run("echo started; sleep 30", timeout=1.5)
        assert r.status == ResultStatus.TIMEOUT
        assert r.exit_code is None
        assert "no end of output within 1.5 s" in r.error
        assert r.stdout == "started\n"
        r = await dev.run("echo next", timeout=10)
        assert (r.status, r.stdout) == (ResultStatus.OK, "next\n")


async def test_cancel_interrupts_and_the_session_stays_usable(api, devices, ssh_server):
    await devices.add("dev-cancel", ssh_port=ssh_server.port)
    async with DeviceSession(api, "dev-cancel") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        task = asyncio.create_task(dev.run("sleep 30", timeout=60))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        r = await dev.run("echo after", timeout=10)
        assert (r.status, r.stdout) == (ResultStatus.OK, "after\n")


async def test_device_vanishing_mid_command_is_disconnected_others_keep_working(api, devices, ssh_server):
    doomed = await devices.add("dev-doomed", ssh_port=ssh_server.port)
    await devices.add("dev-other", ssh_port=ssh_server.port)
    async with DeviceSession(api, "dev-doomed") as a, DeviceSession(api, "dev-other") as b:
        await a.login(SSH_USER, SSH_PASSWORD)
        await b.login(SSH_USER, SSH_PASSWORD)
        task = asyncio.create_task(a.run("sleep 30", timeout=30))
        await asyncio.sleep(0.5)
        await doomed.stop()
        r = await asyncio.wait_for(task, 10)
        assert r.status == ResultStatus.DISCONNECTED
        assert "dev-doomed" in r.error
        assert (await b.run("echo alive")).stdout == "alive\n"


async def test_stream_yields_output_as_it_arrives(api, devices, ssh_server):
    await devices.add("dev-stream", ssh_port=ssh_server.port)
    async with DeviceSession(api, "dev-stream") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        pieces = [p async for p in dev.stream("echo one; sleep 0.3; echo two", timeout=10)]
        assert "".join(pieces) == "one\ntwo\n"
        assert len(pieces) >= 2  # the sleep separates them
        assert dev.last_result is not None and dev.last_result.exit_code == 0


async def test_c_sdk_1_1_lost_output_ends_in_timeout_then_recovers(api, devices, ssh_server):
    """The C SDK up to v1.1.3 drops a chunk whose JSON overflows 2,304 bytes: a clear timeout, never a hang."""
    await devices.add("dev-c", ssh_port=ssh_server.port, quirks="c-sdk-1.1")
    async with DeviceSession(api, "dev-c") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        # 1,500 quotes cost 3,000 bytes of JSON escapes: the chunk with the end marker is dropped
        r = await dev.run("""printf '"%.0s' $(seq 1 1500)""", timeout=2)
        assert r.status == ResultStatus.TIMEOUT
        assert "output was lost" in r.error
        r = await dev.run("echo recovered", timeout=10)
        assert (r.status, r.stdout) == (ResultStatus.OK, "recovered\n")


async def test_close_closes_the_tunnel_and_a_new_session_takes_over(api, platform, devices, ssh_server):
    await devices.add("dev-t", ssh_port=ssh_server.port)
    dev = DeviceSession(api, "dev-t")
    await dev.open()
    first = dev.tunnel_id
    # Another session for the same device replaces the open tunnel (one tunnel per device).
    async with DeviceSession(api, "dev-t", delete_tunnel=True) as other:
        await other.login(SSH_USER, SSH_PASSWORD)
        assert (await other.run("echo taken")).stdout == "taken\n"
        assert other.tunnel_id != first
        tunnels = await api.list_tunnels("dev-t")
        assert [t["tunnel_id"] for t in tunnels if t["status"] == "OPEN"] == [other.tunnel_id]
    await dev.close()
    assert await api.list_tunnels("dev-t") == []


async def test_session_logs_in_again_when_the_device_comes_back(api, platform, ssh_server):
    platform.add_device("dev-re", "secret-re")

    async def start_agent() -> Agent:
        agent = Agent(platform.base_url, "dev-re", "secret-re", ssh_port=ssh_server.port, heartbeat=None)
        await agent.start()
        await agent.wait_online(10)
        return agent

    agent = await start_agent()
    async with DeviceSession(api, "dev-re", join_timeout=3) as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        await agent.stop()
        r = await dev.run("echo x", timeout=3)
        assert r.status == ResultStatus.OFFLINE, r
        agent = await start_agent()
        try:
            r = await dev.run("echo back", timeout=10)
            assert (r.status, r.stdout) == (ResultStatus.OK, "back\n"), r
        finally:
            await agent.stop()


async def test_live_output_keeps_colours_and_stdout_does_not(session: DeviceSession):
    live: list[str] = []
    r = await session.run(r"printf '\033[31mred\033[0m plain\n'", on_output=live.append)
    assert r.stdout == "red plain\n"
    assert "".join(live) == "\x1b[31mred\x1b[0m plain\n"

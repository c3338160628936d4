"""Verified runs end to end (``run(..., verify=True)``): exact output from devices that damage it.

The real local platform, the real agent emulating the C SDK (``quirks="c-sdk"``:
stray bytes after full 2,048-byte reads; ``"c-sdk-1.1"``: a chunk whose JSON does
not fit its buffer dropped) and a real shell behind the embedded SSH server, all
on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import SSH_PASSWORD, SSH_USER, Devices
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.client.verified import END_GRACE_S, MAX_REREADS
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.fleet.tables import output_text

SEQ = "".join(f"{i}\n" for i in range(1, 20_001))


@pytest.fixture
async def dev(api: PlatformAPI, devices: Devices, ssh_server) -> AsyncIterator[DeviceSession]:
    await devices.add("dev-v", ssh_port=ssh_server.port, quirks="c-sdk", stray_bytes=0.5)
    async with DeviceSession(api, "dev-v") as session:
        await session.login(SSH_USER, SSH_PASSWORD)
        yield session


def exists(path: str | Path) -> bool:
    """Is the file there (a quick local look, from a test's coroutine)?"""
    return Path(path).exists()


async def plain(dev: DeviceSession, command: str) -> str:
    r = await dev.run(command, timeout=20)
    assert r.status == ResultStatus.OK, r
    return r.stdout


@pytest.mark.parametrize(("quirks", "stray"), [("c-sdk", 0.5), ("c-sdk", None), ("c-sdk-1.1", None)])
async def test_seq_is_exact_on_a_c_sdk_device(api, devices, ssh_server, quirks, stray):
    await devices.add("dev-seq", ssh_port=ssh_server.port, quirks=quirks, stray_bytes=stray)
    live: list[tuple[str, str]] = []
    async with Fleet(api, login=(SSH_USER, SSH_PASSWORD)) as fleet:
        res = await fleet.run(
            "seq 1 20000", "dev-seq", verify=True, timeout=60, on_output=lambda d, t: live.append((d, t))
        )
        row = res["dev-seq"]
        assert (row.status, row.exit_code, row.error) == ("ok", 0, "")
        assert row.stdout == SEQ
        assert live == []  # nothing is streamed during a verified run
        # The shell is usable after it, verified or not.
        again = await fleet.run("seq 3 | tr '\\n' ,", "dev-seq")
        assert again["dev-seq"].stdout == "1,2,3,"


async def test_a_megabyte_of_utf8_is_exact(dev: DeviceSession, ssh_server, tmp_path: Path):
    text = "é中" * 200_000  # 1,000,000 bytes of two- and three-byte characters
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    r = await dev.run(f"cat '{tmp_path / 'big.txt'}'", verify=True, timeout=60)
    assert (r.status, r.exit_code) == (ResultStatus.OK, 0), r.error
    assert r.stdout == text


async def test_binary_output_is_exact_and_said_to_be_binary(dev: DeviceSession, tmp_path: Path):
    r = await dev.run(
        f"cd '{tmp_path}' && head -c 100000 /dev/urandom > rand.bin && cat rand.bin", verify=True, timeout=60
    )
    assert (r.status, r.exit_code) == (ResultStatus.OK, 0), r.error
    raw = r.stdout.encode("utf-8", "surrogateescape")
    assert len(raw) == 100_000
    digest = (await plain(dev, "sha256sum rand.bin")).split()[0]  # the verified `cd` held
    assert hashlib.sha256(raw).hexdigest() == digest
    assert output_text(r.stdout) == "binary output, 100000 bytes"


async def test_cd_and_variables_persist_exit_codes_and_bytes_are_kept(dev: DeviceSession):
    streamed: list[str] = []
    r = await dev.run("cd /tmp", verify=True, on_output=streamed.append)
    assert (r.status, r.exit_code, r.stdout, r.error) == (ResultStatus.OK, 0, "", "")
    assert await plain(dev, "pwd") == "/tmp\n"
    r = await dev.run("V=42; echo set", verify=True)
    assert r.stdout == "set\n"
    assert (await dev.run('echo "$V"; pwd', verify=True)).stdout == "42\n/tmp\n"
    assert await plain(dev, 'echo "$V"') == "42\n"
    r = await dev.run("sh -c 'exit 7'", verify=True)
    assert (r.status, r.exit_code, r.stdout, r.error) == (ResultStatus.ERROR, 7, "", "exit status 7")
    r = await dev.run("echo out; echo err >&2; printf 'a\\r\\n\\033[1mb'", verify=True, on_output=streamed.append)
    assert r.stdout == "out\nerr\na\r\n\x1b[1mb"  # the bytes as written: \r and escapes kept
    r = await dev.run("cat", verify=True, timeout=5)  # stdin is /dev/null
    assert (r.status, r.stdout) == (ResultStatus.OK, "")
    assert streamed == []


async def test_the_temporary_file_is_gone_afterwards(dev: DeviceSession):
    r = await dev.run('echo "$__tnb_f"', verify=True)
    path = r.stdout.strip()
    assert Path(path).name.startswith("tnb-"), path
    assert not exists(path)
    # Nothing of the run is left in the shell either: no file of this session, no __tnb_ variable.
    assert await plain(dev, f"ls -d ${{TMPDIR:-/tmp}}/tnb-{dev._tag}x* 2>/dev/null | wc -l") == "0\n"
    assert await plain(dev, "set | grep -c '^__tnb_'; true") == "0\n"


async def test_a_timed_out_run_leaves_its_file_to_the_next_run(dev: DeviceSession, tmp_path: Path):
    side = tmp_path / "path.txt"
    r = await dev.run(f"echo \"$__tnb_f\" > '{side}'; sleep 30", verify=True, timeout=1)
    assert r.status == ResultStatus.TIMEOUT
    path = side.read_text().strip()
    assert exists(path)
    assert await plain(dev, "echo next") == "next\n"  # the next run deletes it first
    assert not exists(path)


async def test_a_cancelled_run_leaves_its_file_to_the_next_run(dev: DeviceSession, tmp_path: Path):
    side = tmp_path / "path.txt"
    task = asyncio.create_task(dev.run(f"echo \"$__tnb_f\" > '{side}'; sleep 30", verify=True, timeout=60))
    async with asyncio.timeout(10):
        while not side.exists() or not side.read_text().strip():  # noqa: ASYNC110 - the device writes it
            await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    path = side.read_text().strip()
    assert exists(path)
    assert await plain(dev, "echo next") == "next\n"
    assert not exists(path)


async def test_a_fleet_row_follows_ok_codes(api, devices, ssh_server):
    await devices.add("dev-ok", ssh_port=ssh_server.port, quirks="c-sdk")
    async with Fleet(api, login=(SSH_USER, SSH_PASSWORD)) as fleet:
        row = (await fleet.run("sh -c 'exit 7'", "dev-ok", verify=True, ok_codes=(0, 7)))["dev-ok"]
        assert (row.status, row.exit_code, row.error) == ("ok", 7, "")
        row = (await fleet.run("sh -c 'exit 7'", "dev-ok", verify=True))["dev-ok"]
        assert (row.status, row.exit_code, row.error) == ("error", 7, "exit status 7")


class LosingTheEndMarker(DeviceSession):
    """A session whose device loses the end marker that follows a dump's trailer, once."""

    lost = False

    def _on_output(self, data: str) -> None:
        if not self.lost and "#TNB T " in data:
            data, n = re.subn(r"__TNB_E_[A-Za-z0-9]+_\d+__\n", "", data, count=1)
            self.lost = n == 1
        super()._on_output(data)


async def test_a_lost_end_marker_costs_a_moment_not_a_timeout(api, devices, ssh_server):
    await devices.add("dev-end", ssh_port=ssh_server.port)
    async with LosingTheEndMarker(api, "dev-end") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        r = await dev.run("seq 5; (exit 4)", verify=True, timeout=30)
        assert dev.lost
        # The exit status came with a re-read; the wait was the grace, not the timeout.
        assert (r.status, r.exit_code, r.stdout) == (ResultStatus.ERROR, 4, "1\n2\n3\n4\n5\n")
        assert END_GRACE_S <= r.duration_s < 10
        assert (await dev.run("echo next")).stdout == "next\n"


class Garbling(DeviceSession):
    """A session whose device garbles every block of a dump (each ``A`` of the base64 arrives as ``B``)."""

    def _on_output(self, data: str) -> None:
        super()._on_output(data.replace("A", "B"))


class GarblingFleet(Fleet):
    def _new_session(self, device_id: str) -> DeviceSession:
        return Garbling(self.api, device_id, join_timeout=self.join_timeout, delete_tunnel=True)


async def test_a_device_that_damages_everything_is_an_error_row(api, devices, ssh_server):
    await devices.add("dev-bad", ssh_port=ssh_server.port)
    async with GarblingFleet(api, login=(SSH_USER, SSH_PASSWORD)) as fleet:
        res = await fleet.run('echo "$__tnb_f" >&2; head -c 30000 /dev/zero', "dev-bad", verify=True, timeout=30)
        row = res["dev-bad"]
        assert row.status == "error"
        assert row.error == (
            f"output damaged in transit: 10 of 10 blocks failed their checksum after {MAX_REREADS + 1} reads "
            "(exit status 0)"
        )
        assert row.exit_code is None and row.stdout == ""
        session = fleet.session("dev-bad")
        assert session is not None and session.logged_in
        # Its temporary file is deleted all the same, and the shell works.
        res = await fleet.run(f"ls -d ${{TMPDIR:-/tmp}}/tnb-{session._tag}x* 2>/dev/null | wc -l", "dev-bad")
        assert res["dev-bad"].stdout == "0\n"

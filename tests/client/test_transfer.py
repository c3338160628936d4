"""Files in and out of one device end to end (``DeviceSession.get_file`` / ``put_file``).

The real local platform, the real agent (well-behaved, or emulating the C SDK:
``quirks="c-sdk"`` with stray bytes after full reads, ``"c-sdk-1.1"`` dropping a
chunk whose JSON does not fit), and a real shell behind the embedded SSH server,
all on loopback.  A full filesystem is a real 256 KiB tmpfs, mounted in a user and
mount namespace the device's shell runs in (``unshare -rm``: no privileges needed
where user namespaces are allowed; skipped elsewhere).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import SSH_PASSWORD, SSH_USER, Devices
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.client.transfer import MAX_REREADS, FileResult, get_file, put_file
from tunnelnb.protocol.shell import command_script
from tunnelnb.protocol.verify import DAMAGED
from tunnelnb.server.sshserver import ShellServer

UNSHARE = shutil.which("unshare")
TEXT = "température 中文 ✓ line\n" * 20_000  # multi-byte characters split across every kind of read


async def plain(dev: DeviceSession, command: str) -> str:
    r = await dev.run(command, timeout=20)
    assert r.status == ResultStatus.OK, r
    return r.stdout


def progress_log() -> tuple[list[tuple[int, int]], Callable[[int, int], None]]:
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def assert_progress(calls: list[tuple[int, int]], total: int) -> None:
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)  # never backwards
    assert {t for _, t in calls} == {total}


@pytest.mark.parametrize(("quirks", "stray"), [("none", None), ("c-sdk", 0.5), ("c-sdk-1.1", None)])
async def test_binary_and_text_files_are_exact_both_ways(
    api: PlatformAPI, devices: Devices, ssh_server: ShellServer, tmp_path: Path, quirks: str, stray: float | None
) -> None:
    await devices.add("dev-f", ssh_port=ssh_server.port, quirks=quirks, stray_bytes=stray)
    binary = random.Random(1).randbytes(300_000)
    (tmp_path / "rand.bin").write_bytes(binary)
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    async with DeviceSession(api, "dev-f") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        calls, on_progress = progress_log()
        got = await dev.get_file(str(tmp_path / "rand.bin"), timeout=60, on_progress=on_progress)
        assert (got.status, got.error, got.size) == ("ok", "", 300_000)
        assert got.data == binary and got.sha256 == hashlib.sha256(binary).hexdigest()
        assert got.path == str(tmp_path / "rand.bin") and got.device_id == "dev-f"
        assert_progress(calls, 300_000)
        got = await dev.get_file("text.txt", timeout=60)  # relative to the shell's directory
        assert got.ok and got.data == TEXT.encode("utf-8")

        calls, on_progress = progress_log()
        sent = await dev.put_file(binary, "copy.bin", timeout=60, on_progress=on_progress)
        assert (sent.status, sent.error, sent.size, sent.sha256) == (
            "ok",
            "",
            300_000,
            hashlib.sha256(binary).hexdigest(),
        )
        assert (tmp_path / "copy.bin").read_bytes() == binary
        assert_progress(calls, 300_000)
        sent = await dev.put_file(TEXT.encode("utf-8"), "copy.txt", timeout=60)
        assert sent.ok and (tmp_path / "copy.txt").read_text(encoding="utf-8") == TEXT
        # Nothing else was left beside them, and the shell is usable.
        assert sorted(os.listdir(tmp_path)) == ["copy.bin", "copy.txt", "rand.bin", "text.txt"]
        assert await plain(dev, "echo next") == "next\n"


async def test_ten_megabytes_through_a_c_sdk_device_with_stray_bytes(
    api: PlatformAPI, devices: Devices, ssh_server: ShellServer, tmp_path: Path
) -> None:
    await devices.add("dev-big", ssh_port=ssh_server.port, quirks="c-sdk", stray_bytes=0.25)
    data = random.Random(10).randbytes(10 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    async with DeviceSession(api, "dev-big") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        got = await get_file(dev, "big.bin", timeout=120)
        assert (got.status, got.error, got.size, got.sha256) == ("ok", "", len(data), digest)
        assert got.data == data
        (tmp_path / "local.bin").write_bytes(data)
        sent = await put_file(dev, tmp_path / "local.bin", "uploaded.bin", timeout=120)  # a local path
        assert (sent.status, sent.error, sent.sha256) == ("ok", "", digest)
        assert hashlib.sha256((tmp_path / "uploaded.bin").read_bytes()).hexdigest() == digest


async def test_empty_files(api: PlatformAPI, devices: Devices, ssh_server: ShellServer, tmp_path: Path) -> None:
    await devices.add("dev-e", ssh_port=ssh_server.port)
    (tmp_path / "empty").write_bytes(b"")
    async with DeviceSession(api, "dev-e") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        got = await dev.get_file("empty")
        assert (got.status, got.size, got.data, got.sha256) == ("ok", 0, b"", hashlib.sha256(b"").hexdigest())
        sent = await dev.put_file(b"", "empty2")
        assert (sent.status, sent.size) == ("ok", 0)
        assert (tmp_path / "empty2").read_bytes() == b""


async def test_modes(api: PlatformAPI, devices: Devices, ssh_server: ShellServer, tmp_path: Path) -> None:
    await devices.add("dev-m", ssh_port=ssh_server.port)
    async with DeviceSession(api, "dev-m") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        umask = int((await plain(dev, "umask")).strip(), 8)
        assert (await dev.put_file(b"#!/bin/sh\necho hi\n", "run.sh", mode=0o751)).ok
        assert (tmp_path / "run.sh").stat().st_mode & 0o7777 == 0o751
        assert await plain(dev, "./run.sh") == "hi\n"
        assert (await dev.put_file(b"new", "fresh.txt")).ok
        assert (tmp_path / "fresh.txt").stat().st_mode & 0o7777 == 0o666 & ~umask
        (tmp_path / "secret.conf").write_bytes(b"old")
        (tmp_path / "secret.conf").chmod(0o600)
        assert (await dev.put_file(b"replaced", "secret.conf")).ok  # a replaced file keeps its mode
        assert (tmp_path / "secret.conf").stat().st_mode & 0o7777 == 0o600
        assert (tmp_path / "secret.conf").read_bytes() == b"replaced"


async def test_what_cannot_be_done_is_one_sentence(
    api: PlatformAPI, devices: Devices, ssh_server: ShellServer, tmp_path: Path
) -> None:
    await devices.add("dev-x", ssh_port=ssh_server.port)
    (tmp_path / "dir").mkdir()
    (tmp_path / "target.txt").write_bytes(b"kept")
    (tmp_path / "link").symlink_to(tmp_path / "target.txt")
    async with DeviceSession(api, "dev-x") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)

        async def failed(result: FileResult) -> str:
            assert (result.status, result.data) == ("error", None)
            return result.error

        assert await failed(await dev.get_file("/no/such")) == "/no/such: no such file on the device"
        assert await failed(await dev.get_file("dir")) == "dir: is a directory: give a file's path"
        assert await failed(await dev.get_file("/dev/null")) == (
            "/dev/null: not a regular file (a device, a pipe or a socket): only files can be copied"
        )
        assert await failed(await dev.put_file(b"x", "dir")) == "dir: is a directory: give the file's path (DIR/NAME)"
        assert await failed(await dev.put_file(b"x", "nodir/x")) == (
            "nodir/x: its directory does not exist on the device: create it first"
        )
        assert await failed(await dev.put_file(b"x", "link")) == (
            "link: is a symbolic link: give the path of the file it points to"
        )
        assert sorted(os.listdir(tmp_path)) == ["dir", "link", "target.txt"]
        assert (tmp_path / "target.txt").read_bytes() == b"kept"
        with pytest.raises(ValueError, match="names a directory"):
            await dev.put_file(b"x", "dir/")


class Garbling(DeviceSession):
    """A session whose device garbles all its output: each ``A`` arrives as ``B``."""

    def _on_output(self, data: str) -> None:
        super()._on_output(data.replace("A", "B"))


async def test_a_device_that_damages_everything_fails_a_get_and_a_put_still_works(
    api: PlatformAPI, devices: Devices, ssh_server: ShellServer, tmp_path: Path
) -> None:
    await devices.add("dev-bad", ssh_port=ssh_server.port)
    data = random.Random(2).randbytes(30_000)  # 33 parts of 912 bytes, 9 blocks
    (tmp_path / "f.bin").write_bytes(data)
    async with Garbling(api, "dev-bad") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        got = await dev.get_file("f.bin", timeout=30)
        # The checksums, the first reading and every re-read: 2 + MAX_REREADS reads.
        assert (got.status, got.data) == ("error", None)
        assert got.error == f"{DAMAGED}: 9 of 9 blocks failed their checksum after {2 + MAX_REREADS} reads"
        # What the device is sent is not damaged, and its answers to a put are digits.
        sent = await dev.put_file(data, "f.copy", timeout=30)
        assert sent.ok, sent.error
        assert (tmp_path / "f.copy").read_bytes() == data


async def test_a_cancelled_put_leaves_no_file_at_the_destination(
    api: PlatformAPI, devices: Devices, ssh_server: ShellServer, tmp_path: Path
) -> None:
    await devices.add("dev-c", ssh_port=ssh_server.port)
    data = random.Random(3).randbytes(4 * 1024 * 1024)
    (tmp_path / "dest.bin").write_bytes(b"the old contents")
    async with DeviceSession(api, "dev-c") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        started = asyncio.Event()
        task = asyncio.create_task(dev.put_file(data, "dest.bin", timeout=60, on_progress=lambda d, t: started.set()))
        async with asyncio.timeout(30):
            await started.wait()  # the first block is on the device
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (tmp_path / "dest.bin").read_bytes() == b"the old contents"
        temp = [name for name in os.listdir(tmp_path) if name.startswith(".dest.bin.tnb-")]
        assert len(temp) == 1  # left until the session's next command
        assert await plain(dev, "echo next") == "next\n"
        assert sorted(os.listdir(tmp_path)) == ["dest.bin"]


class FillingAfterPrepare(DeviceSession):
    """A session that fills the device's /data right after a put has prepared (its free space checked)."""

    fill_command = ""

    async def _execute(self, script, timeout, **kwargs):  # type: ignore[no-untyped-def]
        typed: list[str] = []

        def spy(marker_id: str) -> str:
            typed.append(script(marker_id))
            return typed[-1]

        finished = await super()._execute(spy, timeout, **kwargs)
        if self.fill_command and "#TNB R" in typed[0]:
            command, self.fill_command = self.fill_command, ""
            await super()._execute(lambda m: command_script(m, command), timeout, on_output=None)
        return finished


def _can_mount(mount: str) -> bool:
    """Can this user mount a tmpfs in a namespace of its own (the probe's namespace ends with it)?"""
    return subprocess.run([str(UNSHARE), "-rm", "sh", "-c", mount], capture_output=True).returncode == 0


@pytest.fixture
async def small_disk(tmp_path: Path) -> AsyncIterator[tuple[ShellServer, Path]]:
    """An SSH server whose shells run in a namespace with a 256 KiB tmpfs on ``tmp_path/data``."""
    data = tmp_path / "data"
    data.mkdir()
    mount = f"mount -t tmpfs -o size=256k tmpfs '{data}'"
    if UNSHARE is None or not _can_mount(mount):
        pytest.skip("no user and mount namespaces here (unshare -rm)")
    shell = (UNSHARE, "-rm", "sh", "-c", f"{mount} && cd '{data}' && exec sh")
    async with ShellServer(users={SSH_USER: SSH_PASSWORD}, cwd=str(tmp_path), shell=shell) as srv:
        yield srv, data


async def test_a_full_disk_is_said_and_leaves_nothing_behind(
    api: PlatformAPI, devices: Devices, small_disk: tuple[ShellServer, Path]
) -> None:
    srv, data = small_disk
    await devices.add("dev-full", ssh_port=srv.port)
    async with FillingAfterPrepare(api, "dev-full") as dev:
        await dev.login(SSH_USER, SSH_PASSWORD)
        path = f"{data}/big.bin"
        # Too big from the start: refused before a byte is sent.
        sent = await dev.put_file(bytes(1_000_000), path)
        assert (sent.status, sent.size) == ("error", 1_000_000)
        assert sent.error == (
            f"no space left on device at {path} (1000000 bytes needed, 262144 available); nothing was written there"
        )
        # Room at the start, none once the blocks come: dd fails, the temporary file goes.
        dev.fill_command = "head -c 200000 /dev/zero > fill"
        sent = await dev.put_file(random.Random(4).randbytes(200_000), path)
        free = int((await plain(dev, "df -kP . | tail -n 1")).split()[3]) * 1024
        assert sent.error == (
            f"no space left on device at {path} (200000 bytes needed, {free} available); nothing was written there"
        )
        assert await plain(dev, "ls -A") == "fill\n"  # no big.bin, no temporary file
        # What fits still goes.
        assert (await dev.put_file(b"small", "small.txt")).ok
        assert await plain(dev, "cat small.txt") == "small"

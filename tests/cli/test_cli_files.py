"""``tunnelnb get`` and ``tunnelnb put``: the console script against a simulated fleet (real platform, agents, shells).

Two simulated C SDK devices (stray bytes after full reads) and one offline, in this
test's event loop; the command runs as a subprocess, as an operator runs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import API_TOKEN
from tunnelnb.cli.files import TRANSFER_HEADER
from tunnelnb.server.platform import Platform
from tunnelnb.sim import SimulatedFleet
from tunnelnb.sim.profiles import make_profiles

TUNNELNB = str(Path(sys.executable).parent / "tunnelnb")


@pytest.fixture
async def sim(platform: Platform) -> AsyncIterator[SimulatedFleet]:
    profiles = make_profiles(3, seed=2, misbehaving=0.0, quirks="c-sdk")
    profiles[2] = dataclasses.replace(profiles[2], misbehaviour="offline")
    fleet = SimulatedFleet(platform.base_url, api_token=API_TOKEN, devices=profiles, agent_options={"stray_bytes": 0.5})
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        TUNNELNB,
        *args,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_put_then_get_and_the_exit_status(platform: Platform, sim: SimulatedFleet, tmp_path: Path) -> None:
    user, password = sim.login()
    env = {"TUNNELNB_API_TOKEN": API_TOKEN, "TUNNELNB_LOGIN_PASSWORD": password, "TUNNELNB_LOGIN_USER": user}
    local = tmp_path / "blob.bin"
    data = random.Random(7).randbytes(150_000)
    local.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    base = ("--platform", platform.base_url)

    code, out, err = await _cli("put", *base, "device-0[1-2]", "--", str(local), "/tmp/", env=env)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split() == list(TRANSFER_HEADER)
    assert [line.split()[:3] for line in lines] == [["device-01", "ok", "150.0"], ["device-02", "ok", "150.0"]]
    assert all(line.split()[5] == digest[:12] and line.split()[6] == "/tmp/blob.bin" for line in lines)
    assert "2 devices: 2 ok" in err

    out_dir = tmp_path / "out"
    code, out, err = await _cli(
        "get", *base, "--format", "json", "device-*", "--", "/tmp/blob.bin", str(out_dir), env=env
    )
    assert code == 1, err  # device-03 is offline
    rows = json.loads(out)
    assert [(r["device_id"], r["status"], r["bytes"], r["sha256"]) for r in rows] == [
        ("device-01", "ok", 150_000, digest),
        ("device-02", "ok", 150_000, digest),
        ("device-03", "offline", None, ""),
    ]
    assert (out_dir / "device-01" / "blob.bin").read_bytes() == data
    assert "3 devices: 2 ok, 1 offline" in err

    # The files are there now: refused without --force (exit 1), replaced with it (exit 0).
    code, out, err = await _cli(
        "get", *base, "--format", "json", "device-01", "--", "/tmp/blob.bin", str(out_dir), env=env
    )
    assert code == 1
    assert json.loads(out)[0]["error"] == (
        f"{out_dir / 'device-01' / 'blob.bin'} exists: pass overwrite=True (--force) to replace it"
    )
    code, out, err = await _cli("get", *base, "--force", "device-01", "--", "/tmp/blob.bin", str(out_dir), env=env)
    assert code == 0, err


async def test_mistakes_are_one_line(platform: Platform, sim: SimulatedFleet, tmp_path: Path) -> None:
    _, password = sim.login()
    env = {"TUNNELNB_API_TOKEN": API_TOKEN, "TUNNELNB_LOGIN_PASSWORD": password}
    code, out, err = await _cli("put", "--platform", platform.base_url, "device-01", "--", "/no/such", "/tmp/", env=env)
    assert (code, out, err) == (1, "", "tunnelnb: /no/such: no such local file\n")
    code, _, err = await _cli("get", "--platform", platform.base_url, "device-01", "--", "/etc/hostname", env=env)
    assert (code, err.splitlines()[-1]) == (2, "tunnelnb get: error: the following arguments are required: PATH")

"""``tunnelnb run --verify``: the console script against simulated C SDK devices (real platform, agents, shells)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import API_TOKEN
from tunnelnb.server.platform import Platform
from tunnelnb.sim import SimulatedFleet

TUNNELNB = str(Path(sys.executable).parent / "tunnelnb")


@pytest.fixture
async def c_sdk_sim(platform: Platform) -> AsyncIterator[SimulatedFleet]:
    fleet = SimulatedFleet(
        platform.base_url,
        api_token=API_TOKEN,
        devices=2,
        seed=1,
        misbehaving=0.0,
        quirks="c-sdk",
        agent_options={"stray_bytes": 0.5},
    )
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        TUNNELNB, *args, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_tunnelnb_run_verify(platform: Platform, c_sdk_sim: SimulatedFleet):
    user, password = c_sdk_sim.login()
    env = {"TUNNELNB_API_TOKEN": API_TOKEN, "TUNNELNB_LOGIN_PASSWORD": password, "TUNNELNB_LOGIN_USER": user}
    base = ("run", "--platform", platform.base_url, "--format", "json")
    code, out, err = await _cli(*base, "--verify", "device-0[1-2]", "--", "seq 1 20000; printf 'x\\r\\n'", env=env)
    assert code == 0, err
    rows = json.loads(out)
    expected = "".join(f"{i}\n" for i in range(1, 20_001)) + "x\r\n"
    assert [(r["device_id"], r["status"], r["exit_code"], r["error"]) for r in rows] == [
        ("device-01", "ok", 0, ""),
        ("device-02", "ok", 0, ""),
    ]
    assert [r["stdout"] for r in rows] == [expected, expected]
    # Bytes that are not UTF-8 come out of JSON as \udcXX escapes, and the table says "binary output".
    code, out, err = await _cli(*base, "--verify", "device-01", "--", "printf 'a\\377b'", env=env)
    assert code == 0, err
    assert json.loads(out)[0]["stdout"] == "a\\udcffb"
    table = ("run", "--platform", platform.base_url, "--verify", "device-01", "--")
    code, out, err = await _cli(*table, "printf 'a\\377b'", env=env)
    assert code == 0, err
    assert "binary output, 3 bytes" in out.splitlines()[1]
    code, out, err = await _cli(*table, "(exit 3)", env=env)
    assert code == 1
    assert out.splitlines()[1].split()[:3] == ["device-01", "error", "3"]

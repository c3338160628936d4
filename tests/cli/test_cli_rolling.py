"""``tunnelnb run --batch --max-errors --canary``: the console script against a simulated fleet on loopback."""

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
DEVICE_ID = "ID=$(sed -n 's/^device_id=//p' /etc/device.conf etc/device.conf 2>/dev/null | head -n 1)"

pytestmark = pytest.mark.timeout(120)


def failing_on(*ids: str, code: int = 3) -> str:
    return f'{DEVICE_ID}; echo "ran $ID"; case "$ID" in {"|".join(ids)}) (exit {code});; esac'


@pytest.fixture
async def sim(platform: Platform) -> AsyncIterator[SimulatedFleet]:
    fleet = SimulatedFleet(platform.base_url, api_token=API_TOKEN, devices=6, seed=1, misbehaving=0.0, backend="local")
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


async def test_tunnelnb_run_rolls_out_and_prints_skipped_rows(platform: Platform, sim: SimulatedFleet):
    user, password = sim.login()
    env = {"TUNNELNB_API_TOKEN": API_TOKEN, "TUNNELNB_LOGIN_PASSWORD": password, "TUNNELNB_LOGIN_USER": user}
    base = ("run", "--platform", platform.base_url)
    targets = "device-0[1-6]"

    code, out, err = await _cli(
        *base, "--format", "json", "--batch", "2", "--max-errors", "1", targets, "--",
        failing_on("device-03", "device-04"), env=env,
    )  # fmt: skip
    assert code == 1, err
    rows = json.loads(out)
    assert [(r["device_id"], r["status"], r["exit_code"]) for r in rows] == [
        ("device-01", "ok", 0),
        ("device-02", "ok", 0),
        ("device-03", "error", 3),
        ("device-04", "error", 3),
        ("device-05", "skipped", None),
        ("device-06", "skipped", None),
    ]
    assert [r["error"] for r in rows[4:]] == ["not started: 2 devices failed, more than --max-errors 1"] * 2
    assert "6 devices: 2 ok, 2 error, 2 skipped" in err

    # The table prints skipped rows like the others, with the reason.
    code, out, err = await _cli(*base, "--canary", "1", targets, "--", failing_on("device-01"), env=env)
    assert code == 1, err
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["DEVICE", "STATUS", "EXIT"]
    assert [line.split()[:2] for line in lines] == [["device-01", "error"]] + [
        [f"device-0{i}", "skipped"] for i in range(2, 7)
    ]
    assert all(line.endswith("not started: the canary device-01 failed") for line in lines[1:])

    # Percentages, and a rolling run where nothing fails exits 0.
    code, out, err = await _cli(
        *base, "--format", "json", "--batch", "50%", "--max-errors", "20%", targets, "--", failing_on("none"), env=env
    )
    assert code == 0, err
    assert [r["status"] for r in json.loads(out)] == ["ok"] * 6


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch", "0", "argument --batch: batch must be a positive number or a percentage like 25% (not '0')"),
        ("--batch", "150%", "argument --batch: batch must be a positive number or a percentage like 25% (not '150%')"),
        (
            "--max-errors",
            "x",
            "argument --max-errors: max_errors must be a number (0 or more) or a percentage like 10% (not 'x')",
        ),
        ("--canary", "0", "argument --canary: canary must be a positive number of devices (not '0')"),
    ],
)
async def test_bad_rolling_options_are_usage_errors(option: str, value: str, message: str):
    code, out, err = await _cli("run", "--platform", "http://127.0.0.1:9", option, value, "d", "--", "true", env={})
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err

"""The fleet against the simulated fleet: 50 devices, some misbehaving on purpose,
`tunnelnb run` from a terminal, and the blocking API for scripts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import API_TOKEN
from tunnelnb.client.api import PlatformAPI
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.server.platform import Platform
from tunnelnb.sim import SimulatedFleet

TUNNELNB = str(Path(sys.executable).parent / "tunnelnb")


@pytest.fixture
async def sim(platform: Platform) -> AsyncIterator[SimulatedFleet]:
    fleet = SimulatedFleet(platform.base_url, api_token=API_TOKEN, devices=50, seed=3, misbehaving=0.2)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def test_fifty_devices_every_row_has_the_right_status(api: PlatformAPI, sim: SimulatedFleet):
    kinds = sim.misbehaving
    assert set(kinds.values()) == {"slow", "flaky", "wrong_password", "disk_full", "offline"}
    async with Fleet(api, login=sim.login()) as fleet:
        # 200 KB of output: more than a flaky link carries before it drops.
        res = await fleet.run("head -c 200000 /dev/zero | tr '\\0' x; echo; echo probe > /data/probe", timeout=20)
        status = dict(zip(res.df.device_id, res.df.status, strict=True))
        assert len(status) == 50
        for device_id, got in status.items():
            kind = kinds.get(device_id)
            expected = {
                None: "ok",
                "slow": "ok",
                "wrong_password": "auth_failed",
                "offline": "offline",
                "disk_full": "error",  # writing to a full /data fails
            }.get(kind)
            if kind == "flaky":
                # the link drops mid-command; the session reconnects on the next run
                assert got in ("disconnected", "timeout"), (device_id, got, res[device_id].error)
            else:
                assert got == expected, (device_id, kind, got, res[device_id].error)
        for r in res.ok:
            assert r.stdout == "x" * 200_000 + "\n"
        disk_full = next(d for d, k in kinds.items() if k == "disk_full")
        assert res[disk_full].exit_code == 1  # ENOSPC (ext4 may report it as an I/O error on the write)
        assert res[disk_full].stdout.startswith("x" * 200_000 + "\n")
        # Slow devices answer, but later than the healthy ones.
        slow = [d for d, k in kinds.items() if k == "slow"]
        healthy = [r.duration_s for r in res.ok if r.device_id not in slow]
        assert min(res[d].duration_s for d in slow) > sorted(healthy)[len(healthy) // 2]

        # A second, small command works everywhere a login is possible, flaky devices included.
        res = await fleet.run("echo again", timeout=20)
        again = dict(zip(res.df.device_id, res.df.status, strict=True))
        for device_id, got in again.items():
            kind = kinds.get(device_id)
            if kind in ("wrong_password", "offline"):
                assert got != "ok"
            else:
                assert got == "ok", (device_id, kind, got, res[device_id].error)


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        TUNNELNB, *args, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def small_sim(platform: Platform) -> AsyncIterator[SimulatedFleet]:
    fleet = SimulatedFleet(platform.base_url, api_token=API_TOKEN, devices=6, seed=1, misbehaving=0.0)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def test_tunnelnb_run_formats_and_exit_status(platform: Platform, small_sim: SimulatedFleet):
    user, password = small_sim.login()
    env = {"TUNNELNB_API_TOKEN": API_TOKEN, "TUNNELNB_LOGIN_PASSWORD": password, "TUNNELNB_LOGIN_USER": user}
    code, out, err = await _cli(
        "run", "--platform", platform.base_url, "device-0[1-3]", "--", "cat /etc/hostname", env=env
    )
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:2] == ["DEVICE", "STATUS"]
    assert [line.split()[0] for line in lines] == ["device-01", "device-02", "device-03"]
    assert all(line.split()[1] == "ok" and line.split()[-1] == line.split()[0] for line in lines)
    assert "3 devices: 3 ok" in err
    assert password not in out + err and API_TOKEN not in out + err

    code, out, _ = await _cli(
        "run", "--platform", platform.base_url, "--format", "json", "device-01 device-02", "--", "(exit 4)", env=env
    )
    assert code == 1
    import json

    rows = json.loads(out)
    assert [(r["device_id"], r["status"], r["exit_code"]) for r in rows] == [
        ("device-01", "error", 4),
        ("device-02", "error", 4),
    ]

    code, out, _ = await _cli(
        "run", "--platform", platform.base_url, "--format", "csv", "device-01", "--", "echo hi", env=env
    )
    assert code == 0 and out.splitlines()[0].startswith("device_id,command,status,exit_code,stdout")

    code, _, err = await _cli("run", "--platform", platform.base_url, "nope-*", "--", "true", env=env)
    assert code == 1 and "no device matches 'nope-*'" in err and "Traceback" not in err

    code, _, err = await _cli(
        "run", "--platform", platform.base_url, "device-01", "--", "true", env={**env, "TUNNELNB_LOGIN_PASSWORD": ""}
    )
    assert code == 1 and "TUNNELNB_LOGIN_PASSWORD" in err


def test_sync_api_and_ctrl_c_gives_cancelled_rows(tmp_path):
    """The blocking twin for scripts, on an embedded fleet; Ctrl-C returns the rows as `cancelled`."""
    import tunnelnb

    with tunnelnb.connect_sync(embedded=True, devices=4, seed=1) as fleet:
        healthy = [d for d in fleet.select("*") if d not in fleet.fleet.embedded[1].misbehaving]
        res = fleet.run("echo sync", healthy, timeout=20)
        assert set(res.df.status) == {"ok"}
        timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C
        timer.start()
        try:
            res = fleet.run("sleep 30", healthy, timeout=60)
        finally:
            timer.cancel()
        assert set(res.df.status) == {"cancelled"}
        res = fleet.run("echo after", healthy, timeout=20)
        assert set(res.df.stdout) == {"after\n"}
        assert list(fleet.history.run.unique()) == [1, 2, 3]

        # Files and background runs block (or not) the same way.
        local = tmp_path / "note.txt"
        local.write_bytes(b"from the script\n")
        put = fleet.put(local, "/tmp/note.txt", healthy[0], timeout=20)
        assert [(r.status, r.bytes) for r in put] == [("ok", 16)]
        got = fleet.get("/tmp/note.txt", healthy[0], tmp_path / "back", timeout=20)
        assert [r.status for r in got] == ["ok"]
        assert (tmp_path / "back" / healthy[0] / "note.txt").read_bytes() == b"from the script\n"
        job = fleet.submit("echo bg", healthy, timeout=20)
        assert job.wait(30) is True
        assert set(job.result().df.stdout) == {"bg\n"}
        assert list(fleet.history.run.unique()) == [1, 2, 3, 4, 5, 6]


async def test_tunnelnb_sim_serves_until_sigterm(platform: Platform, api: PlatformAPI):
    proc = await asyncio.create_subprocess_exec(
        TUNNELNB,
        "sim",
        "--platform",
        platform.base_url,
        "--devices",
        "5",
        "--misbehaving",
        "0",
        "--log-level",
        "warning",
        env={**os.environ, "TUNNELNB_API_TOKEN": API_TOKEN, "TUNNELNB_LOGIN_PASSWORD": "sim-pass"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"5 simulated devices" in first
        devices = await api.list_devices()
        assert sorted(d["device_id"] for d in devices) == [f"device-0{i}" for i in range(1, 6)]
        assert {d["status"] for d in devices} == {"ONLINE"}
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert b"simulated fleet stopped" in out
        assert b"sim-pass" not in out + err and API_TOKEN.encode() not in out + err
        assert {d["status"] for d in await api.list_devices()} == {"OFFLINE"}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

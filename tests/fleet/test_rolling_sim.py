"""Rolling runs and ``Fleet.each`` against the simulated fleet: real agents and shells on loopback.

Devices fail on purpose by their id: the command reads the device's own
``device_id`` from its ``device.conf`` and exits non-zero on the ones named.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pandas as pd
import pytest

from tests.conftest import API_TOKEN
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import CommandResult, ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import TunnelnbError
from tunnelnb.fleet.fleet import DeviceWork, Fleet
from tunnelnb.fleet.progress import ProgressCounts
from tunnelnb.server.platform import Platform
from tunnelnb.sim import SimulatedFleet

pytestmark = pytest.mark.timeout(120)

IDS = [f"device-{i:02d}" for i in range(1, 11)]
NOW = datetime(2024, 1, 1, tzinfo=UTC)  # what a work says; the fleet stamps the device's real start
#: The device's id as its shell knows it (in any sandbox mode: /etc in a namespace, etc/ without one).
DEVICE_ID = "ID=$(sed -n 's/^device_id=//p' /etc/device.conf etc/device.conf 2>/dev/null | head -n 1)"


def failing_on(*ids: str, code: int = 3) -> str:
    """A command that prints ``ran DEVICE`` and exits ``code`` on the devices named, 0 elsewhere."""
    return f'{DEVICE_ID}; echo "ran $ID"; case "$ID" in {"|".join(ids)}) (exit {code});; esac'


@pytest.fixture
async def sim(platform: Platform) -> AsyncIterator[SimulatedFleet]:
    fleet = SimulatedFleet(platform.base_url, api_token=API_TOKEN, devices=10, seed=2, misbehaving=0.0, backend="local")
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


@pytest.fixture
async def fleet(api: PlatformAPI, sim: SimulatedFleet) -> AsyncIterator[Fleet]:
    async with Fleet(api, login=sim.login()) as f:
        assert f.select("*") == IDS
        yield f


def never_started(fleet: Fleet, ids: list[str]) -> None:
    """No tunnel was opened for these devices and the dashboard has no result of theirs."""
    status = fleet.status().set_index("device_id")
    for device_id in ids:
        assert fleet.session(device_id) is None, device_id
        assert pd.isna(status.loc[device_id, "last_status"]), device_id


async def test_the_error_budget_stops_the_run_after_the_batch_that_spends_it(fleet: Fleet):
    """10 devices, batches of 2, at most 1 error, devices 3 and 4 fail: 5 to 10 are skipped."""
    seen: list[CommandResult] = []
    res = await fleet.run(
        failing_on("device-03", "device-04"), IDS, timeout=20, batch=2, max_errors=1, on_result=seen.append
    )
    df = res.df
    assert list(df.device_id) == IDS
    assert list(df.status) == ["ok", "ok", "error", "error"] + ["skipped"] * 6
    assert list(df.exit_code[:4]) == [0, 0, 3, 3]
    assert df.exit_code[4:].isna().all()
    assert list(df.stdout[:4]) == [f"ran {d}\n" for d in IDS[:4]]
    assert list(df.error[4:]) == ["not started: 2 devices failed, more than --max-errors 1"] * 6
    assert list(df.stdout[4:]) == [""] * 6
    assert list(df.duration_s[4:]) == [0.0] * 6
    assert res.counts() == {"ok": 2, "error": 2, "skipped": 6}
    # Progress displays see every row: the batches in order, then the skipped ones.
    assert sorted(r.device_id for r in seen[:2]) == IDS[:2]
    assert sorted(r.device_id for r in seen[2:4]) == IDS[2:4]
    assert [(r.device_id, r.status) for r in seen[4:]] == [(d, "skipped") for d in IDS[4:]]
    counts = ProgressCounts(len(IDS))
    for row in seen:
        counts.update(row)
    assert counts.line() == "[10/10] 2 ok, 2 failed, 6 skipped"
    never_started(fleet, IDS[4:])
    history = fleet.history
    assert list(history.run.unique()) == [1]
    assert list(history.status) == list(df.status)
    assert list(history.error[4:]) == list(df.error[4:])


async def test_exactly_max_errors_failures_let_every_device_run(fleet: Fleet):
    res = await fleet.run(failing_on("device-03", "device-04"), IDS, timeout=20, batch=2, max_errors=2)
    assert res.counts() == {"ok": 8, "error": 2}


async def test_a_failed_canary_stops_the_run(fleet: Fleet):
    res = await fleet.run(failing_on("device-01", code=5), IDS, timeout=20, canary=1)
    df = res.df
    assert list(df.status) == ["error"] + ["skipped"] * 9
    assert df.exit_code[0] == 5
    assert list(df.error[1:]) == ["not started: the canary device-01 failed"] * 9
    never_started(fleet, IDS[1:])


async def test_healthy_canaries_let_the_rest_run(fleet: Fleet):
    res = await fleet.run(failing_on("device-05"), IDS, timeout=20, canary=2)
    assert list(res.df.status) == ["ok"] * 4 + ["error"] + ["ok"] * 5
    assert list(res.df.stdout) == [f"ran {d}\n" for d in IDS]


async def test_percentages_of_the_targets(fleet: Fleet):
    """30 % of 10 is batches of 3; 10 % of 10 allows 1 failure: the second batch's 2nd failure stops it."""
    res = await fleet.run(failing_on("device-02", "device-05"), IDS, timeout=20, batch="30%", max_errors="10%")
    df = res.df
    assert list(df.status) == ["ok", "error", "ok", "ok", "error", "ok"] + ["skipped"] * 4
    assert list(df.error[6:]) == ["not started: 2 devices failed, more than --max-errors 10% (1 of 10 devices)"] * 4
    never_started(fleet, IDS[6:])


async def test_devices_waiting_for_a_slot_do_not_start_once_the_budget_is_spent(fleet: Fleet):
    """No batches, one device at a time: the budget is checked as each device would start."""
    res = await fleet.run(failing_on("device-02"), IDS, timeout=20, concurrency=1, max_errors=0)
    assert list(res.df.status) == ["ok", "error"] + ["skipped"] * 8
    assert list(res.df.error[2:]) == ["not started: 1 device failed, more than --max-errors 0"] * 8


async def test_bad_rolling_options_start_no_device(fleet: Fleet):
    with pytest.raises(ValueError, match=r"^batch must be a positive number or a percentage like 25% \(not '0%'\)$"):
        await fleet.run("true", IDS, batch="0%")
    with pytest.raises(ValueError, match=r"^max_errors must be a number \(0 or more\) or a percentage like 10%"):
        await fleet.run("true", IDS, max_errors="lots")
    with pytest.raises(ValueError, match=r"^canary must be a positive number of devices \(not '0'\)$"):
        await fleet.run("true", IDS, canary=0)
    assert len(fleet.history) == 0
    never_started(fleet, IDS)


# -- Fleet.each: any work on logged-in sessions ---------------------------------------------


def hostname_work(fail: dict[str, BaseException] | None = None) -> DeviceWork:
    async def work(session: DeviceSession) -> CommandResult:
        if fail and session.device_id in fail:
            raise fail[session.device_id]
        result = await session.run(DEVICE_ID + '; echo "$ID"', timeout=10)
        return CommandResult(session.device_id, "probe", result.status, result.exit_code, result.stdout, 0.0, NOW)

    return work


async def test_each_gives_run_s_rows_for_any_work(fleet: Fleet, platform: Platform):
    platform.add_device("device-99", "never-online")
    await fleet.refresh()
    work = hostname_work({"device-02": TunnelnbError("the transfer broke off"), "device-03": RuntimeError("boom")})
    seen: list[CommandResult] = []
    res = await fleet.each("probe", ["device-01", "device-02", "device-03", "device-99"], work, on_result=seen.append)
    df = res.df
    assert list(df.device_id) == ["device-01", "device-02", "device-03", "device-99"]
    assert list(df.command) == ["probe"] * 4
    assert list(df.status) == ["ok", "disconnected", "disconnected", "offline"]
    assert df.stdout[0] == "device-01\n"
    assert df.error[1] == "the transfer broke off"
    assert df.error[2] == "tunnelnb failed on this device (RuntimeError: boom); the next run starts afresh"
    assert df.duration_s[0] > 0.0  # the device's whole part (login included), not what the work said
    assert df.started_at.notna().all()
    assert sorted(r.device_id for r in seen) == sorted(df.device_id)
    assert fleet.session("device-03") is None  # the bug closed its session: the next run starts afresh
    assert fleet.session("device-01") is not None and fleet.session("device-01").logged_in
    status = fleet.status().set_index("device_id")
    assert status.loc["device-01", "last_status"] == "ok"
    assert not status.loc["device-99", "online"]
    assert list(fleet.history.command) == ["probe"] * 4
    again = await fleet.each("probe", "device-03", hostname_work())
    assert (again.df.status[0], again.df.stdout[0]) == ("ok", "device-03\n")


async def test_each_without_a_login_is_auth_failed(api: PlatformAPI, sim: SimulatedFleet):
    async with Fleet(api) as bare:
        res = await bare.each("probe", "device-01", hostname_work())
    assert (res.df.status[0], res.df.error[0]) == (
        "auth_failed",
        "no login for this device: fleet.login(targets, user=..., password_env=...)",
    )


async def test_each_rolls_out_with_a_budget(fleet: Fleet):
    async def work(session: DeviceSession) -> CommandResult:
        status = ResultStatus.ERROR if session.device_id == "device-01" else ResultStatus.OK
        return CommandResult(session.device_id, "put", status, None, "", 0.0, NOW, "")

    res = await fleet.each("put", IDS[:4], work, batch=1, max_errors=0)
    assert list(res.df.status) == ["error", "skipped", "skipped", "skipped"]
    assert list(res.df.error[1:]) == ["not started: 1 device failed, more than --max-errors 0"] * 3


async def test_each_cancelled_gives_cancelled_rows(fleet: Fleet):
    started = asyncio.Event()

    async def work(session: DeviceSession) -> CommandResult:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    task = asyncio.create_task(fleet.each("wait", IDS[:3], work, timeout=20))
    await asyncio.wait_for(started.wait(), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fleet.last_results is not None
    assert list(fleet.last_results.df.status) == ["cancelled"] * 3
    assert list(fleet.last_results.df.error) == ["the run was cancelled"] * 3
    res = await fleet.run("echo after", IDS[:3], timeout=20)
    assert list(res.df.stdout) == ["after\n"] * 3


def test_the_blocking_twin_rolls_out_too():
    import tunnelnb

    with tunnelnb.connect_sync(embedded=True, devices=4, seed=1) as fleet:
        healthy = [d for d in fleet.select("*") if d not in fleet.fleet.embedded[1].misbehaving]
        assert len(healthy) >= 2
        res = fleet.run(failing_on(healthy[0]), healthy, timeout=20, canary=1)
        assert list(res.df.status) == ["error"] + ["skipped"] * (len(healthy) - 1)
        assert set(res.df.error[1:]) == {f"not started: the canary {healthy[0]} failed"}
        res = fleet.run(failing_on(healthy[0]), healthy, timeout=20, batch="50%", max_errors=1)
        assert list(res.df.status) == ["error"] + ["ok"] * (len(healthy) - 1)

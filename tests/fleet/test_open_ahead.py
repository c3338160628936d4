"""A run on more devices than its concurrency opens the next devices' tunnels while earlier ones work.

Real platform, agents, SSH server and shells on loopback.  The assertions are about
order (which tunnels were open before which command ended), never about durations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.conftest import Devices, device_ids, open_fleet
from tests.fleet.test_jobs import GATE_WAIT_S, Gate
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import FleetSizeWarning
from tunnelnb.fleet.fleet import Fleet

IDS = device_ids(6)


@pytest.fixture
async def six(api, devices: Devices, ssh_server):
    await devices.add_all(IDS, ssh_port=ssh_server.port)
    async with open_fleet(api, concurrency=2) as fleet:
        yield fleet


class _Events:
    """What happened, in order: ("joined", id) when a session's open() ends, ("login"/"ran", id)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[str, str]] = []
        real_open, real_login, real_run = DeviceSession.open, DeviceSession.login, DeviceSession.run

        async def open_(session: DeviceSession, *args, **kwargs):
            await real_open(session, *args, **kwargs)
            self.log.append(("joined", session.device_id))

        async def login(session: DeviceSession, *args, **kwargs):
            self.log.append(("login", session.device_id))
            return await real_login(session, *args, **kwargs)

        async def run(session: DeviceSession, *args, **kwargs):
            result = await real_run(session, *args, **kwargs)
            self.log.append(("ran", session.device_id))
            return result

        monkeypatch.setattr(DeviceSession, "open", open_)
        monkeypatch.setattr(DeviceSession, "login", login)
        monkeypatch.setattr(DeviceSession, "run", run)

    def before(self, event: tuple[str, str]) -> list[tuple[str, str]]:
        return self.log[: self.log.index(event)]


async def _until(condition: Callable[[], bool], events: _Events, bound_s: float = 10.0) -> None:
    """Wait (bounded) until ``condition()`` holds of the events so far."""
    for _ in range(int(bound_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"devices 03 and 04 never joined ahead: {events.log}")


async def test_the_next_devices_join_while_the_first_ones_run(six: Fleet, monkeypatch, tmp_path):
    events = _Events(monkeypatch)
    gate = Gate(tmp_path)  # the first two hold their slots until devices 03 and 04 have joined
    run = asyncio.create_task(six.run(gate.command("echo done"), "*", timeout=GATE_WAIT_S + 20))
    await _until(lambda: {("joined", "device-03"), ("joined", "device-04")} <= set(events.log), events)
    gate.open()
    res = await run
    assert list(res.df.status) == ["ok"] * 6
    assert set(res.df.stdout) == {"done\n"}
    first_end = next(e for e in events.log if e[0] == "ran")
    joined_first = {d for kind, d in events.before(first_end) if kind == "joined"}
    # Two run, the next two have joined their tunnels meanwhile; the last two wait for a place in line.
    assert joined_first == {"device-01", "device-02", "device-03", "device-04"}
    logged_in_first = {d for kind, d in events.before(first_end) if kind == "login"}
    assert logged_in_first == {"device-01", "device-02"}  # the concurrency still bounds the logins
    assert sorted(d for kind, d in events.log if kind == "joined") == IDS  # each tunnel opened once


async def test_a_run_within_the_concurrency_opens_nothing_ahead(six: Fleet, monkeypatch):
    events = _Events(monkeypatch)
    res = await six.run("echo hi", "device-0[1-2]", timeout=20)
    assert list(res.df.status) == ["ok", "ok"]
    assert events.log.index(("joined", "device-01")) < events.log.index(("login", "device-01"))
    assert sorted(d for kind, d in events.log if kind == "joined") == ["device-01", "device-02"]


async def test_an_offline_device_opened_ahead_gets_the_row_it_would_have(api, platform, devices, ssh_server):
    await devices.add_all(device_ids(2), ssh_port=ssh_server.port)
    platform.add_device("device-03", "never-online")
    async with open_fleet(api, concurrency=1) as fleet:
        res = await fleet.run("echo hi", "*", timeout=10)
        rows = res.df.set_index("device_id")
        assert list(rows.status) == ["ok", "ok", "offline"]
        assert "device-03" in rows.loc["device-03", "error"]
        alone = await fleet.run("echo hi", "device-03", timeout=10)  # no look-ahead: the same sentence
        assert alone.df.error[0] == rows.loc["device-03", "error"]
        assert fleet.session("device-03") is None


async def test_a_cancelled_run_closes_the_tunnels_it_opened_ahead(six: Fleet, platform, monkeypatch):
    events = _Events(monkeypatch)
    task = asyncio.create_task(six.run("sleep 30", "*", timeout=60))
    await _until(lambda: {("joined", "device-03"), ("joined", "device-04")} <= set(events.log), events)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert six.last_results is not None
    assert list(six.last_results.df.status) == ["cancelled"] * 6
    assert six.session("device-03") is None and six.session("device-04") is None
    for _ in range(100):  # the platform hears of the closes a moment later
        open_tunnels = {t["device_id"] for t in platform.tunnels.values() if t["status"] == "OPEN"}
        if not open_tunnels & {"device-03", "device-04"}:
            break
        await asyncio.sleep(0.05)
    assert not open_tunnels & {"device-03", "device-04"}
    res = await six.run("echo again", "*", timeout=20)  # and the next run starts clean
    assert list(res.df.status) == ["ok"] * 6


async def test_a_rolling_run_contacts_no_device_it_may_skip(six: Fleet, monkeypatch):
    events = _Events(monkeypatch)
    res = await six.run("false", "*", timeout=20, canary=1)
    assert list(res.df.status) == ["error"] + ["skipped"] * 5
    assert [d for kind, d in events.log if kind == "joined"] == ["device-01"]


async def test_the_tenants_tunnel_limit_reached_by_tunnels_opened_ahead_costs_no_row(
    api, platform, devices: Devices, ssh_server, monkeypatch
):
    await devices.add_all(IDS, ssh_port=ssh_server.port)
    platform.max_tunnels = 3  # the pool's 2 sessions + 1: opening 2 more ahead hits the limit
    events = _Events(monkeypatch)
    async with open_fleet(api, concurrency=2, max_sessions=2) as fleet:
        with pytest.warns(FleetSizeWarning):
            res = await fleet.run("echo hi", "*", timeout=20)
        assert list(res.df.status) == ["ok"] * 6, res.df[["device_id", "status", "error"]]
        assert set(res.df.stdout) == {"hi\n"}
        assert sorted({d for kind, d in events.log if kind == "joined"}) == IDS

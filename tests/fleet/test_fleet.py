"""Fleet fan-out over real agents, SSH servers and shells on loopback."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import SSH_PASSWORD, SSH_USER, Devices, device_ids, open_fleet
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import FleetSizeWarning, UnknownTargets
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.server.sshserver import ShellServer


@pytest.fixture
async def fleet(api, platform, devices: Devices, ssh_server, tmp_path):
    """Four good devices, one with another password, one offline."""
    await devices.add_all(device_ids(4), ssh_port=ssh_server.port)
    other = ShellServer(users={SSH_USER: "a-different-password"}, cwd=str(tmp_path))
    await other.start()
    try:
        await devices.add("device-05", ssh_port=other.port)
        platform.add_device("device-06", "never-online", tags={"role": "edge"})
        async with open_fleet(api) as f:
            yield f
    finally:
        await other.stop()


async def test_every_device_gets_a_row(fleet: Fleet):
    res = await fleet.run("echo hello; (exit 0)", timeout=10)
    df = res.df
    assert list(df.columns) == [
        "device_id",
        "command",
        "status",
        "exit_code",
        "stdout",
        "duration_s",
        "started_at",
        "error",
    ]
    status = dict(zip(df.device_id, df.status, strict=True))
    assert status == {
        "device-01": "ok",
        "device-02": "ok",
        "device-03": "ok",
        "device-04": "ok",
        "device-05": "auth_failed",
        "device-06": "offline",
    }
    assert set(df[df.status == "ok"].stdout) == {"hello\n"}
    assert "wrong user name or password" in df.set_index("device_id").loc["device-05", "error"]
    assert str(df.exit_code.dtype) == "Int64"


async def test_sessions_are_reused_and_state_persists(fleet: Fleet):
    await fleet.run("cd /tmp; X=42", "device-0[1-2]")
    first = fleet.session("device-01")
    res = await fleet.run('echo "$X $(pwd)"', "device-0[1-2]")
    assert fleet.session("device-01") is first
    assert set(res.df.stdout) == {"42 /tmp\n"}


async def test_max_sessions_queues_the_rest(api, fleet: Fleet):
    small = Fleet(api, login=(SSH_USER, SSH_PASSWORD), max_sessions=2)
    await small.refresh()
    try:
        with pytest.warns(FleetSizeWarning):
            res = await small.run("echo $((1+1))", "device-0[1-4]", timeout=10)
        assert list(res.df.status) == ["ok"] * 4
        assert sum(small.session(d) is not None for d in small.select("*")) == 2
    finally:
        await small.close("*")


class _LoginCounter:
    """Counts real logins (and the most at once) by wrapping DeviceSession.login."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.devices: list[str] = []
        self.running = self.peak = 0
        real = DeviceSession.login

        async def login(session: DeviceSession, *args, **kwargs):
            self.devices.append(session.device_id)
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                return await real(session, *args, **kwargs)
            finally:
                self.running -= 1

        monkeypatch.setattr(DeviceSession, "login", login)


async def test_runs_larger_than_the_pool_warn_and_reuse_logged_in_sessions_first(api, fleet: Fleet, monkeypatch):
    logins = _LoginCounter(monkeypatch)
    small = Fleet(api, login=(SSH_USER, SSH_PASSWORD), max_sessions=2, concurrency=1)
    await small.refresh()
    try:
        with pytest.warns(FleetSizeWarning, match="3 targets but at most 2 sessions"):
            first = await small.run("echo one", "device-0[1-3]", timeout=10)
        assert list(first.df.status) == ["ok"] * 3
        assert logins.devices == ["device-01", "device-02", "device-03"]
        # device-02 and -03 are still logged in: they run first, so only device-01 logs in again.
        with pytest.warns(FleetSizeWarning):
            second = await small.run("echo two", "device-0[1-3]", timeout=10)
        assert list(second.df.device_id) == ["device-01", "device-02", "device-03"]  # rows stay in target order
        assert list(second.df.status) == ["ok"] * 3
        assert logins.devices[3:] == ["device-01"]
    finally:
        await small.close("*")


async def test_login_has_its_own_concurrency(fleet: Fleet, monkeypatch):
    logins = _LoginCounter(monkeypatch)
    res = await fleet.login("device-0[1-4]", concurrency=2)
    assert list(res.df.status) == ["ok"] * 4
    assert sorted(logins.devices) == ["device-01", "device-02", "device-03", "device-04"]
    assert 1 <= logins.peak <= 2
    with pytest.raises(ValueError, match="at least 1"):
        await fleet.login("device-01", concurrency=0)


async def test_unknown_targets_are_one_clear_error(fleet: Fleet):
    with pytest.raises(UnknownTargets, match="devcie-01"):
        await fleet.run("true", "devcie-01 device-02")


async def test_cancel_marks_rows_cancelled_and_sessions_stay_usable(fleet: Fleet):
    task = asyncio.create_task(fleet.run("sleep 30", "device-0[1-3]", timeout=60))
    await asyncio.sleep(1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fleet.last_results is not None
    assert set(fleet.last_results.df.status) == {"cancelled"}
    res = await fleet.run("echo again", "device-0[1-3]", timeout=10)
    assert list(res.df.status) == ["ok"] * 3
    assert set(fleet.history.run) == {1, 2}


async def test_groups_and_parse_on_real_output(fleet: Fleet, tmp_path):
    res = await fleet.run("printf 'model=X1\\nfw: 2.1\\n'", "device-0[1-4]")
    groups = res.groups()
    assert groups.iloc[0]["count"] == 4
    parsed = res.parse("kv")
    assert set(parsed.device_id) == {"device-01", "device-02", "device-03", "device-04"}
    assert set(parsed.columns) >= {"device_id", "model", "fw"}


async def test_on_output_streams_labelled_by_device(fleet: Fleet):
    seen: list[tuple[str, str]] = []
    await fleet.run("echo live", "device-01 device-02", on_output=lambda d, t: seen.append((d, t)))
    assert {d for d, _ in seen} == {"device-01", "device-02"}
    assert "".join(t for d, t in seen if d == "device-01") == "live\n"


async def test_history_never_holds_passwords(fleet: Fleet):
    await fleet.run("echo x", "device-01")
    text = fleet.history.to_csv()
    assert SSH_PASSWORD not in text
    assert SSH_PASSWORD not in repr(fleet.last_results)


async def test_a_refused_new_login_keeps_the_working_one(fleet: Fleet):
    """The device ends its shell on every connect, so a wrong new password must not leave it broken."""
    assert list((await fleet.run("echo before", "device-01", timeout=10)).df.status) == ["ok"]
    res = await fleet.login("device-01", user=SSH_USER, password="definitely-wrong", timeout=10)
    assert res.df.status[0] == "auth_failed"
    assert res.df.error[0].endswith(
        "; the previous login works and stays in use (its shell is new: cd and variables were reset)"
    )
    assert "definitely-wrong" not in res.df.error[0]
    after = await fleet.run("echo after", "device-01", timeout=10)
    assert (after.df.status[0], after.df.stdout[0]) == ("ok", "after\n")


async def test_a_bug_on_one_device_costs_its_row_and_the_next_run_starts_afresh(fleet: Fleet, monkeypatch):
    """fleet.run never raises because of one device; the others' rows are untouched."""
    await fleet.run("true", "device-0[1-2]", timeout=10)
    broken = fleet.session("device-01")
    assert broken is not None

    async def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(broken, "run", crash)
    res = await fleet.run("echo hi", "device-0[1-2]", timeout=10)
    assert list(res.df.status) == ["disconnected", "ok"]
    assert res.df.error[0] == "tunnelnb failed on this device (RuntimeError: boom); the next run starts afresh"
    assert res.df.stdout[1] == "hi\n"
    assert fleet.session("device-01") is None  # closed: the next run opens a new one
    again = await fleet.run("echo hi", "device-01", timeout=10)
    assert (again.df.status[0], again.df.stdout[0]) == ("ok", "hi\n")


async def test_a_run_updates_what_the_inventory_says_of_each_device(api, devices: Devices, fleet: Fleet):
    """A device found offline (or back) by a run shows so in fleet.devices() until the next refresh."""
    before = dict(zip(fleet.devices().device_id, fleet.devices().status, strict=True))
    assert (before["device-01"], before["device-06"]) == ("ONLINE", "OFFLINE")
    await devices.agents[0].stop()  # device-01's agent: the platform lists it OFFLINE from now on
    res = await fleet.run("echo hi", "device-0[1-2]", timeout=10)
    assert list(res.df.status) == ["offline", "ok"]
    after = dict(zip(fleet.devices().device_id, fleet.devices().status, strict=True))
    assert after == before | {"device-01": "OFFLINE"}

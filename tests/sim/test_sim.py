"""The simulated fleet: seeded profiles, and real devices (agent, SSH, /bin/sh on a PTY) behind a real platform."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import ResultStatus
from tunnelnb.client.session import DeviceSession
from tunnelnb.errors import AuthFailed, DeviceOffline
from tunnelnb.server.platform import Platform
from tunnelnb.sim import (
    MISBEHAVIOURS,
    DeviceProfile,
    SimulatedFleet,
    app_log,
    device_conf,
    make_profiles,
    serve,
)

API_TOKEN = "sim-test-token"

# ---------------------------------------------------------------------------
# Profiles (pure)


def _without_id(p: DeviceProfile) -> dict[str, object]:
    d = dataclasses.asdict(p)
    for key in ("device_id", "misbehaviour", "link_delay_s", "link_cut_bytes", "warn_count", "error_count"):
        d.pop(key)
    d.pop("disk_used_pct")
    return d


def test_profiles_are_deterministic_per_seed() -> None:
    assert make_profiles(200, seed=7) == make_profiles(200, seed=7)
    assert make_profiles(200, seed=7) != make_profiles(200, seed=8)
    # A device's own attributes depend on the seed and its number only, not on the fleet size.
    small, large = make_profiles(10, seed=3), make_profiles(1000, seed=3)
    assert [_without_id(p) for p in small] == [_without_id(p) for p in large[:10]]


@pytest.mark.parametrize(
    ("n", "first", "last"),
    [(1, "device-01", "device-01"), (12, "device-01", "device-12"), (99, "device-01", "device-99"),
     (100, "device-001", "device-100"), (999, "device-001", "device-999"), (1000, "device-0001", "device-1000")],
)  # fmt: skip
def test_ids_are_zero_padded(n: int, first: str, last: str) -> None:
    ids = [p.device_id for p in make_profiles(n, misbehaving=0)]
    assert (ids[0], ids[-1], len(set(ids))) == (first, last, n)
    assert make_profiles(3, prefix="rtu-", misbehaving=0)[2].device_id == "rtu-03"


def test_profiles_vary_like_a_real_fleet() -> None:
    profiles = make_profiles(300, seed=1)
    assert len({p.model for p in profiles}) == 4
    assert len({p.fw_version for p in profiles}) >= 8
    assert len({p.site for p in profiles}) >= 5
    assert len({p.disk_size_mb for p in profiles}) >= 4
    assert len({p.error_count for p in profiles}) >= 10
    assert min(p.temperature_c for p in profiles) < 40 < 75 < max(p.temperature_c for p in profiles)
    assert min(p.uptime_s for p in profiles) < 3 * 3600 and max(p.uptime_s for p in profiles) > 100 * 86400
    assert {p.config["log_level"] for p in profiles} == {"info", "debug"}  # some config drift
    for p in profiles:
        assert p.product_id == p.model
        assert p.tags == {"role": p.role, "site": p.site, "region": p.region, "fw": p.fw_version}
        assert 0 < p.disk_used_pct <= 100
    # The most common firmware of each model is its latest.
    for model in {p.model for p in profiles}:
        versions = Counter(p.fw_version for p in profiles if p.model == model)
        assert versions.most_common(1)[0][0] == max(versions, key=lambda v: tuple(map(int, v.split("."))))


def test_misbehaving_devices_are_chosen_by_the_seed() -> None:
    profiles = make_profiles(100, seed=5)
    kinds = Counter(p.misbehaviour for p in profiles if p.misbehaviour)
    assert sum(kinds.values()) == 10
    assert set(kinds) == set(MISBEHAVIOURS) and all(n == 2 for n in kinds.values())
    for p in profiles:
        if p.misbehaviour == "slow":
            assert 0.5 <= p.link_delay_s <= 1.5
        if p.misbehaviour == "flaky":
            assert 32_000 <= p.link_cut_bytes <= 128_000
        if p.misbehaviour == "disk_full":
            assert p.disk_used_pct == 100
    assert [p.misbehaviour for p in make_profiles(100, seed=5)] == [p.misbehaviour for p in profiles]
    assert [p.misbehaviour for p in make_profiles(100, seed=6)] != [p.misbehaviour for p in profiles]
    assert not any(p.misbehaviour for p in make_profiles(50, misbehaving=0))
    assert {p.misbehaviour for p in make_profiles(5, misbehaving=1.0)} == set(MISBEHAVIOURS)
    mixed = Counter(p.quirks for p in make_profiles(200, quirks="mixed"))
    assert set(mixed) == {"none", "c-sdk", "csharp-sdk"}
    with pytest.raises(ValueError):
        make_profiles(3, misbehaving=1.5)
    with pytest.raises(ValueError):
        make_profiles(3, quirks="java-sdk")


def test_log_and_config_say_what_the_profile_says() -> None:
    for p in make_profiles(60, seed=2):
        text = app_log(p)
        lines = text.splitlines()
        assert sum("ERROR" in line for line in lines) == p.error_count
        assert sum("WARN" in line for line in lines) == p.warn_count
        assert len(lines) == p.error_count + p.warn_count + p.info_count
        stamps = [line.split()[0] for line in lines]
        assert stamps == sorted(stamps)  # in time order
        conf = dict(line.split("=", 1) for line in device_conf(p).splitlines())
        assert conf["model"] == p.model and conf["fw_version"] == p.fw_version and conf["serial"] == p.serial
    assert "password" not in repr(dataclasses.replace(make_profiles(1)[0], login_password="s3cret-pw"))


# ---------------------------------------------------------------------------
# A fleet on a real platform


def _children() -> list[int]:
    """Processes whose parent is this one (zombies included: they were not reaped)."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{name}/stat").read_text()
                if int(stat[stat.rfind(")") + 2 :].split()[1]) == me:
                    found.append(int(name))
    return found


def _userns_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    done = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return done.returncode == 0


USERNS = _userns_works()


def _sandboxed() -> bool:
    return os.geteuid() == 0 or USERNS


FLEET_PROFILES = make_profiles(12, seed=11, misbehaving=5 / 12)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[tuple[Platform, SimulatedFleet]]:
    async with (
        Platform(api_token=API_TOKEN, heartbeat=None) as platform,
        SimulatedFleet(
            platform.base_url,
            api_token=API_TOKEN,
            devices=FLEET_PROFILES,
            seed=11,
            agent_options={"heartbeat": None, "reconnect_step": 0.2},
        ) as fleet,
    ):
        yield platform, fleet


@pytest_asyncio.fixture(loop_scope="module")
async def api(sim: tuple[Platform, SimulatedFleet]) -> AsyncIterator[PlatformAPI]:
    platform, _ = sim
    async with PlatformAPI(platform.base_url, project_id="demo", api_token=API_TOKEN) as client:
        yield client


def _one(fleet: SimulatedFleet, misbehaviour: str | None, index: int = 0) -> DeviceProfile:
    return [p for p in fleet.profiles if p.misbehaviour == misbehaviour][index]


# Every async test of this module shares one event loop: a loop left idle while others run
# would find its timers overdue when it resumes.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


@on_module_loop
async def test_every_kind_of_misbehaviour_is_in_the_test_fleet(sim: tuple[Platform, SimulatedFleet]) -> None:
    _, fleet = sim
    assert set(fleet.misbehaving.values()) == set(MISBEHAVIOURS)
    summary = "\n".join(fleet.summary())
    assert "12 simulated devices" in summary and "11 online" in summary
    for device_id, kind in fleet.misbehaving.items():
        assert device_id in summary and kind in summary


@on_module_loop
async def test_devices_are_registered_with_tags_and_versions(
    sim: tuple[Platform, SimulatedFleet], api: PlatformAPI
) -> None:
    _, fleet = sim
    listed = {d["device_id"]: d for d in await api.list_devices()}
    assert set(listed) == set(fleet.device_ids)
    for p in fleet.profiles:
        d = listed[p.device_id]
        assert d["status"] == ("OFFLINE" if p.misbehaviour == "offline" else "ONLINE"), p.device_id
        assert (d["product_id"], d["fw_version"], d["sw_version"]) == (p.model, p.fw_version, p.sw_version)
        assert {t["tag_key"]: t["tag_value"] for t in d["tags"]} == p.tags
    offline = _one(fleet, "offline")
    assert fleet.agent(offline.device_id) is None


def _df(stdout: str) -> tuple[str, str, int]:
    """Filesystem, size and use% of the one line ``df -h`` prints for a mount."""
    fields = stdout.strip().splitlines()[-1].split()
    return fields[0], fields[1], int(fields[4].rstrip("%"))


def _size(mb: int) -> str:
    return f"{mb}M" if mb < 1024 else f"{mb / 1024:.1f}G"


@on_module_loop
async def test_a_normal_device_shows_its_profile_through_ordinary_commands(
    sim: tuple[Platform, SimulatedFleet], api: PlatformAPI
) -> None:
    _, fleet = sim
    p = _one(fleet, None)
    async with DeviceSession(api, p.device_id) as dev:
        await dev.login(*fleet.login())

        async def run(command: str) -> str:
            r = await dev.run(command, timeout=15)
            assert r.status == ResultStatus.OK, (command, r)
            return r.stdout

        conf = dict(line.split("=", 1) for line in (await run("cat /etc/device.conf")).splitlines())
        assert conf == dict(line.split("=", 1) for line in device_conf(p).splitlines())
        assert conf["device_id"] == p.device_id and conf["fw_version"] == p.fw_version
        assert (await run("cat /etc/hostname; hostname")).split() == [p.device_id, p.device_id]
        assert int(await run("grep -c ERROR /var/log/app.log")) == p.error_count
        assert int(await run("grep -c WARN /var/log/app.log")) == p.warn_count
        temp = int(await run("cat /sys/class/thermal/thermal_zone0/temp"))
        assert temp == round(p.temperature_c * 1000)
        uptime = await run("uptime")
        days = p.uptime_s // 86400
        if days:
            assert re.search(rf"up {days} days?,", uptime), uptime
        assert f"load average: {p.load_avg:.2f}" in uptime
        seconds = float((await run("cat /proc/uptime")).split()[0])
        assert p.uptime_s <= seconds < p.uptime_s + 600
        if _sandboxed():
            _, size, pct = _df(await run("df -h /data"))
            assert size == _size(p.disk_size_mb)
            assert abs(pct - p.disk_used_pct) <= 1
            # Writes work where there is room; the user is the login user, not root.
            assert "written" in await run("echo written > /data/note && cat /data/note && rm /data/note")
            if os.geteuid() == 0:
                assert (await run("id -un")).strip() == p.login_user
                assert (await run("touch /usr/bin/x 2>&1 || echo refused")).strip().endswith("refused")
        # Job control on the PTY: background jobs, and Ctrl-C ends a foreground job while the shell goes on.
        jobs = await run("sleep 60 & jobs; kill %1")
        assert "Running" in jobs and "sleep 60" in jobs
        r = await dev.run("sleep 30", timeout=1)
        assert r.status == ResultStatus.TIMEOUT
        r = await dev.run("echo still here", timeout=10)
        assert r.status == ResultStatus.OK and r.stdout.strip() == "still here"
        assert r.duration_s < 5


@on_module_loop
async def test_disk_full_device_refuses_writes(sim: tuple[Platform, SimulatedFleet], api: PlatformAPI) -> None:
    if not _sandboxed():
        pytest.skip("needs a mount namespace for /data")
    _, fleet = sim
    p = _one(fleet, "disk_full")
    async with DeviceSession(api, p.device_id) as dev:
        await dev.login(*fleet.login())
        r = await dev.run("df -h /data", timeout=15)
        _, size, pct = _df(r.stdout)
        assert (size, pct) == (_size(p.disk_size_mb), 100)
        r = await dev.run("head -c 1000000 /dev/zero > /data/more.bin", timeout=15)
        assert r.status == ResultStatus.ERROR
        assert "No space left on device" in r.stdout
        r = await dev.run("grep -c 'No space left on device' /var/log/app.log", timeout=15)
        assert int(r.stdout) > 0


@on_module_loop
async def test_wrong_password_device_refuses_the_fleet_login(
    sim: tuple[Platform, SimulatedFleet], api: PlatformAPI
) -> None:
    _, fleet = sim
    p = _one(fleet, "wrong_password")
    assert fleet.credentials(p.device_id) != fleet.login()
    assert fleet.credentials(p.device_id)[0] == fleet.login()[0]
    async with DeviceSession(api, p.device_id) as dev:
        with pytest.raises(AuthFailed):
            await dev.login(*fleet.login())
        await dev.login(*fleet.credentials(p.device_id))
        r = await dev.run("cat /etc/hostname", timeout=15)
        assert r.stdout.strip() == p.device_id


@on_module_loop
async def test_offline_device_is_offline(sim: tuple[Platform, SimulatedFleet], api: PlatformAPI) -> None:
    _, fleet = sim
    p = _one(fleet, "offline")
    assert (await api.show_device(p.device_id))["status"] == "OFFLINE"
    with pytest.raises(DeviceOffline):
        async with DeviceSession(api, p.device_id, join_timeout=2):
            pass


LONG_OUTPUT = "seq 1 40000"  # 229 KB: more than any flaky budget (at most 128 KB)


@on_module_loop
async def test_flaky_device_drops_long_commands_normal_ones_do_not(
    sim: tuple[Platform, SimulatedFleet], api: PlatformAPI
) -> None:
    _, fleet = sim
    flaky, normal = _one(fleet, "flaky"), _one(fleet, None, 1)
    async with DeviceSession(api, normal.device_id) as dev:
        await dev.login(*fleet.login())
        r = await dev.run(LONG_OUTPUT, timeout=20)
        assert r.status == ResultStatus.OK and r.stdout.split()[-1] == "40000"
    async with DeviceSession(api, flaky.device_id) as dev:
        await dev.login(*fleet.login())
        r = await dev.run("echo short", timeout=15)  # a short command fits the budget
        assert r.status == ResultStatus.OK
        r = await dev.run(LONG_OUTPUT, timeout=20)
        assert r.status == ResultStatus.DISCONNECTED, r
        assert len(r.stdout) < 229_000
    proxy = fleet._devices[flaky.device_id].proxy
    assert proxy is not None and proxy.cuts >= 1
    agent = fleet.agent(flaky.device_id)
    assert agent is not None and agent.online  # only the tunnel is cut, never the device link


@on_module_loop
async def test_slow_device_is_slower_than_a_normal_one(sim: tuple[Platform, SimulatedFleet], api: PlatformAPI) -> None:
    _, fleet = sim
    slow, normal = _one(fleet, "slow"), _one(fleet, None, 2)
    durations: dict[str, float] = {}
    for p in (normal, slow):
        async with DeviceSession(api, p.device_id) as dev:
            await dev.login(*fleet.login())
            times = []
            for _ in range(3):
                r = await dev.run("true", timeout=20)
                assert r.status == ResultStatus.OK
                times.append(r.duration_s)
            durations[p.device_id] = statistics.median(times)
    assert durations[slow.device_id] >= 0.9 * slow.link_delay_s
    assert durations[slow.device_id] > 3 * durations[normal.device_id]


# ---------------------------------------------------------------------------
# Backends, sandbox modes, the command, and a clean stop


@on_module_loop
@pytest.mark.parametrize("sandbox", ["auto", "userns", "none"])
async def test_local_backend_and_clean_stop(sandbox: str) -> None:
    if sandbox == "userns" and not USERNS:
        pytest.skip("unprivileged user namespaces do not work here")
    profiles = make_profiles(3, seed=4, misbehaving=0)
    before = set(_children())
    async with Platform(api_token=API_TOKEN, heartbeat=None) as platform:
        fleet = SimulatedFleet(
            platform.base_url,
            api_token=API_TOKEN,
            devices=profiles,
            backend="local",
            sandbox=sandbox,
            agent_options={"heartbeat": None},
        )
        await fleet.start()
        root = fleet.root
        assert root is not None and root.is_dir()
        try:
            async with PlatformAPI(platform.base_url, project_id="demo", api_token=API_TOKEN) as api:
                sessions = [DeviceSession(api, p.device_id) for p in profiles]
                for dev in sessions:
                    await dev.open()
                    await dev.login(*fleet.login())
                    path = "/etc/device.conf" if fleet.sandbox != "none" else "etc/device.conf"
                    r = await dev.run(f"cat {path}; sleep 60 &", timeout=15)
                    assert f"device_id={dev.device_id}" in r.stdout
                assert len(set(_children()) - before) >= 3  # a shell per device, plus their sleeps
                if sandbox != "auto":
                    assert fleet.sandbox == sandbox
                if sandbox == "userns":  # /data is a tmpfs of the profile's size, the shell is root in its namespace
                    r = await sessions[0].run("df -h /data; id -u", timeout=15)
                    assert r.stdout.split()[-1] == "0"
                    fs, size, _ = _df(r.stdout.splitlines()[-2])
                    assert (fs, size) == ("tmpfs", _size(profiles[0].disk_size_mb))
                # Stop the fleet with the sessions still open.
                await fleet.stop()
                for dev in sessions:
                    await dev.close()
        finally:
            await fleet.stop()
    assert not root.exists()
    left = set(_children()) - before
    assert not left, f"child processes left behind: {left}"
    if Path("/sys/block").is_dir():  # noqa: ASYNC240
        for name in os.listdir("/sys/block"):
            with contextlib.suppress(OSError):
                assert str(root) not in Path(f"/sys/block/{name}/loop/backing_file").read_text()  # noqa: ASYNC240


@on_module_loop
async def test_serve_prints_a_summary_and_stops_cleanly() -> None:
    lines: list[str] = []
    stop = asyncio.Event()
    async with Platform(api_token=API_TOKEN, heartbeat=None) as platform:

        def out(line: str) -> None:
            lines.append(line)
            if "password" in line:
                stop.set()

        await asyncio.wait_for(
            serve(
                stop=stop,
                out=out,
                platform_url=platform.base_url,
                api_token=API_TOKEN,
                devices=5,
                misbehaving=0.4,
                prefix="sim-",
                agent_options={"heartbeat": None},
            ),
            30,
        )
        assert sorted(platform.devices) == [f"sim-0{i}" for i in range(1, 6)]
    text = "\n".join(lines)
    assert "5 simulated devices" in text and "misbehaving on purpose" in text
    assert "TUNNELNB_LOGIN_PASSWORD=" in text  # a generated password is shown once, like the platform's token
    assert lines[-1] == "simulated fleet stopped"


@on_module_loop
async def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SimulatedFleet("http://127.0.0.1:1", api_token="t", backend="telnet")
    with pytest.raises(ValueError):
        SimulatedFleet("http://127.0.0.1:1", api_token="t", sandbox="chroot")
    fleet = SimulatedFleet("http://127.0.0.1:1", api_token="t", devices=2)
    with pytest.raises(Exception) as info:
        await fleet.start()  # nothing listens there
    assert "127.0.0.1:1" in str(info.value)
    assert fleet.root is not None and not fleet.root.exists()
    # A root of one's own: it must be empty, and stop() removes only what start() made in it.
    root = tmp_path / "fleet"
    root.mkdir()
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="empty"):
        await SimulatedFleet("http://127.0.0.1:1", api_token="t", devices=2, root=root).start()
    (root / "mine.txt").unlink()
    async with Platform(api_token=API_TOKEN, heartbeat=None) as platform:
        fleet = SimulatedFleet(platform.base_url, api_token=API_TOKEN, devices=2, root=root, misbehaving=0)
        async with fleet:
            (root / "mine.txt").write_text("keep me")
            assert (root / "device-01" / "launch").exists()
    assert sorted(p.name for p in root.iterdir()) == ["mine.txt"]
    with pytest.raises(ValueError, match="white space"):
        await SimulatedFleet("http://127.0.0.1:1", api_token="t", devices=1, root=tmp_path / "a b").start()


_EXIT_WITHOUT_STOP = """
import asyncio, sys, tunnelnb

async def main():
    fleet = await tunnelnb.connect(embedded=True, devices=2, seed=3)
    res = await fleet.run("df -P /data | tail -1", "*", timeout=30)
    sim = fleet.embedded[1]
    print(sim.root, flush=True)
    assert {r.status for r in res} == {"ok"}, res.df
    # No fleet.close(): the process just ends, as a notebook kernel does when it is shut down.

asyncio.run(main())
"""


def test_a_process_that_exits_without_stop_still_cleans_up_and_stale_roots_are_swept(tmp_path: Path):
    import sys

    from tunnelnb.sim.sandbox import attached_loops as _attached_loops

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    first = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_STOP], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    root = Path(first.stdout.strip().splitlines()[-1])
    assert root.parent == tmp_path
    assert not root.exists()
    assert list(_attached_loops(root)) == []
    # A root whose owner died without any clean-up (SIGKILL) is removed by the next fleet.
    stale = tmp_path / "tunnelnb-sim-stale"
    (stale / ".fleet").mkdir(parents=True)
    probe = subprocess.Popen(["true"])
    probe.wait()
    (stale / ".fleet" / "owner.pid").write_text(str(probe.pid))
    alive = tmp_path / "tunnelnb-sim-alive"
    (alive / ".fleet").mkdir(parents=True)
    (alive / ".fleet" / "owner.pid").write_text(str(os.getpid()))
    second = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_STOP], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    assert not stale.exists()
    assert alive.exists()  # its owner (this test) is alive


def test_the_launcher_is_a_module_of_the_package_that_runs_isolated(tmp_path: Path) -> None:
    """The sandbox launcher is tunnelnb.sim.launcher, copied into the fleet's root, run as ``python -I -S``."""
    import sys
    from datetime import UTC, datetime

    from tunnelnb.sim import launcher
    from tunnelnb.sim.sandbox import FleetFiles

    files = FleetFiles("ops")
    files.create(tmp_path / "root")
    try:
        assert (files.fleet_dir / "launch.py").read_bytes() == Path(launcher.__file__).read_bytes()
        p = make_profiles(1, seed=5)[0]
        directory = files.device_dir(p.device_id)
        files.add_device(p, directory, datetime.now(UTC))
        files.write_config("none", "directory")
        # The standard library only: no site-packages, so not even tunnelnb is importable here.
        res = subprocess.run(
            [sys.executable, "-I", "-S", launcher.__file__, str(directory), "-c", "cat etc/device.conf; pwd"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout == device_conf(p) + f"{directory}\n"
        assert (directory / "home" / "ops" / ".profile").exists() and (directory / ".made").exists()
    finally:
        files.remove()
    assert not (tmp_path / "root").exists()

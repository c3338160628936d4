"""A simulated fleet split over worker processes (``tunnelnb sim --workers N``, :class:`ShardedFleet`).

The devices run where the parent says (each worker's shells are its children),
answer as one fleet's would, and every way out -- a clean stop, SIGTERM, the
parent killed, a worker killed, a worker that cannot start -- leaves no worker
and no sandbox behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.cli.test_cli import TUNNELNB, clean_env
from tunnelnb.client.api import PlatformAPI
from tunnelnb.errors import TunnelnbError
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.server.platform import Platform
from tunnelnb.sim import ShardedFleet, SimulatedFleet, make_profiles, serve

API_TOKEN = "workers-test-token"
PASSWORD = "workers-test-pass"
WAIT = 30.0  # upper bound of every wait: a worker starts in about a second
NO_HEARTBEAT = {"heartbeat": None}

pytestmark = pytest.mark.timeout(120)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name; None once the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))) is not None and int(fields[1]) == pid:
            found.append(int(name))
    return found


def _launched_devices(worker_pid: int) -> set[str]:
    """The devices whose shells the worker started: its children running the sandbox launcher."""
    devices = set()
    for pid in _children(worker_pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            script = next((i for i, a in enumerate(argv) if a.endswith(b"launch.py")), None)
            if script is not None:
                devices.add(Path(argv[script + 1].decode()).name)
    return devices


async def _gone(pids: list[int], timeout: float = WAIT) -> list[int]:
    """Wait (bounded) until none of ``pids`` runs; those still running then."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if _stat(p) is not None]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.05)


def _roots_of(pids: list[int]) -> list[Path]:
    """Fleet roots in the temporary directory whose owner is one of ``pids``."""
    roots = []
    for owner in Path("/tmp").glob("tunnelnb-sim-*/.fleet/owner.pid"):
        with contextlib.suppress(OSError, ValueError):
            if int(owner.read_text()) in pids:
                roots.append(owner.parent.parent)
    return roots


@pytest_asyncio.fixture
async def platform() -> AsyncIterator[Platform]:
    async with Platform(api_token=API_TOKEN, heartbeat=None) as p:
        yield p


async def _statuses(platform: Platform) -> dict[str, str]:
    async with PlatformAPI(platform.base_url, project_id="demo", api_token=API_TOKEN) as api:
        return {d["device_id"]: d["status"] for d in await api.list_devices()}


# ---------------------------------------------------------------------------
# The plan: the same fleet as one process would run


def test_the_workers_run_the_fleet_one_process_would_run() -> None:
    kwargs = {"api_token": API_TOKEN, "devices": 10, "seed": 5, "misbehaving": 0.5, "password": PASSWORD}
    one = SimulatedFleet("http://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]
    sharded = ShardedFleet("http://127.0.0.1:1", workers=3, **kwargs)  # type: ignore[arg-type]
    assert sharded.profiles == one.profiles == make_profiles(10, seed=5, misbehaving=0.5)
    assert sharded.login() == one.login() == ("ops", PASSWORD)
    wrong = next(d for d, kind in sharded.misbehaving.items() if kind == "wrong_password")
    assert sharded.credentials(wrong)[1] != PASSWORD
    shards = [sharded._shard(i) for i in range(3)]
    assert [[p.device_id for p in s] for s in shards] == [
        ["device-01", "device-04", "device-07", "device-10"],
        ["device-02", "device-05", "device-08"],
        ["device-03", "device-06", "device-09"],
    ]
    # Each worker is told the password its devices accept: the odd one's own.
    passwords = {p.device_id: p.login_password for s in shards for p in s}
    assert passwords[wrong] == sharded.credentials(wrong)[1]
    assert {passwords[d] for d in passwords if d != wrong} == {PASSWORD}


def test_bad_arguments_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        ShardedFleet("http://127.0.0.1:1", api_token=API_TOKEN, workers=0)
    with pytest.raises(ValueError, match="agent_options must be JSON"):
        ShardedFleet("http://127.0.0.1:1", api_token=API_TOKEN, agent_options={"ssl": object()})
    with pytest.raises(ValueError, match="backend must be one of"):
        ShardedFleet("http://127.0.0.1:1", api_token=API_TOKEN, backend="telnet")
    done = subprocess.run(
        [TUNNELNB, "sim", "--platform", "http://127.0.0.1:1", "--workers", "0"],
        env=clean_env(TUNNELNB_API_TOKEN=API_TOKEN),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "tunnelnb: --workers 0: give at least 1 (1 runs every device in this process)"


# ---------------------------------------------------------------------------
# Two workers on a real platform


async def test_two_workers_run_six_devices_that_answer_as_one_fleet(platform: Platform) -> None:
    before = _children(os.getpid())
    sim = ShardedFleet(
        platform.base_url,
        api_token=API_TOKEN,
        workers=2,
        devices=6,
        misbehaving=0,
        password=PASSWORD,
        agent_options=NO_HEARTBEAT,
    )
    async with sim:
        pids = sim.worker_pids
        assert len(pids) == 2 and sorted(set(_children(os.getpid())) - set(before)) == sorted(pids)
        assert await _statuses(platform) == {f"device-0{i}": "ONLINE" for i in range(1, 7)}
        assert sorted(sim.ssh_ports) == sim.device_ids
        assert {sim.worker_of(d) for d in sim.device_ids} == set(pids)
        assert "run by 2 worker processes" in sim.summary()[-1]
        async with (
            PlatformAPI(platform.base_url, project_id="demo", api_token=API_TOKEN) as api,
            Fleet(api, login=sim.login()) as fleet,
        ):
            res = await fleet.run("cat /etc/hostname", "*", timeout=WAIT)
            df = res.df
            assert list(df.status) == ["ok"] * 6, df[["device_id", "status", "error"]]
            assert [s.strip() for s in df.stdout] == sim.device_ids  # each device's own sandbox
            # Each device's shell is a child of the worker that runs it: both workers served the run.
            for pid in pids:
                assert _launched_devices(pid) == {d for d in sim.device_ids if sim.worker_of(d) == pid}
            usage = sim.usage()
            assert usage["cpu_s"] > 0
        roots = _roots_of(pids)
        assert len(roots) == 2
    assert await _gone(pids) == []
    assert [r for r in roots if r.exists()] == []
    assert set((await _statuses(platform)).values()) == {"OFFLINE"}


async def test_a_worker_that_cannot_start_stops_the_others_and_says_why(platform: Platform) -> None:
    platform.add_device("device-02", "another-secret")  # registered before, by someone else
    before = set(_children(os.getpid()))
    sim = ShardedFleet(
        platform.base_url,
        api_token=API_TOKEN,
        workers=2,
        devices=make_profiles(2, misbehaving=0),
        agent_options=NO_HEARTBEAT,
    )
    with pytest.raises(TunnelnbError) as caught:
        await asyncio.wait_for(sim.start(), WAIT)
    assert re.fullmatch(
        r"simulated fleet worker 2 \(pid \d+; device-02 … device-02\) could not start its devices: .*device "
        r"device-02 was registered earlier with another secret .*: choose another prefix",
        str(caught.value),
    ), str(caught.value)
    assert await _gone(list(set(_children(os.getpid())) - before)) == []
    assert sim.worker_pids == []
    assert set((await _statuses(platform)).values()) == {"OFFLINE"}


async def test_a_dead_worker_stops_everything_and_serve_says_which(platform: Platform) -> None:
    lines: list[str] = []
    ready = asyncio.Event()

    def out(line: str) -> None:
        lines.append(line)
        if line.startswith("login:"):
            ready.set()

    task = asyncio.ensure_future(
        serve(
            workers=2,
            out=out,
            stop=asyncio.Event(),
            platform_url=platform.base_url,
            api_token=API_TOKEN,
            devices=4,
            misbehaving=0,
            password=PASSWORD,
            agent_options=NO_HEARTBEAT,
        )
    )
    await asyncio.wait_for(ready.wait(), WAIT)
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", "\n".join(lines))]
    assert len(pids) == 2
    roots = _roots_of(pids)
    assert len(roots) == 2
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(TunnelnbError) as caught:
        await asyncio.wait_for(task, WAIT)
    assert re.fullmatch(
        rf"simulated fleet worker 1 \(pid {pids[0]}; device-01 … device-03\) ended on its own \(killed by SIGKILL\): "
        "its devices are offline, so the simulated fleet stops",
        str(caught.value),
    ), str(caught.value)
    assert lines[-1] == "simulated fleet stopped"
    assert await _gone(pids) == []
    assert [r for r in roots if r.exists()] == []  # the killed worker's sandboxes too
    assert set((await _statuses(platform)).values()) == {"OFFLINE"}


# ---------------------------------------------------------------------------
# The command: SIGTERM stops it cleanly; killing it leaves no worker behind


def _spawn_sim(url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    argv = [TUNNELNB, "sim", "--platform", url, "--devices", "6", "--workers", "2", "--misbehaving", "0"]
    env = clean_env(TUNNELNB_API_TOKEN=API_TOKEN, TUNNELNB_LOGIN_PASSWORD=PASSWORD)
    with open(tmp_path / "sim.out", "wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, env=env)


async def _worker_pids_of(proc: subprocess.Popen[bytes], tmp_path: Path) -> list[int]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and proc.poll() is None:
        text = (tmp_path / "sim.out").read_text()
        if "login: user 'ops'" in text:
            return [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
        await asyncio.sleep(0.05)
    pytest.fail(f"tunnelnb sim did not come up: {proc.poll()=}, {(tmp_path / 'sim.out').read_text()!r}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_the_command_leaves_no_worker_behind(platform: Platform, tmp_path: Path, sig: signal.Signals) -> None:
    proc = _spawn_sim(platform.base_url, tmp_path)
    pids: list[int] = []
    try:
        pids = await _worker_pids_of(proc, tmp_path)
        assert len(pids) == 2 and sorted(_children(proc.pid)) == sorted(pids)
        assert set((await _statuses(platform)).values()) == {"ONLINE"}
        roots = _roots_of(pids)
        assert len(roots) == 2
        proc.send_signal(sig)
        code = await asyncio.to_thread(proc.wait, WAIT)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert await _gone(pids) == []
        assert [r for r in roots if r.exists()] == []
        assert set((await _statuses(platform)).values()) == {"OFFLINE"}
        if sig == signal.SIGTERM:
            assert (tmp_path / "sim.out").read_text().splitlines()[-1] == "simulated fleet stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait, WAIT)
        for pid in pids:  # a failed test must not leave them (they hold the stderr pipe open)
            if _stat(pid) is not None:
                os.kill(pid, signal.SIGKILL)
        assert proc.stderr is not None
        errors = proc.stderr.read().decode()
        proc.stderr.close()
    assert "Traceback" not in errors, errors

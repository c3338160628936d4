"""Device sessions recover from failures by themselves: real processes on loopback.

Each test breaks something for real (the platform restarts, a second notebook
takes the device's one tunnel, agents are SIGKILLed mid-command, a program holds
the terminal, the user presses Ctrl-C), checks the failing run's rows, then
checks that the next plain ``echo ok`` on the *same* fleet is ``ok`` without the
user doing anything.  The durations of the recovering runs are printed
(``pytest -s`` shows them).

Every process is a ``tunnelnb`` console-script process in a session of its own,
writing to files under ``tmp_path``; the ``procs`` fixture kills every one (with
its process group) when the test ends, whatever happened.  Every wait has a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import tunnelnb
from tunnelnb.client.api import PlatformAPI

if TYPE_CHECKING:
    from tunnelnb.client.result import CommandResult
    from tunnelnb.fleet.fleet import Fleet
    from tunnelnb.fleet.results import Results

TUNNELNB = str(Path(sys.executable).parent / "tunnelnb")  # the installed console script
URL_LINE = re.compile(r"http://127\.0\.0\.1:(\d+)")
PROJECT = "demo"
USER = "ops"
API_TOKEN = "recovery-api-" + secrets.token_hex(8)
PASSWORD = "recovery-pw-" + secrets.token_hex(8)
WAIT = 20.0  # upper bound of the harness's waits; they take well under that


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any TUNNELNB_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELNB_")}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------
# processes


@dataclass
class Proc:
    """A running ``tunnelnb`` process whose output goes to two files."""

    name: str
    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdout(self) -> str:
        return self.out_path.read_bytes().decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_bytes().decode("utf-8", "replace")

    def describe(self) -> str:
        return f"{self.name} (rc={self.popen.poll()})\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"

    def kill(self) -> None:
        """SIGKILL the process and its group (an agent's or a sim's children), then reap it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    async def wait_exit(self, timeout: float = WAIT) -> int | None:
        """The exit status, or None if still running after ``timeout`` (without blocking the loop)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                return self.popen.poll()
            await asyncio.sleep(0.05)


class Procs:
    """Every process a test starts; :meth:`kill_all` kills the ones still running."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.all: list[Proc] = []
        self._seq = itertools.count(1)

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        n = next(self._seq)
        out_path = self.directory / f"{n:02d}-{name}.out"
        err_path = self.directory / f"{n:02d}-{name}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            popen = subprocess.Popen(
                [TUNNELNB, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
            )
        proc = Proc(name, popen, out_path, err_path)
        self.all.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in reversed(self.all):
            proc.kill()

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.all)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


async def wait_line(proc: Proc, pattern: re.Pattern[str], timeout: float = WAIT) -> re.Match[str]:
    """The first complete stdout line ``pattern`` matches in full; fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        for line in proc.stdout.split("\n")[:-1]:
            if m := pattern.fullmatch(line.strip()):
                return m
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited before printing {pattern.pattern!r}: {proc.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{proc.name} printed no {pattern.pattern!r} within {timeout:g} s: {proc.describe()}")
        await asyncio.sleep(0.05)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, procs: Procs, timeout: float = WAIT) -> None:
    """Poll ``check`` every 0.1 s until it is true; an exception counts as not yet (and is shown on failure)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            if await check():
                return
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s (last error: {last!r})\n{procs.describe()}")
        await asyncio.sleep(0.1)


async def start_platform(procs: Procs, port: int = 0) -> tuple[Proc, str, int]:
    """``tunnelnb platform`` on ``port``; retried while a just-killed one's port is still taken."""
    deadline = time.monotonic() + WAIT
    args = ["platform", "--port", str(port), "--mqtt-port", "0", "--project-id", PROJECT, "--log-level", "warning"]
    while True:
        proc = procs.spawn("platform", args, clean_env(TUNNELNB_API_TOKEN=API_TOKEN))
        while True:
            if proc.popen.poll() is not None or URL_LINE.search(proc.stdout) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if m := URL_LINE.search(proc.stdout):
            return proc, m.group(0), int(m.group(1))
        if proc.popen.poll() is None or time.monotonic() > deadline or "in use" not in proc.stderr:
            pytest.fail(f"the platform did not start on port {port}: {proc.describe()}")
        await asyncio.sleep(0.3)  # the port is still held: try again


async def start_sim(procs: Procs, url: str, devices: int) -> Proc:
    """``tunnelnb sim`` of ``devices`` healthy devices (user ``ops``, password :data:`PASSWORD`), all online."""
    args = ["sim", "--platform", url, "--devices", str(devices), "--misbehaving", "0", "--log-level", "warning"]
    proc = procs.spawn("sim", args, clean_env(TUNNELNB_API_TOKEN=API_TOKEN, TUNNELNB_LOGIN_PASSWORD=PASSWORD))
    await wait_line(proc, re.compile(rf"{devices} simulated devices on .*"), timeout=60)
    return proc


async def stop_gracefully(proc: Proc) -> None:
    """SIGTERM, then SIGKILL if it has not exited within the harness's wait."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        if await proc.wait_exit(WAIT) is None:
            proc.kill()


def device_ids(n: int) -> list[str]:
    return [f"dev-{i:02d}" for i in range(1, n + 1)]


async def register(url: str, ids: list[str]) -> dict[str, str]:
    """Register ``ids`` on the platform; returns each device's secret."""
    secret_of = {d: "secret-" + secrets.token_hex(8) for d in ids}
    async with PlatformAPI(url, project_id=PROJECT, api_token=API_TOKEN, timeout=WAIT) as api:
        for device_id, secret in secret_of.items():
            await api.add_device(device_id, secret, device_id=device_id)
    return secret_of


def start_agent(procs: Procs, url: str, device_id: str, secret: str) -> Proc:
    """``tunnelnb agent --local-shell``: /bin/sh on a PTY, login ``ops`` / :data:`PASSWORD`."""
    args = [
        "agent", "--platform", url, "--device-id", device_id, "--local-shell", "--login-user", USER,
        "--log-level", "warning",
    ]  # fmt: skip
    env = clean_env(TUNNELNB_DEVICE_SECRET=secret, TUNNELNB_LOGIN_PASSWORD=PASSWORD)
    return procs.spawn(f"agent-{device_id}", args, env)


async def wait_status(url: str, ids: list[str], status: str, procs: Procs) -> None:
    """Until the platform lists every one of ``ids`` with ``status`` (ONLINE / OFFLINE)."""
    async with PlatformAPI(url, project_id=PROJECT, api_token=API_TOKEN, timeout=5) as api:

        async def check() -> bool:
            listed = {d["device_id"]: d.get("status") for d in await api.list_devices()}
            return all(listed.get(d) == status for d in ids)

        await wait_until(check, f"every device {status}", procs)


async def platform_with_agents(procs: Procs, ids: list[str]) -> tuple[str, dict[str, str], dict[str, Proc]]:
    """A platform process and one ``--local-shell`` agent process per device, all online."""
    _, url, _ = await start_platform(procs)
    secret_of = await register(url, ids)
    agents = {d: start_agent(procs, url, d, secret_of[d]) for d in ids}
    await wait_status(url, ids, "ONLINE", procs)
    return url, secret_of, agents


async def connect(url: str) -> Fleet:
    return await tunnelnb.connect(url, project_id=PROJECT, api_token=API_TOKEN, login=(USER, PASSWORD))


async def close_quietly(fleet: Fleet) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(fleet.close(), WAIT)


# ---------------------------------------------------------------------------
# what rows must be


def row_values(r: CommandResult) -> tuple[str, int | None, str, str]:
    return (r.status, r.exit_code, r.stdout, r.error)


def assert_all_ok(res: Results, ids: list[str], *, error: str = "") -> None:
    """One row per device, each ``echo ok`` answered ``ok\\n`` with exit 0 and ``error``."""
    assert sorted(r.device_id for r in res) == sorted(ids), res.df
    for r in res:
        assert row_values(r) == ("ok", 0, "ok\n", error), r


def durations(res: Results) -> str:
    return ", ".join(f"{r.device_id} {r.duration_s:.2f} s" for r in res)


async def timed_run(fleet: Fleet, what: str, command: str, targets: str | list[str] = "*", **kw: Any) -> Results:
    """``fleet.run``, printing the rows' ``duration_s`` and the run's wall-clock time."""
    t0 = time.monotonic()
    res = await fleet.run(command, targets, **kw)
    wall = time.monotonic() - t0
    print(f"\n[recovery] {what}: the run took {wall:.2f} s; duration_s: {durations(res)}")
    return res


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def running_under(root: int, argv: list[str]) -> bool:
    """Is a process with exactly ``argv`` running among ``root``'s descendants?"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.split(b"\0")[:-1] != [a.encode() for a in argv]:
            continue
        pid: int | None = int(entry.name)
        for _ in range(64):
            pid = _parent(pid) if pid is not None else None
            if pid is None or pid <= 1:
                break
            if pid == root:
                return True
    return False


# ---------------------------------------------------------------------------
# 1. the platform restarts


@pytest.mark.timeout(180)
async def test_platform_restart_next_run_makes_a_new_tunnel(procs: Procs) -> None:
    from tunnelnb.client.session import NOTE_NEW_TUNNEL

    platform, url, port = await start_platform(procs)
    sim = await start_sim(procs, url, 2)
    fleet = await connect(url)
    try:
        ids = fleet.select("*")
        assert len(ids) == 2, fleet.devices()
        assert_all_ok(await fleet.run("echo ok", timeout=20), ids)

        platform.kill()  # SIGKILL: nothing is closed on the way out
        platform, url2, port2 = await start_platform(procs, port)
        assert (url2, port2) == (url, port)

        # The platform keeps its state in memory: the restarted one knows no device, and
        # `tunnelnb sim` registers its devices only when it starts (its agents only retry their
        # device links, which a platform without the devices refuses).  So the sim is restarted
        # too, as an operator would; its device ids and secrets are the same (derived from the
        # API token).  The fleet is the same object throughout.
        listed = await fleet.refresh()
        assert len(listed) == 0, listed
        await stop_gracefully(sim)
        sim = await start_sim(procs, url, 2)

        async def online() -> bool:
            df = await fleet.refresh()
            return sorted(df.device_id) == sorted(ids) and set(df.status) == {"ONLINE"}

        await wait_until(online, "the sim's devices online on the restarted platform", procs)

        res = await timed_run(fleet, "platform restart, recovering", "echo ok", timeout=30)
        assert_all_ok(res, ids, error=NOTE_NEW_TUNNEL)
        assert_all_ok(await fleet.run("echo ok", timeout=20), ids)  # and it stays recovered, without a note
    finally:
        await close_quietly(fleet)


# ---------------------------------------------------------------------------
# 2. a second notebook takes the device


@pytest.mark.timeout(120)
async def test_second_fleet_takes_the_tunnel_first_fleet_makes_a_new_one(procs: Procs) -> None:
    from tunnelnb.client.session import NOTE_NEW_TUNNEL

    _, url, _ = await start_platform(procs)
    await start_sim(procs, url, 2)
    fleet_a = await connect(url)
    fleet_b = await connect(url)
    try:
        x = fleet_a.select("*")[0]
        assert_all_ok(await fleet_a.run("echo ok", x, timeout=20), [x])
        # IoTDA allows one tunnel per device: B's session closes and deletes A's tunnel.
        assert_all_ok(await fleet_b.run("echo ok", x, timeout=20), [x])
        res = await timed_run(fleet_a, "tunnel taken by another fleet, recovering", "echo ok", x, timeout=30)
        assert_all_ok(res, [x], error=NOTE_NEW_TUNNEL)
        assert_all_ok(await fleet_a.run("echo ok", x, timeout=20), [x])
    finally:
        await close_quietly(fleet_a)
        await close_quietly(fleet_b)


# ---------------------------------------------------------------------------
# 3. agents killed mid-command


@pytest.mark.timeout(150)
async def test_agents_killed_mid_command_then_offline_at_once_then_back(procs: Procs) -> None:
    from tunnelnb.client.session import NOTE_NEW_SHELL

    ids = device_ids(10)
    url, secret_of, agents = await platform_with_agents(procs, ids)
    fleet = await connect(url)
    try:
        assert_all_ok(await fleet.run("echo ok", timeout=20), ids)

        run = asyncio.create_task(fleet.run("sleep 20", timeout=5))
        started = time.monotonic()

        async def all_sleeping() -> bool:
            return all(running_under(agents[d].pid, ["sleep", "20"]) for d in ids)

        await wait_until(all_sleeping, "`sleep 20` running on every device", procs, timeout=4)
        await asyncio.sleep(max(0.0, started + 1.0 - time.monotonic()))  # 1 s into the run
        for agent in agents.values():
            agent.kill()
        res = await asyncio.wait_for(run, 30)
        assert sorted(res.df.device_id) == ids, res.df  # exactly one row per device
        assert set(res.df.status) == {"disconnected"}, res.df[["device_id", "status", "error"]]
        for r in res:
            assert r.exit_code is None and r.duration_s < 5, r

        # The platform lists them OFFLINE: the next run answers `offline` at once, never
        # waiting for a join longer than its own timeout.
        await wait_status(url, ids, "OFFLINE", procs)
        res = await timed_run(fleet, "agents gone, offline", "echo ok", timeout=5)
        assert sorted(res.df.device_id) == ids, res.df
        assert set(res.df.status) == {"offline"}, res.df[["device_id", "status", "duration_s", "error"]]
        for r in res:
            assert r.exit_code is None and r.stdout == "" and r.duration_s < 5, r

        agents = {d: start_agent(procs, url, d, secret_of[d]) for d in ids}
        await wait_status(url, ids, "ONLINE", procs)
        res = await timed_run(fleet, "agents back, recovering", "echo ok", timeout=20)
        # The same tunnels, new shells: the rows say the shells' state is gone.
        assert_all_ok(res, ids, error=NOTE_NEW_SHELL)
        assert_all_ok(await fleet.run("echo ok", timeout=20), ids)
    finally:
        await close_quietly(fleet)


# ---------------------------------------------------------------------------
# 4. a program that holds the terminal


HOLDERS = {
    # vi reads the terminal in raw mode; Ctrl-C does not end it.
    "vi": ["vi", "{dir}/x"],
    # Ignores Ctrl-C and reads two lines from the terminal: what the session types to re-sync may
    # free it.  tunnelnb runs every command with stdin from /dev/null (protocol/shell.py,
    # command_script), so a plain `read` would just see end-of-file: it reads /dev/tty.
    "trap-read": ["sh", "-c", 'trap "" INT; read line </dev/tty; read line </dev/tty'],
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("holder", sorted(HOLDERS))
async def test_program_holding_the_terminal_times_out_then_shell_answers(
    procs: Procs, tmp_path: Path, holder: str
) -> None:
    from tunnelnb.client.session import NOTE_SHELL_RESTARTED

    if holder == "vi" and shutil.which("vi") is None:
        pytest.skip("vi is not installed")
    ids = device_ids(1)
    url, _, agents = await platform_with_agents(procs, ids)
    fleet = await connect(url)
    try:
        # A shell variable tells whether the shell that answers later is still this one.
        assert_all_ok(await fleet.run("TNB_MARK=kept; echo ok", timeout=20), ids)

        argv = [arg.replace("{dir}", str(tmp_path)) for arg in HOLDERS[holder]]
        command = shlex.join(argv)
        res = await fleet.run(command, timeout=3)
        [row] = list(res)
        assert (row.status, row.exit_code) == ("timeout", None), row
        assert row.error.startswith("no end of output within 3 s"), row
        holding = running_under(agents[ids[0]].pid, argv)
        print(f"\n[recovery] {holder}: still holding the terminal after the timeout row: {holding}")

        res = await timed_run(fleet, f"{holder}, recovering", "echo ok", timeout=10)
        [row] = list(res)
        print(f"[recovery] {holder}: error {row.error!r}")
        assert (row.status, row.exit_code, row.stdout) == ("ok", 0, "ok\n"), row
        assert row.error in ("", NOTE_SHELL_RESTARTED), row

        # The note tells the truth: present exactly when the shell is a new one.
        [mark] = list(await fleet.run("echo ${TNB_MARK:-lost}", timeout=10))
        assert (mark.status, mark.error) == ("ok", ""), mark
        assert mark.stdout in ("kept\n", "lost\n"), mark
        restarted = mark.stdout == "lost\n"
        print(f"[recovery] {holder}: shell restarted: {restarted}")
        assert row.error == (NOTE_SHELL_RESTARTED if restarted else ""), (row, mark)
    finally:
        await close_quietly(fleet)


# ---------------------------------------------------------------------------
# 5. Ctrl-C of a run


GOING = "echo going; sleep 30"


def assert_cancelled_rows(rows: list[dict[str, Any]], ids: list[str], longest: float) -> None:
    """Every device cancelled after printing ``going``, with the time it really ran."""
    assert sorted(r["device_id"] for r in rows) == ids, rows
    for r in rows:
        assert (r["status"], r["stdout"]) == ("cancelled", "going\n"), r
        assert r["exit_code"] is None, r
        assert 0.5 < r["duration_s"] <= longest, (r, longest)


def as_dicts(res: Results) -> list[dict[str, Any]]:
    return [
        {"device_id": r.device_id, "status": r.status, "stdout": r.stdout, "exit_code": r.exit_code,
         "duration_s": r.duration_s, "error": r.error}
        for r in res
    ]  # fmt: skip


@pytest.mark.timeout(90)
async def test_cancelled_task_rows_keep_output_and_time_then_next_run_ok(procs: Procs) -> None:
    ids = device_ids(2)
    url, _, _ = await platform_with_agents(procs, ids)
    fleet = await connect(url)
    try:
        assert_all_ok(await fleet.run("echo ok", timeout=20), ids)
        seen = {d: "" for d in ids}

        def on_output(device_id: str, text: str) -> None:
            seen[device_id] += text

        started = time.monotonic()
        task = asyncio.create_task(fleet.run(GOING, timeout=60, on_output=on_output))

        async def all_going() -> bool:
            return all("going\n" in s for s in seen.values())

        await wait_until(all_going, "`going` streamed from every device", procs)
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        longest = time.monotonic() - started
        assert fleet.last_results is not None
        assert_cancelled_rows(as_dicts(fleet.last_results), ids, longest)

        res = await timed_run(fleet, "after cancelling a task", "echo ok", timeout=20)
        assert_all_ok(res, ids)
    finally:
        await close_quietly(fleet)


@pytest.mark.timeout(90)
def test_sync_fleet_ctrl_c_rows_keep_output_and_time_then_next_run_ok(procs: Procs) -> None:
    ids = device_ids(2)
    url, _, _ = asyncio.run(platform_with_agents(procs, ids))
    going = threading.Event()
    seen = {d: "" for d in ids}
    lock = threading.Lock()

    def on_output(device_id: str, text: str) -> None:  # on the fleet's loop thread
        with lock:
            seen[device_id] += text
            if all("going\n" in s for s in seen.values()):
                going.set()

    def ctrl_c_once_going() -> None:
        if going.wait(WAIT):
            time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, to the main thread

    with tunnelnb.connect_sync(url, project_id=PROJECT, api_token=API_TOKEN, login=(USER, PASSWORD)) as fleet:
        assert_all_ok(fleet.run("echo ok", timeout=20), ids)
        sender = threading.Thread(target=ctrl_c_once_going, daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            res = fleet.run(GOING, timeout=60, on_output=on_output)
        finally:
            sender.join(WAIT + 5)
        longest = time.monotonic() - started
        assert going.is_set(), seen
        assert res is fleet.last_results
        assert_cancelled_rows(as_dicts(res), ids, longest)

        t0 = time.monotonic()
        res = fleet.run("echo ok", timeout=20)
        wall = time.monotonic() - t0
        print(f"\n[recovery] after Ctrl-C of SyncFleet.run: the run took {wall:.2f} s; duration_s: {durations(res)}")
        assert_all_ok(res, ids)


@pytest.mark.timeout(90)
async def test_cli_run_sigint_prints_cancelled_rows_with_output(procs: Procs) -> None:
    ids = device_ids(2)
    url, _, agents = await platform_with_agents(procs, ids)
    args = ["run", "--platform", url, "--project-id", PROJECT, "--user", USER, "--format", "json",
            "--timeout", "60", "dev-*", "--", GOING]  # fmt: skip
    run = procs.spawn("run", args, clean_env(TUNNELNB_API_TOKEN=API_TOKEN, TUNNELNB_LOGIN_PASSWORD=PASSWORD))
    started = time.monotonic()

    # `going` has been printed once the shell runs the `sleep 30` after it.
    async def all_sleeping() -> bool:
        return all(running_under(agents[d].pid, ["sleep", "30"]) for d in ids)

    await wait_until(all_sleeping, "`sleep 30` running on every device", procs)
    await asyncio.sleep(1.0)
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in its terminal
    rc = await run.wait_exit(30)
    longest = time.monotonic() - started
    assert rc == 130, run.describe()
    rows = json.loads(run.stdout)
    assert_cancelled_rows(rows, ids, longest)
    assert "2 devices: " in run.stderr and "2 cancelled" in run.stderr, run.describe()

    # The devices' shells answer the next run (a new `tunnelnb run`, a new session).
    again = procs.spawn(
        "run-again",
        ["run", "--platform", url, "--project-id", PROJECT, "--user", USER, "--format", "json", "--timeout", "20",
         "dev-*", "--", "echo ok"],
        clean_env(TUNNELNB_API_TOKEN=API_TOKEN, TUNNELNB_LOGIN_PASSWORD=PASSWORD),
    )  # fmt: skip
    assert await again.wait_exit(40) == 0, again.describe()
    rows = json.loads(again.stdout)
    assert [(r["device_id"], r["status"], r["stdout"]) for r in rows] == [(d, "ok", "ok\n") for d in ids], rows

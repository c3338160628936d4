"""Benchmark: fan one command out to N simulated devices, tunnelnb against direct SSH.

    .venv/bin/python bench/fanout.py [--sizes 10,100,1000] [--repeats 3] [--json PATH] [--profile]
                                     [--pssh-python PATH] [--variants ...] [--no-extra] [--sim-workers 2]

For each N, one **devices** process runs a local :class:`~tunnelnb.server.platform.Platform` and a
simulated fleet of N devices with ``backend="ssh"`` (per device an agent and an embedded SSH
server in front of a sandboxed ``/bin/sh``) and ``misbehaving=0``: every device is healthy,
none is slow, flaky or offline.  Below N = 100 the fleet is a
:class:`~tunnelnb.sim.fleet.SimulatedFleet` in the platform's process; from N = 100 on it is a
:class:`~tunnelnb.sim.workers.ShardedFleet` of ``--sim-workers`` processes (``tunnelnb sim
--workers``), so that one event loop starting every device's shell does not set the pace.  Each
device's sandbox is built (its launcher run once) before any client logs in, so no client pays
for the devices' first boot.  Then each **client** runs alone with the devices, in a process of
its own (so its CPU time and peak memory are its own), one after the other; after each client
the devices settle (until they use under 5 % of a core: ending 1,000 shells keeps them busy for
a while after the client has gone), so no client pays for its predecessor:

* ``tunnelnb``: ``tunnelnb.connect(url, project_id, api_token, max_sessions=N,
  concurrency=N)``, then ``fleet.login("*", user, password, concurrency=100)`` ("login":
  1,000 logins at once overwhelm the devices and the platform's cap on connections waiting to
  authenticate from one address), then ``fleet.run(command, "*")``, timed from the call until
  ``res.df`` is built.
* ``asyncssh``: what a user who can reach the devices' SSH servers directly would write:
  ``asyncssh.connect`` to every server at once ("login"), then
  ``asyncio.gather(*(conn.run(command) for conn in conns))`` over those connections.
  Each ``conn.run`` opens an exec channel, so the device starts a process per command
  (its sandbox launcher, a Python program, then ``sh -c``).
* ``asyncssh-shell`` (a reference, not what users write): the same connections, each
  with one interactive PTY shell, as tunnelnb's agent keeps, into which the commands are
  typed with tunnelnb's framing (:mod:`tunnelnb.protocol.shell`).  Same work on the devices as
  tunnelnb minus platform, agent and WebSockets: the floor for tunnelnb's fan-out.  Its login
  (all N connections and shells at once, each shell synced) is the floor for tunnelnb's N logins:
  the logins table gives the ratio, against the target of 1.2x at N = 1,000.
* ``pssh``: parallel-ssh's ``ParallelSSHClient`` (libssh2 via ssh2-python, gevent) with
  its default ``pool_size=100``: ``connect_auth()`` ("login"), then ``run_command`` +
  ``join`` + reading every output.  It runs under ``--pssh-python`` (default: this
  interpreter; e.g. ``python -m venv /tmp/pssh && /tmp/pssh/bin/pip install
  parallel-ssh``); the row says so when it cannot be imported there.
* An extra row for N > 100, after the others (``--no-extra`` skips it):
  ``tunnelnb.connect()`` with the Fleet's defaults (``max_sessions=100``,
  ``concurrency=100``), ``fleet.set_login(...)`` and one run of the first command
  (the least recently used session makes room for the next device, so every run on
  N > 100 devices logs in to each device again).

Per client: login once; ``--warmup`` untimed runs of the first command (tunnelnb and
the persistent shell); then ``--repeats`` rounds of every ``--commands`` entry
(``--baseline-repeats`` for ``conn.run`` and parallel-ssh, whose every run starts N
processes on the devices: about 30 s at N = 1,000 on 2 cores); the table reports
medians.  Every result is checked (exit status 0, ``echo ok`` printed ``ok``, other
commands printed something); failed rows are shown in the table and make the script
exit 1 after the report.  Client peak memory is the client process's ``ru_maxrss``
over its whole life (logins included), next to its RSS after imports.  CPU seconds of
the client and the devices (the platform's process and the fleet's workers) are reported per
login and per run, and tunnelnb's client CPU per login and per device-command.  Warnings and
errors the processes log are counted by kind (a few are shown on stderr) and listed
per phase.  ``--profile`` adds cProfile listings of one more ``echo ok`` at the
largest N, of the client and of the devices process, for tunnelnb and for the
persistent-shell floor.

Target (from the issue): after login, 1,000 devices answer ``echo ok`` in ≤ 2 s wall,
within 1.5x of direct asyncssh to the same servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as pyplatform
import queue
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing (and under --pssh-python)

from tunnelnb.server.oslimits import raise_open_files_limit  # noqa: E402 - standard library only

# Nothing above imports more than the standard library: the parallel-ssh client runs this
# file under another interpreter (--pssh-python) that may have neither tunnelnb nor its deps.

TARGET_N = 1000
TARGET_COMMAND = "echo ok"
TARGET_WALL_S = 2.0
TARGET_RATIO = 1.5
#: Logins: N tunnelnb logins within this factor of asyncssh opening N persistent PTY shells (issue 18).
TARGET_LOGIN_RATIO = 1.2
#: From this N on, the simulated fleet runs in --sim-workers processes (below, beside the platform).
SIM_WORKERS_FROM = 100
#: Between clients the devices settle: until they use less than this share of a core over a second (at most
#: SETTLE_MAX_S): ending a client's 1,000 shells keeps them busy for a while after the client has gone.
SETTLE_IDLE = 0.05
SETTLE_MAX_S = 300.0
SEED = 1

VARIANTS = ("tunnelnb", "asyncssh", "asyncssh-shell", "pssh")
PER_COMMAND_PROCESS = ("asyncssh", "pssh")  # exec channels: a new process on the device per command
PROFILED = ("tunnelnb", "asyncssh-shell")  # --profile: client and devices process, one more echo run
EXTRAS = ("tunnelnb-default",)
LABELS = {
    "tunnelnb": "tunnelnb",
    "tunnelnb-default": "tunnelnb.connect(), default limits",
    "asyncssh": "asyncssh direct (conn.run)",
    "asyncssh-shell": "asyncssh direct, persistent PTY shell",
    "pssh": "parallel-ssh",
}


class BenchError(RuntimeError):
    """A process of the benchmark failed or did not answer: the numbers would lie."""


# ---------------------------------------------------------------------------
# Small helpers shared by every process


def rss_mb() -> float:
    """This process's resident set size now, in MB (10^6 bytes)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def maxrss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def output_ok(command: str, exit_code: int | None, stdout: str) -> bool:
    """Did the command do what it should? ``echo ok`` prints ``ok``; others print something."""
    if exit_code != 0:
        return False
    text = stdout.replace("\r\n", "\n").strip()
    return text == "ok" if command == "echo ok" else bool(text)


# ---------------------------------------------------------------------------
# Child processes speak JSON lines: requests on stdin, answers on stdout.


class Child:
    """A child process of this script with a line-of-JSON protocol; stderr is shared with ours."""

    def __init__(self, argv: list[str], config: dict[str, Any], *, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=str(ROOT)
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"read-{name}").start()
        self.send(config)  # secrets travel on the pipe, never on the command line

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.name}: the process is gone ({exc})") from None

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.name}: no answer within {timeout:g} s") from None
        if line is None:
            self.proc.wait()
            raise BenchError(f"{self.name}: the process ended (exit status {self.proc.returncode})")
        answer = json.loads(line)
        if "fatal" in answer:
            raise BenchError(f"{self.name}: {answer['fatal']}")
        return answer

    def request(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(obj)
        return self.receive(timeout)

    def finish(self, timeout: float = 60) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _protocol_stdout() -> Any:
    """Our answers go to the real stdout; anything else printed goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


# ---------------------------------------------------------------------------
# The devices process: platform + simulated fleet


def devices_main() -> int:
    import asyncio

    out = _protocol_stdout()
    config = json.loads(sys.stdin.readline())
    return asyncio.run(_devices(config, out))


class _LogDigest:
    """A logging handler that shows the first few records of each kind and counts them all.

    With 1,000 devices one failure mode can log a thousand tracebacks; the counts go
    into the report instead.
    """

    SHOW = 2

    def __init__(self, prefix: str) -> None:
        import logging
        import re

        self.counts: dict[str, int] = {}
        self._id = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\b[0-9a-f]{12,}\b|0x[0-9a-f]+|\d+")
        self.handler = logging.Handler(logging.WARNING)
        self.handler.setFormatter(logging.Formatter(f"{prefix}: %(levelname)s %(name)s: %(message)s"))
        self.handler.emit = self._emit  # type: ignore[method-assign]

    def _emit(self, record: Any) -> None:
        first = record.getMessage().split("\n", 1)[0]
        if record.exc_info and record.exc_info[1] is not None:
            first += f" [{type(record.exc_info[1]).__name__}]"
        key = f"{record.levelname} {record.name}: " + self._id.sub("#", first)[:200]
        n = self.counts[key] = self.counts.get(key, 0) + 1
        if n <= self.SHOW:
            sys.stderr.write(self.handler.format(record) + "\n")
        elif n == self.SHOW + 1:
            sys.stderr.write(f"(more of: {key}; counted in the report)\n")

    def install(self) -> None:
        import logging

        logging.getLogger().addHandler(self.handler)
        logging.getLogger().setLevel(logging.WARNING)


def _workers_rss_mb(sim: Any) -> float:
    """The resident set size of the simulated fleet's worker processes, if it has any, in MB."""
    total = 0.0
    for pid in getattr(sim, "worker_pids", []):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return total


async def _devices(config: dict[str, Any], out: Any) -> int:
    import asyncio
    import cProfile

    from tunnelnb.server.platform import Platform
    from tunnelnb.sim import ShardedFleet, SimulatedFleet

    digest = _LogDigest("devices")
    digest.install()
    raise_open_files_limit()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)  # stop the fleet cleanly: no loop devices left behind
    n = config["n"]
    t0 = time.perf_counter()
    cpu0 = cpu_s()
    platform = Platform(project_id="bench", api_token=secrets.token_urlsafe(24))
    await platform.start()
    workers = config["workers"]
    options = {
        "api_token": platform.api_token,
        "project_id": platform.project_id,
        "devices": n,
        "seed": config["seed"],
        "backend": "ssh",
        "misbehaving": 0.0,
        "sandbox": config["sandbox"],
        "concurrency": 64,
    }
    # Each worker builds its devices' sandboxes (starts every shell once) before it reports ready.
    sim: Any = (
        ShardedFleet(platform.base_url, workers=workers, prebuild=True, **options)
        if workers > 1
        else SimulatedFleet(platform.base_url, **options)
    )
    try:
        await sim.start()
        if sim.misbehaving:
            raise RuntimeError(f"devices misbehave although misbehaving=0: {sim.misbehaving}")
        ports = sim.ssh_ports
        if sorted(ports) != sorted(sim.device_ids):
            raise RuntimeError(f"{len(sim.device_ids) - len(ports)} devices have no SSH server")
        user, password = sim.login()
        if workers > 1:
            build_s = sim.build_s
            start_s = time.perf_counter() - t0 - build_s
            start_cpu_s = cpu_s() - cpu0 + sim.usage()["cpu_s"]  # the workers' own, sandbox builds included
        else:
            start_s, start_cpu_s = time.perf_counter() - t0, cpu_s() - cpu0
            build_s, build_failures = await sim.build_sandboxes(2 * (os.cpu_count() or 1))
            if build_failures:
                raise RuntimeError(f"{build_failures} device sandboxes could not be built")
        info = {
            "url": platform.base_url,
            "project_id": platform.project_id,
            "api_token": platform.api_token,
            "user": user,
            "password": password,
            "ports": ports,
            "start_s": start_s,
            "start_cpu_s": start_cpu_s,
            "build_s": build_s,
            "sandbox": sim.sandbox,
            "data_backend": sim.data_backend,
            "rss_mb": rss_mb() + _workers_rss_mb(sim),
            "pid": os.getpid(),
            "workers": workers,
        }
        out.write(json.dumps(info) + "\n")
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        stop_task = asyncio.ensure_future(stopping.wait())
        profiler: Any = None
        while True:
            read = asyncio.ensure_future(reader.readline())
            await asyncio.wait([read, stop_task], return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                break
            line = read.result()
            if not line:
                break
            request = json.loads(line)
            if request.get("op") == "usage":
                profile_text = None
                if request.get("profile") == "start":
                    profiler = cProfile.Profile()
                    profiler.enable()
                elif request.get("profile") == "stop" and profiler is not None:
                    profiler.disable()
                    profile_text = _profile_text(profiler, request.get("top", 25))
                    profiler = None
                own = {"cpu_s": 0.0, "children_cpu_s": 0.0} if workers == 1 else sim.usage()
                out.write(
                    json.dumps(
                        {
                            "cpu_s": cpu_s() + own["cpu_s"],  # the platform and every device
                            "platform_cpu_s": cpu_s() if workers > 1 else float("nan"),
                            "children_cpu_s": cpu_s(resource.RUSAGE_CHILDREN) + own["children_cpu_s"],
                            "rss_mb": rss_mb() + _workers_rss_mb(sim),
                            "online": sum(1 for d in platform.devices.values() if d["status"] == "ONLINE"),
                            "log_counts": digest.counts,
                            "profile": profile_text,
                        }
                    )
                    + "\n"
                )
            elif request.get("op") == "stop":
                break
    finally:
        await sim.stop()
        await platform.stop()
    import gc

    gc.collect()  # aiohttp reports unclosed sessions when they are collected: count them too
    out.write(json.dumps({"stopped": True, "log_counts": digest.counts}) + "\n")
    return 0


# ---------------------------------------------------------------------------
# Client processes, one per variant


def client_main(variant: str) -> int:
    out = _protocol_stdout()
    config = json.loads(sys.stdin.readline())
    raise_open_files_limit()
    if variant == "pssh":
        return _pssh_client(config, out)
    import asyncio

    return asyncio.run(_async_client(variant, config, out))


def _profile_text(prof: Any, top: int) -> str:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    groups = _by_component(stats)
    total = sum(groups.values()) or 1.0
    table = ["| component (own time) | seconds | share |", "|---|---:|---:|"]
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
        table.append(f"| {name} | {seconds:.3f} | {seconds / total * 100:.1f} % |")
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return "\n".join(table) + f"\n\n```\n{buf.getvalue().strip()}\n```\n"


_BUILTIN_GROUPS = (
    ("'poll' of 'select.epoll'", "idle (waiting in epoll)"),
    ("posix.read", "syscalls: socket I/O"),
    ("posix.write", "syscalls: socket I/O"),
    ("_socket.socket", "syscalls: socket I/O"),
    ("_SelectorSocketTransport", "syscalls: socket I/O"),
    ("_json", "json (C)"),
    ("re.Pattern", "re (C)"),
    ("cipher", "cryptography (SSH encryption)"),
    ("_tag", "cryptography (SSH encryption)"),
    ("_rust", "cryptography (SSH encryption)"),
)


def _by_component(stats: Any) -> dict[str, float]:
    """Own time (tottime) summed by package, tunnelnb by module; C functions by what they do."""
    groups: dict[str, float] = {}
    for (filename, _line, name), row in stats.stats.items():
        tottime = row[2]
        path = filename.replace("\\", "/")
        if path == "~":
            group = next((g for key, g in _BUILTIN_GROUPS if key in name), "other C builtins")
        elif "/tunnelnb/" in path:
            group = "tunnelnb." + Path(path).stem
        elif path.endswith("bench/fanout.py"):
            group = "bench harness"
        else:
            parts = Path(path).parts
            pkgs = ("aiohttp", "yarl", "multidict", "asyncssh", "cryptography", "pandas", "numpy", "asyncio")
            group = next((p for p in pkgs if p in parts), "")
            if not group:
                group = "asyncio" if path.endswith(("selectors.py", "socket.py")) else "other Python"
            if group == "cryptography":
                group = "cryptography (SSH encryption)"
        groups[group] = groups.get(group, 0.0) + tottime
    return groups


class _TunnelnbClient:
    """tunnelnb's Fleet.  ``mode``:

    * ``"tunnelnb"``: ``tunnelnb.connect(url, ..., max_sessions=N, concurrency=N)``, then
      ``fleet.login("*", ..., concurrency=<login concurrency>)``;
    * ``"tunnelnb-default"``: ``tunnelnb.connect(url, ...)`` with the Fleet's defaults (100 logged in).
    """

    def __init__(self, config: dict[str, Any], mode: str) -> None:
        self.config = config
        self.n = len(config["ports"])
        self.mode = mode
        self.fleet: Any = None

    async def login(self) -> dict[str, Any]:
        import tunnelnb

        c = self.config
        options = {"max_sessions": self.n, "concurrency": self.n} if self.mode == "tunnelnb" else {}
        t0 = time.perf_counter()
        self.fleet = await tunnelnb.connect(c["url"], project_id=c["project_id"], api_token=c["api_token"], **options)
        t1 = time.perf_counter()
        if self.mode == "tunnelnb-default":
            # With 100 sessions for N devices, every run logs in again to the devices it reaches (the least
            # recently used session makes room), so logging in first would only be undone: the run does it.
            ids = self.fleet.set_login("*", c["user"], c["password"])
            return {"seconds": None, "connect_s": t1 - t0, "ok": len(ids), "failures": [], "set_login": True}
        res = await self.fleet.login(
            "*", user=c["user"], password=c["password"], timeout=c["timeout"], concurrency=c["login_concurrency"]
        )
        df = res.df
        t2 = time.perf_counter()
        bad = df[df.status != "ok"]
        reasons: dict[str, int] = {}
        for r in bad.itertuples():
            reason = f"{r.status}: {r.error}".replace(c["url"], "<url>")
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "seconds": t2 - t1,
            "connect_s": t1 - t0,
            "ok": int(len(df) - len(bad)),
            "failures": [f"{count} x {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])][:3],
            # Each device's own login time (bench/wan.py takes the device's SSH login out of it).
            "durations": {r.device_id: r.duration_s for r in df.itertuples() if r.status == "ok"},
        }

    async def run(self, command: str) -> tuple[float, int, list[str]]:
        import pandas as pd

        t0 = time.perf_counter()
        res = await self.fleet.run(command, "*", timeout=self.config["timeout"])
        df = res.df
        dt = time.perf_counter() - t0
        good = 0
        failures = []
        for r in df.itertuples():
            code = None if pd.isna(r.exit_code) else int(r.exit_code)
            if r.status == "ok" and output_ok(command, code, r.stdout):
                good += 1
            else:
                failures.append(f"{r.device_id}: {r.status} exit={r.exit_code} {r.stdout[:40]!r} {r.error}")
        return dt, good, failures

    async def close(self) -> None:
        if self.fleet is not None:
            fleet, self.fleet = self.fleet, None
            await fleet.close()  # at most 100 sessions closing at once


def _connect_options(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "username": config["user"],
        "password": config["password"],
        "known_hosts": None,  # the simulated devices' host keys are not in any known_hosts
        "client_keys": None,
        "agent_path": None,
        "config": None,
        "preferred_auth": "password",
    }


class _AsyncsshClient:
    """What a user who reaches the SSH servers directly writes: persistent connections, ``conn.run``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.conns: list[Any] = []
        self.ids: list[str] = []

    async def login(self) -> dict[str, Any]:
        import asyncio

        import asyncssh

        options = _connect_options(self.config)
        items = list(self.config["ports"].items())
        limit = self.config.get("ssh_login_concurrency") or 0  # 0: every device at once
        gate: Any = asyncio.Semaphore(limit) if limit else contextlib.nullcontext()

        async def one(port: int) -> tuple[Any, Any]:
            async with gate:
                conn = await asyncssh.connect("127.0.0.1", port, **options)
                try:
                    return conn, await self._open(conn)
                except BaseException:
                    conn.close()
                    raise

        t0 = time.perf_counter()
        opened = await asyncio.gather(*(one(port) for _, port in items), return_exceptions=True)
        dt = time.perf_counter() - t0
        failures = []
        for (device_id, _), done in zip(items, opened, strict=True):
            if isinstance(done, BaseException):
                failures.append(f"{device_id}: {type(done).__name__}: {done}")
            else:
                self.conns.append(done[0])
                self.ids.append(device_id)
                self._opened(done[1])
        return {"seconds": dt, "ok": len(self.conns), "failures": failures[:3]}

    async def _open(self, conn: Any) -> Any:
        """What the login opens on a new connection besides (the shell variant: its shell)."""
        return None

    def _opened(self, what: Any) -> None:
        pass

    async def run(self, command: str) -> tuple[float, int, list[str]]:
        import asyncio

        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(asyncio.wait_for(c.run(command, check=False), self.config["timeout"]) for c in self.conns),
            return_exceptions=True,
        )
        dt = time.perf_counter() - t0
        good, failures = 0, []
        for device_id, r in zip(self.ids, results, strict=True):
            if isinstance(r, BaseException):
                failures.append(f"{device_id}: {type(r).__name__}: {r}")
            elif output_ok(command, r.exit_status, r.stdout or ""):
                good += 1
            else:
                failures.append(f"{device_id}: exit={r.exit_status} {(r.stdout or '')[:40]!r}")
        return dt, good, failures

    async def close(self) -> None:
        import asyncio

        conns, self.conns = self.conns, []
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)


def _shell_session_class() -> type:
    import asyncio

    import asyncssh

    from tunnelnb.protocol.shell import CommandParser, Finished, Output, TerminalText, command_script, new_marker_id

    class ShellSession(asyncssh.SSHClientSession):  # type: ignore[type-arg]
        """One interactive PTY shell; commands typed with tunnelnb's markers, output parsed like tunnelnb."""

        def __init__(self) -> None:
            self.chan: Any = None
            self.term = TerminalText()
            self.parser: CommandParser | None = None
            self.chunks: list[str] = []
            self.done: asyncio.Future[int] | None = None
            self.seq = 0
            self.tag = secrets.token_hex(3)

        def connection_made(self, chan: Any) -> None:
            self.chan = chan

        def data_received(self, data: bytes, datatype: Any) -> None:
            text = self.term.feed(data)
            if self.parser is None or not text:
                return
            for event in self.parser.feed(text):
                if isinstance(event, Output):
                    self.chunks.append(event.text)
                elif isinstance(event, Finished) and self.done is not None and not self.done.done():
                    self.done.set_result(event.exit_code)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.done is not None and not self.done.done():
                self.done.set_exception(exc or ConnectionError("channel closed"))

        async def execute(self, command: str, prefix: str = "") -> tuple[int, str]:
            self.seq += 1
            marker = new_marker_id(self.seq, self.tag)
            self.parser = CommandParser(marker)
            self.chunks = []
            self.done = asyncio.get_running_loop().create_future()
            self.chan.write((prefix + command_script(marker, command)).encode())
            code = await self.done
            self.parser = None
            return code, "".join(self.chunks)

    return ShellSession


class _AsyncsshShellClient(_AsyncsshClient):
    """Reference: one PTY shell per connection (as tunnelnb's agent keeps), framed commands typed into it."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.sessions: list[Any] = []
        self._cls: type | None = None

    async def _open(self, conn: Any) -> Any:
        """The connection's PTY shell, synced as tunnelnb syncs its own (the login times connection and shell)."""
        import asyncio

        from tunnelnb.protocol.shell import setup_script

        if self._cls is None:
            self._cls = _shell_session_class()
        _, session = await conn.create_session(self._cls, term_type="xterm", term_size=(128, 30), encoding=None)
        code, _ = await asyncio.wait_for(session.execute("true", prefix=setup_script()), self.config["timeout"])
        if code != 0:
            raise RuntimeError(f"shell sync gave exit status {code}")
        return session

    def _opened(self, what: Any) -> None:
        self.sessions.append(what)

    async def run(self, command: str) -> tuple[float, int, list[str]]:
        import asyncio

        timeout = self.config["timeout"]
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(asyncio.wait_for(s.execute(command), timeout) for s in self.sessions), return_exceptions=True
        )
        dt = time.perf_counter() - t0
        good, failures = 0, []
        for device_id, r in zip(self.ids, results, strict=True):
            if isinstance(r, BaseException):
                failures.append(f"{device_id}: {type(r).__name__}: {r}")
            elif output_ok(command, r[0], r[1]):
                good += 1
            else:
                failures.append(f"{device_id}: exit={r[0]} {r[1][:40]!r}")
        return dt, good, failures


async def _async_client(variant: str, config: dict[str, Any], out: Any) -> int:
    import asyncio
    import cProfile

    digest = _LogDigest(variant)
    digest.install()
    client: Any
    if variant in ("tunnelnb", "tunnelnb-default"):
        import tunnelnb.fleet.fleet  # imported here, so the idle RSS counts pandas and aiohttp

        client = _TunnelnbClient(config, variant)
    elif variant == "asyncssh":
        import asyncssh  # imported here, so the idle RSS counts it

        client = _AsyncsshClient(config)
    elif variant == "asyncssh-shell":
        import asyncssh  # noqa: F401

        import tunnelnb.protocol.shell  # noqa: F401

        client = _AsyncsshShellClient(config)
    else:
        out.write(json.dumps({"fatal": f"unknown variant {variant}"}) + "\n")
        return 2
    out.write(json.dumps({"ready": True, "idle_rss_mb": rss_mb(), "version": _versions(variant)}) + "\n")

    # Read requests without blocking the loop: WebSocket pings and pongs must flow between runs.
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            op = request["op"]
            try:
                if op == "login":
                    cpu0 = time.process_time()
                    answer = await client.login()
                    answer["cpu_s"] = time.process_time() - cpu0
                elif op == "run":
                    prof = cProfile.Profile() if request.get("profile") else None
                    cpu0 = time.process_time()
                    if prof is not None:
                        prof.enable()
                    try:
                        seconds, good, failures = await client.run(request["command"])
                    finally:
                        if prof is not None:
                            prof.disable()
                    answer = {
                        "seconds": seconds,
                        "ok": good,
                        "failures": failures[:3],
                        "failed": len(failures),
                        "cpu_s": time.process_time() - cpu0,
                        "rss_mb": rss_mb(),
                    }
                    if prof is not None:
                        answer["profile"] = _profile_text(prof, request.get("top", 25))
                elif op == "quit":
                    t0 = time.perf_counter()
                    await client.close()
                    answer = {
                        "close_s": time.perf_counter() - t0,
                        "maxrss_mb": maxrss_mb(),
                        "rss_mb": rss_mb(),
                        "log_counts": digest.counts,
                    }
                    out.write(json.dumps(answer) + "\n")
                    return 0
                else:
                    answer = {"error": f"unknown op {op!r}"}
            except Exception as exc:  # report, keep serving: the orchestrator decides
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    return 0


def _versions(variant: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = {
        "tunnelnb": ("tunnelnb", "aiohttp", "pandas"),
        "tunnelnb-default": ("tunnelnb", "aiohttp", "pandas"),
        "asyncssh": ("asyncssh", "cryptography"),
        "asyncssh-shell": ("asyncssh", "cryptography"),
        "pssh": ("parallel-ssh", "ssh2-python", "gevent"),
    }[variant]
    found = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def _pssh_client(config: dict[str, Any], out: Any) -> int:
    try:
        import gevent
        from pssh.clients import ParallelSSHClient
        from pssh.config import HostConfig
    except ImportError as exc:
        why = f"{type(exc).__name__}: {exc} under {sys.executable}; give --pssh-python an interpreter that has it"
        out.write(json.dumps({"unavailable": why}) + "\n")
        return 0
    out.write(json.dumps({"ready": True, "idle_rss_mb": rss_mb(), "version": _versions("pssh")}) + "\n")
    items = list(config["ports"].items())
    timeout = config["timeout"]
    hosts = ["127.0.0.1"] * len(items)
    host_config = [
        HostConfig(
            port=port,
            user=config["user"],
            password=config["password"],
            allow_agent=False,
            identity_auth=False,
            timeout=timeout,
            num_retries=1,
        )
        for _, port in items
    ]
    client = ParallelSSHClient(
        hosts, host_config=host_config, pool_size=config["pssh_pool_size"], timeout=timeout, num_retries=1
    )
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "login":
                cpu0 = time.process_time()
                t0 = time.perf_counter()
                greenlets = client.connect_auth()
                gevent.joinall(greenlets, raise_error=False)
                dt = time.perf_counter() - t0
                failures = [
                    f"{items[i][0]}: {type(g.exception).__name__}: {g.exception}"
                    for i, g in enumerate(greenlets)
                    if g.exception is not None
                ]
                answer = {
                    "seconds": dt,
                    "ok": len(items) - len(failures),
                    "failures": failures[:3],
                    "cpu_s": time.process_time() - cpu0,
                }
            elif op == "run":
                command = request["command"]
                cpu0 = time.process_time()
                t0 = time.perf_counter()
                output = client.run_command(command, stop_on_errors=False, read_timeout=timeout)
                client.join(output)
                texts = []
                for host_out in output:
                    if host_out.exception is not None:
                        texts.append(None)
                    else:
                        texts.append("\n".join(host_out.stdout))
                dt = time.perf_counter() - t0
                good, failures = 0, []
                for (device_id, _), host_out, text in zip(items, output, texts, strict=True):
                    if text is None:
                        failures.append(f"{device_id}: {type(host_out.exception).__name__}: {host_out.exception}")
                    elif output_ok(command, host_out.exit_code, text):
                        good += 1
                    else:
                        failures.append(f"{device_id}: exit={host_out.exit_code} {text[:40]!r}")
                answer = {
                    "seconds": dt,
                    "ok": good,
                    "failures": failures[:3],
                    "failed": len(failures),
                    "cpu_s": time.process_time() - cpu0,
                    "rss_mb": rss_mb(),
                }
            elif op == "quit":
                t0 = time.perf_counter()
                with contextlib.suppress(Exception):
                    client.disconnect()
                out.write(
                    json.dumps({"close_s": time.perf_counter() - t0, "maxrss_mb": maxrss_mb(), "rss_mb": rss_mb()})
                    + "\n"
                )
                return 0
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
    return 0


# ---------------------------------------------------------------------------
# The orchestrator


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    versions: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("tunnelnb", "aiohttp", "asyncssh", "cryptography", "pandas"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    commit = "unknown commit"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", "tunnelnb"],
            capture_output=True,
            text=True,
        )
        if head.returncode == 0:
            commit = head.stdout.strip() + (" with local changes" if dirty.stdout.strip() else "")
    return {
        "commit": commit,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": sys.version.split()[0],
        "implementation": pyplatform.python_implementation(),
        "os": pyplatform.platform(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "packages": versions,
    }


class Orchestrator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_enabled = not args.quiet

    def log(self, text: str) -> None:
        if self.log_enabled:
            print(text, file=sys.stderr, flush=True)

    def _spawn(
        self, role: str, config: dict[str, Any], *, variant: str | None = None, python: str | None = None
    ) -> Child:
        argv = [python or sys.executable, str(Path(__file__).resolve()), "--role", role]
        if variant:
            argv += ["--variant", variant]
        return Child(argv, config, name=variant or role)

    def usage(self, devices: Child) -> dict[str, Any]:
        return devices.request({"op": "usage"}, 300)

    def settle(self, devices: Child, n: int) -> float:
        """Wait (at most SETTLE_MAX_S) until the devices are idle and online again.

        Idle: under SETTLE_IDLE of a core over a second.  Online: every device's link is up;
        ending 1,000 shells can keep a worker's loop from answering heartbeats, and the
        device links that dropped then come back over tens of seconds, with back-off.
        """
        t0 = time.perf_counter()
        last = self.usage(devices)["cpu_s"]
        while time.perf_counter() - t0 < SETTLE_MAX_S:
            time.sleep(1.0)
            usage = self.usage(devices)
            if usage["cpu_s"] - last < SETTLE_IDLE and usage["online"] >= n:
                break
            last = usage["cpu_s"]
        else:
            self.log(f"the devices did not settle within {SETTLE_MAX_S:g} s: the next client may pay for that")
        return time.perf_counter() - t0

    def one_size(self, n: int, largest: bool) -> dict[str, Any]:
        args = self.args
        self._device_logs: dict[str, int] = {}
        self.log(f"## N = {n}: starting platform and {n} simulated devices (backend ssh, misbehaving=0)")
        workers = args.sim_workers if n >= SIM_WORKERS_FROM else 1
        devices = self._spawn("devices", {"n": n, "seed": SEED, "sandbox": args.sandbox, "workers": workers})
        result: dict[str, Any] = {"n": n, "variants": {}}
        try:
            info = devices.receive(900)
            where = "beside the platform" if info["workers"] == 1 else f"in {info['workers']} worker processes"
            self.log(
                f"devices up in {info['start_s']:.1f} s ({info['start_cpu_s']:.1f} s CPU), sandboxes built in "
                f"{info['build_s']:.1f} s, sandbox {info['sandbox']} with /data on {info['data_backend']}, "
                f"devices run {where}; RSS {info['rss_mb']:.0f} MB"
            )
            keys = ("start_s", "start_cpu_s", "build_s", "sandbox", "data_backend", "rss_mb", "workers")
            result["devices"] = {k: info[k] for k in keys}
            keys = ("url", "project_id", "api_token", "user", "password", "ports")
            config = {k: info[k] for k in keys} | {
                "timeout": args.timeout,
                "login_concurrency": args.login_concurrency,
                "pssh_pool_size": args.pssh_pool_size,
                "ssh_login_concurrency": args.ssh_login_concurrency,
            }

            for v in VARIANTS:
                if v in args.variants:
                    profile = args.profile and largest and v in PROFILED
                    if v in PER_COMMAND_PROCESS:  # every run starts N processes on the devices: no warm-up
                        repeats, warmup = args.baseline_repeats or args.repeats, 0
                    else:
                        repeats, warmup = args.repeats, args.warmup
                    result["variants"][v] = self.phase(v, devices, config, n, repeats, warmup, profile)
            if n > 100 and not args.no_extra and "tunnelnb" in args.variants:
                result["variants"]["tunnelnb-default"] = self.phase(
                    "tunnelnb-default", devices, config, n, args.default_limit_repeats, 0, False, commands=1
                )

            end = self.usage(devices)
            result["devices"]["end_rss_mb"] = end["rss_mb"]
            t0 = time.perf_counter()
            stopped = devices.request({"op": "stop"}, 600)
            result["devices"]["stop_s"] = time.perf_counter() - t0
            result["devices"]["log_counts"] = stopped.get("log_counts", {})
            result["devices"]["stop_log_counts"] = {
                k: c - self._device_logs.get(k, 0)
                for k, c in stopped.get("log_counts", {}).items()
                if c > self._device_logs.get(k, 0)
            }
        finally:
            devices.finish(120)
        return result

    def phase(
        self,
        v: str,
        devices: Child,
        config: dict[str, Any],
        n: int,
        repeats: int,
        warmup: int,
        profile: bool,
        *,
        commands: int | None = None,
    ) -> dict[str, Any]:
        """One client, alone with the devices: start, log in, warm up, timed runs, (profile), quit."""
        args = self.args
        rec: dict[str, Any] = {"label": LABELS[v], "runs": {}, "failed_rows": 0, "errors": []}
        python = args.pssh_python if v == "pssh" else None
        client = self._spawn("client", config, variant=v, python=python)
        try:
            hello = client.receive(120)
            if "unavailable" in hello:
                rec["unavailable"] = hello["unavailable"]
                self.log(f"{LABELS[v]}: not available ({hello['unavailable']})")
                return rec
            rec["idle_rss_mb"] = hello["idle_rss_mb"]
            rec["versions"] = hello["version"]
            self.log(f"{LABELS[v]}: logging in to {n} devices")
            before = self.usage(devices)
            answer = client.request({"op": "login"}, args.login_timeout)
            after = self.usage(devices)
            if "error" in answer:
                rec["errors"].append(f"login: {answer['error']}")
                self.log(f"{LABELS[v]}: login failed: {answer['error']}")
                return rec
            rec["login"] = answer | {
                "devices_cpu_s": after["cpu_s"] - before["cpu_s"],
                "platform_cpu_s": after["platform_cpu_s"] - before["platform_cpu_s"],
            }
            if answer.get("set_login"):
                self.log(f"{LABELS[v]}: fleet.set_login() only; the run logs in")
            else:
                self.log(
                    f"{LABELS[v]}: {answer['ok']}/{n} logged in in {answer['seconds']:.2f} s ({answer['cpu_s']:.1f} s "
                    f"client CPU, {rec['login']['devices_cpu_s']:.1f} s devices process CPU)"
                )
            if answer["ok"] != n:
                why = f"{answer['ok']}/{n} ok; " + "; ".join(answer.get("failures", []))
                rec["errors"].append(f"login: {why}")
                self.log(f"{LABELS[v]}: login incomplete: {why}")
            if answer["ok"] and repeats:
                chosen = args.commands[:commands] if commands else args.commands
                for _ in range(warmup):
                    self._run(devices, client, rec, chosen[0], n, record=False)
                for rep in range(1, repeats + 1):
                    line = []
                    for command in chosen:
                        r = self._run(devices, client, rec, command, n)
                        line.append(
                            f"{command!r} {r['seconds']:.3f} s" + ("" if r["ok"] == n else f" ({r['ok']}/{n} ok)")
                        )
                    self.log(f"{LABELS[v]} repeat {rep}: " + "; ".join(line))
                if profile:
                    self.log(f"{LABELS[v]}: profiling one more {TARGET_COMMAND!r} run (not timed)")
                    devices.request({"op": "usage", "profile": "start"}, 300)
                    answer = client.request(
                        {"op": "run", "command": TARGET_COMMAND, "profile": True, "top": args.profile_top},
                        args.run_timeout,
                    )
                    stopped = devices.request({"op": "usage", "profile": "stop", "top": args.profile_top}, 300)
                    rec["profile"] = answer.get("profile", answer.get("error", ""))
                    rec["profile_seconds"] = answer.get("seconds")
                    rec["profile_cpu_s"] = answer.get("cpu_s")
                    rec["devices_profile"] = stopped.get("profile") or ""
            answer = client.request({"op": "quit"}, 600)
            rec["maxrss_mb"] = answer["maxrss_mb"]
            rec["close_s"] = answer.get("close_s")
            rec["log_counts"] = answer.get("log_counts", {})
        finally:
            client.finish(30)
            # The devices end the client's shells after it has gone: the next client must not pay for that.
            rec["settle_s"] = self.settle(devices, n)
            # What the devices process logged during this phase (its counts only grow).
            counts = self.usage(devices)["log_counts"]
            rec["devices_log_counts"] = {
                k: c - self._device_logs.get(k, 0) for k, c in counts.items() if c > self._device_logs.get(k, 0)
            }
            self._device_logs = counts
        return rec

    def _run(
        self, devices: Child, client: Child, rec: dict[str, Any], command: str, n: int, *, record: bool = True
    ) -> dict[str, Any]:
        before = self.usage(devices)
        answer = client.request({"op": "run", "command": command}, self.args.run_timeout)
        after = self.usage(devices)
        if "error" in answer:
            answer = {"seconds": float("nan"), "ok": 0, "failed": n, "failures": [answer["error"]], "cpu_s": 0}
        answer["devices_cpu_s"] = after["cpu_s"] - before["cpu_s"]
        answer["devices_children_cpu_s"] = after["children_cpu_s"] - before["children_cpu_s"]
        if record:
            rec["runs"].setdefault(command, []).append(answer)
            if answer["ok"] != n:
                rec["failed_rows"] += n - answer["ok"]
                rec["errors"].append(f"{command}: {answer['ok']}/{n} ok; " + "; ".join(answer["failures"]))
        return answer

    def bench(self) -> dict[str, Any]:
        started = time.perf_counter()
        raise_open_files_limit()
        info = machine_info()
        sizes = self.args.sizes
        self.log(
            f"# tunnelnb fan-out benchmark: N = {', '.join(map(str, sizes))}; commands {self.args.commands}; "
            f"repeats={self.args.repeats}, warm-up={self.args.warmup}"
        )
        results = [self.one_size(n, n == max(sizes)) for n in sizes]
        return {
            "config": {
                "sizes": sizes,
                "commands": self.args.commands,
                "repeats": self.args.repeats,
                "warmup": self.args.warmup,
                "timeout": self.args.timeout,
                "sandbox": self.args.sandbox,
                "seed": SEED,
                "default_limit_repeats": self.args.default_limit_repeats,
                "baseline_repeats": self.args.baseline_repeats,
                "login_concurrency": self.args.login_concurrency,
                "pssh_pool_size": self.args.pssh_pool_size,
                "sim_workers": self.args.sim_workers,
                "ssh_login_concurrency": self.args.ssh_login_concurrency,
            },
            "machine": info,
            "sizes": results,
            "wall_s": time.perf_counter() - started,
        }


# ---------------------------------------------------------------------------
# Report


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) == r.get(key)]  # drop NaN
    return statistics.median(values) if values else float("nan")


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "—"
    return f"{value:.{digits}f}"


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per N and command, with medians; what the table and the JSON report."""
    rows = []
    for size in result["sizes"]:
        n, variants = size["n"], size["variants"]
        for command in result["config"]["commands"]:
            row: dict[str, Any] = {"n": n, "command": command}
            for v, rec in variants.items():
                runs = rec["runs"].get(command, [])
                row[v] = {
                    "login_s": rec.get("login", {}).get("seconds"),
                    "wall_s": _median(runs, "seconds") if runs else None,
                    "walls": [r["seconds"] for r in runs],
                    "client_cpu_s": _median(runs, "cpu_s") if runs else None,
                    "devices_cpu_s": _median(runs, "devices_cpu_s") if runs else None,
                    "devices_children_cpu_s": _median(runs, "devices_children_cpu_s") if runs else None,
                    "all_ok": bool(runs) and all(r["ok"] == n for r in runs),
                    "maxrss_mb": rec.get("maxrss_mb"),
                    "idle_rss_mb": rec.get("idle_rss_mb"),
                    "unavailable": rec.get("unavailable"),
                }
            t = row.get("tunnelnb", {})
            a = row.get("asyncssh", {})
            s = row.get("asyncssh-shell", {})
            tw, aw, sw = t.get("wall_s"), a.get("wall_s"), s.get("wall_s")
            row["ratio"] = tw / aw if tw and aw else None
            row["ratio_shell"] = tw / sw if tw and sw else None
            if n == TARGET_N and command == TARGET_COMMAND and tw is not None:
                ratio = row["ratio"]
                row["target_met"] = bool(
                    t.get("all_ok") and tw <= TARGET_WALL_S and ratio is not None and ratio <= TARGET_RATIO
                )
            else:
                row["target_met"] = None
            rows.append(row)
    return rows


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def _wall(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "—"
    if cell.get("unavailable"):
        return "n/a"
    text = _fmt(cell.get("wall_s"), 3)
    return text if cell.get("all_ok") or text == "—" else f"{text} (**failed rows**)"


def markdown_table(result: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | command | tunnelnb login s | tunnelnb run wall s | cmds/s | client peak MB | asyncssh direct run wall s "
        "| ratio | asyncssh persistent shell s | ratio | parallel-ssh wall s | target met? |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        n, t = row["n"], row.get("tunnelnb") or {}
        tw = t.get("wall_s")
        target = row["target_met"]
        target_text = "—" if target is None else ("yes" if target else "**no**")
        lines.append(
            f"| {n:,} | `{row['command']}` | {_fmt(t.get('login_s'))} | {_wall(t)} | "
            f"{_fmt(n / tw, 0) if tw else '—'} | {_fmt(t.get('maxrss_mb'), 0)} | {_wall(row.get('asyncssh'))} | "
            f"{_fmt(row['ratio'])}{'x' if row['ratio'] else ''} | {_wall(row.get('asyncssh-shell'))} | "
            f"{_fmt(row['ratio_shell'])}{'x' if row['ratio_shell'] else ''} | {_wall(row.get('pssh'))} | "
            f"{target_text} |"
        )
    command = result["config"]["commands"][0]
    for size in result["sizes"]:
        n = size["n"]
        base = next((r for r in rows if r["n"] == n and r["command"] == command), {})
        aw = (base.get("asyncssh") or {}).get("wall_s")
        sw = (base.get("asyncssh-shell") or {}).get("wall_s")
        pw = (base.get("pssh") or {}).get("wall_s")
        for v in EXTRAS:
            rec = size["variants"].get(v)
            if not rec:
                continue
            login = rec.get("login", {})
            runs = rec["runs"].get(command, [])
            tw = _median(runs, "seconds") if runs else None
            ok = bool(runs) and all(r["ok"] == n for r in runs)
            login_text = "in the run" if login.get("set_login") else _fmt(login.get("seconds"))
            if login and login.get("ok") != n:
                login_text += f" (**{login.get('ok')}/{n} ok**)"
            wall_text = "not run" if not runs else _fmt(tw, 3) + ("" if ok else " (**failed rows**)")
            lines.append(
                f"| {n:,} | `{command}`: {LABELS[v]} | {login_text} | {wall_text} | "
                f"{_fmt(n / tw, 0) if tw else '—'} | {_fmt(rec.get('maxrss_mb'), 0)} | {_fmt(aw, 3)} | "
                f"{_ratio(tw, aw)} | {_fmt(sw, 3)} | {_ratio(tw, sw)} | {_fmt(pw, 3)} | — |"
            )
    return "\n".join(lines)


def login_table(result: dict[str, Any]) -> str:
    """N tunnelnb logins against asyncssh opening N persistent PTY shells to the same servers, in the same run."""
    lines = [
        "| N | tunnelnb: N logins s | asyncssh: N persistent PTY shells s | ratio | target met? | CPU s: tunnelnb "
        "client / its devices (platform) | CPU s: asyncssh client / its devices |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for size in result["sizes"]:
        n, variants = size["n"], size["variants"]
        t = variants.get("tunnelnb", {}).get("login", {})
        a = variants.get("asyncssh-shell", {}).get("login", {})
        ts, ss = t.get("seconds"), a.get("seconds")
        both_ok = t.get("ok") == n and a.get("ok") == n
        ratio = ts / ss if ts and ss else None
        target = "—"
        if n == TARGET_N and ratio is not None:
            target = "yes" if both_ok and ratio <= TARGET_LOGIN_RATIO else "**no**"
        cells = [_fmt(ts) + ("" if t.get("ok") in (None, n) else f" (**{t.get('ok')}/{n} ok**)")]
        cells.append(_fmt(ss) + ("" if a.get("ok") in (None, n) else f" (**{a.get('ok')}/{n} ok**)"))
        platform = t.get("platform_cpu_s")
        devices = _fmt(t.get("devices_cpu_s"), 1) + (f" ({platform:.1f})" if platform == platform and platform else "")
        lines.append(
            f"| {n:,} | {cells[0]} | {cells[1]} | {_fmt(ratio)}{'x' if ratio else ''} | {target} | "
            f"{_fmt(t.get('cpu_s'), 1)} / {devices} | {_fmt(a.get('cpu_s'), 1)} / {_fmt(a.get('devices_cpu_s'), 1)} |"
        )
    return "\n".join(lines)


def client_cpu_table(result: dict[str, Any]) -> str:
    """tunnelnb's client CPU per login and per device-command, and where one core would saturate."""
    lines = [
        "| N | client CPU per login ms | logins/s one core could do | client CPU per device-command ms "
        "(`echo ok`) | device-commands/s one core could do |",
        "|---:|---:|---:|---:|---:|",
    ]
    command = result["config"]["commands"][0]
    for size in result["sizes"]:
        n, rec = size["n"], size["variants"].get("tunnelnb", {})
        login = rec.get("login", {}).get("cpu_s")
        runs = rec.get("runs", {}).get(command, [])
        run = _median(runs, "cpu_s") if runs else None
        per_login = login / n * 1000 if login else None
        per_cmd = run / n * 1000 if run else None
        lines.append(
            f"| {n:,} | {_fmt(per_login, 2)} | {_fmt(1000 / per_login, 0) if per_login else '—'} | "
            f"{_fmt(per_cmd, 3)} | {_fmt(1000 / per_cmd, 0) if per_cmd else '—'} |"
        )
    return "\n".join(lines)


def details_table(result: dict[str, Any]) -> str:
    lines = [
        "| N | client | login s | login CPU s: client / devices process | idle RSS MB | peak RSS MB | per run "
        "(median) CPU s: client / devices process / device-side children | runs all ok | close s (devices busy "
        "after it s) |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for size in result["sizes"]:
        n = size["n"]
        for rec in size["variants"].values():
            if rec.get("unavailable"):
                lines.append(f"| {n:,} | {rec['label']} | not available: {rec['unavailable']} | | | | | | |")
                continue
            runs = [r for rs in rec["runs"].values() for r in rs]
            login = rec.get("login", {})
            good = sum(1 for r in runs if r["ok"] == n)
            login_text = "in the run (set_login)" if login.get("set_login") else _fmt(login.get("seconds"))
            if login.get("connect_s") is not None:
                login_text += f" (+ connect {login['connect_s']:.2f})"
            per_run = "—"
            if runs:
                per_run = " / ".join(
                    _fmt(_median(runs, key), 3) for key in ("cpu_s", "devices_cpu_s", "devices_children_cpu_s")
                )
            lines.append(
                f"| {n:,} | {rec['label']} | {login_text} | {_fmt(login.get('cpu_s'), 1)} / "
                f"{_fmt(login.get('devices_cpu_s'), 1)} | {_fmt(rec.get('idle_rss_mb'), 0)} | "
                f"{_fmt(rec.get('maxrss_mb'), 0)} | {per_run} | {good}/{len(runs)} | {_fmt(rec.get('close_s'))} "
                f"({_fmt(rec.get('settle_s'), 1)}) |"
            )
    return "\n".join(lines)


def _log_lines(label: str, counts: dict[str, int] | None) -> list[str]:
    if not counts:
        return []
    parts = [f"{c} x `{k}`" for k, c in sorted(counts.items(), key=lambda kv: -kv[1])]
    return [f"  - {label}: " + "; ".join(parts)]


def report(result: dict[str, Any]) -> str:
    cfg, m = result["config"], result["machine"]
    rows = summary_rows(result)
    baseline_repeats = cfg["baseline_repeats"] or cfg["repeats"]
    out = [
        "## tunnelnb fan-out benchmark",
        "",
        markdown_table(result, rows),
        "",
        f"Logins (target, issue 18: N = {TARGET_N:,} tunnelnb logins within {TARGET_LOGIN_RATIO:g}x of asyncssh "
        f"opening {TARGET_N:,} persistent PTY shells to the same servers, in the same run):",
        "",
        login_table(result),
        "",
        f"tunnelnb logs in {cfg['login_concurrency']} devices at a time; asyncssh connects and opens its shells "
        + (f"{cfg['ssh_login_concurrency']} at a time." if cfg.get("ssh_login_concurrency") else "all at once."),
        "",
        "tunnelnb's client CPU (from the login and the median `" + cfg["commands"][0] + "` run above):",
        "",
        client_cpu_table(result),
        "",
        f"Wall time: from the call until every device's result is in (for tunnelnb: until `res.df` is built), all N "
        f"devices at once; medians of {cfg['repeats']} runs per command for tunnelnb and the persistent shell (after "
        f"{cfg['warmup']} untimed `{cfg['commands'][0]}`), of {baseline_repeats} for `conn.run` and parallel-ssh "
        "(every run of theirs starts N processes on the devices). Login: timed once per client. Ratios: tunnelnb / "
        f"baseline (lower is better). Target (N = {TARGET_N:,}, `{TARGET_COMMAND}`): ≤ {TARGET_WALL_S:g} s and "
        f"≤ {TARGET_RATIO:g}x asyncssh direct (`conn.run`). Client peak MB: the client process's ru_maxrss over its "
        "life, logins included.",
        "",
        "tunnelnb: `tunnelnb.connect(url, ..., max_sessions=N, concurrency=N)`; logins "
        f"{cfg['login_concurrency']} at a time (`fleet.login(..., concurrency={cfg['login_concurrency']})`). "
        "Extra row at N > 100, measured after the others: `tunnelnb.connect()` with the Fleet's defaults "
        "(`max_sessions=100`, `concurrency=100`), `fleet.set_login(...)` and one run: the least recently used session "
        "makes room for the next device, so every run on N > 100 devices logs in to each of them again.",
        "",
        "Setup: one process runs the platform, and the simulated fleet (backend `ssh`: per device an agent and an "
        "embedded asyncssh server in front of a sandboxed `/bin/sh`; `misbehaving=0`, so every device is healthy; "
        f"each device's sandbox built before any login) runs beside it for N < {SIM_WORKERS_FROM}, in "
        f"{cfg.get('sim_workers', 1)} worker processes from N = {SIM_WORKERS_FROM} on (`tunnelnb sim --workers`; "
        "'devices' CPU counts the platform and the workers; the cProfile listings of the devices cover the "
        "platform's process only when there are workers); each client runs alone with it, in a process of its own, "
        "one after the other, all on loopback, all sharing the machine's cores. `conn.run` and parallel-ssh open an "
        "exec channel per command (the device starts its sandbox launcher, then `sh -c`); tunnelnb and the "
        "persistent-shell reference type into a shell that is already running, so the persistent shell is the "
        f"floor for tunnelnb's fan-out. parallel-ssh: `pool_size={cfg['pssh_pool_size']}`.",
        "",
        "Per client:",
        "",
        details_table(result),
        "",
    ]
    for size in result["sizes"]:
        d = size["devices"]
        out.append(
            f"- N = {size['n']:,}: devices started in {d['start_s']:.1f} s ({d['start_cpu_s']:.1f} s CPU), sandboxes "
            f"built in {d['build_s']:.1f} s (sandbox {d['sandbox']}, /data on {d['data_backend']}); devices process "
            f"RSS {d['rss_mb']:.0f} MB idle, {d.get('end_rss_mb', float('nan')):.0f} MB at the end; stopped in "
            f"{d.get('stop_s', float('nan')):.1f} s."
        )
        for rec in size["variants"].values():
            for err in rec["errors"][:4]:
                out.append(f"  - {rec['label']}: {err}")
            out += _log_lines(f"while {rec['label']} ran, the devices process logged", rec.get("devices_log_counts"))
            out += _log_lines(f"{rec['label']} client logged", rec.get("log_counts"))
        out += _log_lines("while stopping, the devices process logged", d.get("stop_log_counts"))
    out.append("")
    out.append("Per run (wall s):")
    for row in rows:
        parts = []
        for v in VARIANTS:
            cell = row.get(v)
            if cell and cell["walls"]:
                parts.append(f"{LABELS[v]} {', '.join(f'{w:.3f}' for w in cell['walls'])}")
        out.append(f"- N = {row['n']:,}, `{row['command']}`: " + "; ".join(parts))
    pk = m["packages"]
    out += [
        "",
        f"Machine: nproc={m['nproc']} ({m['cpu'] or 'cpu unknown'}), {m['memory']} RAM, {m['implementation']} "
        f"{m['python']}, " + ", ".join(f"{k} {v}" for k, v in pk.items()) + f", {m['os']}, open files "
        f"{m['nofile'][0]}; tunnelnb at {m['commit']}. Wall time {result['wall_s']:.0f} s.",
    ]
    for size in result["sizes"]:
        for v in PROFILED:
            rec = size["variants"].get(v, {})
            if rec.get("profile"):
                out += [
                    "",
                    f"### cProfile: one more `{TARGET_COMMAND}` on {size['n']:,} devices, {rec['label']}: client "
                    f"process ({_fmt(rec.get('profile_seconds'), 3)} s wall under the profiler, "
                    f"{_fmt(rec.get('profile_cpu_s'), 3)} s CPU)",
                    "",
                    rec["profile"].rstrip(),
                ]
            if rec.get("devices_profile"):
                out += [
                    "",
                    f"### cProfile: the same run, devices process (platform, agents, SSH servers) under {rec['label']}",
                    "",
                    rec["devices_profile"].rstrip(),
                ]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000", help="fleet sizes N, comma-separated (default 10,100,1000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each command; medians (default 3)")
    p.add_argument(
        "--baseline-repeats",
        type=int,
        default=1,
        help="timed runs of each command for the exec-per-command baselines (asyncssh conn.run, parallel-ssh),\n"
        "whose every run starts N processes on the devices (~30 s at N=1000); 0: as --repeats (default 1)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs of the first command (tunnelnb, persistent shell) after login (default 1)",
    )
    p.add_argument(
        "--commands",
        default="echo ok,uname -a",
        help="commands, comma-separated (default 'echo ok,uname -a'); the first is the warm-up",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"clients to measure, comma-separated (default {','.join(VARIANTS)})",
    )
    p.add_argument(
        "--pssh-python",
        default=sys.executable,
        help="interpreter with parallel-ssh installed (default: this one); e.g.\n"
        "python -m venv /tmp/pssh && /tmp/pssh/bin/pip install parallel-ssh",
    )
    p.add_argument(
        "--no-extra",
        action="store_true",
        help="skip the extra tunnelnb rows (default limits; stock connect()) at N > 100",
    )
    p.add_argument("--default-limit-repeats", type=int, default=1, help="runs in the default-limits row (default 1)")
    p.add_argument(
        "--login-concurrency",
        type=int,
        default=100,
        help="devices tunnelnb logs in at a time (Fleet(concurrency=...); default 100); runs use N",
    )
    p.add_argument("--pssh-pool-size", type=int, default=100, help="parallel-ssh pool_size (default 100, its own)")
    p.add_argument(
        "--ssh-login-concurrency",
        type=int,
        default=0,
        help="devices the asyncssh clients connect to (and open a shell on) at a time; 0, the default: all at once",
    )
    p.add_argument(
        "--sim-workers",
        type=int,
        default=2,
        help=f"worker processes of the simulated fleet for N >= {SIM_WORKERS_FROM} (tunnelnb sim --workers;\n"
        "default 2); 1 runs the devices in the platform's process, as before",
    )
    p.add_argument("--sandbox", default="auto", help="SimulatedFleet sandbox mode (default auto)")
    p.add_argument("--timeout", type=float, default=60, help="per-command and login timeout, seconds (default 60)")
    p.add_argument("--login-timeout", type=float, default=900, help="seconds to wait for a client's logins")
    p.add_argument("--run-timeout", type=float, default=300, help="seconds to wait for one fan-out run")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--profile", action="store_true", help="cProfile one more echo run at the largest N")
    p.add_argument("--profile-top", type=int, default=25, help="rows per cProfile listing (default 25)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--quick", action="store_true", help="--sizes 10,100 --repeats 1 --no-extra (make bench)")
    p.add_argument("--role", choices=("main", "devices", "client"), default="main", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.no_extra = "10,100", 1, True
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--sizes takes integers, e.g. 10,100,1000")
    args.commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    if args.sim_workers < 1:
        p.error("--sim-workers takes 1 or more")
    if not args.sizes or min(args.sizes) < 1 or args.repeats < 1 or args.warmup < 0 or not args.commands:
        p.error("need sizes ≥ 1, --repeats ≥ 1, --warmup ≥ 0 and at least one command")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "devices":
        return devices_main()
    if args.role == "client":
        return client_main(args.variant)
    try:
        result = Orchestrator(args).bench()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    failed = any(
        rec["failed_rows"] or rec["errors"]
        for size in result["sizes"]
        for v, rec in size["variants"].items()
        if v in ("tunnelnb", "asyncssh", "asyncssh-shell")  # parallel-ssh is optional; the extra rows show limits
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

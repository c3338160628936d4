"""Benchmark: tunnelnb's relay path against a bare two-hop aiohttp WebSocket relay.

    .venv/bin/python bench/relay.py [--samples 300] [--mbytes 20] [--repeats 3] [--quick]
                                    [--quirks none|c-sdk|c-sdk-1.1|csharp-sdk] [--json PATH] [--profile]
                                    [--stages]

Everything runs in one process, on one event loop, on loopback:

* **tunnelnb**: application (:class:`DeviceSession`) → local :class:`Platform` →
  :class:`Agent` → embedded SSH server (:class:`ShellServer`) → ``/bin/sh`` on a PTY
  (the shell and its commands are the only other processes) → back the same way.
* **bare relay floor**: an aiohttp server with two WebSocket endpoints that forwards
  every text message from one side to the other (no parsing, no validation), an
  "application" client and a "device" client.  It carries the same number of
  messages of the same sizes each way as tunnelnb did, measured in this very run by
  counting the frames the platform relays (a calibration pass, not timed).

Two metrics, each against its floor, each repeated ``--repeats`` times (tunnelnb and
floor interleaved) and reported as the median of the repeats:

1. round trip of a trivial command: ``await dev.run("true")``, p50 and p99 over
   ``--samples`` commands after a warm-up; floor: the app sends tunnelnb's command
   frames, the device answers with tunnelnb's output frames once it has them all;
2. throughput of ``--mbytes`` MB (10**6 bytes) of text output with newlines
   (``yes <59 chars> | head -c N``, checked byte for byte); floor: the app sends one
   command-sized message, the device pushes the same message sizes, in the same
   number, as tunnelnb's output frames; timed until the last one arrives.

A reference that is not a target is printed too: the SSH + PTY shell part alone (an
asyncssh client typing the same framed commands into the same SSH server), i.e. what is
left when platform, agent, WebSockets and tunnelnb's framing are taken away.
``--profile`` adds cProfile listings (own time by component, then by function) of one
more batch of each measurement, taken after the timed runs; ``--stages`` a table of where
a trivial command's round trip goes, stage by stage (:mod:`stages`), also after them.

Targets, against the bare relay floor (the first issue): trivial-command round trip ≤ 3x
the floor; the 20 MB output at ≥ 50 % of the floor's throughput.  Against the floor plus the
SSH + PTY part alone, i.e. what no relay can beat (issue 18): trivial-command p50 ≤ 1.15x,
output throughput ≥ 75 % (the two combined as in series: 1 / (1/floor + 1/SSH)).
``--quick`` (``make bench``): 50 samples, 5 MB, 1 repeat, in well under 20 s.  The process
exits 0 whether targets are met or not (it is a benchmark); it exits 1 only when a
measurement itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import logging
import os
import platform as pyplatform
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import aiohttp
import asyncssh
from aiohttp import WSMsgType, web

from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.session import DeviceSession
from tunnelnb.protocol.shell import command_script, new_marker_id, setup_script
from tunnelnb.server.agent import QUIRKS, Agent
from tunnelnb.server.platform import Platform, Side
from tunnelnb.server.sshserver import ShellServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages  # bench/stages.py, beside this script

LATENCY_TARGET = 3.0  # tunnelnb round trip ≤ 3x the floor's
THROUGHPUT_TARGET = 0.50  # tunnelnb throughput ≥ 50 % of the floor's
LATENCY_TARGET_SSH = 1.15  # issue 18: tunnelnb p50 ≤ 1.15x (floor + SSH alone)
THROUGHPUT_TARGET_SSH = 0.75  # issue 18: tunnelnb throughput ≥ 75 % of (floor + SSH alone)
FLOOR_SSH = "floor + SSH alone"
#: (samples, mbytes, repeats): the defaults, and --quick's.
FULL_RUN = (300, 20.0, 3)
QUICK_RUN = (50, 5.0, 1)
CALIBRATION_COMMANDS = 50  # trivial commands counted (not timed) to learn frames per command
WARMUP_COMMANDS = 20  # untimed commands before each timed batch
LINE = "tunnelnb-bench 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEF"  # 59 chars + "\n" = 60 bytes
assert len(LINE) == 59

USER, PASSWORD = "bench", "bench-" + secrets.token_hex(6)
DEVICE_ID = "bench-dev"


class BenchError(RuntimeError):
    """A measurement went wrong (a command failed, output was short): the numbers would lie."""


# ---------------------------------------------------------------------------
# Statistics


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    data = sorted(samples)
    if not data:
        raise ValueError("no samples")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass
class LatencyRun:
    p50_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyRun:
        ms = [s * 1000 for s in seconds]
        return cls(percentile(ms, 50), percentile(ms, 99), statistics.fmean(ms), min(ms), max(ms))


@dataclass
class Traffic:
    """Frames the platform relayed, per direction: each frame's size in UTF-8 bytes."""

    up: list[int] = field(default_factory=list)  # application → device
    down: list[int] = field(default_factory=list)  # device → application


# ---------------------------------------------------------------------------
# tunnelnb side


@contextlib.contextmanager
def count_frames(platform: Platform, traffic: Traffic) -> Iterator[Traffic]:
    """Record every frame the platform routes between the two sides (calibration only, never while timing)."""
    original = platform._route

    async def counting(tunnel: Any, conn: Any, frame: Any, text: str) -> None:
        size = len(text.encode("utf-8", "surrogatepass"))
        (traffic.up if conn.side is Side.SOURCE else traffic.down).append(size)
        await original(tunnel, conn, frame, text)

    platform._route = counting  # type: ignore[method-assign]
    try:
        yield traffic
    finally:
        del platform._route  # back to the class's method


def output_command(nbytes: int) -> str:
    return f"yes '{LINE}' | head -c {nbytes}"


def expected_output(nbytes: int) -> str:
    line = LINE + "\n"
    return (line * (nbytes // len(line) + 1))[:nbytes]


class Tunnelnb:
    """Platform + SSH server + agent + one logged-in DeviceSession, kept up for the whole run."""

    def __init__(self, quirks: str) -> None:
        self.quirks = quirks
        self._stack = contextlib.AsyncExitStack()
        self.platform: Platform
        self.ssh: ShellServer
        self.dev: DeviceSession

    async def _start(self) -> None:
        stack = self._stack
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tnb-bench-"))
        token = secrets.token_urlsafe(16)
        self.platform = await stack.enter_async_context(Platform(api_token=token, heartbeat=None))
        self.ssh = ssh = await stack.enter_async_context(ShellServer(users={USER: PASSWORD}, cwd=workdir))
        secret = secrets.token_hex(8)
        self.platform.add_device(DEVICE_ID, secret)
        # No stray bytes (the c-sdk mode's damage): the benchmark checks every output exactly.
        agent = Agent(
            self.platform.base_url,
            DEVICE_ID,
            secret,
            ssh_port=ssh.port,
            heartbeat=None,
            quirks=self.quirks,
            stray_bytes=0,
        )
        await agent.start()
        stack.push_async_callback(agent.stop)
        await agent.wait_online(10)
        api = await stack.enter_async_context(
            PlatformAPI(self.platform.base_url, project_id=self.platform.project_id, api_token=token)
        )
        self.dev = await stack.enter_async_context(DeviceSession(api, DEVICE_ID, heartbeat=None))
        await self.dev.login(USER, PASSWORD)

    async def __aenter__(self) -> Tunnelnb:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def trivial(self) -> float:
        t0 = time.perf_counter()
        r = await self.dev.run("true", timeout=10)
        dt = time.perf_counter() - t0
        if not r.ok or r.stdout != "":
            raise BenchError(f"`true` gave status={r.status} exit={r.exit_code} stdout={r.stdout[:80]!r} {r.error}")
        return dt

    async def latency(self, samples: int) -> list[float]:
        for _ in range(WARMUP_COMMANDS):
            await self.trivial()
        return [await self.trivial() for _ in range(samples)]

    async def calibrate_trivial(self) -> Traffic:
        for _ in range(WARMUP_COMMANDS):
            await self.trivial()
        with count_frames(self.platform, Traffic()) as traffic:
            for _ in range(CALIBRATION_COMMANDS):
                await self.trivial()
        return traffic

    async def output(self, nbytes: int, expected: str) -> float:
        t0 = time.perf_counter()
        r = await self.dev.run(output_command(nbytes), timeout=300)
        dt = time.perf_counter() - t0
        if not r.ok:
            raise BenchError(f"output command failed: status={r.status} exit={r.exit_code} {r.error}")
        if r.stdout != expected:
            raise BenchError(f"output is {len(r.stdout)} characters, expected {nbytes} (or its content differs)")
        return dt

    async def calibrate_output(self, nbytes: int, expected: str) -> Traffic:
        with count_frames(self.platform, Traffic()) as traffic:
            await self.output(nbytes, expected)  # doubles as the throughput warm-up
        return traffic


# ---------------------------------------------------------------------------
# The floor: a bare two-hop aiohttp WebSocket relay


def filler_message(size: int) -> str:
    """An ASCII JSON text of exactly ``size`` bytes, shaped like a frame (its content is never parsed)."""
    head, tail = '{"operation_type":"command_response","request_id":"r","data":"', '"}'
    pad = size - len(head) - len(tail)
    if pad < 0:
        return "x" * size
    return head + "x" * pad + tail


class BareRelay:
    """An aiohttp server relaying text messages between ``/app`` and ``/device``, and its two clients."""

    def __init__(self) -> None:
        self._peers: dict[str, web.WebSocketResponse] = {}
        self._both = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self.app_ws: aiohttp.ClientWebSocketResponse
        self.device_ws: aiohttp.ClientWebSocketResponse
        self._device_task: asyncio.Task[None] | None = None
        # What the device does: after `expect` messages, send `replies`.
        self.expect = 1
        self.replies: list[str] = []

    async def _endpoint(self, request: web.Request) -> web.WebSocketResponse:
        side = request.match_info["side"]
        other = "device" if side == "app" else "app"
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._peers[side] = ws
        if len(self._peers) == 2:
            self._both.set()
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await self._peers[other].send_str(msg.data)
        return ws

    async def __aenter__(self) -> BareRelay:
        app = web.Application()
        app.router.add_get("/{side:app|device}", self._endpoint)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        # Two sessions, as tunnelnb's application and agent each have their own.  The
        # application reads bytes like tunnelnb's TunnelSocket (decode_text=False).
        self._sessions = [aiohttp.ClientSession(), aiohttp.ClientSession()]
        self.device_ws = await self._sessions[0].ws_connect(base + "/device")
        self.app_ws = await self._sessions[1].ws_connect(base + "/app", compress=0, decode_text=False)
        await asyncio.wait_for(self._both.wait(), 5)
        self._device_task = asyncio.create_task(self._device())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._device_task is not None:
            self._device_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._device_task
        for ws in (self.app_ws, self.device_ws):
            await ws.close()
        for session in self._sessions:
            await session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _device(self) -> None:
        ws, got = self.device_ws, 0
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            got += 1
            if got >= self.expect:
                got = 0
                for reply in self.replies:
                    await ws.send_str(reply)

    def plan(self, up_sizes: list[int], down_sizes: list[int]) -> list[str]:
        """Make the device answer ``len(up_sizes)`` messages with ``down_sizes``; returns the app's messages."""
        self.expect = len(up_sizes)
        self.replies = [filler_message(n) for n in down_sizes]
        return [filler_message(n) for n in up_sizes]

    async def exchange(self, requests: list[str], replies: int) -> float:
        """Send ``requests`` from the app, wait for ``replies`` messages back; the time it took."""
        ws = self.app_ws
        t0 = time.perf_counter()
        for text in requests:
            await ws.send_str(text)
        for _ in range(replies):
            msg = await ws.receive()
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                raise BenchError(f"bare relay: unexpected {msg.type!r}")
        return time.perf_counter() - t0

    async def latency(self, requests: list[str], samples: int) -> list[float]:
        replies = len(self.replies)
        for _ in range(WARMUP_COMMANDS):
            await self.exchange(requests, replies)
        return [await self.exchange(requests, replies) for _ in range(samples)]


# ---------------------------------------------------------------------------
# Reference: the SSH + PTY shell part alone (no WebSockets, no tunnelnb framing)


class _Collector(asyncssh.SSHClientSession[bytes]):
    """Counts output bytes and wakes a waiter when a marker shows up (the marker may straddle reads)."""

    def __init__(self) -> None:
        self.count = 0
        self._tail = b""
        self.want = b""
        self.found: asyncio.Future[None] | None = None

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.count += len(data)
        want = self.want
        if want and self.found is not None and not self.found.done():
            edge = len(want) - 1
            if want in data or want in self._tail + data[:edge]:
                self.found.set_result(None)
        self._tail = (self._tail + data)[-64:] if len(data) < 64 else data[-64:]


class SshDirect:
    """An asyncssh client typing tunnelnb's framed commands straight into the same SSH server's PTY shell.

    What is left once the tunnel (platform, agent, WebSockets, JSON frames, client
    parsing) is taken away: a lower bound for tunnelnb that no relay can beat.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._seq = 0
        self._conn: asyncssh.SSHClientConnection
        self._chan: asyncssh.SSHClientChannel[bytes]
        self._out: _Collector

    async def __aenter__(self) -> SshDirect:
        self._conn = await asyncssh.connect(
            "127.0.0.1",
            self.port,
            username=USER,
            password=PASSWORD,
            known_hosts=None,
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="password",
        )
        self._chan, self._out = await self._conn.create_session(
            _Collector, term_type="xterm", term_size=(128, 30), encoding=None
        )
        self._chan.write(setup_script().encode())
        await self.run("true")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), 2)

    async def run(self, command: str) -> tuple[float, int]:
        """Type ``command`` framed as tunnelnb frames it; (seconds until its end marker, output bytes)."""
        self._seq += 1
        marker = new_marker_id(self._seq, "ref")
        out = self._out
        out.want = f"__TNB_E_{marker}_0__".encode()
        out.found = asyncio.get_running_loop().create_future()
        start = out.count
        t0 = time.perf_counter()
        self._chan.write(command_script(marker, command).encode())
        await asyncio.wait_for(out.found, 60)
        return time.perf_counter() - t0, out.count - start

    async def latency(self, samples: int) -> list[float]:
        for _ in range(WARMUP_COMMANDS):
            await self.run("true")
        return [(await self.run("true"))[0] for _ in range(samples)]

    async def output(self, nbytes: int) -> float:
        seconds, got = await self.run(output_command(nbytes))
        if got < nbytes:
            raise BenchError(f"SSH reference: {got} bytes of output, expected at least {nbytes}")
        return seconds


# ---------------------------------------------------------------------------
# Profiling (optional, after the measurements)


async def profile(label: str, coro: Callable[[], Awaitable[Any]], top: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    try:
        await coro()
    finally:
        prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    groups = by_component(stats)
    total = sum(groups.values()) or 1.0
    table = ["| component (own time) | seconds | share |", "|---|---:|---:|"]
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
        table.append(f"| {name} | {seconds:.3f} | {seconds / total * 100:.1f} % |")
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return f"### cProfile: {label}\n\n" + "\n".join(table) + f"\n\n```\n{out.getvalue().strip()}\n```\n\n"


_BUILTIN_GROUPS = (
    ("'poll' of 'select.epoll'", "idle (waiting in epoll)"),
    ("posix.read", "syscalls: PTY and socket I/O"),
    ("posix.write", "syscalls: PTY and socket I/O"),
    ("_socket.socket", "syscalls: PTY and socket I/O"),
    ("_json", "json (C)"),
    ("re.Pattern", "re (C)"),
    ("cipher", "cryptography (SSH encryption)"),
    ("_tag", "cryptography (SSH encryption)"),
    ("_rust", "cryptography (SSH encryption)"),
)


def by_component(stats: pstats.Stats) -> dict[str, float]:
    """Own time (tottime) summed by package, tunnelnb by module; C functions by what they do."""
    groups: dict[str, float] = {}
    for (filename, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        path = filename.replace("\\", "/")
        if path == "~":
            group = next((g for key, g in _BUILTIN_GROUPS if key in name), "other C builtins")
        elif "/tunnelnb/" in path:
            group = "tunnelnb." + Path(path).stem
        elif path.endswith("bench/relay.py"):
            group = "bench harness"
        else:
            parts = Path(path).parts
            pkg = next((p for p in ("aiohttp", "asyncssh", "cryptography", "asyncio", "json", "re") if p in parts), "")
            group = pkg or ("asyncio" if path.endswith("selectors.py") else "other Python")
            if group == "cryptography":
                group = "cryptography (SSH encryption)"
        groups[group] = groups.get(group, 0.0) + tottime
    return groups


# ---------------------------------------------------------------------------
# Report


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "implementation": pyplatform.python_implementation(),
        "aiohttp": aiohttp.__version__,
        "asyncssh": asyncssh.__version__,
        "os": pyplatform.platform(),
        "event_loop": type(asyncio.get_running_loop()).__module__,
    }


def ratio_row(
    metric: str, tnb: float, floor: float, unit: str, target: float, *, latency: bool, against: str = "floor"
) -> dict[str, Any]:
    """A table row; the ratio is tunnelnb/floor (lower is better for latency, higher for throughput).

    ``floor`` is the reference the row compares with, named ``against`` in the target.
    """
    ratio = tnb / floor
    return {
        "metric": f"{metric} ({unit})",
        "tunnelnb": tnb,
        "floor": floor,
        "against": against,
        "ratio": ratio,
        "ratio_text": f"{ratio:.2f}x" if latency else f"{ratio * 100:.1f} %",
        "target_text": f"≤ {target:g}x {against}" if latency else f"≥ {target * 100:g} % of {against}",
        "met": ratio <= target if latency else ratio >= target,
    }


def markdown_table(rows: list[dict[str, Any]], reference: str = "bare relay floor") -> str:
    lines = [
        f"| metric | tunnelnb | {reference} | ratio | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['metric']} | {r['tunnelnb']:.2f} | {r['floor']:.2f} | {r['ratio_text']} | {r['target_text']} | "
            f"{'yes' if r['met'] else '**no**'} |"
        )
    return "\n".join(lines)


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------
# Main


async def timed(coro: Awaitable[float]) -> tuple[float, float]:
    """(wall seconds the coroutine reports, CPU seconds this process spent meanwhile)."""
    cpu0 = time.process_time()
    wall = await coro
    return wall, time.process_time() - cpu0


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    nbytes = int(args.mbytes * 1_000_000)
    expected = expected_output(nbytes)
    started = time.perf_counter()
    info = machine_info()

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    log(
        f"# tunnelnb relay benchmark (quirks={args.quirks}, samples={args.samples}, {args.mbytes:g} MB, "
        f"repeats={args.repeats})"
    )

    async with Tunnelnb(args.quirks) as tnb, BareRelay() as relay, SshDirect(tnb.ssh.port) as ssh:
        # -- calibration: what a trivial command and the big output put on the wire ----------
        trivial = await tnb.calibrate_trivial()
        n = CALIBRATION_COMMANDS
        up_frames, down_frames = len(trivial.up) / n, len(trivial.down) / n
        up_bytes, down_bytes = sum(trivial.up) / n, sum(trivial.down) / n
        k_up, k_down = max(1, round(up_frames)), max(1, round(down_frames))
        up_sizes = [round(up_bytes / k_up)] * k_up
        down_sizes = [round(down_bytes / k_down)] * k_down
        log(
            f"trivial command: {up_frames:.2f} frames / {up_bytes:.0f} B up, {down_frames:.2f} frames / "
            f"{down_bytes:.0f} B down (floor: {k_up}x{up_sizes[0]} B up, {k_down}x{down_sizes[0]} B down)"
        )
        big = await tnb.calibrate_output(nbytes, expected)  # also the throughput warm-up
        big_wire = sum(big.down)
        log(
            f"{args.mbytes:g} MB output: {len(big.up)} frame(s) / {sum(big.up)} B up, {len(big.down)} frames / "
            f"{big_wire} B down (mean {big_wire / max(1, len(big.down)):.0f} B, max {max(big.down, default=0)} B)"
        )
        await ssh.output(nbytes)  # warm-up

        # -- timed, interleaved repeats -------------------------------------------------------
        lat: dict[str, list[LatencyRun]] = {"tunnelnb": [], "floor": [], "ssh": []}
        tput: dict[str, list[float]] = {"tunnelnb": [], "floor": [], "ssh": []}
        cpu: dict[str, list[float]] = {"tunnelnb": [], "floor": [], "ssh": []}
        for rep in range(1, args.repeats + 1):
            requests = relay.plan(up_sizes, down_sizes)
            lat["floor"].append(LatencyRun.of(await relay.latency(requests, args.samples)))
            lat["tunnelnb"].append(LatencyRun.of(await tnb.latency(args.samples)))
            lat["ssh"].append(LatencyRun.of(await ssh.latency(args.samples)))

            requests = relay.plan(big.up or up_sizes, big.down)
            runs = {
                "floor": await timed(relay.exchange(requests, len(big.down))),
                "tunnelnb": await timed(tnb.output(nbytes, expected)),
                "ssh": await timed(ssh.output(nbytes)),
            }
            for key, (wall, used) in runs.items():
                tput[key].append(nbytes / wall / 1e6)
                cpu[key].append(used)
            log(
                f"repeat {rep}: trivial p50/p99 tunnelnb {lat['tunnelnb'][-1].p50_ms:.2f}/"
                f"{lat['tunnelnb'][-1].p99_ms:.2f} ms, floor {lat['floor'][-1].p50_ms:.3f}/"
                f"{lat['floor'][-1].p99_ms:.3f} ms, ssh-only {lat['ssh'][-1].p50_ms:.2f}/{lat['ssh'][-1].p99_ms:.2f} ms"
                f"; output tunnelnb {tput['tunnelnb'][-1]:.1f} MB/s, floor {tput['floor'][-1]:.1f} MB/s, "
                f"ssh-only {tput['ssh'][-1]:.1f} MB/s"
            )

        stage_us: dict[str, float] = {}
        if args.stages:
            log("timing the stages of a trivial command (after the measurements; not part of the numbers)")
            stage_us = await stages.measure(tnb, args.samples)

        profiles = ""
        if args.profile:
            log("profiling (after the measurements; not part of the numbers)")
            everything = "application, platform, agent and SSH server, all in this process"
            profiles += await profile(
                f"{args.samples} trivial commands through tunnelnb ({everything})",
                lambda: tnb.latency(args.samples),
                args.profile_top,
            )
            profiles += await profile(
                f"{args.mbytes:g} MB output through tunnelnb ({everything})",
                lambda: tnb.output(nbytes, expected),
                args.profile_top,
            )
            requests = relay.plan(big.up or up_sizes, big.down)
            profiles += await profile(
                f"{args.mbytes:g} MB through the bare relay floor (relay and both clients, in this process)",
                lambda: relay.exchange(requests, len(big.down)),
                args.profile_top,
            )

    def med(key: str, attr: str) -> float:
        return median([getattr(r, attr) for r in lat[key]])

    rows = [
        ratio_row(
            "trivial command round trip p50",
            med("tunnelnb", "p50_ms"),
            med("floor", "p50_ms"),
            "ms",
            LATENCY_TARGET,
            latency=True,
        ),
        ratio_row(
            "trivial command round trip p99",
            med("tunnelnb", "p99_ms"),
            med("floor", "p99_ms"),
            "ms",
            LATENCY_TARGET,
            latency=True,
        ),
        ratio_row(
            f"{args.mbytes:g} MB output throughput",
            median(tput["tunnelnb"]),
            median(tput["floor"]),
            "MB/s",
            THROUGHPUT_TARGET,
            latency=False,
        ),
    ]
    reference = {
        "ssh_p50_ms": med("ssh", "p50_ms"),
        "ssh_p99_ms": med("ssh", "p99_ms"),
        "ssh_mb_per_s": median(tput["ssh"]),
    }
    # Issue 18's targets: against what no relay can beat, the floor and the SSH + PTY part in series.
    rows_ssh = [
        ratio_row(
            "trivial command round trip p50",
            med("tunnelnb", "p50_ms"),
            med("floor", "p50_ms") + reference["ssh_p50_ms"],
            "ms",
            LATENCY_TARGET_SSH,
            latency=True,
            against=FLOOR_SSH,
        ),
        ratio_row(
            f"{args.mbytes:g} MB output throughput",
            median(tput["tunnelnb"]),
            1 / (1 / median(tput["floor"]) + 1 / reference["ssh_mb_per_s"]),
            "MB/s",
            THROUGHPUT_TARGET_SSH,
            latency=False,
            against=FLOOR_SSH,
        ),
    ]
    return {
        "config": {
            "quirks": args.quirks,
            "samples": args.samples,
            "mbytes": args.mbytes,
            "repeats": args.repeats,
            "warmup_commands": WARMUP_COMMANDS,
            "calibration_commands": CALIBRATION_COMMANDS,
        },
        "machine": info,
        "trivial_command_traffic": {
            "frames_up": up_frames,
            "bytes_up": up_bytes,
            "frames_down": down_frames,
            "bytes_down": down_bytes,
            "floor_up_sizes": up_sizes,
            "floor_down_sizes": down_sizes,
        },
        "output_traffic": {
            "payload_bytes": nbytes,
            "frames_up": len(big.up),
            "bytes_up": sum(big.up),
            "frames_down": len(big.down),
            "bytes_down": big_wire,
            "max_frame_bytes": max(big.down, default=0),
        },
        "rows": rows,
        "rows_floor_ssh": rows_ssh,
        "ssh_reference": reference,
        "repeats": {
            "latency": {key: [asdict(r) for r in runs] for key, runs in lat.items()},
            "mb_per_s": tput,
            "output_cpu_s": cpu,
        },
        "profiles": profiles,
        "stages_us": stage_us,
        "wall_s": time.perf_counter() - started,
    }


def _series(values: list[float], digits: int) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def report(result: dict[str, Any]) -> str:
    cfg, m, t, o = result["config"], result["machine"], result["trivial_command_traffic"], result["output_traffic"]
    rep, ref, rows = result["repeats"], result["ssh_reference"], result["rows"]
    lat, tput, cpu = rep["latency"], rep["mb_per_s"], rep["output_cpu_s"]
    tnb_p50, tnb_p99, tnb_tput = rows[0]["tunnelnb"], rows[1]["tunnelnb"], rows[2]["tunnelnb"]
    floor_p50, floor_p99, floor_tput = rows[0]["floor"], rows[1]["floor"], rows[2]["floor"]
    out = [
        f"## tunnelnb relay benchmark (agent quirks: {cfg['quirks']})",
        "",
        markdown_table(rows),
        "",
        f"Against the floor plus the SSH + PTY part alone ({FLOOR_SSH}: latencies added, throughputs in "
        "series), what no relay can beat:",
        "",
        markdown_table(result["rows_floor_ssh"], FLOOR_SSH),
        "",
        f"Medians of {cfg['repeats']} repeats, tunnelnb and floor interleaved; each latency repeat is "
        f"{cfg['samples']} timed commands after {cfg['warmup_commands']} untimed ones. MB = 10^6 bytes of command "
        "output; the floor carries the same wire bytes in the same number of messages. Everything (application, "
        "platform, agent, SSH server; for the floor the relay and both clients) runs in this one Python process on "
        "one event loop; only the shell (/bin/sh, yes, head) runs in other processes.",
        "",
        f"- frames per trivial command (counted at the platform over {cfg['calibration_commands']} commands): "
        f"{t['frames_up']:.2f} up, {t['bytes_up']:.0f} B; {t['frames_down']:.2f} down, {t['bytes_down']:.0f} B. "
        f"The floor sends {len(t['floor_up_sizes'])} x {t['floor_up_sizes'][0]} B up and "
        f"{len(t['floor_down_sizes'])} x {t['floor_down_sizes'][0]} B down.",
        f"- {cfg['mbytes']:g} MB output: {o['frames_down']} frames down, {o['bytes_down']} B on the wire "
        f"(mean {o['bytes_down'] / max(1, o['frames_down']):.0f} B, max {o['max_frame_bytes']} B); "
        f"{o['frames_up']} frame(s), {o['bytes_up']} B up.",
        "",
        "Reference, not a target: the SSH + PTY shell part alone (an asyncssh client typing the same framed "
        "commands into the same embedded SSH server, no WebSockets, no tunnelnb framing):",
        "",
        "| metric | tunnelnb | SSH + PTY alone | bare relay floor | floor + SSH alone |",
        "|---|---:|---:|---:|---:|",
        f"| trivial command p50 (ms) | {tnb_p50:.2f} | {ref['ssh_p50_ms']:.2f} | {floor_p50:.2f} | "
        f"{floor_p50 + ref['ssh_p50_ms']:.2f} |",
        f"| trivial command p99 (ms) | {tnb_p99:.2f} | {ref['ssh_p99_ms']:.2f} | {floor_p99:.2f} | "
        f"{floor_p99 + ref['ssh_p99_ms']:.2f} |",
        f"| {cfg['mbytes']:g} MB output (MB/s) | {tnb_tput:.1f} | {ref['ssh_mb_per_s']:.1f} | {floor_tput:.1f} | "
        f"{1 / (1 / floor_tput + 1 / ref['ssh_mb_per_s']):.1f} |",
        "",
        "Per repeat:",
        f"- trivial p50 (ms): tunnelnb {_series([r['p50_ms'] for r in lat['tunnelnb']], 2)}; floor "
        f"{_series([r['p50_ms'] for r in lat['floor']], 3)}; SSH alone {_series([r['p50_ms'] for r in lat['ssh']], 2)}",
        f"- trivial p99 (ms): tunnelnb {_series([r['p99_ms'] for r in lat['tunnelnb']], 2)}; floor "
        f"{_series([r['p99_ms'] for r in lat['floor']], 3)}; SSH alone {_series([r['p99_ms'] for r in lat['ssh']], 2)}",
        f"- output (MB/s): tunnelnb {_series(tput['tunnelnb'], 1)}; floor {_series(tput['floor'], 1)}; "
        f"SSH alone {_series(tput['ssh'], 1)}",
        f"- output, CPU seconds of this process: tunnelnb {_series(cpu['tunnelnb'], 2)}; floor "
        f"{_series(cpu['floor'], 2)}; SSH alone {_series(cpu['ssh'], 2)}",
        "",
        f"Machine: nproc={m['nproc']} ({m['cpu'] or 'cpu unknown'}), {m['implementation']} {m['python']}, "
        f"aiohttp {m['aiohttp']}, asyncssh {m['asyncssh']}, {m['os']}, event loop {m['event_loop']}. "
        f"Wall time {result['wall_s']:.0f} s.",
    ]
    if result["stages_us"]:
        out += [
            "",
            f"### Where a trivial command's round trip goes (`--stages`: medians of {cfg['samples']} commands, "
            "bench/stages.py)",
            "",
            stages.markdown(result["stages_us"], floor_p50 * 1000, ref["ssh_p50_ms"] * 1000),
        ]
    if result["profiles"]:
        out += ["", result["profiles"].rstrip()]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, help=f"timed trivial commands per repeat (default {FULL_RUN[0]})")
    p.add_argument("--mbytes", type=float, help=f"MB (10^6 bytes) of command output (default {FULL_RUN[1]:g})")
    p.add_argument("--repeats", type=int, help=f"repeats of each measurement; medians reported (default {FULL_RUN[2]})")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run (make bench): --samples {QUICK_RUN[0]} --mbytes {QUICK_RUN[1]:g} --repeats {QUICK_RUN[2]}"
        " unless given",
    )
    p.add_argument("--quirks", choices=QUIRKS, default="none", help="agent mode (default none)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--profile", action="store_true", help="after measuring, cProfile one more batch of each")
    p.add_argument("--profile-top", type=int, default=25, help="rows per cProfile listing (default 25)")
    p.add_argument("--stages", action="store_true", help="after measuring, time a trivial command's stages")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    samples, mbytes, repeats = QUICK_RUN if args.quick else FULL_RUN
    args.samples = samples if args.samples is None else args.samples
    args.mbytes = mbytes if args.mbytes is None else args.mbytes
    args.repeats = repeats if args.repeats is None else args.repeats
    if args.samples < 2 or args.repeats < 1 or args.mbytes <= 0:
        p.error("need --samples ≥ 2, --repeats ≥ 1, --mbytes > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = asyncio.run(bench(args))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what N simulated devices cost the platform over MQTT, against the device link.

    .venv/bin/python bench/devices_mqtt.py [--devices 1000] [--notify 100] [--idle 20]
                                           [--concurrency 100] [--quick] [--json PATH] [--profile DIR]

Why it exists: the local platform now runs its own MQTT broker (amqtt, in the platform's
event loop: ``tunnelnb/server/platform/broker.py``), so the simulated fleet could reach it as
devices reach IoTDA, and tunnelnb's own *device link* WebSocket
(``tunnelnb/protocol/devicelink.py``) could be retired.  Whether it should depends on what a
fleet costs the platform over each path: this script measures both in one run.

For each path a fresh platform runs in its **own process** (``python -m tunnelnb platform
--port 0 --mqtt-port 0``: the same command, broker included, for both paths), so its CPU
seconds (``/proc/PID/stat``) and RSS (``/proc/PID/status``) are its own.  N devices are
registered through REST AddDevice, then this process connects N lightweight device clients
(at most ``--concurrency`` connecting at once), which do what the agent's device access does
and nothing more (no tunnels, no SSH):

* **MQTT**: :class:`tunnelnb.server.mqtt.DeviceMqtt`, the agent's own MQTT connection
  (aiomqtt): IoTDA's login, subscribing to nothing (the broker subscribes each device to
  ``$oc/devices/{id}/sys/#`` at connect), keep-alive 60 s;
* **device link**: the WebSocket the agent keeps (``Agent._connect_link``): aiohttp
  ``ws_connect`` to ``/tunnelnb/v1/devices/{id}/link`` with the timestamp and HMAC headers,
  heartbeat 20 s (the platform pings every 20 s too).

Figures, per path:

1. wall time from the first connect until ListDevices shows all N ONLINE, and the platform's
   CPU seconds meanwhile (total and per device);
2. the platform's RSS growth per connected device (after - before connecting, / N);
3. the platform's idle CPU with N devices connected, over ``--idle`` seconds (one heartbeat
   period by default, so every link is pinged about once);
4. AddTunnel for M = ``--notify`` devices at once: per device, the time from its AddTunnel
   request until its client holds the ``tunnel_notify`` (p50/p95), and the platform's CPU per
   AddTunnel + notify (the REST call is the same on both paths; the difference is delivery).

The CPU this process spends on the clients is shown too (not a platform figure): when it is
near the wall time, the clients, not the platform, set the connect rate.  ``--profile DIR``
runs each platform under cProfile, switched on per phase (connect, idle, notify) by SIGUSR1,
writes ``DIR/{path}-{phase}.prof`` and prints the top functions; profiling inflates every CPU
figure, so use it to find where the time goes, not for the table.  ``--quick`` is N = 200
and a 2 s idle window (well under a minute).  The script exits 1 only when a measurement
itself fails (a device not ONLINE, a notify not received).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform as pyplatform
import pstats
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import aiohttp  # noqa: E402
import amqtt  # noqa: E402

from tunnelnb.protocol.devicelink import (  # noqa: E402
    LINK_PATH,
    PASSWORD_HEADER,
    TIMESTAMP_HEADER,
    TunnelNotify,
    device_password,
    link_timestamp,
    parse_event,
)
from tunnelnb.server.mqtt import DeviceMqtt  # noqa: E402
from tunnelnb.server.oslimits import raise_open_files_limit  # noqa: E402

PATHS = ("mqtt", "link")
PHASES = ("connect", "idle", "notify")  # what --profile records separately
LABELS = {"mqtt": "MQTT", "link": "device link"}
PROJECT = "bench"
LINK_HEARTBEAT = 20.0  # the agent's default, and the platform's ping interval
LIST_PAGE = 50  # ListDevices' largest page
CONNECT_TIMEOUT = 180.0  # all N devices ONLINE within this, or the run fails
NOTIFY_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The platform under cProfile: SIGUSR1 starts the profiler, the next SIGUSR1 stops it and
# dumps to the next path read from the file named by $BENCH_PROFILE_PLAN (one path a line).
# Each toggle appends a byte to $BENCH_PROFILE_PLAN.ack: signals sent close together would merge.
PROFILED_PLATFORM = """
import cProfile, os, signal, sys
plan = os.environ["BENCH_PROFILE_PLAN"]
paths = iter(open(plan).read().split())
prof = None
def toggle(signum, frame):
    global prof
    if prof is None:
        prof = cProfile.Profile()
        prof.enable()
    else:
        prof.disable()
        prof.dump_stats(next(paths))
        prof = None
    with open(plan + ".ack", "ab") as ack:
        ack.write(b".")
signal.signal(signal.SIGUSR1, toggle)
from tunnelnb.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


class BenchError(RuntimeError):
    """A measurement went wrong (a device not ONLINE, a notify lost): the numbers would lie."""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    data = sorted(samples)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


# ---------------------------------------------------------------------------
# The platform, in a process of its own


class PlatformProcess:
    """``tunnelnb platform`` on free ports; its CPU seconds and RSS from /proc."""

    def __init__(self, token: str, profile_plan: Path | None) -> None:
        self.token = token
        self.profile_plan = profile_plan
        self.proc: asyncio.subprocess.Process | None = None
        self.base_url = ""
        self.mqtt_url = ""
        self._stderr = tempfile.TemporaryFile()

    async def start(self) -> None:
        args = ["platform", "--host", "127.0.0.1", "--port", "0", "--mqtt-port", "0", "--project-id", PROJECT]
        args += ["--log-level", "warning"]
        env = {**os.environ, "TUNNELNB_API_TOKEN": self.token}
        if self.profile_plan is None:
            argv = [sys.executable, "-m", "tunnelnb", *args]
        else:
            argv = [sys.executable, "-c", PROFILED_PLATFORM, *args]
            env["BENCH_PROFILE_PLAN"] = str(self.profile_plan)
        self.proc = await asyncio.create_subprocess_exec(
            *argv, cwd=str(ROOT), env=env, stdout=asyncio.subprocess.PIPE, stderr=self._stderr
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                self.base_url = (await self.proc.stdout.readline()).decode().strip()
                self.mqtt_url = (await self.proc.stdout.readline()).decode().strip()
        except TimeoutError:
            raise BenchError("the platform did not print its URLs within 30 s") from None
        if not self.base_url.startswith("http://") or not self.mqtt_url.startswith("mqtt://"):
            raise BenchError(f"the platform printed {self.base_url!r}, {self.mqtt_url!r}: {self.stderr()[-500:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float:
        """User + system CPU seconds of the platform process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError("no VmRSS in /proc/PID/status")

    async def toggle_profile(self) -> None:
        """With --profile: start (or stop and dump) the platform's profiler, and wait until it has."""
        if self.profile_plan is None:
            return
        ack = self.profile_plan.with_name(self.profile_plan.name + ".ack")
        before = ack.stat().st_size if ack.exists() else 0
        os.kill(self.pid, signal.SIGUSR1)
        async with asyncio.timeout(30):
            while not ack.exists() or ack.stat().st_size == before:  # noqa: ASYNC110 - another process writes it
                await asyncio.sleep(0.01)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Rest:
    """The REST calls the benchmark needs: AddDevice, ListDevices, AddTunnel."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base = f"{base_url}/v5/iot/{PROJECT}"
        self.http = aiohttp.ClientSession(
            headers={"X-Auth-Token": token}, connector=aiohttp.TCPConnector(limit=0, force_close=False)
        )

    async def close(self) -> None:
        await self.http.close()

    async def add_devices(self, ids: list[str], secret: str, concurrency: int) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(device_id: str) -> None:
            body = {
                "device_id": device_id,
                "node_id": device_id,
                "auth_info": {"auth_type": "SECRET", "secret": secret},
            }
            async with gate, self.http.post(f"{self.base}/devices", json=body) as r:
                if r.status != 201:
                    raise BenchError(f"AddDevice {device_id}: HTTP {r.status} {await r.text()}")

        await asyncio.gather(*(one(i) for i in ids))

    async def online_count(self) -> int:
        """How many of the project's devices ListDevices shows ONLINE (every page, by marker)."""
        online, marker = 0, ""
        while True:
            params = {"limit": str(LIST_PAGE), **({"marker": marker} if marker else {})}
            async with self.http.get(f"{self.base}/devices", params=params) as r:
                if r.status != 200:
                    raise BenchError(f"ListDevices: HTTP {r.status} {await r.text()}")
                page: dict[str, Any] = await r.json()
            online += sum(1 for d in page["devices"] if d["status"] == "ONLINE")
            if len(page["devices"]) < LIST_PAGE:
                return online
            marker = page["page"]["marker"]

    async def add_tunnel(self, device_id: str) -> None:
        async with self.http.post(f"{self.base}/tunnels", json={"device_id": device_id}) as r:
            if r.status != 201:
                raise BenchError(f"AddTunnel {device_id}: HTTP {r.status} {await r.text()}")


# ---------------------------------------------------------------------------
# Device clients: the device-access path only


class DeviceClient(Protocol):
    notified_at: float | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class MqttDevice:
    """The agent's MQTT connection (:class:`DeviceMqtt`), recording when its tunnel_notify arrives."""

    def __init__(self, url: str, device_id: str, secret: str, arrived: Callable[[], None]) -> None:
        self.notified_at: float | None = None
        self._arrived = arrived
        self._conn = DeviceMqtt(url, device_id, secret, on_notify=self._on_notify, ssl=False)

    def _on_notify(self, notify: TunnelNotify) -> None:
        if self.notified_at is None:
            self.notified_at = time.perf_counter()
            self._arrived()

    async def start(self) -> None:
        await self._conn.start()

    async def stop(self) -> None:
        await self._conn.stop()


class LinkDevice:
    """The agent's device link (``Agent._connect_link`` and ``_read_link``), recording the tunnel_notify."""

    def __init__(
        self, http: aiohttp.ClientSession, base_url: str, device_id: str, secret: str, arrived: Callable[[], None]
    ) -> None:
        self.notified_at: float | None = None
        self._arrived = arrived
        self._http = http
        self._url = base_url + LINK_PATH.format(device_id=device_id)
        self._secret = secret
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        stamp = link_timestamp()
        headers = {TIMESTAMP_HEADER: stamp, PASSWORD_HEADER: device_password(self._secret, stamp)}
        self._ws = await self._http.ws_connect(
            self._url, headers=headers, heartbeat=LINK_HEARTBEAT, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)
        )
        self._task = asyncio.create_task(self._read(self._ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT and parse_event(msg.data) and self.notified_at is None:
                self.notified_at = time.perf_counter()
                self._arrived()

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


# ---------------------------------------------------------------------------
# One path, measured


@dataclass
class PathResult:
    devices: int
    online_wall_s: float = 0.0
    connect_cpu_s: float = 0.0
    connect_cpu_ms_per_device: float = 0.0
    client_cpu_s: float = 0.0  # this process, while connecting (the clients, not the platform)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_kb_per_device: float = 0.0
    idle_s: float = 0.0
    idle_cpu_pct: float = 0.0  # % of one core
    idle_cpu_us_per_device_s: float = 0.0
    notified: int = 0
    notify_p50_ms: float = 0.0
    notify_p95_ms: float = 0.0
    notify_max_ms: float = 0.0
    notify_wall_s: float = 0.0
    notify_cpu_ms: float = 0.0  # platform CPU per AddTunnel + notify
    platform_log_lines: list[str] = field(default_factory=list)


async def measure_path(path: str, args: argparse.Namespace) -> PathResult:
    """Start a platform, register and connect ``args.devices`` devices over ``path``, and measure."""
    n, m = args.devices, min(args.notify, args.devices)
    token = secrets.token_urlsafe(18)
    secret = "bench-" + secrets.token_hex(8)
    ids = [f"bench-{i:05d}" for i in range(n)]
    platform = PlatformProcess(token, args.profile_plans.get(path))
    result = PathResult(devices=n)
    clients: list[DeviceClient] = []
    link_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    rest: Rest | None = None
    try:
        await platform.start()
        rest = Rest(platform.base_url, token)
        t0 = time.perf_counter()
        await rest.add_devices(ids, secret, args.concurrency)
        log(
            f"  {LABELS[path]}: platform pid {platform.pid}, {n} devices registered in {time.perf_counter() - t0:.1f} s"
        )
        await asyncio.sleep(0.5)  # let the registration's garbage settle before the baseline

        arrivals = asyncio.Event()
        pending = {"left": m}

        def arrived() -> None:
            pending["left"] -= 1
            if pending["left"] <= 0:
                arrivals.set()

        for device_id in ids:
            if path == "mqtt":
                clients.append(MqttDevice(platform.mqtt_url, device_id, secret, arrived))
            else:
                clients.append(LinkDevice(link_http, platform.base_url, device_id, secret, arrived))

        # -- 1. connect all N, until ListDevices shows them ONLINE ------------------------------
        gate = asyncio.Semaphore(args.concurrency)

        async def connect(client: DeviceClient) -> None:
            async with gate:
                await client.start()

        await platform.toggle_profile()
        rss0, cpu0, mine0 = platform.rss_kb(), platform.cpu_s(), time.process_time()
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await asyncio.gather(*(connect(c) for c in clients))
                # Polling is the point: ListDevices is what a user sees.
                while (online := await rest.online_count()) < n:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise BenchError(f"{LABELS[path]}: not all {n} devices ONLINE within {CONNECT_TIMEOUT:g} s") from None
        result.online_wall_s = time.perf_counter() - t0
        result.connect_cpu_s = platform.cpu_s() - cpu0
        result.client_cpu_s = time.process_time() - mine0
        await platform.toggle_profile()
        result.connect_cpu_ms_per_device = result.connect_cpu_s / n * 1000
        rss1 = platform.rss_kb()
        result.rss_before_mb, result.rss_after_mb = rss0 / 1024, rss1 / 1024
        result.rss_kb_per_device = (rss1 - rss0) / n
        log(
            f"  {LABELS[path]}: {online} ONLINE after {result.online_wall_s:.2f} s, "
            f"platform CPU {result.connect_cpu_s:.2f} s"
        )

        # -- 2. idle with N connected ---------------------------------------------------------------
        await platform.toggle_profile()
        cpu0, t0 = platform.cpu_s(), time.perf_counter()
        await asyncio.sleep(args.idle)
        result.idle_s = time.perf_counter() - t0
        used = platform.cpu_s() - cpu0
        await platform.toggle_profile()
        result.idle_cpu_pct = used / result.idle_s * 100
        result.idle_cpu_us_per_device_s = used / result.idle_s / n * 1e6

        # -- 3. AddTunnel for M devices at once: time until each client holds its tunnel_notify ----
        chosen = list(range(m))
        started: dict[int, float] = {}

        async def add_tunnel(i: int) -> None:
            started[i] = time.perf_counter()
            await rest.add_tunnel(ids[i])

        await platform.toggle_profile()
        cpu0, t0 = platform.cpu_s(), time.perf_counter()
        try:
            async with asyncio.timeout(NOTIFY_TIMEOUT):
                await asyncio.gather(*(add_tunnel(i) for i in chosen))
                await arrivals.wait()
        except TimeoutError:
            got = sum(clients[i].notified_at is not None for i in chosen)
            raise BenchError(
                f"{LABELS[path]}: {got} of {m} tunnel_notify arrived within {NOTIFY_TIMEOUT:g} s"
            ) from None
        result.notify_wall_s = time.perf_counter() - t0
        result.notify_cpu_ms = (platform.cpu_s() - cpu0) / m * 1000
        await platform.toggle_profile()
        latencies = [(clients[i].notified_at or 0.0) - started[i] for i in chosen]
        result.notified = m
        result.notify_p50_ms = percentile(latencies, 50) * 1000
        result.notify_p95_ms = percentile(latencies, 95) * 1000
        result.notify_max_ms = max(latencies) * 1000
        if (still := await rest.online_count()) != n:
            raise BenchError(f"{LABELS[path]}: only {still} of {n} devices still ONLINE after the notify phase")
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        await link_http.close()
        if rest is not None:
            await rest.close()
        await platform.stop()
        result.platform_log_lines = [line for line in platform.stderr().splitlines() if line.strip()]
    return result


# ---------------------------------------------------------------------------
# Report


ROWS: list[tuple[str, str, str, int]] = [
    # (figure, PathResult field, unit, digits)
    ("wall time until all N ONLINE", "online_wall_s", "s", 2),
    ("platform CPU for N connects", "connect_cpu_s", "s", 2),
    ("platform CPU per connect", "connect_cpu_ms_per_device", "ms", 2),
    ("platform RSS growth per device", "rss_kb_per_device", "KB", 1),
    ("platform idle CPU with N connected", "idle_cpu_pct", "% of a core", 2),
    ("tunnel_notify latency p50", "notify_p50_ms", "ms", 1),
    ("tunnel_notify latency p95", "notify_p95_ms", "ms", 1),
    ("platform CPU per AddTunnel + notify", "notify_cpu_ms", "ms", 2),
    ("this process's CPU while connecting (clients)", "client_cpu_s", "s", 2),
]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def summary_rows(results: dict[str, PathResult]) -> list[dict[str, Any]]:
    mqtt, link = results["mqtt"], results["link"]
    rows = []
    for figure, attr, unit, digits in ROWS:
        a, b = getattr(mqtt, attr), getattr(link, attr)
        rows.append(
            {"figure": f"{figure} ({unit})", "mqtt": a, "link": b, "ratio": a / b if b > 0 else None, "digits": digits}
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| figure | MQTT | device link | MQTT/link |", "|---|---:|---:|---:|"]
    for r in rows:
        d = r["digits"]
        cell = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "n/a"
        lines.append(f"| {r['figure']} | {r['mqtt']:.{d}f} | {r['link']:.{d}f} | {cell} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "amqtt": getattr(amqtt, "__version__", "?"),
        "os": pyplatform.platform(),
    }


def report(result: dict[str, Any]) -> str:
    cfg, m, res = result["config"], result["machine"], result["paths"]
    mqtt, link = res["mqtt"], res["link"]
    out = [
        f"## What {cfg['devices']:,} simulated devices cost the platform: MQTT against the device link",
        "",
        markdown_table(result["rows"]),
        "",
        f"N = {cfg['devices']:,} devices connecting at most {cfg['concurrency']} at a time; idle window "
        f"{mqtt['idle_s']:.1f} s / {link['idle_s']:.1f} s; M = {cfg['notify']} AddTunnel calls at once. Each path "
        "had a fresh `tunnelnb platform` process (broker included in both); CPU and RSS are that process's. "
        "Lower is better everywhere; MQTT/link < 1 means MQTT is cheaper.",
        "",
        f"- platform RSS before → after connecting: MQTT {mqtt['rss_before_mb']:.1f} → {mqtt['rss_after_mb']:.1f} MB, "
        f"link {link['rss_before_mb']:.1f} → {link['rss_after_mb']:.1f} MB",
        f"- idle CPU per connected device: MQTT {mqtt['idle_cpu_us_per_device_s']:.1f} µs/s, "
        f"link {link['idle_cpu_us_per_device_s']:.1f} µs/s",
        f"- notify: slowest MQTT {mqtt['notify_max_ms']:.1f} ms, link {link['notify_max_ms']:.1f} ms; "
        f"all {cfg['notify']} in {mqtt['notify_wall_s'] * 1000:.0f} ms / {link['notify_wall_s'] * 1000:.0f} ms",
    ]
    for path in PATHS:
        lines = res[path]["platform_log_lines"]
        if lines:
            out.append(
                f"- the {LABELS[path]} platform logged {len(lines)} line(s) at WARNING or above, e.g. {lines[0]!r}"
            )
    if cfg["profile"]:
        out.append(f"- profiled (CPU figures inflated by cProfile): listings below, files in {cfg['profile']}")
    out += [
        "",
        f"Machine: nproc={m['nproc']} ({m['cpu'] or 'cpu unknown'}), Python {m['python']}, aiohttp {m['aiohttp']}, "
        f"amqtt {m['amqtt']}, {m['os']}. Wall time {result['wall_s']:.0f} s.",
    ]
    if result.get("profiles"):
        out += ["", result["profiles"].rstrip()]
    return "\n".join(out)


def profile_listing(profile_dir: Path, top: int) -> str:
    """Own time of the top functions, per path and phase, from the .prof files the platforms wrote."""
    out = []
    for path in PATHS:
        for phase in PHASES:
            file = profile_dir / f"{path}-{phase}.prof"
            if not file.exists():
                continue
            stats = pstats.Stats(str(file))
            total = stats.total_tt  # type: ignore[attr-defined]
            rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
            out += [f"### platform profile: {LABELS[path]}, {phase} ({total:.2f} s profiled)", "", "```"]
            out.append(f"{'own s':>8} {'cum s':>8} {'calls':>9}  function")
            for (filename, line, name), (_cc, calls, tt, ct, _callers) in rows:
                short = filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
                out.append(f"{tt:8.3f} {ct:8.3f} {calls:9d}  {short}:{line}({name})")
            out += ["```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Main


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    limit = raise_open_files_limit()
    if limit < 2 * args.devices + 256:
        raise BenchError(f"open-files limit {limit} is too low for {args.devices} devices: raise the hard limit")
    log(f"# devices_mqtt: N={args.devices}, M={min(args.notify, args.devices)}, idle {args.idle:g} s")
    results: dict[str, PathResult] = {}
    for path in PATHS:
        results[path] = await measure_path(path, args)
    return {
        "config": {
            "devices": args.devices,
            "notify": min(args.notify, args.devices),
            "idle_s": args.idle,
            "concurrency": args.concurrency,
            "quick": args.quick,
            "profile": args.profile,
        },
        "machine": machine_info(),
        "rows": summary_rows(results),
        "paths": {path: asdict(r) for path, r in results.items()},
        "wall_s": time.perf_counter() - started,
    }


def profile_plans(profile_dir: Path) -> dict[str, Path]:
    """Per path, the file that tells its profiled platform where to dump each phase (see PROFILED_PLATFORM)."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    plans = {}
    for path in PATHS:
        plans[path] = profile_dir / f"{path}-plan.txt"
        plans[path].write_text("\n".join(str(profile_dir / f"{path}-{phase}.prof") for phase in PHASES) + "\n")
    return plans


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--devices", type=int, default=None, metavar="N", help="devices (default 1000; 200 with --quick)")
    p.add_argument("--notify", type=int, default=100, metavar="M", help="AddTunnel calls at once (default 100)")
    p.add_argument("--idle", type=float, default=None, help="idle window in seconds (default 20; 2 with --quick)")
    p.add_argument("--concurrency", type=int, default=100, help="devices connecting at once (default 100)")
    p.add_argument("--quick", action="store_true", help="N = 200, 2 s idle window")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument(
        "--profile", metavar="DIR", help="cProfile each platform per phase into DIR; print the top functions"
    )
    p.add_argument("--profile-top", type=int, default=20, help="rows per profile listing (default 20)")
    args = p.parse_args(argv)
    if args.devices is None:
        args.devices = 200 if args.quick else 1000
    if args.idle is None:
        args.idle = 2.0 if args.quick else 20.0
    if args.devices < 1 or args.notify < 1 or args.concurrency < 1 or args.idle <= 0:
        p.error("need --devices, --notify and --concurrency ≥ 1 and --idle > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile_dir = Path(args.profile).resolve() if args.profile else None
    args.profile = str(profile_dir) if profile_dir else None
    args.profile_plans = profile_plans(profile_dir) if profile_dir else {}
    try:
        result = asyncio.run(bench(args))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    if profile_dir is not None:
        result["profiles"] = profile_listing(profile_dir, args.profile_top)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: fan-out over real-network latency, against the protocol's minimum.

    .venv/bin/python bench/wan.py [--sizes 100,1000] [--app-rtt-ms 40] [--device-rtt-ms 150] [--repeats 3]
                                  [--variants tunnelnb,asyncssh-shell,pssh] [--json PATH] [--quick]

On loopback every round trip is free; across the Internet a login and a command cross two
paths (application ↔ IoTDA, IoTDA ↔ a device on a cellular or DSL link), so the round
trips that cannot overlap set the time.  This is bench/fanout.py's fan-out with latency
injected on loopback by delaying TCP proxies (:class:`tunnelnb.sim.proxies.LinkProxy`, half
the RTT each way, bytes and order kept, throughput not throttled), all in a **network**
process of their own:

* application ↔ platform: ``--app-rtt-ms`` (40) through one proxy: REST and the
  application's tunnel WebSockets (the platform builds the tunnel URI from the address
  the client used, so they pass it too);
* platform ↔ devices: ``--device-rtt-ms`` (150) through one proxy that the simulated
  fleet takes for the platform: registration, every device link (``tunnel_notify``) and
  every device tunnel WebSocket;
* a device's SSH login happens on the device (agent → its SSH server, same host): no
  injected latency, as on a real device;
* direct SSH (the peers): one proxy per device's SSH server with both RTTs added, the
  path a user with direct SSH over the same network would have.

One **devices** process runs the platform and a simulated fleet of N devices (backend
``ssh``, misbehaving 0, sandboxes built before any login; from 100 devices on in
``--sim-workers`` worker processes, a ShardedFleet, as bench/fanout.py does).  Each client
runs alone in its own process (the devices settle in between): bench/fanout.py's clients
(``--role client``), given the proxies' addresses: ``tunnelnb`` (``fleet.login`` of all N,
``--login-concurrency`` at a time: 100 by default, the Fleet's default; then
``fleet.run('echo ok')`` on all N at once), ``asyncssh-shell`` (``asyncssh.connect`` to all
at once + one PTY shell each, the login; commands typed into the shells with tunnelnb's
framing, the run), ``pssh`` (parallel-ssh ``connect_auth``, then
``run_command``: an exec channel per run; ``--pssh-pool-size``, default 100, its own) and,
on request, ``asyncssh`` (``conn.run``).  Login and run are wall times; runs are the median
of ``--repeats`` after one untimed warm-up (``--baseline-repeats``, default 1, without
warm-up, for the exec-channel clients: their every run starts N processes on the devices).
``--quick`` (``make bench``): N = 100, one repeat, tunnelnb and asyncssh, under a minute on 2
cores; parallel-ssh only in full runs, as its 100 logins alone take over 20 s here (it runs
libssh2's blocking handshake and authentication in gevent's thread pool: 10 threads).

The protocol's minimum
----------------------
With a = the application's RTT and d = a device's, a tunnelnb login cannot take less than:

1. AddTunnel (REST, over a kept-alive connection): a.  The platform notifies the device when
   the request arrives (a/2 after it was sent), before it answers.
2. The application's WebSocket upgrade: a, after 1 (it needs the tunnel's URI and token).
   The application holds its side at 2a; the platform sends it ``connect_tunnel`` once both
   sides are in.
3. The device, meanwhile: notify over its link (d/2 after the platform sent it), its
   WebSocket upgrade (d/2 to the platform; the answer's way back overlaps what follows),
   ``connect_tunnel`` to the application (a/2): a/2 + d/2 + d/2 + a/2 = a + d after 1 began.
   Steps 1-2 and 3 overlap: the application hears ``connect_tunnel`` at max(2a, a + d).
4. ``connect``: application → platform → device, the SSH login on the device (no injected
   latency), ``connect_response`` back: a + d.
5. The first framed command (the login's no-op, proving the shell answers): a + d.

Login minimum = max(2a, a + d) + 2(a + d): 0.570 s at 40/150 ms (the sum of every step's
own round trips, 4.5a + 3.5d, would be 0.705 s: 3 overlaps 1-2).  With logins ``c`` at a
time, each slot logs in its devices one after the other; a device's tunnel is opened (steps
1-3) while the device before it in the slot logs in (tunnelnb's fleet opens the next ``c``
tunnels ahead), so only the first join counts: max(2a, a + d) + ceil(N / c) x 2(a + d)
(3.99 s for 1,000 devices 100 at a time).
A run on logged-in devices: one application ↔ device round trip, a + d (0.190 s), plus the
command's own time (taken as 0 for ``echo ok``).  Devices run in parallel, so N does not
change the minimum: CPU does, and the ratio shows it (2 cores run the client, the platform,
N agents, N SSH servers and N shells).

No TLS: the local platform speaks ``http``/``ws``.  The proxies complete each TCP handshake
on loopback, so a new connection costs no round trip here, and the minimum counts none.  On
IoTDA (``https``/``wss``) REST reuses its connection, but each new connection on the
critical path costs its TCP handshake (1 RTT) and TLS (1 RTT with TLS 1.3, 2 with 1.2):
the application's WebSocket (+2a) and the device's (+2d), so with TLS 1.3 the login minimum
becomes max(4a, a + 3d) + 2(a + d): 0.870 s at 40/150 ms.  The same holds for direct SSH
(TCP + its key exchange).  ``tc netem`` in network namespaces would emulate handshakes too,
but needs root and namespaces for three parties: the proxies are what this script uses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # bench/fanout.py: its clients, process plumbing and helpers

import fanout  # noqa: E402 - after the path is set
from fanout import BenchError, Child, cpu_s, machine_info  # noqa: E402

from tunnelnb.server.oslimits import raise_open_files_limit  # noqa: E402 - fanout put the checkout on the path

COMMAND = "echo ok"
SEED = 1
VARIANTS = ("tunnelnb", "asyncssh-shell", "asyncssh", "pssh")
DEFAULT_VARIANTS = ("tunnelnb", "asyncssh-shell", "pssh")
#: --quick stays under a minute: parallel-ssh's 100 logins alone take over 20 s at 190 ms (gevent's 10 threads).
QUICK_VARIANTS = ("tunnelnb", "asyncssh-shell")
PER_COMMAND_PROCESS = ("asyncssh", "pssh")  # exec channels: every run starts N processes; no warm-up
LABELS = {
    "tunnelnb": "tunnelnb",
    "asyncssh-shell": "asyncssh (connect + PTY shell)",
    "asyncssh": "asyncssh (conn.run)",
    "pssh": "parallel-ssh",
}
CPU_FIELDS = {"client": "cpu_s", "devices": "devices_cpu_s", "network": "network_cpu_s"}  # in the answers
#: As in bench/fanout.py: from this N on, worker processes run the simulated fleet (--sim-workers); between
#: clients the devices settle until they use under SETTLE_IDLE of a core over a second (at most SETTLE_MAX_S).
SIM_WORKERS_FROM = 100
SETTLE_IDLE = 0.05
SETTLE_MAX_S = 300.0
BACKLOG = 4096  # every proxy: N clients may connect at once; a dropped SYN would cost a 1 s retry


# ---------------------------------------------------------------------------
# The protocol's minimum (see the module docstring)


def join_minimum_s(app_rtt: float, device_rtt: float) -> float:
    """When the application hears ``connect_tunnel``: AddTunnel + its upgrade, overlapped with the device's join."""
    return max(2 * app_rtt, app_rtt + device_rtt)


def login_minimum_s(app_rtt: float, device_rtt: float, devices: int = 1, concurrency: int | None = None) -> float:
    """The least time ``devices`` logins can take, ``concurrency`` at a time (default: all at once).

    The first devices join, then log in (``connect``, the first command: 2(a + d));
    the devices after them have joined their tunnels meanwhile (opened ahead), so
    each later login in a slot costs only its 2(a + d).
    """
    waves = math.ceil(devices / concurrency) if concurrency else 1
    return join_minimum_s(app_rtt, device_rtt) + waves * 2 * (app_rtt + device_rtt)


def run_minimum_s(app_rtt: float, device_rtt: float, command_s: float = 0.0) -> float:
    """The least time a command on logged-in devices takes: one application ↔ device round trip."""
    return app_rtt + device_rtt + command_s


# ---------------------------------------------------------------------------
# Child processes (JSON lines on stdin/stdout, as in bench/fanout.py)


async def _stdin_lines() -> Any:
    import asyncio

    reader = asyncio.StreamReader(limit=1 << 20)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _write(out: Any, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")


#: a command's end marker as the shell prints it (tunnelnb.protocol.shell.command_script), not as typed ("%s_%d")
END_MARKER = re.compile(r"__TNB_E_\w+_\d+__")


class DeviceLogins:
    """How long each device took over its own part of a login, seen at the platform.

    Two waits, each less the device's RTT ``d``: ``connect`` relayed to the device → its
    ``connect_response`` (the agent, quirks ``none``, answers once its SSH login is done
    and the shell's channel is open), and the first ``command`` after it (the login's
    no-op) → the output with its end marker (the shell has started and answered; what a
    shell prints as it starts, a prompt, comes earlier).  That
    is SSH and a shell start on the device, which the protocol's minimum takes as free
    and which here 2 cores do for every simulated device at once.  It wraps the
    platform's ``_route``, as bench/relay.py counts frames.
    """

    def __init__(self, platform: Any, device_rtt: float) -> None:
        from tunnelnb.protocol.frames import Op
        from tunnelnb.server.platform.model import Side

        self._d = device_rtt
        self._waits: dict[str, list[float]] = {}  # device id → [connect sent, its answer, command sent]
        self._done: dict[str, float] = {}
        original = platform._route

        async def timing(tunnel: Any, conn: Any, frame: Any, text: str) -> None:
            op, device_id, now = frame.op, tunnel.device_id, time.perf_counter()
            waits = self._waits.get(device_id)
            if conn.side is Side.SOURCE:
                if op is Op.CONNECT and waits is None and device_id not in self._done:
                    self._waits[device_id] = [now]
                elif op is Op.COMMAND and waits is not None and len(waits) == 2:
                    waits.append(now)
            elif waits is not None:
                if op is Op.CONNECT_RESPONSE and len(waits) == 1:
                    waits.append(now)
                elif op is Op.COMMAND_RESPONSE and len(waits) == 3 and END_MARKER.search(text):
                    del self._waits[device_id]
                    connect, answered, command = waits
                    self._done[device_id] = max(0.0, answered - connect - self._d) + max(0.0, now - command - self._d)
            await original(tunnel, conn, frame, text)

        platform._route = timing

    def take(self) -> dict[str, float]:
        """The devices' own login seconds by device id, for the logins completed since the last call."""
        done, self._done = self._done, {}
        self._waits.clear()
        return done


async def _devices(config: dict[str, Any], out: Any) -> int:
    """The platform, then (once told the device proxy's address) the simulated fleet behind it."""
    from urllib.parse import urlsplit

    from tunnelnb.server.platform import Platform
    from tunnelnb.sim import ShardedFleet, SimulatedFleet

    digest = fanout._LogDigest("devices")
    digest.install()
    raise_open_files_limit()
    # Every device and the application reach the platform from 127.0.0.1 (through the proxies), not each from an
    # address of its own as on IoTDA: lift the per-address caps, so the connection guard measures nothing here.
    n = config["n"]
    limits = {"max_pending_connections": max(1024, 4 * n), "max_pending_per_address": max(256, 4 * n)}
    platform = Platform(project_id="bench", api_token=secrets.token_urlsafe(24), max_tunnels=max(1000, 2 * n), **limits)
    logins = DeviceLogins(platform, config["device_rtt"])
    await platform.start()
    lines = await _stdin_lines()
    sim: Any = None
    try:
        _write(out, {"platform_port": urlsplit(platform.base_url).port})
        line = await lines.readline()
        if not line:
            return 0
        t0, cpu0, workers = time.perf_counter(), cpu_s(), config["workers"]
        options = {"api_token": platform.api_token, "project_id": platform.project_id, "devices": n, "seed": SEED}
        options |= {"backend": "ssh", "misbehaving": 0.0, "sandbox": config["sandbox"], "concurrency": 64}
        device_url = json.loads(line)["device_url"]
        # As bench/fanout.py: from SIM_WORKERS_FROM devices on, worker processes run them (each builds its sandboxes).
        sim = (
            ShardedFleet(device_url, workers=workers, prebuild=True, **options)
            if workers > 1
            else SimulatedFleet(device_url, **options)
        )
        await sim.start()
        start_s = time.perf_counter() - t0
        build_s, build_failures = (
            (sim.build_s, 0) if workers > 1 else await sim.build_sandboxes(2 * (os.cpu_count() or 1))
        )
        if build_failures:
            raise RuntimeError(f"{build_failures} device sandboxes could not be built")
        user, password = sim.login()
        keys = {"project_id": platform.project_id, "api_token": platform.api_token, "user": user}
        more = {"ports": sim.ssh_ports, "start_s": start_s, "start_cpu_s": cpu_s() - cpu0, "build_s": build_s}
        _write(out, keys | more | {"password": password, "sandbox": sim.sandbox, "workers": workers})

        def usage() -> float:
            """The platform's CPU seconds, and the workers' when they run the devices."""
            return cpu_s() + (sim.usage()["cpu_s"] if workers > 1 else 0.0)

        while line := await lines.readline():
            if json.loads(line)["op"] == "stop":
                break
            _write(out, {"cpu_s": usage(), "log_counts": digest.counts, "device_logins": logins.take()})
    finally:
        if sim is not None:
            await sim.stop()
        await platform.stop()
    _write(out, {"stopped": True, "log_counts": digest.counts})
    return 0


async def _network(out: Any) -> int:
    """The delaying proxies: ``{"op": "proxy", "ports": [...], "delay": s}`` answers their ports."""
    import asyncio

    from tunnelnb.sim.proxies import LinkProxy

    digest = fanout._LogDigest("network")
    digest.install()
    raise_open_files_limit()
    proxies: list[LinkProxy] = []
    lines = await _stdin_lines()
    _write(out, {"ready": True})
    try:
        while line := await lines.readline():
            request = json.loads(line)
            if request["op"] == "stop":
                break
            if request["op"] == "proxy":
                made = []
                for port in request["ports"]:
                    delay = request["delay"]
                    proxy = LinkProxy("127.0.0.1", port, delay=delay, return_delay=delay, backlog=BACKLOG)
                    await proxy.start()
                    proxies.append(proxy)
                    made.append(proxy.port)
                _write(out, {"ports": made})
            else:
                _write(out, {"cpu_s": cpu_s(), "log_counts": digest.counts})
    finally:
        await asyncio.gather(*(p.close() for p in proxies), return_exceptions=True)
    _write(out, {"stopped": True, "log_counts": digest.counts})
    return 0


def child_main(role: str) -> int:
    import asyncio

    out = fanout._protocol_stdout()
    config = json.loads(sys.stdin.readline())
    return asyncio.run(_devices(config, out) if role == "devices" else _network(out))


# ---------------------------------------------------------------------------
# The orchestrator


def listen_overflows() -> int:
    """Connections this network namespace's listening sockets dropped so far (a dropped SYN costs a 1 s retry)."""
    try:
        head, values = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()[:2]]
        return int(dict(zip(head, values, strict=True)).get("ListenOverflows", 0))
    except (OSError, ValueError):
        return 0


class Orchestrator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._device_logins: dict[str, float] = {}  # from the devices' last usage answer

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(text, file=sys.stderr, flush=True)

    def _spawn(self, role: str, config: dict[str, Any], variant: str = "") -> Child:
        if role == "client":  # bench/fanout.py's clients, so both benchmarks measure the same code
            python = self.args.pssh_python if variant == "pssh" else sys.executable
            argv = [python, str(BENCH / "fanout.py"), "--role", "client", "--variant", variant]
        else:
            argv = [sys.executable, str(Path(__file__).resolve()), "--role", role]
        return Child(argv, config, name=variant or role)

    def one_size(self, n: int) -> dict[str, Any]:
        args = self.args
        a, d = args.app_rtt_ms / 1000, args.device_rtt_ms / 1000
        self.log(f"## N = {n}: app RTT {args.app_rtt_ms:g} ms, device RTT {args.device_rtt_ms:g} ms")
        network = self._spawn("network", {})
        devices: Child | None = None
        try:
            network.receive(60)
            workers = args.sim_workers if n >= SIM_WORKERS_FROM else 1
            devices = self._spawn("devices", {"n": n, "sandbox": args.sandbox, "workers": workers, "device_rtt": d})
            platform_port = devices.receive(120)["platform_port"]
            [device_port] = network.request({"op": "proxy", "ports": [platform_port], "delay": d / 2}, 60)["ports"]
            info = devices.request({"device_url": f"http://127.0.0.1:{device_port}"}, 1800)
            where = "beside the platform" if workers == 1 else f"in {workers} worker processes"
            self.log(f"devices up {where} in {info['start_s']:.1f} s, sandboxes built in {info['build_s']:.1f} s")
            [app_port] = network.request({"op": "proxy", "ports": [platform_port], "delay": a / 2}, 60)["ports"]
            ids = list(info["ports"])
            ssh = network.request({"op": "proxy", "ports": [info["ports"][i] for i in ids], "delay": (a + d) / 2}, 300)
            config = {k: info[k] for k in ("project_id", "api_token", "user", "password")} | {
                "url": f"http://127.0.0.1:{app_port}",
                "ports": dict(zip(ids, ssh["ports"], strict=True)),
                "timeout": args.timeout,
                "login_concurrency": args.login_concurrency,
                "pssh_pool_size": args.pssh_pool_size,
            }
            variants = {}
            for v in (v for v in VARIANTS if v in args.variants):
                variants[v] = self.phase(v, config, devices, network, n)
                self.settle(devices)
            stopped = devices.request({"op": "stop"}, 600)
            network.request({"op": "stop"}, 120)
        finally:
            if devices is not None:
                devices.finish(120)
            network.finish(60)
        return {"n": n, "devices_up": info, "variants": variants, "devices_log_counts": stopped["log_counts"]}

    def settle(self, devices: Child) -> None:
        """Wait (at most SETTLE_MAX_S) until the devices use under SETTLE_IDLE of a core: a client's shells end late."""
        t0, last = time.perf_counter(), devices.request({"op": "usage"}, 300)["cpu_s"]
        while time.perf_counter() - t0 < SETTLE_MAX_S:
            time.sleep(1.0)
            now = devices.request({"op": "usage"}, 300)["cpu_s"]
            if now - last < SETTLE_IDLE:
                return
            last = now

    def _usage(self, devices: Child, network: Child) -> tuple[float, float]:
        usage = devices.request({"op": "usage"}, 300)
        self._device_logins = usage.get("device_logins", {})
        return usage["cpu_s"], network.request({"op": "usage"}, 300)["cpu_s"]

    def _timed(self, client: Child, request: dict[str, Any], devices: Child, network: Child, timeout: float) -> Any:
        before, overflows = self._usage(devices, network), listen_overflows()
        answer = client.request(request, timeout)
        after = self._usage(devices, network)
        answer["devices_cpu_s"], answer["network_cpu_s"] = (y - x for x, y in zip(before, after, strict=True))
        answer["device_logins"] = self._device_logins
        answer["listen_overflows"] = listen_overflows() - overflows
        return answer

    def phase(self, v: str, config: dict[str, Any], devices: Child, network: Child, n: int) -> dict[str, Any]:
        """One client alone with the devices: log in, warm up, timed runs, quit."""
        args = self.args
        rec: dict[str, Any] = {"label": LABELS[v], "runs": [], "errors": []}
        client = self._spawn("client", config, v)
        try:
            hello = client.receive(120)
            if "unavailable" in hello:
                rec["unavailable"] = hello["unavailable"]
                self.log(f"{LABELS[v]}: not available ({hello['unavailable']})")
                return rec
            rec["versions"] = hello.get("version", {})
            login = rec["login"] = self._timed(client, {"op": "login"}, devices, network, args.login_timeout)
            if "error" in login:
                rec["errors"].append(f"login: {login['error']}")
                return rec
            self.log(f"{LABELS[v]}: {login['ok']}/{n} logged in in {login['seconds']:.2f} s")
            if login["ok"] != n:
                rec["errors"].append(f"login: {login['ok']}/{n} ok; " + "; ".join(login.get("failures", [])))
            if login["ok"]:
                run = {"op": "run", "command": COMMAND}
                exec_channels = v in PER_COMMAND_PROCESS
                for _ in range(0 if exec_channels else 1):
                    client.request(run, args.run_timeout)  # warm-up, untimed
                for _ in range(args.baseline_repeats if exec_channels else args.repeats):
                    answer = self._timed(client, run, devices, network, args.run_timeout)
                    if "error" in answer:
                        answer = {"seconds": float("nan"), "ok": 0, "failures": [answer["error"]]} | answer
                    rec["runs"].append(answer)
                    if answer["ok"] != n:
                        rec["errors"].append(f"run: {answer['ok']}/{n} ok; " + "; ".join(answer["failures"]))
                    self.log(f"{LABELS[v]}: {COMMAND!r} on {answer['ok']}/{n} in {answer['seconds']:.3f} s")
            rec["log_counts"] = client.request({"op": "quit"}, 600).get("log_counts", {})
        finally:
            client.finish(30)
        return rec

    def bench(self) -> list[dict[str, Any]]:
        raise_open_files_limit()
        machine = machine_info()
        return [summarize(self.one_size(n), self.args, machine) for n in self.args.sizes]


# ---------------------------------------------------------------------------
# Report


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else None


def _div(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def summarize(size: dict[str, Any], args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    """One size's row of the JSON list: the figures, the minimum and the ratios."""
    n, a, d = size["n"], args.app_rtt_ms / 1000, args.device_rtt_ms / 1000
    concurrency = min(args.login_concurrency, n)
    row: dict[str, Any] = {"devices": n, "app_rtt_ms": args.app_rtt_ms, "device_rtt_ms": args.device_rtt_ms}
    for v, rec in size["variants"].items():
        key = {"tunnelnb": "", "asyncssh-shell": "asyncssh_", "asyncssh": "asyncssh_exec_", "pssh": "pssh_"}[v]
        login, runs = rec.get("login", {}), rec["runs"]
        row[f"{key}login_s"] = login.get("seconds")
        row[f"{key}run_s"] = _median([r["seconds"] for r in runs])
        row[f"{key}run_walls_s"] = [r["seconds"] for r in runs]
        row[f"{key}ok"] = not rec["errors"] and bool(runs) and "unavailable" not in rec
        row[f"{key}cpu_s"] = {
            phase: {who: _median([r.get(field, math.nan) for r in rs]) for who, field in CPU_FIELDS.items()}
            for phase, rs in (("login", [login] if login else []), ("run", runs))
        }
        row[f"{key}errors"] = rec["errors"][:5]
        row[f"{key}listen_overflows"] = sum(r.get("listen_overflows", 0) for r in [login, *runs])
        if "unavailable" in rec:
            row[f"{key}unavailable"] = rec["unavailable"]
        if v == "tunnelnb":
            row["connect_s"] = login.get("connect_s")
            row.update(device_share(login, a, d))
    row["login_minimum_s"] = login_minimum_s(a, d, n, concurrency)
    row["run_minimum_s"] = run_minimum_s(a, d)
    row["login_ratio"] = _div(row.get("login_s"), row["login_minimum_s"])
    row["run_ratio"] = _div(row.get("run_s"), row["run_minimum_s"])
    row["login_vs_asyncssh"] = _div(row.get("login_s"), row.get("asyncssh_login_s"))
    row["run_vs_asyncssh"] = _div(row.get("run_s"), row.get("asyncssh_run_s"))
    row["login_concurrency"] = concurrency
    row["pssh_pool_size"] = args.pssh_pool_size
    row["repeats"], row["baseline_repeats"] = args.repeats, args.baseline_repeats
    row["devices_start_s"], row["sim_workers"] = size["devices_up"]["start_s"], size["devices_up"]["workers"]
    row["machine"] = machine
    return row


def device_share(login: dict[str, Any], a: float, d: float) -> dict[str, Any]:
    """Each device's login split into the device's own SSH login (see :class:`DeviceLogins`) and the rest.

    ``device_own_login_s``: what the devices spent logging in to their SSH servers
    and starting their shells (the two waits of :class:`DeviceLogins`);
    ``login_less_devices_s``: each device's login less that, against the
    protocol's minimum for one device.  Medians and maxima over the devices timed on
    both ends; empty without both.
    """
    durations, own = login.get("durations") or {}, login.get("device_logins") or {}
    both = [i for i in durations if i in own]
    if not both:
        return {}
    mine = [own[i] for i in both]
    rest = [durations[i] - own[i] for i in both]
    minimum = login_minimum_s(a, d)
    return {
        "device_own_login_s": {"median": statistics.median(mine), "max": max(mine)},
        "login_less_devices_s": {"median": statistics.median(rest), "max": max(rest), "devices": len(both)},
        "login_less_devices_ratio": max(rest) / minimum,
    }


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None or value != value else f"{value:.{digits}f}{suffix}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | RTT app / device ms | tunnelnb login s | minimum s | ratio | tunnelnb run s | minimum s | ratio | "
        "asyncssh login s | asyncssh run s | tunnelnb / asyncssh login, run | parallel-ssh login s | "
        "parallel-ssh run s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        failed = "" if r.get("ok", True) else " (**failed rows**)"
        pssh = (
            ("n/a", "n/a") if r.get("pssh_unavailable") else (_f(r.get("pssh_login_s"), 3), _f(r.get("pssh_run_s"), 3))
        )
        lines.append(
            f"| {r['devices']:,} | {r['app_rtt_ms']:g} / {r['device_rtt_ms']:g} | {_f(r.get('login_s'), 3)}{failed} | "
            f"{_f(r['login_minimum_s'], 3)} | {_f(r['login_ratio'], 2, 'x')} | {_f(r.get('run_s'), 3)} | "
            f"{_f(r['run_minimum_s'], 3)} | {_f(r['run_ratio'], 2, 'x')} | {_f(r.get('asyncssh_login_s'), 3)} | "
            f"{_f(r.get('asyncssh_run_s'), 3)} | {_f(r['login_vs_asyncssh'], 2, 'x')}, "
            f"{_f(r['run_vs_asyncssh'], 2, 'x')} | {pssh[0]} | {pssh[1]} |"
        )
    return "\n".join(lines)


def report(rows: list[dict[str, Any]]) -> str:
    r0, concurrency = rows[0], max(r["login_concurrency"] for r in rows)
    out = [
        "## tunnelnb over injected WAN latency",
        "",
        markdown(rows),
        "",
        "Minimum: the protocol's round trips that cannot overlap (bench/wan.py's docstring): login max(2a, a + d) + "
        f"ceil(N / {concurrency:,}) x 2(a + d) (tunnelnb logs in {concurrency:,} at a time, the next devices' tunnels "
        f"joined meanwhile); run a + d. Run: median of {r0['repeats']} `{COMMAND}` on all N at once after one untimed "
        f"warm-up ({r0['baseline_repeats']} without warm-up for parallel-ssh, whose every run opens exec channels). "
        "asyncssh: direct SSH over a proxy with both RTTs, `asyncssh.connect` + one PTY shell per device, all at once "
        "(login), commands typed with tunnelnb's framing (run). parallel-ssh: `connect_auth` (login), `run_command` "
        f"(run), pool_size {r0['pssh_pool_size']:,}. No TLS; TCP handshakes free (loopback proxies). Ratios: "
        "measured / minimum, tunnelnb / asyncssh (lower is better).",
        "",
        "CPU seconds, login and median run: client / devices (the platform and the simulated fleet's processes) / "
        "network (the proxies):",
        "",
    ]
    for r in rows:
        for key, label in (
            ("", "tunnelnb"),
            ("asyncssh_", "asyncssh"),
            ("asyncssh_exec_", "asyncssh conn.run"),
            ("pssh_", "parallel-ssh"),
        ):
            cpu = r.get(f"{key}cpu_s")
            if cpu:
                parts = [
                    f"{phase} " + " / ".join(_f(cpu[phase][w], 2) for w in CPU_FIELDS) for phase in ("login", "run")
                ]
                out.append(f"- N = {r['devices']:,}, {label}: " + "; ".join(parts))
            if r.get(f"{key}listen_overflows"):
                out.append(f"  - {label}: {r[f'{key}listen_overflows']} connections dropped by full listen queues")
            for err in r.get(f"{key}errors", []):
                out.append(f"  - {label}: {err}")
            if r.get(f"{key}unavailable"):
                out.append(f"  - {label}: not available ({r[f'{key}unavailable']})")
        own, rest = r.get("device_own_login_s"), r.get("login_less_devices_s")
        if own and rest:
            a, d = r["app_rtt_ms"] / 1000, r["device_rtt_ms"] / 1000
            per_device = login_minimum_s(a, d)
            ahead = (
                f"; {2 * (a + d):.3f} s for a device whose tunnel was opened ahead, which its row does not count"
                if r["devices"] > r["login_concurrency"]
                else ""
            )
            out.append(
                f"- N = {r['devices']:,}, where tunnelnb's login time goes: the devices' own SSH login and shell "
                f"start (at the platform: `connect` → `connect_response` and the first command → its end marker, each "
                f"less the device RTT) median "
                f"{own['median']:.3f} s, max {own['max']:.3f} s; each device's login less its own: median "
                f"{rest['median']:.3f} s, max {rest['max']:.3f} s, against the minimum of {per_device:.3f} s per "
                f"device ({r['login_less_devices_ratio']:.2f}x{ahead}; {rest['devices']:,} devices timed on both ends)"
            )
        if r.get("connect_s") is not None:
            out.append(
                f"- N = {r['devices']:,}: tunnelnb.connect() (ListDevices pages) took {r['connect_s']:.2f} s "
                "before the login (not in the login time)"
            )
    m = r0["machine"]
    out += [
        "",
        f"Machine: nproc={m['nproc']} ({m['cpu'] or 'cpu unknown'}), {m['memory']} RAM, Python "
        f"{m['python']}, tunnelnb at {m['commit']}.",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="100,1000", help="fleet sizes N, comma-separated (default 100,1000)")
    p.add_argument("--app-rtt-ms", type=float, default=40.0, help="application ↔ platform RTT, ms (default 40)")
    p.add_argument("--device-rtt-ms", type=float, default=150.0, help="platform ↔ device RTT, ms (default 150)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of 'echo ok' per client; median (default 3)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"--sizes 100 --repeats 1 --variants {','.join(QUICK_VARIANTS)} (make bench)",
    )
    p.add_argument(
        "--variants",
        help=f"clients, comma-separated, from {', '.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})",
    )
    p.add_argument("--baseline-repeats", type=int, default=1, help="timed runs for conn.run, parallel-ssh (default 1)")
    p.add_argument("--login-concurrency", type=int, default=100, help="tunnelnb logins at a time (default 100)")
    p.add_argument("--pssh-pool-size", type=int, default=100, help="parallel-ssh pool_size (default 100, its own)")
    p.add_argument("--pssh-python", default=sys.executable, help="interpreter with parallel-ssh (default: this one)")
    p.add_argument("--sandbox", default="auto", help="SimulatedFleet sandbox mode (default auto)")
    p.add_argument(
        "--sim-workers", type=int, default=2, help=f"simulated fleet processes for N >= {SIM_WORKERS_FROM} (default 2)"
    )
    p.add_argument("--timeout", type=float, default=120, help="per-device login and command timeout, s (default 120)")
    p.add_argument("--login-timeout", type=float, default=1800, help="seconds to wait for a client's logins")
    p.add_argument("--run-timeout", type=float, default=600, help="seconds to wait for one fan-out run")
    p.add_argument("--json", metavar="PATH", help="also write the results (a list, one entry per N) to PATH")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--role", choices=("main", "devices", "network"), default="main", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = "100", 1
    if args.variants is None:
        args.variants = ",".join(QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--sizes takes integers, e.g. 100,1000")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    if not args.sizes or min(args.sizes) < 1 or min(args.repeats, args.baseline_repeats, args.sim_workers) < 1:
        p.error("need sizes ≥ 1, --repeats ≥ 1, --baseline-repeats ≥ 1 and --sim-workers ≥ 1")
    if args.app_rtt_ms < 0 or args.device_rtt_ms < 0 or min(args.login_concurrency, args.pssh_pool_size) < 1:
        p.error("RTTs cannot be negative; --login-concurrency and --pssh-pool-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role != "main":
        return child_main(args.role)
    try:
        rows = Orchestrator(args).bench()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r.get("ok", True) and r.get("asyncssh_ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

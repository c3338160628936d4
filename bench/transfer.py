"""Benchmark: files in and out through the tunnel (``DeviceSession.get_file`` / ``put_file``).

    .venv/bin/python bench/transfer.py [--mbytes 10] [--repeats 3] [--output-mbytes 20] [--json PATH]

Everything runs in one process, on one event loop, on loopback, as in
``bench/relay.py``: application (:class:`DeviceSession`) → local
:class:`Platform` → :class:`Agent` → embedded SSH server → ``/bin/sh`` on a PTY.
For each device kind (well-behaved; the C SDK without and with stray bytes after
full reads, so that output arrives damaged; the C SDK v1.1) it measures, as the
median of ``--repeats``:

* ``get``: a file of ``--mbytes`` MiB of random bytes read from the device, exact
  (its sha256 is checked here too);
* ``put``: the same bytes written to the device, checked there and compared here;
* ``output``: ``bench/relay.py``'s throughput measurement (``--output-mbytes`` MB of
  text printed by ``yes | head -c``, checked byte for byte), in this same run, so
  that the transfers can be read against what the tunnel carries as plain output.

MB/s are 10**6 bytes per second.  Exits 0 unless a measurement fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bench.relay import expected_output, machine_info, output_command
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.session import DeviceSession
from tunnelnb.server.agent import Agent
from tunnelnb.server.platform import Platform
from tunnelnb.server.sshserver import ShellServer

USER, PASSWORD = "bench", secrets.token_urlsafe(12)
#: (label, agent quirks, stray bytes probability).
KINDS = (
    ("well-behaved", "none", 0.0),
    ("c-sdk, no stray bytes", "c-sdk", 0.0),
    ("c-sdk, stray bytes 0.25", "c-sdk", 0.25),
    ("c-sdk-1.1 (drops)", "c-sdk-1.1", 0.0),
)


class BenchError(RuntimeError):
    """A measurement that did not give the right bytes."""


class Device:
    """Platform + SSH server + agent + one logged-in session, for one device kind."""

    def __init__(self, quirks: str, stray: float, workdir: str) -> None:
        self.quirks, self.stray, self.workdir = quirks, stray, workdir
        self._stack = contextlib.AsyncExitStack()
        self.dev: DeviceSession

    async def __aenter__(self) -> Device:
        stack = self._stack
        try:
            token = secrets.token_urlsafe(16)
            platform = await stack.enter_async_context(Platform(api_token=token, heartbeat=None))
            ssh = await stack.enter_async_context(ShellServer(users={USER: PASSWORD}, cwd=self.workdir))
            secret = secrets.token_hex(8)
            platform.add_device("bench-device", secret)
            agent = Agent(
                platform.base_url,
                "bench-device",
                secret,
                ssh_port=ssh.port,
                heartbeat=None,
                quirks=self.quirks,
                stray_bytes=self.stray,
            )
            await agent.start()
            stack.push_async_callback(agent.stop)
            await agent.wait_online(10)
            api = await stack.enter_async_context(
                PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=token)
            )
            self.dev = await stack.enter_async_context(DeviceSession(api, "bench-device", heartbeat=None))
            await self.dev.login(USER, PASSWORD)
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def get(self, data: bytes) -> float:
        t0 = time.perf_counter()
        r = await self.dev.get_file("source.bin", timeout=300)
        dt = time.perf_counter() - t0
        if not r.ok or r.data != data or r.sha256 != hashlib.sha256(data).hexdigest():
            raise BenchError(f"get: status={r.status} {r.error}")
        return dt

    async def put(self, data: bytes) -> float:
        t0 = time.perf_counter()
        r = await self.dev.put_file(data, "copy.bin", timeout=300)
        dt = time.perf_counter() - t0
        copy = Path(self.workdir, "copy.bin")
        if not r.ok or await asyncio.to_thread(copy.read_bytes) != data:
            raise BenchError(f"put: status={r.status} {r.error}")
        await asyncio.to_thread(os.remove, copy)
        return dt

    async def output(self, nbytes: int) -> float:
        t0 = time.perf_counter()
        r = await self.dev.run(output_command(nbytes), timeout=300)
        dt = time.perf_counter() - t0
        if not r.ok or r.stdout != expected_output(nbytes):
            raise BenchError(f"output: status={r.status} {r.error} ({len(r.stdout)} characters)")
        return dt


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.mbytes * 1024 * 1024)
    out_bytes = int(args.output_mbytes * 10**6)
    data = os.urandom(size)
    rows = []
    for label, quirks, stray in KINDS:
        with tempfile.TemporaryDirectory(prefix="tnb-bench-transfer-") as workdir:
            await asyncio.to_thread(Path(workdir, "source.bin").write_bytes, data)
            async with Device(quirks, stray, workdir) as device:
                await device.get(data)  # a warm-up: the file in the page cache, the session settled
                gets, puts, outputs = [], [], []
                for _ in range(args.repeats):  # interleaved, so that each repeat's three see the same machine
                    gets.append(await device.get(data))
                    puts.append(await device.put(data))
                    # Plain output is damaged by stray bytes: relay.py measures it without them too.
                    if not stray:
                        outputs.append(await device.output(out_bytes))
        row: dict[str, Any] = {
            "kind": label,
            "get_s": statistics.median(gets),
            "put_s": statistics.median(puts),
            "output_s": statistics.median(outputs) if outputs else None,
            # Per repeat, then the median: the ratios hold up on a busy machine better than the speeds.
            "get_vs_output": statistics.median(
                [(size / g) / (out_bytes / o) for g, o in zip(gets, outputs, strict=True)]
            )
            if outputs
            else None,
            "put_vs_output": statistics.median(
                [(size / p) / (out_bytes / o) for p, o in zip(puts, outputs, strict=True)]
            )
            if outputs
            else None,
        }
        row["get_mb_s"] = size / row["get_s"] / 1e6
        row["put_mb_s"] = size / row["put_s"] / 1e6
        row["output_mb_s"] = out_bytes / row["output_s"] / 1e6 if outputs else None
        rows.append(row)
        print(report_row(row), flush=True)
    return {
        "mbytes": args.mbytes,
        "output_mbytes": args.output_mbytes,
        "repeats": args.repeats,
        "rows": rows,
        "machine": machine_info(),
        "load_average": os.getloadavg(),
    }


def report_row(row: dict[str, Any]) -> str:
    output = "—" if row["output_mb_s"] is None else f"{row['output_mb_s']:.2f}"
    ratios = "—" if row["get_vs_output"] is None else f"{row['get_vs_output']:.2f} / {row['put_vs_output']:.2f}"
    return (
        f"| {row['kind']:<24} | {row['get_mb_s']:>6.2f} ({row['get_s']:>6.2f} s) | {row['put_mb_s']:>6.2f} "
        f"({row['put_s']:>6.2f} s) | {output:>11} | {ratios:>17} |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--mbytes", type=float, default=10.0, help="file size in MiB (default 10)")
    p.add_argument("--output-mbytes", type=float, default=20.0, help="relay.py's output size in MB (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per figure; the median is shown (default 3)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"files of {args.mbytes:g} MiB, median of {args.repeats}; MB/s = 10**6 bytes/s")
    print(f"| {'device':<24} | {'get MB/s':<17} | {'put MB/s':<17} | {'output MB/s':>11} | {'get, put ÷ output':>17} |")
    print(f"|{'-' * 26}|{'-' * 19}|{'-' * 19}|{'-' * 13}|{'-' * 19}|")
    try:
        result = asyncio.run(bench(args))
    except BenchError as exc:
        print(f"measurement failed: {exc}", file=sys.stderr)
        return 1
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in result['load_average'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One worker process of a simulated fleet split over several (``tunnelnb sim --workers N``).

Run by :class:`~tunnelnb.sim.workers.ShardedFleet` as ``python -m
tunnelnb.sim.worker``; not a command for people.  It speaks JSON lines: it reads
its configuration (secrets included, so never on the command line) from stdin,
starts its share of the devices as a :class:`~tunnelnb.sim.fleet.SimulatedFleet`
that does not register them (the parent did), answers ``{"ready": ...}`` on
stdout, and runs until stdin says ``stop`` or closes -- which it does when the
parent dies, however it dies -- or until SIGINT or SIGTERM (the parent's death
sends SIGTERM too, where Linux allows).  Every way out stops its devices and
removes its sandboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from typing import IO, Any

from ..tls import client_ssl
from .fleet import SimulatedFleet
from .profiles import DeviceProfile

__all__ = ["main"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the parent dies (Linux); if it died already, stdin's end says so anyway."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _protocol_stdout() -> IO[str]:
    """Answers go to the real stdout; anything else printed goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _answer(out: IO[str], obj: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        out.write(json.dumps(obj) + "\n")
        out.flush()


async def _stdin() -> asyncio.StreamReader:
    """stdin as a stream read by the event loop (the configuration, then ``stop``), lines of any length."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _until_told_to_stop(reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
    """Wait for ``stop`` on stdin, stdin's end (the parent is gone), or ``stop`` being set by a signal."""

    async def read() -> None:
        while line := await reader.readline():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("op") == "stop":
                    return

    reading = asyncio.ensure_future(read())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reading, stopping):
            task.cancel()
        await asyncio.gather(reading, stopping, return_exceptions=True)


async def _run(out: IO[str]) -> int:
    reader = await _stdin()
    try:
        config = json.loads(await reader.readline() or b"{}")
    except ValueError:
        config = {}
    if "profiles" not in config:
        _answer(out, {"error": "no configuration on stdin: this process is started by tunnelnb sim --workers"})
        return 2
    logging.basicConfig(
        level=config.get("log_level", "WARNING"),
        format=f"tunnelnb sim worker {config.get('index', '?')}: %(levelname)s %(name)s: %(message)s",
    )
    return await _serve(config, reader, out)


async def _serve(config: dict[str, Any], reader: asyncio.StreamReader, out: IO[str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    _die_with_parent(config["parent_pid"])
    fleet: SimulatedFleet | None = None
    try:
        fleet = SimulatedFleet(
            config["platform_url"],
            api_token=config["api_token"],
            project_id=config["project_id"],
            devices=[DeviceProfile(**p) for p in config["profiles"]],
            seed=config["seed"],
            backend=config["backend"],
            user=config["user"],
            password=config["password"],
            sandbox=config["sandbox"],
            concurrency=config["concurrency"],
            agent_options=config["agent_options"],
            ssl=client_ssl(config["ca_bundle"], insecure=config["insecure"]),
            register=False,
        )
        if stop.is_set():  # the parent is gone already
            return 1
        await fleet.start()
        build_s = failures = None
        if config["prebuild"] and not stop.is_set():
            build_s, failures = await fleet.build_sandboxes()
        _answer(
            out,
            {
                "ready": True,
                "pid": os.getpid(),
                "root": str(fleet.root),
                "sandbox": fleet.sandbox,
                "data_backend": fleet.data_backend,
                "started_in": fleet.started_in,
                "build_s": build_s,
                "build_failures": failures,
                "ssh_ports": fleet.ssh_ports,
            },
        )
        await _until_told_to_stop(reader, stop)
    except Exception as exc:  # the parent reports it and stops the others
        log.debug("worker failed", exc_info=True)
        _answer(out, {"error": str(exc) or type(exc).__name__})
        return 1
    finally:
        if fleet is not None:
            await fleet.stop()
    _answer(out, {"stopped": True})
    return 0


def main() -> int:
    return asyncio.run(_run(_protocol_stdout()))


if __name__ == "__main__":
    sys.exit(main())

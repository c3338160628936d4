"""A simulated fleet split over worker processes (``tunnelnb sim --workers N``).

One process running 1,000 devices runs their agents, their SSH servers (both ends
of every SSH connection) and the start of every shell on one event loop: it, not
the application, sets the pace of a benchmark (bench/README.md).
:class:`ShardedFleet` plans the fleet as :class:`~tunnelnb.sim.fleet.SimulatedFleet`
does (same profiles, same passwords for the same seed), registers every device
itself, then hands each of ``workers`` processes (:mod:`tunnelnb.sim.worker`) every
``workers``-th device to run.  The parent keeps what an operator or a benchmark asks
for (:meth:`~ShardedFleet.summary`, :meth:`~ShardedFleet.login`, the devices' SSH
ports, the workers' CPU time) and owns the workers' lives:

* :meth:`~ShardedFleet.stop` tells every worker to stop, waits ``stop_timeout``
  seconds, then ends stragglers with SIGTERM and SIGKILL and removes what a killed
  worker left (its sandboxes' loop devices and files);
* a worker that dies on its own sets :meth:`~ShardedFleet.wait_for_failure`, which
  ``tunnelnb sim`` waits on beside SIGINT and SIGTERM: then everything stops;
* a worker whose parent dies, however it dies, sees its stdin end (and gets SIGTERM
  on Linux) and stops its devices: no worker outlives the parent.

Workers run in sessions of their own, so a Ctrl-C in the terminal reaches the
parent only, which stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TunnelnbError
from ..tls import client_ssl
from .fleet import SimulatedFleet
from .profiles import DEFAULT_USER, DeviceProfile
from .registration import register_devices
from .sandbox import remove_dead_root

__all__ = ["ShardedFleet"]

log = logging.getLogger(__name__)

#: Where the tunnelnb package running this lies: the workers import the same one.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: After SIGTERM, how long a worker that did not stop when told gets before SIGKILL.
_KILL_GRACE = 5.0


@dataclass(eq=False)
class _Worker:
    index: int
    profiles: list[DeviceProfile]
    proc: asyncio.subprocess.Process
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    watch: asyncio.Task[None] | None = None

    def describe(self) -> str:
        ids = [p.device_id for p in self.profiles]
        return f"simulated fleet worker {self.index} (pid {self.proc.pid}; {ids[0]} … {ids[-1]})"


class ShardedFleet:
    """N simulated devices run by ``workers`` processes; registered, online and ended by this one.

    Takes :class:`~tunnelnb.sim.fleet.SimulatedFleet`'s arguments, except that TLS is
    given as ``ca_bundle``/``insecure`` (each worker makes its own context) and
    ``agent_options`` must be JSON (they travel to the workers).  ``prebuild=True``
    has each worker start every device's shell once before it reports ready, so no
    login pays for a sandbox's first boot (benchmarks).  ``start_timeout`` bounds a
    worker's start, ``stop_timeout`` its clean stop.

    Use as ``async with ShardedFleet(url, api_token=token, devices=1000, workers=2)``.
    """

    def __init__(
        self,
        platform_url: str,
        *,
        api_token: str,
        workers: int = 2,
        devices: int | Sequence[DeviceProfile] = 8,
        seed: int = 1,
        project_id: str = "demo",
        backend: str = "ssh",
        prefix: str = "device-",
        quirks: str = "none",
        misbehaving: float = 0.1,
        user: str = DEFAULT_USER,
        password: str | None = None,
        sandbox: str = "auto",
        concurrency: int = 64,
        agent_options: dict[str, Any] | None = None,
        ca_bundle: str | None = None,
        insecure: bool = False,
        prebuild: bool = False,
        log_level: str | None = None,
        start_timeout: float = 900.0,
        stop_timeout: float = 60.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        try:
            json.dumps(agent_options or {})
        except (TypeError, ValueError):
            raise ValueError("agent_options must be JSON (numbers, strings, None) to reach the workers") from None
        # The plan: validation, profiles and passwords exactly as one SimulatedFleet makes them.
        self._plan = SimulatedFleet(
            platform_url,
            api_token=api_token,
            devices=devices,
            seed=seed,
            project_id=project_id,
            backend=backend,
            prefix=prefix,
            quirks=quirks,
            misbehaving=misbehaving,
            user=user,
            password=password,
            sandbox=sandbox,
            concurrency=concurrency,
            agent_options=agent_options,
            register=False,
        )
        self.platform_url = self._plan.platform_url
        self.project_id = project_id
        self.workers = workers
        self._api_token = api_token
        self._options = {
            "seed": seed,
            "backend": backend,
            "user": user,
            "sandbox": sandbox,
            "concurrency": concurrency,
            "agent_options": dict(agent_options or {}),
            "ca_bundle": ca_bundle,
            "insecure": insecure,
            "prebuild": prebuild,
        }
        self._ca_bundle, self._insecure = ca_bundle, insecure
        self.log_level = log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._workers: list[_Worker] = []
        self._failed = asyncio.Event()
        self._failure = ""
        self._started = False
        self._stopping = False
        self.started_in: float | None = None

    def __repr__(self) -> str:
        return (
            f"ShardedFleet({self.platform_url!r}, devices={len(self.profiles)}, workers={self.workers}, "
            f"backend={self._options['backend']!r})"
        )

    # -- what the fleet knows (as SimulatedFleet) -------------------------------------

    @property
    def profiles(self) -> list[DeviceProfile]:
        return self._plan.profiles

    @property
    def device_ids(self) -> list[str]:
        return self._plan.device_ids

    @property
    def misbehaving(self) -> dict[str, str]:
        """``{device_id: misbehaviour}`` of the devices that misbehave on purpose."""
        return self._plan.misbehaving

    def login(self) -> tuple[str, str]:
        """The fleet-wide login ``(user, password)``: every device but the ``wrong_password`` ones accepts it."""
        return self._plan.login()

    def credentials(self, device_id: str) -> tuple[str, str]:
        """The login the device accepts; for ``wrong_password`` devices, not the fleet-wide one."""
        return self._plan.credentials(device_id)

    def profile(self, device_id: str) -> DeviceProfile:
        return self._plan.profile(device_id)

    @property
    def sandbox(self) -> str:
        """The sandbox mode the workers chose (``"none"`` before :meth:`start`)."""
        return self._plan.sandbox

    @property
    def data_backend(self) -> str:
        return self._plan.data_backend

    @property
    def ssh_ports(self) -> dict[str, int]:
        """``{device_id: port}`` of every online device's SSH server, from every worker."""
        ports: dict[str, int] = {}
        for w in self._workers:
            ports.update(w.info.get("ssh_ports", {}))
        return ports

    @property
    def worker_pids(self) -> list[int]:
        """The running workers' process ids, worker 1 first."""
        return [w.proc.pid for w in self._workers]

    def worker_of(self, device_id: str) -> int:
        """The process id of the worker that runs the device; KeyError for a device of no running worker."""
        for w in self._workers:
            if any(p.device_id == device_id for p in w.profiles):
                return w.proc.pid
        raise KeyError(device_id)

    @property
    def build_s(self) -> float | None:
        """With ``prebuild``: the slowest worker's time to start every shell once."""
        times = [w.info["build_s"] for w in self._workers if w.info.get("build_s") is not None]
        return max(times) if times else None

    def usage(self) -> dict[str, float]:
        """CPU seconds the live workers used so far: their own, and their ended children's (shells, launchers)."""
        cpu = children = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for w in self._workers:
            try:
                stat = Path(f"/proc/{w.proc.pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            children += (int(fields[13]) + int(fields[14])) / tick
        return {"cpu_s": cpu, "children_cpu_s": children}

    def summary(self) -> list[str]:
        """:class:`SimulatedFleet`'s summary, and a line on the workers."""
        self._plan.started_in = self.started_in
        lines = self._plan.summary()
        parts = [f"worker {w.index} (pid {w.proc.pid}): {len(w.profiles)} devices" for w in self._workers]
        lines.append(f"run by {len(self._workers)} worker processes: " + "; ".join(parts))
        return lines

    async def wait_for_failure(self) -> str:
        """Return once a worker has died on its own (not told to stop): what happened, for the operator."""
        await self._failed.wait()
        return self._failure

    # -- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> ShardedFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Register every device, start the workers; every online device is up on return."""
        if self._started:
            return
        self._started = True
        t0 = time.perf_counter()
        try:
            await register_devices(
                self.platform_url,
                api_token=self._api_token,
                project_id=self.project_id,
                profiles=self.profiles,
                ssl=client_ssl(self._ca_bundle, insecure=self._insecure),
            )
            shards = [s for s in (self._shard(i) for i in range(self.workers)) if s]
            starts = [asyncio.ensure_future(self._start_worker(i + 1, s)) for i, s in enumerate(shards)]
            try:
                await asyncio.gather(*starts)
            finally:  # one failed: the others are stopped with it
                for task in starts:
                    task.cancel()
                await asyncio.gather(*starts, return_exceptions=True)
        except BaseException:
            await self.stop()
            raise
        first = self._workers[0].info if self._workers else {}
        self._plan.sandbox = first.get("sandbox", "none")
        self._plan.data_backend = first.get("data_backend", "directory")
        self.started_in = time.perf_counter() - t0
        log.info("%s", self.summary()[0])

    def _shard(self, i: int) -> list[DeviceProfile]:
        """Every ``workers``-th profile from the ``i``-th, with the password its device accepts."""
        shard = []
        for p in self.profiles[i :: self.workers]:
            password = self.credentials(p.device_id)[1]
            shard.append(dataclasses.replace(p, login_password=password))
        return shard

    async def _start_worker(self, index: int, profiles: list[DeviceProfile]) -> None:
        env = dict(os.environ)  # the workers run this very tunnelnb
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tunnelnb.sim.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # the terminal's Ctrl-C reaches the parent, which stops the workers in order
            env=env,
            limit=1 << 26,
        )
        worker = _Worker(index, profiles, proc)
        self._workers.append(worker)
        password = self.login()[1]
        config = {
            **self._options,
            "index": index,
            "parent_pid": os.getpid(),
            "platform_url": self.platform_url,
            "api_token": self._api_token,
            "project_id": self.project_id,
            "password": password,
            "log_level": self.log_level,
            "profiles": [dataclasses.asdict(p) for p in profiles],
        }
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it ended already: its status tells
            proc.stdin.write(json.dumps(config).encode() + b"\n")  # secrets on the pipe, never on the command line
            await proc.stdin.drain()
        try:
            answer = await asyncio.wait_for(_answer(proc.stdout), self.start_timeout)
        except TimeoutError:
            raise TunnelnbError(
                f"{worker.describe()} did not start its devices within {self.start_timeout:g} s: "
                "give it more time (start_timeout) or fewer devices per worker"
            ) from None
        if "error" in answer:
            raise TunnelnbError(f"{worker.describe()} could not start its devices: {answer['error']}")
        if not answer.get("ready"):
            code = await proc.wait()
            raise TunnelnbError(
                f"{worker.describe()} ended ({_exit_text(code)}) before its devices were up: see its messages above"
            )
        worker.info = answer
        worker.watch = asyncio.create_task(self._watch(worker), name=f"tunnelnb-sim-worker-{index}")

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        if self._stopping:
            return
        self._failure = (
            f"{worker.describe()} ended on its own ({_exit_text(code)}): its devices are offline, "
            "so the simulated fleet stops"
        )
        log.error("%s", self._failure)
        self._failed.set()

    async def stop(self) -> None:
        """Stop every worker (they stop their devices and remove their sandboxes); kill those that do not."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        try:
            await asyncio.gather(*(self._stop_worker(w) for w in self._workers), return_exceptions=True)
        finally:
            for w in self._workers:
                if w.watch is not None:
                    w.watch.cancel()
            self._workers.clear()
            self._started = False
            self._stopping = False

    async def _stop_worker(self, worker: _Worker) -> None:
        proc = worker.proc
        if proc.returncode is None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(b'{"op": "stop"}\n')
                await proc.stdin.drain()
            proc.stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), self.stop_timeout)
            except TimeoutError:
                log.warning("%s did not stop within %g s: ending it", worker.describe(), self.stop_timeout)
                for sig, wait in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, None)):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
                    try:
                        await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
                        break
                    except TimeoutError:
                        continue
        if proc.returncode != 0 and worker.info.get("root"):  # killed: its sandboxes are left to us
            await asyncio.to_thread(remove_dead_root, Path(worker.info["root"]))


async def _answer(stdout: asyncio.StreamReader) -> dict[str, Any]:
    """The worker's first answer (a JSON object); ``{}`` if it ends first.  Other lines are skipped."""
    while line := await stdout.readline():
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            return answer
        log.debug("skipping a line a worker printed: %r", line[:200])
    return {}


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"

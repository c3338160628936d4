"""A simulated device fleet: N devices in one process, each a real agent and a real shell.

``tunnelnb sim --platform URL --devices N`` (or :class:`SimulatedFleet` from Python)
registers N devices on a platform over its REST API, with tags and versions, and runs
the real :class:`~tunnelnb.server.agent.Agent` for each of them.  Behind each agent is a real
``/bin/sh`` on a real PTY: reached through an embedded SSH server of its own
(``backend="ssh"``, the default: one :class:`~tunnelnb.server.sshserver.ShellServer` per
device) or spawned by the agent directly (``backend="local"``, the agent's
``local_shell``: no SSH, lighter).  Shells start only when someone logs in, so an idle
device costs a listening socket and its agent's WebSocket.

Device profiles
---------------
:func:`make_profiles` draws every device from a seed, so the same seed gives the same
fleet on every machine, and devices differ the way real fleets do.  Each device's shell
sees its own profile through ordinary files and commands:

=============================================  ========================================================================
what a notebook runs                           what it finds (profile field)
=============================================  ========================================================================
``cat /etc/device.conf``                       ``key=value`` lines: ``device_id``, ``model``, ``serial``,
                                               ``fw_version``, ``sw_version``, ``role``, ``site``, ``region``,
                                               ``log_level``, ``ntp_server``, ``telemetry_interval_s``,
                                               ``data_partition`` (a few devices drift from the fleet's usual config:
                                               debug logging, another NTP server, a short interval)
``cat /etc/hostname``, ``hostname``            the device id
``grep -c ERROR /var/log/app.log``             ``error_count`` (``WARN``: ``warn_count``; the rest are ``INFO`` lines)
``df -h /data``                                a filesystem of ``disk_size_mb`` MiB, ``disk_used_pct`` % used
``uptime``, ``cat /proc/uptime``               ``uptime_s`` (plus the time since the fleet started), load ``load_avg``
``cat /sys/class/thermal/thermal_zone0/temp``  ``temperature_c`` in millidegrees, as Linux reports it
``find /data -type f``                         the device's data: a config backup, a telemetry database, and recordings
                                               or cache files that take up the used space
=============================================  ========================================================================

Models and roles: ``EG-4200`` (gateway), ``EC-1100`` (edge), ``CAM-720`` (camera) and
``SH-40`` (sensor-hub), each with its own firmware versions (most devices on the latest,
some lagging), disk sizes and temperature range; sites are grouped in regions.  The
platform lists each device with ``product_id`` = model, ``fw_version``, ``sw_version``
and the tags ``role``, ``site``, ``region`` and ``fw``, so ``@edge``, ``@site=munich-01``
or ``@fw=2.1.4`` select devices.  A few devices run hot (above 75 °C), a few rebooted
recently, a few have many errors in their log: that is variation, not misbehaviour.

Misbehaving devices
-------------------
A seeded fraction of the fleet (``misbehaving``, 10 % by default; at least one of each
kind once five or more misbehave) is broken on purpose, so notebooks have something to
find:

==================  =========================================================================================
``misbehaviour``    what happens
==================  =========================================================================================
``slow``            the device's link to the platform passes a loopback proxy that delays everything the
                    device sends by ``link_delay_s`` (0.5-1.5 s): every command takes that much longer
``flaky``           its link passes a proxy that cuts each tunnel connection after a seeded number of bytes
                    from the device (32-128 KB): long outputs are cut mid-command (the application sees
                    ``disconnected``), short commands work until the budget is spent; the agent reconnects
                    with its usual back-off
``wrong_password``  its SSH server (or local shell) expects another password than the fleet-wide login,
                    so logging in with :meth:`SimulatedFleet.login` fails (``auth_failed``);
                    :meth:`SimulatedFleet.credentials` tells the password it does accept
``disk_full``       ``/data`` is 100 % used: writes fail with ``No space left on device`` (ENOSPC), and its
                    log has the errors to show for it
``offline``         registered on the platform but no agent runs: ListDevices says ``OFFLINE``
==================  =========================================================================================

The proxies forward TCP on loopback, which suits the local ``http://`` platform (an
``https://`` one would see its certificate checked against 127.0.0.1).  Besides,
``quirks="mixed"`` makes some agents send what the official C and C# device SDKs send
(see :mod:`tunnelnb.server.agent`), lost output included.

The sandbox
-----------
Each device's shell runs in a sandbox of its own (``sandbox=``: ``"namespace"``,
``"userns"`` or ``"none"``; ``"auto"`` takes the first that works), where
``/etc/device.conf``, ``/var/log/app.log``, ``/proc/uptime``, the thermal zone and a
``/data`` of the profile's size are the device's: see :mod:`tunnelnb.sim.sandbox`.

Scale
-----
Devices start concurrently (``concurrency`` at a time), the open-files limit is raised
to its hard limit, an idle device costs a listening socket (``ssh``) and its agent's
WebSocket, and a login costs the launcher about 30 ms of CPU (two thirds of it Python
starting).  Measured on a 2-vCPU Linux VM (Python 3.11, sandbox ``namespace`` with
ext4 ``/data``; the platform in another process; default 10 % misbehaving, so the
start waits for the ``slow`` devices' delayed handshakes):

=======  =======  ========================  ===========================  ==========
devices  backend  start: wall (CPU)         process RSS (per device)     open files
=======  =======  ========================  ===========================  ==========
10       ssh      0.1 s (0.05 s)            55 MB (idle Python: 52 MB)   33
10       local    0.1 s (0.05 s)            53 MB                        23
100      ssh      1.8 s (0.3 s)             57 MB (49 KB)                218
100      local    1.8 s (0.3 s)             55 MB (30 KB)                120
1,000    ssh      5.2 s (3.8 s)             86 MB (34 KB)                2,090
1,000    local    5.0 s (3.5 s)             78 MB (26 KB)                1,110
=======  =======  ========================  ===========================  ==========

Then ``df -h /data; uptime`` on all 1,000 from a client in another process, 50
devices at a time, every one a first login (its files and its ext4 ``/data`` made on
the spot): 980 ``ok`` and the 20 ``offline`` ones, in 57 s with ``ssh`` (the fleet's
process used 27.5 s of CPU, 108 MB RSS after) and 51 s with ``local`` (15.7 s,
88 MB); the two cores were busy with the client, the platform and the launchers too.
The ``local`` backend is the lighter one (no SSH handshake per login) and still a real
``/bin/sh`` on a real PTY.  One process runs every device's agent, SSH server and shell
start on one event loop, and each shell start blocks that loop until the shell's process
has been forked and exec'd: from a few hundred devices on, :class:`~tunnelnb.sim.workers.ShardedFleet`
(``tunnelnb sim --workers N``) runs them in N processes instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import DeviceAuthError, TunnelnbError
from ..server.agent import Agent
from ..server.oslimits import raise_open_files_limit
from ..server.sshserver import ShellServer
from .profiles import DEFAULT_USER, DeviceProfile, make_profiles
from .proxies import LinkProxy
from .registration import all_or_nothing, device_secret, random_password, register_devices
from .sandbox import SANDBOX_MODES, FleetFiles, probe_launcher, sandbox_candidates

__all__ = ["BACKENDS", "SimulatedFleet", "device_secret"]

log = logging.getLogger(__name__)

BACKENDS = ("ssh", "local")


@dataclass(eq=False)
class _SimDevice:
    profile: DeviceProfile
    directory: Path
    password: str = field(repr=False)
    secret: str = field(repr=False, default="")
    server: ShellServer | None = None
    proxy: LinkProxy | None = None
    agent: Agent | None = None

    @property
    def launcher(self) -> Path:
        return self.directory / "launch"


class SimulatedFleet:
    """N simulated devices on a platform: registered, online, each with its own shell sandbox.

    ``devices`` is a count (profiles from :func:`make_profiles` with ``seed``,
    ``prefix``, ``misbehaving``, ``quirks``) or a list of :class:`DeviceProfile`.
    ``backend="ssh"`` gives each device an embedded SSH server (its agent logs in to
    it); ``"local"`` has the agent spawn the shell itself.  ``password`` is the
    fleet-wide login password (random when None); ``user`` the login user (``ops``).
    ``sandbox`` is one of :data:`SANDBOX_MODES` (see :mod:`tunnelnb.sim.sandbox`).
    ``agent_options`` are passed on to every :class:`~tunnelnb.server.agent.Agent`.
    ``register=False`` skips AddDevice: someone registered the devices already (the
    parent of a fleet run in worker processes, :mod:`tunnelnb.sim.workers`).

    Use as ``async with SimulatedFleet(url, api_token=token, devices=100) as fleet``.
    """

    def __init__(
        self,
        platform_url: str,
        *,
        api_token: str,
        devices: int | Sequence[DeviceProfile] = 8,
        seed: int = 1,
        project_id: str = "demo",
        backend: str = "ssh",
        root: str | os.PathLike[str] | None = None,
        prefix: str = "device-",
        quirks: str = "none",
        misbehaving: float = 0.1,
        user: str = DEFAULT_USER,
        password: str | None = None,
        sandbox: str = "auto",
        concurrency: int = 64,
        agent_options: dict[str, Any] | None = None,
        ssl: Any = True,
        register: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if sandbox not in SANDBOX_MODES:
            raise ValueError(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, not {sandbox!r}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
            raise ValueError(f"user {user!r} is not a valid login name")
        self.platform_url = platform_url.rstrip("/")
        self.project_id = project_id
        self._api_token = api_token
        self.seed = seed
        self.backend = backend
        self.concurrency = concurrency
        self._register = register
        self.agent_options = dict(agent_options or {})
        # An https platform: True verifies with the system CAs, an SSLContext with a CA bundle (tunnelnb.tls).
        self.ssl = ssl
        self.agent_options.setdefault("ssl", ssl)
        if isinstance(devices, int):
            profiles = make_profiles(
                devices, seed=seed, prefix=prefix, misbehaving=misbehaving, user=user, quirks=quirks
            )
        else:  # the fleet's login user is every device's
            profiles = [dataclasses.replace(p, login_user=user) for p in devices]
            if quirks != "none":
                profiles = [p if p.quirks != "none" else dataclasses.replace(p, quirks=quirks) for p in profiles]
        ids = [p.device_id for p in profiles]
        if len(set(ids)) != len(ids):
            raise ValueError("device ids must be unique")
        self.profiles: list[DeviceProfile] = profiles
        self._by_id = {p.device_id: p for p in profiles}
        self._user = user
        self._password = password if password is not None else random_password()
        #: Each device's password: the fleet's, but a password of their own for wrong_password devices.
        self._passwords = {
            p.device_id: p.login_password
            or (random_password() if p.misbehaviour == "wrong_password" else self._password)
            for p in profiles
        }
        self._root_arg = Path(root) if root is not None else None
        self._files = FleetFiles(user)
        self._sandbox_arg = sandbox
        self.sandbox = "none"
        self.data_backend = "directory"
        self._devices: dict[str, _SimDevice] = {}
        self._started = False
        self._stopping = False
        self.started_in: float | None = None

    def __repr__(self) -> str:
        return (
            f"SimulatedFleet({self.platform_url!r}, devices={len(self.profiles)}, backend={self.backend!r}, "
            f"sandbox={self.sandbox!r})"
        )

    # -- what the fleet knows -------------------------------------------------------

    def login(self) -> tuple[str, str]:
        """The fleet-wide login ``(user, password)``: every device but the ``wrong_password`` ones accepts it."""
        return self._user, self._password

    def credentials(self, device_id: str) -> tuple[str, str]:
        """The login the device accepts; for ``wrong_password`` devices, not the fleet-wide one."""
        if device_id not in self._passwords:
            raise KeyError(device_id)
        return self._user, self._passwords[device_id]

    def profile(self, device_id: str) -> DeviceProfile:
        """The device's profile; KeyError for a device not in the fleet."""
        return self._by_id[device_id]

    @property
    def root(self) -> Path | None:
        """The fleet's root directory, with a directory per device (None before :meth:`start`)."""
        return self._files.root

    @property
    def device_ids(self) -> list[str]:
        return [p.device_id for p in self.profiles]

    @property
    def misbehaving(self) -> dict[str, str]:
        """``{device_id: misbehaviour}`` of the devices that misbehave on purpose."""
        return {p.device_id: p.misbehaviour for p in self.profiles if p.misbehaviour}

    def agent(self, device_id: str) -> Agent | None:
        """The device's running agent (None for offline devices or before start)."""
        dev = self._devices.get(device_id)
        return dev.agent if dev is not None else None

    def launcher(self, device_id: str) -> Path:
        """The program that starts the device's shell in its sandbox (run it to look around)."""
        return self._devices[device_id].launcher

    @property
    def ssh_ports(self) -> dict[str, int]:
        """``{device_id: port}`` of the devices' SSH servers (``backend="ssh"``, online devices, once started)."""
        return {d: dev.server.port for d, dev in self._devices.items() if dev.server is not None}

    async def build_sandboxes(self, concurrency: int | None = None) -> tuple[float, int]:
        """Start every online device's shell once (``sh -c true``), so its sandbox exists before any login.

        A device's first login makes its files and its ``/data`` (``mkfs``), which a
        benchmark should not time.  ``concurrency`` launchers at a time (default:
        twice the CPUs).  Returns the seconds it took and how many failed.
        """
        sem = asyncio.Semaphore(concurrency or 2 * (os.cpu_count() or 1))
        failures = 0

        async def one(dev: _SimDevice) -> None:
            nonlocal failures
            async with sem:
                proc = await asyncio.create_subprocess_exec(
                    str(dev.launcher),
                    "-c",
                    "true",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
                if await proc.wait() != 0:
                    failures += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(d) for d in self._devices.values() if d.profile.online))
        return time.perf_counter() - t0, failures

    def summary(self) -> list[str]:
        """A few lines for an operator: how many devices, which backend and sandbox, who misbehaves."""
        online = sum(1 for p in self.profiles if p.online)
        lines = [
            f"{len(self.profiles)} simulated devices on {self.platform_url} (project {self.project_id}): "
            f"{online} online, {len(self.profiles) - online} offline on purpose; backend {self.backend}, "
            f"sandbox {self.sandbox}, /data on {self.data_backend}"
            + (f"; started in {self.started_in:.1f} s" if self.started_in is not None else "")
        ]
        by_kind: dict[str, list[str]] = {}
        for p in self.profiles:
            if p.misbehaviour:
                label = p.device_id + (f" ({p.link_delay_s:g} s)" if p.misbehaviour == "slow" else "")
                by_kind.setdefault(p.misbehaviour, []).append(label)
        if by_kind:
            parts = [f"{kind}: {', '.join(ids)}" for kind, ids in sorted(by_kind.items())]
            lines.append("misbehaving on purpose: " + "; ".join(parts))
        else:
            lines.append("no device misbehaves on purpose")
        return lines

    # -- life cycle -----------------------------------------------------------------

    async def __aenter__(self) -> SimulatedFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Write the sandboxes, register every device, start servers and agents (all online on return)."""
        if self._started:
            return
        self._started = True
        t0 = time.perf_counter()
        try:
            limit = raise_open_files_limit()
            need = 8 * len(self.profiles) + 64
            if limit < need:
                log.warning(
                    "open-files limit %d may be too low for %d devices (about %d needed)",
                    limit,
                    len(self.profiles),
                    need,
                )
            await asyncio.to_thread(self._prepare_files)
            await self._choose_sandbox()
            if self._register:
                await register_devices(
                    self.platform_url,
                    api_token=self._api_token,
                    project_id=self.project_id,
                    profiles=self.profiles,
                    ssl=self.ssl,
                    concurrency=min(self.concurrency, 32),
                )
            for dev in self._devices.values():
                dev.secret = device_secret(self._api_token, self.project_id, dev.profile.device_id)
            await self._start_devices()
        except BaseException:
            await self.stop()
            raise
        self.started_in = time.perf_counter() - t0
        log.info("%s", self.summary()[0])

    async def stop(self) -> None:
        """Stop agents, servers and proxies, end every shell, detach loop devices, remove the root."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        try:
            devices = list(self._devices.values())
            sem = asyncio.Semaphore(self.concurrency)

            async def bounded(coro: Any) -> None:
                async with sem:
                    with contextlib.suppress(Exception):
                        await coro

            await asyncio.gather(*(bounded(d.agent.stop()) for d in devices if d.agent is not None))
            await asyncio.gather(*(bounded(d.server.stop()) for d in devices if d.server is not None))
            await asyncio.gather(*(bounded(d.proxy.close()) for d in devices if d.proxy is not None))
            for d in devices:
                d.agent = d.server = d.proxy = None
            if self._files.root is not None:
                await asyncio.to_thread(self._files.remove)
        finally:
            self._devices.clear()
            self._started = False
            self._stopping = False

    # -- files ------------------------------------------------------------------------

    def _prepare_files(self) -> None:
        self._files.create(self._root_arg)
        now = datetime.now(UTC)
        for p in self.profiles:
            directory = self._files.device_dir(p.device_id)
            dev = _SimDevice(p, directory, self._passwords[p.device_id])
            self._devices[p.device_id] = dev
            if p.online:
                self._files.add_device(p, directory, now)

    # -- sandbox mode -------------------------------------------------------------------

    async def _choose_sandbox(self) -> None:
        probe = next((d for d in self._devices.values() if d.profile.online), None)
        errors = []
        for mode, data in sandbox_candidates(self._sandbox_arg):
            self._files.write_config(mode, data)
            if probe is None or mode == "none":
                break
            ok, detail = await probe_launcher(probe.launcher, probe.profile.device_id)
            if ok:
                break
            errors.append(f"{mode}/{data}: {detail}")
            log.debug("sandbox %s with /data on %s does not work here: %s", mode, data, detail)
        else:
            raise TunnelnbError("no sandbox mode works here: " + "; ".join(errors))
        self.sandbox = mode
        self.data_backend = {"ext4": "ext4 on loop devices", "tmpfs": "tmpfs", "directory": "the host"}[data]
        if errors:
            log.warning("sandbox %s with /data on %s, because %s", mode, self.data_backend, "; ".join(errors))
        if mode == "none":
            log.warning(
                "simulated devices run without a sandbox (no mount namespaces here): their shells start in "
                "their own directory under %s, and absolute paths such as /etc/device.conf are the host's",
                self.root,
            )
        elif data == "tmpfs":
            need = sum(p.disk_size_mb * p.disk_used_pct // 100 for p in self.profiles if p.online)
            log.warning(
                "/data of simulated devices is a tmpfs: each open session holds its used space in memory "
                "(up to %d MiB if every device is logged in at once)",
                need,
            )

    # -- devices -------------------------------------------------------------------

    async def _start_devices(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        url = urlsplit(self.platform_url)
        host = url.hostname or "127.0.0.1"
        port = url.port or (443 if url.scheme == "https" else 80)

        async def start(dev: _SimDevice) -> None:
            p = dev.profile
            async with sem:
                platform_url = self.platform_url
                if p.misbehaviour in ("slow", "flaky"):
                    budgets = None
                    if p.misbehaviour == "flaky":
                        rng = random.Random(f"tunnelnb-sim:{self.seed}:{p.device_id}:cuts")
                        first = [p.link_cut_bytes or 64_000]

                        def budgets() -> int:
                            return first.pop() if first else rng.randint(32_000, 128_000)

                    dev.proxy = LinkProxy(host, port, delay=p.link_delay_s, cut_budgets=budgets)
                    await dev.proxy.start()
                    platform_url = f"{url.scheme}://127.0.0.1:{dev.proxy.port}"
                options: dict[str, Any] = {"quirks": p.quirks, **self.agent_options}
                if self.backend == "ssh":
                    dev.server = ShellServer(
                        users={p.login_user: dev.password}, shell=(str(dev.launcher),), cwd=str(dev.directory)
                    )
                    await dev.server.start()
                    options["ssh_port"] = dev.server.port
                else:
                    options["local_shell"] = (p.login_user, dev.password)
                    options["shell"] = (str(dev.launcher),)
                dev.agent = Agent(platform_url, p.device_id, dev.secret, **options)
                try:
                    await dev.agent.start()
                except DeviceAuthError as exc:
                    raise DeviceAuthError(
                        f"{exc}; device {p.device_id} was registered earlier with another secret (by another "
                        "API token, or not by tunnelnb sim): choose another prefix"
                    ) from None

        await all_or_nothing(start(d) for d in self._devices.values() if d.profile.online)

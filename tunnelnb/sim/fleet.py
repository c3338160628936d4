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

The sandbox: how ``cat /etc/device.conf`` finds the device's file
------------------------------------------------------------------
Each device has a directory under the fleet's root (a temporary directory unless
``root`` is given; :meth:`SimulatedFleet.stop` removes what it made).  At start the
fleet writes only the device's ``device.json`` and its ``launch`` (a symbolic link to
the fleet's launcher), so 1,000 devices start fast; the launcher makes the rest at the
device's first login: ``etc``, ``var/log``, ``home``, ``tmp`` and the ``/data`` seed.
The launcher is the device's shell as far as the SSH server (or the agent's local
shell) knows: before it execs ``/bin/sh`` it builds the device's view of the filesystem
in a new mount namespace and ``chroot``\\ s into it, so the shell stays the session
leader on its PTY (job control and Ctrl-C work as under ``sshd``).  Nothing is
rewritten: the paths are real mounts.  Run ``<root>/<device>/launch`` yourself (as the
fleet's user) to look around as the device.

* ``/usr`` (and ``/bin``, ``/lib``… as the host has them): the host's, read-only;
* ``/etc``: an overlay of the device's ``etc`` (``device.conf``, ``hostname``) and the
  fleet's (``passwd``, ``group`` with the login user) over the host's ``/etc``, read-only;
* ``/var``, ``/home``, ``/tmp``: the device's own directories, persistent; ``/home`` and
  ``/tmp`` are writable by the login user, ``/var/log`` (like a real device's) only by root;
* ``/proc``: the host's, with ``/proc/uptime`` and ``/proc/loadavg`` replaced by the
  profile's (files on a small tmpfs at ``/run``);
* ``/sys``: the host's, read-only, with a tmpfs holding ``class/thermal/thermal_zone0``;
* ``/data``: a real filesystem of the profile's size and usage (see below); the UTS
  namespace carries the device's host name.

Three sandbox modes (``sandbox=``; ``"auto"`` takes the first that works, checked by
starting one device's shell at :meth:`SimulatedFleet.start`):

``"namespace"``
    The fleet runs as root: ``unshare(CLONE_NEWNS | CLONE_NEWUTS)``, and the shell
    drops to an unprivileged user (``ops``, uid 63000 unless taken) after the
    ``chroot``.  ``/data`` is an ext4 image of ``disk_size_mb`` (sparse, created at the
    device's first login, attached to a loop device until the fleet stops), filled to
    ``disk_used_pct`` with ``fallocate``: ``df`` is real, ``ENOSPC`` is real, and the
    fill costs neither memory nor disk.  Where loop devices are not available,
    ``/data`` is a tmpfs instead (see below).
``"userns"``
    Not root, but unprivileged user namespaces work: the same, inside
    ``unshare(CLONE_NEWUSER | …)``; the shell is root in its namespace (the fleet's
    user outside).  ``/data`` is a size-limited tmpfs filled with ``fallocate``: real
    ``df`` and ``ENOSPC``, but the used space costs real memory while a session is
    open (about ``disk_size_mb * disk_used_pct / 100`` MiB per logged-in device).
``"none"``
    No namespaces: a plain ``/bin/sh`` started in the device's directory, so
    ``cat etc/device.conf`` (relative) works, but absolute paths are the host's.
    :meth:`SimulatedFleet.start` logs a warning.

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
``/bin/sh`` on a real PTY.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import pwd
import random
import re
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..client.api import PlatformAPI
from ..errors import DeviceAuthError, PlatformError, TunnelnbError
from ..server.agent import QUIRKS, Agent
from ..server.oslimits import raise_open_files_limit
from ..server.sshserver import ShellServer

__all__ = [
    "MISBEHAVIOURS",
    "MODELS",
    "SANDBOX_MODES",
    "DeviceProfile",
    "SimulatedFleet",
    "app_log",
    "device_conf",
    "make_profiles",
    "raise_open_files_limit",
    "serve",
]

log = logging.getLogger("tunnelnb.sim.fleet")

MISBEHAVIOURS = ("slow", "flaky", "wrong_password", "disk_full", "offline")
SANDBOX_MODES = ("auto", "namespace", "userns", "none")
BACKENDS = ("ssh", "local")

DEFAULT_USER = "ops"
#: uid/gid of the login user inside "namespace" sandboxes (the next free one if the host uses it).
SANDBOX_UID = 63000


@dataclass(frozen=True)
class _Model:
    model: str
    role: str
    weight: int
    firmware: tuple[tuple[str, int], ...]  # version, weight: most devices on the latest
    software: tuple[str, ...]
    disks_mb: tuple[int, ...]
    temp_c: tuple[float, float]  # mean, spread


MODELS: tuple[_Model, ...] = (
    _Model("EC-1100", "edge", 40, firmware=(("2.1.4", 60), ("2.1.3", 25), ("2.0.9", 15)),
           software=("5.3.0", "5.2.2"), disks_mb=(256, 512), temp_c=(54, 6)),
    _Model("EG-4200", "gateway", 15, firmware=(("3.2.1", 55), ("3.2.0", 30), ("3.1.4", 15)),
           software=("5.3.0", "5.1.7"), disks_mb=(512, 1024), temp_c=(47, 5)),
    _Model("CAM-720", "camera", 25, firmware=(("1.8.2", 70), ("1.8.0", 20), ("1.6.5", 10)),
           software=("2.4.1", "2.3.9"), disks_mb=(128, 256), temp_c=(43, 5)),
    _Model("SH-40", "sensor-hub", 20, firmware=(("4.9.1", 65), ("4.7.0", 35)),
           software=("1.12.0",), disks_mb=(64, 128), temp_c=(36, 4)),
)  # fmt: skip

_SITES: tuple[tuple[str, str], ...] = (
    ("shenzhen-01", "cn-south-1"),
    ("shenzhen-02", "cn-south-1"),
    ("shanghai-01", "cn-east-3"),
    ("beijing-01", "cn-north-4"),
    ("singapore-01", "ap-southeast-3"),
    ("munich-01", "eu-west-101"),
    ("johannesburg-01", "af-south-1"),
)

_NTP_DEFAULT = "ntp.tunnelnb.example"


@dataclass(frozen=True)
class DeviceProfile:
    """One simulated device: what it is, how it is doing, and how it misbehaves.

    ``login_password`` is None for devices that accept the fleet-wide login; the
    fleet sets a password of their own for ``wrong_password`` devices (see
    :meth:`SimulatedFleet.credentials`).  ``link_delay_s`` is the ``slow`` devices'
    added latency, ``link_cut_bytes`` the ``flaky`` devices' first cut.
    """

    device_id: str
    model: str
    product_id: str
    role: str
    site: str
    region: str
    serial: str
    fw_version: str
    sw_version: str
    tags: dict[str, str]
    temperature_c: float
    uptime_s: int
    load_avg: float
    disk_size_mb: int
    disk_used_pct: int
    error_count: int
    warn_count: int
    info_count: int
    config: dict[str, str]
    misbehaviour: str | None = None
    quirks: str = "none"
    link_delay_s: float = 0.0
    link_cut_bytes: int = 0
    login_user: str = DEFAULT_USER
    login_password: str | None = field(default=None, repr=False)
    index: int = 0

    @property
    def online(self) -> bool:
        """Does an agent run for this device (everything but ``offline``)?"""
        return self.misbehaviour != "offline"


def _id_width(n: int) -> int:
    return max(2, len(str(n)))


def _weighted(rng: random.Random, items: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([item for item, _ in items], weights=[w for _, w in items])[0]


def _profile(index: int, device_id: str, seed: int, user: str) -> DeviceProfile:
    rng = random.Random(f"tunnelnb-sim:{seed}:{index}")
    m: _Model = rng.choices(MODELS, weights=[m.weight for m in MODELS])[0]
    site, region = rng.choice(_SITES)
    fw = _weighted(rng, m.firmware)
    sw = rng.choice(m.software)
    mean, spread = m.temp_c
    temperature = rng.gauss(mean, spread)
    if rng.random() < 0.04:  # a few run hot: a blocked fan, direct sun
        temperature = rng.uniform(76, 91)
    roll = rng.random()
    if roll < 0.08:  # rebooted recently
        uptime = rng.randint(120, 3 * 3600)
    elif roll < 0.75:
        uptime = rng.randint(2 * 86400, 90 * 86400)
    else:
        uptime = rng.randint(90 * 86400, 420 * 86400)
    load = round(max(0.01, rng.lognormvariate(-1.2, 0.7)), 2)
    used = int(min(96, max(3, rng.betavariate(2.2, 2.6) * 100)))
    if rng.random() < 0.05:
        used = rng.randint(88, 97)  # nearly full: worth a look, not broken
    errors = rng.randint(0, 4) if rng.random() < 0.85 else rng.randint(20, 180)
    warns = rng.randint(0, 25)
    infos = rng.randint(40, 160)
    config = {
        "log_level": "debug" if rng.random() < 0.07 else "info",
        "ntp_server": "pool.ntp.org" if rng.random() < 0.05 else _NTP_DEFAULT,
        "telemetry_interval_s": "5" if rng.random() < 0.06 else "60",
    }
    serial = f"{m.model.split('-')[0]}{seed % 100:02d}{rng.randrange(16**6):06X}"
    return DeviceProfile(
        device_id=device_id,
        model=m.model,
        product_id=m.model,
        role=m.role,
        site=site,
        region=region,
        serial=serial,
        fw_version=fw,
        sw_version=sw,
        tags={"role": m.role, "site": site, "region": region, "fw": fw},
        temperature_c=round(temperature, 1),
        uptime_s=uptime,
        load_avg=load,
        disk_size_mb=rng.choice(m.disks_mb),
        disk_used_pct=used,
        error_count=errors,
        warn_count=warns,
        info_count=infos,
        config=config,
        login_user=user,
        index=index,
    )


def _misbehave(p: DeviceProfile, kind: str, rng: random.Random) -> DeviceProfile:
    changes: dict[str, Any] = {"misbehaviour": kind}
    if kind == "slow":
        changes["link_delay_s"] = round(rng.uniform(0.5, 1.5), 2)
        changes["warn_count"] = p.warn_count + rng.randint(5, 20)  # "high round-trip time" warnings
    elif kind == "flaky":
        changes["link_cut_bytes"] = rng.randint(32_000, 128_000)
        changes["warn_count"] = p.warn_count + rng.randint(10, 30)  # "link down" warnings
    elif kind == "disk_full":
        changes["disk_used_pct"] = 100
        changes["error_count"] = p.error_count + rng.randint(25, 80)  # "No space left on device"
    return dataclasses.replace(p, **changes)


def make_profiles(
    n: int,
    *,
    seed: int = 1,
    prefix: str = "device-",
    misbehaving: float = 0.1,
    user: str = DEFAULT_USER,
    quirks: str = "none",
) -> list[DeviceProfile]:
    """``n`` device profiles, the same for the same arguments on every machine.

    Ids are ``prefix`` plus a zero-padded number (``device-01`` for n < 100,
    ``device-001`` for n < 1000, …).  A device's own attributes depend only on the
    seed and its number, so the first 10 devices of a fleet of 10 and of 1,000 are
    alike; which devices misbehave depends on ``n`` too: ``round(n * misbehaving)``
    of them, the kinds taken in turn (in a seeded order) so all five appear once five
    or more misbehave.  ``quirks`` is an agent quirk mode for every device, or
    ``"mixed"``: most well-behaved, some like the C SDK, some like the C# SDK.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if not 0.0 <= misbehaving <= 1.0:
        raise ValueError("misbehaving is a fraction, from 0 to 1")
    if quirks not in (*QUIRKS, "mixed"):
        raise ValueError(f"quirks must be one of {', '.join((*QUIRKS, 'mixed'))}, not {quirks!r}")
    width = _id_width(n)
    profiles = [_profile(i, f"{prefix}{i:0{width}d}", seed, user) for i in range(1, n + 1)]
    rng = random.Random(f"tunnelnb-sim:{seed}:fleet:{n}")
    count = round(n * misbehaving)
    if count:
        kinds = list(MISBEHAVIOURS)
        rng.shuffle(kinds)
        chosen = sorted(rng.sample(range(n), count))
        order = list(range(count))
        rng.shuffle(order)
        for turn, pos in zip(order, chosen, strict=True):
            profiles[pos] = _misbehave(profiles[pos], kinds[turn % len(kinds)], rng)
    if quirks != "none":
        qrng = random.Random(f"tunnelnb-sim:{seed}:quirks")
        for i, p in enumerate(profiles):
            q = quirks if quirks != "mixed" else _weighted(qrng, (("none", 60), ("c-sdk", 25), ("csharp-sdk", 15)))
            profiles[i] = dataclasses.replace(p, quirks=q)
    return profiles


# ---------------------------------------------------------------------------
# What the device's files say


def device_conf(p: DeviceProfile) -> str:
    """The device's ``/etc/device.conf``: ``key=value`` lines."""
    lines = {
        "device_id": p.device_id,
        "model": p.model,
        "serial": p.serial,
        "fw_version": p.fw_version,
        "sw_version": p.sw_version,
        "role": p.role,
        "site": p.site,
        "region": p.region,
        **p.config,
        "data_partition": f"/data {p.disk_size_mb}M",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


_INFO = (
    "app[{pid}]: telemetry batch sent ({n} points)",
    "app[{pid}]: heartbeat ok",
    "app[{pid}]: config checked, no changes",
    "sensor[{pid2}]: {n} readings collected",
    "net[{pid3}]: link up, rtt {rtt} ms",
    "app[{pid}]: rotated /data/db/telemetry.db",
)
_WARN = (
    "app[{pid}]: telemetry batch retried ({n} points)",
    "sensor[{pid2}]: reading out of range, clamped",
    "app[{pid}]: clock drift {n} ms",
    "net[{pid3}]: dns lookup slow ({rtt} ms)",
)
_ERROR = (
    "app[{pid}]: upload failed: connection timed out",
    "sensor[{pid2}]: read timeout on /dev/ttyS1",
    "app[{pid}]: certificate check failed for {host}",
    "app[{pid}]: worker crashed, restarting",
)
_KIND_LINES = {
    "slow": ("WARN", "net[{pid3}]: high round-trip time to the platform ({rtt} ms)"),
    "flaky": ("WARN", "net[{pid3}]: link down, reconnecting"),
    "disk_full": ("ERROR", "app[{pid}]: write /data/db/telemetry.db failed: No space left on device"),
}


def app_log(p: DeviceProfile, now: datetime | None = None) -> str:
    """The device's ``/var/log/app.log``: exactly ``error_count`` lines with ``ERROR``, ``warn_count`` with ``WARN``."""
    rng = random.Random(f"tunnelnb-sim:log:{p.device_id}:{p.serial}")
    now = now or datetime.now(UTC)
    levels = ["INFO"] * p.info_count + ["WARN"] * p.warn_count + ["ERROR"] * p.error_count
    rng.shuffle(levels)
    special = _KIND_LINES.get(p.misbehaviour or "")
    span = min(p.uptime_s, 3 * 86400)
    start = now - timedelta(seconds=span)
    times = sorted(rng.uniform(0, span) for _ in levels)
    pid, pid2, pid3 = rng.randint(300, 900), rng.randint(300, 900), rng.randint(300, 900)
    out = []
    for level, offset in zip(levels, times, strict=True):
        if special is not None and level == special[0] and rng.random() < 0.7:
            template = special[1]
        else:
            template = rng.choice(_INFO if level == "INFO" else _WARN if level == "WARN" else _ERROR)
        msg = template.format(
            pid=pid, pid2=pid2, pid3=pid3, n=rng.randint(1, 500), rtt=rng.randint(20, 2500), host="mqtt.example"
        )
        stamp = (start + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append(f"{stamp} {level:<5} {msg}\n")
    return "".join(out)


def _data_plan(p: DeviceProfile) -> tuple[dict[str, str | None], list[tuple[str, float]]]:
    """The device's ``/data``: small seed files (None: 4 KiB of random bytes), and the files that fill it.

    The fill files come with their share of the used space.
    """
    rng = random.Random(f"tunnelnb-sim:data:{p.device_id}:{p.serial}")
    seed: dict[str, str | None] = {
        "README": f"{p.model} data partition of {p.device_id}\n",
        "config/app.conf.bak": device_conf(p),
        "db/telemetry.db": None,
    }
    if p.role == "camera":
        count = rng.randint(2, 5)
        names = [f"recordings/rec-{i:04d}.mp4" for i in range(1, count + 1)]
    else:
        count = rng.randint(1, 3)
        names = [f"cache/blob-{i:02d}.bin" for i in range(1, count + 1)]
    weights = [rng.uniform(0.5, 1.5) for _ in names]
    total = sum(weights)
    return seed, [(name, w / total) for name, w in zip(names, weights, strict=True)]


# ---------------------------------------------------------------------------
# The launcher: runs as the device's shell, builds its sandbox, execs /bin/sh.
# It runs under ``python -I -S`` (no site-packages, ~20 ms to start) and uses the
# standard library only.  Kept here as text so that the package stays one module.

_LAUNCHER = r'''
"""tunnelnb simulated device shell: build the device's view of the filesystem, exec /bin/sh.

Usage: python -I -S launch.py DEVICE_DIR [sh arguments...]  (written by tunnelnb.sim.fleet)
"""
import ctypes
import errno
import fcntl
import json
import os
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWUSER = 0x20000, 0x4000000, 0x10000000
LOOP_SET_FD, LOOP_CTL_GET_FREE = 0x4C00, 0x4C82
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


def _b(s):
    return None if s is None else os.fsencode(s)


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, what + ": " + os.strerror(e))


def mount(src, target, fstype=None, flags=0, data=None):
    _check(libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), "mount " + target)


def bind(src, target, rec=False, ro=False):
    mount(src, target, None, MS_BIND | (MS_REC if rec else 0))
    if ro:
        f = os.statvfs(target).f_flag
        keep = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
        if f & 4096:  # ST_RELATIME
            keep |= MS_RELATIME
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


def write(path, data, mode=0o644, owner=None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view):]
        if owner is not None:
            os.fchown(fd, owner, owner)
    finally:
        os.close(fd)


def makedirs(path, owner=None):
    if not os.path.isdir(path):
        makedirs(os.path.dirname(path), owner)
        os.mkdir(path, 0o755)
        if owner is not None:
            os.chown(path, owner, owner)


def materialize(sbx, dev):
    """At the device's first login: its files, from device.json (the fleet writes only that)."""
    if os.path.exists(sbx + "/.made"):
        return
    owner = dev["uid"] if os.getuid() == 0 and dev["uid"] != 0 else None
    for rel, text in dev["files"].items():
        makedirs(os.path.dirname(os.path.join(sbx, rel)))
        write(os.path.join(sbx, rel), text)
    makedirs(sbx + "/tmp")
    os.chmod(sbx + "/tmp", 0o1777)
    makedirs(sbx + "/home")
    home = sbx + "/home/" + dev["user"]
    makedirs(home, owner)
    write(home + "/.profile", "# " + dev["hostname"] + "\n", owner=owner)
    makedirs(sbx + "/data.seed", owner)
    for rel, text in dev["seed"].items():
        path = os.path.join(sbx, "data.seed", rel)
        makedirs(os.path.dirname(path), owner)
        write(path, os.urandom(4096) if text is None else text, owner=owner)
    write(sbx + "/.made", "")


def run(argv, logfile):
    """Run a helper (mkfs) with stdio away from the terminal; its stderr goes to logfile."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawn(argv[0], argv, {"PATH": PATH}, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_OPEN, 2, logfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        ])
    finally:
        os.close(devnull)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        with open(logfile, errors="replace") as f:
            raise SetupError(argv[0] + " failed: " + f.read().strip()[-300:])


def backing_file(dev):
    try:
        with open("/sys/block/" + os.path.basename(dev) + "/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def attach_loop(image):
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(64):
            dev = "/dev/loop%d" % fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            img = os.open(image, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, LOOP_SET_FD, img)
                return dev
            except OSError as exc:  # another device took it meanwhile
                if exc.errno != errno.EBUSY:
                    raise
            finally:
                os.close(img)
                os.close(fd)
        raise SetupError("no free loop device")
    finally:
        os.close(ctl)


def fallocate(path, size, uid, gid):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if size > 0:
            os.posix_fallocate(fd, 0, size)
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def fill(top, dev, uid, gid):
    """Take up the profile's share of /data with allocated (not written) files."""
    st = os.statvfs(top)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    want = max(0, int(total * dev["disk_used_pct"] / 100) - used)
    paths = []
    for rel, share in dev["fill"]:
        path = os.path.join(top, rel)
        size = int(want * share) // 65536 * 65536
        try:
            fallocate(path, size, uid, gid)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        paths.append(path)
    for sub in {rel.split("/")[0] for rel, _ in dev["fill"]}:
        os.chown(os.path.join(top, sub), uid, gid)
    if dev["disk_used_pct"] >= 100 and paths:  # to the last block: ENOSPC for everyone
        fd = os.open(paths[-1], os.O_WRONLY | os.O_CLOEXEC)
        try:
            for step in (1 << 24, 1 << 20, 1 << 16, 4096, 1024):
                while True:
                    try:
                        os.posix_fallocate(fd, os.fstat(fd).st_size, step)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)


def copy_tree(src, dst, uid, gid):
    for parent, dirs, files in os.walk(src):
        rel = os.path.relpath(parent, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        for d in dirs:
            os.makedirs(os.path.join(target, d), exist_ok=True)
            os.chown(os.path.join(target, d), uid, gid)
        for name in files:
            with open(os.path.join(parent, name), "rb") as f:
                data = f.read()
            fd = os.open(os.path.join(target, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)


def mount_data(sbx, root, fleet, dev, uid, gid):
    """Mount the device's /data (the caller holds the device's lock)."""
    target = root + "/data"
    mb = dev["disk_size_mb"]
    if fleet["data"] != "ext4":  # tmpfs: real df and ENOSPC; the used space is memory while the session lasts
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=755,uid=%d,gid=%d" % (mb, uid, gid))
        copy_tree(sbx + "/data.seed", target, uid, gid)
        fill(target, dev, uid, gid)
        return
    # ext4 in a sparse image, made at the first login; every login of the device mounts the same
    # loop device (so they share one filesystem), attached until the fleet stops.
    image = sbx + "/data.img"
    try:
        with open(sbx + "/.loopdev") as f:
            loop = f.read().strip()
    except FileNotFoundError:
        loop = ""
    if not loop or backing_file(loop) != image:
        if not os.path.exists(sbx + "/.data.made"):
            fd = os.open(image, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.ftruncate(fd, mb << 20)
            os.close(fd)
            run([fleet["mkfs"], "-q", "-F", "-t", "ext4", "-O", "^has_journal,^resize_inode", "-m", "0",
                 "-N", "1024", "-L", "data", "-E", "root_owner=%d:%d" % (uid, gid),
                 "-d", sbx + "/data.seed", image], sbx + "/.mkfs.log")
            write(sbx + "/.data.made", "")
        loop = attach_loop(image)
        write(sbx + "/.loopdev", loop + "\n")
    mount(loop, target, "ext4", MS_NOSUID | MS_NODEV)
    try:  # ext4 holds back 2 % (at most 16 MiB) for itself; the device's df should not show that
        write("/sys/fs/ext4/" + os.path.basename(loop) + "/reserved_clusters", "0")
    except OSError:
        pass
    if not os.path.exists(sbx + "/.data.filled"):
        fill(target, dev, uid, gid)
        write(sbx + "/.data.filled", "")


def sandbox(sbx, fleet, dev):
    """Enter the device's namespaces and root; its home directory."""
    root = fleet["rootfs"]
    mode = fleet["mode"]
    drop = mode == "namespace" and dev["user"] != "root"
    uid, gid = (fleet["uid"], fleet["gid"]) if drop else (0, 0)
    outer_uid, outer_gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWUTS | (CLONE_NEWUSER if mode == "userns" else 0)
    _check(libc.unshare(flags), "unshare")
    if mode == "userns":
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", "0 %d 1" % outer_uid)
        write("/proc/self/gid_map", "0 %d 1" % outer_gid)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host
    for name in fleet["ro_binds"]:
        bind("/" + name, root + "/" + name, rec=True, ro=True)
    lower = ":".join([sbx + "/etc", fleet["etc"], "/etc"])
    mount("tunnelnb-etc", root + "/etc", "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV, "lowerdir=" + lower)
    bind(sbx + "/var", root + "/var")
    bind(sbx + "/home", root + "/home")
    bind(sbx + "/tmp", root + "/tmp")
    bind("/dev", root + "/dev", rec=True)
    bind("/proc", root + "/proc", rec=True)
    mount("tunnelnb-run", root + "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=256k,mode=755")
    os.mkdir(root + "/run/sim", 0o755)
    uptime = dev["uptime_s"] + max(0.0, time.time() - fleet["epoch"])
    write(root + "/run/sim/uptime", "%.2f %.2f\n" % (uptime, uptime * fleet["ncpu"] * 0.93))
    load = dev["load_avg"]
    write(root + "/run/sim/loadavg", "%.2f %.2f %.2f 1/%d %d\n" % (
        load, load * 0.9, load * 0.8, 60 + dev["index"] % 40, 1000 + os.getpid() % 30000))
    bind(root + "/run/sim/uptime", root + "/proc/uptime")
    bind(root + "/run/sim/loadavg", root + "/proc/loadavg")
    bind("/sys", root + "/sys", rec=True, ro=True)
    thermal = root + "/sys/class/thermal"
    if os.path.isdir(thermal):
        mount("tunnelnb-thermal", thermal, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755")
        os.mkdir(thermal + "/thermal_zone0", 0o755)
        write(thermal + "/thermal_zone0/temp", "%d\n" % dev["temp_milli"])
        write(thermal + "/thermal_zone0/type", "soc-thermal\n")
    mount_data(sbx, root, fleet, dev, uid, gid)
    name = dev["hostname"].encode()
    _check(libc.sethostname(name, len(name)), "sethostname")
    os.chroot(root)
    home = "/root" if dev["user"] == "root" else "/home/" + dev["user"]
    os.chdir(home if os.path.isdir(home) else "/")
    if drop:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return home


def main():
    sbx = os.path.abspath(sys.argv[1])
    args = sys.argv[2:]
    with open(sbx + "/device.json") as f:
        dev = json.load(f)
    with open(dev["fleet_config"]) as f:
        fleet = json.load(f)
    env = {"PATH": PATH, "USER": dev["user"], "LOGNAME": dev["user"], "SHELL": "/bin/sh"}
    for key, value in os.environ.items():
        if key in ("TERM", "LANG", "TZ") or key.startswith("LC_"):
            env[key] = value
    try:
        lock = os.open(sbx + "/.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)  # one login at a time builds the device's files and /data
        materialize(sbx, dev)
        if fleet["mode"] == "none":
            os.chdir(sbx)
            env["HOME"] = env["PWD"] = sbx
        else:
            env["HOME"] = env["PWD"] = sandbox(sbx, fleet, dev)
        os.close(lock)
    except (OSError, SetupError, KeyError, ValueError) as exc:
        sys.stderr.write("tunnelnb sim: cannot build the sandbox of %s: %s\n" % (dev["hostname"], exc))
        sys.exit(126)
    os.execve("/bin/sh", ["sh", *args], env)


main()
'''


def _free_uid(start: int) -> int:
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def _safe_dirname(device_id: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", device_id)
    if name.startswith("."):
        name = "_" + name[1:]
    base, n = name, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _device_secret(api_token: str, project_id: str, device_id: str) -> str:
    """A device secret known only to holders of the API token, and stable across restarts.

    A restarted ``tunnelnb sim`` finds its devices registered already; with the same
    secret their agents link again instead of failing authentication.
    """
    return hmac.new(api_token.encode(), f"tunnelnb-sim:{project_id}:{device_id}".encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------
# Misbehaving links: a loopback TCP proxy between a device's agent and the platform


class _LinkProxy:
    """Forwards a device's connections to the platform; delays or cuts what the device sends.

    ``delay``: seconds added to every byte from the device (order kept, throughput
    not throttled).  ``cut_budgets``: a callable giving, for each new tunnel
    connection (``…/device-connect``), how many bytes from the device it carries
    before the proxy cuts it (TCP reset on both sides).  The device link is never cut.
    """

    def __init__(
        self, host: str, port: int, *, delay: float = 0.0, cut_budgets: Callable[[], int] | None = None
    ) -> None:
        self.upstream = (host, port)
        self.delay = delay
        self.cut_budgets = cut_budgets
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conns.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            self._conns.add(up_writer)
            first = await reader.read(65536)
            if not first:
                return
            budget = None
            if self.cut_budgets is not None and b"/device-connect" in first.split(b"\r\n", 1)[0]:
                budget = self.cut_budgets()
            pumps = [
                asyncio.create_task(self._upstream(reader, up_writer, first, budget)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The proxy is closing.  A stream server's handler must not end cancelled:
            # asyncio (3.11) would log the CancelledError as an unhandled exception.
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._conns.discard(w)
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes, budget: int | None
    ) -> None:
        """Device → platform: delayed by ``delay``, cut after ``budget`` bytes (the request head is free)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def feed() -> None:
            queue.put_nowait((loop.time() + self.delay, first))
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait((loop.time() + self.delay, b""))

        feeder = asyncio.create_task(feed())
        sent = -len(first)
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if budget is not None and sent + len(data) > budget:
                    writer.write(data[: max(0, budget - sent)])
                    self.cuts += 1
                    log.info("flaky link: cutting a tunnel connection after %d bytes", budget)
                    return
                sent += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await feeder


# ---------------------------------------------------------------------------
# The fleet


@dataclass(eq=False)
class _SimDevice:
    profile: DeviceProfile
    directory: Path
    password: str = field(repr=False)
    secret: str = field(repr=False, default="")
    server: ShellServer | None = None
    proxy: _LinkProxy | None = None
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
    ``sandbox`` is one of :data:`SANDBOX_MODES` (see the module docstring).
    ``agent_options`` are passed on to every :class:`~tunnelnb.server.agent.Agent`.

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
        self._password = password if password is not None else _random_password()
        #: Each device's password: the fleet's, but a password of their own for wrong_password devices.
        self._passwords = {
            p.device_id: p.login_password
            or (_random_password() if p.misbehaviour == "wrong_password" else self._password)
            for p in profiles
        }
        self._root_arg = Path(root) if root is not None else None
        self.root: Path | None = None
        self._made_root = False
        self._made: list[Path] = []  # what start() made in a root it was given
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
            await self._register_all()
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
            if self.root is not None:
                await asyncio.to_thread(self._remove_files)
        finally:
            self._devices.clear()
            self._started = False
            self._stopping = False

    # -- files ------------------------------------------------------------------------

    def _prepare_files(self) -> None:
        def check(root: Path) -> None:
            if re.search(r"[:,\\\s]", str(root)):  # overlayfs options cannot carry them
                raise ValueError(f"the fleet's root {root} must not contain ':', ',', '\\' or white space")

        if self._root_arg is None:
            _sweep_stale_roots(Path(tempfile.gettempdir()))
            root, made = Path(tempfile.mkdtemp(prefix="tunnelnb-sim-")), True
            try:
                check(root)
            except ValueError:
                root.rmdir()
                raise
        else:
            root = self._root_arg.resolve()
            check(root)
            if root.exists() and any(root.iterdir()):
                raise ValueError(f"the fleet's root {root} must be empty or not exist yet")
            made = not root.exists()
            root.mkdir(parents=True, exist_ok=True)
        # From here on stop() removes what start() made, and only that.
        self.root, self._made_root = root, made
        os.chmod(self.root, 0o700)  # the devices see their files through mounts, others see nothing
        fleet = self._fleet_dir = self.root / ".fleet"
        fleet.mkdir()
        self._made.append(fleet)
        (fleet / _OWNER_FILE).write_text(str(os.getpid()))
        # A process that ends without stop() (a notebook kernel shut down, sys.exit) still cleans up.
        atexit.register(self._remove_files_at_exit)
        (fleet / "launch.py").write_text(_LAUNCHER)
        # Each device's ``launch`` is a symbolic link to this script, which finds the device by its own name.
        (fleet / "launch").write_text(
            "#!/bin/sh\n"
            "# the shell of a simulated device (tunnelnb.sim.fleet): run <device directory>/launch\n"
            "case $0 in */*) d=${0%/*} ;; *) d=. ;; esac\n"
            f'exec {shlex.quote(sys.executable)} -I -S {shlex.quote(str(fleet / "launch.py"))} "$d" "$@"\n'
        )
        os.chmod(fleet / "launch", 0o755)
        uid = _free_uid(SANDBOX_UID)
        self._uid = uid
        self._write_fleet_etc(fleet / "etc", uid)
        self._ro_binds = self._make_rootfs(fleet / "rootfs")
        now = datetime.now(UTC)
        taken: set[str] = set()
        for p in self.profiles:
            directory = self.root / _safe_dirname(p.device_id, taken)
            dev = _SimDevice(p, directory, self._passwords[p.device_id])
            self._devices[p.device_id] = dev
            if p.online:
                self._made.append(directory)
                self._write_device(dev, now)

    def _write_fleet_etc(self, etc: Path, uid: int) -> None:
        etc.mkdir()
        user = self._user
        try:
            passwd = Path("/etc/passwd").read_text()
            group = Path("/etc/group").read_text()
        except OSError:
            passwd, group = "root:x:0:0:root:/root:/bin/sh\n", "root:x:0:\n"
        if user != "root" and not re.search(rf"^{re.escape(user)}:", passwd, re.M):
            passwd += f"{user}:x:{uid}:{uid}:tunnelnb simulated device user:/home/{user}:/bin/sh\n"
            group += f"{user}:x:{uid}:\n"
        (etc / "passwd").write_text(passwd)
        (etc / "group").write_text(group)

    @staticmethod
    def _make_rootfs(rootfs: Path) -> list[str]:
        """The skeleton every device's sandbox is mounted on; the host directories to bind read-only."""
        rootfs.mkdir()
        binds = ["usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / name
            if host.is_symlink():
                (rootfs / name).symlink_to(os.readlink(host))
            elif host.is_dir():
                (rootfs / name).mkdir()
                binds.append(name)
        for name in ("usr", "etc", "var", "home", "tmp", "dev", "proc", "sys", "run", "data", "root", "mnt", "opt"):
            (rootfs / name).mkdir(exist_ok=True)
        os.chmod(rootfs / "tmp", 0o1777)
        os.chmod(rootfs / "root", 0o700)
        return binds

    def _write_device(self, dev: _SimDevice, now: datetime) -> None:
        """The device's directory, its ``device.json`` and its launcher: three entries, so 1,000 devices start fast.

        The launcher makes the rest (``etc``, ``var``, ``home``, ``tmp``, ``/data``) at the first login.
        """
        p, d = dev.profile, dev.directory
        d.mkdir()
        seed, fill = _data_plan(p)
        config = {
            "hostname": p.device_id,
            "user": p.login_user,
            "uid": self._uid if os.geteuid() == 0 and p.login_user != "root" else os.geteuid(),
            "index": p.index,
            "uptime_s": p.uptime_s,
            "load_avg": p.load_avg,
            "temp_milli": round(p.temperature_c * 1000),
            "disk_size_mb": p.disk_size_mb,
            "disk_used_pct": p.disk_used_pct,
            "files": {
                "etc/device.conf": device_conf(p),
                "etc/hostname": p.device_id + "\n",
                "var/log/app.log": app_log(p, now),
            },
            "seed": seed,
            "fill": fill,
            "fleet_config": str(self._fleet_dir / "fleet.json"),
        }
        (d / "device.json").write_text(json.dumps(config))
        dev.launcher.symlink_to(os.path.join("..", ".fleet", "launch"))

    def _write_fleet_config(self, mode: str, data: str) -> None:
        assert self.root is not None
        config = {
            "mode": mode,
            "data": data,
            "rootfs": str(self.root / ".fleet" / "rootfs"),
            "etc": str(self.root / ".fleet" / "etc"),
            "ro_binds": self._ro_binds,
            "uid": self._uid,
            "gid": self._uid,
            "epoch": time.time(),
            "ncpu": os.cpu_count() or 1,
            "mkfs": shutil.which("mkfs.ext4", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "",
        }
        tmp = self.root / ".fleet" / "fleet.json.tmp"
        tmp.write_text(json.dumps(config))
        tmp.replace(self.root / ".fleet" / "fleet.json")

    def _remove_files_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self._remove_files()

    def _remove_files(self) -> None:
        assert self.root is not None
        atexit.unregister(self._remove_files_at_exit)
        _detach_loops(self.root)
        if self._made_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            for path in self._made:
                shutil.rmtree(path, ignore_errors=True)
        self._made.clear()
        if self._made_root and self.root.exists():
            log.warning("could not remove all of %s", self.root)

    # -- sandbox mode -------------------------------------------------------------------

    def _candidates(self) -> list[tuple[str, str]]:
        loops = os.path.exists("/dev/loop-control") and shutil.which(
            "mkfs.ext4", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        )
        root = os.geteuid() == 0
        namespace = [("namespace", "ext4")] if loops else []
        namespace.append(("namespace", "tmpfs"))
        choices = {
            "namespace": namespace,
            "userns": [("userns", "tmpfs")],
            "none": [("none", "directory")],
        }
        if self._sandbox_arg != "auto":
            return choices[self._sandbox_arg]
        order = (namespace if root else []) + choices["userns"] + choices["none"]
        return order

    async def _choose_sandbox(self) -> None:
        probe = next((d for d in self._devices.values() if d.profile.online), None)
        errors = []
        for mode, data in self._candidates():
            self._write_fleet_config(mode, data)
            if probe is None or mode == "none":
                break
            ok, detail = await _probe_launcher(probe.launcher, probe.profile.device_id)
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

    # -- platform -------------------------------------------------------------------

    async def _register_all(self) -> None:
        sem = asyncio.Semaphore(min(self.concurrency, 32))
        async with PlatformAPI(
            self.platform_url, project_id=self.project_id, api_token=self._api_token, ssl=self.ssl
        ) as api:

            async def register(dev: _SimDevice) -> None:
                p = dev.profile
                dev.secret = _device_secret(self._api_token, self.project_id, p.device_id)
                async with sem:
                    try:
                        await api.add_device(
                            p.device_id,
                            dev.secret,
                            device_id=p.device_id,
                            device_name=p.device_id,
                            product_id=p.product_id,
                            fw_version=p.fw_version,
                            sw_version=p.sw_version,
                            tags=p.tags,
                        )
                    except PlatformError as exc:
                        if exc.status != 409:
                            raise
                        log.info("device %s is registered already: reusing it", p.device_id)

            await _all_or_nothing(register(d) for d in self._devices.values())

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

                    dev.proxy = _LinkProxy(host, port, delay=p.link_delay_s, cut_budgets=budgets)
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

        await _all_or_nothing(start(d) for d in self._devices.values() if d.profile.online)


async def _all_or_nothing(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently; at the first failure cancel the others, wait for them, raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:  # cancelled ourselves
        pending = set(tasks)
        raise
    finally:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    errors = [exc for t in tasks if not t.cancelled() and (exc := t.exception()) is not None]
    if errors:  # every exception retrieved, the first raised
        raise errors[0]


def _random_password() -> str:
    """A random login password."""
    return secrets.token_urlsafe(12)


async def _probe_launcher(launcher: Path, device_id: str) -> tuple[bool, str]:
    """Start the device's shell once, non-interactively: does its sandbox come up?"""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(launcher),
            "-c",
            "cat /etc/hostname",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return False, str(exc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False, "timed out"
    if proc.returncode == 0 and out.decode(errors="replace").strip() == device_id:
        return True, ""
    return False, (err.decode(errors="replace").strip() or f"exit status {proc.returncode}")[-300:]


_LOOP_CLR_FD = 0x4C01


def _attached_loops(root: Path) -> Iterator[str]:
    """Loop devices whose backing file lies under ``root``."""
    prefix = str(root) + os.sep
    with contextlib.suppress(OSError):
        for name in os.listdir("/sys/block"):
            if not name.startswith("loop"):
                continue
            try:
                backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
            except OSError:
                continue
            if backing.startswith(prefix):
                yield f"/dev/{name}"


_OWNER_FILE = "owner.pid"


def _sweep_stale_roots(tmp: Path) -> None:
    """Remove the roots that fleets of dead processes left in ``tmp`` (killed before any clean-up).

    A root names its owner in ``.fleet/owner.pid``; while that process lives, the root is its own.
    """
    for root in tmp.glob("tunnelnb-sim-*"):
        try:
            pid = int((root / ".fleet" / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: no owner recorded
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, someone else's
        log.info("removing %s, left by process %d", root, pid)
        _detach_loops(root)
        shutil.rmtree(root, ignore_errors=True)


def _detach_loops(root: Path) -> None:
    for dev in _attached_loops(root):
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("cannot detach %s: %s", dev, exc)
            continue
        try:
            fcntl.ioctl(fd, _LOOP_CLR_FD, 0)  # while still mounted somewhere, it detaches once unmounted
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                log.warning("cannot detach %s: %s", dev, exc)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------
# The ``tunnelnb sim`` command


async def serve(*, stop: asyncio.Event | None = None, out: Callable[[str], None] | None = None, **kwargs: Any) -> None:
    """Run a simulated fleet until SIGINT or SIGTERM (the ``tunnelnb sim`` command).

    ``kwargs`` are :class:`SimulatedFleet`'s (``platform_url``, ``api_token``,
    ``devices``, …).  Prints a summary once every device is up; with no
    ``password`` it makes one up and prints it once, as ``tunnelnb platform`` does
    with its API token.  ``stop`` ends it early (for tests); ``out`` replaces print.
    """
    emit = out or (lambda line: print(line, flush=True))
    generated = kwargs.get("password") is None
    fleet = SimulatedFleet(**kwargs)
    loop = asyncio.get_running_loop()
    stopping = stop or asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stopping.set)
            installed.append(sig)
    try:
        await fleet.start()
        for line in fleet.summary():
            emit(line)
        user, password = fleet.login()
        if generated:
            emit(
                f"no login password given; the devices accept user {user!r} with: "
                f"export TUNNELNB_LOGIN_PASSWORD={password}"
            )
        else:
            emit(f"login: user {user!r} with the password given")
        await stopping.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await fleet.stop()
        emit("simulated fleet stopped")

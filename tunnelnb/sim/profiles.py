"""Device profiles and what their files say: drawn from a seed, the same on every machine.

:func:`make_profiles` draws the fleet (models, firmware, sites, health, who misbehaves);
:func:`device_conf`, :func:`app_log` and :func:`data_plan` turn a profile into the
device's ``/etc/device.conf``, ``/var/log/app.log`` and ``/data``.  Pure functions of the
profile, kept apart from the running fleet (:mod:`tunnelnb.sim.fleet`) so they can be
used and tested without a platform.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..server.agent import QUIRKS

__all__ = [
    "DEFAULT_USER",
    "MISBEHAVIOURS",
    "MODELS",
    "DeviceProfile",
    "app_log",
    "data_plan",
    "device_conf",
    "make_profiles",
]

MISBEHAVIOURS = ("slow", "flaky", "wrong_password", "disk_full", "offline")

DEFAULT_USER = "ops"


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


def data_plan(p: DeviceProfile) -> tuple[dict[str, str | None], list[tuple[str, float]]]:
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

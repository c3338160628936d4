"""The devices' sandboxes: the fleet's root directory, and the loop devices and roots left behind.

:class:`FleetFiles` makes a fleet's root (the launcher, the fleet's ``/etc`` and root
file system skeleton, each device's ``device.json``), writes the sandbox mode the fleet
chose, and removes it all again; :func:`probe_launcher` checks that a mode works here.
What runs inside a sandbox is :mod:`tunnelnb.sim.launcher`.

How ``cat /etc/device.conf`` finds the device's file
----------------------------------------------------
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
* ``/proc``: the device's own, mounted fresh in a PID namespace of its own, so ``ps``
  and ``/proc`` show the login's processes only (the shell is its PID 1) and no
  environment of the host's processes is in reach; where no PID namespace or ``/proc``
  mount is allowed (see :mod:`tunnelnb.sim.launcher`), the host's.  ``/proc/uptime`` and
  ``/proc/loadavg`` are replaced by the profile's (files on a small tmpfs at ``/run``);
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
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from . import launcher
from .profiles import DeviceProfile, app_log, data_plan, device_conf

__all__ = [
    "SANDBOX_MODES",
    "SANDBOX_UID",
    "FleetFiles",
    "attached_loops",
    "find_mkfs",
    "probe_launcher",
    "remove_dead_root",
    "sandbox_candidates",
]

log = logging.getLogger(__name__)

SANDBOX_MODES = ("auto", "namespace", "userns", "none")
#: uid/gid of the login user inside "namespace" sandboxes (the next free one if the host uses it).
SANDBOX_UID = 63000

_OWNER_FILE = "owner.pid"
_LOOP_CLR_FD = 0x4C01


class FleetFiles:
    """A fleet's root directory: what every device's sandbox is built from, and a directory per device.

    :meth:`create` makes the root (a new temporary directory, or ``root``: empty or not
    there yet) with the fleet's part in ``.fleet``: the launcher, ``etc`` and the
    ``rootfs`` skeleton; :meth:`add_device` a device's directory, :meth:`write_config`
    the sandbox mode, and :meth:`remove` removes what they made, and only that (at the
    process's exit too, should it end without).  ``user`` is the devices' login user.
    """

    def __init__(self, user: str) -> None:
        self.user = user
        self.root: Path | None = None
        self.uid = SANDBOX_UID
        self._made_root = False
        self._made: list[Path] = []  # what create() made in a root it was given
        self._ro_binds: list[str] = []
        self._taken: set[str] = set()

    @property
    def fleet_dir(self) -> Path:
        assert self.root is not None
        return self.root / ".fleet"

    def create(self, root: Path | None) -> None:
        """Make the root and the fleet's part of it; ``root`` None: a new temporary directory."""

        def check(root: Path) -> None:
            if re.search(r"[:,\\\s]", str(root)):  # overlayfs options cannot carry them
                raise ValueError(f"the fleet's root {root} must not contain ':', ',', '\\' or white space")

        if root is None:
            _sweep_stale_roots(Path(tempfile.gettempdir()))
            root, made = Path(tempfile.mkdtemp(prefix="tunnelnb-sim-")), True
            try:
                check(root)
            except ValueError:
                root.rmdir()
                raise
        else:
            root = root.resolve()
            check(root)
            if root.exists() and any(root.iterdir()):
                raise ValueError(f"the fleet's root {root} must be empty or not exist yet")
            made = not root.exists()
            root.mkdir(parents=True, exist_ok=True)
        # From here on remove() removes what create() made, and only that.
        self.root, self._made_root = root, made
        self._taken = set()
        os.chmod(self.root, 0o700)  # the devices see their files through mounts, others see nothing
        fleet = self.fleet_dir
        fleet.mkdir()
        self._made.append(fleet)
        (fleet / _OWNER_FILE).write_text(str(os.getpid()))
        # A process that ends without stop() (a notebook kernel shut down, sys.exit) still cleans up.
        atexit.register(self._remove_at_exit)
        shutil.copyfile(launcher.__file__, fleet / "launch.py")
        # Each device's ``launch`` is a symbolic link to this script, which finds the device by its own name.
        (fleet / "launch").write_text(
            "#!/bin/sh\n"
            "# the shell of a simulated device (tunnelnb.sim): run <device directory>/launch\n"
            "case $0 in */*) d=${0%/*} ;; *) d=. ;; esac\n"
            f'exec {shlex.quote(sys.executable)} -I -S {shlex.quote(str(fleet / "launch.py"))} "$d" "$@"\n'
        )
        os.chmod(fleet / "launch", 0o755)
        self.uid = _free_uid(SANDBOX_UID)
        self._write_etc(fleet / "etc")
        self._ro_binds = _make_rootfs(fleet / "rootfs")

    def device_dir(self, device_id: str) -> Path:
        """The directory of a device: its id, made safe as a file name and unique in the root."""
        assert self.root is not None
        name = re.sub(r"[^A-Za-z0-9._-]", "_", device_id)
        if name.startswith("."):
            name = "_" + name[1:]
        base, n = name, 1
        while name in self._taken:
            n += 1
            name = f"{base}-{n}"
        self._taken.add(name)
        return self.root / name

    def add_device(self, p: DeviceProfile, directory: Path, now: datetime) -> None:
        """The device's directory, its ``device.json`` and its launcher: three entries, so 1,000 devices start fast.

        The launcher makes the rest (``etc``, ``var``, ``home``, ``tmp``, ``/data``) at the first login.
        """
        self._made.append(directory)
        directory.mkdir()
        seed, fill = data_plan(p)
        config = {
            "hostname": p.device_id,
            "user": p.login_user,
            "uid": self.uid if os.geteuid() == 0 and p.login_user != "root" else os.geteuid(),
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
            "fleet_config": str(self.fleet_dir / "fleet.json"),
        }
        (directory / "device.json").write_text(json.dumps(config))
        (directory / "launch").symlink_to(os.path.join("..", ".fleet", "launch"))

    def write_config(self, mode: str, data: str) -> None:
        """What every launcher reads: the sandbox ``mode`` and where ``/data`` lives (``ext4``, ``tmpfs``…)."""
        config = {
            "mode": mode,
            "data": data,
            "rootfs": str(self.fleet_dir / "rootfs"),
            "etc": str(self.fleet_dir / "etc"),
            "ro_binds": self._ro_binds,
            "uid": self.uid,
            "gid": self.uid,
            "epoch": time.time(),
            "ncpu": os.cpu_count() or 1,
            "mkfs": find_mkfs() or "",
        }
        tmp = self.fleet_dir / "fleet.json.tmp"
        tmp.write_text(json.dumps(config))
        tmp.replace(self.fleet_dir / "fleet.json")

    def remove(self) -> None:
        """Detach the devices' loop devices, remove what :meth:`create` and :meth:`add_device` made."""
        assert self.root is not None
        atexit.unregister(self._remove_at_exit)
        _detach_loops(self.root)
        if self._made_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            for path in self._made:
                shutil.rmtree(path, ignore_errors=True)
        self._made.clear()
        if self._made_root and self.root.exists():
            log.warning("could not remove all of %s", self.root)

    def _remove_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.remove()

    def _write_etc(self, etc: Path) -> None:
        etc.mkdir()
        user, uid = self.user, self.uid
        try:
            passwd = Path("/etc/passwd").read_text()
            group = Path("/etc/group").read_text()
        except OSError:
            passwd, group = "root:x:0:0:root:/root:/bin/sh\n", "root:x:0:\n"
        if user != "root":
            # The device's login user is the fleet's, whatever account of that name the host has
            # (a host user "ops" with another uid must not leave the device's uid nameless).
            own = re.compile(rf"^{re.escape(user)}:.*\n?", re.M)
            passwd = own.sub("", passwd) + f"{user}:x:{uid}:{uid}:tunnelnb simulated device user:/home/{user}:/bin/sh\n"
            group = own.sub("", group) + f"{user}:x:{uid}:\n"
        (etc / "passwd").write_text(passwd)
        (etc / "group").write_text(group)


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


def _free_uid(start: int) -> int:
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def find_mkfs() -> str | None:
    """``mkfs.ext4``, on the PATH or in the sbin directories."""
    return shutil.which("mkfs.ext4", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def sandbox_candidates(sandbox: str) -> list[tuple[str, str]]:
    """The ``(mode, /data)`` pairs to try, best first, for a ``sandbox`` of :data:`SANDBOX_MODES`."""
    loops = os.path.exists("/dev/loop-control") and find_mkfs()
    root = os.geteuid() == 0
    namespace = [("namespace", "ext4")] if loops else []
    namespace.append(("namespace", "tmpfs"))
    choices = {
        "namespace": namespace,
        "userns": [("userns", "tmpfs")],
        "none": [("none", "directory")],
    }
    if sandbox != "auto":
        return choices[sandbox]
    order = (namespace if root else []) + choices["userns"] + choices["none"]
    return order


async def probe_launcher(launch: Path, device_id: str) -> tuple[bool, str]:
    """Start the device's shell once, non-interactively: does its sandbox come up?"""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(launch),
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


def attached_loops(root: Path) -> Iterator[str]:
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
        remove_dead_root(root)


def remove_dead_root(root: Path) -> None:
    """Detach the loop devices of a fleet whose process is gone, and remove its root.

    For a root its process could not remove: killed, or a worker process that
    died (:mod:`tunnelnb.sim.workers`).  Only a tunnelnb fleet's root is touched.
    """
    if not (root / ".fleet" / _OWNER_FILE).is_file():
        return
    _detach_loops(root)
    shutil.rmtree(root, ignore_errors=True)


def _detach_loops(root: Path) -> None:
    for dev in attached_loops(root):
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

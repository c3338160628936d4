"""The shell of a simulated device: build the device's view of the filesystem, exec /bin/sh.

Usage: ``python -I -S launch.py DEVICE_DIR [sh arguments...]``.  The fleet copies this
file into its root (``.fleet/launch.py``, see :mod:`tunnelnb.sim.sandbox`), and each
device's ``launch`` script runs it as the device's login shell: it makes the device's
files at its first login, enters its namespaces, mounts its ``/etc``, ``/proc``, ``/sys``
and ``/data`` and ``chroot``\\ s into them, then execs ``/bin/sh``.  It runs in isolated
mode without ``site`` (about 20 ms to start), so it imports the standard library only,
and not even :mod:`typing` at run time.

The shell gets a PID namespace of its own where the kernel allows one, with a
fresh ``/proc``: a device's login sees its own processes only, not the host's,
and cannot read the environment of the fleet's processes (the platform's API
token, the devices' secrets).  The launcher forks into it: the child is the
namespace's PID 1 and becomes the shell; the launcher stays outside, waits for it
and exits as it does, so to the SSH server or the agent nothing changes.  Where
the namespace cannot be made, or no ``/proc`` can be mounted in it (user
namespaces under a ``/proc`` with parts masked, as in many containers), the
shell sees the host's ``/proc`` as before.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing at run time: it costs a tenth of the start
    from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x4000000, 0x10000000, 0x20000000
PR_SET_PDEATHSIG = 1
LOOP_SET_FD, LOOP_CTL_GET_FREE = 0x4C00, 0x4C82
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """The sandbox cannot be built (a helper failed, no free loop device)."""


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, what + ": " + os.strerror(e))


def mount(src: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    _check(libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), "mount " + target)


def bind(src: str, target: str, rec: bool = False, ro: bool = False) -> None:
    mount(src, target, None, MS_BIND | (MS_REC if rec else 0))
    if ro:
        f = os.statvfs(target).f_flag
        keep = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
        if f & 4096:  # ST_RELATIME
            keep |= MS_RELATIME
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


def write(path: str, data: str | bytes, mode: int = 0o644, owner: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view) :]
        if owner is not None:
            os.fchown(fd, owner, owner)
    finally:
        os.close(fd)


def makedirs(path: str, owner: int | None = None) -> None:
    if not os.path.isdir(path):
        makedirs(os.path.dirname(path), owner)
        os.mkdir(path, 0o755)
        if owner is not None:
            os.chown(path, owner, owner)


def materialize(sbx: str, dev: dict[str, Any]) -> None:
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


def run(argv: list[str], logfile: str) -> None:
    """Run a helper (mkfs) with stdio away from the terminal; its stderr goes to logfile."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            {"PATH": PATH},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_OPEN, 2, logfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            ],
        )
    finally:
        os.close(devnull)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        with open(logfile, errors="replace") as f:
            raise SetupError(argv[0] + " failed: " + f.read().strip()[-300:])


def backing_file(dev: str) -> str | None:
    try:
        with open("/sys/block/" + os.path.basename(dev) + "/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def attach_loop(image: str) -> str:
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(64):
            dev = f"/dev/loop{fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)}"
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


def fallocate(path: str, size: int, uid: int, gid: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if size > 0:
            os.posix_fallocate(fd, 0, size)
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def fill(top: str, dev: dict[str, Any], uid: int, gid: int) -> None:
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


def copy_tree(src: str, dst: str, uid: int, gid: int) -> None:
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


def mount_data(sbx: str, root: str, fleet: dict[str, Any], dev: dict[str, Any], uid: int, gid: int) -> None:
    """Mount the device's /data (the caller holds the device's lock)."""
    target = root + "/data"
    mb = dev["disk_size_mb"]
    if fleet["data"] != "ext4":  # tmpfs: real df and ENOSPC; the used space is memory while the session lasts
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={mb}m,mode=755,uid={uid},gid={gid}")
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
            options = ["-q", "-F", "-t", "ext4", "-O", "^has_journal,^resize_inode", "-m", "0", "-N", "1024"]
            options += ["-L", "data", "-E", f"root_owner={uid}:{gid}", "-d", sbx + "/data.seed"]
            run([fleet["mkfs"], *options, image], sbx + "/.mkfs.log")
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


def sandbox(sbx: str, fleet: dict[str, Any], dev: dict[str, Any]) -> str:
    """Enter the device's namespaces and root; its home directory."""
    root = fleet["rootfs"]
    mode = fleet["mode"]
    drop = mode == "namespace" and dev["user"] != "root"
    uid, gid = (fleet["uid"], fleet["gid"]) if drop else (0, 0)
    outer_uid, outer_gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWUTS | (CLONE_NEWUSER if mode == "userns" else 0)
    pidns = libc.unshare(flags | CLONE_NEWPID) == 0
    if not pidns:  # no PID namespace here (a seccomp filter, a limit): the host's processes stay visible
        _check(libc.unshare(flags), "unshare")
    if mode == "userns":
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", f"0 {outer_uid} 1")
        write("/proc/self/gid_map", f"0 {outer_gid} 1")
    if pidns:
        become_pid1()  # from here on: the namespace's first process, which becomes the shell
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host
    for name in fleet["ro_binds"]:
        bind("/" + name, root + "/" + name, rec=True, ro=True)
    lower = ":".join([sbx + "/etc", fleet["etc"], "/etc"])
    mount("tunnelnb-etc", root + "/etc", "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV, "lowerdir=" + lower)
    bind(sbx + "/var", root + "/var")
    bind(sbx + "/home", root + "/home")
    bind(sbx + "/tmp", root + "/tmp")
    bind("/dev", root + "/dev", rec=True)
    mount_proc(root + "/proc", pidns)
    mount("tunnelnb-run", root + "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=256k,mode=755")
    os.mkdir(root + "/run/sim", 0o755)
    uptime = dev["uptime_s"] + max(0.0, time.time() - fleet["epoch"])
    write(root + "/run/sim/uptime", f"{uptime:.2f} {uptime * fleet['ncpu'] * 0.93:.2f}\n")
    load = dev["load_avg"]
    tasks, last_pid = 60 + dev["index"] % 40, 1000 + os.getpid() % 30000
    write(root + "/run/sim/loadavg", f"{load:.2f} {load * 0.9:.2f} {load * 0.8:.2f} 1/{tasks} {last_pid}\n")
    bind(root + "/run/sim/uptime", root + "/proc/uptime")
    bind(root + "/run/sim/loadavg", root + "/proc/loadavg")
    bind("/sys", root + "/sys", rec=True, ro=True)
    thermal = root + "/sys/class/thermal"
    if os.path.isdir(thermal):
        mount("tunnelnb-thermal", thermal, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755")
        os.mkdir(thermal + "/thermal_zone0", 0o755)
        write(thermal + "/thermal_zone0/temp", f"{dev['temp_milli']}\n")
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
    if pidns:  # a change of user clears it: set it again (the shell dies with the launcher outside)
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    return home


def mount_proc(target: str, pidns: bool) -> None:
    """A fresh ``/proc`` of the device's PID namespace, else the host's (see the module's docstring)."""
    if pidns:
        try:
            mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            return
        except OSError:
            pass
    bind("/proc", target, rec=True)


def become_pid1() -> None:
    """Fork into the new PID namespace: the child returns, the parent waits for it and exits as it does.

    The parent stays the session leader on the terminal; the shell shares its process
    group until it takes one of its own, so the parent ignores what the terminal sends
    that group (Ctrl-C, Ctrl-Z, Ctrl-backslash), and dies of a hang-up, taking the
    namespace with it (the child's parent-death signal is SIGKILL).
    """
    ignored = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
    for sig in ignored:
        signal.signal(sig, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        for sig in ignored:
            signal.signal(sig, signal.SIG_DFL)
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        return
    os.closerange(3, 1024)  # the device's lock, above all: the next login must not wait for this one
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        os._exit(1)
    if os.WIFSIGNALED(status):
        killer = os.WTERMSIG(status)
        signal.signal(killer, signal.SIG_DFL)
        os.kill(os.getpid(), killer)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def main() -> None:
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
        sys.stderr.write(f"tunnelnb sim: cannot build the sandbox of {dev['hostname']}: {exc}\n")
        sys.exit(126)
    os.execve("/bin/sh", ["sh", *args], env)


if __name__ == "__main__":
    main()

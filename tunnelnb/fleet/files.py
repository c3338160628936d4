"""Files in and out of many devices: :func:`get` and :func:`put`, one row per device.

They fan out through :meth:`Fleet.each`, so a device that is offline, refuses
the login or drops is a row like in :meth:`Fleet.run`, and each run is in
:attr:`Fleet.history` (its ``command`` is ``get PATH`` or ``put PATH``).  One
device's transfer is :meth:`DeviceSession.get_file` / ``put_file``
(:mod:`tunnelnb.client.transfer`): checksummed both ways, atomic on the device.

A get writes ``LOCAL_DIR/DEVICE_ID/NAME``, atomically too (a temporary file in
the same directory, then a rename), and never over an existing file unless
``overwrite=True``: such a device is not contacted, and its row says so.
``NAME`` is the remote file's name, or its relative path (without ``..``)
when the remote path is relative.  Each file is held in memory while it
arrives: ``concurrency`` bounds how many at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..client.result import CommandResult, ResultStatus
from ..client.session import DeviceSession
from ..client.transfer import DEFAULT_TIMEOUT_S, FileResult
from ..errors import TunnelnbError
from .devicerun import DeviceWork
from .results import Results
from .transfers import TransferResults, TransferRow

if TYPE_CHECKING:
    from .fleet import Fleet, ResultCallback

__all__ = ["DEFAULT_TIMEOUT_S", "FleetProgress", "get", "local_name", "put", "remote_destination"]

#: ``on_progress(device_id, done_bytes, total_bytes)``.
FleetProgress = Callable[[str, int, int], None]


def local_name(remote_path: str) -> PurePosixPath:
    """Where under ``LOCAL_DIR/DEVICE_ID/`` a get puts ``remote_path``: its relative path, else its name.

    ``/var/log/app.log`` → ``app.log``; ``logs/app.log`` and ``~/logs/app.log`` →
    ``logs/app.log``; a relative path with ``..`` → its name.
    """
    path = remote_path[2:] if remote_path.startswith("~/") else remote_path
    pure = PurePosixPath(path)
    if not pure.name or pure.name in (".", "..") or remote_path.endswith("/"):
        raise TunnelnbError(f"{remote_path!r} names a directory: give a file's path")
    if pure.is_absolute() or ".." in pure.parts:
        return PurePosixPath(pure.name)
    return PurePosixPath(*[p for p in pure.parts if p != "."])


def remote_destination(local_path: str | os.PathLike[str], remote_path: str) -> str:
    """``remote_path``, or ``remote_path`` + the local file's name when it ends with ``/`` (a directory)."""
    return remote_path + Path(local_path).name if remote_path.endswith("/") else remote_path


def _for_device(on_progress: FleetProgress | None, device_id: str) -> Callable[[int, int], None] | None:
    if on_progress is None:
        return None
    return lambda done, total: on_progress(device_id, done, total)


def _row(result: CommandResult, path: str, moved: dict[str, FileResult]) -> TransferRow:
    done = moved.get(result.device_id)
    ok = result.status == ResultStatus.OK and done is not None
    return TransferRow(
        result.device_id,
        path,
        done.size if ok and done is not None else None,
        done.sha256 if ok and done is not None else "",
        result.status,
        result.duration_s,
        result.error,
    )


def _command_row(device_id: str, label: str, done: FileResult) -> CommandResult:
    code = 0 if done.ok else None
    return CommandResult(device_id, label, done.status, code, "", done.duration_s, done.started_at, done.error)


def _write_atomically(dest: Path, data: bytes, overwrite: bool) -> None:
    """``data`` into ``dest`` through a temporary file beside it: all or nothing, never over a file unless told."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tnb-partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(temp, dest)
            return
        try:
            os.link(temp, dest)  # FileExistsError if one appeared meanwhile: it is never replaced
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links
            if dest.exists():
                raise FileExistsError(dest) from None
            os.replace(temp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


async def get(
    fleet: Fleet,
    remote_path: str,
    targets: str | Iterable[str] = "*",
    local_dir: str | os.PathLike[str] = ".",
    *,
    overwrite: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    concurrency: int | None = None,
    on_progress: FleetProgress | None = None,
    on_result: ResultCallback | None = None,
    batch: int | str | None = None,
    max_errors: int | str | None = None,
    canary: int | None = None,
) -> TransferResults:
    """Copy ``remote_path`` from every target to ``local_dir/DEVICE_ID/NAME``; one row per device.

    ``timeout`` is each exchange's with a device's shell (one moves about a
    megabyte) and the login's; ``on_progress(device_id, done, total)`` follows
    the bytes; the rest is :meth:`Fleet.each`'s.
    """
    name = local_name(remote_path)
    label = f"get {remote_path}"
    if not fleet.inventory:
        await fleet.refresh()
    ids = fleet.select(targets)
    paths = {d: Path(local_dir) / d / name for d in ids}
    refused = {d: refused_error(paths[d]) for d in ids if paths[d].exists() and not overwrite}
    moved: dict[str, FileResult] = {}

    async def work(session: DeviceSession) -> CommandResult:
        device_id = session.device_id
        done = await session.get_file(remote_path, timeout=timeout, on_progress=_for_device(on_progress, device_id))
        if done.ok and done.data is not None:
            try:
                await asyncio.to_thread(_write_atomically, paths[device_id], done.data, overwrite)
            except FileExistsError:
                done.status, done.error = ResultStatus.ERROR, refused_error(paths[device_id])
            except OSError as exc:
                done.status = ResultStatus.ERROR
                done.error = f"cannot write {paths[device_id]}: {exc.strerror or exc}"
            done.data = None  # written: not kept in memory with the rows
        moved[device_id] = done
        return _command_row(device_id, label, done)

    todo = [d for d in ids if d not in refused]
    results = await _each(fleet, label, todo, work, timeout, concurrency, on_result, batch, max_errors, canary)
    by_id = {r.device_id: r for r in results}
    now = datetime.now(UTC)
    for d, error in refused.items():
        by_id[d] = CommandResult(d, label, ResultStatus.ERROR, None, "", 0.0, now, error)
    rows = [_row(by_id[d], str(paths[d]), moved) for d in ids]
    return TransferResults("get", remote_path, rows, Results(by_id[d] for d in ids))


def refused_error(path: Path) -> str:
    """A get's row when the local file is there already."""
    return f"{path} exists: pass overwrite=True (--force) to replace it"


async def put(
    fleet: Fleet,
    local_path: str | os.PathLike[str],
    remote_path: str,
    targets: str | Iterable[str] = "*",
    *,
    keep_mode: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    concurrency: int | None = None,
    on_progress: FleetProgress | None = None,
    on_result: ResultCallback | None = None,
    batch: int | str | None = None,
    max_errors: int | str | None = None,
    canary: int | None = None,
) -> TransferResults:
    """Write the local file ``local_path`` to ``remote_path`` on every target; one row per device.

    A ``remote_path`` ending in ``/`` is a directory: the file keeps its name.
    ``keep_mode`` gives the remote file the local file's permission bits (else
    a replaced file keeps its own, a new one gets 0666 less the umask).  The
    file lands whole and checked, or not at all (:meth:`DeviceSession.put_file`).
    A local file that cannot be read raises :class:`TunnelnbError`: no device is
    contacted.
    """
    try:
        data = await asyncio.to_thread(Path(local_path).read_bytes)
        mode = stat.S_IMODE(os.stat(local_path).st_mode) if keep_mode else None
    except OSError as exc:
        raise TunnelnbError(f"cannot read {local_path}: {exc.strerror or exc}") from None
    destination = remote_destination(local_path, remote_path)
    label = f"put {destination}"
    digest = hashlib.sha256(data).hexdigest()
    moved: dict[str, FileResult] = {}

    async def work(session: DeviceSession) -> CommandResult:
        device_id = session.device_id
        progress = _for_device(on_progress, device_id)
        done = await session.put_file(data, destination, mode=mode, timeout=timeout, on_progress=progress)
        assert not done.ok or done.sha256 == digest
        moved[device_id] = done
        return _command_row(device_id, label, done)

    results = await _each(fleet, label, targets, work, timeout, concurrency, on_result, batch, max_errors, canary)
    rows = [_row(r, destination, moved) for r in results]
    return TransferResults("put", destination, rows, results)


async def _each(
    fleet: Fleet,
    label: str,
    targets: str | Iterable[str],
    work: DeviceWork,
    timeout: float,
    concurrency: int | None,
    on_result: ResultCallback | None,
    batch: int | str | None,
    max_errors: int | str | None,
    canary: int | None,
) -> Results:
    """:meth:`Fleet.each` (no rows when there is no target left)."""
    if isinstance(targets, list) and not targets:
        return Results([])
    return await fleet.each(
        label,
        targets,
        work,
        timeout=timeout,
        concurrency=concurrency,
        on_result=on_result,
        batch=batch,
        max_errors=max_errors,
        canary=canary,
    )

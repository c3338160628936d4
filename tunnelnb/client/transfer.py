"""Files in and out of one device through its shell: ``get`` and ``put`` (scripts: :mod:`tunnelnb.protocol.transfer`).

A get reads the file's checksums, then the file in exchanges of about a
megabyte as shaped parts (:class:`~tunnelnb.protocol.dump.DumpReader`, the
reader of verified runs), then again, checksummed, what did not arrive intact,
at most :data:`MAX_REREADS` times; the bytes are exact (the whole file's
``cksum`` and, where the device has ``sha256sum``, its sha256) or the result
says what failed.  A put writes a temporary file beside the destination in
blocks the device checksums, sends again the blocks that do not match (at most
:data:`MAX_RESENDS` times), and moves the file into place only once the device
has checked it whole: never a partial file at the destination.

The session hands in its ``_execute`` (:class:`~tunnelnb.client.verified.Execute`)
and holds its command lock and states (:meth:`DeviceSession.get_file`,
:meth:`DeviceSession.put_file`); this module holds the exchanges.  Each
exchange with the shell moves at most about a megabyte and has ``timeout``
seconds: a timeout or a lost connection raises, as in a run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from ..errors import DeviceDisconnected, TunnelError
from ..protocol.cksum import cksum
from ..protocol.dump import DumpReader
from ..protocol.putfile import (
    PUT_BATCH_BLOCKS,
    PUT_BLOCK_BYTES,
    free_bytes,
    parse_put_finish,
    parse_put_prepare,
    parse_put_writes,
    put_abort_script,
    put_blocks_script,
    put_finish_script,
    put_prepare_script,
    temp_name,
    temp_word,
)
from ..protocol.transfer import (
    END_LINE,
    GET_LAYOUT,
    GET_RANGE_PARTS,
    GET_VAR,
    get_range_script,
    get_stat_script,
    parse_get_stat,
)
from ..protocol.verify import DAMAGED, reread_script
from .result import ResultStatus
from .verified import END_GRACE_S, Execute

if TYPE_CHECKING:
    from .session import DeviceSession

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_REREADS",
    "MAX_RESENDS",
    "FileResult",
    "Outcome",
    "Progress",
    "download",
    "get_file",
    "guarded",
    "put_file",
    "upload",
]

log = logging.getLogger(__name__)

#: Seconds each exchange with the device's shell may take (one moves at most about a megabyte).
DEFAULT_TIMEOUT_S = 120.0
#: Rounds of re-reading the parts of a get that did not arrive intact: the first ones shaped, the rest checksummed.
MAX_REREADS = 6
SHAPED_REREADS = 3
#: Rounds of sending again the blocks of a put whose checksum on the device did not match.
MAX_RESENDS = 3
#: Tries at an exchange whose few lines of answer arrived damaged (a get's checksums, a put's preparation).
STAT_TRIES = 3
#: Parts per re-read exchange (four processes each on the device).
REREAD_PARTS = 256
#: Bytes between two progress reports within an exchange.
PROGRESS_STEP = 256 * 1024

#: ``on_progress(done_bytes, total_bytes)``.
Progress = Callable[[int, int], None]


@dataclass
class Outcome:
    """What a get or a put came to (the session adds the device, the path and the times)."""

    status: str
    error: str = ""
    size: int | None = None
    sha256: str = ""
    data: bytes | None = None

    def result(self, device_id: str, path: str, started_at: datetime, duration_s: float) -> FileResult:
        return FileResult(
            device_id, path, self.status, self.size, self.sha256, duration_s, started_at, self.error, self.data
        )


async def guarded(work: Callable[[Execute], Awaitable[Outcome]], execute: Execute, timeout: float) -> Outcome:
    """``work(execute)``; a timeout or a lost connection is its outcome (as in a run), not an exception."""
    try:
        return await work(execute)
    except TimeoutError:
        return Outcome(ResultStatus.TIMEOUT, f"the device's shell did not answer within {timeout:g} s; sent Ctrl-C")
    except (DeviceDisconnected, TunnelError) as exc:
        return Outcome(ResultStatus.DISCONNECTED, str(exc))


@dataclass
class FileResult:
    """One file in or out of one device: its status, size and sha256, and (a get) its bytes.

    ``sha256`` is the hex digest of the bytes that arrived (get) or were sent
    (put), checked against the device's ``sha256sum`` where it has one (its
    ``cksum`` always).  ``path`` is the remote path.
    """

    device_id: str
    path: str
    status: str
    size: int | None
    sha256: str
    duration_s: float
    started_at: datetime
    error: str = ""
    data: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == ResultStatus.OK


async def get_file(
    session: DeviceSession,
    remote_path: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    on_progress: Progress | None = None,
) -> FileResult:
    """The bytes of ``remote_path`` on the session's device (:meth:`DeviceSession.get_file`)."""
    return await session.get_file(remote_path, timeout=timeout, on_progress=on_progress)


async def put_file(
    session: DeviceSession,
    data_or_path: bytes | str | os.PathLike[str],
    remote_path: str,
    *,
    mode: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    on_progress: Progress | None = None,
) -> FileResult:
    """Write ``data_or_path`` (bytes, or a local file's path) to ``remote_path`` (:meth:`DeviceSession.put_file`)."""
    data = data_or_path if isinstance(data_or_path, bytes) else _read_local(data_or_path)
    return await session.put_file(data, remote_path, mode=mode, timeout=timeout, on_progress=on_progress)


def _read_local(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def _exchange(
    execute: Execute, script: Callable[[str], str], timeout: float, on_text: Callable[[str], None] | None = None
) -> str:
    """Type ``script(marker_id)``; return what it printed (done at its end marker, or soon after its last line)."""
    chunks: list[str] = []
    tail = [""]
    end = END_LINE + "\n"

    def collect(text: str) -> None:
        chunks.append(text)
        tail[0] = (tail[0] + text)[-64:]
        if on_text is not None:
            on_text(text)

    await execute(script, timeout, on_output=collect, settled=lambda: end in tail[0], grace=END_GRACE_S)
    return "".join(chunks)


# -- get ------------------------------------------------------------------------------------

_GET_ERRORS = {
    "noent": "{path}: no such file on the device",
    "isdir": "{path}: is a directory: give a file's path",
    "notfile": "{path}: not a regular file (a device, a pipe or a socket): only files can be copied",
    "perm": "{path}: permission denied: the login user cannot read it",
}


class _Counter:
    """Progress within exchanges, reported every :data:`PROGRESS_STEP` bytes and at the end."""

    def __init__(self, total: int, on_progress: Progress | None) -> None:
        self.total, self.on_progress, self.reported = total, on_progress, -1

    def estimate(self, start: int, chars_per_byte: float) -> Callable[[str], None]:
        """An exchange's ``on_text`` that reports ``start`` plus the bytes its text so far stands for."""
        seen = [0]

        def on_text(text: str) -> None:
            seen[0] += len(text)
            self.report(start + int(seen[0] / chars_per_byte))

        return on_text

    def writes(self, blocks: list[bytes], confirmed: set[int]) -> Callable[[str], None]:
        """A put exchange's ``on_text`` that reports the blocks confirmed so far, these included."""
        seen: list[str] = []

        def on_text(text: str) -> None:
            seen.append(text)
            written = parse_put_writes("".join(seen)).written
            self.report(sum(len(blocks[i]) for i in confirmed | written.keys()))

        return on_text

    def report(self, done: int, *, force: bool = False) -> None:
        done = min(done, self.total)
        if self.on_progress is not None and (force or done - self.reported >= PROGRESS_STEP) and done != self.reported:
            self.reported = done
            self.on_progress(done, self.total)


async def download(execute: Execute, path: str, timeout: float, on_progress: Progress | None = None) -> Outcome:
    """Read ``path`` from the device, exactly, or say why not."""
    stat = None
    for _ in range(STAT_TRIES):
        text = await _exchange(execute, partial(get_stat_script, path=path), timeout)
        stat = parse_get_stat(text)
        if stat is not None:
            break
    if stat is None:
        return Outcome(ResultStatus.ERROR, error=f"{DAMAGED}: the file's checksums never arrived intact")
    if stat.error:
        return Outcome(ResultStatus.ERROR, error=_GET_ERRORS[stat.error].format(path=path))
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(text)  # its trailer: the whole file's cksum
    size, part = stat.size, GET_LAYOUT.part_bytes
    counter = _Counter(size, on_progress)
    chars_per_byte = 4 / 3 if stat.encoding == "b64" else 3.0
    for first in range(0, -(-size // part), GET_RANGE_PARTS):
        count = min(GET_RANGE_PARTS, -(-size // part) - first)
        script = partial(get_range_script, first=first, count=count, awk=stat.awk)
        reader.feed(await _exchange(execute, script, timeout, counter.estimate(first * part, chars_per_byte)))
        counter.report((first + count) * part)
    data = await _reread(execute, reader, timeout, size=size, awk=stat.awk)
    if data is None:
        return Outcome(ResultStatus.ERROR, f"{DAMAGED}: {reader.failed()}", size)
    digest = hashlib.sha256(data).hexdigest()
    if stat.sha256 and digest != stat.sha256:
        error = f"{path} changed while it was read (its sha256 is not the one it had at the start): try again"
        return Outcome(ResultStatus.ERROR, error, size)
    counter.report(size, force=True)
    return Outcome(ResultStatus.OK, "", len(data), digest, data)


async def _reread(execute: Execute, reader: DumpReader, timeout: float, *, size: int, awk: bool) -> bytes | None:
    """Read again what has not arrived intact; the file's bytes, or None.

    The first :data:`SHAPED_REREADS` rounds read the wanted parts shaped again
    (with ``awk``: three processes for all of them), the rest checksummed (four
    processes a part, but a part with stray bytes in it is repaired by its CRC).
    """
    data = reader.data()
    for round_ in range(MAX_REREADS):
        if data is not None:
            break
        parts, tail_from = reader.wanted()
        if tail_from is None:  # the size is known: not the parts past the end
            parts = [k for k in parts if k * GET_LAYOUT.part_bytes < size]
        shaped = awk and round_ < SHAPED_REREADS and parts and tail_from is None
        step = GET_RANGE_PARTS if shaped else REREAD_PARTS
        log.debug("get: re-reading %d parts %s", len(parts), "shaped" if shaped else "checksummed")
        groups = [parts[i : i + step] for i in range(0, len(parts), step)] or [[]]
        try:
            for n, group in enumerate(groups):
                if shaped:
                    script = partial(get_range_script, first=0, count=0, only=group)
                else:
                    script = partial(
                        reread_script,
                        parts=group,
                        tail_from=tail_from if n == len(groups) - 1 else None,
                        source=GET_VAR,
                        part_bytes=GET_LAYOUT.part_bytes,
                        status="0",
                    )
                reader.feed(await _exchange(execute, script, timeout))
        except TimeoutError:
            return reader.data()
        data = reader.data()
    return data


# -- put ------------------------------------------------------------------------------------

_PUT_ERRORS = {
    "isdir": "{path}: is a directory: give the file's path (DIR/NAME)",
    "symlink": "{path}: is a symbolic link: give the path of the file it points to",
    "nodir": "{path}: its directory does not exist on the device: create it first",
    "notfile": "{path}: exists and is not a regular file: only files can be replaced",
    "perm": "{path}: permission denied: the login user cannot write to its directory",
}


def _no_space(path: str, size: int, free: int | None) -> str:
    free_text = "" if free is None else f", {free} available"
    return f"no space left on device at {path} ({size} bytes needed{free_text}); nothing was written there"


async def upload(
    execute: Execute,
    data: bytes,
    path: str,
    timeout: float,
    temp_files: list[str],
    *,
    mode: int | None = None,
    on_progress: Progress | None = None,
) -> Outcome:
    """Write ``data`` to ``path`` on the device through a temporary file beside it, or say why not.

    ``mode`` (permission bits) defaults to the replaced file's, else to 0666
    less the shell's umask.  The temporary file's path goes into
    ``temp_files`` while it exists, so that a put that times out or is
    cancelled leaves it to the session to delete.
    """
    size, digest = len(data), hashlib.sha256(data).hexdigest()
    prep = None
    markers: list[str] = []

    def prepare(marker_id: str) -> str:
        markers.append(marker_id)
        return put_prepare_script(marker_id, path)

    for _ in range(STAT_TRIES):
        prep = parse_put_prepare(await _exchange(execute, prepare, timeout), temp_name(markers[-1], path))
        if prep is not None:
            break
        # Its answer came damaged: the file it may have made goes, by the name the client knows.
        await _exchange(execute, partial(put_abort_script, temp=temp_word(markers[-1], path), path=path), timeout)
    if prep is None:
        return Outcome(ResultStatus.ERROR, error=f"{DAMAGED}: the device's answer to the preparation never arrived")
    if prep.error == "create":
        if "No space left" in prep.detail:
            return Outcome(ResultStatus.ERROR, error=_no_space(path, size, None))
        return Outcome(ResultStatus.ERROR, error=f"{path}: cannot create a file beside it: {prep.detail}")
    if prep.error:
        return Outcome(ResultStatus.ERROR, error=_PUT_ERRORS[prep.error].format(path=path))
    temp = prep.temp
    temp_files.append(temp)

    async def abort(error: str) -> Outcome:
        text = await _exchange(execute, partial(put_abort_script, temp=shlex.quote(temp), path=path), timeout)
        if temp in temp_files:
            temp_files.remove(temp)
        if error == "ENOSPC":
            line = next((t for t in text.split("\n") if t.startswith("#TNB F ")), "")
            error = _no_space(path, size, free_bytes(line[7:]))
        return Outcome(ResultStatus.ERROR, error, size, digest)

    if prep.free is not None and prep.free < size:
        return await abort("ENOSPC")
    counter = _Counter(size, on_progress)
    blocks = [data[i : i + PUT_BLOCK_BYTES] for i in range(0, size, PUT_BLOCK_BYTES)]
    confirmed: set[int] = set()
    pending = list(range(len(blocks)))
    sends = 0
    while pending and sends <= MAX_RESENDS:  # (an empty file has no block: the temporary file is it)
        sends += 1
        for start in range(0, len(pending), PUT_BATCH_BLOCKS):
            batch = pending[start : start + PUT_BATCH_BLOCKS]
            pieces = [(i, blocks[i]) for i in batch]
            script = partial(put_blocks_script, temp=temp, blocks=pieces, encoding=prep.encoding)
            writes = parse_put_writes(await _exchange(execute, script, timeout, counter.writes(blocks, confirmed)))
            if writes.failed:
                message = next(iter(writes.failed.values()))
                if "No space left" in message or not message:
                    return await abort("ENOSPC")
                return await abort(f"writing {path} failed on the device: {message}; nothing was written there")
            confirmed |= {i for i in batch if writes.written.get(i) == (cksum(blocks[i]), len(blocks[i]))}
        pending = [i for i in pending if i not in confirmed]
    if pending:
        return await abort(
            f"{len(pending)} of {len(blocks)} blocks failed their checksum on the device after {sends} sends; "
            "nothing was written there"
        )
    if mode is None:
        mode = prep.existing_mode if prep.existing_mode is not None else 0o666 & ~prep.umask
    finish = partial(
        put_finish_script,
        temp=temp,
        path=path,
        crc=cksum(data),
        size=size,
        sha256=digest if prep.sha256 else None,
        mode=mode,
        owner=prep.existing_owner,
    )
    done = parse_put_finish(await _exchange(execute, finish, timeout))
    if done is None:
        return await abort(f"{DAMAGED}: the device's answer to the final check never arrived: check {path} yourself")
    if done.outcome != "ok":
        reason = {
            "crc": f"the file failed its checksum on the device ({done.detail})",
            "sha": f"the file's sha256 on the device is not the one sent ({done.detail[:64]})",
            "chmod": f"cannot give it mode {mode:04o}",
            "mv": f"cannot move it into place: {done.detail}",
        }[done.outcome]
        return await abort(f"{path}: {reason}; nothing was written there")
    temp_files.remove(temp)
    counter.report(size, force=True)
    return Outcome(ResultStatus.OK, "", size, digest)

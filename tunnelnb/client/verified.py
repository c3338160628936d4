"""A verified run: exact output from a device that damages it (``DeviceSession.run(..., verify=True)``).

The device's shell keeps the command's output in a temporary file and prints it
as a checksummed dump (:mod:`tunnelnb.protocol.verify`); the client reads the
dump, asks again for the blocks that arrived damaged or not at all, at most
:data:`MAX_REREADS` times, and deletes the file.  Nothing is streamed: the
output arrives whole at the end, exactly as the command wrote it, or the row
says ``output damaged in transit``.

The session hands in its ``_execute`` (one framed exchange with the shell), so
this module holds the loop and the session keeps the state machine.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from ..errors import TunnelError
from ..protocol.dump import DumpReader
from ..protocol.shell import Finished, command_script
from ..protocol.verify import DAMAGED, cleanup_command, reread_script, verified_script
from .result import ResultStatus

__all__ = [
    "CLEANUP_TIMEOUT_S",
    "END_GRACE_S",
    "MAX_CLEANUP_RUNS",
    "MAX_REREADS",
    "Execute",
    "remove_temp_files",
    "run_verified",
]

#: Re-reads of the blocks that failed their check, after the first dump, before the row says ``output damaged``.
MAX_REREADS = 5
#: Once a dump's last line has arrived, how long its end marker may take (it may have been lost on the way).
END_GRACE_S = 2.0
#: Seconds for deleting the temporary files.
CLEANUP_TIMEOUT_S = 10.0
#: At most this many runs' temporary files are deleted by one command (the rest by the next).
MAX_CLEANUP_RUNS = 10

#: A dump's last line: its trailer, or "no temporary file".
_DUMP_END = re.compile(r"#TNB [TN][^\n]*\n")


class Execute(Protocol):
    """``DeviceSession._execute``: type ``script(marker_id)``, return its end marker (None: lost after ``settled``)."""

    def __call__(
        self,
        script: Callable[[str], str],
        timeout: float,
        *,
        on_output: Callable[[str], None] | None,
        settled: Callable[[], bool] | None = None,
        grace: float = 0.0,
    ) -> Awaitable[Finished | None]: ...


#: ``(status, exit_code, stdout, error)`` of the row.
Outcome = tuple[str, int | None, str, str]


async def run_verified(execute: Execute, command: str, timeout: float, temp_files: list[str]) -> Outcome:
    """Run ``command`` verified; ``temp_files`` gets the run's marker id (its file is deleted later).

    Each exchange with the shell (the run and its dump, every re-read) has
    ``timeout``.  A first exchange that times out raises :class:`TimeoutError`
    (the command may still be running); a re-read that times out ends the
    re-reads.  A lost connection raises as in a plain run.
    """
    reader = DumpReader()

    async def read(script: Callable[[str], str]) -> Finished | None:
        chunks: list[str] = []
        tail = [""]

        def collect(text: str) -> None:
            chunks.append(text)
            tail[0] = (tail[0] + text)[-256:]

        def settled() -> bool:
            return _DUMP_END.search(tail[0]) is not None

        try:
            return await execute(script, timeout, on_output=collect, settled=settled, grace=END_GRACE_S)
        finally:
            reader.feed("".join(chunks))  # what came intact before a timeout counts too

    def first(marker_id: str) -> str:
        temp_files.append(marker_id)
        return verified_script(marker_id, command)

    finished = await read(first)
    code = finished.exit_code if finished is not None else None
    if reader.no_file:
        return (
            ResultStatus.ERROR,
            None,
            "",
            "verify: the device could make no temporary file (mktemp and /tmp failed), so the command did not run",
        )
    data = reader.data()
    for _ in range(MAX_REREADS):
        if data is not None and code is not None:
            break
        parts, tail_from = reader.wanted()
        try:
            finished = await read(partial(reread_script, parts=parts, tail_from=tail_from))
        except TimeoutError:
            break
        if code is None and finished is not None:
            code = finished.exit_code
        data = reader.data()
    if data is None:
        status = "" if code is None else f" (exit status {code})"
        return ResultStatus.ERROR, None, "", f"{DAMAGED}: {reader.failed()}{status}"
    stdout = data.decode("utf-8", "surrogateescape")  # exact: .encode("utf-8", "surrogateescape") gives the bytes
    if code is None:
        return ResultStatus.ERROR, None, stdout, f"{DAMAGED}: the exit status never arrived intact"
    if code == 0:
        return ResultStatus.OK, 0, stdout, ""
    return ResultStatus.ERROR, code, stdout, f"exit status {code}"


async def remove_temp_files(execute: Execute, temp_files: list[str]) -> None:
    """Delete the temporary files of the verified runs in ``temp_files`` (and forget them); best effort, never raising.

    Call it only on a shell that answers (READY).  What is not deleted now stays
    in ``temp_files`` for the next try.
    """
    batch = temp_files[:MAX_CLEANUP_RUNS]
    if not batch:
        return
    try:
        await execute(partial(command_script, command=cleanup_command(batch)), CLEANUP_TIMEOUT_S, on_output=None)
    except (TimeoutError, TunnelError):
        return
    del temp_files[: len(batch)]

"""Exact output from lossy devices, sans-I/O (docs/architecture.md, *Verified output*).

A device running Huawei's C SDK damages terminal output: it sends raw
2,048-byte reads as JSON text (a UTF-8 character split at a read boundary;
stray heap bytes after a full read), and SDK v1.1.x silently drops a whole read
now and then.  A verified run (``verify=True``) does not trust the terminal
stream with the output itself:

1. the device's shell runs the command as :func:`~tunnelnb.protocol.shell.command_script`
   does (``eval`` in the current shell, so ``cd`` and variables persist; stdin
   from ``/dev/null``), but with stdout and stderr going to a temporary file,
   and keeps the exit status (:func:`verified_script`);
2. it prints the file as a *dump* that survives the SDK's chunking: blocks of
   :data:`BLOCK_BYTES` bytes, base64 where the device has ``base64``, else hex
   from ``od -An -v -tx1`` (POSIX, BusyBox too), each after a header line with
   its index and POSIX ``cksum``, then a trailer with the whole file's
   ``cksum``; all of it between the usual markers, the exit status in the end
   marker;
3. the client checks every block's size and CRC and the whole file's
   (:class:`~tunnelnb.protocol.dump.DumpReader`), takes a run of stray characters out of a block when
   that leaves exactly the header's CRC and size, asks again for what failed,
   in quarter blocks (:func:`reread_script`), then deletes the file
   (:func:`cleanup_command`).

The dump, line by line (``ENC`` is ``b64`` or ``hex``)::

    #TNB B ENC INDEX INDEX CRC SIZE     block INDEX (twice: junk cannot move it unnoticed), cksum of its bytes
    <data lines>                         base64 (76 a line) or od's hex bytes
    #TNB P ENC INDEX INDEX CRC SIZE     in a re-read: part INDEX (a quarter block), likewise
    #TNB T ENC CRC SIZE                  the whole file's cksum
    #TNB N                               no temporary file could be made: the command did not run
    #TNB S ENC INDEX INDEX               a *shaped* part (file transfers): no CRC of its own

Junk in the stream is never taken as data: a block is accepted only when its
decoded bytes have the size and CRC its header names, and the whole file only
when it has the trailer's (:mod:`tunnelnb.protocol.dump` reads it back;
:mod:`tunnelnb.protocol.cksum` is POSIX ``cksum``'s CRC).

File transfers (:mod:`tunnelnb.protocol.transfer`) dump an existing file the
same way, with a :class:`DumpLayout` of their own and the file's name in
another shell variable (``source``).  Their first reading prints *shaped*
parts (fast: no ``cksum`` per part), whose text is taken when it has exactly
the shape of a clean part (or one run of stray characters can be taken out in
one way only); the whole file's CRC vouches for them, and when it disagrees
they are read again checksummed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .shell import command_block, framed

__all__ = [
    "BLOCK_BYTES",
    "DAMAGED",
    "PARTS_PER_BLOCK",
    "PART_BYTES",
    "VERIFY_LAYOUT",
    "DumpLayout",
    "cleanup_command",
    "pieces_loop",
    "reread_script",
    "temp_file_glob",
    "verified_script",
]

#: Bytes of the file per block: 4,096 base64 characters (54 lines), or 9,408 of hex.
BLOCK_BYTES = 3072
#: Bytes per part: re-reads print the blocks that failed in quarters (1,024 base64 characters).
PART_BYTES = 768
PARTS_PER_BLOCK = BLOCK_BYTES // PART_BYTES
#: The error of a verified row whose output could not be read intact.
DAMAGED = "output damaged in transit"
#: Block indices per typed ``for`` line of a re-read (short of MAX_TYPED_LINE).
_INDICES_PER_LINE = 80


@dataclass(frozen=True)
class DumpLayout:
    """The sizes a dump is cut in: blocks for a first reading, parts (a block's quarters or so) for re-reads."""

    block_bytes: int = BLOCK_BYTES
    part_bytes: int = PART_BYTES

    def __post_init__(self) -> None:
        if self.part_bytes < 1 or self.block_bytes % self.part_bytes:
            raise ValueError("a block must be a whole number of parts")

    @property
    def parts_per_block(self) -> int:
        return self.block_bytes // self.part_bytes

    def blocks(self, size: int) -> int:
        """How many blocks a file of ``size`` bytes has."""
        return -(-size // self.block_bytes)


#: The layout of verified runs (``run(..., verify=True)``).
VERIFY_LAYOUT = DumpLayout()

# -- what the device's shell is sent -------------------------------------------------------

_VARS = "__tnb_z __tnb_e __tnb_i"  # one read's scratch; __tnb_f (the file) and __tnb_s (the status) stay
_SIZE = '"${__tnb_z#* }"'  # the file's size, from `cksum <file` ("CRC SIZE")
_ENCODING = "if command -v base64 >/dev/null 2>&1; then __tnb_e=b64; else __tnb_e=hex; fi\n"
_TRAILER = 'printf \'#TNB T %s %s\\n\' "$__tnb_e" "$__tnb_z"\n'


def _piece(kind: str, size: int, source: str = "__tnb_f") -> str:
    """Print piece ``$__tnb_i`` of ``size`` bytes of ``$source``: its header (index twice, its cksum), its bytes."""
    dd = f'dd if="${source}" bs={size} skip="$__tnb_i" count=1 2>/dev/null'
    return (
        f'printf \'#TNB {kind} %s %d %d \' "$__tnb_e" "$__tnb_i" "$__tnb_i"; {dd} | cksum\n'
        f'if [ "$__tnb_e" = b64 ]; then {dd} | base64; else {dd} | od -An -v -tx1; fi\n'
    )


def _in_file(size: int) -> str:
    return f'[ "$((__tnb_i * {size}))" -lt {_SIZE} ]'


def pieces_loop(kind: str, size: int, source: str = "__tnb_f", end: int | None = None) -> str:
    """Shell lines printing every piece from ``$__tnb_i`` to the end of ``$source`` (or to piece ``end``, excluded).

    ``$__tnb_e`` must hold the encoding, ``$__tnb_z`` the file's ``cksum``.
    Four processes a piece (``dd | cksum``, ``dd | base64``).
    """
    bound = "" if end is None else f' && [ "$__tnb_i" -lt {int(end)} ]'
    return f"while {_in_file(size)}{bound}; do\n{_piece(kind, size, source)}__tnb_i=$((__tnb_i + 1))\ndone\n"


def temp_file_glob(marker_id: str) -> str:
    """Shell words matching the temporary file of the verified run with ``marker_id`` (wherever it was made)."""
    if not marker_id.isalnum():
        raise ValueError("marker id must be letters and digits")
    return f'"${{TMPDIR:-/tmp}}"/tnb-{marker_id}.* /tmp/tnb-{marker_id}.*'


def verified_script(marker_id: str, command: str) -> str:
    """The text to type for a verified run: the command into a temporary file, then the file's dump.

    The file comes from ``mktemp`` (``$TMPDIR`` or ``/tmp``, named after the
    marker id), else ``/tmp/tnb-MARKER.PID``.  The command runs as
    :func:`~tunnelnb.protocol.shell.command_script` runs it (same
    :func:`~tunnelnb.protocol.shell.command_block`), its output redirected.
    ``$__tnb_f`` (the file) and ``$__tnb_s`` (the exit status) stay set for the
    re-reads until :func:`cleanup_command`; the other ``__tnb_`` variables are
    unset at the end.  The end marker carries the command's exit status.
    """
    name = f"tnb-{marker_id}"
    body = (
        f'__tnb_f=$(mktemp "${{TMPDIR:-/tmp}}/{name}.XXXXXX" 2>/dev/null) || '
        f'{{ __tnb_f=/tmp/{name}.$$; (umask 077; rm -f "$__tnb_f"; : >"$__tnb_f") 2>/dev/null; }}\n'
        'if [ -f "$__tnb_f" ] && [ -w "$__tnb_f" ]; then\n'
        f'{{ {command_block(marker_id, command)}\n}} >"$__tnb_f" 2>&1; __tnb_s=$?\n'
        f'{_ENCODING}__tnb_z=$(cksum <"$__tnb_f"); __tnb_i=0\n'
        f"{pieces_loop('B', BLOCK_BYTES)}{_TRAILER}"
        "else __tnb_s=0; printf '#TNB N\\n'; fi\n"
        f"unset {_VARS}\n"
    )
    return framed(marker_id, body, '"$__tnb_s"')


def reread_script(
    marker_id: str,
    parts: Iterable[int],
    *,
    tail_from: int | None = None,
    source: str = "__tnb_f",
    part_bytes: int = PART_BYTES,
    status: str = '"${__tnb_s:-999}"',
) -> str:
    """The text to type to print ``parts`` of the file again, every part from ``tail_from`` on, and the trailer.

    A re-read prints parts of :data:`PART_BYTES` (a quarter block): stray bytes
    come at most once per 2,048 bytes of output, so a part's text holds at
    most one run of them, which :func:`block_bytes` can take out.  Parts past
    the end of the file are skipped.  The end marker carries the kept exit
    status, or 999 (no status a shell gives) when the shell no longer has it.
    A file transfer names its own file variable (``source``), part size and ``status``.
    """
    indices = sorted(set(parts))
    piece = _piece("P", part_bytes, source)
    lines = [f'if [ -f "${{{source}-}}" ]; then\n', _ENCODING, f'__tnb_z=$(cksum <"${source}")\n']
    for start in range(0, len(indices), _INDICES_PER_LINE):
        group = " ".join(str(i) for i in indices[start : start + _INDICES_PER_LINE])
        lines.append(f"for __tnb_i in {group}; do\nif {_in_file(part_bytes)}; then\n{piece}fi\ndone\n")
    if tail_from is not None:
        lines.append(f"__tnb_i={int(tail_from)}\n{pieces_loop('P', part_bytes, source)}")
    lines += [_TRAILER, "fi\n", f"unset {_VARS}\n"]
    return framed(marker_id, "".join(lines), status)


def cleanup_command(marker_ids: Iterable[str]) -> str:
    """A command deleting the temporary files of the verified runs ``marker_ids`` and unsetting ``__tnb_`` variables.

    An entry that starts with ``/`` is the absolute path of a temporary file
    itself (a file transfer's, :mod:`tunnelnb.protocol.transfer`), deleted as it is.
    """
    entries = list(marker_ids)
    files = " ".join("'" + e.replace("'", "'\\''") + "'" if e.startswith("/") else temp_file_glob(e) for e in entries)
    return f'rm -f ${{__tnb_f:+"$__tnb_f"}} {files}; unset __tnb_f __tnb_s {_VARS}'

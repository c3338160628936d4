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
   (:class:`DumpReader`), takes a run of stray characters out of a block when
   that leaves exactly the header's CRC and size, asks again for what failed,
   in quarter blocks (:func:`reread_script`), then deletes the file
   (:func:`cleanup_command`).

The dump, line by line (``ENC`` is ``b64`` or ``hex``)::

    #TNB B ENC INDEX INDEX CRC SIZE     block INDEX (twice: junk cannot move it unnoticed), cksum of its bytes
    <data lines>                         base64 (76 a line) or od's hex bytes
    #TNB P ENC INDEX INDEX CRC SIZE     in a re-read: part INDEX (a quarter block), likewise
    #TNB T ENC CRC SIZE                  the whole file's cksum
    #TNB N                               no temporary file could be made: the command did not run

Junk in the stream is never taken as data: a block is accepted only when its
decoded bytes have the size and CRC its header names, and the whole file only
when it has the trailer's.  :func:`cksum` is POSIX ``cksum``'s CRC.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from .shell import command_block, framed

__all__ = [
    "BLOCK_BYTES",
    "DAMAGED",
    "MAX_REPAIRS",
    "PARTS_PER_BLOCK",
    "PART_BYTES",
    "DumpReader",
    "Trailer",
    "block_bytes",
    "cksum",
    "cksum_reference",
    "cleanup_command",
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

# -- POSIX cksum -------------------------------------------------------------------------

_POLY = 0x04C11DB7


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ _POLY) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_TABLE = _make_table()
#: Every byte with its bits in reverse order.
_REVERSED_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _length_bytes(n: int) -> bytes:
    """``n`` as cksum appends it: least significant byte first, no leading zero bytes."""
    out = bytearray()
    while n:
        out.append(n & 0xFF)
        n >>= 8
    return bytes(out)


def cksum_reference(data: bytes) -> int:
    """POSIX ``cksum``'s CRC of ``data``, the textbook way: a 256-entry table, one byte at a time (slow)."""
    crc = 0
    for byte in data + _length_bytes(len(data)):
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[(crc >> 24) ^ byte]
    return ~crc & 0xFFFFFFFF


def cksum(data: bytes) -> int:
    """POSIX ``cksum``'s CRC of ``data`` (CRC-32, polynomial 0x04C11DB7, MSB first, length appended, complemented).

    Same answer as :func:`cksum_reference`, about a thousand times faster: the
    MSB-first CRC of some bytes is the bit-reversal of the reflected CRC (zlib's
    polynomial, reversed) of the same bytes with their bits reversed, and
    ``bytes.translate`` reverses bits at C speed.
    """
    register = zlib.crc32(data.translate(_REVERSED_BITS), 0xFFFFFFFF)  # starts from 0, like cksum
    register = zlib.crc32(_length_bytes(len(data)).translate(_REVERSED_BITS), register) ^ 0xFFFFFFFF
    return ~int(f"{register:032b}"[::-1], 2) & 0xFFFFFFFF


# -- what the device's shell is sent -------------------------------------------------------

_VARS = "__tnb_z __tnb_e __tnb_i"  # one read's scratch; __tnb_f (the file) and __tnb_s (the status) stay
_SIZE = '"${__tnb_z#* }"'  # the file's size, from `cksum <file` ("CRC SIZE")
_ENCODING = "if command -v base64 >/dev/null 2>&1; then __tnb_e=b64; else __tnb_e=hex; fi\n"
_TRAILER = 'printf \'#TNB T %s %s\\n\' "$__tnb_e" "$__tnb_z"\n'


def _piece(kind: str, size: int) -> str:
    """Print piece ``$__tnb_i`` of ``size`` bytes: its header (index twice, cksum of its bytes), then its bytes."""
    dd = f'dd if="$__tnb_f" bs={size} skip="$__tnb_i" count=1 2>/dev/null'
    return (
        f'printf \'#TNB {kind} %s %d %d \' "$__tnb_e" "$__tnb_i" "$__tnb_i"; {dd} | cksum\n'
        f'if [ "$__tnb_e" = b64 ]; then {dd} | base64; else {dd} | od -An -v -tx1; fi\n'
    )


def _in_file(size: int) -> str:
    return f'[ "$((__tnb_i * {size}))" -lt {_SIZE} ]'


_PART = _piece("P", PART_BYTES)


def _to_the_end(kind: str, size: int) -> str:
    """Every piece from ``$__tnb_i`` to the end of the file."""
    return f"while {_in_file(size)}; do\n{_piece(kind, size)}__tnb_i=$((__tnb_i + 1))\ndone\n"


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
        f"{_to_the_end('B', BLOCK_BYTES)}{_TRAILER}"
        "else __tnb_s=0; printf '#TNB N\\n'; fi\n"
        f"unset {_VARS}\n"
    )
    return framed(marker_id, body, '"$__tnb_s"')


def reread_script(marker_id: str, parts: Iterable[int], *, tail_from: int | None = None) -> str:
    """The text to type to print ``parts`` of the file again, every part from ``tail_from`` on, and the trailer.

    A re-read prints parts of :data:`PART_BYTES` (a quarter block): stray bytes
    come at most once per 2,048 bytes of output, so a part's text holds at
    most one run of them, which :func:`block_bytes` can take out.  Parts past
    the end of the file are skipped.  The end marker carries the kept exit
    status, or 999 (no status a shell gives) when the shell no longer has it.
    """
    indices = sorted(set(parts))
    lines = ['if [ -f "${__tnb_f-}" ]; then\n', _ENCODING, '__tnb_z=$(cksum <"$__tnb_f")\n']
    for start in range(0, len(indices), _INDICES_PER_LINE):
        group = " ".join(str(i) for i in indices[start : start + _INDICES_PER_LINE])
        lines.append(f"for __tnb_i in {group}; do\nif {_in_file(PART_BYTES)}; then\n{_PART}fi\ndone\n")
    if tail_from is not None:
        lines.append(f"__tnb_i={int(tail_from)}\n{_to_the_end('P', PART_BYTES)}")
    lines += [_TRAILER, "fi\n", f"unset {_VARS}\n"]
    return framed(marker_id, "".join(lines), '"${__tnb_s:-999}"')


def cleanup_command(marker_ids: Iterable[str]) -> str:
    """A command deleting the temporary files of the verified runs ``marker_ids`` and unsetting ``__tnb_`` variables."""
    files = " ".join(temp_file_glob(m) for m in marker_ids)
    return f'rm -f ${{__tnb_f:+"$__tnb_f"}} {files}; unset __tnb_f __tnb_s {_VARS}'


# -- reading the dump ------------------------------------------------------------------------

_HEADER = re.compile(r"#TNB ([BP]) (b64|hex) (\d{1,9}) (\d{1,9}) (\d{1,10}) (\d{1,5})")
_TRAILER_LINE = re.compile(r"#TNB T (b64|hex) (\d{1,10}) (\d{1,15})")
#: How a data character is classed for the shape of a block's text: base64 and hex digits, space, newline.
_CLASS = {ord(c): "a" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="} | {
    ord(" "): " ",
    ord("\n"): "\n",
}
#: Characters per line: ``base64`` wraps at 76, ``od -An -v -tx1`` prints 16 bytes as `` xx`` each.
_WIDTH = {"b64": 76, "hex": 48}
#: At most this many ways of taking stray bytes out of one piece are tried (each is one CRC check).
MAX_REPAIRS = 16


@dataclass(frozen=True)
class Trailer:
    """The dump's last line: the encoding and the whole file's ``cksum`` (CRC and size)."""

    encoding: str
    crc: int
    size: int

    @property
    def blocks(self) -> int:
        """How many blocks the file has."""
        return -(-self.size // BLOCK_BYTES)

    def piece_size(self, index: int, unit: int = BLOCK_BYTES) -> int:
        """The size block (or, with ``unit=PART_BYTES``, part) ``index`` must have; 0 past the end."""
        return max(0, min(unit, self.size - index * unit))


def _shape(encoding: str, size: int) -> str:
    """The character classes of a piece's text as the device prints it (lines joined by newlines)."""
    chars = "a" * (4 * -(-size // 3)) if encoding == "b64" else " aa" * size
    width = _WIDTH[encoding]
    return "\n".join(chars[i : i + width] for i in range(0, len(chars), width))


def _decode(encoding: str, text: str) -> bytes:
    if encoding == "b64":
        return base64.b64decode(text.replace("\n", ""), validate=True)
    return bytes.fromhex(text)


def _repairs(encoding: str, size: int, text: str) -> list[str]:
    """``text`` without one run of stray characters, in the few ways that leave the shape of a clean piece.

    Stray bytes are inserted, never in place of data: a piece whose text is
    ``k`` characters too long may be the clean text with ``k`` characters put
    in somewhere.  Where is bounded by the longest prefix and the longest
    suffix of ``text`` that have the clean text's shape (newlines where the
    device's lines end, base64 or hex characters between them).  More than
    :data:`MAX_REPAIRS` ways, or none: no repair.
    """
    shape = _shape(encoding, size)
    extra = len(text) - len(shape)
    if extra <= 0:
        return []
    classes = text.translate(_CLASS)
    prefix = 0
    for got, want in zip(classes, shape, strict=False):
        if got != want:
            break
        prefix += 1
    suffix = 0
    for got, want in zip(reversed(classes), reversed(shape), strict=False):
        if got != want:
            break
        suffix += 1
    first, last = max(0, len(shape) - suffix), min(prefix, len(shape))
    if last < first or last - first + 1 > MAX_REPAIRS:
        return []
    return [text[:p] + text[p + extra :] for p in range(first, last + 1)]


def block_bytes(encoding: str, crc: int, size: int, lines: list[str], *, repair: bool = True) -> bytes | None:
    """The bytes of a piece whose text came as ``lines``, if they have ``size`` and ``crc``; else None.

    Tried as it came, then (``repair``) without a run of stray characters
    (:func:`_repairs`): whatever is accepted has the header's CRC and size, so
    junk is never taken as data.
    """
    text = "\n".join(lines)
    for candidate in (text, *(_repairs(encoding, size, text) if repair else ())):
        try:
            data = _decode(encoding, candidate)
        except (binascii.Error, ValueError):
            continue
        if len(data) == size and cksum(data) == crc:
            return data
    return None


class DumpReader:
    """What the reads of one verified run's dump have delivered intact so far.

    :meth:`feed` each read's text (what lies between its markers); :meth:`data`
    is the whole file once every block (whole, or from its parts) and a
    trailer agree; :meth:`wanted` says what to read again.  ``repair=False``
    accepts only pieces that arrived clean.
    """

    def __init__(self, *, repair: bool = True) -> None:
        #: Blocks (:data:`BLOCK_BYTES`) and parts (:data:`PART_BYTES`) whose bytes matched their header, by index.
        self.blocks: dict[int, bytes] = {}
        self.parts: dict[int, bytes] = {}
        #: The trailers read, distinct, latest last.
        self.trailers: list[Trailer] = []
        #: The device could make no temporary file (the command did not run).
        self.no_file = False
        self.reads = 0
        self._repair = repair
        self._refuted: set[Trailer] = set()

    def feed(self, text: str) -> None:
        """One read's text: take every block or part that checks out, and every trailer."""
        self.reads += 1
        header: tuple[str, str, int, int, int] | None = None
        lines: list[str] = []

        def close() -> None:
            if header is None:
                return
            kind, encoding, index, crc, size = header
            data = block_bytes(encoding, crc, size, lines, repair=self._repair) if size else None
            if data is not None:
                (self.blocks if kind == "B" else self.parts).setdefault(index, data)

        for line in text.split("\n"):
            pos = line.rfind("#TNB ")
            if pos < 0:
                if header is not None and line:
                    lines.append(line)
                continue
            close()  # a header, a trailer or a damaged one: the piece before has ended
            header, lines = None, []
            rest = line[pos:]  # what came before it on the line is junk
            if m := _HEADER.match(rest):
                if m[3] == m[4]:  # the index twice: junk in it shows
                    header = (m[1], m[2], int(m[3]), int(m[5]), int(m[6]))
            elif m := _TRAILER_LINE.match(rest):
                trailer = Trailer(m[1], int(m[2]), int(m[3]))
                if trailer in self.trailers:
                    self.trailers.remove(trailer)
                self.trailers.append(trailer)
            elif rest.startswith("#TNB N"):
                self.no_file = True
        close()

    def trailer(self) -> Trailer | None:
        """The latest trailer that fits the pieces read and has not been refuted by the whole file's CRC."""
        for trailer in reversed(self.trailers):
            if trailer not in self._refuted and self._fits(trailer):
                return trailer
        return None

    def _fits(self, trailer: Trailer) -> bool:
        return all(len(b) == trailer.piece_size(i) for i, b in self.blocks.items()) and all(
            len(b) == trailer.piece_size(i, PART_BYTES) for i, b in self.parts.items()
        )

    def _block(self, index: int, size: int) -> bytes | None:
        """Block ``index`` of ``size`` bytes, read whole or from its parts."""
        if index in self.blocks:
            return self.blocks[index]
        first = index * PARTS_PER_BLOCK
        parts = [self.parts.get(first + j) for j in range(-(-size // PART_BYTES))]
        return None if any(p is None for p in parts) else b"".join(p for p in parts if p is not None)

    def missing(self) -> list[int] | None:
        """The blocks not read intact yet; None while the file's size is unknown (no trailer that fits)."""
        trailer = self.trailer()
        if trailer is None:
            return None
        return [i for i in range(trailer.blocks) if self._block(i, trailer.piece_size(i)) is None]

    def data(self) -> bytes | None:
        """The whole file, once every block is in and it has a trailer's size and CRC; else None."""
        trailer = self.trailer()
        if trailer is None:
            return None
        blocks = [self._block(i, trailer.piece_size(i)) for i in range(trailer.blocks)]
        if any(b is None for b in blocks):
            return None
        data = b"".join(b for b in blocks if b is not None)
        if len(data) == trailer.size and cksum(data) == trailer.crc:
            return data
        self._refuted.add(trailer)  # its CRC is wrong, or a piece is in the wrong place: read it again
        return None

    def wanted(self) -> tuple[list[int], int | None]:
        """What to read again: part indices, and the part to read on from to the end when the size is unknown."""
        missing, tail = self.missing(), None
        if missing is None:  # every block up to the last one read, and on from there
            top = max([*self.blocks, *(k // PARTS_PER_BLOCK for k in self.parts)], default=-1)
            missing = [i for i in range(top + 1) if self._block(i, BLOCK_BYTES) is None]
            tail = (top + 1) * PARTS_PER_BLOCK
        parts = [i * PARTS_PER_BLOCK + j for i in missing for j in range(PARTS_PER_BLOCK)]
        return [k for k in parts if k not in self.parts], tail

    def failed(self) -> str:
        """What is still wrong, in a few words (for the row's error)."""
        reads = f"{self.reads} read{'s' if self.reads != 1 else ''}"
        trailer, missing = self.trailer(), self.missing()
        if trailer is None or missing is None:
            if self._refuted:
                return f"the whole output failed its checksum after {reads}"
            return f"the dump's last line never arrived intact in {reads}"
        if missing:
            return f"{len(missing)} of {trailer.blocks} blocks failed their checksum after {reads}"
        return f"the whole output failed its checksum after {reads}"

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
    #TNB S ENC INDEX INDEX               a *shaped* part (file transfers): no CRC of its own

Junk in the stream is never taken as data: a block is accepted only when its
decoded bytes have the size and CRC its header names, and the whole file only
when it has the trailer's.  :func:`cksum` is POSIX ``cksum``'s CRC.

File transfers (:mod:`tunnelnb.protocol.transfer`) dump an existing file the
same way, with a :class:`DumpLayout` of their own and the file's name in
another shell variable (``source``).  Their first reading prints *shaped*
parts (fast: no ``cksum`` per part), whose text is taken when it has exactly
the shape of a clean part (or one run of stray characters can be taken out in
one way only); the whole file's CRC vouches for them, and when it disagrees
they are read again checksummed.
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
    "VERIFY_LAYOUT",
    "DumpLayout",
    "DumpReader",
    "Trailer",
    "block_bytes",
    "cksum",
    "cksum_reference",
    "cleanup_command",
    "pieces_loop",
    "reread_script",
    "shaped_bytes",
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


# -- reading the dump ------------------------------------------------------------------------

_HEADER = re.compile(r"#TNB ([BP]) (b64|hex) (\d{1,9}) (\d{1,9}) (\d{1,10}) (\d{1,5})")
_SHAPED_HEADER = re.compile(r"#TNB S (b64|hex) (\d{1,9}) (\d{1,9})")
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


def _decoded(encoding: str, size: int, text: str) -> bytes | None:
    try:
        data = _decode(encoding, text)
    except (binascii.Error, ValueError):
        return None
    return data if len(data) == size else None


def block_bytes(encoding: str, crc: int, size: int, lines: list[str], *, repair: bool = True) -> bytes | None:
    """The bytes of a piece whose text came as ``lines``, if they have ``size`` and ``crc``; else None.

    Tried as it came, then (``repair``) without a run of stray characters
    (:func:`_repairs`): whatever is accepted has the header's CRC and size, so
    junk is never taken as data.
    """
    text = "\n".join(lines)
    for candidate in (text, *(_repairs(encoding, size, text) if repair else ())):
        data = _decoded(encoding, size, candidate)
        if data is not None and cksum(data) == crc:
            return data
    return None


def shaped_bytes(encoding: str, size: int, lines: list[str], *, repair: bool = True) -> tuple[bytes, bool] | None:
    """The bytes of a shaped part (no CRC of its own), and whether a run of stray characters was taken out.

    Its text is taken when it has exactly a clean part's shape, or (``repair``)
    when every way of taking one run of stray characters out of it
    (:func:`_repairs`) gives the same bytes; else None.  The caller checks the
    whole file's CRC before it trusts them.
    """
    text = "\n".join(lines)
    if text.translate(_CLASS) == _shape(encoding, size):
        data = _decoded(encoding, size, text)
        return None if data is None else (data, False)
    if not repair:
        return None
    found = {d for c in _repairs(encoding, size, text) if (d := _decoded(encoding, size, c)) is not None}
    return (found.pop(), True) if len(found) == 1 else None


class DumpReader:
    """What the reads of one dump have delivered intact so far.

    :meth:`feed` each read's text (what lies between its markers); :meth:`data`
    is the whole file once every block (whole, or from its parts) and a
    trailer agree; :meth:`wanted` says what to read again.  ``repair=False``
    accepts only pieces that arrived clean.  ``layout`` gives the block and
    part sizes (a verified run's by default).
    """

    def __init__(self, *, repair: bool = True, layout: DumpLayout = VERIFY_LAYOUT) -> None:
        #: Blocks and parts whose bytes matched their header's CRC, by index.
        self.blocks: dict[int, bytes] = {}
        self.parts: dict[int, bytes] = {}
        #: The trailers read, distinct, latest last.
        self.trailers: list[Trailer] = []
        #: The device could make no temporary file (the command did not run).
        self.no_file = False
        self.reads = 0
        self._repair = repair
        self._layout = layout
        self._refuted: set[Trailer] = set()
        #: Shaped parts: their text as it came (decoded once the size is known), then their bytes and
        #: whether they were repaired; trusted only while the whole file's CRC does not say otherwise.
        self._shaped: dict[int, list[tuple[str, list[str]]]] = {}
        self._unchecked: dict[int, tuple[bytes, bool]] = {}

    def feed(self, text: str) -> None:
        """One read's text: take every block or part that checks out, every shaped part, and every trailer."""
        self.reads += 1
        header: tuple[str, str, int, int, int] | None = None
        lines: list[str] = []

        def close() -> None:
            if header is None:
                return
            kind, encoding, index, crc, size = header
            if kind == "S":
                self._shaped.setdefault(index, []).append((encoding, lines))
                if self.trailers:  # the size is known (a file transfer's comes first): keep bytes, not text
                    self._part(index, self.trailers[-1].piece_size(index, self._layout.part_bytes))
                return
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
            elif m := _SHAPED_HEADER.match(rest):
                if m[2] == m[3]:
                    header = ("S", m[1], int(m[2]), 0, 0)
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
        block, part = self._layout.block_bytes, self._layout.part_bytes
        return all(len(b) == trailer.piece_size(i, block) for i, b in self.blocks.items()) and all(
            len(b) == trailer.piece_size(i, part) for i, b in self.parts.items()
        )

    def _part(self, index: int, size: int) -> bytes | None:
        """Part ``index`` of ``size`` bytes: checksummed, else shaped (decoded now, if it has not been yet)."""
        texts = self._shaped.pop(index, [])  # (decoded at most once; copies of a part already in are dropped)
        if index in self.parts:
            return self.parts[index]
        if index not in self._unchecked:
            for encoding, lines in texts:
                got = shaped_bytes(encoding, size, lines, repair=self._repair)
                if got is not None:
                    self._unchecked[index] = got
                    break
        got = self._unchecked.get(index)
        return None if got is None else got[0]

    def _block(self, index: int, size: int, used: list[int] | None = None) -> bytes | None:
        """Block ``index`` of ``size`` bytes, read whole or from its parts (``used`` gets the shaped ones)."""
        if index in self.blocks:
            return self.blocks[index]
        part = self._layout.part_bytes
        first = index * self._layout.parts_per_block
        indices = range(first, first + -(-size // part))
        pieces = [self._part(k, min(part, size - (k - first) * part)) for k in indices]  # every one looked at
        if any(p is None for p in pieces):
            return None
        if used is not None:
            used.extend(k for k in indices if k not in self.parts)
        return b"".join(p for p in pieces if p is not None)

    def missing(self) -> list[int] | None:
        """The blocks not read intact yet; None while the file's size is unknown (no trailer that fits)."""
        trailer = self.trailer()
        if trailer is None:
            return None
        block = self._layout.block_bytes
        return [
            i for i in range(self._layout.blocks(trailer.size)) if self._block(i, trailer.piece_size(i, block)) is None
        ]

    def data(self) -> bytes | None:
        """The whole file, once every block is in and it has a trailer's size and CRC; else None.

        When the CRC disagrees and shaped parts went into the file, they lose
        the trust: first those that were repaired, then all of them (to be read
        again checksummed); else the trailer is refuted.
        """
        trailer = self.trailer()
        if trailer is None:
            return None
        block, used = self._layout.block_bytes, list[int]()
        blocks = [self._block(i, trailer.piece_size(i, block), used) for i in range(self._layout.blocks(trailer.size))]
        if any(b is None for b in blocks):
            return None
        data = b"".join(b for b in blocks if b is not None)
        if len(data) == trailer.size and cksum(data) == trailer.crc:
            return data
        if used:
            repaired = [k for k in used if self._unchecked[k][1]]
            for k in repaired or used:
                del self._unchecked[k]
            return None
        self._refuted.add(trailer)  # its CRC is wrong, or a piece is in the wrong place: read it again
        return None

    def wanted(self) -> tuple[list[int], int | None]:
        """What to read again: part indices, and the part to read on from to the end when the size is unknown."""
        per_block, block = self._layout.parts_per_block, self._layout.block_bytes
        missing, tail = self.missing(), None  # (decodes the shaped parts of the blocks it looks at)
        if missing is None:  # every block up to the last one read, and on from there
            known = [*self.parts, *self._unchecked, *self._shaped]
            top = max([*self.blocks, *(k // per_block for k in known)], default=-1)
            missing = [i for i in range(top + 1) if self._block(i, block) is None]
            tail = (top + 1) * per_block
        parts = [i * per_block + j for i in missing for j in range(per_block)]
        return [k for k in parts if k not in self.parts and k not in self._unchecked], tail

    def failed(self) -> str:
        """What is still wrong, in a few words (for the row's error)."""
        reads = f"{self.reads} read{'s' if self.reads != 1 else ''}"
        trailer, missing = self.trailer(), self.missing()
        if trailer is None or missing is None:
            if self._refuted:
                return f"the whole output failed its checksum after {reads}"
            return f"the dump's last line never arrived intact in {reads}"
        if missing:
            return f"{len(missing)} of {self._layout.blocks(trailer.size)} blocks failed their checksum after {reads}"
        return f"the whole output failed its checksum after {reads}"

"""Reading a dump back, sans-I/O: the blocks and parts a verified run or a file transfer printed.

The dump's layout is :mod:`tunnelnb.protocol.verify`'s (which writes the
scripts); this module takes what came back through a lossy terminal stream
and keeps only what its checksums vouch for (:class:`DumpReader`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from .cksum import cksum
from .verify import BLOCK_BYTES, VERIFY_LAYOUT, DumpLayout

__all__ = ["MAX_REPAIRS", "DumpReader", "Trailer", "block_bytes", "shaped_bytes"]

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

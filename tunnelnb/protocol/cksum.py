"""POSIX ``cksum``'s CRC, which every device has (BusyBox too): the checksum of verified output and transfers.

:func:`cksum` is the fast one (zlib's CRC-32 bit-reversed in and out, with the
length appended as POSIX says); :func:`cksum_reference` is the standard's
definition, kept to test it against.
"""

from __future__ import annotations

import zlib

__all__ = ["cksum", "cksum_reference"]

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

"""RFC 6455 rules aiohttp's WebSocket reader does not enforce, checked on the raw byte stream.

aiohttp 3.14's reader accepts unmasked frames from clients (RFC 6455, section 5.1:
"a server MUST close the connection upon receiving a frame that is not masked"),
and close codes 1006 and 5000 and above in a close frame (section 7.4: 1005, 1006
and 1015 must never be sent; codes outside 1000-4999 are invalid).  It offers no
option for either, so :class:`FrameCheck` walks the frame headers of a client's
byte stream -- only the headers, and the two code bytes of a close frame -- before
aiohttp's reader sees the bytes, and names the first violation.
"""

from __future__ import annotations

__all__ = ["PROTOCOL_ERROR", "FrameCheck", "close_frame"]

PROTOCOL_ERROR = 1002

_OP_CLOSE = 0x8
#: Close codes an endpoint may send: 1000-1003, 1007-1014, 3000-4999 (1004-1006 and 1015 are reserved).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


def valid_close_code(code: int) -> bool:
    """Whether a peer may put ``code`` in a close frame (RFC 6455, section 7.4)."""
    return code in _SENDABLE or 3000 <= code <= 4999


def close_frame(code: int, reason: str) -> bytes:
    """A server's (unmasked) close frame with ``code`` and ``reason`` cut to fit 125 bytes."""
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return bytes([0x80 | _OP_CLOSE, len(payload)]) + payload


class FrameCheck:
    """A client's frame stream, fed in chunks; :meth:`feed` returns the first violation's description, or None.

    It keeps at most one frame header (14 bytes) and the first two payload bytes of
    a close frame, so it costs nothing per byte relayed beyond a length count.
    """

    def __init__(self) -> None:
        self._head = bytearray()  # the bytes of the frame header read so far
        self._skip = 0  # payload bytes of the current frame still to pass over
        self._close: bytearray | None = None  # a close frame's payload bytes so far (up to 2)
        self._mask = b""
        self.failed: str | None = None

    def feed(self, data: bytes) -> str | None:
        pos, end = 0, len(data)
        while pos < end and self.failed is None:
            if self._skip:
                take = min(self._skip, end - pos)
                if self._close is not None:
                    self._close += data[pos : pos + min(take, 2 - len(self._close))]
                pos += take
                self._skip -= take
                if self._close is not None and (len(self._close) == 2 or not self._skip):
                    self._check_close()
                continue
            if not self._head and pos + 2 <= end:
                # Fast path: a masked frame's whole header in this chunk, read in place (a
                # message's header is 6-14 bytes: a Python call per byte was most of the cost).
                second = data[pos + 1]
                length = second & 0x7F
                need = 2 if length < 126 else 4 if length == 126 else 10
                if second & 0x80 and pos + need + 4 <= end:
                    if length >= 126:
                        length = int.from_bytes(data[pos + 2 : pos + need], "big")
                    self._start_payload(data[pos], length, data[pos + need : pos + need + 4])
                    pos += need + 4
                    continue
                # Unmasked, or the header is split between chunks: byte by byte, below.
            self._head.append(data[pos])
            pos += 1
            self._parse_head()
        return self.failed

    def _parse_head(self) -> None:
        head = self._head
        if len(head) < 2:
            return
        length, need = head[1] & 0x7F, 2
        if length == 126:
            need = 4
        elif length == 127:
            need = 10
        masked = bool(head[1] & 0x80)
        if len(head) < need + (4 if masked else 0):
            return
        if not masked:
            self.failed = "the client sent an unmasked frame (RFC 6455, section 5.1)"
            return
        if length >= 126:
            length = int.from_bytes(head[2:need], "big")
        self._head = bytearray()
        self._start_payload(head[0], length, bytes(head[need : need + 4]))

    def _start_payload(self, first: int, length: int, mask: bytes) -> None:
        """A masked frame's header is read: its first byte, payload length and mask."""
        self._mask = mask
        self._skip = length
        # A close frame without a payload carries no code: nothing to check.
        self._close = bytearray() if (first & 0x0F) == _OP_CLOSE and length else None

    def _check_close(self) -> None:
        raw, self._close = self._close, None
        assert raw is not None
        if len(raw) < 2:
            self.failed = "a close frame with a one-byte payload (RFC 6455, section 5.5.1)"
            return
        code = int.from_bytes(bytes(b ^ m for b, m in zip(raw, self._mask, strict=False)), "big")
        if not valid_close_code(code):
            self.failed = f"invalid close code {code} (RFC 6455, section 7.4)"

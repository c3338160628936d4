"""The connection guard's refusal of a client that is already gone (seen with 1,000 logins at once).

Refusing a connection answers 503 and half-closes it; a client that has reset
the connection meanwhile makes the half-close fail with ENOTCONN, which must not
escape into the event loop's exception handler (it did: "Exception in callback
_Conn.connection_made").
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from tunnelnb.server.platform.guard import ConnectionGuard, GuardSettings


class _Transport(asyncio.Transport):
    """A transport whose peer is gone once ``gone`` is set: its half-close fails as the kernel's does."""

    def __init__(self, *, gone: bool) -> None:
        super().__init__()
        self.gone = gone
        self.written = b""
        self.aborted = self.closed = self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.gone:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        self.eof = True

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.aborted or self.closed


def _guard() -> ConnectionGuard:
    return ConnectionGuard(GuardSettings(max_pending=1, max_pending_per_address=1, header_timeout=30))


def _inner() -> asyncio.Protocol:
    return asyncio.Protocol()


async def test_a_refused_client_that_is_gone_is_dropped_without_an_error() -> None:
    guard = _guard()
    first = _Transport(gone=False)
    guard.protocol_factory(_inner)().connection_made(first)  # takes the one pending slot
    gone = _Transport(gone=True)
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    guard.protocol_factory(_inner)().connection_made(gone)
    await asyncio.sleep(0)
    assert errors == []
    assert gone.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert (gone.aborted, gone.eof) == (True, False)
    assert (guard.lingering, guard.stats.refused, guard.stats.accepted) == (0, 1, 1)


async def test_a_refused_client_still_there_reads_its_503_before_the_close() -> None:
    guard = _guard()
    guard.protocol_factory(_inner)().connection_made(_Transport(gone=False))
    there = _Transport(gone=False)
    conn = guard.protocol_factory(_inner)()
    conn.connection_made(there)
    assert (there.eof, there.aborted, guard.lingering) == (True, False, 1)
    conn.connection_lost(None)
    assert guard.lingering == 0

"""Non-blocking reads and writes of a child's file descriptors, driven by the event loop.

:class:`Writer` queues input the kernel cannot take yet (backpressure through
``drain``); :class:`Reader` hands output to a callback and can be paused.  The
PTY and pipe children of :mod:`.process` are built from them: no thread per
session, so a fleet can run hundreds of shells in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable

__all__ = ["READ_SIZE", "WRITE_HIGH_WATER", "Reader", "Writer"]

READ_SIZE = 65536
#: At most this much output is gathered per wakeup before it is handed on.
_READ_BATCH = 256 * 1024
#: Input queued for the child before a writer is asked to wait (``drain``).
WRITE_HIGH_WATER = 64 * 1024


class Writer:
    """Non-blocking writes to an fd, queued when the kernel is full (backpressure through ``drain``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, *, close_fd: bool) -> None:
        self._loop = loop
        self._fd = fd
        self._close_fd = close_fd
        self._queue: deque[memoryview] = deque()
        self._size = 0
        self._waiting = False
        self._drained: asyncio.Future[None] | None = None
        self._closed = False
        self._close_when_done = False

    @property
    def buffered(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        if not self._queue:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                n = 0
            except OSError:  # the child is gone (EIO, EPIPE): nobody reads input any more
                self._abandon()
                return
            if n == len(data):
                return
            data = data[n:]
        self._queue.append(memoryview(bytes(data)))
        self._size += len(data)
        if not self._waiting:
            self._waiting = True
            self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        while self._queue:
            chunk = self._queue[0]
            try:
                n = os.write(self._fd, chunk)
            except BlockingIOError:
                break
            except OSError:
                self._abandon()
                return
            self._size -= n
            if n == len(chunk):
                self._queue.popleft()
            else:
                self._queue[0] = chunk[n:]
                break
        if not self._queue:
            self._loop.remove_writer(self._fd)
            self._waiting = False
            if self._close_when_done:
                self.close()
        if self._size <= WRITE_HIGH_WATER:
            self._wake()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _abandon(self) -> None:
        self._queue.clear()
        self._size = 0
        self.close()

    async def drain(self) -> None:
        """Wait until queued input falls below the high-water mark."""
        while self._size > WRITE_HIGH_WATER and not self._closed:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await self._drained

    def write_eof(self) -> None:
        """Close the fd once everything queued is written (pipes only)."""
        if not self._queue:
            self.close()
        else:
            self._close_when_done = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiting:
            self._loop.remove_writer(self._fd)
            self._waiting = False
        self._queue.clear()
        self._size = 0
        if self._close_fd:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._wake()


class Reader:
    """Reads an fd with ``add_reader`` and hands bytes to a callback; pausable (backpressure)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        on_data: Callable[[bytes], None],
        on_eof: Callable[[], None],
        *,
        close_fd: bool,
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._on_data = on_data
        self._on_eof = on_eof
        self._close_fd = close_fd
        self._paused = False
        self.eof = False
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        # A PTY hands out about 1-4 KiB per read; take what is there now in one go,
        # so a fast producer costs one callback (and one SSH packet) per wakeup, not per read.
        chunks: list[bytes] = []
        size, eof = 0, False
        while size < _READ_BATCH:
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:  # EIO: every holder of the PTY's slave side is gone
                data = b""
            if not data:
                eof = True
                break
            chunks.append(data)
            size += len(data)
        if chunks:
            self._on_data(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof:
            self.finish()

    def drain_now(self) -> None:
        """Read whatever is buffered right now (used once the child has exited)."""
        while not self.eof and not self._paused:
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.finish()
                return
            self._on_data(data)

    def pause(self) -> None:
        if not self._paused and not self.eof:
            self._paused = True
            self._loop.remove_reader(self._fd)

    def resume(self) -> None:
        if self._paused and not self.eof:
            self._paused = False
            self._loop.add_reader(self._fd, self._readable)

    def finish(self) -> None:
        """End of output: stop reading and tell the owner, once."""
        if self.eof:
            return
        self.eof = True
        if not self._paused:
            self._loop.remove_reader(self._fd)
        if self._close_fd:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._on_eof()

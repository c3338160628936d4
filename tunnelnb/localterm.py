"""A device's terminal in the local terminal, as ``ssh`` gives one: ``tunnelnb shell``, ``%tunnel shell`` in IPython.

The fleet's event loop runs in another thread (a :class:`~tunnelnb.fleet.runner.ThreadLoopRunner`);
this thread owns the local terminal.  It puts the terminal in raw mode, so every
key, Ctrl-C included, goes to the device as a byte, and puts it back as it was
on every way out (the end, ``~.``, an exception, SIGTERM, SIGHUP).  Output and
notes come from the loop thread through a queue and a wake-up pipe, so a slow
local terminal never stalls the fleet's loop; keys go the other way through an
:class:`asyncio.Queue`, in order.  Escapes follow ssh's: right after Enter (or
at the very start), ``~.`` detaches, ``~~`` types one ``~``, ``~?`` lists them.

A module of the package's top, like :mod:`tunnelnb.connection`: both front ends
use it (``tunnelnb shell`` and the magic in terminal IPython), and neither may
import the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import select
import selectors
import signal
import termios
import threading
import tty
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

from .cassette.asciicast import CastWriter
from .client.terminal import Terminal
from .errors import TerminalError, TunnelnbError
from .fleet.runner import LoopRunner

__all__ = ["DETACHED", "run_local_terminal"]

#: :func:`run_local_terminal`'s answer when the user detached (``~.``).
DETACHED = "detached"
#: The size given to the device when the output is not a terminal.
DEFAULT_COLS, DEFAULT_ROWS = 128, 30
#: How often the key loop wakes up on its own to see whether the terminal ended.
POLL_S = 0.5
#: Bounds on the loop thread's work, so a dead link never hangs the local terminal.
OPEN_TIMEOUT_S = 120.0
DETACH_TIMEOUT_S = 15.0

TerminalFactory = Callable[..., Coroutine[Any, Any, Terminal]]


def run_local_terminal(
    runner: LoopRunner,
    open_terminal_coro_factory: TerminalFactory,
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    record: str | os.PathLike[str] | None = None,
    secrets: Iterable[str | tuple[str, str]] = (),
    escape_char: str | None = "~",
    title: str | None = None,
) -> str:
    """Attach a device's terminal to the local one until it ends or ``~.``; why it ended (:data:`DETACHED`).

    ``open_terminal_coro_factory(on_output=, on_note=, rows=, cols=)`` makes the
    coroutine that opens the terminal (``functools.partial(open_terminal, fleet,
    device_id)``); it runs on ``runner.loop``.  ``record`` writes the session's
    output to an asciicast v2 file with ``secrets`` masked.  Raises
    :class:`TerminalError` when the terminal cannot be opened.
    """
    if escape_char is not None and (len(escape_char) != 1 or not escape_char.isascii()):
        raise ValueError(f"the escape character must be one ASCII character, not {escape_char!r}")
    cols, rows = _size(stdout_fd, stdin_fd)
    writer = _writer(record, cols, rows, title, secrets) if record else None
    session = _LocalSession(runner.loop, stdin_fd, stdout_fd, escape_char)
    opened = False
    try:
        future = asyncio.run_coroutine_threadsafe(
            open_terminal_coro_factory(on_output=session.output, on_note=session.note, rows=rows, cols=cols),
            runner.loop,
        )
        try:
            terminal = future.result(OPEN_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise TerminalError(f"no terminal within {OPEN_TIMEOUT_S:g} s: try again", "timeout") from None
        except BaseException:
            future.cancel()
            raise
        opened = True
        session.recorder = writer
        return session.run(terminal)
    finally:
        session.close()
        if writer is not None:
            writer.close()
            if not opened:  # nothing was recorded: leave no empty recording behind
                with contextlib.suppress(OSError):
                    os.unlink(writer.path)


def _size(*fds: int) -> tuple[int, int]:
    """``(columns, rows)`` of the first of ``fds`` that is a terminal; 128x30 (the device's default) if none is."""
    for fd in fds:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    return DEFAULT_COLS, DEFAULT_ROWS


def _writer(
    path: str | os.PathLike[str], cols: int, rows: int, title: str | None, secrets: Iterable[str | tuple[str, str]]
) -> CastWriter:
    try:
        return CastWriter(path, width=cols, height=rows, title=title, secrets=secrets)
    except OSError as exc:
        raise TunnelnbError(
            f"cannot write the recording {os.fspath(path)} ({exc.strerror or exc}): give a path in a directory "
            "you can write to"
        ) from None


class _LocalSession:
    """The local terminal's side of one attached terminal: raw mode, keys, output, escapes, signals."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stdin_fd: int, stdout_fd: int, escape: str | None) -> None:
        self.loop = loop
        self.stdin_fd, self.stdout_fd = stdin_fd, stdout_fd
        self.escape = escape.encode("ascii") if escape is not None else None
        self.recorder: CastWriter | None = None
        self._shown: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._pipe_lock = threading.Lock()  # no wake-up byte into a closed (perhaps reused) descriptor
        self._pipe_open = True
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._at_line_start = True
        self._after_escape = False
        self._stop_reason = ""
        self._resized = False
        self._told_resize = False

    # -- called on the loop thread ---------------------------------------------------

    def output(self, data: bytes) -> None:
        self._shown.put(data)
        self._wake()

    def note(self, text: str) -> None:
        self._shown.put(f"\r\n[tunnelnb] {text}\r\n".encode())
        self._wake()

    def _wake(self) -> None:
        with self._pipe_lock, contextlib.suppress(OSError):  # a full pipe already wakes the reader
            if self._pipe_open:
                os.write(self._wake_w, b"\0")

    # -- this thread -------------------------------------------------------------------

    def run(self, terminal: Terminal) -> str:
        """Copy keys and output until the terminal ends or the user detaches; then detach, and say why."""
        keys: asyncio.Queue[bytes | None] = asyncio.Queue()
        sender = asyncio.run_coroutine_threadsafe(_send_keys(terminal, keys), self.loop)
        # Done only after the terminal's last note is queued (Terminal._end notes before its waiters run).
        ended = asyncio.run_coroutine_threadsafe(terminal.wait_closed(), self.loop)
        ended.add_done_callback(lambda _: self._wake())
        with self._raw(), self._signals():
            try:
                reason = self._copy(ended, terminal, keys)
            finally:
                self._give_back(terminal, keys, sender)
                ended.cancel()
                self._show_pending()
        return reason

    def _give_back(
        self, terminal: Terminal, keys: asyncio.Queue[bytes | None], sender: concurrent.futures.Future[None]
    ) -> None:
        """Send the keys typed so far, then detach: the device's shell goes back to framed commands."""
        self.loop.call_soon_threadsafe(keys.put_nowait, None)
        try:
            sender.result(DETACH_TIMEOUT_S)
        except Exception:
            sender.cancel()
        detach = asyncio.run_coroutine_threadsafe(terminal.detach(), self.loop)
        try:
            detach.result(DETACH_TIMEOUT_S)
        except Exception as exc:
            detach.cancel()
            self.note(
                f"could not give the shell on {terminal.device_id} back cleanly: {str(exc) or type(exc).__name__}"
            )

    def _copy(
        self, ended: concurrent.futures.Future[str], terminal: Terminal, keys: asyncio.Queue[bytes | None]
    ) -> str:
        with selectors.DefaultSelector() as selector:
            selector.register(self.stdin_fd, selectors.EVENT_READ, "keys")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while True:
                self._show_pending()
                if self._stop_reason:
                    return self._stop_reason
                if ended.done():
                    return terminal.end_reason
                if self._resized and not self._told_resize:
                    self._told_resize = True
                    self._show(
                        f"\r\n[tunnelnb] the local terminal was resized; the device's keeps its size, "
                        f"{terminal.cols}x{terminal.rows} (the tunnel cannot resize it)\r\n".encode()
                    )
                for key, _ in selector.select(POLL_S):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        continue
                    data = os.read(self.stdin_fd, 4096)
                    if not data:
                        return "the local terminal closed its input"
                    typed, detach = self._escapes(data)
                    if typed:
                        self.loop.call_soon_threadsafe(keys.put_nowait, typed)
                    if detach:
                        return DETACHED

    def _escapes(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to send for ``data`` typed, and whether ``~.`` asked to detach (ssh's escapes)."""
        if self.escape is None:
            return data, False
        out = bytearray()
        for value in data:
            byte = bytes((value,))
            if self._after_escape:
                self._after_escape = False
                if byte == b".":
                    return bytes(out), True
                if byte == b"?":
                    esc = self.escape.decode()
                    self._show(
                        f"\r\n[tunnelnb] escapes after Enter: {esc}. detach, {esc}{esc} type {esc}, "
                        f"{esc}? this help\r\n".encode()
                    )
                    continue  # still at the start of a line: ~. works next
                out += self.escape if byte == self.escape else self.escape + byte
            elif self._at_line_start and byte == self.escape:
                self._after_escape = True
                continue
            else:
                out += byte
            self._at_line_start = byte in (b"\r", b"\n")
        return bytes(out), False

    def _show_pending(self) -> None:
        while True:
            try:
                data = self._shown.get_nowait()
            except queue.Empty:
                return
            self._show(data)

    def _show(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.stdout_fd, view)
            except BlockingIOError:  # a terminal shared with a program that made it non-blocking
                select.select([], [self.stdout_fd], [], POLL_S)
                continue
            view = view[written:]
        if self.recorder is not None:
            self.recorder.output(data)

    @contextlib.contextmanager
    def _raw(self) -> Iterator[None]:
        """Raw mode on the local terminal, put back exactly as it was however the block ends."""
        try:
            saved = termios.tcgetattr(self.stdin_fd)
        except termios.error:  # not a terminal (a pipe in a test): nothing to set or restore
            yield
            return
        tty.setraw(self.stdin_fd, termios.TCSADRAIN)
        try:
            yield
        finally:
            with contextlib.suppress(termios.error, OSError):  # after SIGHUP the terminal may be gone
                termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, saved)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM and SIGHUP end the session cleanly; SIGWINCH is noted once (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: object) -> None:
            self._stop_reason = f"stopped by {signal.Signals(signum).name}"
            self._wake()

        def resized(signum: int, frame: object) -> None:
            self._resized = True
            self._wake()

        handlers = {signal.SIGTERM: stop, signal.SIGHUP: stop, signal.SIGWINCH: resized}
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def close(self) -> None:
        with self._pipe_lock:
            if self._pipe_open:
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)


async def _send_keys(terminal: Terminal, keys: asyncio.Queue[bytes | None]) -> None:
    """Type the keys in the order they came, until told to stop or the terminal ends."""
    while (data := await keys.get()) is not None:
        try:
            await terminal.send(data)
        except TerminalError:
            return

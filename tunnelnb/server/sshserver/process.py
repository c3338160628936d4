"""Children on a real pseudo-terminal (:class:`PtyProcess`) or on pipes (:class:`PipeProcess`).

Everything is driven by the event loop: no thread per child (exits are watched
with a pidfd, or by polling where there is none).  A PTY child behaves like
``sshd``'s: the shell is a session leader whose controlling terminal is the
PTY, so ``stty``, job control, Ctrl-C and canonical line editing work as users
expect; ending a child hangs up on its whole session, background jobs included.

:class:`PtyProcess` is reused by the device agent's ``--local-shell`` backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Mapping, Sequence

from .fdio import READ_SIZE, Reader, Writer

__all__ = ["PipeProcess", "PtyProcess"]

log = logging.getLogger(__name__)

#: Output kept for a reader (``PtyProcess.read``) before the child is paused.
_READ_HIGH_WATER = 256 * 1024
#: After the child exits, how long to wait for the terminal to report end of output.
_EOF_GRACE = 0.2
#: After SIGHUP, how long a session's processes get before SIGKILL.
_KILL_GRACE = 0.5


def _watch_exit(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen, callback: Callable[[int], None]) -> None:
    """Call ``callback(returncode)`` once ``popen`` exits, without a waiting thread.

    Python 3.11's asyncio waits for children with a thread each; a fleet has
    hundreds of shells, so watch a pidfd with the loop instead (polling where
    the kernel has no pidfd).
    """
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        pidfd = -1

    if pidfd >= 0:

        def ready() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            rc = popen.poll()
            callback(rc if rc is not None else popen.wait())

        loop.add_reader(pidfd, ready)
        return

    delay = 0.02

    def poll() -> None:
        nonlocal delay
        rc = popen.poll()
        if rc is not None:
            callback(rc)
            return
        delay = min(delay * 2, 0.5)
        loop.call_later(delay, poll)

    loop.call_later(delay, poll)


def _session_members(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (Linux ``/proc``; empty elsewhere).

    Background jobs of an interactive shell live in their own process groups,
    and outlive the shell, so killing the shell's group is not enough.
    """
    members: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return members
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # state ppid pgrp session ...
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            members.append(int(name))
    return members


def _signal_session(sid: int, *sigs: int) -> None:
    """Send each of ``sigs`` to every process of session ``sid`` (its leader's group and the rest)."""
    members = _session_members(sid)
    for sig in sigs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, sig)
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


class _Child:
    """What PTY and pipe children share: output delivery (callback or ``read``), exit, termination."""

    def __init__(
        self,
        on_data: Callable[[bytes], None] | None,
        on_eof: Callable[[], None] | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._user_on_data = on_data
        self._user_on_eof = on_eof
        self._buf = bytearray()
        self._buf_waiter: asyncio.Future[None] | None = None
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._readers: list[Reader] = []
        self._kill_handle: asyncio.TimerHandle | None = None
        self._eof_handle: asyncio.TimerHandle | None = None
        self._popen: subprocess.Popen | None = None
        self._writer: Writer  # set by the subclass once its input descriptor exists
        self.output_done = False

    # -- input ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write ``data`` to the child's input (queued without blocking; see :meth:`drain`)."""
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    @property
    def write_buffer_size(self) -> int:
        return self._writer.buffered

    # -- output --------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        if self._user_on_data is not None:
            self._user_on_data(data)
            return
        self._buf += data
        if len(self._buf) > _READ_HIGH_WATER:
            self.pause_reading()
        self._wake_reader()

    def _reader_eof(self) -> None:
        if self.output_done or not all(r.eof for r in self._readers):
            return
        self.output_done = True
        if self._eof_handle is not None:
            self._eof_handle.cancel()
        self._output_finished()
        if self._user_on_eof is not None:
            self._user_on_eof()
        self._wake_reader()

    def _output_finished(self) -> None:
        """Hook: all output has been read."""

    def _wake_reader(self) -> None:
        if self._buf_waiter is not None and not self._buf_waiter.done():
            self._buf_waiter.set_result(None)

    async def read(self, n: int = READ_SIZE) -> bytes:
        """Up to ``n`` bytes of output as soon as any is available; ``b""`` at the end.

        Only for children made without ``on_data``.
        """
        if self._user_on_data is not None:
            raise RuntimeError("this child delivers its output to on_data")
        while not self._buf and not self.output_done:
            self._buf_waiter = self._loop.create_future()
            try:
                await self._buf_waiter
            finally:
                self._buf_waiter = None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        if len(self._buf) <= _READ_HIGH_WATER // 2:
            self.resume_reading()
        return data

    def pause_reading(self) -> None:
        """Stop reading output (the child blocks once the kernel buffer is full)."""
        for r in self._readers:
            r.pause()

    def resume_reading(self) -> None:
        for r in self._readers:
            r.resume()

    # -- exit ----------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self._popen is not None
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status, or minus the signal number, once the child has exited."""
        return self._exit.result() if self._exit.done() else None

    def _start_watch(self) -> None:
        assert self._popen is not None
        _watch_exit(self._loop, self._popen, self._exited)

    def _exited(self, returncode: int) -> None:
        if not self._exit.done():
            self._exit.set_result(returncode)
        if not self.output_done:
            # Output still buffered in the kernel is readable now; a background
            # job holding the terminal open must not keep the session alive.
            for r in self._readers:
                r.drain_now()
            if not self.output_done:
                self._eof_handle = self._loop.call_later(_EOF_GRACE, self._force_eof)

    def _force_eof(self) -> None:
        for r in self._readers:
            r.drain_now()
            r.finish()

    async def wait(self) -> int:
        """Wait for the child to exit; its exit status, or minus the killing signal."""
        return await asyncio.shield(self._exit)

    # -- termination -----------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's process group."""
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)

    def terminate(self) -> None:
        """Hang up on the child's whole session (SIGHUP, then SIGKILL after a grace period).

        Idempotent.  The child's session id is its pid (it was started with ``setsid``).
        """
        if self._popen is None or self._kill_handle is not None:
            return
        sid = self._popen.pid
        _signal_session(sid, signal.SIGHUP, signal.SIGCONT)
        self._kill_handle = self._loop.call_later(_KILL_GRACE, _signal_session, sid, signal.SIGKILL)
        self._close_io()

    def _close_io(self) -> None:
        for r in self._readers:
            r.finish()

    async def close(self, timeout: float = 2.0) -> int | None:
        """Terminate and wait (bounded) for the exit; the return code, or None if it did not exit."""
        self.terminate()
        try:
            return await asyncio.wait_for(self.wait(), timeout)
        except TimeoutError:
            log.warning("process %d did not exit %.1f s after SIGKILL was scheduled", self.pid, timeout)
            return None


def _make_controlling_tty() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# termios lacks IUTF8 before Python 3.12; its value on Linux is 0o40000.
_IUTF8 = getattr(termios, "IUTF8", 0o40000 if sys.platform.startswith("linux") else 0)


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyProcess(_Child):
    """A program on a real pseudo-terminal, pumped by the event loop.

    The child is a session leader (``setsid``) whose controlling terminal is
    the PTY's slave side, exactly as under ``sshd``: the line discipline does
    echo, canonical editing and Ctrl-C → SIGINT to the foreground job.

    Output goes to ``on_data(bytes)`` if given (pause with
    :meth:`pause_reading`), otherwise it is read with :meth:`read`.
    ``on_eof()`` is called once all output has been delivered.  Must be created
    inside a running event loop.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cols: int = 80,
        rows: int = 24,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        on_data: Callable[[bytes], None] | None = None,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(on_data, on_eof)
        master, slave = os.openpty()
        try:
            _set_winsize(master, cols, rows)
            if _IUTF8:
                with contextlib.suppress(termios.error):
                    attrs = termios.tcgetattr(slave)
                    attrs[0] |= _IUTF8  # so backspace erases a whole UTF-8 character
                    termios.tcsetattr(slave, termios.TCSANOW, attrs)
            self._popen = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_make_controlling_tty,
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self._writer = Writer(self._loop, master, close_fd=False)
        self._readers = [Reader(self._loop, master, self._deliver, self._reader_eof, close_fd=False)]
        self._master_closed = False
        self._start_watch()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the terminal's foreground job, as the line discipline does for Ctrl-C."""
        pgrp = None
        if not self._master_closed:
            with contextlib.suppress(OSError):
                pgrp = os.tcgetpgrp(self._master)
        if pgrp is None or pgrp <= 0:
            super().signal(sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgrp, sig)

    def resize(self, cols: int, rows: int) -> None:
        """Set the terminal size; the kernel sends SIGWINCH to the foreground job."""
        if not self._master_closed and cols > 0 and rows > 0:
            with contextlib.suppress(OSError):
                _set_winsize(self._master, cols, rows)

    def _output_finished(self) -> None:
        if self.returncode is not None or self._kill_handle is not None:
            self._close_master()

    def _exited(self, returncode: int) -> None:
        super()._exited(returncode)
        if self.output_done:
            self._close_master()

    def _close_io(self) -> None:
        super()._close_io()
        self._close_master()

    def _close_master(self) -> None:
        if self._master_closed:
            return
        self._master_closed = True
        self._writer.close()
        for r in self._readers:
            r.finish()
        os.close(self._master)


class PipeProcess(_Child):
    """A program on pipes (SSH sessions without a PTY): stdout and stderr are delivered separately."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        on_data: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(on_data, on_eof)
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self._popen = subprocess.Popen(
                list(argv),
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        fds = [in_w, out_r, err_r]
        for fd in fds:
            os.set_blocking(fd, False)
        self._writer = Writer(self._loop, fds[0], close_fd=True)
        err_sink = on_stderr if on_stderr is not None else self._deliver
        self._readers = [
            Reader(self._loop, fds[1], self._deliver, self._reader_eof, close_fd=True),
            Reader(self._loop, fds[2], err_sink, self._reader_eof, close_fd=True),
        ]
        self._start_watch()

    def write_eof(self) -> None:
        self._writer.write_eof()

    def _close_io(self) -> None:
        super()._close_io()
        self._writer.close()

"""An embedded SSH server whose sessions run a real shell on a real pseudo-terminal.

The simulated fleet runs hundreds of these in one process, so everything is
driven by the event loop: no thread per session, no thread per child (exits
are watched with a pidfd, or by polling where there is none), and one host key
per process.  A PTY session behaves like ``sshd``'s: the shell is a session
leader whose controlling terminal is the PTY, so ``stty``, job control, Ctrl-C
and canonical line editing work as users expect.

:class:`PtyProcess` (spawn a program on a PTY and pump its bytes with the loop)
is reused by the device agent's ``--local-shell`` backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import logging
import os
import signal
import struct
import subprocess
import sys
import termios
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncssh

__all__ = ["PipeProcess", "PtyProcess", "ShellServer", "default_host_key"]

log = logging.getLogger("tunnelnb.server.sshserver")

_READ_SIZE = 65536
#: At most this much output is gathered per wakeup before it is handed on.
_READ_BATCH = 256 * 1024
#: Output kept for a reader (``PtyProcess.read``) before the child is paused.
_READ_HIGH_WATER = 256 * 1024
#: Input queued for the child before a writer is asked to wait (``drain``).
_WRITE_HIGH_WATER = 64 * 1024
#: After the child exits, how long to wait for the terminal to report end of output.
_EOF_GRACE = 0.2
#: After SIGHUP, how long a session's processes get before SIGKILL.
_KILL_GRACE = 0.5

_host_key: asyncssh.SSHKey | None = None


def default_host_key() -> asyncssh.SSHKey:
    """One host key per process: generating keys is slow, and a fleet needs hundreds of servers."""
    global _host_key
    if _host_key is None:
        _host_key = asyncssh.generate_private_key("ssh-ed25519")
    return _host_key


# ---------------------------------------------------------------------------
# Children without threads


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
    members = []
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


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        return "KILL"


class _Writer:
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
        if self._size <= _WRITE_HIGH_WATER:
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
        while self._size > _WRITE_HIGH_WATER and not self._closed:
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


class _Reader:
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
                data = os.read(self._fd, _READ_SIZE)
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
                data = os.read(self._fd, _READ_SIZE)
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
        self._readers: list[_Reader] = []
        self._kill_handle: asyncio.TimerHandle | None = None
        self._eof_handle: asyncio.TimerHandle | None = None
        self._popen: subprocess.Popen | None = None
        self.output_done = False

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

    async def read(self, n: int = _READ_SIZE) -> bytes:
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
        self._writer = _Writer(self._loop, master, close_fd=False)
        self._readers = [_Reader(self._loop, master, self._deliver, self._reader_eof, close_fd=False)]
        self._master_closed = False
        self._start_watch()

    def write(self, data: bytes) -> None:
        """Type ``data`` into the terminal (queued without blocking; see :meth:`drain`)."""
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    @property
    def write_buffer_size(self) -> int:
        return self._writer.buffered

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
        self._writer = _Writer(self._loop, fds[0], close_fd=True)
        err_sink = on_stderr if on_stderr is not None else self._deliver
        self._readers = [
            _Reader(self._loop, fds[1], self._deliver, self._reader_eof, close_fd=True),
            _Reader(self._loop, fds[2], err_sink, self._reader_eof, close_fd=True),
        ]
        self._start_watch()

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    @property
    def write_buffer_size(self) -> int:
        return self._writer.buffered

    def write_eof(self) -> None:
        self._writer.write_eof()

    def _close_io(self) -> None:
        super()._close_io()
        self._writer.close()


# ---------------------------------------------------------------------------
# The SSH server


class _Session(asyncssh.SSHServerSession[bytes]):
    """One SSH session channel: a shell or a command, on a PTY when the client asked for one."""

    def __init__(self, server: ShellServer, username: str) -> None:
        self._server = server
        self._username = username
        self._chan: Any = None
        self._term: tuple[str, int, int] | None = None
        self._command: str | None = None
        self._proc: PtyProcess | PipeProcess | None = None
        self._input_paused = False

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        self._term = (term_type, term_size[0] or 80, term_size[1] or 24)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        server = self._server
        if self._command is None:
            argv = list(server.shell)
        else:
            argv = [server.shell[0], "-c", self._command]
        env = server._child_env(self._username, self._term[0] if self._term else None, self._chan.get_environment())
        try:
            if self._term is not None:
                _, cols, rows = self._term
                self._proc = PtyProcess(
                    argv, cols=cols, rows=rows, cwd=server.cwd, env=env, on_data=self._out, on_eof=self._out_eof
                )
            else:
                self._proc = PipeProcess(
                    argv, cwd=server.cwd, env=env, on_data=self._out, on_stderr=self._err, on_eof=self._out_eof
                )
        except Exception as exc:  # an exception here would only close the channel, silently
            log.warning("cannot start %s for %s: %s", argv[0], self._username, exc)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._chan.write_stderr(f"cannot start {argv[0]}: {reason}\r\n".encode())
            self._chan.exit(127)
            return
        server._procs.add(self._proc)

    # Output: child → channel, pausing the child while the channel's buffer is full.
    def _out(self, data: bytes) -> None:
        if not self._chan.is_closing():  # the client hung up: its output has nowhere to go
            self._chan.write(data)

    def _err(self, data: bytes) -> None:
        if not self._chan.is_closing():
            self._chan.write_stderr(data)

    def pause_writing(self) -> None:
        if self._proc is not None:
            self._proc.pause_reading()

    def resume_writing(self) -> None:
        if self._proc is not None:
            self._proc.resume_reading()

    def _out_eof(self) -> None:
        proc = self._proc
        assert proc is not None
        self._server._spawn(self._finish(proc))

    async def _finish(self, proc: PtyProcess | PipeProcess) -> None:
        """Report the exit status once output is done and the child has exited."""
        rc = await proc.wait()
        proc.terminate()  # background jobs left in the session go too
        self._server._procs.discard(proc)
        if self._chan.is_closing():
            return
        if rc >= 0:
            self._chan.exit(rc)
        else:
            self._chan.exit_with_signal(_signal_name(rc))

    # Input: channel → child, pausing the channel while the child does not read.
    def data_received(self, data: bytes, datatype: Any) -> None:
        if self._proc is None:
            return
        self._proc.write(data)
        if self._proc.write_buffer_size > _WRITE_HIGH_WATER and not self._input_paused:
            self._input_paused = True
            self._chan.pause_reading()
            self._server._spawn(self._resume_input(self._proc))

    async def _resume_input(self, proc: PtyProcess | PipeProcess) -> None:
        try:
            await proc.drain()
        finally:
            self._input_paused = False
            if not self._chan.is_closing():
                self._chan.resume_reading()

    def eof_received(self) -> bool:
        if isinstance(self._proc, PipeProcess):
            self._proc.write_eof()
        return True  # keep the channel open for the output and exit status

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if isinstance(self._proc, PtyProcess):
            self._proc.resize(width, height)

    def signal_received(self, signal_name: str) -> None:
        sig = getattr(signal, "SIG" + signal_name, None)
        if sig is not None and self._proc is not None:
            self._proc.signal(sig)

    def break_received(self, msec: int) -> bool:
        if self._proc is not None:
            self._proc.signal(signal.SIGINT)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._server._spawn(self._reap(self._proc))

    async def _reap(self, proc: PtyProcess | PipeProcess) -> None:
        await proc.close()
        self._server._procs.discard(proc)


class _Server(asyncssh.SSHServer):
    """Password authentication against the configured users; sessions only (no forwarding)."""

    def __init__(self, owner: ShellServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None
        self._username = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner._conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        self._username = username
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        expected = self._owner._users.get(username)
        # Compare even for unknown users, so timing does not reveal which names exist.
        ok = hmac.compare_digest(password.encode("utf-8", "surrogatepass"), (expected or "\0").encode("utf-8"))
        return ok and expected is not None

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _Session(self._owner, self._username)


class ShellServer:
    """An SSH server on loopback whose users get a real shell, as from ``sshd``.

    Password authentication only.  ``host_key=None`` uses one key generated per
    process (see :func:`default_host_key`).  ``port=0`` picks a free port; read
    :attr:`port` after :meth:`start`.  Use as ``async with ShellServer(...) as srv``.
    """

    def __init__(
        self,
        *,
        users: dict[str, str],
        host: str = "127.0.0.1",
        port: int = 0,
        shell: Sequence[str] = ("/bin/sh",),
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        host_key: asyncssh.SSHKey | None = None,
    ) -> None:
        if not shell:
            raise ValueError("shell must name a program")
        self._users = dict(users)
        self.host = host
        self.port = port
        self.shell = tuple(shell)
        self.cwd = cwd
        self.env = dict(env or {})
        self._host_key = host_key
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._procs: set[PtyProcess | PipeProcess] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        """Run a session's housekeeping in a task that :meth:`stop` waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _child_env(self, username: str, term: str | None, requested: Mapping[str, str]) -> dict[str, str]:
        """A clean login environment, like sshd's, plus the locale the client asked for."""
        home = self.cwd or os.environ.get("HOME", "/")
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": home,
            "USER": username,
            "LOGNAME": username,
            "SHELL": self.shell[0],
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        if term:
            env["TERM"] = term
        for key, value in requested.items():
            if key == "LANG" or key.startswith("LC_"):
                env[key] = value
        env.update(self.env)
        return env

    async def start(self) -> None:
        if self._acceptor is not None:
            return
        self._acceptor = await asyncssh.create_server(
            lambda: _Server(self),
            self.host,
            self.port,
            server_host_keys=[self._host_key or default_host_key()],
            encoding=None,
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            login_timeout=30,
        )
        self.port = self._acceptor.get_port()
        log.debug("SSH server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening, close every connection and end every shell (with its whole session)."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
        for conn in list(self._conns):
            conn.close()
        procs = list(self._procs)
        for proc in procs:
            proc.terminate()
        if procs:
            await asyncio.gather(*(p.close() for p in procs), return_exceptions=True)
        self._procs.clear()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=3)
        if acceptor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(acceptor.wait_closed(), 2)

    async def __aenter__(self) -> ShellServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

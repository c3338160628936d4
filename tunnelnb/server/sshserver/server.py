"""The asyncssh glue: an SSH server on loopback whose sessions run a real shell.

:class:`ShellServer` listens and authenticates users by password; each session
channel runs a shell or a command as a :class:`~.process.PtyProcess` (when the
client asked for a PTY) or a :class:`~.process.PipeProcess`, with flow control
both ways, and reports the exit status as ``sshd`` does.  One host key per
process (:func:`default_host_key`), as the simulated fleet runs hundreds of
these servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

import asyncssh

from .fdio import WRITE_HIGH_WATER
from .process import PipeProcess, PtyProcess

__all__ = ["ShellServer", "default_host_key"]

log = logging.getLogger(__name__)

_host_key: asyncssh.SSHKey | None = None


def default_host_key() -> asyncssh.SSHKey:
    """One host key per process: generating keys is slow, and a fleet needs hundreds of servers."""
    global _host_key
    if _host_key is None:
        _host_key = asyncssh.generate_private_key("ssh-ed25519")
    return _host_key


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        return "KILL"


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
        if self._proc.write_buffer_size > WRITE_HIGH_WATER and not self._input_paused:
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

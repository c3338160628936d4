"""Where a tunnel's shell runs: an SSH login (asyncssh) or a PTY shell spawned directly.

A ``connect`` frame opens one of these backends; both feed the shell's
terminal output into an :class:`Inbox`, which pauses them while the tunnel
falls behind, and both report a failed login as :class:`LoginFailed`, which
carries the ``disconnect`` status the application is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncssh

from ...protocol.frames import Status
from ..sshserver import PtyProcess
from . import switchuser

__all__ = [
    "Backend",
    "Inbox",
    "LocalBackend",
    "LoginFailed",
    "SSHBackend",
    "ShellAccount",
    "local_shell_argv",
    "reason",
    "shell_account",
    "shell_env",
]

#: Output read ahead of the tunnel before the shell is paused.
_INBOX_HIGH_WATER = 512 * 1024
_SSH_CONNECT_TIMEOUT = 10.0


class LoginFailed(Exception):
    """Opening the shell failed; carries the ``disconnect`` status to report."""

    def __init__(self, status_code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def reason(exc: BaseException) -> str:
    """A short human reason: ``Connection refused`` rather than ``[Errno 111] Connect call failed …``."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        detail = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        return f"its TLS certificate is not trusted ({detail}): give its CA bundle (--ca-bundle)"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, asyncssh.DisconnectError) and exc.reason:
        return exc.reason
    return str(exc) or type(exc).__name__


class Inbox:
    """Shell output waiting to be framed; pauses the producer above a high-water mark."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._want = 1
        self._paused = False
        self.pause: Callable[[], None] = lambda: None
        self.resume: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def finished(self) -> bool:
        """All output has been taken."""
        return self.eof and not self._buf

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > _INBOX_HIGH_WATER and not self._paused:
            self._paused = True
            self.pause()
        if len(self._buf) >= self._want:
            self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait_for(self, want: int, timeout: float | None) -> None:
        if len(self._buf) >= want or self.eof:
            return
        self._want = want
        self._waiter = self._loop.create_future()
        handle = None if timeout is None else self._loop.call_later(timeout, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._want = 1
            if handle is not None:
                handle.cancel()

    async def wait(self, *, timeout: float | None = None, fill: int = 1, linger: float = 0.0) -> None:
        """Wait for output (or its end); then up to ``linger`` more seconds until ``fill`` bytes are pending."""
        await self._wait_for(1, timeout)
        if linger > 0 and fill > 1:
            await self._wait_for(fill, linger)

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes of the output, copied once (a slice and its bytes were two copies)."""
        buf = self._buf
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            with memoryview(buf) as view:
                data = bytes(view[:n])
            del buf[:n]
        if self._paused and len(self._buf) <= _INBOX_HIGH_WATER // 2:
            self._paused = False
            self.resume()
        return data


# ---------------------------------------------------------------------------
# Shell backends: an SSH login, or a PTY shell spawned directly


class _SSHClientSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._inbox.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inbox.feed_eof()


class SSHBackend:
    """An interactive PTY shell over SSH, as ``ssh -t user@host`` would open it."""

    def __init__(self, conn: asyncssh.SSHClientConnection, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._conn = conn
        self._chan = chan

    @classmethod
    async def open(
        cls, host: str, port: int, username: str, password: str, term_size: tuple[int, int], inbox: Inbox
    ) -> SSHBackend:
        where = f"{host}:{port}"
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    host,
                    port,
                    username=username,
                    password=password,
                    known_hosts=None,
                    client_keys=None,
                    agent_path=None,
                    config=None,
                    preferred_auth="password,keyboard-interactive",
                    connect_timeout=_SSH_CONNECT_TIMEOUT,
                ),
                _SSH_CONNECT_TIMEOUT + 5,
            )
        except asyncssh.PermissionDenied:
            raise LoginFailed(
                Status.AUTH_FAILED, f"SSH login refused for user {username!r} on {where}: wrong user name or password"
            ) from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise LoginFailed(Status.CHANNEL_FAILED, f"cannot reach the SSH server at {where}: {reason(exc)}") from None
        try:
            chan, _ = await conn.create_session(
                lambda: _SSHClientSession(inbox), term_type="xterm", term_size=term_size, encoding=None
            )
        except (OSError, asyncssh.Error) as exc:
            conn.close()
            raise LoginFailed(
                Status.CHANNEL_FAILED, f"the SSH server at {where} refused a shell: {reason(exc)}"
            ) from None
        inbox.pause = chan.pause_reading
        inbox.resume = chan.resume_reading
        return cls(conn, chan)

    def write(self, data: bytes) -> None:
        if not self._chan.is_closing():
            self._chan.write(data)

    async def exit_code(self) -> int | None:
        """The shell's exit status (128+N for a signal); None if the session ended without one."""
        rc = self._chan.get_returncode()
        return None if rc is None else (rc if rc >= 0 else 128 - rc)

    async def close(self) -> None:
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), 2)


@dataclass(frozen=True)
class ShellAccount:
    """The local account a ``--local-shell`` runs as (from the password database)."""

    name: str
    uid: int
    gid: int
    home: str


def shell_account(name: str) -> ShellAccount | None:
    """The account called ``name``, or None if this machine has none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return ShellAccount(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")


def local_shell_argv(shell: Sequence[str], account: ShellAccount | None) -> list[str]:
    """The command line of a local shell: ``shell`` itself, or behind :mod:`.switchuser` when root must switch.

    The switch happens in the child between fork and the shell's exec (the PTY
    process is spawned by :mod:`tunnelnb.server.sshserver`, which knows nothing of
    users), so the agent never runs anything of the user's as root.
    """
    if account is None or os.geteuid() != 0 or account.uid == 0:
        return list(shell)
    return [
        sys.executable,
        "-I",
        "-S",
        switchuser.__file__,
        account.name,
        str(account.uid),
        str(account.gid),
        account.home,
        "--",
        *shell,
    ]


#: Variables of the agent's environment a shell may inherit; everything else (the device
#: secret, the login password, API tokens, whatever the agent was started with) stays out.
_INHERITED = ("PATH", "LANG", "TZ")


def shell_env(shell: str, username: str, home: str) -> dict[str, str]:
    """A local shell's environment: built from an allow-list, never copied from the agent's."""
    env = {key: os.environ[key] for key in _INHERITED if key in os.environ}
    env.update({key: value for key, value in os.environ.items() if key.startswith("LC_")})
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update({"HOME": home, "USER": username, "LOGNAME": username, "SHELL": shell, "TERM": "xterm"})
    return env


class LocalBackend:
    """A PTY shell spawned by the agent itself (``--local-shell``): no SSH server needed."""

    def __init__(self, proc: PtyProcess) -> None:
        self._proc = proc

    @classmethod
    def open(
        cls,
        shell: Sequence[str],
        username: str,
        term_size: tuple[int, int],
        inbox: Inbox,
        account: ShellAccount | None = None,
    ) -> LocalBackend:
        """Spawn ``shell`` on a PTY, as ``account`` if the agent is root (see :func:`local_shell_argv`)."""
        argv = local_shell_argv(shell, account)
        if account is not None and os.geteuid() == 0:
            env = shell_env(shell[0], account.name, account.home)
        else:  # not root: the shell is the agent's user, whatever the login was called
            env = shell_env(shell[0], username, os.environ.get("HOME", "/"))
        try:
            proc = PtyProcess(
                argv, cols=term_size[0], rows=term_size[1], env=env, on_data=inbox.feed, on_eof=inbox.feed_eof
            )
        except OSError as exc:
            raise LoginFailed(Status.CHANNEL_FAILED, f"cannot start the shell {shell[0]}: {reason(exc)}") from None
        inbox.pause = proc.pause_reading
        inbox.resume = proc.resume_reading
        return cls(proc)

    def write(self, data: bytes) -> None:
        self._proc.write(data)

    async def exit_code(self) -> int | None:
        rc = await self._proc.wait()
        return rc if rc >= 0 else 128 - rc

    async def close(self) -> None:
        await self._proc.close()


Backend = SSHBackend | LocalBackend

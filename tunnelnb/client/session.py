"""One device through its tunnel: open, log in, run commands.

:class:`DeviceSession` owns a tunnel's application side.  It creates (or takes
over) the device's tunnel, waits for the device to join, logs in to its SSH
shell and runs commands with the marker framing of :mod:`tunnelnb.protocol.shell`,
so each command gets its own output and exit code out of a raw PTY stream.  It
tolerates what real devices do (responses stamped with the wrong request id,
``connect_response`` before the login is even tried, lost chunks) because it
routes output by tunnel and trusts only its own markers.  Its state is one
:class:`~tunnelnb.client.state.SessionState`, moved only through the transition
table of :mod:`tunnelnb.client.state`.

    async with PlatformAPI(url, project_id="demo", api_token=token) as api:
        async with DeviceSession(api, "device-01") as dev:
            await dev.login("ops", password)
            result = await dev.run("uname -a")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from ..errors import (
    AuthFailed,
    DeviceDisconnected,
    DeviceOffline,
    LoginError,
    TunnelClosed,
    TunnelError,
    TunnelnbError,
)
from ..protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, Frame, Status
from ..protocol.shell import (
    PTY_COLS,
    PTY_ROWS,
    CommandParser,
    Finished,
    TerminalText,
    command_script,
    new_marker_id,
    strip_escapes,
)
from .backend import PlatformBackend
from .link import TunnelLink
from .recovery import (
    ESCAPE_KEYS,
    LOGIN_ATTEMPTS,
    LOGIN_SYNC_S,
    NOTE_NEW_SHELL,
    NOTE_NEW_TUNNEL,
    NOTE_SHELL_RESTARTED,
    RESYNC_MAX_S,
    RESYNC_SHARES,
    disconnect_error,
)
from .result import CommandResult, ResultStatus
from .shellsync import ShellEvents, sync_shell
from .state import Event, SessionState
from .terminal import Terminal
from .transfer import DEFAULT_TIMEOUT_S, FileResult, Outcome, Progress, download, guarded, upload
from .verified import Execute, remove_temp_files, run_verified

__all__ = ["NOTE_NEW_SHELL", "NOTE_NEW_TUNNEL", "NOTE_SHELL_RESTARTED", "DeviceSession"]

log = logging.getLogger(__name__)


@dataclass
class _Running:
    """The command in flight: its parser and the events the reader hands it."""

    parser: CommandParser
    events: ShellEvents = field(default_factory=asyncio.Queue)


class DeviceSession(TunnelLink):
    """The application side of one device's tunnel.

    Use as ``async with``: the tunnel is closed on exit (and deleted when
    ``delete_tunnel=True``).  Commands run one at a time, in the session's
    persistent shell, so ``cd`` and variables carry over.  After a lost
    connection the session reopens the tunnel and logs in again by itself on
    the next :meth:`run`.
    """

    def __init__(
        self,
        api: PlatformBackend,
        device_id: str,
        *,
        join_timeout: float = 15.0,
        heartbeat: float | None = 20.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect_tries: int = 5,
        reconnect_step: float = 1.0,
        delete_tunnel: bool = False,
    ) -> None:
        super().__init__(
            api,
            device_id,
            join_timeout=join_timeout,
            heartbeat=heartbeat,
            max_message_bytes=max_message_bytes,
            reconnect_tries=reconnect_tries,
            reconnect_step=reconnect_step,
            delete_tunnel=delete_tunnel,
        )
        self._marker_seq = itertools.count(1)
        self._tag = self._clock.token_hex(4)
        self._login_waiter: asyncio.Future[None] | None = None
        self._running: _Running | None = None
        # Escapes stay in the live output (notebooks and terminals render colours);
        # a result's stdout has them stripped.
        self._term = TerminalText(strip_escapes=False)
        self._lock = asyncio.Lock()
        self._credentials: tuple[str, str] | None = None
        self._temp_files: list[str] = []  # marker ids of verified runs whose temporary files may be left
        self.last_result: CommandResult | None = None
        self._terminal: Terminal | None = None  # attached: the shell is an interactive terminal's

    def __repr__(self) -> str:
        return f"<DeviceSession {self.device_id} tunnel={self.tunnel_id} {self.state.value}>"

    # -- frames from the device ----------------------------------------------

    def _on_output(self, data: str) -> None:
        if self._terminal is not None:
            self._terminal._received(data)
            return
        text = self._term.feed(data)
        running = self._running
        if running is not None and text:
            for event in running.parser.feed(text):
                running.events.put_nowait(event)

    def _on_connect_response(self) -> None:
        if self._login_waiter is not None and not self._login_waiter.done():
            self._login_waiter.set_result(None)

    def _on_disconnect(self, data: dict[str, object]) -> None:
        code = str(data.get("status_code", ""))
        msg = str(data.get("status_msg", "") or "no reason given")
        log.info("device %s: disconnect %s (%s)", self.device_id, code, msg)
        logging_in = self.state is SessionState.LOGGING_IN
        self._process(Event.LEAVE if code in (Status.PEER_GONE, Status.TUNNEL_CLOSED) else Event.DISCONNECT)
        error = disconnect_error(self.device_id, code, msg, logging_in=logging_in)
        self.last_error = str(error)
        self._fail_waiters(error)

    def _fail_waiters(self, error: BaseException) -> None:
        if self._login_waiter is not None and not self._login_waiter.done():
            self._login_waiter.set_exception(error)
        if self._running is not None:
            self._running.events.put_nowait(error)

    # -- login ------------------------------------------------------------

    async def login(self, user: str, password: str, *, timeout: float = 15.0) -> None:
        """Log in to the device's SSH shell and prepare it for framed commands.

        Raises :class:`AuthFailed` for a wrong user or password, :class:`LoginError`
        when the device cannot reach its SSH server, :class:`DeviceOffline` when the
        device is not in the tunnel.
        """
        async with self._lock:
            self._credentials = (user, password)
            await self._login(timeout)

    async def _login(self, timeout: float) -> None:
        """Join and log in within ``timeout``; again on the next join when the device leaves meanwhile."""
        if self.closed:
            raise TunnelnbError(f"session to {self.device_id} is closed")
        clock = self._clock
        deadline = clock.monotonic() + timeout
        left = timeout
        for attempt in range(1, LOGIN_ATTEMPTS + 1):
            if attempt > 1:  # (a replay serves clock readings in the order they were made: read only when needed)
                left = max(deadline - clock.monotonic(), 0.001)
            if self.state in (SessionState.IDLE, SessionState.RECONNECTING) or self._grant is None:
                await self.open(timeout=left)
            elif self.state is SessionState.WAITING:
                await self._rejoin(left)
            try:
                await self._login_once(deadline, timeout)
                return
            except DeviceDisconnected as exc:  # the device left (or our connection dropped) meanwhile
                if attempt == LOGIN_ATTEMPTS or clock.monotonic() >= deadline:
                    raise
                log.info("device %s: %s; logging in again on its next join", self.device_id, exc)

    async def _login_once(self, deadline: float, timeout: float) -> None:
        assert self._credentials is not None and self._sock is not None
        user, password = self._credentials
        self._login_waiter = asyncio.get_running_loop().create_future()
        self._process(Event.LOGIN)
        try:
            start, tries = deadline - timeout, 1
            while True:
                await self._sock.send(Frame.connect(self._ids.next(), user, password))
                async with self._clock.timeout_at(deadline):
                    await self._login_waiter
                # connect_response may come before the SSH login is even tried (C SDK),
                # so the login holds only once the shell answers a framed no-op.
                try:
                    await self._sync(min(deadline, start + tries * LOGIN_SYNC_S))
                    break
                except TimeoutError:
                    if self._clock.monotonic() >= deadline:
                        raise
                # A shell that never answers (recovery.LOGIN_SYNC_S): have the device open a new SSH session.
                log.info("device %s: its shell does not answer: sending connect again", self.device_id)
                tries += 1
                self._login_waiter = asyncio.get_running_loop().create_future()
        except TimeoutError:
            self._process_if(SessionState.LOGGING_IN, Event.LOGIN_FAILED)
            raise LoginError(
                f"{self.device_id}: no answer to the login within {timeout:g} s: the device's SSH server may be "
                "slow or unreachable",
                None,
            ) from None
        except TunnelClosed as exc:  # sending failed: our connection dropped
            self._process_if(SessionState.LOGGING_IN, Event.LOGIN_FAILED)
            raise DeviceDisconnected(f"{self.device_id}: {exc}", None) from None
        except BaseException:
            self._process_if(SessionState.LOGGING_IN, Event.LOGIN_FAILED)
            raise
        finally:
            self._login_waiter = None
        if self.state is not SessionState.LOGGING_IN:
            raise DeviceDisconnected(f"{self.device_id} left the tunnel during the login", None)
        self._process(Event.LOGGED_IN)
        if self._had_shell and not self._note:
            self._note = NOTE_NEW_SHELL  # the next run's row says the shell's state is gone
        self._had_shell = True
        log.info("device %s: logged in as %s", self.device_id, user)

    async def _sync(self, deadline: float) -> None:
        """Run :func:`sync_shell` on this session's shell, with a fresh marker."""
        marker = new_marker_id(next(self._marker_seq), self._tag)
        running = _Running(CommandParser(marker))
        self._running = running
        try:
            await sync_shell(self._send_text, running.events, marker, self._clock, deadline)
        finally:
            self._running = None

    async def _resync(self, timeout: float) -> None:
        """Get a shell that was sent Ctrl-C answering again (RESYNC → READY), within ``timeout``.

        First as it is, then after the keys that leave full-screen programs, each
        for a share of the time; then a new shell (``connect`` again), noted in
        the run's row.
        """
        clock = self._clock
        deadline = clock.monotonic() + timeout
        phase_end = deadline - timeout
        self._process(Event.RUN)
        try:
            for keys, share in zip(("", ESCAPE_KEYS), RESYNC_SHARES, strict=True):
                phase_end += min(timeout * share, RESYNC_MAX_S)
                if keys:
                    await self._send_text(keys)
                try:
                    await self._sync(phase_end)
                except TimeoutError:
                    continue
                self._process_if(SessionState.RUNNING, Event.DONE)
                return
        finally:
            self._process_if(SessionState.RUNNING, Event.INTERRUPTED)
        log.info("device %s: the shell does not answer after Ctrl-C; logging in again", self.device_id)
        await self._login(max(deadline - clock.monotonic(), 0.001))
        self._note = NOTE_SHELL_RESTARTED

    async def _prepare(self, timeout: float) -> tuple[str, str] | None:
        """A logged-in, answering shell within ``timeout``; else the ``(status, error)`` of the row."""
        if self.state is SessionState.ATTACHED:
            return ResultStatus.SKIPPED, (
                f"a terminal is attached to {self.device_id} (%tunnel shell, tunnelnb shell): "
                "detach it (its Detach button, or ~. after Enter) and run again"
            )
        try:
            if not self.logged_in:
                if self._credentials is None:
                    raise TunnelnbError(f"log in to {self.device_id} first: session.login(user, password)")
                await self._login(timeout)
            if self.state is SessionState.RESYNC:
                await self._resync(timeout)
        except AuthFailed as exc:
            return ResultStatus.AUTH_FAILED, str(exc)
        except DeviceOffline as exc:
            return ResultStatus.OFFLINE, str(exc)
        except TimeoutError:
            return ResultStatus.TIMEOUT, f"the shell did not answer within {timeout:g} s"
        except TunnelnbError as exc:
            return ResultStatus.DISCONNECTED, str(exc)
        if self.state is not SessionState.READY:  # the device left between the login and now
            return ResultStatus.DISCONNECTED, self.last_error or f"{self.device_id} left the tunnel"
        return None

    async def _ready(self, timeout: float) -> tuple[str, str] | None:
        """:meth:`_prepare`, then the temporary files that verified runs or puts left removed (under the lock)."""
        failed = await self._prepare(timeout)
        if failed is None and self._temp_files:  # left by runs that timed out or were cancelled
            await self._remove_temp_files()
            failed = await self._prepare(timeout)
        return failed

    # -- commands ---------------------------------------------------------

    async def run(
        self,
        command: str,
        *,
        timeout: float = 30.0,
        verify: bool = False,
        on_output: Callable[[str], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` in the device's shell; the result's status says how it went.

        Timeouts, a device that leaves and a failed re-login are results, not
        exceptions; a session that had to recover says so in the result's
        ``error`` (a new shell has lost ``cd`` and variables).  Cancelling
        interrupts the command on the device (Ctrl-C) and re-raises
        :class:`asyncio.CancelledError`.

        ``verify=True`` (for devices that damage output, like the C SDK's): the
        device keeps the output in a temporary file and sends it checksummed;
        damaged blocks are read again (:mod:`tunnelnb.client.verified`), and the
        result's ``stdout`` holds the exact bytes (``.encode("utf-8",
        "surrogateescape")`` gives them back), or the status is ``error`` with
        ``output damaged in transit``.  Nothing is streamed: ``on_output`` gets
        nothing, and ``timeout`` applies to the run and to each re-read.
        """
        started_at = self._clock.now()
        t0 = self._clock.monotonic()

        def result(status: str, exit_code: int | None = None, stdout: str = "", error: str = "") -> CommandResult:
            note, self._note = self._note, ""
            if note and status in (ResultStatus.OK, ResultStatus.ERROR):
                error = f"{error}; {note}" if error else note
            return CommandResult(
                self.device_id, command, status, exit_code, stdout, self._clock.monotonic() - t0, started_at, error
            )

        async with self._lock:
            failed = await self._ready(timeout)
            if failed is not None:
                return result(failed[0], error=failed[1])
            chunks: list[str] = []

            def collect(text: str) -> None:
                chunks.append(text)
                if on_output is not None:
                    on_output(text)

            try:
                if verify:
                    try:
                        return result(*await run_verified(self._execute, command, timeout, self._temp_files))
                    finally:
                        await self._remove_temp_files()
                finished = await self._execute(partial(command_script, command=command), timeout, on_output=collect)
                assert finished is not None
            except TimeoutError:
                return result(
                    ResultStatus.TIMEOUT,
                    stdout=strip_escapes("".join(chunks)),
                    error=f"no end of output within {timeout:g} s (still running, or output was lost); sent Ctrl-C",
                )
            except (DeviceDisconnected, TunnelError) as exc:
                return result(ResultStatus.DISCONNECTED, stdout=strip_escapes("".join(chunks)), error=str(exc))
            stdout = strip_escapes("".join(chunks))
            code = finished.exit_code
            if code is None:
                return result(ResultStatus.ERROR, None, stdout, finished.problem)
            if code == 0:
                return result(ResultStatus.OK, 0, stdout)
            return result(ResultStatus.ERROR, code, stdout, f"exit status {code}")

    async def stream(self, command: str, *, timeout: float = 30.0) -> AsyncIterator[str]:
        """Yield ``command``'s output as it arrives; :attr:`last_result` holds the result after."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        task = asyncio.ensure_future(self.run(command, timeout=timeout, on_output=queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (text := await queue.get()) is not None:
                yield text
            self.last_result = await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- files (tunnelnb.client.transfer) -------------------------------------

    async def get_file(
        self, remote_path: str, *, timeout: float = DEFAULT_TIMEOUT_S, on_progress: Progress | None = None
    ) -> FileResult:
        """Copy ``remote_path`` from the device: its exact bytes (``data``), or a status saying why not.

        Checksummed as a verified run is (:func:`tunnelnb.client.transfer.download`);
        ``timeout`` is each exchange's (about a megabyte); ``on_progress(done, total)``
        follows the bytes.  Holds the command lock and logs in first, as :meth:`run` does.
        """
        work = partial(download, path=remote_path, timeout=timeout, on_progress=on_progress)
        return await self._transfer(remote_path, timeout, work)

    async def put_file(
        self,
        data: bytes,
        remote_path: str,
        *,
        mode: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        on_progress: Progress | None = None,
    ) -> FileResult:
        """Write ``data`` to ``remote_path`` on the device, whole and checked or not at all (a temporary file, ``mv``).

        ``mode`` (e.g. ``0o755``) defaults to the replaced file's, else 0666 less
        the umask (:func:`tunnelnb.client.transfer.upload`); the rest as :meth:`get_file`.
        """
        work = partial(upload, data=data, path=remote_path, timeout=timeout, temp_files=self._temp_files, mode=mode)
        return await self._transfer(remote_path, timeout, partial(work, on_progress=on_progress))

    async def _transfer(self, path: str, timeout: float, work: Callable[[Execute], Awaitable[Outcome]]) -> FileResult:
        """``work(self._execute)`` on a logged-in, answering shell, under the command lock; always a result."""
        started_at, t0 = self._clock.now(), self._clock.monotonic()
        async with self._lock:
            failed = await self._ready(timeout)
            try:
                outcome = Outcome(*failed) if failed is not None else await guarded(work, self._execute, timeout)
            finally:
                await self._remove_temp_files()
        return outcome.result(self.device_id, path, started_at, self._clock.monotonic() - t0)

    async def _execute(
        self,
        script: Callable[[str], str],
        timeout: float,
        *,
        on_output: Callable[[str], None] | None,
        settled: Callable[[], bool] | None = None,
        grace: float = 0.0,
    ) -> Finished | None:
        """Type ``script(marker_id)`` and await its end marker (READY → RUNNING → READY).

        Once ``settled()`` says the output is complete, the end marker gets at
        most ``grace`` more seconds; if it does not come (lost on the way), the
        command is done all the same and the answer is None.
        """
        marker = new_marker_id(next(self._marker_seq), self._tag)
        running = _Running(CommandParser(marker))
        self._running = running
        self._process(Event.RUN)
        try:
            await self._send_text(script(marker))
            async with self._clock.timeout(timeout):
                while True:
                    if settled is not None and settled():
                        try:
                            async with self._clock.timeout(grace):
                                event = await running.events.get()
                        except TimeoutError:
                            self._process_if(SessionState.RUNNING, Event.DONE)
                            return None
                    else:
                        event = await running.events.get()
                    if isinstance(event, BaseException):
                        raise event
                    if isinstance(event, Finished):
                        self._process_if(SessionState.RUNNING, Event.DONE)
                        return event
                    if on_output is not None:
                        on_output(event.text)
        except (TimeoutError, asyncio.CancelledError):
            if self.state is SessionState.RUNNING:
                await self._interrupt()
                self._process_if(SessionState.RUNNING, Event.INTERRUPTED)
            raise
        finally:
            self._running = None
            # Failed to send, or a failure came through the events: the shell's state is unknown.
            self._process_if(SessionState.RUNNING, Event.INTERRUPTED)

    async def _remove_temp_files(self) -> None:
        """Delete what verified runs left on the device, if its shell answers; best effort, never raising."""
        if self._temp_files and self.state is SessionState.READY:
            await remove_temp_files(self._execute, self._temp_files)

    async def _interrupt(self) -> None:
        """Ctrl-C on the device, best effort, even while being cancelled."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(self._send_text("\x03"))

    # -- an interactive terminal (client/terminal.py) --------------------------

    async def attach(
        self,
        on_output: Callable[[bytes], None],
        *,
        on_note: Callable[[str], None] | None = None,
        rows: int = PTY_ROWS,
        cols: int = PTY_COLS,
        timeout: float = 30.0,
    ) -> Terminal:
        """Give the shell to an interactive terminal until :meth:`Terminal.detach` (see its module).

        Raises :class:`TerminalError` (with the row status it would be) when the shell
        cannot be had within ``timeout``: not logged in, offline, a terminal already there.
        """
        terminal = Terminal(self, on_output, on_note, rows=rows, cols=cols, timeout=timeout)
        await terminal._enter()
        return terminal

    def _mirror(self, state: SessionState) -> None:
        super()._mirror(state)
        terminal = self._terminal
        if terminal is not None and state is not SessionState.ATTACHED:
            self._terminal = None
            terminal._left(state)

    # -- raw terminal access ----------------------------------------------

    async def send_keys(self, text: str) -> None:
        """Type ``text`` into the device's shell as is (for interactive terminals)."""
        await self._send_text(text)

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..errors import (
    AuthFailed,
    DeviceDisconnected,
    DeviceOffline,
    LoginError,
    PlatformError,
    RunAborted,
    TunnelAuthError,
    TunnelClosed,
    TunnelError,
    TunnelnbError,
)
from ..protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, Frame, Op, RequestIds, Status, chunk_text
from ..protocol.shell import (
    CommandParser,
    Finished,
    TerminalText,
    command_script,
    new_marker_id,
    strip_escapes,
)
from .backend import PlatformBackend, TunnelGrant
from .result import CommandResult, ResultStatus
from .shellsync import ShellEvents, sync_shell
from .state import Event, SessionState, StateMachine
from .transport import TunnelSocket
from .tunnels import new_tunnel, raise_if_offline

__all__ = ["DeviceSession"]

log = logging.getLogger(__name__)

@dataclass
class _Running:
    """The command in flight: its parser and the events the reader hands it."""

    parser: CommandParser
    events: ShellEvents = field(default_factory=asyncio.Queue)


class DeviceSession:
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
        self.api = api
        self.device_id = device_id
        self.join_timeout = join_timeout
        self.heartbeat = heartbeat
        self.max_message_bytes = max_message_bytes
        self.reconnect_tries = reconnect_tries
        self.reconnect_step = reconnect_step
        self.delete_tunnel = delete_tunnel

        self.tunnel_id: str | None = None
        self._grant: TunnelGrant | None = None
        self._sock: TunnelSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        # Time and random ids come from the backend's clock, so a cassette can record and replay them.
        self._clock = api.clock_for(device_id)
        self._ids = RequestIds(self._clock.token_hex(6))
        self._marker_seq = itertools.count(1)
        self._tag = self._clock.token_hex(4)
        self._machine = StateMachine()
        self._joined = asyncio.Event()  # mirrors state.joined, for waiting on it
        self._login_waiter: asyncio.Future[None] | None = None
        self._running: _Running | None = None
        # Escapes stay in the live output (notebooks and terminals render colours);
        # a result's stdout has them stripped.
        self._term = TerminalText(strip_escapes=False)
        self._lock = asyncio.Lock()
        self._credentials: tuple[str, str] | None = None
        self.last_error: str = ""
        self.last_result: CommandResult | None = None

    def __repr__(self) -> str:
        return f"<DeviceSession {self.device_id} tunnel={self.tunnel_id} {self.state.value}>"

    # -- state ------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """Where the session stands (see :mod:`tunnelnb.client.state`)."""
        return self._machine.state

    @property
    def joined(self) -> bool:
        """Is the device side connected to the tunnel right now?"""
        return self.state.joined

    @property
    def logged_in(self) -> bool:
        return self.state.logged_in

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    def _process(self, event: Event) -> SessionState:
        state = self._machine.process(event)
        self._mirror(state)
        return state

    def _process_if(self, expected: SessionState, event: Event) -> None:
        if self._machine.process_if(expected, event):
            self._mirror(self.state)

    def _mirror(self, state: SessionState) -> None:
        if state.joined:
            self._joined.set()
        else:
            self._joined.clear()

    @property
    def max_received_bytes(self) -> int:
        """The largest message the device has sent through this session's current connection."""
        return self._sock.max_received_bytes if self._sock is not None else 0

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> DeviceSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the device's tunnel, connect to it and wait until the device joins."""
        if self.state in (SessionState.IDLE, SessionState.RECONNECTING, SessionState.CLOSED):
            self._process(Event.OPEN)
            try:
                if self._grant is None:
                    self._grant = await self._add_tunnel()
                    self.tunnel_id = self._grant.tunnel_id
                await self._connect_socket()
            except BaseException:
                self._process_if(SessionState.CONNECTING, Event.OPEN_FAILED)
                raise
        await self._wait_joined()

    async def _add_tunnel(self) -> TunnelGrant:
        try:
            return await new_tunnel(self.api, self.device_id)
        except PlatformError as exc:
            if exc.status in (400, 404):
                await raise_if_offline(self.api, self.device_id, exc)
            raise

    async def _connect_socket(self) -> None:
        """Open the tunnel's WebSocket and start reading it (state CONNECTING → WAITING)."""
        assert self._grant is not None
        self._sock = await self.api.open_tunnel_socket(
            self._grant,
            heartbeat=self.heartbeat,
            timeout=self.join_timeout,
            max_message_bytes=self.max_message_bytes,
        )
        self._process(Event.CONNECTED)
        self._reader = asyncio.create_task(self._read_loop(self._sock), name=f"tunnelnb-reader-{self.device_id}")

    async def _wait_joined(self) -> None:
        try:
            async with self._clock.timeout(self.join_timeout):
                await self._joined.wait()
        except TimeoutError:
            raise DeviceOffline(
                f"device {self.device_id} did not join its tunnel within {self.join_timeout:g} s: "
                "is its agent running and online?"
            ) from None

    async def close(self) -> None:
        """Leave the tunnel and close it on the platform (delete it too if asked)."""
        if self.closed:
            return
        self._process(Event.CLOSE)
        self._fail_waiters(DeviceDisconnected(f"session to {self.device_id} closed"))
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._sock is not None:
            await self._sock.close()
            self._sock = None
        if self._grant is not None:
            tunnel_id, self._grant = self._grant.tunnel_id, None
            with contextlib.suppress(TunnelnbError):
                await self.api.close_tunnel(tunnel_id)
                if self.delete_tunnel:
                    await self.api.delete_tunnel(tunnel_id)

    # -- reading ----------------------------------------------------------

    async def _read_loop(self, sock: TunnelSocket) -> None:
        while True:
            try:
                frame = await sock.receive()
            except TunnelClosed as exc:
                if sock is not self._sock:
                    return  # an old connection, replaced meanwhile
                self._on_socket_lost(exc)
                if self.state is SessionState.RECONNECTING:
                    if exc.final:
                        self._process(Event.GAVE_UP)
                    else:
                        await self._reconnect()  # on success a fresh reader takes over
                return
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        op = frame.op
        if op is Op.COMMAND_RESPONSE:
            self._on_output(frame.data)
        elif op is Op.CONNECT_TUNNEL:
            log.debug("device %s joined tunnel %s", self.device_id, self.tunnel_id)
            self._process(Event.JOIN)
        elif op is Op.CONNECT_RESPONSE:
            if self._login_waiter is not None and not self._login_waiter.done():
                self._login_waiter.set_result(None)
        elif op is Op.DISCONNECT:
            self._on_disconnect(frame.data or {})
        elif op is Op.PING:
            self._send_soon(Frame(Op.PONG, frame.request_id))
        # PONG and anything else: nothing to do.

    def _on_output(self, data: str) -> None:
        text = self._term.feed(data)
        running = self._running
        if running is not None and text:
            for event in running.parser.feed(text):
                running.events.put_nowait(event)

    def _on_disconnect(self, data: dict[str, object]) -> None:
        code = str(data.get("status_code", ""))
        msg = str(data.get("status_msg", "") or "no reason given")
        log.info("device %s: disconnect %s (%s)", self.device_id, code, msg)
        logging_in = self.state is SessionState.LOGGING_IN
        self._process(Event.LEAVE if code in (Status.PEER_GONE, Status.TUNNEL_CLOSED) else Event.DISCONNECT)
        if code == Status.AUTH_FAILED:
            error: TunnelnbError = AuthFailed(f"{self.device_id}: {msg}", code)
        elif logging_in:
            error = LoginError(f"{self.device_id}: login failed: {msg}", code)
        else:
            error = DeviceDisconnected(f"{self.device_id} disconnected: {msg}", code)
        self.last_error = str(error)
        self._fail_waiters(error)

    def _on_socket_lost(self, exc: TunnelClosed) -> None:
        if not self.closed:
            log.info("device %s: tunnel connection lost: %s", self.device_id, exc)
            self.last_error = str(exc)
        self._process(Event.LOST)
        self._fail_waiters(DeviceDisconnected(f"{self.device_id}: {exc}", None))

    def _fail_waiters(self, error: BaseException) -> None:
        if self._login_waiter is not None and not self._login_waiter.done():
            self._login_waiter.set_exception(error)
        if self._running is not None:
            self._running.events.put_nowait(error)

    async def _reconnect(self) -> None:
        """Reopen the WebSocket after a drop, with linear back-off (RECONNECTING → WAITING or IDLE)."""
        for attempt in range(1, self.reconnect_tries + 1):
            await self._clock.sleep(min(attempt, 10) * self.reconnect_step)
            if self.state is not SessionState.RECONNECTING:
                return  # closed, or reopened by a login meanwhile
            assert self._grant is not None
            try:
                sock = await self.api.open_tunnel_socket(
                    self._grant,
                    heartbeat=self.heartbeat,
                    timeout=self.join_timeout,
                    max_message_bytes=self.max_message_bytes,
                )
            except TunnelAuthError:
                self._grant = None  # token expired: the next run() creates a new tunnel
                break
            except TunnelError as exc:
                log.debug("device %s: reconnect try %d failed: %s", self.device_id, attempt, exc)
                continue
            if self.state is not SessionState.RECONNECTING:
                await sock.close()
                return
            self._sock = sock
            self._process(Event.RECONNECTED)
            self._reader = asyncio.create_task(self._read_loop(sock), name=f"tunnelnb-reader-{self.device_id}")
            log.info("device %s: tunnel connection restored (try %d)", self.device_id, attempt)
            return
        self._sock = None
        self._process_if(SessionState.RECONNECTING, Event.GAVE_UP)

    def _send_soon(self, frame: Frame) -> None:
        if self._sock is not None:
            task = asyncio.ensure_future(self._sock.send(frame))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

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
        if self.closed:
            raise TunnelnbError(f"session to {self.device_id} is closed")
        if self.state in (SessionState.IDLE, SessionState.RECONNECTING) or self._grant is None:
            await self.open()
        elif not self.joined:
            await self._wait_joined()
        assert self._credentials is not None and self._sock is not None
        user, password = self._credentials
        self._login_waiter = asyncio.get_running_loop().create_future()
        self._process(Event.LOGIN)
        deadline = self._clock.monotonic() + timeout
        try:
            await self._sock.send(Frame.connect(self._ids.next(), user, password))
            async with self._clock.timeout_at(deadline):
                await self._login_waiter
            # connect_response may come before the SSH login is even tried (C SDK),
            # so the login holds only once the shell answers a framed no-op.
            await self._sync(deadline)
        except TimeoutError:
            raise LoginError(
                f"{self.device_id}: no answer to the login within {timeout:g} s: the device's SSH server may be "
                "slow or unreachable",
                None,
            ) from None
        except BaseException:
            self._process_if(SessionState.LOGGING_IN, Event.LOGIN_FAILED)
            raise
        finally:
            self._login_waiter = None
        if self.state is not SessionState.LOGGING_IN:
            raise DeviceDisconnected(f"{self.device_id}: the device left the tunnel during the login", None)
        self._process(Event.LOGGED_IN)
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

    # -- commands ---------------------------------------------------------

    async def run(
        self,
        command: str,
        *,
        timeout: float = 30.0,
        on_output: Callable[[str], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` in the device's shell; the result's status says how it went.

        Timeouts, a device that leaves and a failed re-login are results, not
        exceptions.  Cancelling interrupts the command on the device (Ctrl-C) and
        re-raises :class:`asyncio.CancelledError`.
        """
        started_at = self._clock.now()
        t0 = self._clock.monotonic()

        def result(status: str, exit_code: int | None = None, stdout: str = "", error: str = "") -> CommandResult:
            return CommandResult(
                self.device_id, command, status, exit_code, stdout, self._clock.monotonic() - t0, started_at, error
            )

        async with self._lock:
            if not self.logged_in:
                if self._credentials is None:
                    raise TunnelnbError(f"log in to {self.device_id} first: session.login(user, password)")
                try:
                    await self._login(timeout)
                except RunAborted:
                    raise
                except AuthFailed as exc:
                    return result(ResultStatus.AUTH_FAILED, error=str(exc))
                except DeviceOffline as exc:
                    return result(ResultStatus.OFFLINE, error=str(exc))
                except TunnelnbError as exc:
                    return result(ResultStatus.DISCONNECTED, error=str(exc))
            if self.state is SessionState.RESYNC:
                # The terminal flushed typed-ahead input on Ctrl-C: wait until the shell answers again.
                self._process(Event.RUN)
                try:
                    await self._sync(self._clock.monotonic() + timeout)
                    self._process_if(SessionState.RUNNING, Event.DONE)
                except TimeoutError:
                    return result(ResultStatus.TIMEOUT, error=f"the shell did not answer within {timeout:g} s")
                except (DeviceDisconnected, TunnelError) as exc:
                    return result(ResultStatus.DISCONNECTED, error=str(exc))
                finally:
                    self._process_if(SessionState.RUNNING, Event.INTERRUPTED)
            if self.state is not SessionState.READY:  # the device left between the login and now
                return result(ResultStatus.DISCONNECTED, error=self.last_error or f"{self.device_id} left the tunnel")
            chunks: list[str] = []

            def collect(text: str) -> None:
                chunks.append(text)
                if on_output is not None:
                    on_output(text)

            try:
                code = await self._execute(command, timeout, on_output=collect)
            except TimeoutError:
                return result(
                    ResultStatus.TIMEOUT,
                    stdout=strip_escapes("".join(chunks)),
                    error=f"no end of output within {timeout:g} s (still running, or output was lost); "
                    "sent Ctrl-C",
                )
            except (DeviceDisconnected, TunnelError) as exc:
                return result(ResultStatus.DISCONNECTED, stdout=strip_escapes("".join(chunks)), error=str(exc))
            status = ResultStatus.OK if code == 0 else ResultStatus.ERROR
            error = "" if code == 0 else f"exit status {code}"
            return result(status, code, strip_escapes("".join(chunks)), error)

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

    async def _execute(self, command: str, timeout: float, *, on_output: Callable[[str], None] | None) -> int:
        """Frame, send and await one command (READY → RUNNING → READY); returns its exit code."""
        marker = new_marker_id(next(self._marker_seq), self._tag)
        running = _Running(CommandParser(marker))
        self._running = running
        self._process(Event.RUN)
        try:
            await self._send_text(command_script(marker, command))
            async with self._clock.timeout(timeout):
                while True:
                    event = await running.events.get()
                    if isinstance(event, BaseException):
                        raise event
                    if isinstance(event, Finished):
                        self._process_if(SessionState.RUNNING, Event.DONE)
                        return event.exit_code
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

    async def _interrupt(self) -> None:
        """Ctrl-C on the device, best effort, even while being cancelled."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(self._send_text("\x03"))

    async def _send_text(self, text: str) -> None:
        if self._sock is None:
            raise DeviceDisconnected(f"{self.device_id}: the tunnel is not connected", None)
        for frame in chunk_text(text, self._ids.next(), op=Op.COMMAND, max_bytes=self.max_message_bytes):
            await self._sock.send(frame)

    # -- raw terminal access ----------------------------------------------

    async def send_keys(self, text: str) -> None:
        """Type ``text`` into the device's shell as is (for interactive terminals)."""
        await self._send_text(text)

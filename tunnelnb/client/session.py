"""One device through its tunnel: open, log in, run commands.

:class:`DeviceSession` owns a tunnel's application side.  It creates (or takes
over) the device's tunnel, waits for the device to join, logs in to its SSH
shell and runs commands with the marker framing of :mod:`tunnelnb.protocol.shell`, so
each command gets its own output and exit code out of a raw PTY stream.  It
tolerates what real devices do (responses stamped with the wrong request id,
``connect_response`` before the login is even tried, lost chunks) because it
routes output by tunnel and trusts only its own markers.

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
from datetime import datetime

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
    Output,
    TerminalText,
    command_script,
    new_marker_id,
    setup_script,
    strip_escapes,
)
from .api import PlatformAPI, TunnelGrant
from .clock import clock_for
from .transport import TunnelSocket, open_tunnel_socket

__all__ = ["CommandResult", "DeviceSession", "ResultStatus"]

log = logging.getLogger("tunnelnb.client.session")


class ResultStatus:
    """The ``status`` column of a result (DESIGN §4)."""

    OK = "ok"
    ERROR = "error"  # the command ran and exited non-zero
    TIMEOUT = "timeout"
    OFFLINE = "offline"
    AUTH_FAILED = "auth_failed"
    DISCONNECTED = "disconnected"
    CANCELLED = "cancelled"


@dataclass
class CommandResult:
    """What one command did on one device."""

    device_id: str
    command: str
    status: str
    exit_code: int | None
    stdout: str
    duration_s: float
    started_at: datetime
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == ResultStatus.OK


@dataclass
class _Running:
    """The command in flight: its parser and the events the reader hands it."""

    parser: CommandParser
    events: asyncio.Queue[Output | Finished | BaseException] = field(default_factory=asyncio.Queue)


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
        api: PlatformAPI,
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
        # Time and random ids come from the API's clock, so a cassette can record and replay them.
        self._clock = clock_for(api, device_id)
        self._ids = RequestIds(self._clock.token_hex(6))
        self._marker_seq = itertools.count(1)
        self._tag = self._clock.token_hex(4)
        self._joined = asyncio.Event()
        self._login_waiter: asyncio.Future[None] | None = None
        self._running: _Running | None = None
        # Escapes stay in the live output (notebooks and terminals render colours);
        # a result's stdout has them stripped.
        self._term = TerminalText(strip_escapes=False)
        self._lock = asyncio.Lock()
        self._credentials: tuple[str, str] | None = None
        self._listeners: list[Callable[[str], None]] = []
        self.logged_in = False
        self._logging_in = False
        self._needs_sync = False
        self.closed = False
        self.last_error: str = ""

    def __repr__(self) -> str:
        state = "closed" if self.closed else "logged in" if self.logged_in else "joined" if self.joined else "open"
        return f"<DeviceSession {self.device_id} tunnel={self.tunnel_id} {state}>"

    @property
    def max_received_bytes(self) -> int:
        """The largest message the device has sent through this session's current connection."""
        return self._sock.max_received_bytes if self._sock is not None else 0

    @property
    def joined(self) -> bool:
        """Is the device side connected to the tunnel right now?"""
        return self._joined.is_set()

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> DeviceSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the device's tunnel, connect to it and wait until the device joins."""
        self.closed = False
        if self._grant is None:
            self._grant = await self._add_tunnel()
            self.tunnel_id = self._grant.tunnel_id
        await self._connect_socket()
        await self._wait_joined()

    async def _add_tunnel(self) -> TunnelGrant:
        try:
            return await self.api.add_tunnel(self.device_id)
        except PlatformError as exc:
            if exc.status == 409:
                # One tunnel per device: an earlier session left one open.  Its token is
                # gone with that session, so close and delete it and make a new one.
                log.info("device %s already has a tunnel; replacing it", self.device_id)
                for info in await self.api.list_tunnels(self.device_id):
                    with contextlib.suppress(PlatformError):
                        if info.get("status") == "OPEN":
                            await self.api.close_tunnel(info["tunnel_id"])
                        await self.api.delete_tunnel(info["tunnel_id"])
                return await self.api.add_tunnel(self.device_id)
            if exc.status in (400, 404):
                await self._raise_if_offline(exc)
            raise

    async def _raise_if_offline(self, cause: PlatformError) -> None:
        try:
            device = await self.api.show_device(self.device_id)
        except PlatformError as exc:
            if exc.status == 404:
                raise TunnelnbError(f"the platform has no device {self.device_id!r}: check the device id") from None
            return
        if str(device.get("status", "")).upper() != "ONLINE":
            raise DeviceOffline(f"device {self.device_id} is offline ({cause.error_msg})") from None

    async def _connect_socket(self) -> None:
        assert self._grant is not None
        self._joined.clear()
        self._sock = await open_tunnel_socket(
            self.api,
            self._grant,
            heartbeat=self.heartbeat,
            timeout=self.join_timeout,
            max_message_bytes=self.max_message_bytes,
        )
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
        self.closed = True
        self.logged_in = False
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
                self._on_socket_lost(exc)
                if not (self.closed or exc.final):
                    await self._reconnect()  # on success a fresh reader takes over
                return
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        op = frame.op
        if op is Op.COMMAND_RESPONSE:
            self._on_output(frame.data)
        elif op is Op.CONNECT_TUNNEL:
            log.debug("device %s joined tunnel %s", self.device_id, self.tunnel_id)
            self._joined.set()
        elif op is Op.CONNECT_RESPONSE:
            if isinstance(frame.data, str) and frame.data:
                self._notify_listeners(frame.data)  # the C# SDK sends the shell's first output here
            if self._login_waiter is not None and not self._login_waiter.done():
                self._login_waiter.set_result(None)
        elif op is Op.DISCONNECT:
            self._on_disconnect(frame.data or {})
        elif op is Op.PING:
            self._send_soon(Frame(Op.PONG, frame.request_id))
        # PONG and anything else: nothing to do.

    def _on_output(self, data: str) -> None:
        self._notify_listeners(data)
        text = self._term.feed(data)
        running = self._running
        if running is not None and text:
            for event in running.parser.feed(text):
                running.events.put_nowait(event)

    def _notify_listeners(self, data: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(data)
            except Exception:  # a display callback must not break the session
                log.exception("output listener failed")

    def _on_disconnect(self, data: dict[str, object]) -> None:
        code = str(data.get("status_code", ""))
        msg = str(data.get("status_msg", "") or "no reason given")
        log.info("device %s: disconnect %s (%s)", self.device_id, code, msg)
        self.logged_in = False
        if code in (Status.PEER_GONE, Status.TUNNEL_CLOSED):
            self._joined.clear()
        if code == Status.AUTH_FAILED:
            error: TunnelnbError = AuthFailed(f"{self.device_id}: {msg}", code)
        elif self._logging_in:
            error = LoginError(f"{self.device_id}: login failed: {msg}", code)
        else:
            error = DeviceDisconnected(f"{self.device_id} disconnected: {msg}", code)
        self.last_error = str(error)
        self._fail_waiters(error)

    def _on_socket_lost(self, exc: TunnelClosed) -> None:
        self._joined.clear()
        self.logged_in = False
        if not self.closed:
            log.info("device %s: tunnel connection lost: %s", self.device_id, exc)
            self.last_error = str(exc)
        self._fail_waiters(DeviceDisconnected(f"{self.device_id}: {exc}", None))

    def _fail_waiters(self, error: BaseException) -> None:
        if self._login_waiter is not None and not self._login_waiter.done():
            self._login_waiter.set_exception(error)
        if self._running is not None:
            self._running.events.put_nowait(error)

    async def _reconnect(self) -> bool:
        """Reopen the WebSocket after a drop, with linear back-off."""
        for attempt in range(1, self.reconnect_tries + 1):
            await self._clock.sleep(min(attempt, 10) * self.reconnect_step)
            if self.closed:
                return False
            try:
                await self._connect_socket()
                log.info("device %s: tunnel connection restored (try %d)", self.device_id, attempt)
                return True
            except TunnelAuthError:
                self._grant = None  # token expired: the next run() creates a new tunnel
                return False
            except TunnelError as exc:
                log.debug("device %s: reconnect try %d failed: %s", self.device_id, attempt, exc)
        self._sock = None
        return False

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
        if self._sock is None or self._sock.closed or self._grant is None:
            await self.open()
        elif not self.joined:
            await self._wait_joined()
        assert self._credentials is not None and self._sock is not None
        user, password = self._credentials
        loop = asyncio.get_running_loop()
        self._login_waiter = loop.create_future()
        self.logged_in = False
        self._logging_in = True
        deadline = self._clock.monotonic() + timeout
        try:
            await self._sock.send(Frame.connect(self._ids.next(), user, password))
            async with self._clock.timeout_at(deadline):
                await self._login_waiter
            # connect_response may come before the SSH login is even tried (C SDK),
            # so the login holds only once the shell answers a framed no-op.
            await self._sync_shell(deadline)
        except TimeoutError:
            raise LoginError(
                f"{self.device_id}: no answer to the login within {timeout:g} s: the device's SSH server may be "
                "slow or unreachable",
                None,
            ) from None
        finally:
            self._login_waiter = None
            self._logging_in = False
        self.logged_in = True
        self._needs_sync = False
        log.info("device %s: logged in as %s", self.device_id, user)

    async def _sync_shell(self, deadline: float) -> None:
        """Quieten the shell and wait until a framed no-op comes back.

        Early input may be lost (a C SDK device answers ``connect_response``
        before its shell exists), so the same no-op is typed again now and then;
        it keeps one marker, so a slow first answer still counts.
        """
        clock = self._clock
        marker = new_marker_id(next(self._marker_seq), self._tag)
        running = _Running(CommandParser(marker))
        self._running = running
        script = setup_script() + command_script(marker, "true")
        wait = 0.5
        try:
            while True:
                await self._send_text(script)
                try:
                    async with clock.timeout_at(min(deadline, clock.monotonic() + wait)):
                        while not isinstance(event := await running.events.get(), Finished):
                            if isinstance(event, BaseException):
                                raise event
                        return
                except TimeoutError:
                    if clock.monotonic() >= deadline:
                        raise
                wait = min(wait * 2, 4.0)
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
            if self._needs_sync:
                try:
                    await self._sync_shell(self._clock.monotonic() + timeout)
                except TimeoutError:
                    return result(ResultStatus.TIMEOUT, error=f"the shell did not answer within {timeout:g} s")
                except (DeviceDisconnected, TunnelError) as exc:
                    return result(ResultStatus.DISCONNECTED, error=str(exc))
                self._needs_sync = False
            chunks: list[str] = []

            def collect(text: str) -> None:
                chunks.append(text)
                if on_output is not None:
                    on_output(text)

            try:
                code = await self._execute(command, timeout, on_output=collect, interrupt=True)
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

    last_result: CommandResult | None = None

    async def _execute(
        self,
        command: str,
        timeout: float,
        *,
        on_output: Callable[[str], None] | None,
        interrupt: bool,
    ) -> int:
        """Frame, send and await one command; returns its exit code."""
        marker = new_marker_id(next(self._marker_seq), self._tag)
        running = _Running(CommandParser(marker))
        self._running = running
        try:
            await self._send_text(command_script(marker, command))
            async with self._clock.timeout(timeout):
                while True:
                    event = await running.events.get()
                    if isinstance(event, BaseException):
                        raise event
                    if isinstance(event, Finished):
                        return event.exit_code
                    if on_output is not None:
                        on_output(event.text)
        except (TimeoutError, asyncio.CancelledError):
            if interrupt:
                await self._interrupt()
                # The terminal flushes typed-ahead input on Ctrl-C: the next command
                # must wait until the shell answers again.
                self._needs_sync = True
            raise
        finally:
            self._running = None

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

    def add_output_listener(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback`` with every raw output chunk; returns a function that removes it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

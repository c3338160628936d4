"""The WebSocket side of a device session: the tunnel, the device's joining, reconnecting, frames in.

:class:`TunnelLink` owns a tunnel's application-side connection and the
session's :class:`~tunnelnb.client.state.SessionState`; it reads frames and
hands what they mean to the shell side
(:class:`~tunnelnb.client.session.DeviceSession`), which logs in and runs
commands.  It recovers what it can by itself (docs/architecture.md, "A device
session's states"; :mod:`tunnelnb.client.recovery`): a tunnel the platform no
longer has is replaced, a dropped connection is reopened with back-off, and a
device that left is looked for again before anyone waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Self

from ..errors import (
    DeviceDisconnected,
    DeviceOffline,
    PlatformError,
    TunnelAuthError,
    TunnelClosed,
    TunnelError,
    TunnelGone,
    TunnelnbError,
)
from ..protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, Frame, Op, RequestIds, chunk_text
from .backend import PlatformBackend, TunnelGrant
from .recovery import NOTE_NEW_TUNNEL
from .state import Event, SessionState, StateMachine
from .transport import TunnelSocket
from .tunnels import new_tunnel, raise_if_offline

__all__ = ["TunnelLink"]

log = logging.getLogger(__name__)


class TunnelLink:
    """The application side of one device's tunnel: connect, wait for the device, keep the link up."""

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
        self._machine = StateMachine()
        self._joined = asyncio.Event()  # mirrors state.joined, for waiting on it
        self._had_shell = False  # logged in before: a new login loses the shell's state
        self._note = ""  # what the next run's row must say about a recovery (recovery.NOTE_*)
        self.last_error: str = ""

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
    def attached(self) -> bool:
        """Does an interactive terminal have the shell (``%tunnel shell``)?"""
        return self.state is SessionState.ATTACHED

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

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self, *, timeout: float | None = None) -> None:
        """Create the device's tunnel (or reuse it), connect to it and wait until the device joins.

        A tunnel the platform no longer has is replaced by a new one.  Waits at
        most ``timeout`` (default: the session's ``join_timeout``) for the join.
        """
        wait = self.join_timeout if timeout is None else min(self.join_timeout, timeout)
        if self.state in (SessionState.IDLE, SessionState.RECONNECTING, SessionState.CLOSED):
            self._process(Event.OPEN)
            try:
                await self._connect(wait)
            except BaseException:
                self._process_if(SessionState.CONNECTING, Event.OPEN_FAILED)
                raise
        await self._wait_joined(wait)

    async def _connect(self, timeout: float) -> None:
        if self._grant is not None:
            try:
                await self._connect_socket(timeout)
                return
            except (TunnelGone, TunnelAuthError) as exc:
                log.info("device %s: %s; making a new tunnel", self.device_id, exc)
                self._drop_grant()
        self._grant = await self._add_tunnel()
        self.tunnel_id = self._grant.tunnel_id
        await self._connect_socket(timeout)

    def _drop_grant(self) -> None:
        """Forget a tunnel the platform no longer has; the next login says the shell is new."""
        self._grant = None
        if self._had_shell:
            self._note = NOTE_NEW_TUNNEL

    async def _add_tunnel(self) -> TunnelGrant:
        try:
            return await new_tunnel(self.api, self.device_id)
        except PlatformError as exc:
            if exc.status in (400, 404):
                await raise_if_offline(self.api, self.device_id, exc)
            raise

    async def _open_socket(self, timeout: float) -> TunnelSocket:
        assert self._grant is not None
        return await self.api.open_tunnel_socket(
            self._grant, heartbeat=self.heartbeat, timeout=timeout, max_message_bytes=self.max_message_bytes
        )

    async def _connect_socket(self, timeout: float) -> None:
        """Open the tunnel's WebSocket and start reading it (state CONNECTING → WAITING)."""
        self._sock = await self._open_socket(timeout)
        self._process(Event.CONNECTED)
        self._reader = asyncio.create_task(self._read_loop(self._sock), name=f"tunnelnb-reader-{self.device_id}")

    async def _wait_joined(self, timeout: float) -> None:
        try:
            async with self._clock.timeout(timeout):
                await self._joined.wait()
        except TimeoutError:
            raise DeviceOffline(
                f"device {self.device_id} did not join its tunnel within {timeout:g} s: "
                "is its agent running and online?"
            ) from None

    async def _rejoin(self, timeout: float) -> None:
        """The device left the tunnel earlier: find out whether it is there, within ``timeout``.

        A device the platform lists as not ONLINE is :class:`DeviceOffline` at once.
        Otherwise the session connects afresh: the platform answers a new
        application connection with ``connect_tunnel`` when the device side is
        there (a device that sent ``disconnect`` but kept its WebSocket sends no
        new join by itself).  Huawei's "Exchanging Messages Through Secure Tunnel
        Protocols" page (api-iothub iot_06_v5_1333) says only that the platform sends
        ``connect_tunnel`` when the device is connected; that it does so for a new
        application connection to a tunnel the device is already in is what
        ``tunnelnb platform`` does (``server/platform/relay.py``), not verified against
        the cloud.  Were it not so, the join wait below ends at the run's timeout.
        """
        device = await self.api.show_device(self.device_id)
        if str(device.get("status", "")).upper() != "ONLINE":
            raise DeviceOffline(f"device {self.device_id} is offline (the platform lists it {device.get('status')})")
        await self._close_socket()
        self._process(Event.LOST)  # our own connection, closed on purpose
        await self.open(timeout=timeout)

    async def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if sock is not None:
            await sock.close()

    async def close(self) -> None:
        """Leave the tunnel and close it on the platform (delete it too if asked)."""
        if self.closed:
            return
        self._process(Event.CLOSE)
        self._fail_waiters(DeviceDisconnected(f"session to {self.device_id} closed"))
        await self._close_socket()
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
            try:
                self._dispatch(frame)
            except Exception:  # the reader must outlive any frame: skip what cannot be used
                log.debug("device %s: skipping a frame that could not be handled", self.device_id, exc_info=True)

    def _dispatch(self, frame: Frame) -> None:
        op = frame.op
        if op is Op.COMMAND_RESPONSE:
            self._on_output(frame.data)
        elif op is Op.CONNECT_TUNNEL:
            log.debug("device %s joined tunnel %s", self.device_id, self.tunnel_id)
            self._process(Event.JOIN)
        elif op is Op.CONNECT_RESPONSE:
            self._on_connect_response()
        elif op is Op.DISCONNECT:
            self._on_disconnect(frame.data or {})
        elif op is Op.PING:
            self._send_soon(Frame(Op.PONG, frame.request_id))
        # PONG and anything else: nothing to do.

    def _on_socket_lost(self, exc: TunnelClosed) -> None:
        if not self.closed:
            log.info("device %s: tunnel connection lost: %s", self.device_id, exc)
            self.last_error = str(exc)
        self._process(Event.LOST)
        self._fail_waiters(DeviceDisconnected(f"{self.device_id}: {exc}", None))

    async def _reconnect(self) -> None:
        """Reopen the WebSocket after a drop, with linear back-off (RECONNECTING → WAITING or IDLE)."""
        for attempt in range(1, self.reconnect_tries + 1):
            await self._clock.sleep(min(attempt, 10) * self.reconnect_step)
            if self.state is not SessionState.RECONNECTING:
                return  # closed, or reopened by a login meanwhile
            assert self._grant is not None
            try:
                sock = await self._open_socket(self.join_timeout)
            except (TunnelGone, TunnelAuthError) as exc:
                log.info("device %s: %s; the next run makes a new tunnel", self.device_id, exc)
                self._drop_grant()
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

    # -- what the shell side does with frames (DeviceSession) ----------------

    def _on_output(self, data: str) -> None:
        """Terminal output arrived."""

    def _on_connect_response(self) -> None:
        """The device answered ``connect``."""

    def _on_disconnect(self, data: dict[str, object]) -> None:
        """The device's shell or the device is gone (``disconnect``)."""
        self._process(Event.DISCONNECT)

    def _fail_waiters(self, error: BaseException) -> None:
        """Whatever waits on the device gets ``error``."""

    async def _send_text(self, text: str) -> None:
        """Type ``text`` into the device's shell, in ``command`` frames of at most ``max_message_bytes``."""
        if self._sock is None:
            raise DeviceDisconnected(f"{self.device_id}: the tunnel is not connected", None)
        for frame in chunk_text(text, self._ids.next(), op=Op.COMMAND, max_bytes=self.max_message_bytes):
            await self._sock.send(frame)

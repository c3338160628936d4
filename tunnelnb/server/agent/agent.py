"""The :class:`Agent`: a device's link to the platform, and the tunnels it is notified of.

It keeps the *device link* open (see :mod:`tunnelnb.protocol.devicelink`), or
an MQTT connection (:mod:`tunnelnb.server.mqtt`), and serves each
``tunnel_notify`` with a :class:`~.tunnel.Tunnel`, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl as ssl_module
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from ...errors import BrokerAuthError, DeviceAuthError, PlatformUnreachable, ProtocolError, TunnelnbError
from ...protocol.devicelink import (
    LINK_PATH,
    PASSWORD_HEADER,
    TIMESTAMP_HEADER,
    TunnelNotify,
    device_password,
    link_timestamp,
    parse_event,
)
from ...protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, CloseCode, Frame, RequestIds, Status
from .quirks import C_SDK_QUIRKS, QUIRKS, StrayBytes
from .shells import ShellAccount, reason, shell_account
from .tunnel import WS_TIMEOUT, Tunnel

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    """A device: keeps its link to the platform and serves the tunnels it is told about.

    Use as ``async with Agent(url, device_id, secret, ssh_port=22) as agent``.
    ``local_shell=(user, password)`` spawns a PTY shell (``shell``) directly
    instead of logging in to an SSH server.  ``shell_user`` names the account that
    shell runs as: an agent running as root switches to it in the child before the
    shell's exec, and refuses (:class:`~tunnelnb.errors.TunnelnbError`) an account
    this machine does not have, since the alternative is a root shell that can read
    the device secret; None (the simulated fleet, whose launcher drops privileges
    itself) runs the shell as the agent's user.  ``heartbeat`` is the WebSocket
    ping interval (None: no pings).  See :mod:`tunnelnb.server.agent.quirks` for ``quirks``.

    ``stray_bytes`` (``quirks="c-sdk"`` only): how often stray heap bytes follow a
    full 2,048-byte read, from 0 (never) to 1 (always), drawn from an RNG seeded with
    ``stray_seed``; None takes ``$TUNNELNB_STRAY_BYTES`` (``PROBABILITY[:SEED]``), else
    1 in 4 seeded with the device id (see :class:`~.quirks.StrayBytes`).

    ``abandon_grace``: once the tunnel's WebSocket has dropped, how long the shell
    waits to hear from the application again before its command is interrupted
    (Ctrl-C) and its session ended (see :mod:`.tunnel`).

    ``mqtt_url`` (``mqtt://HOST[:PORT]`` or ``mqtts://…``) takes the tunnel
    notifications from an MQTT broker, as an IoTDA device does, instead of the
    device link (``platform_url`` is then unused and may be empty): see
    :mod:`tunnelnb.server.mqtt` for the credentials and ``mqtt_check_timestamp`` (client
    id sign type 1).
    """

    def __init__(
        self,
        platform_url: str,
        device_id: str,
        device_secret: str,
        *,
        ssh_host: str = "127.0.0.1",
        ssh_port: int = 22,
        local_shell: tuple[str, str] | None = None,
        shell: Sequence[str] = ("/bin/sh",),
        quirks: str = "none",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout: float = 600.0,
        abandon_grace: float = 10.0,
        shell_user: str | None = None,
        heartbeat: float | None = 20.0,
        term_size: tuple[int, int] = (128, 30),
        reconnect_tries: int = 10,
        reconnect_step: float = 1.0,
        ssl: ssl_module.SSLContext | bool = True,
        mqtt_url: str | None = None,
        mqtt_check_timestamp: bool = False,
        stray_bytes: float | None = None,
        stray_seed: int | str | None = None,
    ) -> None:
        if quirks not in QUIRKS:
            raise ValueError(f"quirks must be one of {', '.join(QUIRKS)}, not {quirks!r}")
        if not shell:
            raise ValueError("shell must name a program")
        if max_message_bytes < 256:
            raise ValueError(f"max_message_bytes={max_message_bytes} leaves no room for output")
        if abandon_grace < 0:
            raise ValueError(f"abandon_grace must be at least 0 seconds, not {abandon_grace}")
        self.platform_url = (platform_url or "").rstrip("/")
        if not self.platform_url and mqtt_url is None:
            raise ValueError("give the platform's URL (device link) or an MQTT broker's (mqtt_url)")
        self.mqtt_url = mqtt_url
        self.mqtt_check_timestamp = mqtt_check_timestamp
        self._mqtt: Any = None  # a tunnelnb.server.mqtt.DeviceMqtt while started with mqtt_url
        self.device_id = device_id
        self._secret = device_secret
        self.ssh_host = ssh_host
        self.ssh_port = ssh_port
        self.local_shell = local_shell
        self.shell = tuple(shell)
        self.quirks = quirks
        if quirks == "c-sdk":
            self.stray_bytes = StrayBytes.configure(stray_bytes, stray_seed, default_seed=device_id)
        else:  # the other modes never read it
            self.stray_bytes = StrayBytes(0.0, device_id)
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.abandon_grace = abandon_grace
        self.shell_account = _shell_account(shell_user) if local_shell is not None else None
        self.heartbeat = heartbeat
        self.term_size = term_size
        self.reconnect_tries = reconnect_tries
        self.reconnect_step = reconnect_step
        self.ssl = ssl  # for https/wss platforms: True verifies (system CAs), a context (a CA bundle), False not
        self.link_url = self.platform_url + LINK_PATH.format(device_id=quote(device_id, safe=""))
        self.http: aiohttp.ClientSession = None  # type: ignore[assignment]  # set by start(); the tunnels use it too
        self._link_ws: aiohttp.ClientWebSocketResponse | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._online = asyncio.Event()
        self._tunnel: Tunnel | None = None
        self._closing_tunnels: set[asyncio.Task[None]] = set()  # replaced tunnels, closing
        self._stopping = False
        self._ids = RequestIds("agent")

    # -- state, for tests and the CLI -------------------------------------------------

    @property
    def online(self) -> bool:
        """The device link (or the MQTT connection) is up (the platform lists the device as ONLINE)."""
        if self._mqtt is not None:
            return bool(self._mqtt.connected)
        return self._link_ws is not None and not self._link_ws.closed

    @property
    def tunnel_connected(self) -> bool:
        return self._tunnel is not None and self._tunnel.connected

    @property
    def ssh_connected(self) -> bool:
        session = self._tunnel.session if self._tunnel is not None else None
        return session is not None and session.ready

    @property
    def tunnel_connects(self) -> int:
        """How many times the current tunnel's WebSocket has connected (reconnects included)."""
        return self._tunnel.connects if self._tunnel is not None else 0

    async def wait_online(self, timeout: float = 10.0) -> None:
        """Wait until the device link is up; TimeoutError if it is not within ``timeout``."""
        await asyncio.wait_for(self._online.wait(), timeout)

    def shell_target(self) -> str:
        """Where the shells run, for log messages."""
        if self.local_shell is None:
            return f"SSH {self.ssh_host}:{self.ssh_port}"
        account = self.shell_account
        if account is not None and os.geteuid() == 0:
            return f"local shell as user {account.name!r} (uid {account.uid})"
        return f"local shell as uid {os.geteuid()}"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the device link; raises DeviceAuthError (401/404) or PlatformUnreachable at once."""
        if self._link_task is not None:
            return
        self._stopping = False
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, connect=15),
            connector=aiohttp.TCPConnector(ssl=self.ssl),
        )
        try:
            if self.mqtt_url is not None:
                self._link_task = await self._start_mqtt()
                return
            ws = await self._connect_link()
        except BaseException:
            await self.http.close()
            raise
        self._link_task = asyncio.create_task(self._link_loop(ws), name=f"tunnelnb-agent-link-{self.device_id}")

    async def stop(self) -> None:
        """End shell sessions, tell the app (``disconnect`` 410 "agent stopping"), close sockets with 1000."""
        if self._link_task is None:
            return
        self._stopping = True
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            session = tunnel.session
            request_id = session.output_id() if session is not None else tunnel.latest_id or self._ids.next()
            await tunnel.close(Frame.disconnect(request_id, Status.SESSION_ENDED, "agent stopping"))
        if self._closing_tunnels:
            await asyncio.gather(*self._closing_tunnels, return_exceptions=True)
        mqtt, self._mqtt = self._mqtt, None
        if mqtt is not None:
            await mqtt.stop()  # a clean DISCONNECT: the broker takes the device OFFLINE
        ws = self._link_ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=CloseCode.NORMAL)
        self._link_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._link_task
        self._link_task = None
        await self.http.close()
        log.info("agent for device %r stopped", self.device_id)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- MQTT (tunnelnb.server.mqtt) ---------------------------------------------------------

    async def _start_mqtt(self) -> asyncio.Task[None]:
        """Connect to the broker and subscribe (DeviceAuthError, PlatformUnreachable); the reconnect loop's task."""
        from ..mqtt import DeviceMqtt

        assert self.mqtt_url is not None
        mqtt = DeviceMqtt(
            self.mqtt_url,
            self.device_id,
            self._secret,
            on_notify=self._open_tunnel,  # the same notify handling as on the device link
            on_connected=self._mqtt_connected,
            check_timestamp=self.mqtt_check_timestamp,
            ssl=self.ssl,
            reconnect_step=self.reconnect_step,
        )
        self._mqtt = mqtt
        try:
            await mqtt.start()
        except BrokerAuthError as exc:
            self._mqtt = None
            raise DeviceAuthError(f"{exc} of device {self.device_id!r}: check the device secret") from None
        except BaseException:
            self._mqtt = None
            raise
        assert mqtt.task is not None
        return mqtt.task

    def _mqtt_connected(self, up: bool) -> None:
        if up:
            self._online.set()
            log.info("device %r online (MQTT %s)", self.device_id, self.mqtt_url)
        else:
            self._online.clear()

    # -- device link ---------------------------------------------------------------

    async def _connect_link(self) -> aiohttp.ClientWebSocketResponse:
        stamp = link_timestamp()
        headers = {TIMESTAMP_HEADER: stamp, PASSWORD_HEADER: device_password(self._secret, stamp)}
        try:
            return await self.http.ws_connect(
                self.link_url, headers=headers, heartbeat=self.heartbeat, timeout=WS_TIMEOUT
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise DeviceAuthError(
                    f"the platform at {self.platform_url} refused device {self.device_id!r} (HTTP 401): "
                    "check the device secret"
                ) from None
            if exc.status == 404:
                raise DeviceAuthError(
                    f"the platform at {self.platform_url} does not know device {self.device_id!r} (HTTP 404): "
                    "register the device first"
                ) from None
            raise TunnelnbError(
                f"the platform at {self.platform_url} refused the device link of {self.device_id!r} (HTTP {exc.status})"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PlatformUnreachable(f"cannot reach the platform at {self.platform_url}: {reason(exc)}") from None

    async def _link_loop(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        """Read the link; after a drop reconnect forever with linear back-off (step, 2 step … 10 step)."""
        attempt = 0
        while True:
            if ws is not None:
                attempt = 0
                self._link_ws = ws
                self._online.set()
                log.info("device %r online (link %s)", self.device_id, self.link_url)
                try:
                    await self._read_link(ws)
                finally:
                    self._link_ws = None
                    self._online.clear()
                if self._stopping:
                    return
                if ws.close_code == CloseCode.REPLACED:
                    log.warning("device link of %r replaced by a newer one: not reconnecting", self.device_id)
                    return
                log.warning("device link lost (code %s): reconnecting", ws.close_code)
            attempt += 1
            await asyncio.sleep(self.reconnect_step * min(attempt, 10))
            try:
                ws = await self._connect_link()
            except TunnelnbError as exc:
                ws = None
                log.warning("device link retry %d failed: %s", attempt, exc)

    async def _read_link(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            try:
                notes = parse_event(msg.data)
            except ProtocolError as exc:
                log.warning("ignoring a malformed device event: %s", exc)
                continue
            for notify in notes:
                self._open_tunnel(notify)

    def _open_tunnel(self, notify: TunnelNotify) -> None:
        """Serve a newly notified tunnel; it replaces the current one (closed with 1000)."""
        if self._stopping:
            return
        current = self._tunnel
        if current is not None and current.serves(notify) and self.quirks not in C_SDK_QUIRKS:
            # The platform repeats a notify while it sees no device connection (e.g. when the
            # application connects first); replacing our socket would only make it churn.
            log.info("repeated tunnel notify for %s: keeping the current connection", notify.tunnel_uri)
            current.retry_now()
            return
        # The C SDK closes its connection and opens a new one on every notify, even one about
        # the tunnel it is connected to, losing the SSH session (wss_client.c, WssClientConnect).
        log.info("tunnel notify: connecting to %s", notify.tunnel_uri)
        previous, closing = self._tunnel, None
        if previous is not None:
            closing = asyncio.create_task(previous.close())
            self._closing_tunnels.add(closing)
            closing.add_done_callback(self._closing_tunnels.discard)
        self._tunnel = Tunnel(self, notify, closing)

    def tunnel_done(self, tunnel: Tunnel) -> None:
        if self._tunnel is tunnel:
            self._tunnel = None


def _shell_account(name: str | None) -> ShellAccount | None:
    """The account a root agent's local shell switches to; refuses to start without one."""
    if name is None:
        return None
    account = shell_account(name)
    if account is None and os.geteuid() == 0:
        raise TunnelnbError(
            f"refusing to run the local shell as root: there is no account {name!r} on this machine to run it as "
            "(create that user, or give --login-user an existing unprivileged account)"
        )
    if account is not None and account.uid == 0 and os.geteuid() == 0:
        log.warning("the local shell of user %r runs as root: it can read the device secret", name)
    return account

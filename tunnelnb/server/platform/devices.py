"""Devices: registration, what makes them ONLINE (device links and MQTT), and their tunnel notifications.

:class:`DeviceRegistry` creates devices, serves the device-link WebSocket through
which a device is ONLINE, checks the MQTT logins of the platform's broker
(:mod:`.broker`) and follows their connections, and sends each device its
``tunnel_notify`` -- over its link, or through the broker -- once per tunnel.

**One notify per tunnel.**  The official C SDK closes its tunnel WebSocket and opens
a new one on every ``tunnel_notify`` (huaweicloud-iot-device-sdk-c, ``src/tunnel/``),
losing its SSH session, so a second notify in the middle of a login breaks the
tunnel.  The device is notified when the tunnel is created (or when it comes online
with a tunnel waiting), and again only if its side has not joined within
``Platform.notify_grace`` seconds while an application waits, or after its side
dropped while the tunnel is open -- never twice within the grace period.  (Huawei
documents that a new notify replaces the old connection, not when IoTDA sends one:
this policy is tunnelnb's.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...errors import PlatformError
from ...protocol.devicelink import device_password, tunnel_notify
from ...protocol.frames import CloseCode
from ..mqttbase import events_down_topic, parse_client_id
from .auth import check_device_login
from .http import ws_base
from .model import OPEN, Device, ErrorCode, Side, Tunnel, bad_input, id_field, optional_str
from .sockets import Sockets

if TYPE_CHECKING:
    from .app import Platform
    from .broker import DeviceBroker

__all__ = ["DeviceRegistry"]

logger = logging.getLogger(__name__)


class DeviceRegistry:
    """The platform's ``devices`` and what makes them ONLINE.

    ``tunnels`` (shared with the REST API and the relay) tells which tunnels wait
    for a device that comes online; ``broker`` (set while the platform's MQTT broker
    runs) carries the notifications of devices connected to it.  ``platform``
    supplies the clock, ``token_ttl``, ``link_clock_skew``, ``notify_grace``,
    ``base_url`` and whether it is shutting down, read when needed.
    """

    def __init__(
        self,
        platform: Platform,
        devices: dict[str, Device],
        tunnels: dict[str, Tunnel],
        *,
        sockets: Sockets,
    ) -> None:
        self._platform = platform
        self._devices = devices
        self._tunnels = tunnels
        self._sockets = sockets
        self.broker: DeviceBroker | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------
    # Registration

    def create(
        self,
        project_id: str,
        *,
        device_id: Any,
        node_id: Any,
        secret: Any,
        device_name: Any,
        product_id: Any,
        fw_version: Any,
        sw_version: Any,
        tags: Mapping[Any, Any],
    ) -> dict[str, Any]:
        """Register a device in ``project_id`` after checking every field as AddDevice does; its info."""
        node_id = id_field(node_id, "node_id")
        product_id = None if product_id is None else id_field(product_id, "product_id")
        if device_id is None:  # IoTDA's rule: product_id + "_" + node_id
            device_id = f"{product_id}_{node_id}" if product_id else node_id
        device_id = id_field(device_id, "device_id")
        if not isinstance(secret, str) or not secret:
            raise bad_input("auth_info.secret must be a non-empty string.")
        for key, value in tags.items():
            if not isinstance(key, str) or not 0 < len(key) <= 64 or not isinstance(value, str) or len(value) > 128:
                raise bad_input("Tags need a tag_key of 1 to 64 characters and a tag_value of at most 128.")
        if device_id in self._devices:
            raise PlatformError(409, ErrorCode.DEVICE_EXISTS, f"Device {device_id} already exists.")
        device = Device(
            device_id=device_id,
            project_id=project_id,
            node_id=node_id,
            device_name=optional_str(device_name, "device_name") or node_id,
            product_id=product_id,
            fw_version=optional_str(fw_version, "fw_version"),
            sw_version=optional_str(sw_version, "sw_version"),
            tags=dict(tags),
            secret=secret,
            create_time=self._platform.clock(),
        )
        self._devices[device_id] = device
        logger.info("device %s added to project %s", device_id, project_id)
        return device.info()

    def device_of(self, project_id: str, device_id: str) -> Device:
        """The project's device ``device_id``; a 404 :class:`PlatformError` if there is none."""
        device = self._devices.get(device_id)
        if device is None or device.project_id != project_id:
            raise PlatformError(404, ErrorCode.DEVICE_NOT_FOUND, f"Device {device_id} does not exist.")
        return device

    def in_project(self, project_id: str) -> dict[str, Device]:
        """The project's devices, by device id."""
        return {d.device_id: d for d in self._devices.values() if d.project_id == project_id}

    # ------------------------------------------------------------------
    # Device links

    async def device_link(self, request: web.Request) -> web.StreamResponse:
        """The device-link WebSocket: the device is ONLINE while it is open, and hears its tunnel_notify on it."""
        device_id = request.match_info["device_id"]
        device = self._devices.get(device_id)
        if device is None:
            raise PlatformError(404, ErrorCode.DEVICE_NOT_FOUND, f"Device {device_id} does not exist.")
        if self._platform.closing:
            raise PlatformError(503, ErrorCode.SHUTTING_DOWN, "The platform is shutting down.")
        check_device_login(device, request, now=self._platform.clock(), clock_skew=self._platform.link_clock_skew)
        ws = await self._sockets.upgrade(request)
        try:
            old = device.link
            came_online = not device.online
            device.link, device.link_base = ws, ws_base(request)
            logger.info("device %s online", device_id)
            if old is not None:
                logger.info("device %s: a newer link replaces the older one", device_id)
                await self._sockets.close(old, CloseCode.REPLACED, "replaced by a newer connection")
            await self._notify_waiting(device, came_online=came_online)
            # A link that drops while aiohttp answers its ping raises instead of closing.
            with contextlib.suppress(ConnectionResetError):
                async for msg in ws:
                    logger.debug("device %s: ignoring a %s message on its link", device_id, msg.type.name)
        finally:
            self._sockets.forget(ws)
            if device.link is ws:
                device.link = None
                logger.info("device %s offline", device_id)
        return ws

    def goodbyes(self) -> list[Awaitable[None]]:
        """For shutdown: no more notifications; close every device link with 1001."""
        for tunnel in self._tunnels.values():
            if tunnel.notify_timer is not None:
                tunnel.notify_timer.cancel()
                tunnel.notify_timer = None
        for task in self._tasks:
            task.cancel()
        return [
            self._sockets.close(device.link, CloseCode.GOING_AWAY, "platform shutting down")
            for device in self._devices.values()
            if device.link is not None
        ]

    # ------------------------------------------------------------------
    # Notifications: one per tunnel (see the module docstring)

    async def want_notify(self, tunnel: Tunnel, *, came_online: bool = False) -> None:
        """See that the device hears of ``tunnel``: notify now, or once the last notify's grace period is over.

        ``came_online``: the device has just come online, so it holds no connection a
        notify could break, and it may have missed the last one: notify at once.
        """
        if tunnel.status != OPEN or tunnel.conns[Side.DEVICE] is not None or self._platform.closing:
            return
        platform = self._platform
        now, grace = platform.clock(), platform.notify_grace
        if not came_online and tunnel.notified_at is not None and now - tunnel.notified_at < grace:
            self._recheck(tunnel, tunnel.notified_at + grace - now)
            return
        if await self.notify(tunnel):
            tunnel.notified_at = platform.clock()
            self._recheck(tunnel, grace)

    def device_dropped(self, tunnel: Tunnel) -> None:
        """The device's side left the open ``tunnel``: notify it again if it has not rejoined within the grace period.

        Not at once: the C SDK reconnects by itself after most drops, and a notify
        would make it drop the connection it just made.
        """
        if tunnel.status == OPEN and not self._platform.closing:
            self._recheck(tunnel, self._platform.notify_grace)

    def _recheck(self, tunnel: Tunnel, delay: float) -> None:
        """In ``delay`` seconds, notify again if an application still waits for a device that has not joined."""
        if tunnel.notify_timer is not None:
            tunnel.notify_timer.cancel()
        tunnel.notify_timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._on_recheck, tunnel)

    def _on_recheck(self, tunnel: Tunnel) -> None:
        tunnel.notify_timer = None
        waiting = tunnel.conns[Side.SOURCE] is not None and tunnel.conns[Side.DEVICE] is None
        if waiting and tunnel.status == OPEN and not self._platform.closing:
            logger.info("tunnel %s: device %s has not joined: notifying it again", tunnel.tunnel_id, tunnel.device_id)
            task = asyncio.get_running_loop().create_task(self.want_notify(tunnel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def notify(self, tunnel: Tunnel) -> bool:
        """Send the device its tunnel_notify over its link, or through the broker; False if it is offline."""
        device = self._devices.get(tunnel.device_id)
        if device is None or not device.online:
            logger.debug(
                "tunnel %s: device %s is offline; it will be notified when it comes online",
                tunnel.tunnel_id,
                tunnel.device_id,
            )
            return False
        platform = self._platform
        # Over MQTT the device never addressed us: its URI is our own base URL's.
        base = device.link_base if device.link is not None else "ws" + platform.base_url.removeprefix("http")
        uri = f"{base}/v5/iot/tunnels/{tunnel.tunnel_id}/device-connect"
        remaining = max(0, int(tunnel.create_time + platform.token_ttl - platform.clock()))
        when = datetime.fromtimestamp(platform.clock(), UTC)
        payload = json.dumps(tunnel_notify(uri, tunnel.device_token, remaining, when))
        if device.link is not None:
            sent = await self._sockets.send(device.link, payload)
        elif self.broker is not None:
            await self.broker.publish(events_down_topic(device.device_id), payload.encode())
            sent = True
        else:
            sent = False
        if sent:
            logger.info(
                "tunnel %s: notified device %s%s", tunnel.tunnel_id, tunnel.device_id, "" if device.link else " (MQTT)"
            )
        return sent

    async def _notify_waiting(self, device: Device, *, came_online: bool) -> None:
        """Notify the device of each of its open tunnels that its side has not joined yet."""
        for tunnel in list(self._tunnels.values()):
            if tunnel.device_id == device.device_id and tunnel.status == OPEN and tunnel.conns[Side.DEVICE] is None:
                await self.want_notify(tunnel, came_online=came_online)

    # ------------------------------------------------------------------
    # MQTT device access (.broker): IoTDA's login, and ONLINE/OFFLINE from the connections

    def mqtt_login(self, client_id: str, username: str, password: str) -> str | None:
        """The device id if these are IoTDA credentials of a registered device, else None.

        Client id ``{device_id}_0_{sign_type}_{YYYYMMDDHH}``, user name the device id,
        password the hex HMAC-SHA256 of the secret keyed by that timestamp (the device
        SDKs' ``src/base/mqtt_base.c`` / ``iot_util.py`` derivation).  Sign type 1 also
        checks the timestamp against the clock; Huawei does not document how far it may
        be off, so it is ``link_clock_skew``, as for device links.
        """
        try:
            device_id, sign_type, stamp = parse_client_id(client_id)
        except ValueError:
            return None
        device = self._devices.get(device_id)
        if device is None or username != device_id:
            return None
        expected = device_password(device.secret, stamp)
        if not hmac.compare_digest(password.lower().encode(), expected.encode()):
            return None
        if sign_type == "1":
            try:
                when = datetime.strptime(stamp, "%Y%m%d%H").replace(tzinfo=UTC).timestamp()
            except ValueError:
                return None
            if abs(self._platform.clock() - when) > self._platform.link_clock_skew:
                return None
        return device_id

    async def mqtt_connected(self, device_id: str, client_id: str) -> None:
        """An authenticated MQTT connection of the device is up: it is ONLINE; notify it of waiting tunnels."""
        device = self._devices.get(device_id)
        if device is None:
            return
        came = not device.online
        device.mqtt_clients.add(client_id)
        if came:
            logger.info("device %s online (MQTT)", device_id)
        await self._notify_waiting(device, came_online=came)

    def mqtt_disconnected(self, device_id: str, client_id: str) -> None:
        """That connection is gone: OFFLINE unless another connection (or a link) keeps it up."""
        device = self._devices.get(device_id)
        if device is None or client_id not in device.mqtt_clients:
            return
        device.mqtt_clients.discard(client_id)
        if not device.online:
            logger.info("device %s offline (MQTT)", device_id)

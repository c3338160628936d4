"""Devices: registration, presence (device links and MQTT) and tunnel notifications.

:class:`DeviceRegistry` creates devices, serves the device-link WebSocket through
which a device is ONLINE, applies the MQTT presence messages of devices on a broker,
and sends each device its ``tunnel_notify`` -- over its link, or through the broker.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...errors import PlatformError
from ...protocol.devicelink import tunnel_notify
from ...protocol.frames import CloseCode
from .auth import check_device_login
from .http import ws_base
from .model import OPEN, Device, ErrorCode, Side, Tunnel, bad_input, id_field, optional_str
from .mqtt import verify_presence
from .sockets import Sockets

if TYPE_CHECKING:
    from ..mqttbase import Presence
    from .app import Platform

__all__ = ["DeviceRegistry"]

logger = logging.getLogger(__name__)


class DeviceRegistry:
    """The platform's ``devices`` and what makes them ONLINE; ``presence`` keeps each device's latest MQTT presence.

    ``tunnels`` (shared with the REST API and the relay) tells which tunnels wait
    for a device that comes online; ``publish(device_id, payload)`` sends a
    notification through the MQTT broker (False if it cannot).  ``platform``
    supplies the clock, ``token_ttl``, ``link_clock_skew``, ``base_url`` and whether
    it is shutting down, read when needed.
    """

    def __init__(
        self,
        platform: Platform,
        devices: dict[str, Device],
        tunnels: dict[str, Tunnel],
        presence: dict[str, Presence],
        *,
        sockets: Sockets,
        publish: Callable[[str, str], Awaitable[bool]],
    ) -> None:
        self._platform = platform
        self._devices = devices
        self._tunnels = tunnels
        self._presence = presence
        self._sockets = sockets
        self._publish = publish

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
        presence = self._presence.get(device_id)
        if presence is not None:  # its agent was on the broker before it was registered
            self._apply_presence(device, presence)
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
            device.link, device.link_base = ws, ws_base(request)
            logger.info("device %s online", device_id)
            if old is not None:
                logger.info("device %s: a newer link replaces the older one", device_id)
                await self._sockets.close(old, CloseCode.REPLACED, "replaced by a newer connection")
            await self._notify_waiting(device)
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
        """For shutdown: close every device link with 1001."""
        return [
            self._sockets.close(device.link, CloseCode.GOING_AWAY, "platform shutting down")
            for device in self._devices.values()
            if device.link is not None
        ]

    # ------------------------------------------------------------------
    # Notifications

    async def notify(self, tunnel: Tunnel) -> bool:
        """Send the device its tunnel_notify over its link, or over MQTT; False if it is offline."""
        device = self._devices.get(tunnel.device_id)
        if device is None or not device.online:
            logger.debug(
                "tunnel %s: device %s is offline; it will be notified when it links", tunnel.tunnel_id, tunnel.device_id
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
        else:
            sent = await self._publish(device.device_id, payload)
        if sent:
            logger.info(
                "tunnel %s: notified device %s%s", tunnel.tunnel_id, tunnel.device_id, "" if device.link else " (MQTT)"
            )
        return sent

    async def _notify_waiting(self, device: Device) -> None:
        """Notify the device of each of its open tunnels that its side has not joined yet."""
        for tunnel in list(self._tunnels.values()):
            if tunnel.device_id == device.device_id and tunnel.status == OPEN and tunnel.conns[Side.DEVICE] is None:
                await self.notify(tunnel)

    # ------------------------------------------------------------------
    # MQTT presence (tunnelnb.server.platform.mqtt)

    def on_mqtt_connected(self, up: bool) -> None:
        """Without the broker, no MQTT device can be notified: they are OFFLINE until their presence comes back."""
        if not up:
            self._presence.clear()
            for device in self._devices.values():
                if device.mqtt_session is not None:
                    device.mqtt_session = None
                    logger.info("device %s offline (the MQTT broker is gone)", device.device_id)

    async def on_presence(self, presence: Presence) -> None:
        """A presence message from the broker: apply it, and notify a device that came online of waiting tunnels."""
        self._presence[presence.device_id] = presence  # also for a device registered later
        device = self._devices.get(presence.device_id)
        if device is not None and self._apply_presence(device, presence):
            await self._notify_waiting(device)

    def _apply_presence(self, device: Device, presence: Presence) -> bool:
        """Mark the device ONLINE/OFFLINE per an authentic presence message; True if it came online."""
        problem = verify_presence(presence, device.secret)
        if problem is not None:
            logger.warning("device %s: ignoring its MQTT presence: %s", device.device_id, problem)
            return False
        if presence.online:
            came = device.mqtt_session != presence.session
            device.mqtt_session = presence.session
            if came:
                logger.info("device %s online (MQTT)", device.device_id)
            return came
        if device.mqtt_session == presence.session:  # an OFFLINE of an older connection changes nothing
            device.mqtt_session = None
            logger.info("device %s offline (MQTT)", device.device_id)
        return False

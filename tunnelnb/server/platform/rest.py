"""The IoTDA REST API of the platform: AddDevice, ListDevices, ShowDevice and the tunnel calls.

:class:`RestApi` holds one aiohttp handler per call, with IoTDA's paths, JSON shapes,
error bodies and constraints (docs/architecture.md, "The platform").  Each authorizes through :class:`~.auth.Auth`;
devices come from the :class:`~.devices.DeviceRegistry`, and closing a tunnel ends its
WebSockets through the :class:`~.relay.Relay`.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ...errors import PlatformError
from .auth import Auth
from .devices import DeviceRegistry
from .http import int_query, json_body, ws_base
from .model import CLOSED, DISCONNECTED, OPEN, Device, ErrorCode, Side, Tunnel, bad_input, open_tunnel_of
from .relay import Relay

if TYPE_CHECKING:
    from .app import Platform

__all__ = ["RestApi"]

logger = logging.getLogger(__name__)


class RestApi:
    """The REST handlers, over the platform's ``tunnels`` (shared with the relay and the registry).

    ``device_of(project_id, device_id)`` looks a device up (``registry.device_of`` unless
    given); ``platform`` supplies the clock, ``token_ttl`` and ``max_tunnels``, read on every call.
    """

    def __init__(
        self,
        platform: Platform,
        tunnels: dict[str, Tunnel],
        *,
        auth: Auth,
        registry: DeviceRegistry,
        relay: Relay,
        device_of: Callable[[str, str], Device] | None = None,
    ) -> None:
        self._platform = platform
        self._tunnels = tunnels
        self._auth = auth
        self._registry = registry
        self._relay = relay
        self._device_of = device_of if device_of is not None else registry.device_of

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Route IoTDA's REST paths to the handlers (after the WebSocket routes: those must win)."""
        router.add_post("/v5/iot/{project_id}/devices", self.add_device)
        router.add_get("/v5/iot/{project_id}/devices", self.list_devices)
        router.add_get("/v5/iot/{project_id}/devices/{device_id}", self.show_device)
        router.add_post("/v5/iot/{project_id}/tunnels", self.add_tunnel)
        router.add_get("/v5/iot/{project_id}/tunnels", self.list_tunnels)
        router.add_get("/v5/iot/{project_id}/tunnels/{tunnel_id}", self.show_tunnel)
        router.add_put("/v5/iot/{project_id}/tunnels/{tunnel_id}", self.close_tunnel)
        router.add_delete("/v5/iot/{project_id}/tunnels/{tunnel_id}", self.delete_tunnel)

    # ------------------------------------------------------------------
    # Devices

    async def add_device(self, request: web.Request) -> web.Response:
        project_id = await self._auth.authorize(request)
        body = await json_body(request)
        auth = body.get("auth_info")
        if not isinstance(auth, dict):
            raise bad_input('auth_info is required: {"auth_type": "SECRET", "secret": "..."}.')
        if auth.get("auth_type", "SECRET") != "SECRET":
            raise bad_input("Only auth_info.auth_type SECRET is supported.")
        raw_tags = body.get("tags") or []
        if not isinstance(raw_tags, list) or not all(
            isinstance(t, dict) and isinstance(t.get("tag_key"), str) for t in raw_tags
        ):
            raise bad_input('tags must be a list of {"tag_key", "tag_value"} objects with string keys.')
        info = self._registry.create(
            project_id,
            device_id=body.get("device_id"),
            node_id=body.get("node_id"),
            secret=auth.get("secret"),
            device_name=body.get("device_name"),
            product_id=body.get("product_id"),
            fw_version=body.get("fw_version"),
            sw_version=body.get("sw_version"),
            tags={t.get("tag_key"): t.get("tag_value", "") for t in raw_tags},
        )
        return web.json_response(info, status=201)

    async def list_devices(self, request: web.Request) -> web.Response:
        project_id = await self._auth.authorize(request)
        limit = int_query(request, "limit", default=10, low=1, high=50, code=ErrorCode.LIMIT_OUT_OF_RANGE)
        offset = int_query(request, "offset", default=0, low=0, high=500, code=ErrorCode.INVALID_INPUT)
        marker = request.query.get("marker")
        devices = self._registry.in_project(project_id)
        ids = sorted(devices)
        after = [i for i in ids if i > marker] if marker else ids
        page = after[offset : offset + limit]
        return web.json_response(
            {
                "devices": [devices[i].info() for i in page],
                "page": {"count": len(ids), "marker": page[-1] if page else None},
            }
        )

    async def show_device(self, request: web.Request) -> web.Response:
        project_id = await self._auth.authorize(request)
        return web.json_response(self._device_of(project_id, request.match_info["device_id"]).info())

    # ------------------------------------------------------------------
    # Tunnels

    def _tunnel_of(self, project_id: str, tunnel_id: str) -> Tunnel:
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None or tunnel.project_id != project_id:
            raise PlatformError(404, ErrorCode.TUNNEL_NOT_FOUND, f"Tunnel {tunnel_id} does not exist.")
        return tunnel

    async def add_tunnel(self, request: web.Request) -> web.Response:
        project_id = await self._auth.authorize(request)
        body = await json_body(request)
        device_id = body.get("device_id")
        if not isinstance(device_id, str) or not device_id:
            raise bad_input("device_id is required and must be a string.")
        device = self._device_of(project_id, device_id)
        if not device.online:
            raise PlatformError(
                400,
                ErrorCode.DEVICE_OFFLINE,
                f"Device {device_id} is offline; a tunnel can be created only while the device is online.",
            )
        existing = open_tunnel_of(self._tunnels, device_id)
        if existing is not None:
            raise PlatformError(
                409,
                ErrorCode.TUNNEL_EXISTS,
                f"Device {device_id} already has open tunnel {existing.tunnel_id}; use or close that one.",
            )
        max_tunnels = self._platform.max_tunnels
        # Counted only when it could matter: a scan per AddTunnel made 1,000 logins O(N²).
        count = len(self._tunnels)
        if count >= max_tunnels:
            count = sum(1 for t in self._tunnels.values() if t.project_id == project_id)
        if count >= max_tunnels:
            raise PlatformError(
                400,
                ErrorCode.TUNNEL_LIMIT,
                f"Project {project_id} already has the maximum of {max_tunnels} tunnels; delete closed ones.",
            )
        now = self._platform.clock()
        tunnel = Tunnel(
            tunnel_id=str(uuid.uuid4()),
            project_id=project_id,
            device_id=device_id,
            source_token=secrets.token_urlsafe(32),
            device_token=secrets.token_urlsafe(32),
            create_time=now,
            states={side: (DISCONNECTED, now) for side in Side},
        )
        self._tunnels[tunnel.tunnel_id] = tunnel
        logger.info("tunnel %s created for device %s", tunnel.tunnel_id, device_id)
        await self._registry.want_notify(tunnel)
        base = ws_base(request)
        return web.json_response(
            {
                "tunnel_id": tunnel.tunnel_id,
                "tunnel_access_token": tunnel.source_token,
                "expires_in": self._platform.token_ttl,
                "tunnel_uri": f"{base}/v5/iot/tunnels/{tunnel.tunnel_id}/source-connect",
            },
            status=201,
        )

    async def list_tunnels(self, request: web.Request) -> web.Response:
        project_id = await self._auth.authorize(request)
        device_id = request.query.get("device_id")
        tunnels = [
            t.info()
            for t in self._tunnels.values()
            if t.project_id == project_id and (device_id is None or t.device_id == device_id)
        ]
        return web.json_response({"tunnels": tunnels})

    async def show_tunnel(self, request: web.Request) -> web.Response:
        project_id = await self._auth.authorize(request)
        return web.json_response(self._tunnel_of(project_id, request.match_info["tunnel_id"]).info())

    async def close_tunnel(self, request: web.Request) -> web.Response:
        project_id = await self._auth.authorize(request)
        tunnel = self._tunnel_of(project_id, request.match_info["tunnel_id"])
        if tunnel.status == OPEN:
            tunnel.status = CLOSED
            tunnel.closed_time = self._platform.clock()
            logger.info("tunnel %s of device %s closed", tunnel.tunnel_id, tunnel.device_id)
            # Answer now; the sides' close handshakes finish in the background.
            self._relay.close_tunnel(tunnel)
        return web.Response(status=204)

    async def delete_tunnel(self, request: web.Request) -> web.Response:
        project_id = await self._auth.authorize(request)
        tunnel = self._tunnel_of(project_id, request.match_info["tunnel_id"])
        if tunnel.status != CLOSED:
            raise PlatformError(
                400,
                ErrorCode.TUNNEL_NOT_CLOSED,
                f"Tunnel {tunnel.tunnel_id} is open; close it first (CloseDeviceTunnel), then delete it.",
            )
        del self._tunnels[tunnel.tunnel_id]
        logger.info("tunnel %s of device %s deleted", tunnel.tunnel_id, tunnel.device_id)
        return web.Response(status=204)

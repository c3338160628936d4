"""Getting a device's tunnel from the platform: AddTunnel, replacing one left open.

IoTDA allows one tunnel per device (AddTunnel answers 409 when it has one), and
the token of a tunnel an earlier session left open went with that session, so
the only way on is to close and delete it and make a new one.
"""

from __future__ import annotations

import contextlib
import logging

from ..errors import DeviceOffline, PlatformError, TunnelnbError
from .backend import PlatformBackend, TunnelGrant

__all__ = ["new_tunnel", "raise_if_offline"]

log = logging.getLogger(__name__)


async def new_tunnel(api: PlatformBackend, device_id: str) -> TunnelGrant:
    """A new tunnel for ``device_id``, replacing one an earlier session left open."""
    try:
        return await api.add_tunnel(device_id)
    except PlatformError as exc:
        if exc.status != 409:
            raise
    log.info("device %s already has a tunnel; replacing it", device_id)
    for info in await api.list_tunnels(device_id):
        with contextlib.suppress(PlatformError):
            if info.get("status") == "OPEN":
                await api.close_tunnel(info["tunnel_id"])
            await api.delete_tunnel(info["tunnel_id"])
    return await api.add_tunnel(device_id)


async def raise_if_offline(api: PlatformBackend, device_id: str, cause: PlatformError) -> None:
    """After AddTunnel refused ``cause``: :class:`DeviceOffline` if the device is not ONLINE.

    A :class:`TunnelnbError` if the platform has no such device; nothing if the
    device is online (the caller re-raises ``cause``).
    """
    try:
        device = await api.show_device(device_id)
    except PlatformError as exc:
        if exc.status == 404:
            raise TunnelnbError(f"the platform has no device {device_id!r}: check the device id") from None
        return
    status = str(device.get("status", "")).upper()
    if status != "ONLINE":
        # Said once: the platform's refusal (``cause``) only repeats that the device is offline.
        listed = "" if status in ("", "OFFLINE") else f" (the platform lists it as {status})"
        raise DeviceOffline(f"device {device_id} is offline{listed}") from None

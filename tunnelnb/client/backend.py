"""What a fleet and a device session need from a platform: the :class:`PlatformBackend` protocol.

A :class:`~tunnelnb.client.session.DeviceSession` gets everything from the
outside world through its backend: REST answers (``add_tunnel`` …), its tunnel's
WebSocket (:meth:`~PlatformBackend.open_tunnel_socket`) and its clock and random
ids (:meth:`~PlatformBackend.clock_for`).  Four classes implement it, each by
declaring it as a base: :class:`~tunnelnb.client.api.PlatformAPI` (IoTDA's REST
API, or ``tunnelnb platform``), :class:`~tunnelnb.client.cloud.HuaweiCloudAPI`
(the official SDK), and the cassette layer's ``RecordingAPI`` and ``ReplayAPI``,
which write that traffic down and serve it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .clock import Clock
from .transport import TunnelSocket

__all__ = ["PASSWORD_PLACEHOLDER", "PlatformBackend", "TunnelGrant"]

#: The password a fleet uses for devices of a replaying backend: a replay sends no password anywhere.
PASSWORD_PLACEHOLDER = "<password>"


@dataclass(frozen=True)
class TunnelGrant:
    """AddTunnel's answer: where the application connects, with which token."""

    tunnel_id: str
    tunnel_uri: str
    expires_in: int
    token: str = field(repr=False)


class PlatformBackend(Protocol):
    """The IoTDA control plane of one project, as a fleet and its sessions use it."""

    #: Where the platform is (a URL; ``cassette:PATH`` for a replay), for people to read.
    base_url: str
    project_id: str | None
    #: True for a backend that plays recorded traffic back: it needs no passwords.
    replaying: bool
    #: True while the backend writes every tunnel message down (a cassette recording): an interactive
    #: terminal's keys, a password typed at a ``sudo`` prompt included, would be in it.
    recording_frames: bool

    async def list_devices(self) -> list[dict[str, Any]]:
        """Every device of the project (ListDevices, all pages)."""
        ...

    def iter_devices(self) -> AsyncIterator[dict[str, Any]]:
        """The devices one by one, as the pages arrive."""
        ...

    async def show_device(self, device_id: str) -> dict[str, Any]: ...

    async def add_tunnel(self, device_id: str) -> TunnelGrant: ...

    async def list_tunnels(self, device_id: str | None = None) -> list[dict[str, Any]]: ...

    async def show_tunnel(self, tunnel_id: str) -> dict[str, Any]: ...

    async def close_tunnel(self, tunnel_id: str) -> None: ...

    async def delete_tunnel(self, tunnel_id: str) -> None: ...

    async def open_tunnel_socket(self, grant: TunnelGrant, **options: Any) -> TunnelSocket:
        """The application side's WebSocket of a tunnel (``options``: :meth:`TunnelSocket.open`'s)."""
        ...

    def clock_for(self, device_id: str | None) -> Clock:
        """The clock and randomness the sessions of ``device_id`` read (``None``: the fleet's own)."""
        ...

    def secret_values(self) -> list[tuple[str, str]]:
        """``(secret, placeholder)`` for the credentials this backend holds, for recordings to mask."""
        ...

    async def close(self) -> None:
        """Release the backend's connections; a later call starts afresh."""
        ...

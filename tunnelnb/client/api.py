"""The platform's REST API (IoTDA v5 paths), as an async client.

One :class:`PlatformAPI` per platform and project.  It speaks to Huawei Cloud
IoTDA or to ``tunnelnb platform`` alike: same paths, same JSON, same
``{"error_code", "error_msg"}`` errors, which become :class:`PlatformError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from ..errors import PlatformError, PlatformUnreachable
from .backend import PlatformBackend, TunnelGrant
from .clock import LIVE_CLOCK, Clock
from .transport import TunnelSocket

__all__ = ["DEVICE_PAGE_LIMIT", "PlatformAPI", "iter_device_pages"]

log = logging.getLogger(__name__)

#: ListDevices pages hold at most 50 devices on IoTDA.
DEVICE_PAGE_LIMIT = 50


async def iter_device_pages(
    fetch_page: Callable[[str | None], Awaitable[dict[str, Any] | None]],
) -> AsyncIterator[dict[str, Any]]:
    """The devices of ListDevices' pages, following its ``marker`` (shared by every backend)."""
    marker: str | None = None
    while True:
        page = await fetch_page(marker) or {}
        devices = page.get("devices") or []
        for device in devices:
            yield device
        marker = (page.get("page") or {}).get("marker")
        if len(devices) < DEVICE_PAGE_LIMIT or not marker:
            return


class PlatformAPI(PlatformBackend):
    """Async client of the IoTDA control plane for one project.

    ``api_token`` travels as ``X-Auth-Token``; it never appears in a repr, a log
    line or an error message.
    """

    replaying = False
    recording_frames = False

    def __init__(
        self,
        base_url: str,
        *,
        project_id: str,
        api_token: str,
        instance_id: str | None = None,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        ssl: ssl_module.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.project_id = project_id
        self._token = api_token
        self._instance_id = instance_id
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None
        self._ssl = ssl  # https/wss: True verifies with the system CAs, a context with a CA bundle (tunnelnb.tls)

    def __repr__(self) -> str:
        return f"PlatformAPI({self.base_url!r}, project_id={self.project_id!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session, shared with the tunnels' WebSockets."""
        if self._session is None or self._session.closed:
            # No connection cap: every open tunnel WebSocket holds one connection, and a
            # fleet keeps up to 100 (or more) open besides its REST calls.
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl)
            )
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> PlatformAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ---------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"X-Auth-Token": self._token, "Content-Type": "application/json"}
        if self._instance_id:
            headers["Instance-Id"] = self._instance_id
        return headers

    async def _request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        """The JSON answer of one call (None for an empty one); errors as :class:`PlatformError`."""
        url = f"{self.base_url}/v5/iot/{quote(self.project_id, safe='')}{path}"
        try:
            async with self.session.request(method, url, json=body, params=params, headers=self._headers()) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise _error_from(resp.status, body)
                if resp.status == 204 or not body:
                    return None
                return await resp.json(content_type=None)
        except aiohttp.ClientConnectionError as exc:
            raise PlatformUnreachable(
                f"cannot reach the platform at {self.base_url} ({_reason(exc)}): check the URL, or start one with "
                "`tunnelnb platform`"
            ) from None
        except TimeoutError:
            raise PlatformUnreachable(
                f"the platform at {self.base_url} did not answer {method} {path} within "
                f"{self._timeout.total:g} s: check the URL and the network"
            ) from None

    # -- devices ----------------------------------------------------------

    async def iter_devices(self) -> AsyncIterator[dict[str, Any]]:
        """Every device of the project, following ListDevices' ``marker`` paging."""

        async def page(marker: str | None) -> dict[str, Any]:
            params: dict[str, Any] = {"limit": DEVICE_PAGE_LIMIT}
            if marker:
                params["marker"] = marker
            answer: dict[str, Any] = await self._request("GET", "/devices", params=params)
            return answer

        async for device in iter_device_pages(page):
            yield device

    async def list_devices(self) -> list[dict[str, Any]]:
        return [d async for d in self.iter_devices()]

    async def show_device(self, device_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._request("GET", f"/devices/{quote(device_id, safe='')}")
        return answer

    async def add_device(
        self,
        node_id: str,
        secret: str,
        *,
        device_id: str | None = None,
        device_name: str | None = None,
        product_id: str | None = None,
        fw_version: str | None = None,
        sw_version: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"node_id": node_id, "auth_info": {"auth_type": "SECRET", "secret": secret}}
        optional = {
            "device_id": device_id,
            "device_name": device_name,
            "product_id": product_id,
            "fw_version": fw_version,
            "sw_version": sw_version,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if tags:
            body["tags"] = [{"tag_key": k, "tag_value": v} for k, v in tags.items()]
        answer: dict[str, Any] = await self._request("POST", "/devices", body=body)
        return answer

    # -- tunnels ----------------------------------------------------------

    async def add_tunnel(self, device_id: str) -> TunnelGrant:
        answer = await self._request("POST", "/tunnels", body={"device_id": device_id})
        return TunnelGrant(
            tunnel_id=answer["tunnel_id"],
            tunnel_uri=answer["tunnel_uri"],
            expires_in=int(answer.get("expires_in", 0)),
            token=answer["tunnel_access_token"],
        )

    async def list_tunnels(self, device_id: str | None = None) -> list[dict[str, Any]]:
        params = {"device_id": device_id} if device_id else None
        answer = await self._request("GET", "/tunnels", params=params)
        return answer.get("tunnels") or []

    async def show_tunnel(self, tunnel_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._request("GET", f"/tunnels/{quote(tunnel_id, safe='')}")
        return answer

    async def close_tunnel(self, tunnel_id: str) -> None:
        await self._request("PUT", f"/tunnels/{quote(tunnel_id, safe='')}")

    async def delete_tunnel(self, tunnel_id: str) -> None:
        await self._request("DELETE", f"/tunnels/{quote(tunnel_id, safe='')}")

    # -- what sessions get from the API object (a cassette replaces these) ---

    async def open_tunnel_socket(self, grant: TunnelGrant, **options: Any) -> TunnelSocket:
        """The application side's WebSocket of a tunnel (``options``: :meth:`TunnelSocket.open`'s)."""
        return await TunnelSocket.open(self.session, grant.tunnel_uri, grant.token, **options)

    def clock_for(self, device_id: str | None) -> Clock:
        """The clock (and randomness) a device's session reads: the real one."""
        return LIVE_CLOCK

    def secret_values(self) -> list[tuple[str, str]]:
        return [(self._token, "<api-token>")] if self._token else []


def _reason(exc: aiohttp.ClientConnectionError) -> str:
    """Why a connection failed, in the OS's plain words: ``connection refused``, ``name or service not known``.

    aiohttp's own text repeats the address and adds its settings and errno
    (``Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed …]``),
    which says nothing more to someone who just typed the URL.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        detail = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        return f"its TLS certificate is not trusted: {detail}"
    if isinstance(exc, aiohttp.ClientSSLError):
        error = exc.os_error
        return f"the TLS handshake failed: {getattr(error, 'reason', None) or error}"
    errno = exc.errno if isinstance(exc, OSError) else None
    if errno is not None and errno > 0:
        text = os.strerror(errno)
    elif isinstance(exc, aiohttp.ClientConnectorError) and exc.strerror:
        text = exc.strerror  # a DNS failure: negative errno, but a plain strerror
    else:
        text = re.sub(r"\s*ssl:\S+|\[Errno -?\d+\]\s*", "", str(exc)).strip() or type(exc).__name__
    return text[:1].lower() + text[1:]


def _error_from(status: int, body: bytes) -> PlatformError:
    """An IoTDA error body as a :class:`PlatformError` (or a plain one when the body is not JSON)."""
    code, msg = f"HTTP.{status}", body.decode("utf-8", "replace").strip()[:200] or "no error message"
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        code = str(obj.get("error_code") or code)
        msg = str(obj.get("error_msg") or msg)
    hint = ""
    if status == 401:
        hint = "check the API token (TUNNELNB_API_TOKEN or --api-token)"
    elif status == 403:
        hint = "the token does not grant this project: check --project-id"
    return PlatformError(status, code, msg, hint=hint)

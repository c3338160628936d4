"""Huawei Cloud IoTDA's control plane through the official Python SDK.

:class:`HuaweiCloudAPI` is a drop-in for :class:`~tunnelnb.client.api.PlatformAPI` where a
fleet and its sessions use one (``base_url``, ``project_id``, ``session``,
``list_devices``, ``iter_devices``, ``show_device``, ``add_tunnel``,
``list_tunnels``, ``show_tunnel``, ``close_tunnel``, ``delete_tunnel``, ``close``,
``async with``), so ``Fleet(HuaweiCloudAPI(...))`` runs the same notebooks against
a real IoTDA instance.  Its REST calls go through ``huaweicloudsdkiotda``'s
``IoTDAClient`` with AK/SK signing; the tunnels' WebSockets go through aiohttp,
as with the local platform.

The SDK is optional (``pip install 'tunnelnb[huaweicloud]'``) and imported only
when a :class:`HuaweiCloudAPI` is made.  Its calls block, so each one runs on a
small thread pool of this object's, never on the event loop.  Its errors become
tunnelnb's: :class:`~tunnelnb.errors.PlatformError` (with IoTDA's or API
Gateway's ``error_code`` and ``error_msg``) and
:class:`~tunnelnb.errors.PlatformUnreachable`, as :class:`~tunnelnb.client.api.PlatformAPI`
raises them.

Credentials come from the arguments or from the SDK's usual environment
variables ``HUAWEICLOUD_SDK_AK``, ``HUAWEICLOUD_SDK_SK``,
``HUAWEICLOUD_SDK_PROJECT_ID`` (and ``HUAWEICLOUD_SDK_SECURITY_TOKEN`` for a
temporary key).  The project id is required: given it, the SDK never calls IAM,
and with an explicit key it never asks a metadata service either, so the only
host contacted is the endpoint.  Keys never appear in a repr, a log line or an
error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..errors import HuaweiCloudSDKMissing, PlatformError, PlatformUnreachable, TunnelnbError
from ..protocol.signing import mask
from .api import DEVICE_PAGE_LIMIT, iter_device_pages
from .backend import PlatformBackend, TunnelGrant
from .clock import LIVE_CLOCK, Clock
from .transport import TunnelSocket

__all__ = [
    "ENV_AK",
    "ENV_PROJECT_ID",
    "ENV_SECURITY_TOKEN",
    "ENV_SK",
    "HuaweiCloudAPI",
    "cloud_api_from_env",
]

log = logging.getLogger(__name__)

ENV_AK = "HUAWEICLOUD_SDK_AK"
ENV_SK = "HUAWEICLOUD_SDK_SK"
ENV_PROJECT_ID = "HUAWEICLOUD_SDK_PROJECT_ID"
ENV_SECURITY_TOKEN = "HUAWEICLOUD_SDK_SECURITY_TOKEN"
INSTALL_HINT = "pip install 'tunnelnb[huaweicloud]'"

#: A region id inside an endpoint's host name, e.g. ``…iotda-app.cn-north-4.myhuaweicloud.com``.
_REGION_IN_HOST = re.compile(r"\.([a-z]{2,}-[a-z]+-\d{1,2})\.")
#: The SDK client's logger: without a handler of its own, Python's last-resort handler
#: would print the SDK's error lines into notebook cells next to tunnelnb's own message.
_SDK_LOGGER = "HuaweiCloud-SDK-IoTDAClient"


def _sdk() -> dict[str, Any]:
    """The SDK's classes, imported on first use; :class:`HuaweiCloudSDKMissing` if absent."""
    try:
        from huaweicloudsdkcore.auth.credentials import BasicCredentials, DerivedCredentials
        from huaweicloudsdkcore.exceptions import exceptions
        from huaweicloudsdkcore.http.http_config import HttpConfig
        from huaweicloudsdkcore.region.region import Region
        from huaweicloudsdkiotda.v5 import model
        from huaweicloudsdkiotda.v5.iotda_client import IoTDAClient
        from huaweicloudsdkiotda.v5.region.iotda_region import IoTDARegion
    except ImportError as exc:
        raise HuaweiCloudSDKMissing(
            f"the Huawei Cloud SDK is not installed ({exc.name or exc}): {INSTALL_HINT}", name=exc.name
        ) from None
    return {
        "BasicCredentials": BasicCredentials,
        "DerivedCredentials": DerivedCredentials,
        "HttpConfig": HttpConfig,
        "Region": Region,
        "IoTDAClient": IoTDAClient,
        "IoTDARegion": IoTDARegion,
        "model": model,
        "exceptions": exceptions,
    }


def _region_of(endpoint: str) -> str | None:
    match = _REGION_IN_HOST.search("." + (urlsplit(endpoint).hostname or "") + ".")
    return match.group(1) if match else None


class HuaweiCloudAPI(PlatformBackend):
    """IoTDA's REST API for one project, through ``huaweicloudsdkiotda`` with AK/SK signing.

    ``region`` (e.g. ``cn-north-4``) and/or ``endpoint``: the instance's
    application-side HTTPS address (IoTDA console → Overview → Access Details),
    or the region's default IoTDA endpoint when only ``region`` is given; the
    region is read from the endpoint's host name when omitted.  ``instance_id``
    travels as the ``Instance-Id`` header.  ``derived_auth`` selects the signing
    algorithm: None (default) lets the SDK decide as IoTDA's samples configure it
    (the derived ``V11-HMAC-SHA256`` for instance endpoints, which standard and
    enterprise editions require; ``SDK-HMAC-SHA256`` for the region's default
    endpoint), True or False forces one.  ``timeout`` bounds each call in seconds;
    ``max_workers`` is how many SDK calls run at once.
    """

    replaying = False
    recording_frames = False

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint: str | None = None,
        project_id: str | None = None,
        instance_id: str | None = None,
        ak: str | None = None,
        sk: str | None = None,
        security_token: str | None = None,
        derived_auth: bool | None = None,
        timeout: float = 30.0,
        max_workers: int = 8,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._sdk = _sdk()
        if not ak and not sk:  # the SDK's environment variables, as a pair (with its temporary key's token)
            ak, sk = os.environ.get(ENV_AK), os.environ.get(ENV_SK)
            security_token = security_token or os.environ.get(ENV_SECURITY_TOKEN)
        if not ak or not sk:
            raise TunnelnbError(
                f"no Huawei Cloud access key: set {ENV_AK} and {ENV_SK} (an access key of an IAM user with the "
                "IoTDA tunnel permissions), or pass ak= and sk="
            )
        project_id = project_id or os.environ.get(ENV_PROJECT_ID)
        if not project_id:
            raise TunnelnbError(
                f"no project id: pass project_id= or set {ENV_PROJECT_ID} (the console's My Credentials → "
                "API Credentials lists the id of each region's project)"
            )
        if endpoint:
            endpoint = endpoint.rstrip("/")
            if "://" not in endpoint:
                endpoint = "https://" + endpoint
        region = region or (_region_of(endpoint) if endpoint else None)
        if not region:
            raise TunnelnbError(
                "no region: pass region= (e.g. cn-north-4); the SDK needs it to sign requests for an endpoint"
            )
        if endpoint is None:
            try:
                endpoint = self._sdk["IoTDARegion"].value_of(region).endpoints[0].rstrip("/")
            except KeyError:
                raise TunnelnbError(
                    f"IoTDA has no default endpoint in region {region!r}: pass endpoint= (the instance's "
                    "application access address in the IoTDA console)"
                ) from None
        self.base_url = endpoint
        self.region = region
        self.project_id = project_id
        self.instance_id = instance_id or None
        self.derived_auth = derived_auth
        self._ak, self._sk, self._security_token = ak, sk, security_token or None
        self._timeout = timeout
        self._max_workers = max_workers
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._session = session
        self._own_session = session is None
        self._build_client()  # early errors for a bad configuration; no network traffic

    def __repr__(self) -> str:
        instance = f", instance_id={self.instance_id!r}" if self.instance_id else ""
        return (
            f"HuaweiCloudAPI({self.base_url!r}, region={self.region!r}, project_id={self.project_id!r}"
            f"{instance}, ak={mask(self._ak)!r})"
        )

    # -- the SDK client ---------------------------------------------------

    def _build_client(self) -> Any:
        if self._client is not None:
            return self._client
        sdk = self._sdk
        config = sdk["HttpConfig"].get_default_config()
        config.timeout = (min(10.0, self._timeout), self._timeout)  # (connect, read) seconds
        config.retry_times = 0
        config.pool_connections = config.pool_maxsize = self._max_workers
        credentials = sdk["BasicCredentials"](self._ak, self._sk, self.project_id)
        if self._security_token:
            credentials.with_security_token(self._security_token)
        if self.derived_auth is None:
            credentials.with_derived_predicate(sdk["DerivedCredentials"].get_default_derived_predicate())
        elif self.derived_auth:
            credentials.with_derived_predicate(lambda request: True)
        logger = logging.getLogger(_SDK_LOGGER)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        self._client = (
            sdk["IoTDAClient"]
            .new_builder()
            .with_http_config(config)
            .with_credentials(credentials)
            .with_region(sdk["Region"](self.region, self.base_url))
            .build()
        )
        return self._client

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session of the tunnels' WebSockets (the SDK has its own for REST calls)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout), connector=aiohttp.TCPConnector(limit=0)
            )
            self._own_session = True
        return self._session

    async def close(self) -> None:
        """Close the WebSocket session and the SDK's connections; a later call starts afresh."""
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None
        client, self._client = self._client, None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            http = client.get_http_client()
            http.close()
            http.executor.shutdown(wait=False)

    async def __aenter__(self) -> HuaweiCloudAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calls --------------------------------------------------------------

    async def _call(self, what: str, request: Any) -> Any:
        """Run ``client.<what>(request)`` on the pool; the answer's JSON body (None when empty)."""
        client = self._build_client()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="tunnelnb-huaweicloud")
        call: Callable[[Any], Any] = getattr(client, what)
        try:
            response = await asyncio.get_running_loop().run_in_executor(self._executor, call, request)
        except Exception as exc:
            raise self._translate(exc, what) from None
        raw = getattr(response, "raw_content", None)
        if not raw:
            return None  # 204: CloseDeviceTunnel, DeleteDeviceTunnel
        try:
            return json.loads(raw)
        except ValueError:
            return response.to_dict()

    def _translate(self, exc: Exception, what: str) -> Exception:
        """An SDK (or requests) exception as tunnelnb's, in one sentence without secrets."""
        errors = self._sdk["exceptions"]
        call = _CALL_NAMES.get(what, what)
        if isinstance(exc, errors.ServiceResponseException):
            status = int(exc.status_code or 0)
            code = str(exc.error_code or f"HTTP.{status}")
            message = str(exc.error_msg or "no error message").strip()[:300]
            return PlatformError(status, code, message, hint=_hint(status))
        if isinstance(exc, errors.SslHandShakeException):
            return PlatformUnreachable(
                f"the TLS handshake with IoTDA at {self.base_url} failed during {call} ({exc.error_msg}): "
                "check the endpoint's address"
            )
        timed_out = isinstance(exc, errors.RequestTimeoutException) or _is_timeout(exc)
        if isinstance(exc, errors.ConnectionException) and "timed out" in str(exc.error_msg).lower():
            timed_out = True  # a GET's read timeout reaches the SDK as a connection error
        if timed_out:
            return PlatformUnreachable(
                f"IoTDA at {self.base_url} did not answer {call} within {self._timeout:g} s: check the endpoint "
                "and the network"
            )
        if isinstance(exc, errors.ConnectionException):
            return PlatformUnreachable(
                f"cannot reach IoTDA at {self.base_url} for {call} ({_cause(str(exc.error_msg))}): check the region "
                "or endpoint and the network"
            )
        if _is_requests_error(exc):
            return PlatformUnreachable(f"the request to IoTDA at {self.base_url} for {call} failed: {exc}")
        if isinstance(exc, errors.SdkException):
            return TunnelnbError(f"the Huawei Cloud SDK failed on {call}: {exc.error_msg}")
        return exc

    # -- devices ------------------------------------------------------------

    async def iter_devices(self) -> AsyncIterator[dict[str, Any]]:
        """Every device of the project, following ListDevices' ``marker`` paging."""
        model = self._sdk["model"]

        async def page(marker: str | None) -> dict[str, Any] | None:
            request = model.ListDevicesRequest(instance_id=self.instance_id, limit=DEVICE_PAGE_LIMIT, marker=marker)
            answer: dict[str, Any] | None = await self._call("list_devices", request)
            return answer

        async for device in iter_device_pages(page):
            yield device

    async def list_devices(self) -> list[dict[str, Any]]:
        return [d async for d in self.iter_devices()]

    async def show_device(self, device_id: str) -> dict[str, Any]:
        request = self._sdk["model"].ShowDeviceRequest(instance_id=self.instance_id, device_id=device_id)
        return await self._call("show_device", request) or {}

    # -- tunnels ------------------------------------------------------------

    async def add_tunnel(self, device_id: str) -> TunnelGrant:
        model = self._sdk["model"]
        body = model.AddTunnelDto(device_id=device_id)
        answer = await self._call("add_tunnel", model.AddTunnelRequest(instance_id=self.instance_id, body=body))
        try:
            return TunnelGrant(
                tunnel_id=answer["tunnel_id"],
                tunnel_uri=answer["tunnel_uri"],
                expires_in=int(answer.get("expires_in") or 0),
                token=answer["tunnel_access_token"],
            )
        except (KeyError, TypeError, ValueError):
            raise TunnelnbError(f"IoTDA's AddTunnel answer for device {device_id} lacks the tunnel's fields") from None

    async def list_tunnels(self, device_id: str | None = None) -> list[dict[str, Any]]:
        request = self._sdk["model"].ListDeviceTunnelsRequest(instance_id=self.instance_id, device_id=device_id)
        answer = await self._call("list_device_tunnels", request) or {}
        return answer.get("tunnels") or []

    async def show_tunnel(self, tunnel_id: str) -> dict[str, Any]:
        request = self._sdk["model"].ShowDeviceTunnelRequest(instance_id=self.instance_id, tunnel_id=tunnel_id)
        return await self._call("show_device_tunnel", request) or {}

    async def close_tunnel(self, tunnel_id: str) -> None:
        request = self._sdk["model"].CloseDeviceTunnelRequest(instance_id=self.instance_id, tunnel_id=tunnel_id)
        await self._call("close_device_tunnel", request)

    async def delete_tunnel(self, tunnel_id: str) -> None:
        request = self._sdk["model"].DeleteDeviceTunnelRequest(instance_id=self.instance_id, tunnel_id=tunnel_id)
        await self._call("delete_device_tunnel", request)

    # -- what sessions get besides REST ------------------------------------

    async def open_tunnel_socket(self, grant: TunnelGrant, **options: Any) -> TunnelSocket:
        """The application side's WebSocket of a tunnel; the token authorises it, not the AK/SK."""
        return await TunnelSocket.open(self.session, grant.tunnel_uri, grant.token, **options)

    def clock_for(self, device_id: str | None) -> Clock:
        return LIVE_CLOCK

    def secret_values(self) -> list[tuple[str, str]]:
        pairs = [(self._ak, "<access-key>"), (self._sk, "<secret-key>"), (self._security_token, "<security-token>")]
        return [(value, placeholder) for value, placeholder in pairs if value]


_CALL_NAMES = {
    "list_devices": "ListDevices",
    "show_device": "ShowDevice",
    "add_tunnel": "AddTunnel",
    "list_device_tunnels": "ListDeviceTunnels",
    "show_device_tunnel": "ShowDeviceTunnel",
    "close_device_tunnel": "CloseDeviceTunnel",
    "delete_device_tunnel": "DeleteDeviceTunnel",
}


def _hint(status: int) -> str:
    if status == 401:
        return (
            f"check the access key ({ENV_AK} / {ENV_SK}) and this machine's clock (a signature is valid for 15 minutes)"
        )
    if status == 403:
        return (
            "the IAM user needs the IoTDA permissions iotda:tunnel:create, :query, :queryList, :close, :delete and "
            "iotda:devices:queryList, :query in this project; check the project id and the instance id"
        )
    return ""


def _cause(message: str) -> str:
    """The operating system's reason inside urllib3's long connection error, else the message, shortened."""
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", message)
    return match.group(1).strip() if match else message[:200]


def _is_timeout(exc: Exception) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - the SDK depends on requests
        return False
    return isinstance(exc, requests.Timeout)


def _is_requests_error(exc: Exception) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, requests.RequestException)


def cloud_api_from_env(
    *,
    region: str | None = None,
    project_id: str | None = None,
    instance_id: str | None = None,
    endpoint: str | None = None,
    derived_auth: bool | None = None,
    timeout: float = 30.0,
) -> HuaweiCloudAPI:
    """A :class:`HuaweiCloudAPI` whose access key comes from ``HUAWEICLOUD_SDK_AK`` / ``HUAWEICLOUD_SDK_SK``.

    ``project_id`` defaults to ``$HUAWEICLOUD_SDK_PROJECT_ID``; ``HUAWEICLOUD_SDK_SECURITY_TOKEN``
    is used with a temporary key.  What the front ends call for ``huaweicloud``.
    """
    return HuaweiCloudAPI(
        region=region,
        endpoint=endpoint,
        project_id=project_id,
        instance_id=instance_id,
        derived_auth=derived_auth,
        timeout=timeout,
    )

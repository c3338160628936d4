"""Who may do what: REST credentials (``X-Auth-Token``, AK/SK signatures) and device logins.

:class:`Auth` holds the projects with their API tokens and the access keys with their
projects, and decides which project a REST request may act on;
:func:`check_device_login` checks a device link's IoTDA login.  Kept together so every
secret comparison of the platform goes through :func:`same_secret`, in constant time.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from ...errors import PlatformError, SignatureError
from ...protocol import signing
from ...protocol.devicelink import PASSWORD_HEADER, TIMESTAMP_HEADER, device_password
from .model import Device, ErrorCode, id_field

if TYPE_CHECKING:
    from .app import Platform

__all__ = ["AUTH_HEADER", "PROJECT_HEADER", "Auth", "check_device_login", "same_secret"]

logger = logging.getLogger(__name__)

AUTH_HEADER = "X-Auth-Token"
PROJECT_HEADER = "X-Project-Id"  # the SDK's BasicCredentials sign it into every request
_ACCESS_KEY = "access key"
_TIMESTAMP_RE = re.compile(r"\d{10}")


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison that also copes with non-ASCII header values."""
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


class Auth:
    """The platform's REST credentials: projects (tenants) with their API tokens, access keys with their projects.

    ``platform`` supplies the clock and ``signature_clock_skew``, read on every check.
    """

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self.projects: dict[str, str] = {}  # project id -> api token
        self._access_keys: dict[str, tuple[str, str]] = {}  # access key -> (secret key, project id)

    def add_project(self, project_id: str, api_token: str) -> None:
        """Add a project whose REST calls authenticate with ``api_token``."""
        id_field(project_id, "project_id")
        if not api_token:
            raise ValueError("api_token must not be empty")
        if project_id in self.projects:
            raise ValueError(f"project {project_id} already exists")
        if any(same_secret(api_token, token) for token in self.projects.values()):
            raise ValueError("api_token is already used by another project; each project needs its own")
        self.projects[project_id] = api_token

    def add_access_key(self, ak: str, sk: str, project: str) -> None:
        """Accept REST calls signed with the key pair ``ak``/``sk`` for ``project``."""
        if project not in self.projects:
            raise ValueError(f"project {project} does not exist")
        if not ak or not sk:
            raise ValueError("ak and sk must not be empty")
        if any(c.isspace() or c in ",/=" for c in ak):
            raise ValueError("ak must not contain spaces or the characters , / =")
        if ak in self._access_keys:
            raise ValueError("this access key is already registered")
        self._access_keys[ak] = (sk, project)

    async def authorize(self, request: web.Request) -> str:
        """The project of the request's path, once ``X-Auth-Token`` or an AK/SK signature proves access to it."""
        project_id = request.match_info["project_id"]
        owner, credential = await self._authenticate(request)
        if project_id not in self.projects:
            raise PlatformError(404, ErrorCode.PROJECT_NOT_FOUND, f"Project {project_id} does not exist.")
        if owner != project_id:
            raise PlatformError(
                403, ErrorCode.FORBIDDEN, f"The {credential} does not grant access to project {project_id}."
            )
        header_project = request.headers.get(PROJECT_HEADER, "").strip()
        if credential == _ACCESS_KEY and header_project and header_project != project_id:
            raise PlatformError(
                403,
                ErrorCode.FORBIDDEN,
                f"The {PROJECT_HEADER} header ({header_project}) does not match project {project_id} of the path.",
            )
        return project_id

    async def _authenticate(self, request: web.Request) -> tuple[str, str]:
        """``(project, credential)`` of the request: an ``X-Auth-Token``, else an AK/SK signature.

        A token, when present, decides alone.  A signed request's failures are
        API Gateway's ``APIGW.0301`` errors, with its wording.
        """
        token = request.headers.get(AUTH_HEADER, "").strip()
        if token or signing.AUTHORIZATION_HEADER not in request.headers:
            owner = None
            if token:
                owner = next((p for p, t in self.projects.items() if same_secret(token, t)), None)
            if owner is None:
                raise PlatformError(
                    401,
                    ErrorCode.UNAUTHORIZED,
                    f"The {AUTH_HEADER} header is missing or not valid (or sign the request with an access key).",
                )
            return owner, AUTH_HEADER
        body = await request.read()
        try:
            verified = signing.verify(
                request.method,
                request.raw_path,
                request.headers,
                body,
                secret_for=self._secret_for,
                now=self._platform.clock(),
                max_skew=self._platform.signature_clock_skew,
            )
        except SignatureError as exc:
            key = signing.mask(exc.access_key) if exc.access_key else "-"
            logger.warning(
                "%s %s: AK/SK signature refused (%s, ak %s)", request.method, request.path, exc.reason.value, key
            )
            raise PlatformError(
                401, ErrorCode.IAM_AUTH, f"Incorrect IAM authentication information: {exc.detail}"
            ) from None
        return self._access_keys[verified.access_key][1], _ACCESS_KEY

    def _secret_for(self, access_key: str) -> str | None:
        entry = self._access_keys.get(access_key)
        return entry[0] if entry is not None else None


def check_device_login(device: Device, request: web.Request, *, now: float, clock_skew: int) -> None:
    """IoTDA's device login: an HMAC of the secret, keyed by a recent YYYYMMDDHH timestamp.

    ``clock_skew`` is how far (seconds) the timestamp's hour may lie from ``now``;
    raises :class:`PlatformError` 401 when the login fails.
    """
    stamp = request.headers.get(TIMESTAMP_HEADER, "").strip()
    password = request.headers.get(PASSWORD_HEADER, "").strip()
    if not stamp or not password:
        raise PlatformError(
            401,
            ErrorCode.UNAUTHORIZED,
            f"A device link needs the {TIMESTAMP_HEADER} and {PASSWORD_HEADER} headers.",
        )
    when = None
    if _TIMESTAMP_RE.fullmatch(stamp):
        with contextlib.suppress(ValueError):
            when = datetime.strptime(stamp, "%Y%m%d%H").replace(tzinfo=UTC).timestamp()
    if when is None:
        raise PlatformError(401, ErrorCode.UNAUTHORIZED, f"{TIMESTAMP_HEADER} must be UTC time as YYYYMMDDHH.")
    # The stamp names a whole hour: accept if now lies within the skew of that hour.
    if not when - clock_skew <= now < when + 3600 + clock_skew:
        logger.warning("device %s: link refused, timestamp %s is off the platform's clock", device.device_id, stamp)
        raise PlatformError(
            401,
            ErrorCode.UNAUTHORIZED,
            f"{TIMESTAMP_HEADER} {stamp} is more than {clock_skew} seconds off the platform's clock.",
        )
    if not same_secret(password.lower(), device_password(device.secret, stamp)):
        logger.warning("device %s: link refused, wrong password", device.device_id)
        raise PlatformError(401, ErrorCode.UNAUTHORIZED, f"Device {device.device_id} failed authentication.")

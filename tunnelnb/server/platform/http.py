"""HTTP plumbing of the platform's aiohttp application, independent of any state.

IoTDA's JSON error bodies for every failure (the middleware), request ids on every
response, and the parsing of request bodies and query parameters the REST handlers share.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ...errors import PlatformError
from .model import ErrorCode

__all__ = ["REQUEST_ID_HEADER", "error_middleware", "int_query", "json_body", "stamp_request_id", "ws_base"]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"

_HTTP_MESSAGES = {
    404: "No API at {path}.",
    413: "The request body is too large.",
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error becomes IoTDA's JSON error body: never HTML, never a traceback."""
    request_id = uuid.uuid4().hex
    try:
        return await handler(request)
    except PlatformError as exc:
        status, code, message = exc.status, exc.error_code, exc.error_msg
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status, code, message = exc.status, ErrorCode.for_status(exc.status), _http_error_message(request, exc)
    except Exception:
        logger.exception("unexpected error in %s %s (request %s)", request.method, request.path, request_id)
        status, code = 500, ErrorCode.for_status(500)
        message = f"The platform failed to handle request {request_id}; its log has the details."
    logger.debug("%s %s -> %d %s (request %s)", request.method, request.path, status, code, request_id)
    return web.json_response(
        {"error_code": code, "error_msg": message}, status=status, headers={REQUEST_ID_HEADER: request_id}
    )


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: give a response without a request id a fresh one."""
    if REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = uuid.uuid4().hex


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.method} is not allowed on {request.path}; use {allowed}."
    template = _HTTP_MESSAGES.get(exc.status)
    if template is not None:
        return template.format(path=request.path)
    return f"{exc.reason}."


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's body, which must be a JSON object."""
    try:
        body = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        raise PlatformError(400, ErrorCode.BAD_REQUEST_BODY, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise PlatformError(400, ErrorCode.BAD_REQUEST_BODY, "The request body must be a JSON object.")
    return body


def int_query(request: web.Request, name: str, *, default: int, low: int, high: int, code: str) -> int:
    """The integer query parameter ``name`` (``default`` when absent); a 400 with ``code`` outside ``low..high``."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise PlatformError(400, code, f"{name} must be an integer from {low} to {high}.")
    return value


def ws_base(request: web.Request) -> str:
    """``ws://host:port`` (or ``wss://``) as the client addressed us."""
    return f"{'wss' if request.secure else 'ws'}://{request.host}"

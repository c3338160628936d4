"""HTTP plumbing of the platform's aiohttp application, independent of any state.

IoTDA's JSON error bodies for every failure (the middleware), request ids on every
response, and the parsing of request bodies and query parameters the REST handlers share.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ...errors import PlatformError
from .model import ErrorCode

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "REQUEST_ID_HEADER",
    "error_middleware",
    "int_query",
    "json_body",
    "stamp_request_id",
    "ws_base",
]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"

#: The largest request body the platform reads (aiohttp's ``client_max_size``): IoTDA's bodies are
#: a few hundred bytes; beyond this a request gets 413 before its body is kept.
MAX_BODY_BYTES = 64 * 1024
#: The deepest JSON nesting a body may have.  IoTDA's deepest is 3 (tags in a list in the body);
#: Python's parser would raise RecursionError near 1,000 and so turn a bad body into a 500.
MAX_JSON_DEPTH = 32
_BODY_TIMEOUT = 10.0  # seconds for the whole body to arrive

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
    """The request's body, which must be a JSON object: UTF-8, nested at most :data:`MAX_JSON_DEPTH` deep.

    Every way a body can be wrong is IoTDA's 400 (413 when it is too large, from
    aiohttp's ``client_max_size``), never a 500.
    """
    try:
        async with asyncio.timeout(_BODY_TIMEOUT):
            raw = await request.read()
    except TimeoutError:
        raise PlatformError(
            400, ErrorCode.BAD_REQUEST_BODY, f"The request body did not arrive within {_BODY_TIMEOUT:g} seconds."
        ) from None
    depth = _nesting(raw)
    if depth > MAX_JSON_DEPTH:
        raise PlatformError(
            400,
            ErrorCode.BAD_REQUEST_BODY,
            f"The request body is nested too deeply (more than {MAX_JSON_DEPTH} levels).",
        )
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise PlatformError(400, ErrorCode.BAD_REQUEST_BODY, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise PlatformError(400, ErrorCode.BAD_REQUEST_BODY, "The request body must be a JSON object.")
    return body


def _nesting(raw: bytes) -> int:
    """How deep ``raw`` nests ``[`` and ``{`` outside JSON strings (a bound, for bodies that are not JSON too).

    One pass without recursion, so a body of 100,000 brackets costs a loop, not a stack.
    """
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


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

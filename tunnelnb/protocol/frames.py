"""Secure Tunnel frames, sans-I/O.

Every WebSocket message of IoTDA's Secure Tunnel is one JSON object
``{"operation_type", "tunnel_service_type", "request_id", "data"}``.  This module
turns text or bytes into validated :class:`Frame` objects and back, splits
terminal output into ``command_response`` frames that respect the platform's
message-size limit, and hands out request ids.  It performs no I/O, so the
platform, the agent and the client share it and it is tested without sockets.

Decoding is strict about what would make a frame meaningless (not JSON, not an
object, unknown ``operation_type``, wrong field types, missing
``operation_type`` or ``request_id``) and lenient about what real devices send:
the C SDK omits ``data``, pretty-prints its JSON and copies raw terminal bytes
into it, so its messages need not be valid UTF-8.
"""

from __future__ import annotations

import enum
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError

__all__ = [
    "C_SDK_SSH_FAILED",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FINAL_CLOSE_CODES",
    "SERVICE_TYPE",
    "SSH_IDLE_REQUEST_ID",
    "CloseCode",
    "Frame",
    "Op",
    "RequestIds",
    "Status",
    "chunk_text",
    "decode_frame",
    "encode_frame",
    "encoded_size",
    "require_utf8",
]

#: The platform's limit: at most 10 KB (10,240 bytes) per WebSocket message.
DEFAULT_MAX_MESSAGE_BYTES = 10_240

#: The only service the tunnel carries today.
SERVICE_TYPE = "ssh"


class Status:
    """``status_code`` values of ``disconnect`` frames (strings, as the C SDK sends them)."""

    CHANNEL_FAILED = "400"  # the SSH session could not be opened (the C SDK: for every SSH failure)
    AUTH_FAILED = "401"  # SSH login refused: wrong user name or password
    SSH_IDLE = "408"  # C SDK: the SSH session was idle too long
    SESSION_ENDED = "410"  # the device's shell or SSH session ended
    MESSAGE_TOO_BIG = "413"  # a message exceeded the platform's size limit
    MALFORMED = "422"  # a peer sent a frame the platform could not understand
    PEER_GONE = "503"  # the other side of the tunnel disconnected
    TUNNEL_CLOSED = "204"  # the tunnel was closed (CloseDeviceTunnel) or the platform shut down


#: What the C SDK says in its ``disconnect`` 400 for every SSH failure: a wrong password, an SSH
#: server that is down, a channel refused (huaweicloud-iot-device-sdk-c, ``src/tunnel/wss_client.c``:
#: "WssClientListenerOnMsg: Create SSH channel failed").  Only its own log tells them apart.
C_SDK_SSH_FAILED = "Create SSH channel failed"


class CloseCode(enum.IntEnum):
    """WebSocket close codes of the tunnel (the device SDKs give 1000, 1002 and 4000 their meaning)."""

    NORMAL = 1000  # tunnel closed: do not reconnect
    GOING_AWAY = 1001  # platform shutting down
    AUTH_FAILED = 1002  # wrong or missing tunnel token: do not reconnect
    MALFORMED = 1007  # a message the protocol cannot carry
    TOO_BIG = 1009  # a message over max_message_bytes
    INTERNAL_ERROR = 1011
    REPLACED = 4000  # a newer connection took this side's place: do not reconnect


#: After these close codes the device SDKs do not reconnect (C SDK ``tunnel_client.c``), and neither do we.
FINAL_CLOSE_CODES = frozenset({CloseCode.NORMAL, CloseCode.AUTH_FAILED, CloseCode.REPLACED})


#: request_id the C SDK puts on its idle-timeout disconnect.
SSH_IDLE_REQUEST_ID = "SSH_timeout_disconnect"


class Op(enum.StrEnum):
    """The eight operation types of the Secure Tunnel protocol."""

    CONNECT_TUNNEL = "connect_tunnel"
    CONNECT = "connect"
    CONNECT_RESPONSE = "connect_response"
    COMMAND = "command"
    COMMAND_RESPONSE = "command_response"
    DISCONNECT = "disconnect"
    PING = "ping"
    PONG = "pong"


_OPS = {op.value: op for op in Op}


@dataclass(frozen=True, slots=True)
class Frame:
    """One tunnel message; ``data``'s shape depends on ``op`` (docs/architecture.md, "The platform")."""

    op: Op
    request_id: str
    data: Any = None
    service_type: str = SERVICE_TYPE

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation_type": self.op.value,
            "tunnel_service_type": self.service_type,
            "request_id": self.request_id,
            "data": self.data,
        }

    # Constructors for the frames whose data has a fixed shape.
    @classmethod
    def connect(cls, request_id: str, username: str, password: str, port: int | None = None) -> Frame:
        data: dict[str, Any] = {"username": username, "password": password}
        if port is not None:
            data["port"] = port
        return cls(Op.CONNECT, request_id, data)

    @classmethod
    def command(cls, request_id: str, text: str) -> Frame:
        return cls(Op.COMMAND, request_id, text)

    @classmethod
    def disconnect(cls, request_id: str, status_code: str, status_msg: str) -> Frame:
        return cls(Op.DISCONNECT, request_id, {"status_code": str(status_code), "status_msg": status_msg})

    def __repr__(self) -> str:
        # Never show a connect frame's password, even in a traceback or log line.
        data = self.data
        if self.op is Op.CONNECT and isinstance(data, dict) and "password" in data:
            data = {**data, "password": "***"}
        elif isinstance(data, str) and len(data) > 80:
            data = data[:77] + "..."
        return f"Frame({self.op.value}, request_id={self.request_id!r}, data={data!r})"


# Expected type of `data` for each operation (None = must be null/absent).
_DATA_TYPES: dict[Op, tuple[type, ...]] = {
    Op.CONNECT_TUNNEL: (type(None), dict, str),
    Op.CONNECT: (dict,),
    Op.CONNECT_RESPONSE: (type(None), str, dict),
    Op.COMMAND: (str,),
    Op.COMMAND_RESPONSE: (str,),
    Op.DISCONNECT: (dict, type(None)),
    Op.PING: (type(None), str, dict),
    Op.PONG: (type(None), str, dict),
}

_TYPE_NAMES = {type(None): "null", dict: "an object", str: "a string"}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_frame(frame: Frame, *, pretty: bool = False) -> str:
    """The JSON text of ``frame``: compact, or pretty-printed as the C SDK sends it.

    Lone surrogates (bytes a device could not decode, carried with
    ``surrogateescape`` — a UTF-8 character split between two chunks) are
    written as ``\\udcXX`` escapes, so the message stays valid UTF-8 and the
    receiver can put the bytes back together.
    """
    text = json.dumps(
        frame.to_dict(),
        ensure_ascii=False,
        indent="\t" if pretty else None,
        separators=None if pretty else (",", ":"),
    )
    return _escape_surrogates(text)


def _escape_surrogates(text: str) -> str:
    if text.isascii() or _LONE_SURROGATE.search(text) is None:
        return text
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encoded_size(frame: Frame) -> int:
    """Bytes ``frame`` occupies on the wire (compact encoding)."""
    return len(encode_frame(frame).encode("utf-8"))


def decode_frame(message: str | bytes, *, max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES) -> Frame:
    """Parse and validate one WebSocket message into a :class:`Frame`.

    Bytes that are not valid UTF-8 are decoded with ``surrogateescape``, not
    refused: the C SDK copies raw terminal bytes into its JSON text, so a
    character split between two 2,048-byte reads makes a message that is not
    valid UTF-8 (docs/architecture.md, "The platform").  Each such byte becomes
    a lone surrogate ``\\udc80``-``\\udcff`` in the decoded strings, exactly as
    a ``\\udcXX`` escape of :func:`encode_frame` does, and
    :class:`~tunnelnb.protocol.shell.TerminalText` puts split characters back
    together (and shows bytes that are no character as U+FFFD).  A caller that
    must refuse such messages checks them first (:func:`require_utf8`).

    Raises :class:`ProtocolError` with one sentence naming the problem.
    """
    size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "surrogatepass"))
    if max_bytes is not None and size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    if isinstance(message, bytes):
        message = message.decode("utf-8", "surrogateescape")
    try:
        obj = json.loads(message)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ProtocolError("message is not JSON: nested too deeply") from None
    return frame_from_dict(obj)


def require_utf8(message: bytes) -> None:
    """Raise :class:`ProtocolError` unless ``message`` is valid UTF-8 (as a WebSocket text message must be)."""
    try:
        message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def frame_from_dict(obj: Any) -> Frame:
    """Validate a decoded JSON value as a frame."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is JSON {_json_kind(obj)}, not an object")
    if "operation_type" not in obj:
        raise ProtocolError("message has no operation_type")
    op_name = obj["operation_type"]
    if not isinstance(op_name, str):
        raise ProtocolError(f"operation_type must be a string, got {_json_kind(op_name)}")
    op = _OPS.get(op_name)
    if op is None:
        raise ProtocolError(f"unknown operation_type {op_name!r} (expected one of {', '.join(_OPS)})")
    if "request_id" not in obj:
        raise ProtocolError(f"{op_name} message has no request_id")
    request_id = obj["request_id"]
    if not isinstance(request_id, str):
        raise ProtocolError(f"{op_name} request_id must be a string, got {_json_kind(request_id)}")
    service = obj.get("tunnel_service_type", SERVICE_TYPE)
    if not isinstance(service, str):
        raise ProtocolError(f"{op_name} tunnel_service_type must be a string, got {_json_kind(service)}")
    data = obj.get("data")  # The C SDK omits data on connect_response: absent means null.
    allowed = _DATA_TYPES[op]
    if not isinstance(data, allowed) or isinstance(data, bool):
        expected = " or ".join(_TYPE_NAMES[t] for t in allowed)
        raise ProtocolError(f"{op_name} data must be {expected}, got {_json_kind(data)}")
    if op is Op.CONNECT:
        assert isinstance(data, dict)
        for key in ("username", "password"):
            if not isinstance(data.get(key), str):
                raise ProtocolError(f"connect data.{key} must be a string, got {_json_kind(data.get(key))}")
        port = data.get("port", 22)
        if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) <= 5:
            port = int(port)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ProtocolError(f"connect data.port must be a TCP port number, got {port!r}")
    if op is Op.DISCONNECT and isinstance(data, dict):
        for key in ("status_code", "status_msg"):
            value = data.get(key)
            if value is not None and not isinstance(value, (str, int)):
                raise ProtocolError(f"disconnect data.{key} must be a string, got {_json_kind(value)}")
    return Frame(op, request_id, data, service)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# ---------------------------------------------------------------------------
# Chunking terminal output into command_response frames


def chunk_text(
    text: str,
    request_id: str,
    *,
    op: Op = Op.COMMAND_RESPONSE,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Iterator[Frame]:
    """Split ``text`` into ``op`` frames (output or a long command) of at most ``max_bytes`` encoded.

    Chunks are cut between characters, so a UTF-8 character is never split, and
    JSON escaping is counted, so ``"`` or a control character cannot push a
    frame over the limit.
    """
    if not text:
        return
    overhead = encoded_size(Frame(op, request_id, ""))
    budget = max_bytes - overhead
    if budget < 6:  # the largest single-character escape (\u001f) takes 6 bytes
        raise ValueError(f"max_bytes={max_bytes} leaves no room for data after {overhead} bytes of framing")
    start, n = 0, len(text)
    while start < n:
        # A cheap guess, then an exact fit: each char costs 1..6 bytes.
        end = min(n, start + budget)
        piece = text[start:end]
        cost = _string_cost(piece)
        if cost > budget:
            end = _fit(text, start, end, budget)
            piece = text[start:end]
        yield Frame(op, request_id, piece)
        start = end


def _string_cost(s: str) -> int:
    """Bytes ``s`` occupies as a JSON string value, encoded as :func:`encode_frame` would."""
    return len(_escape_surrogates(json.dumps(s, ensure_ascii=False)).encode("utf-8")) - 2


def _fit(text: str, start: int, end: int, budget: int) -> int:
    """The largest ``e`` in (start, end] whose slice costs at most ``budget``.

    Interpolation search on the slice's cost: terminal output is escape-dense
    (a ``\\r\\n`` per line) but evenly so, and a proportional guess lands
    within a few characters in two or three encodings instead of fourteen.
    """
    lo, lo_cost = start, 0  # text[start:lo] fits
    hi, hi_cost = end, _string_cost(text[start:end])  # text[start:hi] does not
    while hi - lo > 1:
        guess = lo + (hi - lo) * (budget - lo_cost) // max(1, hi_cost - lo_cost)
        mid = min(max(guess, lo + 1), hi - 1)
        cost = _string_cost(text[start:mid])
        if cost <= budget:
            lo, lo_cost = mid, cost
            # the next char costs at least 1 byte: try the slack as a whole first
            probe = min(hi - 1, mid + (budget - cost))
            if probe > mid:
                probe_cost = _string_cost(text[start:probe])
                if probe_cost <= budget:
                    lo, lo_cost = probe, probe_cost
                else:
                    hi, hi_cost = probe, probe_cost
        else:
            hi, hi_cost = mid, cost
    return max(lo, start + 1)  # one char always fits (<= 6 bytes <= budget)


# ---------------------------------------------------------------------------
# Request ids


class RequestIds:
    """Request ids unique within a tunnel: a random prefix and a counter."""

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = prefix if prefix is not None else os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"

    __next__ = next

    def __iter__(self) -> RequestIds:
        return self

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
    "encode_chunks",
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
#: A string as a JSON string (quotes included), as ``json.dumps(s, ensure_ascii=False)`` writes it.
_json_string = json.JSONEncoder(ensure_ascii=False).encode
#: JSON's parser without :func:`json.loads`'s wrapping: the value, and where it ended.
_raw_decode = json.JSONDecoder().raw_decode


def encode_frame(frame: Frame, *, pretty: bool = False) -> str:
    """The JSON text of ``frame``: compact, or pretty-printed as the C SDK sends it.

    Lone surrogates (bytes a device could not decode, carried with
    ``surrogateescape`` — a UTF-8 character split between two chunks) are
    written as ``\\udcXX`` escapes, so the message stays valid UTF-8 and the
    receiver can put the bytes back together.
    """
    data = frame.data
    if isinstance(data, str) and not pretty:  # text (command, output): no dict to build and walk
        text = _head(frame.op, frame.service_type, frame.request_id) + _json_string(data) + "}"
    else:
        text = json.dumps(
            frame.to_dict(),
            ensure_ascii=False,
            indent="\t" if pretty else None,
            separators=None if pretty else (",", ":"),
        )
    return _escape_surrogates(text)


def _head(op: Op, service_type: str, request_id: str) -> str:
    """A frame's compact JSON text up to its data's value: ``{"operation_type":…,"data":``."""
    return (
        f'{{"operation_type":"{op._value_}","tunnel_service_type":{_json_string(service_type)},'
        f'"request_id":{_json_string(request_id)},"data":'
    )


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
    if max_bytes is not None:  # measured only when asked: a relay has measured the bytes already
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ProtocolError(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    if isinstance(message, bytes):
        message = message.decode("utf-8", "surrogateescape")
    try:
        obj, end = _raw_decode(message)
    except (json.JSONDecodeError, RecursionError):
        obj, end = None, -1
    if end != len(message):  # not a value alone (whitespace around it, or no JSON): json.loads decides, and says why
        obj = _loads(message)
    return frame_from_dict(obj)


def _loads(message: str) -> Any:
    """:func:`json.loads`, its errors said as :class:`ProtocolError`."""
    try:
        return json.loads(message)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ProtocolError("message is not JSON: nested too deeply") from None


def require_utf8(message: bytes) -> str:
    """``message``'s text; :class:`ProtocolError` unless it is valid UTF-8 (as a WebSocket text message must be)."""
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


#: By name, each operation whose data is checked by its type alone, and the exact types its data may have
#: (keyed by str: an Op's hash runs in Python).
_PLAIN_OPS: dict[str, tuple[Op, tuple[type, ...]]] = {
    op.value: (op, types) for op, types in _DATA_TYPES.items() if op not in (Op.CONNECT, Op.DISCONNECT)
}


def frame_from_dict(obj: Any) -> Frame:
    """Validate a decoded JSON value as a frame."""
    # Fast path, for the frames relayed by the thousand: exact types from JSON, an operation whose
    # data has no inner fields to check.  Anything else takes the full check below, which names the problem.
    if type(obj) is dict:
        op_name, request_id = obj.get("operation_type"), obj.get("request_id")
        plain = _PLAIN_OPS.get(op_name) if type(op_name) is str else None
        if plain is not None and type(request_id) is str:
            data = obj.get("data")
            service = obj.get("tunnel_service_type", SERVICE_TYPE)
            if type(data) in plain[1] and type(service) is str:
                return Frame(plain[0], request_id, data, service)
    return _checked_frame(obj)


def _checked_frame(obj: Any) -> Frame:
    """:func:`frame_from_dict`, every check in turn."""
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
# Chunking terminal output into command_response frames, encoded once


def encode_chunks(
    text: str | bytes,
    request_id: str,
    *,
    op: Op = Op.COMMAND_RESPONSE,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Iterator[bytes]:
    """``text`` as ``op`` frames of at most ``max_bytes``, already encoded: the messages to send.

    Each message is exactly ``encode_frame(Frame(op, request_id, piece))`` in
    UTF-8, for consecutive pieces of ``text``, each as full as the limit allows.
    The text is JSON-escaped once, and the escaped bytes are cut where a piece
    may end (never inside an escape, a UTF-8 character or a surrogate pair), so
    nothing is encoded twice or measured by trial.

    ``text`` may be ASCII bytes, as terminal output is read: escaped as they are,
    without decoding (the usual terminal output, ``\\n``, ``\\r`` and ``\\t``
    its only control characters, takes a few ``bytes.replace``; others go
    through JSON's own escaping).  Bytes that are not ASCII are refused
    (``ValueError``): decode them first.
    """
    if not text:
        return
    prefix, suffix = _skeleton(op, request_id)
    for piece in _escaped_pieces(text, _budget(max_bytes, len(prefix) + len(suffix))):
        yield b"".join((prefix, piece, suffix))


def chunk_text(
    text: str,
    request_id: str,
    *,
    op: Op = Op.COMMAND_RESPONSE,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Iterator[Frame]:
    """Split ``text`` into ``op`` frames (output or a long command) of at most ``max_bytes`` encoded.

    The frames of :func:`encode_chunks`: chunks are cut between characters, so a
    UTF-8 character is never split, and JSON escaping is counted, so ``"`` or a
    control character cannot push a frame over the limit.
    """
    if not text:
        return
    prefix, suffix = _skeleton(op, request_id)
    pieces = _escaped_pieces(text, _budget(max_bytes, len(prefix) + len(suffix)))
    first = next(pieces)
    following = next(pieces, None)
    if following is None:  # all of it fits in one frame
        yield Frame(op, request_id, text)
        return
    for piece in itertools.chain((first, following), pieces):
        yield Frame(op, request_id, json.loads(b"".join((b'"', piece, b'"'))))


def _budget(max_bytes: int, overhead: int) -> int:
    budget = max_bytes - overhead
    if budget < 6:  # the largest single-character escape (\u001f) takes 6 bytes
        raise ValueError(f"max_bytes={max_bytes} leaves no room for data after {overhead} bytes of framing")
    return budget


def _skeleton(op: Op, request_id: str) -> tuple[bytes, bytes]:
    """What goes around the data of a compact ``op`` message: its text up to the data's opening quote, and after."""
    return _escape_surrogates(_head(op, SERVICE_TYPE, request_id) + '"').encode("utf-8"), b'"}'


#: A high surrogate's escape followed by a low one's: JSON reads the two as one character.
_SURROGATE_PAIR = re.compile(rb"\\ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}")
_BACKSLASH = 0x5C


#: Control bytes that JSON escapes other than as \\n, \\r and \\t (and \\b, \\f: rare in terminal output).
_OTHER_CONTROLS = bytes(b for b in range(32) if b not in b"\n\r\t")
#: All other bytes: deleting them leaves only those controls (quicker than deleting those, and measuring).
_NOT_OTHER_CONTROLS = bytes(b for b in range(256) if b not in _OTHER_CONTROLS)


def _escaped(text: str | bytes) -> tuple[bytes, int, int, bool]:
    """``text``'s JSON string as :func:`encode_frame` writes it: (bytes, start and end of its inside, pairs).

    ``pairs``: it holds surrogates' escapes, which :func:`_cut` must keep together.
    """
    if isinstance(text, bytes):
        if not text.isascii():
            raise ValueError("encode_chunks takes bytes only when they are ASCII: decode the others first")
        if not text.translate(None, _NOT_OTHER_CONTROLS):  # the usual terminal output (what is left: those controls)
            data = text.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            data = data.replace(b"\n", b"\\n").replace(b"\r", b"\\r").replace(b"\t", b"\\t")
            return data, 0, len(data), False
        text = text.decode("ascii")
    escaped = _json_string(text)
    pairs = not escaped.isascii() and _LONE_SURROGATE.search(escaped) is not None
    if pairs:
        escaped = _escape_surrogates(escaped)
    data = escaped.encode("utf-8")  # no lone surrogate is left: valid UTF-8
    return data, 1, len(data) - 1, pairs  # between the quotes


def _escaped_pieces(text: str | bytes, budget: int) -> Iterator[memoryview]:
    """The inside of ``text``'s JSON string as :func:`encode_frame` writes it, in pieces of at most ``budget`` bytes."""
    data, start, last, pairs = _escaped(text)
    view = memoryview(data)
    while start < last:
        end = start + budget
        if end >= last:
            end = last
        else:
            end = _cut(data, start, end, pairs=pairs)
        yield view[start:end]
        start = end


def _cut(data: bytes, start: int, end: int, *, pairs: bool) -> int:
    """The last place in ``(start, end]`` where a piece of the escaped string ``data`` may end.

    ``start`` is such a place.  Not inside a UTF-8 character (before a
    continuation byte), not inside an escape (``\\X`` or ``\\uXXXX``), and with
    ``pairs``, not between the escapes of a high and a low surrogate, unless that
    pair alone is over the budget.
    """
    pos = end
    while 0x80 <= data[pos] < 0xC0:  # at most 3 continuation bytes; escapes are ASCII
        pos -= 1
    slash = data.rfind(b"\\", max(start, pos - 5), pos)
    if slash >= 0 and _opens_escape(data, start, slash):
        if slash + (6 if data[slash + 1] == 0x75 else 2) > pos:  # 0x75: "u"
            pos = slash
    if pairs and pos - 6 > start and _SURROGATE_PAIR.match(data, pos - 6) and _opens_escape(data, start, pos - 6):
        pos -= 6
    return pos


def _opens_escape(data: bytes, start: int, slash: int) -> bool:
    """Whether the backslash at ``slash`` begins an escape (``\\\\`` pairs up backslashes from ``start``)."""
    if slash == start or data[slash - 1] != _BACKSLASH:
        return True
    before = data[start:slash]
    return (len(before) - len(before.rstrip(b"\\"))) % 2 == 0


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

"""Cassette events and what they stand for: WebSocket messages, frames, errors, tunnel grants.

Shared by the recording (which turns what happened into events) and the replay
(which turns events back into what happened), so that both read and write one
shape.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, NamedTuple

import aiohttp

from ..client.backend import TunnelGrant
from ..errors import PlatformError, PlatformUnreachable, TunnelAuthError, TunnelError, TunnelGone, TunnelnbError
from .file import command_of, describe_frame, mask_keys

__all__ = [
    "TEARDOWN_CALLS",
    "WSMessage",
    "args_text",
    "compact",
    "describe_event",
    "error_from_record",
    "error_record",
    "grant_from",
    "grant_json",
    "message_fields",
    "message_from",
    "note_tunnels",
    "same_frame",
    "sent_fields",
]

#: Platform calls that only close what was opened: a replay may pass over them.
TEARDOWN_CALLS = frozenset({"close_tunnel", "delete_tunnel"})


class WSMessage(NamedTuple):
    """A WebSocket message as :class:`~tunnelnb.client.transport.TunnelSocket` reads it (aiohttp's shape)."""

    type: aiohttp.WSMsgType
    data: Any
    extra: Any


def compact(obj: Any) -> str:
    """The compact JSON text of ``obj``, as :func:`tunnelnb.protocol.frames.encode_frame` writes frames."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if text.isascii():
        return text
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)


def error_record(exc: BaseException) -> dict[str, Any]:
    """An error as a cassette event's ``error`` field."""
    if isinstance(exc, PlatformError):
        return {
            "type": "PlatformError",
            "status": exc.status,
            "error_code": exc.error_code,
            "error_msg": exc.error_msg,
            "hint": exc.hint,
        }
    return {"type": type(exc).__name__, "message": str(exc)}


_ERROR_TYPES: dict[str, type[TunnelnbError]] = {
    cls.__name__: cls for cls in (TunnelnbError, PlatformUnreachable, TunnelError, TunnelAuthError, TunnelGone)
}


def error_from_record(record: dict[str, Any]) -> TunnelnbError:
    """The error an ``error`` field describes, to raise again in a replay."""
    if record.get("type") == "PlatformError":
        return PlatformError(
            int(record.get("status", 0)),
            str(record.get("error_code", "")),
            str(record.get("error_msg", "")),
            hint=str(record.get("hint", "")),
        )
    return _ERROR_TYPES.get(str(record.get("type")), TunnelnbError)(str(record.get("message", "")))


def grant_json(grant: TunnelGrant) -> dict[str, Any]:
    """AddTunnel's answer as the platform sent it (the token is masked on writing)."""
    return {
        "tunnel_id": grant.tunnel_id,
        "tunnel_uri": grant.tunnel_uri,
        "expires_in": grant.expires_in,
        "tunnel_access_token": grant.token,
    }


def grant_from(answer: dict[str, Any]) -> TunnelGrant:
    return TunnelGrant(
        tunnel_id=str(answer["tunnel_id"]),
        tunnel_uri=str(answer.get("tunnel_uri", "")),
        expires_in=int(answer.get("expires_in") or 0),
        token=str(answer.get("tunnel_access_token", "")),
    )


def note_tunnels(devices: dict[str, str | None], call: str, dev: str | None, result: Any) -> None:
    """Which device each tunnel id belongs to, learnt from the answers (recording and replay alike)."""
    if call == "add_tunnel" and isinstance(result, dict) and "tunnel_id" in result:
        devices[str(result["tunnel_id"])] = dev
    elif call == "list_tunnels" and isinstance(result, list):
        for info in result:
            if isinstance(info, dict) and "tunnel_id" in info:
                devices[str(info["tunnel_id"])] = info.get("device_id", dev)
    elif call == "show_tunnel" and isinstance(result, dict) and "tunnel_id" in result:
        devices[str(result["tunnel_id"])] = result.get("device_id", dev)


def message_fields(msg: Any, close_code: int | None) -> tuple[str, dict[str, Any]]:
    """A received WebSocket message as a cassette event's kind and fields."""
    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        data = msg.data
        binary = {"binary": True} if msg.type is aiohttp.WSMsgType.BINARY else {}
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                return "in", {"raw_b64": base64.b64encode(msg.data).decode("ascii"), **binary}
        try:
            obj = json.loads(data)
        except ValueError:
            return "in", {"raw": data, **binary}
        if compact(obj) == data:
            return "in", {"frame": obj, **binary}
        return "in", {"raw": data, **binary}
    reason = msg.extra if isinstance(msg.extra, str) else ""
    if msg.type is aiohttp.WSMsgType.ERROR:
        reason = str(msg.data)
    return "closed", {"type": msg.type.name.lower(), "code": close_code, "reason": reason}


def message_from(event: dict[str, Any]) -> WSMessage:
    """A recorded received message, as the WebSocket gave it (for the same decoding code)."""
    if event["kind"] == "closed":
        kind = str(event.get("type", "close")).upper()
        msg_type = aiohttp.WSMsgType.__members__.get(kind, aiohttp.WSMsgType.CLOSE)
        if msg_type is aiohttp.WSMsgType.ERROR:
            return WSMessage(msg_type, ConnectionResetError(event.get("reason", "")), None)
        return WSMessage(msg_type, event.get("code"), event.get("reason", ""))
    msg_type = aiohttp.WSMsgType.BINARY if event.get("binary") else aiohttp.WSMsgType.TEXT
    if "frame" in event:
        data = compact(event["frame"]).encode("utf-8")
    elif "raw_b64" in event:
        data = base64.b64decode(event["raw_b64"])
    else:
        data = str(event.get("raw", "")).encode("utf-8", "surrogatepass")
    return WSMessage(msg_type, data, None)


def sent_fields(text: str) -> dict[str, Any]:
    """A frame the application sent, as an ``out`` event's fields."""
    try:
        frame = json.loads(text)
    except ValueError:
        return {"raw": text}
    fields: dict[str, Any] = {}
    data = frame.get("data") if isinstance(frame, dict) else None
    if isinstance(frame, dict) and frame.get("operation_type") == "command" and isinstance(data, str):
        command = command_of(data)
        if command is not None:
            fields["cmd"] = command  # for people reading the cassette; a replay matches the frame
    fields["frame"] = frame
    return fields


def same_frame(recorded: Any, sent: Any) -> bool:
    """Is ``sent`` the recorded frame (operation, service and data; secrets masked on both)?"""
    if not isinstance(recorded, dict) or not isinstance(sent, dict):
        return bool(recorded == sent)
    keys = ("operation_type", "tunnel_service_type", "data")
    return all(mask_keys(recorded.get(k)) == sent.get(k) for k in keys)


def describe_event(event: dict[str, Any] | None) -> str:
    """What a recorded action was, for a mismatch message."""
    if event is None:
        return "nothing"
    kind = event["kind"]
    if kind == "out":
        return describe_frame(event.get("frame") or {})
    if kind == "rest":
        return f"a call to {event.get('call')}({args_text(event.get('args') or {})})"
    if kind == "open":
        return "opening the tunnel's WebSocket"
    return f"a {kind} event"


def args_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())

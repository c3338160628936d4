"""Record a fleet's traffic to a cassette, and play it back without a network.

    async with fleet.record("incident.cassette.jsonl"):       # or %tunnel record PATH
        res = await fleet.run("df -h /data", "@edge")
    fleet = await tunnelnb.connect(replay="incident.cassette.jsonl")   # anywhere, no platform
    res = await fleet.run("df -h /data", "@edge")                       # the same table

Like vcrpy, but for tunnels: a cassette (:mod:`tunnelnb.cassette.file`) holds every
platform answer the fleet used and every message its tunnels' WebSockets carried,
per device, in order and with their times.

The seam is the platform API object.  A :class:`~tunnelnb.client.session.DeviceSession`
gets everything from the outside world through it: REST answers
(``add_tunnel`` …), its tunnel's WebSocket (``open_tunnel_socket``) and its clock
and random ids (``clock_for``, see :mod:`tunnelnb.client.clock`).  :class:`RecordingAPI`
wraps a live API object and writes all of that down; :class:`ReplayAPI` serves it
back.  Both work under :class:`~tunnelnb.client.transport.TunnelSocket`, at the level of
the WebSocket's messages, so a replay runs the same protocol decoding, shell
framing and output parsing as a live run: a parsing bug shows in a replay too.

Replaying
---------
Each device's events are served in order.  Frames the application sends must
match the recorded ones (``operation_type`` and ``data``; a ``connect`` frame's
password is masked on both sides), which holds because the marker and request
ids the session draws are recorded too.  Received messages are released in the
recorded order across devices, each once the device's earlier recorded actions
are done.  Time is virtual: clock readings return the recorded values, so
durations and ``started_at`` are equal, and a wait (a command's timeout, the
back-off before a reconnect) ends when nothing else can happen any more, in
deadline order; a recorded 30-second timeout replays in no time.

Modes, as vcrpy's record modes:

``none``
    Strict: nothing reaches a network; anything the cassette does not have for a
    device (another command, a device it never saw) raises
    :class:`~tunnelnb.cassette.file.CassetteMismatch`, naming the device and the command.
``new_episodes``
    Replays what the cassette has and runs the rest live, appending it to the
    cassette.  A device whose recording runs out (or goes another way) goes live
    from that point on: if its replayed session was logged in, tunnelnb opens a
    live tunnel and logs in again with the session's own login before sending the
    new command (the shell is a fresh one: ``cd`` and variables from the replayed
    part are not there).  Needs a live platform.
``all``
    Runs live and records the cassette anew.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import heapq
import itertools
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from ..client.api import TunnelGrant
from ..client.clock import Clock
from ..client.transport import TunnelSocket, open_tunnel_socket
from ..errors import (
    CassetteError,
    CassetteMismatch,
    LoginError,
    PlatformError,
    PlatformUnreachable,
    TunnelAuthError,
    TunnelError,
    TunnelnbError,
)
from ..fleet.fleet import Fleet
from ..protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, Frame, Op, chunk_text, decode_frame
from ..protocol.shell import CommandParser, Finished, TerminalText, command_script, setup_script
from .file import (
    DELIVERY_KINDS,
    FORMAT,
    HARD_KINDS,
    PASSWORD_PLACEHOLDER,
    RUNNING_COMMAND,
    VERSION,
    Cassette,
    CassetteWriter,
    Masker,
    command_of,
    describe_frame,
    mask_keys,
)

__all__ = ["MODES", "CassetteSummary", "Recording", "RecordingAPI", "ReplayAPI", "connect_replay"]

log = logging.getLogger("tunnelnb.cassette.replay")

MODES = ("none", "new_episodes", "all")

_TEARDOWN_CALLS = frozenset({"close_tunnel", "delete_tunnel"})
#: Private attributes under which known API objects keep their credentials (PlatformAPI, HuaweiCloudAPI).
_CREDENTIAL_ATTRS = {
    "_token": "<api-token>",
    "_ak": "<access-key>",
    "_sk": "<secret-key>",
    "_security_token": "<security-token>",
}


# ---------------------------------------------------------------------------
# Shared pieces


class _Msg(NamedTuple):
    """A WebSocket message as :class:`~tunnelnb.client.transport.TunnelSocket` reads it (aiohttp's shape)."""

    type: aiohttp.WSMsgType
    data: Any
    extra: Any


_SWITCHED = _Msg(aiohttp.WSMsgType.CLOSED, None, "switched to a live socket")


def _compact(obj: Any) -> str:
    """The compact JSON text of ``obj``, as :func:`tunnelnb.protocol.frames.encode_frame` writes frames."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if text.isascii():
        return text
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)


def _error_record(exc: BaseException) -> dict[str, Any]:
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
    cls.__name__: cls for cls in (TunnelnbError, PlatformUnreachable, TunnelError, TunnelAuthError)
}


def _error_from(record: dict[str, Any]) -> TunnelnbError:
    if record.get("type") == "PlatformError":
        return PlatformError(
            int(record.get("status", 0)),
            str(record.get("error_code", "")),
            str(record.get("error_msg", "")),
            hint=str(record.get("hint", "")),
        )
    return _ERROR_TYPES.get(str(record.get("type")), TunnelnbError)(str(record.get("message", "")))


def _grant_json(grant: TunnelGrant) -> dict[str, Any]:
    return {
        "tunnel_id": grant.tunnel_id,
        "tunnel_uri": grant.tunnel_uri,
        "expires_in": grant.expires_in,
        "tunnel_access_token": grant.token,
    }


def _grant_from(answer: dict[str, Any]) -> TunnelGrant:
    return TunnelGrant(
        tunnel_id=str(answer["tunnel_id"]),
        tunnel_uri=str(answer.get("tunnel_uri", "")),
        expires_in=int(answer.get("expires_in") or 0),
        token=str(answer.get("tunnel_access_token", "")),
    )


def _note_tunnels(devices: dict[str, str | None], call: str, dev: str | None, result: Any) -> None:
    """Which device each tunnel id belongs to, learnt from the answers (recording and replay alike)."""
    if call == "add_tunnel" and isinstance(result, dict) and "tunnel_id" in result:
        devices[str(result["tunnel_id"])] = dev
    elif call == "list_tunnels" and isinstance(result, list):
        for info in result:
            if isinstance(info, dict) and "tunnel_id" in info:
                devices[str(info["tunnel_id"])] = info.get("device_id", dev)
    elif call == "show_tunnel" and isinstance(result, dict) and "tunnel_id" in result:
        devices[str(result["tunnel_id"])] = result.get("device_id", dev)


def _known_secrets(api: Any) -> list[tuple[str, str]]:
    found = []
    for attr, placeholder in _CREDENTIAL_ATTRS.items():
        value = getattr(api, attr, None)
        if isinstance(value, str) and value:
            found.append((value, placeholder))
    return found


def _fleet_secrets(fleet: Fleet) -> list[tuple[str, str]]:
    """The passwords a fleet knows (kept in memory only; a recording masks them wherever they appear)."""
    logins = [fleet._default_login, *fleet._logins.values()]
    return [(login[1], "<password>") for login in logins if login]


# ---------------------------------------------------------------------------
# Recording


@dataclass(frozen=True)
class CassetteSummary:
    """What a recording wrote."""

    path: Path
    events: int
    devices: int
    masked: int

    def __str__(self) -> str:
        return (
            f"wrote {self.path}: {self.events} events, {self.devices} devices, "
            f"{self.masked} secret{'s' if self.masked != 1 else ''} masked"
        )


class _Recorder:
    """Stamps, masks and writes events; each device's times may run on a timeline of its own."""

    def __init__(self, writer: CassetteWriter, masker: Masker, origin: float) -> None:
        self.writer = writer
        self.masker = masker
        self.origin = origin
        self._origins: dict[str | None, float] = {}
        self.tunnel_devices: dict[str, str | None] = {}
        self.active = True

    def set_origin(self, dev: str | None, origin: float) -> None:
        self._origins[dev] = origin

    def elapsed(self, dev: str | None) -> float:
        return time.monotonic() - self._origins.get(dev, self.origin)

    def log(
        self, dev: str | None, kind: str, *, t: float | None = None, complete: bool = True, **fields: Any
    ) -> dict[str, Any] | None:
        if not self.active or self.writer.closed:
            return None
        if t is None:
            t = round(self.elapsed(dev), 6)
        event = {"t": t, "dev": dev, "kind": kind, **self.masker(fields)}
        return self.writer.write(event, complete=complete)

    def summary(self) -> CassetteSummary:
        return CassetteSummary(self.writer.path, self.writer.events, len(self.writer.devices), self.masker.masked)


class _RecordingClock(Clock):
    """The real clock, each reading written down: seconds since the recording began, to the microsecond.

    The session gets the rounded reading too, so the recorded run and its replay
    compute the very same durations.
    """

    def __init__(self, rec: _Recorder, dev: str | None) -> None:
        self._rec = rec
        self._dev = dev

    def monotonic(self) -> float:
        t = round(self._rec.elapsed(self._dev), 6)
        self._rec.log(self._dev, "clock", t=t)
        return t

    def now(self) -> datetime:
        value = datetime.now(UTC)
        self._rec.log(self._dev, "now", value=value.isoformat())
        return value

    def timeout(self, delay: float) -> Any:
        return self.timeout_at(self.monotonic() + delay)

    def timeout_at(self, deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        return asyncio.timeout_at(loop.time() + (deadline - self._rec.elapsed(self._dev)))

    def token_hex(self, nbytes: int) -> str:
        value = os.urandom(nbytes).hex()
        self._rec.log(self._dev, "random", value=value)
        return value


def _message_fields(msg: Any, close_code: int | None) -> tuple[str, dict[str, Any]]:
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
        if _compact(obj) == data:
            return "in", {"frame": obj, **binary}
        return "in", {"raw": data, **binary}
    reason = msg.extra if isinstance(msg.extra, str) else ""
    if msg.type is aiohttp.WSMsgType.ERROR:
        reason = str(msg.data)
    return "closed", {"type": msg.type.name.lower(), "code": close_code, "reason": reason}


def _message_from(event: dict[str, Any]) -> _Msg:
    """A recorded received message, as the WebSocket gave it (for the same decoding code)."""
    if event["kind"] == "closed":
        kind = str(event.get("type", "close")).upper()
        msg_type = aiohttp.WSMsgType.__members__.get(kind, aiohttp.WSMsgType.CLOSE)
        if msg_type is aiohttp.WSMsgType.ERROR:
            return _Msg(msg_type, ConnectionResetError(event.get("reason", "")), None)
        return _Msg(msg_type, event.get("code"), event.get("reason", ""))
    msg_type = aiohttp.WSMsgType.BINARY if event.get("binary") else aiohttp.WSMsgType.TEXT
    if "frame" in event:
        data = _compact(event["frame"]).encode("utf-8")
    elif "raw_b64" in event:
        data = base64.b64decode(event["raw_b64"])
    else:
        data = str(event.get("raw", "")).encode("utf-8", "surrogatepass")
    return _Msg(msg_type, data, None)


def _sent_fields(text: str) -> dict[str, Any]:
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


class _RecordingWS:
    """aiohttp's client WebSocket, with every message in and out written down."""

    def __init__(self, ws: Any, rec: _Recorder, dev: str | None, extra: dict[str, Any]) -> None:
        self._ws = ws
        self._rec = rec
        self._dev = dev
        self.extra = dict(extra)

    @property
    def closed(self) -> bool:
        return bool(self._ws.closed)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def receive(self) -> Any:
        msg = await self._ws.receive()
        kind, fields = _message_fields(msg, self._ws.close_code)
        self._rec.log(self._dev, kind, **fields, **self.extra)
        return msg

    async def send_str(self, text: str) -> None:
        event = self._rec.log(self._dev, "out", complete=False, **_sent_fields(text), **self.extra)
        try:
            await self._ws.send_str(text)
        except (ConnectionResetError, aiohttp.ClientConnectionError) as exc:
            if event is not None:
                event["error"] = {"message": self._rec.masker(str(exc)), "close_code": self._ws.close_code}
            raise
        finally:
            if event is not None:
                self._rec.writer.complete(event)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self._rec.log(self._dev, "close", code=code, **self.extra)
        return await self._ws.close(code=code, message=message)


class RecordingAPI:
    """A platform API object that writes down what passes through it, and otherwise is ``inner``.

    Once its recording stops it passes everything through unrecorded, so the
    sessions made during the recording keep working.
    """

    replaying = False

    def __init__(
        self,
        inner: Any,
        rec: _Recorder,
        *,
        recording: Recording | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._inner = inner
        self._rec = rec
        self.recording = recording
        self._extra = extra or {}
        self._clocks: dict[str | None, _RecordingClock] = {}

    def __repr__(self) -> str:
        return f"<RecordingAPI of {self._inner!r} to {self._rec.writer.path}>"

    def __getattr__(self, name: str) -> Any:
        # base_url, project_id, session, add_device …: the inner API's.
        return getattr(self._inner, name)

    async def close(self) -> None:
        if self.recording is not None:
            self.recording.stop()
        await self._inner.close()

    async def __aenter__(self) -> RecordingAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, dev: str | None, call: str, args: dict[str, Any], run: Callable[[], Awaitable[Any]]) -> Any:
        try:
            result = await run()
        except TunnelnbError as exc:
            self._rec.log(dev, "rest", call=call, args=args, error=_error_record(exc), **self._extra)
            raise
        answer = _grant_json(result) if isinstance(result, TunnelGrant) else result
        _note_tunnels(self._rec.tunnel_devices, call, dev, answer)
        self._rec.log(dev, "rest", call=call, args=args, result=answer, **self._extra)
        return result

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self._call(None, "list_devices", {}, self._inner.list_devices)

    async def iter_devices(self) -> AsyncIterator[dict[str, Any]]:
        for device in await self.list_devices():
            yield device

    async def show_device(self, device_id: str) -> dict[str, Any]:
        return await self._call(
            device_id, "show_device", {"device_id": device_id}, lambda: self._inner.show_device(device_id)
        )

    async def add_tunnel(self, device_id: str) -> TunnelGrant:
        return await self._call(
            device_id, "add_tunnel", {"device_id": device_id}, lambda: self._inner.add_tunnel(device_id)
        )

    async def list_tunnels(self, device_id: str | None = None) -> list[dict[str, Any]]:
        args = {"device_id": device_id} if device_id else {}
        return await self._call(device_id, "list_tunnels", args, lambda: self._inner.list_tunnels(device_id))

    async def show_tunnel(self, tunnel_id: str) -> dict[str, Any]:
        dev = self._rec.tunnel_devices.get(tunnel_id)
        args = {"tunnel_id": tunnel_id}
        return await self._call(dev, "show_tunnel", args, lambda: self._inner.show_tunnel(tunnel_id))

    async def close_tunnel(self, tunnel_id: str) -> None:
        dev = self._rec.tunnel_devices.get(tunnel_id)
        await self._call(dev, "close_tunnel", {"tunnel_id": tunnel_id}, lambda: self._inner.close_tunnel(tunnel_id))

    async def delete_tunnel(self, tunnel_id: str) -> None:
        dev = self._rec.tunnel_devices.get(tunnel_id)
        await self._call(dev, "delete_tunnel", {"tunnel_id": tunnel_id}, lambda: self._inner.delete_tunnel(tunnel_id))

    async def open_tunnel_socket(self, grant: TunnelGrant, **options: Any) -> TunnelSocket:
        dev = self._rec.tunnel_devices.get(grant.tunnel_id)
        try:
            sock = await open_tunnel_socket(self._inner, grant, **options)
        except TunnelError as exc:
            self._rec.log(dev, "open", tunnel_id=grant.tunnel_id, error=_error_record(exc), **self._extra)
            raise
        self._rec.log(dev, "open", tunnel_id=grant.tunnel_id, **self._extra)
        # Under the TunnelSocket, so the cassette has the messages as they were on the wire.
        sock._ws = _RecordingWS(sock._ws, self._rec, dev, self._extra)
        return sock

    def clock_for(self, device_id: str | None) -> Clock:
        clock = self._clocks.get(device_id)
        if clock is None:
            clock = self._clocks[device_id] = _RecordingClock(self._rec, device_id)
        return clock


class Recording:
    """A fleet's recording to a cassette (:meth:`Fleet.record <tunnelnb.fleet.fleet.Fleet.record>` makes one).

    ``with`` / ``async with`` it, or call :meth:`start` (:meth:`astart`) and
    :meth:`stop`.  Starting writes the header and the fleet's inventory and closes
    the fleet's open sessions, so that each device's session is recorded from its
    beginning (``astart`` and ``async with`` wait for them to close; ``start``
    closes them in the background).  :meth:`stop` returns a
    :class:`CassetteSummary`.
    """

    def __init__(self, fleet: Fleet, path: str | os.PathLike[str]) -> None:
        self.fleet = fleet
        self.path = Path(path)
        self.summary: CassetteSummary | None = None
        self.api: RecordingAPI | None = None
        self._closing: list[asyncio.Future[Any]] = []

    def __repr__(self) -> str:
        state = "stopped" if self.summary else "recording" if self.api else "not started"
        return f"<Recording {self.path} {state}>"

    @property
    def active(self) -> bool:
        return self.api is not None and self.summary is None

    def start(self) -> Recording:
        if self.api is not None:
            raise CassetteError(f"this recording to {self.path} has already started")
        fleet = self.fleet
        if isinstance(fleet.api, (RecordingAPI, ReplayAPI)):
            raise CassetteError("this fleet already records or replays a cassette: stop that first")
        if fleet._busy:
            raise CassetteError("a run is in progress: start recording between runs")
        inner = fleet.api
        default = fleet._default_login
        header = {
            "format": FORMAT,
            "version": VERSION,
            "tunnelnb": _version(),
            "recorded_at": datetime.now(UTC).isoformat(),
            "platform": getattr(inner, "base_url", None),
            "project_id": getattr(inner, "project_id", None),
            "login": {"user": default[0]} if default else None,
            "logins": {device_id: user for device_id, (user, _) in sorted(fleet._logins.items())},
            "fleet": {
                "concurrency": fleet.concurrency,
                "max_sessions": fleet.max_sessions,
                "join_timeout": fleet.join_timeout,
            },
            "note": "replay: tunnelnb.connect(replay=PATH) or %tunnel connect --replay PATH; secrets are placeholders",
        }
        masker = Masker([*_known_secrets(inner), *_fleet_secrets(fleet)])
        rec = _Recorder(CassetteWriter(self.path, masker(header)), masker, time.monotonic())
        # What the fleet knew when the recording began: a replay starts from the same inventory.
        rec.log(None, "rest", call="list_devices", args={}, result=copy.deepcopy(fleet._inventory), snapshot=True)
        self.api = RecordingAPI(inner, rec, recording=self)
        old = list(fleet._sessions.values())
        fleet._sessions.clear()
        fleet.api = self.api
        if old:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop here: their tunnels are replaced when the devices are next used
            else:
                self._closing = [asyncio.ensure_future(session.close()) for session in old]
        fleet._changed(None)
        return self

    async def astart(self) -> Recording:
        """:meth:`start`, then wait until the sessions open before it are closed."""
        self.start()
        await asyncio.gather(*self._closing, return_exceptions=True)
        return self

    def stop(self) -> CassetteSummary:
        """Stop recording and write what is left; the fleet goes on unrecorded."""
        if self.summary is not None:
            return self.summary
        if self.api is None:
            raise CassetteError("this recording has not started")
        if self.fleet.api is self.api:
            self.fleet.api = self.api._inner
        rec = self.api._rec
        rec.active = False
        rec.writer.close()
        self.summary = rec.summary()
        return self.summary

    def __enter__(self) -> Recording:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Recording:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


def _version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------------
# Replaying


def _is_teardown(event: dict[str, Any]) -> bool:
    return event["kind"] == "close" or (event["kind"] == "rest" and event.get("call") in _TEARDOWN_CALLS)


class _Stream:
    """One device's recorded events (``dev`` None: the fleet's own), consumed as the replay goes."""

    def __init__(self, dev: str | None, events: list[dict[str, Any]]) -> None:
        self.dev = dev
        self.events = events
        self.done = [False] * len(events)
        self.cursor = 0
        self.vnow = 0.0  # the time of the latest event served
        self.ws: _ReplayWS | None = None
        self.live = False
        self.left: str | None = None  # what first left the cassette (a strict replay's mismatch)

    def __repr__(self) -> str:
        return f"<_Stream {self.dev} {self.cursor}/{len(self.events)}{' live' if self.live else ''}>"

    def consume(self, i: int) -> dict[str, Any]:
        event = self.events[i]
        self.done[i] = True
        self.vnow = max(self.vnow, float(event["t"]))
        while self.cursor < len(self.events) and self.done[self.cursor]:
            self.cursor += 1
        return event

    def exhausted(self) -> bool:
        """Nothing left but readings and teardowns?"""
        return not any(
            not self.done[i]
            and (self.events[i]["kind"] in DELIVERY_KINDS or self.events[i]["kind"] in HARD_KINDS)
            and not _is_teardown(self.events[i])
            for i in range(self.cursor, len(self.events))
        )

    def take_soft(self, kind: str) -> dict[str, Any] | None:
        """The next unserved reading of ``kind``, looking no further than past the next recorded action."""
        hard = 0
        for i in range(self.cursor, len(self.events)):
            if self.done[i]:
                continue
            event_kind = self.events[i]["kind"]
            if event_kind == kind:
                return self.consume(i)
            if event_kind in HARD_KINDS:
                hard += 1
                if hard > 1:
                    return None
        return None

    def find_hard(self, matches: Callable[[dict[str, Any]], bool]) -> tuple[int | None, int | None]:
        """``(index of the matching recorded action, None)``, or ``(None, index of the one in the way)``.

        Teardown actions (closing a WebSocket or a tunnel) may be passed over:
        they change nothing a later action sees.  ``(None, None)``: nothing left.
        """
        for i in range(self.cursor, len(self.events)):
            if self.done[i] or self.events[i]["kind"] not in HARD_KINDS:
                continue
            if matches(self.events[i]):
                return i, None
            if not _is_teardown(self.events[i]):
                return None, i
        return None, None

    def take_hard(self, i: int) -> dict[str, Any]:
        for j in range(self.cursor, i):  # teardowns passed over
            if not self.done[j] and self.events[j]["kind"] in HARD_KINDS:
                self.consume(j)
        return self.consume(i)

    def next_delivery(self) -> int | None:
        """The next message to release: only once every recorded action before it is done."""
        for i in range(self.cursor, len(self.events)):
            if self.done[i]:
                continue
            kind = self.events[i]["kind"]
            if kind in DELIVERY_KINDS:
                return i
            if kind in HARD_KINDS:
                return None
        return None


class _Timer:
    """A wait on virtual time: fired by the replay, or handed to the real clock when its device goes live."""

    __slots__ = ("cancelled", "deadline", "dev", "fire", "to_real")

    def __init__(
        self, dev: str | None, deadline: float, fire: Callable[[], None], to_real: Callable[[float], None]
    ) -> None:
        self.dev = dev
        self.deadline = deadline
        self.fire = fire
        self.to_real = to_real
        self.cancelled = False


class _VirtualTimeout:
    """``async with clock.timeout_at(deadline)`` on a replay's virtual time."""

    def __init__(self, clock: _ReplayClock, deadline: float) -> None:
        self._clock = clock
        self._deadline = deadline
        self._cm: Any = None
        self._timer: _Timer | None = None

    async def __aenter__(self) -> Any:
        api, dev = self._clock._api, self._clock._dev
        if api._stream(dev).live:
            self._cm = api._live_clock(dev).timeout_at(self._deadline)
            return await self._cm.__aenter__()
        self._cm = asyncio.timeout(None)
        entered = await self._cm.__aenter__()
        cm = self._cm
        self._timer = api._add_timer(
            dev,
            self._deadline,
            fire=lambda: cm.reschedule(asyncio.get_running_loop().time()),
            to_real=cm.reschedule,
        )
        return entered

    async def __aexit__(self, *exc: Any) -> bool | None:
        if self._timer is not None:
            self._timer.cancelled = True
        return await self._cm.__aexit__(*exc)


class _ReplayClock(Clock):
    """A device's recorded clock readings and random ids, and waits on virtual time."""

    def __init__(self, api: ReplayAPI, dev: str | None) -> None:
        self._api = api
        self._dev = dev
        self._fills = itertools.count(1)

    def _soft(self, kind: str) -> dict[str, Any] | None:
        api = self._api
        stream = api._stream(self._dev)
        api._poke()
        event = stream.take_soft(kind)
        if event is None and not stream.live and api._may_go_live(stream):
            api._go_live(stream, len(stream.events))
        return event

    def monotonic(self) -> float:
        event = self._soft("clock")
        stream = self._api._stream(self._dev)
        if stream.live:
            return self._api._live_clock(self._dev).monotonic()
        return float(event["t"]) if event is not None else stream.vnow

    def now(self) -> datetime:
        event = self._soft("now")
        stream = self._api._stream(self._dev)
        if stream.live:
            return self._api._live_clock(self._dev).now()
        if event is not None:
            return datetime.fromisoformat(str(event["value"]))
        return self._api.recorded_at + timedelta(seconds=stream.vnow)

    def token_hex(self, nbytes: int) -> str:
        event = self._soft("random")
        if self._api._stream(self._dev).live:
            return self._api._live_clock(self._dev).token_hex(nbytes)
        if event is not None and len(str(event["value"])) == 2 * nbytes:
            return str(event["value"])
        seed = f"{self._api.path}:{self._dev}:{next(self._fills)}".encode()
        return hashlib.sha256(seed).hexdigest()[: 2 * nbytes]

    def timeout(self, delay: float) -> Any:
        return _VirtualTimeout(self, self.monotonic() + delay)

    def timeout_at(self, deadline: float) -> Any:
        return _VirtualTimeout(self, deadline)

    async def sleep(self, delay: float) -> None:
        api = self._api
        stream = api._stream(self._dev)
        if stream.live:
            await api._live_clock(self._dev).sleep(delay)
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        timer = api._add_timer(self._dev, stream.vnow + delay, fire=wake, to_real=lambda when: loop.call_at(when, wake))
        try:
            await done
        finally:
            timer.cancelled = True


class _ReplayWS:
    """A tunnel's WebSocket, served from a cassette (or, once its device goes live, a live one)."""

    def __init__(self, api: ReplayAPI, stream: _Stream, tunnel_id: str, max_message_bytes: int) -> None:
        self._api = api
        self._stream = stream
        self.tunnel_id = tunnel_id
        self.max_message_bytes = max_message_bytes
        self._waiter: asyncio.Future[_Msg] | None = None
        self._closed = False
        self._close_code: int | None = None
        self._live: Any = None
        self.last_connect: str | None = None  # the application's own login frame, kept in memory only

    @property
    def closed(self) -> bool:
        return bool(self._live.closed) if self._live is not None else self._closed

    @property
    def close_code(self) -> int | None:
        return self._live.close_code if self._live is not None else self._close_code

    @property
    def waiting(self) -> bool:
        return self._live is None and self._waiter is not None and not self._waiter.done()

    async def receive(self) -> Any:
        while True:
            if self._live is not None:
                return await self._live.receive()
            if self._closed:
                return _Msg(aiohttp.WSMsgType.CLOSED, None, None)
            self._api._awake()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                msg = await self._waiter
            finally:
                self._waiter = None
            if msg is not _SWITCHED:
                return msg

    def _deliver(self, msg: _Msg, close_code: int | None = None) -> None:
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self._closed = True
            self._close_code = close_code
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(msg)

    def _attach(self, live_ws: Any) -> None:
        self._live = live_ws
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(_SWITCHED)

    async def send_str(self, text: str) -> None:
        api, stream = self._api, self._stream
        api._awake()
        try:
            sent = mask_keys(json.loads(text))
        except ValueError:
            sent = {"raw": text}
        if self._live is None and stream.live and not self._closed:
            await api._resume(self, text, sent)
        if self._live is not None:
            await self._live.send_str(text)
            return
        if self._closed:
            raise ConnectionResetError("Cannot write to closing transport")

        def matches(event: dict[str, Any]) -> bool:
            return event["kind"] == "out" and _same_frame(event.get("frame"), sent)

        i, blocking = stream.find_hard(matches)
        if i is None:
            api._miss(stream, blocking, f"tunnelnb sent {describe_frame(sent)}")  # raises, unless it goes live
            await api._resume(self, text, sent)
            await self._live.send_str(text)
            return
        event = stream.take_hard(i)
        if isinstance(sent, dict) and sent.get("operation_type") == "connect":
            self.last_connect = text
        error = event.get("error")
        if error:
            self._close_code = error.get("close_code")
            raise ConnectionResetError(str(error.get("message", "")))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self._live is not None:
            result = await self._live.close(code=code, message=message)
            await self._api._close_live_tunnel(self)
            return bool(result)
        if self._closed:
            return False
        self._closed = True
        self._close_code = code
        stream = self._stream
        if not stream.live:
            i, _ = stream.find_hard(lambda e: e["kind"] == "close")
            if i is not None:
                stream.take_hard(i)
        self._deliver(_Msg(aiohttp.WSMsgType.CLOSED, None, None), code)
        return True


def _same_frame(recorded: Any, sent: Any) -> bool:
    if not isinstance(recorded, dict) or not isinstance(sent, dict):
        return recorded == sent
    keys = ("operation_type", "tunnel_service_type", "data")
    return all(mask_keys(recorded.get(k)) == sent.get(k) for k in keys)


def _describe(event: dict[str, Any] | None) -> str:
    if event is None:
        return "nothing"
    kind = event["kind"]
    if kind == "out":
        return describe_frame(event.get("frame") or {})
    if kind == "rest":
        return f"a call to {event.get('call')}({_args_text(event.get('args') or {})})"
    if kind == "open":
        return "opening the tunnel's WebSocket"
    return f"a {kind} event"


def _args_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


class ReplayAPI:
    """A platform API object that answers from a cassette and opens no connection.

    ``mode="new_episodes"`` with ``live`` (a live API object) runs what the
    cassette does not have through ``live`` and appends it to the cassette.
    """

    replaying = True

    def __init__(
        self,
        cassette: Cassette,
        *,
        mode: str = "none",
        live: Any = None,
        secrets: list[tuple[str, str]] | None = None,
    ) -> None:
        if mode not in ("none", "new_episodes"):
            raise ValueError(f"a ReplayAPI plays back with mode 'none' or 'new_episodes', not {mode!r}")
        if mode == "new_episodes" and live is None:
            raise ValueError("mode='new_episodes' needs a live API object")
        self.cassette = cassette
        self.path = cassette.path
        self.mode = mode
        header = cassette.header
        self.base_url = f"cassette:{cassette.path}"
        self.project_id = str(header.get("project_id") or "demo")
        self.platform = header.get("platform")
        try:
            self.recorded_at = datetime.fromisoformat(str(header.get("recorded_at")))
        except ValueError:
            self.recorded_at = datetime(1970, 1, 1, tzinfo=UTC)
        self._streams = {dev: _Stream(dev, list(events)) for dev, events in cassette.streams.items()}
        self._tunnel_devices: dict[str, str | None] = {}
        self._clocks: dict[str | None, _ReplayClock] = {}
        self._timers: list[tuple[float, int, _Timer]] = []
        self._timer_seq = itertools.count()
        self._activity = 0
        self._wake: asyncio.Event | None = None
        self._driver: asyncio.Task[None] | None = None
        self._closed = False
        # new_episodes
        self._live = live
        self._secrets = list(secrets or []) + (_known_secrets(live) if live is not None else [])
        self._rec: _Recorder | None = None
        self._live_api: RecordingAPI | None = None
        self._resume_api: RecordingAPI | None = None
        self._live_clocks: dict[str | None, _RecordingClock] = {}
        self._live_tunnels: set[str] = set()
        self._aliases: dict[str, TunnelGrant] = {}
        self._resumes = itertools.count(1)

    def __repr__(self) -> str:
        return f"ReplayAPI({str(self.path)!r}, mode={self.mode!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        raise CassetteError("a replay has no network connection")

    async def close(self) -> None:
        self._closed = True
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._driver
            self._driver = None
        if self._rec is not None:
            self._rec.writer.close()
        if self._live is not None:
            await self._live.close()

    async def __aenter__(self) -> ReplayAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _stream(self, dev: str | None) -> _Stream:
        stream = self._streams.get(dev)
        if stream is None:
            stream = self._streams[dev] = _Stream(dev, [])
        return stream

    # -- the platform's answers ---------------------------------------------

    async def _rest(
        self, dev: str | None, call: str, args: dict[str, Any], live: Callable[[RecordingAPI], Awaitable[Any]]
    ) -> Any:
        self._awake()
        stream = self._stream(dev)
        if not stream.live:

            def matches(event: dict[str, Any]) -> bool:
                return event["kind"] == "rest" and event.get("call") == call and (event.get("args") or {}) == args

            i, blocking = stream.find_hard(matches)
            if i is not None:
                event = stream.take_hard(i)
                if "error" in event:
                    raise _error_from(event["error"])
                result = copy.deepcopy(event.get("result"))
                _note_tunnels(self._tunnel_devices, call, dev, result)
                return _grant_from(result) if call == "add_tunnel" else result
            if call in _TEARDOWN_CALLS:
                return None  # closing what a replay opened: nothing to do
            self._miss(stream, blocking, f"tunnelnb asked the platform for {call}({_args_text(args)})")
        result = await live(self._live_recording_api())
        if call == "add_tunnel":
            self._live_tunnels.add(result.tunnel_id)
            self._tunnel_devices[result.tunnel_id] = dev
        else:
            _note_tunnels(self._tunnel_devices, call, dev, result)
        return result

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self._rest(None, "list_devices", {}, lambda api: api.list_devices())

    async def iter_devices(self) -> AsyncIterator[dict[str, Any]]:
        for device in await self.list_devices():
            yield device

    async def show_device(self, device_id: str) -> dict[str, Any]:
        return await self._rest(
            device_id, "show_device", {"device_id": device_id}, lambda api: api.show_device(device_id)
        )

    async def add_tunnel(self, device_id: str) -> TunnelGrant:
        args = {"device_id": device_id}
        return await self._rest(device_id, "add_tunnel", args, lambda api: api.add_tunnel(device_id))

    async def list_tunnels(self, device_id: str | None = None) -> list[dict[str, Any]]:
        args = {"device_id": device_id} if device_id else {}
        return await self._rest(device_id, "list_tunnels", args, lambda api: api.list_tunnels(device_id))

    async def show_tunnel(self, tunnel_id: str) -> dict[str, Any]:
        tunnel_id = self._live_id(tunnel_id)
        dev = self._tunnel_devices.get(tunnel_id)
        return await self._rest(dev, "show_tunnel", {"tunnel_id": tunnel_id}, lambda api: api.show_tunnel(tunnel_id))

    async def close_tunnel(self, tunnel_id: str) -> None:
        await self._teardown("close_tunnel", tunnel_id)

    async def delete_tunnel(self, tunnel_id: str) -> None:
        await self._teardown("delete_tunnel", tunnel_id)

    async def _teardown(self, call: str, tunnel_id: str) -> None:
        tunnel_id = self._live_id(tunnel_id)
        dev = self._tunnel_devices.get(tunnel_id)
        if tunnel_id in self._live_tunnels:
            await getattr(self._live_recording_api(), call)(tunnel_id)
            return
        stream = self._stream(dev)
        args = {"tunnel_id": tunnel_id}
        i, _ = stream.find_hard(lambda e: e["kind"] == "rest" and e.get("call") == call and e.get("args") == args)
        if i is not None:
            event = stream.take_hard(i)
            if "error" in event:
                raise _error_from(event["error"])

    def _live_id(self, tunnel_id: str) -> str:
        alias = self._aliases.get(tunnel_id)
        return alias.tunnel_id if alias is not None else tunnel_id

    async def add_device(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise CassetteError("a replay cannot add devices: it only plays back what was recorded")

    # -- tunnels' WebSockets and clocks ---------------------------------------

    async def open_tunnel_socket(self, grant: TunnelGrant, **options: Any) -> TunnelSocket:
        self._awake()
        max_bytes = int(options.get("max_message_bytes") or DEFAULT_MAX_MESSAGE_BYTES)
        live_grant = self._aliases.get(grant.tunnel_id)
        if live_grant is not None or grant.tunnel_id in self._live_tunnels:
            return await self._live_recording_api().open_tunnel_socket(live_grant or grant, **options)
        dev = self._tunnel_devices.get(grant.tunnel_id)
        stream = self._stream(dev)
        if not stream.live:
            i, blocking = stream.find_hard(lambda e: e["kind"] == "open")
            if i is not None:
                event = stream.take_hard(i)
                if "error" in event:
                    raise _error_from(event["error"])
                ws = _ReplayWS(self, stream, grant.tunnel_id, max_bytes)
                stream.ws = ws
                return TunnelSocket(ws, max_message_bytes=max_bytes)  # type: ignore[arg-type]
            self._miss(stream, blocking, "tunnelnb opened the tunnel's WebSocket")
        # The device went live, but this tunnel is one the cassette made up: the session must make a new one.
        raise TunnelAuthError(f"tunnel {grant.tunnel_id} is a recorded one, not on the live platform: make a new one")

    def clock_for(self, device_id: str | None) -> Clock:
        clock = self._clocks.get(device_id)
        if clock is None:
            clock = self._clocks[device_id] = _ReplayClock(self, device_id)
        return clock

    # -- what the cassette does not have --------------------------------------

    def _may_go_live(self, stream: _Stream) -> bool:
        return self.mode == "new_episodes" and stream.exhausted()

    def _miss(self, stream: _Stream, blocking: int | None, what: str) -> None:
        """The application did something the cassette does not have next: go live, or raise."""
        if self.mode == "new_episodes":
            self._go_live(stream, len(stream.events) if blocking is None else blocking)
            return
        command = RUNNING_COMMAND.get() if stream.dev is not None else None
        subject = "the login" if command == "<login>" else f"the command {command!r}" if command else what
        who = stream.dev or "the fleet"
        if stream.left is not None:
            raise CassetteMismatch(
                stream.dev,
                f"{who}: {subject} cannot be replayed: this replay of {self.path.name} left the cassette earlier, at "
                f"{stream.left}, and the session has gone its own way since; connect again to replay from the start",
            )
        stream.left = subject
        detail = f" ({what})" if command else ""
        advice = "replay with mode='new_episodes' to run what is missing live, or record it again with mode='all'"
        if blocking is None:
            whose = "this device" if stream.dev else "the fleet"
            raise CassetteMismatch(
                stream.dev,
                f"{who}: {subject} is not in the cassette {self.path.name}, which has nothing more for {whose}"
                f"{detail}: {advice}",
            )
        expected = _describe(stream.events[blocking])
        if what.endswith(expected):  # the same command, typed otherwise
            why = "typed with other shell marker ids than recorded: was the cassette made by another tunnelnb?"
        else:
            why = f"the recording has {expected} next (the notebook changed since it was recorded): {advice}"
        raise CassetteMismatch(stream.dev, f"{who}: {subject} is not in the cassette {self.path.name}{detail}; {why}")

    def _recorder(self) -> _Recorder:
        if self._rec is None:
            masker = Masker(self._secrets)
            self._rec = _Recorder(CassetteWriter(self.path, None, append=True), masker, time.monotonic())
        return self._rec

    def _live_recording_api(self) -> RecordingAPI:
        if self._live_api is None:
            self._live_api = RecordingAPI(self._live, self._recorder())
        return self._live_api

    def _live_clock(self, dev: str | None) -> _RecordingClock:
        clock = self._live_clocks.get(dev)
        if clock is None:
            clock = self._live_clocks[dev] = _RecordingClock(self._recorder(), dev)
        return clock

    def _go_live(self, stream: _Stream, at: int) -> None:
        """From event ``at`` on, ``stream``'s device runs live; its events so far stay, the rest is replaced."""
        rec = self._recorder()
        rec.log(stream.dev, "branch", t=round(stream.vnow, 6), at=at)
        rec.set_origin(stream.dev, time.monotonic() - stream.vnow)  # its live times go on from its replayed ones
        stream.live = True
        log.info("replay: %s goes live after %d recorded events", stream.dev or "the fleet", at)
        loop = asyncio.get_running_loop()
        for _, _, timer in self._timers:
            if timer.dev == stream.dev and not timer.cancelled:
                timer.cancelled = True
                timer.to_real(loop.time() + (timer.deadline - stream.vnow))

    async def _resume(self, ws: _ReplayWS, text: str, sent: Any) -> None:
        """Put a live tunnel under a replayed session, before it sends ``text``.

        The tunnel is made, and the device joins it, out of the session's sight
        (those events are marked ``resume``: a later replay skips them).  When
        ``text`` is the session's own login, the session carries on from there;
        when the session thinks it is logged in, its last login is sent again
        and the fresh shell quietened first.  If that fails, the frame fails as a
        lost connection would (recorded, so a later replay fails it alike) and
        the session reconnects: to a new live tunnel.
        """
        stream = ws._stream
        dev = stream.dev
        if self._resume_api is None:
            self._resume_api = RecordingAPI(self._live, self._recorder(), extra={"resume": True})
        api = self._resume_api
        logs_in = isinstance(sent, dict) and sent.get("operation_type") == "connect"
        grant: TunnelGrant | None = None
        sock: TunnelSocket | None = None
        try:
            grant = await _new_tunnel(api, dev)
            self._live_tunnels.add(grant.tunnel_id)
            self._tunnel_devices[grant.tunnel_id] = dev
            sock = await api.open_tunnel_socket(grant, max_message_bytes=ws.max_message_bytes)
            await _join_live(sock, None if logs_in else ws.last_connect, f"resume{next(self._resumes)}")
        except Exception as exc:
            if sock is not None:
                await sock.close()
            if grant is not None:
                with contextlib.suppress(TunnelnbError):
                    await api.close_tunnel(grant.tunnel_id)
                    await api.delete_tunnel(grant.tunnel_id)
            message = f"{dev}: could not go on live: {exc}"
            self._recorder().log(dev, "out", **_sent_fields(text), error={"message": message, "close_code": 1006})
            ws._deliver(_Msg(aiohttp.WSMsgType.CLOSE, 1006, message), 1006)
            raise ConnectionResetError(message) from None
        assert sock is not None
        sock._ws.extra = {}  # from here on, what the application itself does
        self._aliases[ws.tunnel_id] = grant
        ws._attach(sock._ws)

    async def _close_live_tunnel(self, ws: _ReplayWS) -> None:
        grant = self._aliases.get(ws.tunnel_id)
        if grant is not None and self._resume_api is not None:
            with contextlib.suppress(TunnelnbError):
                await self._resume_api.close_tunnel(grant.tunnel_id)
                await self._resume_api.delete_tunnel(grant.tunnel_id)
            self._live_tunnels.discard(grant.tunnel_id)

    # -- virtual time ----------------------------------------------------------

    def _poke(self) -> None:
        self._activity += 1
        if self._wake is not None:
            self._wake.set()

    def _awake(self) -> None:
        """Note activity, and make sure the driver runs (it releases messages and fires timers)."""
        self._poke()
        if self._closed:
            return
        if self._driver is None or self._driver.done():
            self._wake = asyncio.Event()
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="tunnelnb-replay")

    def _add_timer(
        self, dev: str | None, deadline: float, *, fire: Callable[[], None], to_real: Callable[[float], Any]
    ) -> _Timer:
        timer = _Timer(dev, deadline, fire, to_real)
        heapq.heappush(self._timers, (deadline, next(self._timer_seq), timer))
        self._awake()
        return timer

    async def _drive(self) -> None:
        """Release recorded messages in their recorded order, and fire timers, whenever all else waits."""
        assert self._wake is not None
        while not self._closed:
            await self._settle()
            try:
                progressed = self._step()
            except Exception:  # never leave a replay hanging on a bug here
                log.exception("replay driver failed")
                progressed = False
            if not progressed:
                self._wake.clear()
                await self._wake.wait()

    async def _settle(self) -> None:
        """Return once the event loop has nothing else to run (everything waits on the replay)."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)  # asyncio's run queue (uvloop has none)
        calm = idle = 0
        while calm < 200:
            mark = self._activity
            await asyncio.sleep(0)
            if self._activity != mark:
                calm = idle = 0
                continue
            calm += 1
            if ready is not None and not ready:
                idle += 1
                if idle >= 2:
                    return
            elif ready is None and calm >= 20:
                return

    def _step(self) -> bool:
        best: tuple[float, _Stream, int] | None = None
        for stream in self._streams.values():
            if stream.live or stream.ws is None or not stream.ws.waiting:
                continue
            i = stream.next_delivery()
            if i is not None:
                t = float(stream.events[i]["t"])
                if best is None or t < best[0]:
                    best = (t, stream, i)
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        timer = self._timers[0][2] if self._timers else None
        if best is not None and (timer is None or best[0] <= timer.deadline):
            _, stream, i = best
            event = stream.consume(i)
            assert stream.ws is not None
            stream.ws._deliver(_message_from(event), event.get("code"))
            return True
        if timer is not None:
            heapq.heappop(self._timers)
            stream = self._stream(timer.dev)
            stream.vnow = max(stream.vnow, timer.deadline)
            timer.fire()
            return True
        return False


async def _new_tunnel(api: Any, dev: str | None) -> TunnelGrant:
    """A new tunnel for ``dev``, replacing one an earlier session left open (one tunnel per device)."""
    assert dev is not None
    try:
        return await api.add_tunnel(dev)
    except PlatformError as exc:
        if exc.status != 409:
            raise
    for info in await api.list_tunnels(dev):
        with contextlib.suppress(PlatformError):
            if info.get("status") == "OPEN":
                await api.close_tunnel(info["tunnel_id"])
            await api.delete_tunnel(info["tunnel_id"])
    return await api.add_tunnel(dev)


async def _join_live(sock: TunnelSocket, connect_text: str | None, marker: str, timeout: float = 30.0) -> None:
    """Wait until the device joins a live tunnel; then log in with ``connect_text`` and quieten the shell."""

    async def until(*ops: Op) -> Frame:
        while True:
            frame = await sock.receive()
            if frame.op in ops:
                return frame
            if frame.op is Op.DISCONNECT:
                data = frame.data or {}
                raise LoginError(str(data.get("status_msg") or "the device left the tunnel"), data.get("status_code"))

    async with asyncio.timeout(timeout):
        await until(Op.CONNECT_TUNNEL)
        if connect_text is None:
            return
        await sock.send(decode_frame(connect_text, max_bytes=None))
        await until(Op.CONNECT_RESPONSE)
        script = setup_script() + command_script(marker, "true")
        term, parser = TerminalText(), CommandParser(marker)
        wait = 0.5
        while True:
            for frame in chunk_text(script, f"{marker}-sync", op=Op.COMMAND, max_bytes=sock.max_message_bytes):
                await sock.send(frame)
            try:
                async with asyncio.timeout(wait):
                    while True:
                        frame = await until(Op.COMMAND_RESPONSE)
                        if any(isinstance(e, Finished) for e in parser.feed(term.feed(frame.data))):
                            return
            except TimeoutError:
                wait = min(wait * 2, 4.0)


# ---------------------------------------------------------------------------
# Connecting


async def connect_replay(
    path: str | os.PathLike[str],
    *,
    mode: str = "none",
    live: Callable[[], Awaitable[Fleet]] | None = None,
    **fleet_options: Any,
) -> Fleet:
    """A :class:`~tunnelnb.fleet.fleet.Fleet` playing back the cassette at ``path`` (see the module's doc).

    ``live`` makes the live fleet that ``new_episodes`` falls back on and ``all``
    records; ``fleet_options`` go to the fleet of a ``none`` replay (the recorded
    fleet's settings are the default).
    """
    if mode not in MODES:
        raise TunnelnbError(f"unknown cassette mode {mode!r}: use one of {', '.join(MODES)}")
    if mode != "none" and live is None:
        raise TunnelnbError(
            f"mode={mode!r} needs a live platform: a URL (or $TUNNELNB_URL), or embedded=True"
        )
    if mode == "all":
        assert live is not None
        fleet = await live()
        try:
            await Recording(fleet, path).astart()
        except BaseException:
            await fleet.close()
            raise
        return fleet
    cassette = Cassette.load(path)
    header = cassette.header
    login = header.get("login") or None
    logins: dict[str, str] = header.get("logins") or {}
    if mode == "none":
        settings = {k: v for k, v in (header.get("fleet") or {}).items() if k in ("concurrency", "max_sessions")}
        if "join_timeout" in (header.get("fleet") or {}):
            settings["join_timeout"] = float(header["fleet"]["join_timeout"])
        fleet = Fleet(
            ReplayAPI(cassette),
            login=(str(login["user"]), PASSWORD_PLACEHOLDER) if login else None,
            **{**settings, **fleet_options},
        )
    else:
        assert live is not None
        fleet = await live()
        fleet.api = ReplayAPI(cassette, mode=mode, live=fleet.api, secrets=_fleet_secrets(fleet))
    try:
        await fleet.refresh()
        for device_id, user in logins.items():
            if device_id in fleet.select("*") and device_id not in fleet._logins:
                fleet.set_login([device_id], user, PASSWORD_PLACEHOLDER)
    except BaseException:
        await fleet.close()
        raise
    return fleet

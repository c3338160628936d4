"""Recording: a backend that writes down what passes through it, and a fleet's recording to a cassette.

:class:`RecordingAPI` wraps a live :class:`~tunnelnb.client.backend.PlatformBackend`
and logs every platform answer, every WebSocket message (under the
:class:`~tunnelnb.client.transport.TunnelSocket`, so the cassette has them as
they were on the wire) and every clock reading, per device.  :class:`Recording`
puts one in front of a fleet with :meth:`Fleet.use_backend
<tunnelnb.fleet.fleet.Fleet.use_backend>` and takes it away again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from ..client.backend import PlatformBackend, TunnelGrant
from ..client.clock import Clock
from ..client.transport import TunnelSocket, WebSocketLike
from ..errors import CassetteError, TunnelError, TunnelnbError
from ..fleet.fleet import Fleet
from ..version import VERSION as TUNNELNB_VERSION
from .events import error_record, grant_json, message_fields, note_tunnels, sent_fields
from .file import FORMAT, VERSION, CassetteWriter, Masker

__all__ = ["CassetteSummary", "Recorder", "Recording", "RecordingAPI", "RecordingClock", "record", "recording_of"]


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


class Recorder:
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

    def stop(self) -> CassetteSummary:
        self.active = False
        self.writer.close()
        return CassetteSummary(self.writer.path, self.writer.events, len(self.writer.devices), self.masker.masked)


class RecordingClock(Clock):
    """The real clock, each reading written down: seconds since the recording began, to the microsecond.

    The session gets the rounded reading too, so the recorded run and its replay
    compute the very same durations.
    """

    def __init__(self, rec: Recorder, dev: str | None) -> None:
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


class RecordingWS:
    """aiohttp's client WebSocket, with every message in and out written down."""

    def __init__(self, ws: WebSocketLike, rec: Recorder, dev: str | None, extra: dict[str, Any]) -> None:
        self._ws = ws
        self._rec = rec
        self._dev = dev
        #: Fields added to every event (a replay going live marks its own with ``resume``).
        self.extra = dict(extra)

    @property
    def closed(self) -> bool:
        return bool(self._ws.closed)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def receive(self) -> Any:
        msg = await self._ws.receive()
        kind, fields = message_fields(msg, self._ws.close_code)
        self._rec.log(self._dev, kind, **fields, **self.extra)
        return msg

    async def send_str(self, data: str) -> None:
        event = self._rec.log(self._dev, "out", complete=False, **sent_fields(data), **self.extra)
        try:
            await self._ws.send_str(data)
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


class RecordingAPI(PlatformBackend):
    """A platform backend that writes down what passes through it, and otherwise is ``inner``.

    Once its recording stops it passes everything through unrecorded, so the
    sessions made during the recording keep working.
    """

    replaying = False

    @property
    def recording_frames(self) -> bool:  # type: ignore[override]
        return self.rec.active

    def __init__(
        self,
        inner: PlatformBackend,
        rec: Recorder,
        *,
        recording: Recording | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.inner = inner
        self.rec = rec
        self.recording = recording
        self._extra = extra or {}
        self._clocks: dict[str | None, RecordingClock] = {}
        self.base_url = inner.base_url
        self.project_id = inner.project_id

    def __repr__(self) -> str:
        return f"<RecordingAPI of {self.inner!r} to {self.rec.writer.path}>"

    async def close(self) -> None:
        if self.recording is not None:
            self.recording.stop()
        await self.inner.close()

    async def __aenter__(self) -> RecordingAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def secret_values(self) -> list[tuple[str, str]]:
        return self.inner.secret_values()

    async def _call(self, dev: str | None, call: str, args: dict[str, Any], run: Callable[[], Awaitable[Any]]) -> Any:
        try:
            result = await run()
        except TunnelnbError as exc:
            self.rec.log(dev, "rest", call=call, args=args, error=error_record(exc), **self._extra)
            raise
        answer = grant_json(result) if isinstance(result, TunnelGrant) else result
        note_tunnels(self.rec.tunnel_devices, call, dev, answer)
        self.rec.log(dev, "rest", call=call, args=args, result=answer, **self._extra)
        return result

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self._call(None, "list_devices", {}, self.inner.list_devices)

    async def iter_devices(self) -> AsyncIterator[dict[str, Any]]:
        for device in await self.list_devices():
            yield device

    async def show_device(self, device_id: str) -> dict[str, Any]:
        return await self._call(
            device_id, "show_device", {"device_id": device_id}, lambda: self.inner.show_device(device_id)
        )

    async def add_tunnel(self, device_id: str) -> TunnelGrant:
        return await self._call(
            device_id, "add_tunnel", {"device_id": device_id}, lambda: self.inner.add_tunnel(device_id)
        )

    async def list_tunnels(self, device_id: str | None = None) -> list[dict[str, Any]]:
        args = {"device_id": device_id} if device_id else {}
        return await self._call(device_id, "list_tunnels", args, lambda: self.inner.list_tunnels(device_id))

    async def show_tunnel(self, tunnel_id: str) -> dict[str, Any]:
        dev = self.rec.tunnel_devices.get(tunnel_id)
        args = {"tunnel_id": tunnel_id}
        return await self._call(dev, "show_tunnel", args, lambda: self.inner.show_tunnel(tunnel_id))

    async def close_tunnel(self, tunnel_id: str) -> None:
        dev = self.rec.tunnel_devices.get(tunnel_id)
        await self._call(dev, "close_tunnel", {"tunnel_id": tunnel_id}, lambda: self.inner.close_tunnel(tunnel_id))

    async def delete_tunnel(self, tunnel_id: str) -> None:
        dev = self.rec.tunnel_devices.get(tunnel_id)
        await self._call(dev, "delete_tunnel", {"tunnel_id": tunnel_id}, lambda: self.inner.delete_tunnel(tunnel_id))

    async def open_tunnel_socket(self, grant: TunnelGrant, **options: Any) -> TunnelSocket:
        dev = self.rec.tunnel_devices.get(grant.tunnel_id)
        try:
            sock = await self.inner.open_tunnel_socket(grant, **options)
        except TunnelError as exc:
            self.rec.log(dev, "open", tunnel_id=grant.tunnel_id, error=error_record(exc), **self._extra)
            raise
        self.rec.log(dev, "open", tunnel_id=grant.tunnel_id, **self._extra)
        # Under the TunnelSocket, so the cassette has the messages as they were on the wire.
        recorded = RecordingWS(sock.ws, self.rec, dev, self._extra)
        return TunnelSocket(recorded, max_message_bytes=sock.max_message_bytes)

    def clock_for(self, device_id: str | None) -> Clock:
        clock = self._clocks.get(device_id)
        if clock is None:
            clock = self._clocks[device_id] = RecordingClock(self.rec, device_id)
        return clock


class Recording:
    """A fleet's recording to a cassette (:func:`record` makes one).

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
        self._closing: asyncio.Future[Any] | None = None

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
        if isinstance(fleet.api, RecordingAPI) or fleet.api.replaying:
            raise CassetteError("this fleet already records or replays a cassette: stop that first")
        if fleet.busy:
            raise CassetteError("a run is in progress: start recording between runs")
        inner = fleet.api
        user = fleet.default_login_user
        header = {
            "format": FORMAT,
            "version": VERSION,
            "tunnelnb": TUNNELNB_VERSION,
            "recorded_at": datetime.now(UTC).isoformat(),
            "platform": inner.base_url,
            "project_id": inner.project_id,
            "login": {"user": user} if user else None,
            "logins": fleet.login_users(),
            "fleet": {
                "concurrency": fleet.concurrency,
                "max_sessions": fleet.max_sessions,
                "join_timeout": fleet.join_timeout,
            },
            "note": "replay: tunnelnb.connect(replay=PATH) or %tunnel connect --replay PATH; secrets are placeholders",
        }
        masker = Masker([*inner.secret_values(), *fleet.secret_values()])
        rec = Recorder(CassetteWriter(self.path, masker(header)), masker, time.monotonic())
        # What the fleet knew when the recording began: a replay starts from the same inventory.
        rec.log(None, "rest", call="list_devices", args={}, result=fleet.inventory, snapshot=True)
        self.api = RecordingAPI(inner, rec, recording=self)
        self._closing = fleet.use_backend(self.api)
        return self

    async def astart(self) -> Recording:
        """:meth:`start`, then wait until the sessions open before it are closed."""
        self.start()
        if self._closing is not None:
            await self._closing
        return self

    def stop(self) -> CassetteSummary:
        """Stop recording and write what is left; the fleet goes on unrecorded."""
        if self.summary is not None:
            return self.summary
        if self.api is None:
            raise CassetteError("this recording has not started")
        if self.fleet.api is self.api:
            # The sessions made while recording keep it: it passes everything through from now on.
            self.fleet.use_backend(self.api.inner, close_sessions=False)
        self.summary = self.api.rec.stop()
        return self.summary

    def __enter__(self) -> Recording:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Recording:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


def record(fleet: Fleet, path: str | os.PathLike[str]) -> Recording:
    """Record what ``fleet`` gets from the platform and its devices to a cassette at ``path``.

    ``with tunnelnb.record(fleet, "incident.cassette.jsonl"): ...`` (or ``async
    with``, or ``.start()`` / ``.stop()``): every platform answer, every tunnel
    frame and every clock reading, per device, as JSON Lines with passwords and
    tokens masked; ``tunnelnb.connect(replay=path)`` plays it back without a
    network.  Sessions open at the start are closed, so the cassette holds each
    device's session from its beginning.
    """
    return Recording(fleet, path)


def recording_of(fleet: Fleet) -> Recording | None:
    """The recording the fleet is being recorded by, if any."""
    api = fleet.api
    return api.recording if isinstance(api, RecordingAPI) and api.recording is not None else None

"""Replaying: a backend that answers from a cassette and opens no connection.

Each device's events are served in order.  Frames the application sends must
match the recorded ones (``operation_type`` and ``data``; a ``connect`` frame's
password is masked on both sides), which holds because the marker and request
ids the session draws are recorded too.  Received messages are released in the
recorded order across devices, each once the device's earlier recorded actions
are done.  Time is virtual (:mod:`tunnelnb.cassette.virtualtime`): clock
readings return the recorded values, so durations and ``started_at`` are equal,
and a wait ends when nothing else can happen any more, in deadline order; a
recorded 30-second timeout replays in no time.

Modes, as vcrpy's record modes: ``none`` (strict: anything the cassette does
not have raises :class:`~tunnelnb.errors.CassetteMismatch`, naming the device
and the command) and ``new_episodes`` (what the cassette lacks runs live and is
appended: :mod:`tunnelnb.cassette.golive`).  ``all`` records anew and needs no
replay at all (:func:`tunnelnb.cassette.connect.connect_replay`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ..client.backend import PlatformBackend, TunnelGrant
from ..client.clock import Clock
from ..client.transport import TunnelSocket, WebSocketLike
from ..errors import CassetteError, CassetteMismatch, TunnelAuthError
from ..fleet.fleet import RUNNING_COMMAND
from ..protocol.frames import DEFAULT_MAX_MESSAGE_BYTES
from .events import (
    TEARDOWN_CALLS,
    WSMessage,
    args_text,
    describe_event,
    error_from_record,
    grant_from,
    message_from,
    note_tunnels,
    same_frame,
    sent_fields,
)
from .file import Cassette, describe_frame, mask_keys
from .golive import LiveBranch
from .recording import RecordingAPI
from .stream import ReplayStream
from .virtualtime import ReplayClock, VirtualTime

__all__ = ["ReplayAPI"]

log = logging.getLogger(__name__)

_SWITCHED = WSMessage(aiohttp.WSMsgType.CLOSED, None, "switched to a live socket")


class ReplayWS:
    """A tunnel's WebSocket, served from a cassette (or, once its device goes live, a live one)."""

    def __init__(self, api: ReplayAPI, stream: ReplayStream, tunnel_id: str, max_message_bytes: int) -> None:
        self._api = api
        self.stream = stream
        self.tunnel_id = tunnel_id
        self.max_message_bytes = max_message_bytes
        self._waiter: asyncio.Future[WSMessage] | None = None
        self._closed = False
        self._close_code: int | None = None
        self._live: WebSocketLike | None = None
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
                return WSMessage(aiohttp.WSMsgType.CLOSED, None, None)
            self._api.time.awake()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                msg = await self._waiter
            finally:
                self._waiter = None
            if msg is not _SWITCHED:
                return msg

    def deliver(self, msg: WSMessage, close_code: int | None = None) -> None:
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self._closed = True
            self._close_code = close_code
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(msg)

    def attach(self, live_ws: WebSocketLike) -> None:
        """Carry on over a live WebSocket (the device went live)."""
        self._live = live_ws
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(_SWITCHED)

    async def send_str(self, data: str) -> None:
        api, stream = self._api, self.stream
        api.time.awake()
        try:
            sent = mask_keys(json.loads(data))
        except ValueError:
            sent = {"raw": data}
        if self._live is None and stream.live and not self._closed:
            await api.resume(self, data, sent)
        if self._live is not None:
            await self._live.send_str(data)
            return
        if self._closed:
            raise ConnectionResetError("Cannot write to closing transport")

        def matches(event: dict[str, Any]) -> bool:
            return event["kind"] == "out" and same_frame(event.get("frame"), sent)

        i, blocking = stream.find_hard(matches)
        if i is None:
            api.miss(stream, blocking, f"tunnelnb sent {describe_frame(sent)}")  # raises, unless it goes live
            await api.resume(self, data, sent)
            assert self._live is not None
            await self._live.send_str(data)
            return
        event = stream.take_hard(i)
        if isinstance(sent, dict) and sent.get("operation_type") == "connect":
            self.last_connect = data
        error = event.get("error")
        if error:
            self._close_code = error.get("close_code")
            raise ConnectionResetError(str(error.get("message", "")))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self._live is not None:
            result = await self._live.close(code=code, message=message)
            await self._api.close_live_tunnel(self)
            return bool(result)
        if self._closed:
            return False
        self._closed = True
        self._close_code = code
        stream = self.stream
        if not stream.live:
            i, _ = stream.find_hard(lambda e: e["kind"] == "close")
            if i is not None:
                stream.take_hard(i)
        self.deliver(WSMessage(aiohttp.WSMsgType.CLOSED, None, None), code)
        return True


class ReplayAPI(PlatformBackend):
    """A platform backend that answers from a cassette and opens no connection.

    ``mode="new_episodes"`` with ``live`` (a live backend) runs what the
    cassette does not have through ``live`` and appends it to the cassette.
    """

    replaying = True
    recording_frames = False

    def __init__(
        self,
        cassette: Cassette,
        *,
        mode: str = "none",
        live: PlatformBackend | None = None,
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
        self._streams = {dev: ReplayStream(dev, list(events)) for dev, events in cassette.streams.items()}
        self._tunnel_devices: dict[str, str | None] = {}
        self._clocks: dict[str | None, ReplayClock] = {}
        self.time = VirtualTime(self._deliver_next, self._advance)
        self._live = live
        self._branch: LiveBranch | None = None
        if live is not None:
            self._branch = LiveBranch(live, self.path, [*(secrets or []), *live.secret_values()])

    def __repr__(self) -> str:
        return f"ReplayAPI({str(self.path)!r}, mode={self.mode!r})"

    def secret_values(self) -> list[tuple[str, str]]:
        return self._live.secret_values() if self._live is not None else []

    async def close(self) -> None:
        await self.time.close()
        if self._branch is not None:
            self._branch.close()
        if self._live is not None:
            await self._live.close()

    async def __aenter__(self) -> ReplayAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stream(self, dev: str | None) -> ReplayStream:
        """The recorded events of ``dev`` (an empty stream for a device the cassette never saw)."""
        stream = self._streams.get(dev)
        if stream is None:
            stream = self._streams[dev] = ReplayStream(dev, [])
        return stream

    @property
    def branch(self) -> LiveBranch:
        assert self._branch is not None, "only a new_episodes replay goes live"
        return self._branch

    # -- the platform's answers ---------------------------------------------

    async def _rest(
        self, dev: str | None, call: str, args: dict[str, Any], live: Callable[[RecordingAPI], Awaitable[Any]]
    ) -> Any:
        self.time.awake()
        stream = self.stream(dev)
        if not stream.live:

            def matches(event: dict[str, Any]) -> bool:
                return event["kind"] == "rest" and event.get("call") == call and (event.get("args") or {}) == args

            i, blocking = stream.find_hard(matches)
            if i is not None:
                event = stream.take_hard(i)
                if "error" in event:
                    raise error_from_record(event["error"])
                result: Any = copy.deepcopy(event.get("result"))
                note_tunnels(self._tunnel_devices, call, dev, result)
                return grant_from(result) if call == "add_tunnel" else result
            if call in TEARDOWN_CALLS:
                return None  # closing what a replay opened: nothing to do
            self.miss(stream, blocking, f"tunnelnb asked the platform for {call}({args_text(args)})")
        result = await live(self.branch.api)
        if call == "add_tunnel":
            self.branch.tunnels.add(result.tunnel_id)
            self._tunnel_devices[result.tunnel_id] = dev
        else:
            note_tunnels(self._tunnel_devices, call, dev, result)
        return result

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self._rest(None, "list_devices", {}, lambda api: api.list_devices())

    async def iter_devices(self) -> AsyncIterator[dict[str, Any]]:
        for device in await self.list_devices():
            yield device

    async def show_device(self, device_id: str) -> dict[str, Any]:
        args = {"device_id": device_id}
        return await self._rest(device_id, "show_device", args, lambda api: api.show_device(device_id))

    async def add_tunnel(self, device_id: str) -> TunnelGrant:
        args = {"device_id": device_id}
        return await self._rest(device_id, "add_tunnel", args, lambda api: api.add_tunnel(device_id))

    async def list_tunnels(self, device_id: str | None = None) -> list[dict[str, Any]]:
        args = {"device_id": device_id} if device_id else {}
        return await self._rest(device_id, "list_tunnels", args, lambda api: api.list_tunnels(device_id))

    async def show_tunnel(self, tunnel_id: str) -> dict[str, Any]:
        if self._branch is not None:
            tunnel_id = self._branch.live_id(tunnel_id)
        dev = self._tunnel_devices.get(tunnel_id)
        args = {"tunnel_id": tunnel_id}
        return await self._rest(dev, "show_tunnel", args, lambda api: api.show_tunnel(tunnel_id))

    async def close_tunnel(self, tunnel_id: str) -> None:
        await self._teardown("close_tunnel", tunnel_id)

    async def delete_tunnel(self, tunnel_id: str) -> None:
        await self._teardown("delete_tunnel", tunnel_id)

    async def _teardown(self, call: str, tunnel_id: str) -> None:
        if self._branch is not None:
            tunnel_id = self._branch.live_id(tunnel_id)
            if tunnel_id in self._branch.tunnels:
                api = self._branch.api
                await (api.close_tunnel(tunnel_id) if call == "close_tunnel" else api.delete_tunnel(tunnel_id))
                return
        stream = self.stream(self._tunnel_devices.get(tunnel_id))
        args = {"tunnel_id": tunnel_id}
        i, _ = stream.find_hard(lambda e: e["kind"] == "rest" and e.get("call") == call and e.get("args") == args)
        if i is not None:
            event = stream.take_hard(i)
            if "error" in event:
                raise error_from_record(event["error"])

    async def add_device(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise CassetteError("a replay cannot add devices: it only plays back what was recorded")

    # -- tunnels' WebSockets and clocks ---------------------------------------

    async def open_tunnel_socket(self, grant: TunnelGrant, **options: Any) -> TunnelSocket:
        self.time.awake()
        max_bytes = int(options.get("max_message_bytes") or DEFAULT_MAX_MESSAGE_BYTES)
        if self._branch is not None:
            live_grant = self._branch.aliases.get(grant.tunnel_id)
            if live_grant is not None or grant.tunnel_id in self._branch.tunnels:
                return await self._branch.api.open_tunnel_socket(live_grant or grant, **options)
        stream = self.stream(self._tunnel_devices.get(grant.tunnel_id))
        if not stream.live:
            i, blocking = stream.find_hard(lambda e: e["kind"] == "open")
            if i is not None:
                event = stream.take_hard(i)
                if "error" in event:
                    raise error_from_record(event["error"])
                ws = ReplayWS(self, stream, grant.tunnel_id, max_bytes)
                stream.ws = ws
                return TunnelSocket(ws, max_message_bytes=max_bytes)
            self.miss(stream, blocking, "tunnelnb opened the tunnel's WebSocket")
        # The device went live, but this tunnel is one the cassette made up: the session must make a new one.
        raise TunnelAuthError(f"tunnel {grant.tunnel_id} is a recorded one, not on the live platform: make a new one")

    def clock_for(self, device_id: str | None) -> Clock:
        clock = self._clocks.get(device_id)
        if clock is None:
            clock = self._clocks[device_id] = ReplayClock(self, device_id)
        return clock

    def reading(self, dev: str | None, kind: str) -> dict[str, Any] | None:
        """The next recorded reading of ``kind`` (clock, now, random) for ``dev``, if the recording has one."""
        stream = self.stream(dev)
        self.time.poke()
        event = stream.take_soft(kind)
        if event is None and not stream.live and self.mode == "new_episodes" and stream.exhausted():
            self._go_live(stream, len(stream.events))
        return event

    def live_clock(self, dev: str | None) -> Clock:
        return self.branch.clock(dev)

    # -- what the cassette does not have --------------------------------------

    def miss(self, stream: ReplayStream, blocking: int | None, what: str) -> None:
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
        expected = describe_event(stream.events[blocking])
        if what.endswith(expected):  # the same command, typed otherwise
            why = "typed with other shell marker ids than recorded: was the cassette made by another tunnelnb?"
        else:
            why = f"the recording has {expected} next (the notebook changed since it was recorded): {advice}"
        raise CassetteMismatch(stream.dev, f"{who}: {subject} is not in the cassette {self.path.name}{detail}; {why}")

    def _go_live(self, stream: ReplayStream, at: int) -> None:
        """From event ``at`` on, ``stream``'s device runs live; its events so far stay, the rest is replaced."""
        rec = self.branch.recorder
        rec.log(stream.dev, "branch", t=round(stream.vnow, 6), at=at)
        rec.set_origin(stream.dev, time.monotonic() - stream.vnow)  # its live times go on from its replayed ones
        stream.live = True
        log.info("replay: %s goes live after %d recorded events", stream.dev or "the fleet", at)
        loop = asyncio.get_running_loop()
        for timer in self.time.timers_of(stream.dev):
            timer.cancelled = True
            timer.to_real(loop.time() + (timer.deadline - stream.vnow))

    async def resume(self, ws: ReplayWS, text: str, sent: Any) -> None:
        """Put a live tunnel under a replayed session, before it sends ``text``.

        When ``text`` is the session's own login, the session carries on from
        there; when the session thinks it is logged in, its last login is sent
        again first.  If that fails, the frame fails as a lost connection would
        (recorded, so a later replay fails it alike) and the session reconnects:
        to a new live tunnel.
        """
        dev = ws.stream.dev
        logs_in = isinstance(sent, dict) and sent.get("operation_type") == "connect"
        try:
            live_ws = await self.branch.resume(
                dev, ws.tunnel_id, None if logs_in else ws.last_connect, ws.max_message_bytes
            )
        except Exception as exc:
            message = f"{dev}: could not go on live: {exc}"
            self.branch.recorder.log(dev, "out", **sent_fields(text), error={"message": message, "close_code": 1006})
            ws.deliver(WSMessage(aiohttp.WSMsgType.CLOSE, 1006, message), 1006)
            raise ConnectionResetError(message) from None
        ws.attach(live_ws)

    async def close_live_tunnel(self, ws: ReplayWS) -> None:
        if self._branch is not None:
            await self._branch.close_tunnel_of(ws.tunnel_id)

    # -- virtual time ----------------------------------------------------------

    def _deliver_next(self, deadline: float | None) -> bool:
        """Release the earliest recorded message some session waits for, if due by ``deadline``."""
        best: tuple[float, ReplayStream, int] | None = None
        for stream in self._streams.values():
            if stream.live or stream.ws is None or not stream.ws.waiting:
                continue
            i = stream.next_delivery()
            if i is not None:
                t = float(stream.events[i]["t"])
                if best is None or t < best[0]:
                    best = (t, stream, i)
        if best is None or (deadline is not None and best[0] > deadline):
            return False
        _, stream, i = best
        event = stream.consume(i)
        assert stream.ws is not None
        stream.ws.deliver(message_from(event), event.get("code"))
        return True

    def _advance(self, dev: str | None, t: float) -> None:
        stream = self.stream(dev)
        stream.vnow = max(stream.vnow, t)

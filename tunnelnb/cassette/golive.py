"""A ``new_episodes`` replay going live: what the cassette lacks runs on the live platform and is appended.

:class:`LiveBranch` is the live side of a replay: a recorder appending to the
cassette, the live backend wrapped in a :class:`~tunnelnb.cassette.recording.RecordingAPI`,
live clocks per device, and the tunnels it made.  When a replayed session
does something its recording does not have, its device goes live from there:
:meth:`LiveBranch.resume` puts a live tunnel under the session, logging in
again with the session's own login (the one login-and-sync script of
:func:`tunnelnb.client.session.sync_shell`) when the session thinks it is
logged in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

from ..client.backend import PlatformBackend, TunnelGrant
from ..client.clock import LIVE_CLOCK
from ..client.shellsync import ShellEvents, sync_shell
from ..client.transport import TunnelSocket
from ..client.tunnels import new_tunnel
from ..errors import LoginError, TunnelnbError
from ..protocol.frames import Frame, Op, chunk_text, decode_frame
from ..protocol.shell import CommandParser, TerminalText
from .file import CassetteWriter, Masker
from .recording import Recorder, RecordingAPI, RecordingClock, RecordingWS

__all__ = ["LiveBranch", "join_live"]

#: How long a resumed device gets to join its new live tunnel and log in.
RESUME_TIMEOUT = 30.0


class LiveBranch:
    """The live side of a ``new_episodes`` replay of the cassette at ``path``."""

    def __init__(self, live: PlatformBackend, path: Any, secrets: list[tuple[str, str]]) -> None:
        self.live = live
        self.path = path
        self.secrets = secrets
        self._rec: Recorder | None = None
        self._api: RecordingAPI | None = None
        self._resume_api: RecordingAPI | None = None
        self._clocks: dict[str | None, RecordingClock] = {}
        #: Tunnels made live: their calls go to the live platform.
        self.tunnels: set[str] = set()
        #: A replayed tunnel id → the live tunnel that replaced it.
        self.aliases: dict[str, TunnelGrant] = {}
        self._resumes = itertools.count(1)

    @property
    def recorder(self) -> Recorder:
        if self._rec is None:
            masker = Masker(self.secrets)
            self._rec = Recorder(CassetteWriter(self.path, None, append=True), masker, time.monotonic())
        return self._rec

    @property
    def api(self) -> RecordingAPI:
        """The live backend, recording what the application itself does."""
        if self._api is None:
            self._api = RecordingAPI(self.live, self.recorder)
        return self._api

    def clock(self, dev: str | None) -> RecordingClock:
        clock = self._clocks.get(dev)
        if clock is None:
            clock = self._clocks[dev] = RecordingClock(self.recorder, dev)
        return clock

    def live_id(self, tunnel_id: str) -> str:
        alias = self.aliases.get(tunnel_id)
        return alias.tunnel_id if alias is not None else tunnel_id

    async def resume(
        self, dev: str | None, tunnel_id: str, connect_text: str | None, max_message_bytes: int
    ) -> RecordingWS:
        """A live tunnel for ``dev``'s replayed tunnel; returns its WebSocket, the device joined.

        The tunnel is made, and the device joins it, out of the session's sight
        (those events are marked ``resume``: a later replay skips them).  With
        ``connect_text`` (the session's last login frame) the shell is logged in
        again and quietened first.
        """
        if self._resume_api is None:
            self._resume_api = RecordingAPI(self.live, self.recorder, extra={"resume": True})
        api = self._resume_api
        grant: TunnelGrant | None = None
        sock: TunnelSocket | None = None
        try:
            assert dev is not None, "the fleet itself has no tunnel"
            grant = await new_tunnel(api, dev)
            self.tunnels.add(grant.tunnel_id)
            sock = await api.open_tunnel_socket(grant, max_message_bytes=max_message_bytes)
            await join_live(sock, connect_text, f"resume{next(self._resumes)}")
        except Exception:
            if sock is not None:
                await sock.close()
            if grant is not None:
                with contextlib.suppress(TunnelnbError):
                    await api.close_tunnel(grant.tunnel_id)
                    await api.delete_tunnel(grant.tunnel_id)
            raise
        ws = sock.ws
        assert isinstance(ws, RecordingWS)
        ws.extra = {}  # from here on, what the application itself does
        self.aliases[tunnel_id] = grant
        return ws

    async def close_tunnel_of(self, tunnel_id: str) -> None:
        """Close and delete the live tunnel that replaced a replayed one."""
        grant = self.aliases.get(tunnel_id)
        if grant is not None and self._resume_api is not None:
            with contextlib.suppress(TunnelnbError):
                await self._resume_api.close_tunnel(grant.tunnel_id)
                await self._resume_api.delete_tunnel(grant.tunnel_id)
            self.tunnels.discard(grant.tunnel_id)

    def close(self) -> None:
        if self._rec is not None:
            self._rec.writer.close()


async def join_live(sock: TunnelSocket, connect_text: str | None, marker: str, timeout: float = RESUME_TIMEOUT) -> None:
    """Wait until the device joins a live tunnel; then log in with ``connect_text`` and quieten the shell."""

    async def until(*ops: Op) -> Frame:
        while True:
            frame = await sock.receive()
            if frame.op in ops:
                return frame
            if frame.op is Op.DISCONNECT:
                data = frame.data or {}
                raise LoginError(str(data.get("status_msg") or "the device left the tunnel"), data.get("status_code"))

    async def send_text(text: str) -> None:
        for frame in chunk_text(text, f"{marker}-sync", op=Op.COMMAND, max_bytes=sock.max_message_bytes):
            await sock.send(frame)

    async def feed(events: ShellEvents) -> None:
        term, parser = TerminalText(), CommandParser(marker)
        try:
            while True:
                frame = await until(Op.COMMAND_RESPONSE)
                for event in parser.feed(term.feed(frame.data)):
                    events.put_nowait(event)
        except Exception as exc:
            events.put_nowait(exc)

    async with asyncio.timeout(timeout):
        await until(Op.CONNECT_TUNNEL)
        if connect_text is None:
            return
        await sock.send(decode_frame(connect_text, max_bytes=None))
        await until(Op.CONNECT_RESPONSE)
        events: ShellEvents = asyncio.Queue()
        reader = asyncio.create_task(feed(events))
        try:
            await sync_shell(send_text, events, marker, LIVE_CLOCK, LIVE_CLOCK.monotonic() + timeout)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

"""The device terminal (``%tunnel shell DEVICE``): xterm.js in the notebook, raw keys in, raw output out.

:class:`Terminal` attaches an interactive terminal to one device
(:func:`~tunnelnb.fleet.terminals.open_terminal`): every key typed in xterm.js
goes to the device's PTY as it is, everything the device prints goes back to
xterm.js as bytes, so ``vi``, ``top``, ``less``, Ctrl-C, arrows, tab completion,
colours and UTF-8 work.  The PTY is 128x30 and the protocol has no resize
message, so the screen is that size, always.  :class:`TerminalReplay` plays an
asciicast v2 recording (``Terminal(..., record=PATH)`` makes one) in the same
xterm.js.

The front end is an ES module built from npm packages (``js/``, ``make js``)
into ``static/``; it is not in the repository, and a checkout without it says
to run ``make``.

A busy kernel.  Output reaches the browser whenever the fleet's event loop
runs: always for a fleet on a loop thread (``connect_sync``), and for a fleet
on the kernel's own loop whenever no cell blocks that loop (between cells, or
while a ``%%tunnel`` cell waits on the loop).  Keys are comm messages from the
browser: ipykernel 6 reads them only between cells, ipykernel 7 also during a
cell (on another thread, sometimes out of order: each page numbers its key
messages and the kernel types them in that order), but they are typed on the
fleet's loop, which a cell that blocks it (``time.sleep``, a long computation)
holds up.  Either way keys typed then wait, in order, and reach the device when
the cell ends.  So that nobody types into what looks like a dead terminal, the
kernel acknowledges key messages by sequence number once their keys are typed
into the device, and the front end's status line says "kernel busy: N keys
waiting" while keys have waited more than half a second, until the acks come.

Output travels as binary comm buffers, a burst coalesced into one message per
:data:`FLUSH_S`, each with its offset in the output stream: a front end that
missed some (it was still loading) asks for the rest (:data:`HISTORY_BYTES`
are kept for that, and for views opened later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from ...cassette.asciicast import CastWriter, read_cast
from ...errors import TerminalError, TunnelnbError
from ...fleet.fleet import Fleet
from ...fleet.terminals import open_terminal
from ...protocol.shell import PTY_COLS, PTY_ROWS
from .loop import call_on_loop, fleet_loop

if TYPE_CHECKING:
    from ...client.terminal import Terminal as DeviceTerminal

__all__ = ["FLUSH_S", "HISTORY_BYTES", "STATIC", "Terminal", "TerminalReplay"]

log = logging.getLogger(__name__)

#: The built front end (``make js``): terminal.js and terminal.css.
STATIC = Path(__file__).with_name("static")
#: A burst of output becomes one message to the browser after this long.
FLUSH_S = 0.01
#: Output kept in the kernel for a front end that missed some or opened later.
HISTORY_BYTES = 1024 * 1024

_bundle_cache: dict[str, str] = {}


class _KeyOrder:
    """One page's key messages back in the order typed: ipykernel 7 may handle comm messages out of order."""

    #: Messages held for one that never comes (it cannot be lost on the way, but a page may be reloaded).
    MAX_WAITING = 200

    def __init__(self) -> None:
        self.next = 1  # the sequence number of the next key message to type
        self.waiting: dict[int, str] = {}

    def add(self, seq: int, data: str) -> list[str]:
        """The keys that are now in order, oldest first."""
        if seq >= self.next:
            self.waiting[seq] = data
        if len(self.waiting) > self.MAX_WAITING:
            self.next = min(self.waiting)
        typed = []
        while self.next in self.waiting:
            typed.append(self.waiting.pop(self.next))
            self.next += 1
        return typed


def _bundle(name: str) -> str:
    """A built front-end file's text; TunnelnbError saying to build it when it is missing."""
    if name not in _bundle_cache:
        path = STATIC / name
        try:
            _bundle_cache[name] = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TunnelnbError(
                f"the terminal widget's front end {path} is not built: run `make` (or `make js`) in the tunnelnb "
                "checkout, which needs Node.js and npm"
            ) from None
    return _bundle_cache[name]


class _Xterm(anywidget.AnyWidget):
    """xterm.js at a fixed size with a status line under it: what both widgets show."""

    mode = traitlets.Unicode("live").tag(sync=True)
    cols = traitlets.Int(PTY_COLS).tag(sync=True)
    rows = traitlets.Int(PTY_ROWS).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    phase = traitlets.Unicode("").tag(sync=True)
    # This widget's id for the front end, which sees each view's model through a proxy of its own.
    _instance = traitlets.Unicode().tag(sync=True)

    @traitlets.default("_instance")
    def _new_instance(self) -> str:
        return uuid.uuid4().hex

    # Read when the widget is made (anywidget turns them into traits), so that importing this
    # module works without the bundle and making a widget says how to build it.
    @property
    def _esm(self) -> str:
        return _bundle("terminal.js")

    @property
    def _css(self) -> str:
        return _bundle("terminal.css")


class Terminal(_Xterm):
    """An interactive terminal on one device, in xterm.js: the device's own shell, full-screen programs included.

    ``phase`` is ``connecting``, ``attached``, ``reconnecting``, ``detached`` or
    ``ended``; ``status`` says it in words (the front end's status line).
    :meth:`detach` (the Detach button) gives the shell back to ``%%tunnel`` cells.
    ``record=PATH`` writes the session's output as an asciicast v2 file, the
    fleet's passwords masked.  ``loop`` is the fleet's event loop; made in a
    notebook cell, the terminal finds it itself (see :func:`.loop.fleet_loop`).
    """

    device_id = traitlets.Unicode("").tag(sync=True)

    _constructed = False  # Widget.__del__ closes half-made widgets too

    def __init__(
        self,
        fleet: Fleet,
        device_id: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        record: str | Path | None = None,
        timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        loop = fleet_loop(loop, fleet)
        super().__init__(
            mode="live",
            device_id=device_id,
            title=f"{device_id} (tunnelnb)",
            phase="connecting",
            status=f"connecting to {device_id}…",
            **kwargs,
        )
        self.fleet, self.loop, self.timeout = fleet, loop, timeout
        self.terminal: DeviceTerminal | None = None
        self._cast: CastWriter | None = None
        if record is not None:
            secrets = [value for value, _ in fleet.secret_values()]
            self._cast = CastWriter(Path(record), width=self.cols, height=self.rows, title=self.title, secrets=secrets)
        # On the fleet's loop from here on: the output stream, and keys on their way to the device.
        self._pending = bytearray()  # output not sent yet
        self._flush_handle: asyncio.TimerHandle | None = None
        self._history = bytearray()  # the last HISTORY_BYTES sent
        self._sent = 0  # bytes sent in all: the stream offset of the next chunk
        self._keys: deque[tuple[str, int, str]] = deque()  # (page, seq of the last key, keys) to type
        self._typist: asyncio.Task[None] | None = None
        self._leave = False  # detach as soon as attached (Detach before the terminal was up, or close)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._orders: dict[str, _KeyOrder] = {}  # by page: each browser page numbers its key messages from 1
        self._order_lock = threading.Lock()
        self.on_msg(self._on_message)
        self._constructed = True
        call_on_loop(loop, self._spawn, self._run())

    def detach(self) -> None:
        """Give the shell back to ``%%tunnel`` cells (the Detach button); keys are ignored afterwards."""
        call_on_loop(self.loop, self._spawn, self._detach())

    def close(self) -> None:
        """Close the widget; an attached terminal detaches, so the device is free for runs again."""
        if self._constructed and self.phase in ("connecting", "attached", "reconnecting"):
            self.detach()
        super().close()

    # -- from the browser (a kernel thread) ---------------------------------------

    def _on_message(self, _widget: Any, content: dict[str, Any], _buffers: Sequence[bytes]) -> None:
        kind = content.get("type")
        if kind == "keys":  # from xterm.js's onData: numbered per page, from 1
            page, seq, data = str(content.get("page", "")), int(content.get("seq", 0)), content.get("data")
            # ipykernel 7 handles comm messages on more than one thread: the lock and the loop's FIFO
            # (never a direct call, even on the loop's thread) keep the keys in the page's order.
            with self._order_lock:
                order = self._orders.setdefault(page, _KeyOrder())
                typed = order.add(seq, data if isinstance(data, str) else "")
                if typed:
                    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to type into
                        self.loop.call_soon_threadsafe(self._type, page, order.next - 1, "".join(typed))
        elif kind == "sync":
            call_on_loop(self.loop, self._resend, int(content.get("have", 0)))
        elif kind == "detach":
            self.detach()

    # -- on the fleet's loop ---------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set(self, phase: str, status: str) -> None:
        self.phase, self.status = phase, status

    async def _run(self) -> None:
        """Attach, then wait for the terminal's end, whoever ends it."""
        try:
            terminal = await open_terminal(
                self.fleet,
                self.device_id,
                self._on_output,
                on_note=self._on_note,
                rows=self.rows,
                cols=self.cols,
                timeout=self.timeout,
            )
        except TerminalError as exc:
            self._ended(str(exc))
            return
        self.terminal = terminal
        if self._leave:
            await self._detach()
            return
        self._set("attached", f"attached to {self.device_id} ({self.cols}x{self.rows})")
        self._start_typing()
        reason = await terminal.wait_closed()
        if reason == "detached":
            self._detached()
        else:
            self._ended(reason)

    async def _detach(self) -> None:
        terminal = self.terminal
        if terminal is None:
            self._leave = True  # still connecting: _run detaches once attached
            return
        if terminal.closed:
            return
        try:
            await terminal.detach()
        except TunnelnbError as exc:
            self._ended(f"detach failed: {exc}")
            return
        self._detached()

    def _detached(self) -> None:
        if self.phase not in ("detached", "ended"):
            self._note(f"detached from {self.device_id}: %%tunnel cells can use its shell again")
            self._set("detached", f"detached: {self.device_id}'s shell is back to %%tunnel cells")
        self._stop()

    def _ended(self, reason: str) -> None:
        if self.phase not in ("detached", "ended"):
            self._set("ended", f"ended: {reason}")
        self._stop()

    def _stop(self) -> None:
        self._drop_keys()
        self._flush()
        if self._cast is not None:
            cast, self._cast = self._cast, None
            cast.close()

    def _on_note(self, text: str) -> None:
        """The link's news, in the status line and in the terminal itself."""
        self._note(text)
        if self.terminal is not None and self.terminal.closed:
            self._ended(self.terminal.end_reason)
        elif "reconnecting" in text:
            self._set("reconnecting", text)
        elif text.startswith("reconnected"):
            self._set("attached", text)
        else:
            self.status = text

    def _note(self, text: str) -> None:
        self._queue(f"\r\n\x1b[0;2;3m[tunnelnb: {text}]\x1b[0m\r\n".encode())

    def _on_output(self, data: bytes) -> None:
        if self._cast is not None:
            try:
                self._cast.output(data)
            except OSError as exc:  # a full disk stops the recording, not the terminal
                self._cast = None
                self.status = f"recording stopped: {exc}"
        self._queue(data)

    def _queue(self, data: bytes) -> None:
        self._pending += data
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_later(FLUSH_S, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        chunk, at = bytes(self._pending), self._sent
        self._pending.clear()
        self._sent += len(chunk)
        self._history += chunk
        del self._history[: max(0, len(self._history) - HISTORY_BYTES)]
        self._send_output(at, chunk, replay=False)

    def _resend(self, have: int) -> None:
        """The output after byte ``have`` again, for a front end that missed it (as much as is kept)."""
        self._flush()
        start = max(have, self._sent - len(self._history))
        if start < self._sent:
            self._send_output(start, bytes(self._history[start - self._sent :]), replay=True)

    def _send_output(self, at: int, chunk: bytes, *, replay: bool) -> None:
        try:
            self.send({"type": "output", "at": at, "replay": replay}, [chunk])
        except Exception:  # a closed comm: nobody is looking any more
            log.debug("terminal %s: output not sent", self.device_id, exc_info=True)

    def _type(self, page: str, seq: int, data: str) -> None:
        self._keys.append((page, seq, data))
        if self.phase not in ("connecting", "attached"):
            self._drop_keys()  # detached, ended or reconnecting: nothing to type into
        elif self.terminal is not None:
            self._start_typing()

    def _ack(self, page: str, seq: int) -> None:
        """Every key of ``page`` up to ``seq`` is typed (or dropped): the front end stops counting them."""
        with contextlib.suppress(Exception):  # a closed comm: nobody is waiting
            self.send({"type": "ack", "page": page, "seq": seq})

    def _drop_keys(self) -> None:
        while self._keys:
            page, seq, _ = self._keys.popleft()
            self._ack(page, seq)

    def _start_typing(self) -> None:
        if self._keys and (self._typist is None or self._typist.done()):
            self._typist = self.loop.create_task(self._typing())

    async def _typing(self) -> None:
        """The keys, one message after another, in the order typed."""
        while self._keys and self.terminal is not None:
            page, seq, keys = self._keys.popleft()
            try:
                await self.terminal.send(keys)
            except TunnelnbError as exc:  # the terminal ended meanwhile: its note says why
                log.debug("terminal %s: keys dropped: %s", self.device_id, exc)
                self._drop_keys()
            self._ack(page, seq)


class TerminalReplay(_Xterm):
    """An asciicast v2 recording (``Terminal(..., record=PATH)``, asciinema) played in xterm.js, with its timing.

    The events go to the browser once; it plays them at ``speed``, pauses cut to
    ``idle_time_limit`` seconds (the recording's own, else 2), and again on the
    Replay button.  Only output (``"o"``) events are played.
    """

    events: traitlets.List[list[Any]] = traitlets.List().tag(sync=True)
    speed = traitlets.Float(1.0).tag(sync=True)
    idle_time_limit = traitlets.Float(0.0).tag(sync=True)

    def __init__(
        self, path: str | Path, *, speed: float = 1.0, idle_time_limit: float | None = None, **kwargs: Any
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        header, recorded = read_cast(path)  # CassetteError, with the line, if it is not a recording
        events = [[at, text] for at, code, text in recorded if code == "o"]
        limit = idle_time_limit if idle_time_limit is not None else float(header.get("idle_time_limit") or 0.0)
        super().__init__(
            mode="replay",
            cols=int(header["width"]),
            rows=int(header["height"]),
            title=str(header.get("title") or Path(path).name),
            events=events,
            speed=speed,
            idle_time_limit=limit,
            phase="playing",
            **kwargs,
        )

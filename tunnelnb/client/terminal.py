"""An interactive terminal on a device's shell: keys in raw, terminal output out raw.

IoTDA's console has a web terminal (O&M → Remote Login) over the same tunnel;
this is its application side, for ``%tunnel shell`` (xterm.js in a notebook)
and ``tunnelnb shell`` (the local terminal).  While a :class:`Terminal` is
attached, the session is in state ATTACHED: the shell has echo, a prompt and a
real ``TERM`` (:func:`~tunnelnb.protocol.shell.interactive_script`), every key
goes to the PTY as a ``command`` frame, and everything the device prints goes
to ``on_output`` as bytes, untouched.  Framed commands on the session are
refused meanwhile (their rows are ``skipped``, saying so).  :meth:`Terminal.detach`
gives the shell back: the session re-syncs (the keys that leave full-screen
programs, else a new shell), so the next ``%%tunnel`` works.

What happens to the link happens to the terminal, said in one line to
``on_note``:

* the connection drops or the device leaves the tunnel: the session reconnects
  and logs in again (a new shell: what ran before is gone), within ``timeout``;
  else the terminal ends;
* the shell ends (``exit``, the device's ``disconnect``): the terminal ends, as
  ``ssh`` does;
* the session is closed (``%tunnel close``): the terminal ends.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import TerminalError, TunnelnbError
from ..protocol.shell import PTY_COLS, PTY_ROWS, interactive_script
from .result import ResultStatus
from .state import Event, SessionState

if TYPE_CHECKING:
    from .session import DeviceSession

__all__ = ["Terminal"]

log = logging.getLogger(__name__)

#: How long a detach may take to give the shell back to framed commands.
DETACH_TIMEOUT_S = 10.0


class Terminal:
    """A device's shell as an interactive terminal; made by :meth:`DeviceSession.attach`.

    It drives its session's shell side directly (lock, state, typed text): the two
    are one unit, split in two modules only for size.

    ``await terminal.send(keys)`` types, ``await terminal.detach()`` gives the
    shell back, ``await terminal.wait_closed()`` waits for the end, whoever ends it;
    ``terminal.end_reason`` then says why.
    """

    def __init__(
        self,
        session: DeviceSession,
        on_output: Callable[[bytes], None],
        on_note: Callable[[str], None] | None,
        *,
        rows: int = PTY_ROWS,
        cols: int = PTY_COLS,
        term: str = "xterm-256color",
        timeout: float = 30.0,
    ) -> None:
        self.session = session
        self.device_id = session.device_id
        self.rows, self.cols, self.term = rows, cols, term
        self.timeout = timeout
        self._on_output = on_output
        self._on_note = on_note
        self._keys = codecs.getincrementaldecoder("utf-8")("replace")
        self._closed = asyncio.Event()
        self._recovery: asyncio.Task[None] | None = None
        self.end_reason = ""

    def __repr__(self) -> str:
        state = f"ended: {self.end_reason}" if self.closed else "attached"
        return f"<Terminal {self.device_id} {self.cols}x{self.rows} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- the user's side ---------------------------------------------------

    async def send(self, keys: str | bytes) -> None:
        """Type ``keys`` (a string, or bytes from a terminal: UTF-8) into the device's PTY as they are."""
        text = self._keys.decode(keys) if isinstance(keys, bytes) else keys
        if not text:
            return
        if self.closed:
            raise TerminalError(f"the terminal to {self.device_id} has ended: {self.end_reason}")
        if self._recovery is not None:
            return  # reconnecting: keys typed into nothing are dropped, as a dead ssh drops them
        await self.session.send_keys(text)

    async def detach(self, timeout: float = DETACH_TIMEOUT_S) -> None:
        """Give the shell back to framed commands (``~.``, the widget's Detach button); idempotent."""
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recovery
        if not self.closed:
            self._end("detached")
            await self._leave(timeout)

    async def wait_closed(self) -> str:
        """Wait until the terminal ends (detached, the shell ended, the link gone); why it ended."""
        await self._closed.wait()
        return self.end_reason

    # -- the session's side --------------------------------------------------

    async def _enter(self) -> None:
        """READY → ATTACHED: the shell gets echo, a prompt, a ``TERM`` and this terminal's size."""
        session = self.session
        async with session._lock:
            if session._terminal is not None or session.state is SessionState.ATTACHED:
                raise TerminalError(f"a terminal is already attached to {self.device_id}", ResultStatus.SKIPPED)
            failed = await session._prepare(self.timeout)
            if failed is not None:
                raise TerminalError(failed[1], failed[0])
            session._process(Event.ATTACH)
            session._terminal = self
            try:
                await session._send_text(interactive_script(self.rows, self.cols, self.term))
            except TunnelnbError as exc:
                raise TerminalError(f"{self.device_id}: {exc}") from None

    async def _leave(self, timeout: float) -> None:
        """ATTACHED → RESYNC → READY: framing back on, a full-screen program left or a new shell (best effort)."""
        session = self.session
        if session._terminal is self:
            session._terminal = None
        async with session._lock:
            session._process_if(SessionState.ATTACHED, Event.DETACH)
            if session.state is SessionState.RESYNC:
                with contextlib.suppress(TimeoutError, TunnelnbError):
                    await session._resync(timeout)  # else the next run re-syncs

    def _received(self, data: str) -> None:
        """Terminal output from the device: raw bytes (the frames' lone surrogates are the device's bytes)."""
        try:
            self._on_output(data.encode("utf-8", "surrogateescape"))
        except Exception:  # the front end's problem must not kill the session's reader
            log.exception("terminal %s: on_output failed", self.device_id)

    def _left(self, state: SessionState) -> None:
        """The session left ATTACHED without a detach: the shell ended, or the link went."""
        if self.closed or self._recovery is not None:
            return
        if state is SessionState.CLOSED:
            self._end("the session was closed")
        elif state is SessionState.JOINED:  # disconnect: the shell is gone, the device is there
            self._end(f"the shell on {self.device_id} ended")
        else:
            self._note(f"the connection to {self.device_id} was lost: reconnecting")
            self._recovery = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        try:
            await self._enter()
        except (TunnelnbError, TimeoutError) as exc:
            self._recovery = None
            self._end(f"could not reconnect within {self.timeout:g} s: {exc}")
            return
        self._recovery = None
        self._note(f"reconnected to {self.device_id}: a new shell (what ran before is gone)")

    def _end(self, reason: str) -> None:
        if self.closed:
            return
        self.end_reason = reason
        self._closed.set()
        if reason != "detached":
            self._note(f"terminal ended: {reason}")

    def _note(self, text: str) -> None:
        log.info("terminal %s: %s", self.device_id, text)
        if self._on_note is not None:
            try:
                self._on_note(text)
            except Exception:
                log.exception("terminal %s: on_note failed", self.device_id)

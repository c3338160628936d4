"""The device terminal (``%tunnel shell DEVICE``): type a command, see its output live, in colour.

Commands run through :meth:`Fleet.run` on the device's persistent session; the
output is interpreted by :class:`~tunnelnb.notebook.ansi.TerminalScreen`, which
renders it as escaped HTML.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import re
import threading
import time
import warnings
from datetime import UTC, datetime
from typing import Any

import ipywidgets as widgets

from ...client.result import CommandResult, ResultStatus
from ...client.session import DeviceSession
from ...fleet.fleet import Fleet
from ..ansi import DEFAULT_BACKGROUND, TerminalScreen
from .loop import Coalescer, call_on_loop, close_all, fleet_loop, shorten

__all__ = ["HISTORY_SIZE", "TERMINAL_RENDER_S", "Terminal"]

#: Live terminal output is re-rendered at most this often.
TERMINAL_RENDER_S = 0.1
#: Commands kept in a terminal's history.
HISTORY_SIZE = 200

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """Control characters as ``^C`` or ``\\x9b``, so text from elsewhere cannot drive the screen."""

    def show(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"^{chr(code ^ 0x40)}" if code < 0x20 or code == 0x7F else f"\\x{code:02x}"

    return _CONTROL.sub(show, text)


class Terminal(widgets.VBox):
    """A terminal on one device: type a command, see its output live, in colour.

    Each line runs with :meth:`Fleet.run` on the device's session (a persistent
    shell: ``cd`` and variables carry over), one command at a time.  Ctrl-C
    interrupts the running command (the fleet sends Ctrl-C to the device);
    with nothing running, it is typed into the device's open session.  Not a
    full-screen terminal: programs that wait for keyboard input (``vi``, ``top``
    without ``-b``) get no input and end at the timeout.

    ``loop`` is the event loop the fleet's sessions run on; made in a notebook
    cell, the terminal finds it by itself (see :func:`.loop.fleet_loop`).
    """

    # False until __init__ has finished: Widget.__del__ closes a half-made widget too, and
    # then there is nothing of ours to stop.
    _constructed = False

    def __init__(
        self,
        fleet: Fleet,
        device_id: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout: float = 60.0,
        height: str = "360px",
        **kwargs: Any,
    ) -> None:
        loop = fleet_loop(loop, fleet)
        self.fleet = fleet
        self.device_id = device_id
        self.loop = loop
        self.timeout = timeout
        self.height = height
        self.screen = TerminalScreen()
        self.history: list[str] = []
        self.output = widgets.HTML(value=self._screen_html(), layout=widgets.Layout(width="100%"))
        self.input = widgets.Combobox(
            options=(),
            ensure_option=False,
            placeholder=f"command for {device_id} (Enter runs it)",
            layout=widgets.Layout(flex="1 1 auto", width="auto"),
        )
        # on_submit is the only event for Enter alone; ipywidgets 8 deprecates it in favour of
        # observing value with continuous_update=False, which would also run a half-typed
        # command when the box loses focus.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.input.on_submit(lambda _: self.submit(self.input.value))
        self.run_button = widgets.Button(description="Run", button_style="primary", tooltip="run the command")
        self.interrupt_button = widgets.Button(
            description="Ctrl-C", button_style="warning", tooltip="interrupt the running command"
        )
        self.clear_button = widgets.Button(description="Clear", tooltip="clear the screen")
        self.run_button.on_click(lambda _: self.submit(self.input.value))
        self.interrupt_button.on_click(lambda _: self.interrupt())
        self.clear_button.on_click(lambda _: self.clear())
        self.status_label = widgets.Label(value=f"{device_id}: ready")
        controls = widgets.HBox([self.input, self.run_button, self.interrupt_button, self.clear_button])
        super().__init__(children=[self.output, controls, self.status_label], **kwargs)
        self._lock = threading.Lock()
        self._command: str | None = None  # the command submitted and not finished yet
        self._task: asyncio.Future[Any] | None = None  # its Fleet.run, on the loop
        self._interrupt_requested = False
        self._background: set[asyncio.Task[Any]] = set()
        self._render_soon = Coalescer(loop, TERMINAL_RENDER_S, self._render)
        self._constructed = True

    @property
    def busy(self) -> bool:
        """Is a command submitted and not finished yet?"""
        return self._command is not None

    def submit(self, line: str) -> concurrent.futures.Future[CommandResult] | None:
        """Run ``line`` on the device; the future gets its row once the command is over.

        Returns None without running anything for a blank line, while another
        command is still running (the status label says so), or when the fleet's
        loop is gone.  Ctrl-C (:meth:`interrupt`) settles the future with a
        ``cancelled`` row; cancelling the future itself only works before the
        command has started.
        """
        command = line.strip()
        if not command:
            return None
        with self._lock:
            if self._command is not None:
                self._set_status(f"busy: {shorten(self._command, 40)} is still running (Ctrl-C stops it)")
                return None
            self._command = command
        self._remember(command)
        self.input.value = ""
        self._set_status(f"{self.device_id}: running {shorten(command, 60)}")
        future: concurrent.futures.Future[CommandResult] = concurrent.futures.Future()
        if not call_on_loop(self.loop, self._start, command, future):
            self._finish()
            self._set_status("the fleet's event loop is closed: connect again")
            return None
        return future

    def interrupt(self) -> None:
        """Ctrl-C: interrupt the running command, or type Ctrl-C into the device's open session."""
        call_on_loop(self.loop, self._interrupt)

    def clear(self) -> None:
        """Clear the screen (history stays)."""
        call_on_loop(self.loop, self._clear)

    def close(self) -> None:
        """Close the widget; a running command carries on until it ends or times out."""
        if self._constructed:
            self._render_soon.close()
        close_all(self)
        super().close()

    def _remember(self, command: str) -> None:
        if command in self.history:
            self.history.remove(command)
        self.history.insert(0, command)
        del self.history[HISTORY_SIZE:]
        self.input.options = tuple(self.history)

    def _set_status(self, text: str) -> None:
        self.status_label.value = text

    def _finish(self) -> None:
        self._task = None
        self._interrupt_requested = False
        with self._lock:
            self._command = None

    # On the fleet's loop from here on.

    def _start(self, command: str, future: concurrent.futures.Future[CommandResult]) -> None:
        task = self.loop.create_task(self._run(command, future), name=f"tunnelnb-terminal-{self.device_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, command: str, future: concurrent.futures.Future[CommandResult]) -> None:
        """Run the command and settle ``future``, after the terminal is ready for the next one."""
        if not future.set_running_or_notify_cancel():
            self._finish()
            self._set_status(f"{self.device_id}: {shorten(command, 40)} was cancelled before it started")
            return
        try:
            result = await self._execute(command)
        except (Exception, asyncio.CancelledError) as exc:
            self._finish()
            self._render_soon.now()
            future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._finish()
        self._render_soon.now()
        future.set_result(result)

    async def _execute(self, command: str) -> CommandResult:
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        first, *more = command.split("\n")
        self.screen.fresh_line()
        echo = "\n".join([f"$ {_printable(first)}", *(f"> {_printable(line)}" for line in more)])
        self.screen.feed(f"\x1b[0;1m{echo}\x1b[0m\n")
        self._render_soon.now()
        task = asyncio.ensure_future(
            self.fleet.run(command, self.device_id, timeout=self.timeout, on_output=self._on_output)
        )
        self._task = task
        if self._interrupt_requested:  # Ctrl-C came before the command started
            task.cancel()
        try:
            results = await task
            result = results[self.device_id]
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this terminal's run itself is cancelled (the loop is shutting down)
            result = CommandResult(
                self.device_id,
                command,
                ResultStatus.CANCELLED,
                None,
                "",
                time.perf_counter() - t0,
                started_at,
                "interrupted (Ctrl-C)",
            )
        except Exception as exc:
            self._note(f"[error: {exc}]")
            self._set_status(f"{self.device_id}: {exc}")
            raise
        self._after(result)
        return result

    def _after(self, result: CommandResult) -> None:
        if result.status == ResultStatus.OK and result.exit_code == 0:
            self._set_status(f"{self.device_id}: exit 0 · {result.duration_s:.2f} s")
            return
        if result.status == ResultStatus.ERROR and result.exit_code is not None:
            note = f"exit {result.exit_code}"
        else:
            note = f"{result.status}: {result.error}" if result.error else result.status
        self._note(f"[{note}]")
        self._set_status(f"{self.device_id}: {shorten(note, 120)} · {result.duration_s:.2f} s")

    def _note(self, text: str) -> None:
        """A dim line of our own after the command's output."""
        self.screen.fresh_line()
        self.screen.feed(f"\x1b[0;2m{_printable(text)}\x1b[0m\n")

    def _on_output(self, device_id: str, text: str) -> None:
        self.screen.feed(text)
        self._render_soon.request()

    def _interrupt(self) -> None:
        if self._command is not None:
            self._interrupt_requested = True
            if self._task is not None and not self._task.done():
                self._task.cancel()
            self._set_status(f"{self.device_id}: Ctrl-C, stopping {shorten(self._command, 40)}")
            return
        session = self.fleet.session(self.device_id)
        if session is None or session.closed:
            self._set_status(f"{self.device_id}: nothing running, and no open session to send Ctrl-C to")
            return
        task = self.loop.create_task(self._send_ctrl_c(session))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_ctrl_c(self, session: DeviceSession) -> None:
        try:
            await session.send_keys("\x03")
        except Exception as exc:
            self._set_status(f"{self.device_id}: Ctrl-C not sent: {exc}")
        else:
            self._set_status(f"{self.device_id}: sent Ctrl-C to the shell")

    def _clear(self) -> None:
        self.screen.clear()
        self._render_soon.now()

    def _render(self) -> None:
        self.output.value = self._screen_html()

    def _screen_html(self) -> str:
        # column-reverse keeps the scroll position at the bottom as output grows.
        return (
            f'<div class="tunnelnb-terminal-box" style="max-height:{html.escape(self.height)};overflow-y:auto;'
            f'display:flex;flex-direction:column-reverse;background:{DEFAULT_BACKGROUND};border-radius:4px">'
            f"{self.screen.to_html()}</div>"
        )

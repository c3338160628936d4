"""Notebook widgets over a :class:`~tunnelnb.fleet.fleet.Fleet`: a live dashboard, a device terminal, a device picker.

They are thin front ends: state and work stay in the fleet.  The fleet's
sessions belong to one event loop, either the kernel's own (running in this
thread between cells) or a loop in a thread of its own, so a widget hands it
work with :func:`asyncio.run_coroutine_threadsafe` and
:meth:`~asyncio.AbstractEventLoop.call_soon_threadsafe`, which work in both
cases.  Widgets show things only by setting traits (``HTML.value``,
``Label.value``), never by printing or ``with output:``, because callbacks run
long after the cell that displayed the widget, and only traits reach wherever
the widget is displayed.

Device output is untrusted: everything a device (or a command line) contributes
to HTML is escaped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ..client.session import CommandResult, DeviceSession, ResultStatus
from ..fleet.fleet import Fleet
from ..fleet.results import _OTHER_COLOUR, _STATUS_COLOURS
from .ansi import DEFAULT_BACKGROUND, TerminalScreen

__all__ = ["ANY_TAG", "DevicePicker", "FleetDashboard", "Targets", "Terminal"]

log = logging.getLogger("tunnelnb.notebook.widgets")

#: A burst of fleet events (a run starting on 100 devices) becomes one re-render after this long.
COALESCE_S = 0.2
#: Live terminal output is re-rendered at most this often.
TERMINAL_RENDER_S = 0.1
#: Commands kept in a terminal's history.
HISTORY_SIZE = 200

_YES = ("#155724", "yes")
_NO = ("#6c757d", "no")


# -- the fleet's loop, from any thread -------------------------------------------------


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _call_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """Run ``fn(*args)`` on the loop's thread: now if this is it, else soon.  False when the loop is closed."""
    if _on_loop_thread(loop):
        fn(*args)
        return True
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: there is nothing left to update
        return False
    return True


class _Coalescer:
    """Calls ``fn`` on the loop at most once per ``delay`` seconds, however often it is asked.

    A run on many devices changes state hundreds of times a second; the browser
    needs to see the result a few times a second, not every step.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, fn: Callable[[], None]) -> None:
        self._loop = loop
        self._delay = delay
        self._fn = fn
        self._handle: asyncio.TimerHandle | None = None
        self._closed = False

    def request(self) -> None:
        """Ask for a call; from any thread."""
        _call_on_loop(self._loop, self._request)

    def now(self) -> None:
        """Call at once (on the loop's thread), dropping a pending call."""
        self._cancel()
        self._call()

    def close(self) -> None:
        """No more calls; from any thread."""
        self._closed = True
        _call_on_loop(self._loop, self._cancel)

    def _request(self) -> None:
        if self._handle is None and not self._closed:
            self._handle = self._loop.call_later(self._delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._call()

    def _call(self) -> None:
        if self._closed:
            return
        try:
            self._fn()
        except Exception:  # a display must not break the loop it runs on
            log.exception("widget update failed")

    def _cancel(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()


def _close_all(box: widgets.Box) -> None:
    """Close a box's widgets, nested boxes included (``Box.close`` leaves its children open)."""
    for child in box.children:
        if isinstance(child, widgets.Box):
            _close_all(child)
        child.close()


def _shorten(text: str, limit: int) -> str:
    """The first line of ``text``, cut to ``limit`` characters, with … when anything was left out."""
    first, _, rest = text.strip().partition("\n")
    if len(first) > limit:
        return first[: limit - 1] + "…"
    return first + " …" if rest else first


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- the dashboard ---------------------------------------------------------------------------


class FleetDashboard(widgets.VBox):
    """The fleet at a glance, live: one row per device, updated as runs start and end.

    Follows :meth:`Fleet.watch` (bursts coalesced into one re-render per
    :data:`COALESCE_S`) and re-renders every ``refresh_s`` seconds as well, because
    a session can change state (a device leaves, a tunnel drops) without the fleet
    being told.  :meth:`close` stops both.
    """

    def __init__(
        self, fleet: Fleet, *, loop: asyncio.AbstractEventLoop, refresh_s: float = 2.0, **kwargs: Any
    ) -> None:
        if refresh_s <= 0:
            raise ValueError("refresh_s must be positive")
        self.fleet = fleet
        self.loop = loop
        self.refresh_s = refresh_s
        initial = self.render_html() if _on_loop_thread(loop) else '<div class="tunnelnb-dashboard">…</div>'
        self.html = widgets.HTML(value=initial, layout=widgets.Layout(width="100%"))
        super().__init__(children=[self.html], **kwargs)
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._render_soon = _Coalescer(loop, COALESCE_S, self._render)
        self._unwatch: Callable[[], None] | None = fleet.watch(self._on_change)
        _call_on_loop(loop, self._tick)

    def render_html(self) -> str:
        """The dashboard's HTML from :meth:`Fleet.status` (no side effects; call it on the fleet's loop)."""
        df = self.fleet.status()
        running = df["running"].notna()
        header = " · ".join(
            [
                _plural(len(df), "device"),
                f"{int(df['online'].sum())} online",
                f"{int(df['logged_in'].sum())} logged in",
                f"{int(running.sum())} running",
            ]
        )
        esc = html.escape
        names = ["device", "online", "tunnel", "logged in", "running", "last status", "exit", "duration"]
        out = [
            '<div class="tunnelnb-dashboard">',
            f'<div class="tunnelnb-header" style="margin:0 0 4px 0">{esc(header)}</div>',
            '<table class="dataframe tunnelnb-table"><thead><tr>',
            *(f'<th style="text-align:left">{name}</th>' for name in names),
            "</tr></thead><tbody>",
        ]
        for row in df.itertuples(index=False):
            command = row.running if isinstance(row.running, str) else ""
            status = row.last_status if isinstance(row.last_status, str) else ""
            exit_code = "" if pd.isna(row.last_exit_code) else str(int(row.last_exit_code))
            duration = "" if pd.isna(row.last_duration_s) else f"{float(row.last_duration_s):.2f} s"
            if status:
                background, colour = _STATUS_COLOURS.get(status, _OTHER_COLOUR)
                status_cell = (
                    f'<td class="tunnelnb-status tunnelnb-status-{esc(status)}" '
                    f'style="background:{background};color:{colour}">{esc(status)}</td>'
                )
            else:
                status_cell = "<td></td>"
            running_cell = (
                f'<td style="text-align:left" title="{esc(command)}"><code>{esc(_shorten(command, 40))}</code></td>'
                if command
                else "<td></td>"
            )
            cells = [
                f'<td style="text-align:left">{esc(str(row.device_id))}</td>',
                _yes_no(bool(row.online)),
                f"<td>{esc(str(row.tunnel))}</td>",
                _yes_no(bool(row.logged_in)),
                running_cell,
                status_cell,
                f"<td>{exit_code}</td>",
                f"<td>{duration}</td>",
            ]
            out.append(f'<tr data-device="{esc(str(row.device_id))}">' + "".join(cells) + "</tr>")
        if df.empty:
            out.append(f'<tr><td colspan="{len(names)}">no devices: fleet.refresh() reads the inventory</td></tr>')
        out.append("</tbody></table></div>")
        return "\n".join(out)

    def close(self) -> None:
        """Stop following the fleet and the periodic refresh, then close the widget."""
        if not self._closed:
            self._closed = True
            unwatch, self._unwatch = self._unwatch, None
            if unwatch is not None:
                unwatch()
            self._render_soon.close()
            _call_on_loop(self.loop, self._stop_timer)
            _close_all(self)
        super().close()

    # On the fleet's loop from here on.

    def _on_change(self, device_id: str | None) -> None:
        self._render_soon.request()

    def _render(self) -> None:
        if not self._closed:
            self.html.value = self.render_html()

    def _tick(self) -> None:
        if self._closed:
            return
        try:
            self._render()
        except Exception:
            log.exception("dashboard refresh failed")
        self._timer = self.loop.call_later(self.refresh_s, self._tick)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


def _yes_no(value: bool) -> str:
    colour, word = _YES if value else _NO
    return f'<td style="color:{colour}">{word}</td>'


# -- the terminal ----------------------------------------------------------------------------

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
    """

    def __init__(
        self,
        fleet: Fleet,
        device_id: str,
        *,
        loop: asyncio.AbstractEventLoop,
        timeout: float = 60.0,
        height: str = "360px",
        **kwargs: Any,
    ) -> None:
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
        self._render_soon = _Coalescer(loop, TERMINAL_RENDER_S, self._render)

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
                self._set_status(f"busy: {_shorten(self._command, 40)} is still running (Ctrl-C stops it)")
                return None
            self._command = command
        self._remember(command)
        self.input.value = ""
        self._set_status(f"{self.device_id}: running {_shorten(command, 60)}")
        future: concurrent.futures.Future[CommandResult] = concurrent.futures.Future()
        if not _call_on_loop(self.loop, self._start, command, future):
            self._finish()
            self._set_status("the fleet's event loop is closed: connect again")
            return None
        return future

    def interrupt(self) -> None:
        """Ctrl-C: interrupt the running command, or type Ctrl-C into the device's open session."""
        _call_on_loop(self.loop, self._interrupt)

    def clear(self) -> None:
        """Clear the screen (history stays)."""
        _call_on_loop(self.loop, self._clear)

    def close(self) -> None:
        """Close the widget; a running command carries on until it ends or times out."""
        self._render_soon.close()
        _close_all(self)
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
            self._set_status(f"{self.device_id}: {_shorten(command, 40)} was cancelled before it started")
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
        self._set_status(f"{self.device_id}: {_shorten(note, 120)} · {result.duration_s:.2f} s")

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
            self._set_status(f"{self.device_id}: Ctrl-C, stopping {_shorten(self._command, 40)}")
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


# -- the device picker ---------------------------------------------------------------------

#: The tag filter's "no filter" choice.
ANY_TAG = "(any tag)"


class Targets(tuple[str, ...]):
    """Device ids picked in a :class:`DevicePicker`: a tuple, and as text the ids joined by spaces.

    So ``%%tunnel $picker.value`` in a notebook expands to ``device-01 device-02``,
    and ``fleet.run(cmd, picker.value)`` takes it as a list of ids.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return " ".join(self)

    def __repr__(self) -> str:
        return f"Targets{tuple.__repr__(self)}"


class DevicePicker(widgets.VBox):
    """Pick devices from the inventory by tag and status; :attr:`value` is the ids picked.

    Reads the inventory the fleet already has (:meth:`Fleet.devices`); call
    :meth:`refresh` after ``await fleet.refresh()``.  Changing a filter keeps the
    picked devices that still match it.
    """

    def __init__(self, fleet: Fleet, **kwargs: Any) -> None:
        self.fleet = fleet
        self._inventory: list[tuple[str, bool, frozenset[str]]] = []
        self.tag_filter = widgets.Dropdown(options=[ANY_TAG], value=ANY_TAG, description="tag")
        self.status_filter = widgets.ToggleButtons(options=["all", "online", "offline"], value="all")
        self.selector = widgets.SelectMultiple(options=(), rows=10, description="devices")
        self.all_button = widgets.Button(description="select all")
        self.none_button = widgets.Button(description="none")
        self.count_label = widgets.Label()
        super().__init__(
            children=[
                widgets.HBox([self.tag_filter, self.status_filter]),
                self.selector,
                widgets.HBox([self.all_button, self.none_button, self.count_label]),
            ],
            **kwargs,
        )
        self.tag_filter.observe(self._filter, "value")
        self.status_filter.observe(self._filter, "value")
        self.selector.observe(self._count, "value")
        self.all_button.on_click(lambda _: self.select_all())
        self.none_button.on_click(lambda _: self.select_none())
        self.refresh()

    @property
    def value(self) -> Targets:
        """The picked device ids, in inventory order."""
        return Targets(self.selector.value)

    def refresh(self) -> None:
        """Read the fleet's inventory again (tags and online status may have changed)."""
        inventory = self.fleet.devices()
        self._inventory = [
            (
                str(row.device_id),
                row.status == "ONLINE",
                frozenset(f"{k}={'' if v is None else v}" for k, v in (row.tags or {}).items()),
            )
            for row in inventory.itertuples(index=False)
        ]
        tags = sorted(set().union(*(tags for _, _, tags in self._inventory)))
        current = self.tag_filter.value
        self.tag_filter.options = [ANY_TAG, *tags]
        self.tag_filter.value = current if current in tags else ANY_TAG
        self._filter()

    def select_all(self) -> None:
        """Pick every device the filters show."""
        self.selector.value = tuple(self.selector.options)

    def select_none(self) -> None:
        self.selector.value = ()

    def matching(self) -> list[str]:
        """The ids the current filters let through, in inventory order."""
        tag, state = self.tag_filter.value, self.status_filter.value
        return [
            device_id
            for device_id, online, tags in self._inventory
            if (tag == ANY_TAG or tag in tags) and (state == "all" or online == (state == "online"))
        ]

    def _filter(self, change: object = None) -> None:
        picked = set(self.selector.value)
        ids = self.matching()
        if tuple(ids) != tuple(self.selector.options):
            self.selector.options = ids  # unpicks everything
            self.selector.value = tuple(d for d in ids if d in picked)
        self._count()

    def _count(self, change: object = None) -> None:
        self.count_label.value = f"{len(self.selector.value)} of {len(self.selector.options)} picked"


"""The live fleet dashboard (``%tunnel status``): one row per device, re-rendered as the fleet changes.

It reads only :meth:`Fleet.status` and follows :meth:`Fleet.watch`; what a
device contributes to the table (ids, commands, statuses) is escaped.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ...fleet.fleet import Fleet
from ...fleet.results import OTHER_COLOUR, STATUS_COLOURS
from .loop import Coalescer, call_on_loop, close_all, fleet_loop, on_loop_thread, shorten

__all__ = ["COALESCE_S", "FleetDashboard"]

log = logging.getLogger(__name__)

#: A burst of fleet events (a run starting on 100 devices) becomes one re-render after this long.
COALESCE_S = 0.2

_YES = ("#155724", "yes")
_NO = ("#6c757d", "no")
#: Header cells: padded and ruled, so the column names read as columns, not one run-on line
#: (JupyterLab's table style leaves th without padding inside an HTML widget).
TH_STYLE = (
    "text-align:left;padding:2px 10px;border-bottom:1px solid #999;border-right:1px solid #ddd;white-space:nowrap"
)


class FleetDashboard(widgets.VBox):
    """The fleet at a glance, live: one row per device, updated as runs start and end.

    Follows :meth:`Fleet.watch` (bursts coalesced into one re-render per
    :data:`COALESCE_S`) and re-renders every ``refresh_s`` seconds as well, because
    a session can change state (a device leaves, a tunnel drops) without the fleet
    being told.  :meth:`close` stops both.

    ``loop`` is the event loop the fleet's sessions run on; made in a notebook
    cell, the dashboard finds it by itself (see :func:`.loop.fleet_loop`).
    """

    # True until __init__ has set things up: Widget.__del__ closes a half-made widget too, and
    # then there is nothing of ours to stop.
    _closed = True

    def __init__(
        self, fleet: Fleet, *, loop: asyncio.AbstractEventLoop | None = None, refresh_s: float = 2.0, **kwargs: Any
    ) -> None:
        if refresh_s <= 0:
            raise ValueError("refresh_s must be positive")
        loop = fleet_loop(loop, fleet)
        self.fleet = fleet
        self.loop = loop
        self.refresh_s = refresh_s
        initial = self.render_html() if on_loop_thread(loop) else '<div class="tunnelnb-dashboard">…</div>'
        self.html = widgets.HTML(value=initial, layout=widgets.Layout(width="100%"))
        super().__init__(children=[self.html], **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._render_soon = Coalescer(loop, COALESCE_S, self._render)
        self._unwatch: Callable[[], None] | None = fleet.watch(self._on_change)
        self._closed = False
        call_on_loop(loop, self._tick)

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
            *(f'<th style="{TH_STYLE}">{name}</th>' for name in names),
            "</tr></thead><tbody>",
        ]
        for row in df.itertuples(index=False):
            command = row.running if isinstance(row.running, str) else ""
            status = row.last_status if isinstance(row.last_status, str) else ""
            exit_code = "" if pd.isna(row.last_exit_code) else str(int(row.last_exit_code))
            duration = "" if pd.isna(row.last_duration_s) else f"{float(row.last_duration_s):.2f} s"
            if status:
                background, colour = STATUS_COLOURS.get(status, OTHER_COLOUR)
                status_cell = (
                    f'<td class="tunnelnb-status tunnelnb-status-{esc(status)}" '
                    f'style="background:{background};color:{colour}">{esc(status)}</td>'
                )
            else:
                status_cell = "<td></td>"
            running_cell = (
                f'<td style="text-align:left" title="{esc(command)}"><code>{esc(shorten(command, 40))}</code></td>'
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
            call_on_loop(self.loop, self._stop_timer)
            close_all(self)
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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"

"""The notebook's progress bar for a ``%%tunnel`` run.

It lives here, not with the text progress in :mod:`tunnelnb.fleet.progress`,
because it is made of ipywidgets and displayed in a cell: the fleet knows
nothing of notebooks.  The counting is shared (:class:`ProgressCounts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from ..client.result import CommandResult
from ..fleet.progress import ProgressCounts, TextProgress

__all__ = ["CellProgress", "WidgetProgress", "cell_progress"]

T = TypeVar("T")


class WidgetProgress(ProgressCounts):
    """An ipywidgets progress bar (done / total, with ok, failed and skipped counts) for notebooks.

    Quick runs show nothing: the bar is made and displayed, in the cell that
    started the run, only once the run has lasted ``after_s`` seconds (a loop
    timer calls :meth:`show`).  When the run ends the bar is removed from the
    output and its widgets are closed, since the results table says the same:
    the saved notebook keeps no widget state and no timing-dependent output.
    """

    def __init__(self, total: int, *, after_s: float = 2.0) -> None:
        super().__init__(total)
        self.after_s = after_s
        self.bar: Any = None
        self.label: Any = None
        self._handle: Any = None

    @property
    def shown(self) -> bool:
        return self._handle is not None

    def update(self, row: CommandResult) -> None:
        super().update(row)
        if self.bar is not None:
            self.bar.value = self.done
            self.label.value = self.line()
            if self.skipped:  # a rolling run stopped: its budget is spent or a canary failed
                self.bar.bar_style = "danger"
            elif self.failed:
                self.bar.bar_style = "warning"

    def show(self) -> None:
        """Display the bar now, unless the run is already over."""
        if self.shown or self.done >= self.total:
            return
        import ipywidgets as widgets
        from IPython.display import display

        self.bar = widgets.IntProgress(value=self.done, min=0, max=max(self.total, 1), bar_style="info")
        self.label = widgets.HTML(self.line())
        self._box = widgets.HBox([self.bar, self.label])
        self._handle = display(self._box, display_id=True)

    def close(self) -> None:
        if self._handle is None:
            return
        self._handle.update({}, raw=True)  # the output stays, empty: nothing to save or compare
        self._box.close()
        self.bar.close()
        self.label.close()
        self._handle = self.bar = self.label = None


class CellProgress:
    """What a magic's run shows while devices finish: :class:`WidgetProgress` in a notebook, else a line on stderr."""

    def __init__(self, progress: WidgetProgress | TextProgress) -> None:
        self.progress = progress

    def update(self, row: CommandResult) -> None:
        self.progress.update(row)

    async def around(self, work: Awaitable[T]) -> T:
        """Await ``work`` (on the fleet's loop) with the text progress line refreshing meanwhile."""
        progress = self.progress
        shower = asyncio.ensure_future(progress.show()) if isinstance(progress, TextProgress) else None
        try:
            return await work
        finally:
            if shower is not None:
                shower.cancel()


@contextlib.contextmanager
def cell_progress(
    total: int, loop: asyncio.AbstractEventLoop, *, in_kernel: bool, after_s: float
) -> Iterator[CellProgress]:
    """The progress of a run on ``total`` devices, shown once it has lasted ``after_s`` seconds; closed after."""
    progress: WidgetProgress | TextProgress
    timer: asyncio.TimerHandle | None = None
    if in_kernel:
        progress = WidgetProgress(total, after_s=after_s)
        timer = loop.call_later(after_s, progress.show)
    else:
        progress = TextProgress(total, sys.stderr, after_s=after_s)
    try:
        yield CellProgress(progress)
    finally:
        if timer is not None:
            loop.call_soon_threadsafe(timer.cancel)
        progress.close()

"""What front ends show while a run is going: labelled live output and progress.

Shared by the magics and ``tunnelnb run``.  Everything here is fed from the
fleet's callbacks (``on_output``, ``on_result``) and never decides anything
about devices.
"""

from __future__ import annotations

import asyncio
from typing import Any, TextIO

from ..client.session import CommandResult

__all__ = ["LiveOutput", "TextProgress", "WidgetProgress"]

_LABEL_COLOUR = "\x1b[36m"  # cyan: stands apart from device output, readable on light and dark themes
_RESET = "\x1b[0m"
_ESC = "\x1b"


class LiveOutput:
    """Device output as it arrives, one complete line at a time, each labelled by its device.

    Lines from different devices interleave but never mix: a device's partial
    line waits for its newline (or the end of that device's command).  After
    ``max_lines`` lines the rest is summarised, so a thousand chatty devices
    cannot flood a notebook; the results table still has everything.
    """

    def __init__(
        self, stream: TextIO, device_ids: list[str], *, max_lines: int = 1000, colour: bool = True
    ) -> None:
        self.stream = stream
        self.max_lines = max_lines
        self.lines = 0
        self.dropped = 0
        self._width = max((len(d) for d in device_ids), default=0)
        self._partial: dict[str, str] = {}
        self._colour = colour

    def write(self, device_id: str, text: str) -> None:
        """``on_output`` callback: buffer ``text`` and print the complete lines."""
        buffered = self._partial.pop(device_id, "") + text
        *lines, rest = buffered.split("\n")
        if rest:
            self._partial[device_id] = rest
        self._emit(device_id, lines)

    def finish(self, device_id: str) -> None:
        """The device's command is done: print what is left of its last line."""
        rest = self._partial.pop(device_id, "")
        if rest:
            self._emit(device_id, [rest])

    def close(self) -> None:
        """Print every device's pending partial line, and how much was left out."""
        for device_id in list(self._partial):
            self.finish(device_id)
        if self.dropped:
            self.stream.write(f"… {self.dropped} more lines not shown live: see the results table\n")
            self.dropped = 0
        self.stream.flush()

    def _emit(self, device_id: str, lines: list[str]) -> None:
        if not lines:
            return
        room = max(self.max_lines - self.lines, 0)
        shown, self.dropped = lines[:room], self.dropped + max(len(lines) - room, 0)
        if not shown:
            return
        label = device_id.ljust(self._width)
        if self._colour:
            label = f"{_LABEL_COLOUR}{label}{_RESET}"
        # A line that set a colour gets a reset, so the next label is not painted with it.
        self.stream.write("".join(f"{label} │ {line}{_RESET if _ESC in line else ''}\n" for line in shown))
        self.stream.flush()
        self.lines += len(shown)


class _Counts:
    def __init__(self, total: int) -> None:
        self.total = total
        self.ok = self.failed = 0

    def update(self, row: CommandResult) -> None:
        if row.ok:
            self.ok += 1
        else:
            self.failed += 1

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def line(self) -> str:
        return f"[{self.done}/{self.total}] {self.ok} ok, {self.failed} failed"


class TextProgress(_Counts):
    """``[12/50] 10 ok, 2 failed`` on a text stream: rewritten in place on a terminal, a line every 5 s otherwise."""

    def __init__(self, total: int, stream: TextIO, *, after_s: float = 1.0) -> None:
        super().__init__(total)
        self.stream = stream
        self.after_s = after_s
        self._tty = stream.isatty()
        self._shown = False

    async def show(self) -> None:
        """Run as a task for the length of the run; cancel it when the run ends."""
        await asyncio.sleep(self.after_s)
        while True:
            if self._tty:
                self.stream.write("\r" + self.line())
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._shown = True
            await asyncio.sleep(0.2 if self._tty else 5.0)

    def close(self) -> None:
        if self._shown and self._tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()


class WidgetProgress(_Counts):
    """An ipywidgets progress bar (done / total, with ok and failed counts) for notebooks.

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
            if self.failed:
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

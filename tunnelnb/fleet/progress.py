"""What front ends show while a run is going: labelled live output and progress.

Shared by the magics and ``tunnelnb run``; the notebook's progress bar
(:mod:`tunnelnb.notebook.progress`) builds on :class:`ProgressCounts`.
Everything here is fed from the fleet's callbacks (``on_output``,
``on_result``) and never decides anything about devices.
"""

from __future__ import annotations

import asyncio
from typing import TextIO

from ..client.result import CommandResult, ResultStatus
from .tables import byte_size, is_binary

__all__ = ["LiveOutput", "ProgressCounts", "TextProgress"]

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

    def __init__(self, stream: TextIO, device_ids: list[str], *, max_lines: int = 1000, colour: bool = True) -> None:
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
        # Binary output (``head -c 1000 /dev/urandom``) is said, never sent to the terminal as it is.
        shown = [f"[binary output, {byte_size(line)} bytes]" if is_binary(line) else line for line in shown]
        label = device_id.ljust(self._width)
        if self._colour:
            label = f"{_LABEL_COLOUR}{label}{_RESET}"
        # A line that set a colour gets a reset, so the next label is not painted with it.
        self.stream.write("".join(f"{label} │ {line}{_RESET if _ESC in line else ''}\n" for line in shown))
        self.stream.flush()
        self.lines += len(shown)


class ProgressCounts:
    """Done, ok and failed out of a total, as ``[12/50] 10 ok, 2 failed``: the base of every progress display.

    Devices a rolling run never started (``skipped``) are done but neither ok nor
    failed: ``[50/50] 10 ok, 2 failed, 38 skipped``.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.ok = self.failed = self.skipped = 0

    def update(self, row: CommandResult) -> None:
        if row.ok:
            self.ok += 1
        elif row.status == ResultStatus.SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.skipped

    def line(self) -> str:
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return f"[{self.done}/{self.total}] {self.ok} ok, {self.failed} failed{skipped}"


class TextProgress(ProgressCounts):
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

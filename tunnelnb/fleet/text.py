"""Results as plain text: what terminal IPython, ``print`` and logs show.

A notebook gets :meth:`Results.to_html`; a terminal has only ``repr``, so the
same facts must fit in text: one header line, then one aligned row per device
with its status, exit code, duration, the gist of its output and the reason it
failed.  No ``None``/``NaN``/``<NA>`` (an absent value is blank), durations as
``0.02 s``, and wide cells cut with "…" so one chatty device cannot push the
others off the screen.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..client.result import CommandResult

__all__ = ["clip", "one_line", "results_table"]

#: Widest output and error cells, in characters.
STDOUT_WIDTH = 40
ERROR_WIDTH = 60


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one "…" when something was left out."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def one_line(text: str | None, width: int) -> str:
    """Multi-line output as one line: lines joined with " ⏎ ", blank edges dropped, then clipped."""
    lines = [line.rstrip() for line in (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    shown = " ⏎ ".join(line for line in lines if line.strip())
    return clip(shown.strip(), width)


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # NaN
        return ""
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def results_table(results: Sequence[CommandResult], *, show_command: bool, max_rows: int | None = None) -> list[str]:
    """The rows of the text table, header first, columns padded to their widest cell.

    Columns: device_id, (command when the results ran different ones), status,
    exit, duration, stdout (one line), error.  Beyond ``max_rows`` a last line
    counts the rest.
    """
    names = ["device_id", *(["command"] if show_command else []), "status", "exit", "duration", "stdout", "error"]
    shown = results if max_rows is None else results[:max_rows]
    rows = []
    for r in shown:
        cells = [str(r.device_id)]
        if show_command:
            cells.append(one_line(r.command, 30))
        cells += [
            r.status or "",
            "" if r.exit_code is None else str(r.exit_code),
            _duration(r.duration_s),
            one_line(r.stdout, STDOUT_WIDTH),
            one_line(r.error, ERROR_WIDTH),
        ]
        rows.append(cells)
    widths = [max(len(name), *(len(row[i]) for row in rows)) if rows else len(name) for i, name in enumerate(names)]
    right = {names.index("exit"), names.index("duration")}

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded).rstrip()

    out = [line(names), *(line(row) for row in rows)]
    if max_rows is not None and len(results) > max_rows:
        out.append(f"… {len(results) - max_rows} more rows: see .df")
    return out

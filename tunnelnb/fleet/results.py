"""What a command did on many devices, as one table (docs/architecture.md, "Results and targets").

:class:`Results` wraps the :class:`~tunnelnb.client.session.CommandResult` of each device.
Its :attr:`~Results.df` has a fixed schema (:data:`COLUMNS`), because notebooks and
scripts index it by name; failures are rows with a status, not exceptions.
:meth:`~Results.groups` answers the usual fleet question, "which devices differ?",
and the notebook display shows counts by status and the untrusted device output
escaped and truncated.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import pandas as pd

from ..client.result import CommandResult, ResultStatus
from .drift import Drift, IgnorePatterns, Outliers, diff_results, find_outliers
from .parsers import parse_results
from .tables import output_text
from .text import one_line, results_table

__all__ = ["COLUMNS", "OTHER_COLOUR", "STATUS_COLOURS", "STATUS_GROUPS", "STATUS_ORDER", "Results", "normalise_output"]

COLUMNS = ("device_id", "command", "status", "exit_code", "stdout", "duration_s", "started_at", "error")
"""The columns of :attr:`Results.df`, in order.

``exit_code`` is nullable ``Int64`` (no code when the command never finished),
``duration_s`` ``float64``, ``started_at`` ``datetime64[us, UTC]`` (naive datetimes are
taken as UTC); the other columns are pandas' default string dtype (``object`` in
pandas 2, ``str`` in pandas 3), never missing: an absent message is ``""``.
"""

STARTED_AT_DTYPE = pd.DatetimeTZDtype("us", "UTC")

STATUS_ORDER = (
    ResultStatus.OK,
    ResultStatus.ERROR,
    ResultStatus.TIMEOUT,
    ResultStatus.OFFLINE,
    ResultStatus.AUTH_FAILED,
    ResultStatus.DISCONNECTED,
    ResultStatus.CANCELLED,
    ResultStatus.SKIPPED,
)

#: How the header groups the statuses: a non-zero exit is a command that ran and said no,
#: which is a different fact from a device that never ran it (offline, wrong password).
STATUS_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ran", (ResultStatus.OK, ResultStatus.ERROR)),
    ("did not finish", (ResultStatus.TIMEOUT, ResultStatus.DISCONNECTED, ResultStatus.CANCELLED)),
    ("did not run", (ResultStatus.OFFLINE, ResultStatus.AUTH_FAILED)),
    ("not started", (ResultStatus.SKIPPED,)),
)

#: Status cell colours of the notebook tables (results, dashboard): (background, text).
STATUS_COLOURS = {
    ResultStatus.OK: ("#d4edda", "#155724"),
    ResultStatus.ERROR: ("#f8d7da", "#721c24"),
    ResultStatus.TIMEOUT: ("#fff3cd", "#856404"),
    ResultStatus.OFFLINE: ("#e2e3e5", "#383d41"),
    ResultStatus.AUTH_FAILED: ("#f5c6cb", "#491217"),
    ResultStatus.DISCONNECTED: ("#ffe5d0", "#7a3e00"),
    ResultStatus.CANCELLED: ("#e2e3e5", "#383d41"),
    ResultStatus.SKIPPED: ("#f8f9fa", "#6c757d"),
}
#: The colours of a status not in :data:`STATUS_COLOURS`.
OTHER_COLOUR = ("#e2e3e5", "#383d41")


def normalise_output(text: str | None) -> str:
    """Output as compared across devices: LF line ends, no trailing blanks, no blank edges.

    Devices that printed the same thing often differ in exactly these (a PTY's
    ``\\r\\n``, padding, a final newline), which says nothing about the device.
    """
    lines = (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _first_line(text: str, limit: int = 60) -> str:
    """The gist of an output for one line of summary: its first line, cut, with … when shortened."""
    first, _, rest = text.partition("\n")
    if len(first) > limit:
        return first[:limit] + "…"
    return first + "…" if rest else first


def _common_prefix_lines(outputs: list[list[str]]) -> int:
    """How many leading lines all ``outputs`` share, leaving each at least one line of its own."""
    n = 0
    shortest = min(len(lines) for lines in outputs)
    while n < shortest - 1 and all(lines[n] == outputs[0][n] for lines in outputs):
        n += 1
    return n


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Results:
    """The results of running a command on several devices, one per device, in order.

    ``len()``, iteration (over :class:`CommandResult`), ``res["device-01"]`` (a device's
    result; the last one if it appears more than once), ``res[0]`` and slices.
    :attr:`ok` and :attr:`failed` are :class:`Results` too, so everything here works on
    them (``res.failed.df``, ``res.ok.parse("kv")``).
    """

    html_max_chars: int = 300
    """Characters of ``stdout`` (and ``error``) shown per cell in the notebook table."""
    html_max_rows: int = 200
    """Rows shown in the notebook table; the rest are counted below it."""

    def __init__(self, results: Iterable[CommandResult] = ()) -> None:
        self._results: tuple[CommandResult, ...] = tuple(results)

    # -- container ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[CommandResult]:
        return iter(self._results)

    @overload
    def __getitem__(self, key: str | int) -> CommandResult: ...
    @overload
    def __getitem__(self, key: slice) -> Results: ...
    def __getitem__(self, key: str | int | slice) -> CommandResult | Results:
        if isinstance(key, slice):
            return Results(self._results[key])
        if not isinstance(key, str):  # int, numpy integer
            return self._results[key]
        for result in reversed(self._results):
            if result.device_id == key:
                return result
        known = ", ".join(self.device_ids[:10]) + (" …" if len(self) > 10 else "")
        raise KeyError(f"no result for device {key!r} (results for: {known or 'no device'})")

    def __contains__(self, device_id: object) -> bool:
        return any(result.device_id == device_id for result in self._results)

    @property
    def device_ids(self) -> list[str]:
        """The devices, in order (each once)."""
        return list(dict.fromkeys(result.device_id for result in self._results))

    @property
    def ok(self) -> Results:
        """The results whose status is ``ok``: the command exited with one of the run's ``ok_codes`` (0 by default)."""
        return Results(r for r in self._results if r.status == ResultStatus.OK)

    @property
    def failed(self) -> Results:
        """Every result that is not ``ok``: non-zero exits, timeouts, offline devices …"""
        return Results(r for r in self._results if r.status != ResultStatus.OK)

    def counts(self) -> dict[str, int]:
        """How many results have each status, known statuses first in :data:`STATUS_ORDER`."""
        found: dict[str, int] = {}
        for result in self._results:
            found[result.status] = found.get(result.status, 0) + 1
        ordered = {status: found[status] for status in STATUS_ORDER if status in found}
        ordered.update({status: found[status] for status in sorted(found) if status not in ordered})
        return ordered

    @property
    def wall_time_s(self) -> float:
        """Seconds from the first start to the last end: the run's duration, devices ran in parallel."""
        spans = [
            (_utc(r.started_at), _utc(r.started_at) + timedelta(seconds=r.duration_s or 0.0))
            for r in self._results
            if isinstance(r.started_at, datetime)
        ]
        if not spans:
            return max((r.duration_s or 0.0 for r in self._results), default=0.0)
        return (max(end for _, end in spans) - min(start for start, _ in spans)).total_seconds()

    # -- tables ---------------------------------------------------------------

    @property
    def df(self) -> pd.DataFrame:
        """One row per result, columns :data:`COLUMNS` with their documented dtypes (a new frame each time)."""
        rows = self._results
        started = [r.started_at for r in rows]
        data = {
            "device_id": pd.Series([str(r.device_id) for r in rows], dtype=str),
            # Without trailing whitespace: a %%tunnel cell's script ends with a newline that says nothing.
            "command": pd.Series([(r.command or "").rstrip() for r in rows], dtype=str),
            "status": pd.Series([r.status or "" for r in rows], dtype=str),
            "exit_code": pd.array([r.exit_code for r in rows], dtype="Int64"),
            "stdout": pd.Series([r.stdout or "" for r in rows], dtype=str),
            "duration_s": pd.Series([r.duration_s for r in rows], dtype="float64"),
            "started_at": pd.to_datetime(pd.Series(started, dtype=object), utc=True).astype(STARTED_AT_DTYPE),
            "error": pd.Series([r.error or "" for r in rows], dtype=str),
        }
        return pd.DataFrame({name: pd.Series(data[name]).reset_index(drop=True) for name in COLUMNS})

    def to_frame(self) -> pd.DataFrame:
        """The same as :attr:`df`."""
        return self.df

    def groups(self) -> pd.DataFrame:
        """Devices grouped by what they printed, biggest group first.

        Outputs are compared after :func:`normalise_output`.  Results with the same
        output but different status (an ``ok`` that printed nothing and an ``offline``)
        are different groups, so ``status`` is exact.  Columns: ``output`` (normalised),
        ``count``, ``devices`` (a list of ids, in result order), ``status``.
        """
        groups: dict[tuple[str, str], list[str]] = {}
        for result in self._results:
            groups.setdefault((normalise_output(result.stdout), result.status), []).append(result.device_id)
        ordered = sorted(groups.items(), key=lambda item: -len(item[1]))  # stable: ties in order of appearance
        frame = pd.DataFrame(
            {
                "output": pd.Series([output for (output, _), _ in ordered], dtype=str),
                "count": pd.Series([len(devices) for _, devices in ordered], dtype="int64"),
                "devices": pd.Series([list(devices) for _, devices in ordered], dtype=object),
                "status": pd.Series([status for (_, status), _ in ordered], dtype=str),
            }
        )
        return frame

    def diff(self, baseline: str | None = None, *, context: int = 3, ignore: IgnorePatterns = None) -> Drift:
        """Which devices printed something else than ``baseline``, with a unified diff each (:class:`.drift.Drift`).

        ``baseline`` is a device id of these results (its output is the reference, its row
        says ``baseline``) or the reference text itself (a known-good config); None compares
        with the majority's output.  A one-word baseline shaped like the device ids is taken
        for one and must be among them (end a one-word text with a newline).  Outputs are
        compared as :meth:`groups` compares them, after removing each match of ``ignore`` (a
        regex or a list) from every line, dropping lines left empty.  Rows that are not ok
        are not compared: ``same`` is ``<NA>`` and ``diff`` says why.
        """
        return diff_results(self._results, baseline, normalise=normalise_output, context=context, ignore=ignore)

    def outliers(self, *, threshold: float | None = None, ignore: IgnorePatterns = None) -> Outliers:
        """Devices whose output few others share, each with a diff against the majority (:class:`.drift.Outliers`).

        The ok devices are grouped by output (as :meth:`groups` does, after ``ignore``); a
        group smaller than the largest is an outlier when it holds at most ``threshold`` of
        them (by default 10 %, or any such group while fewer than 20 devices are ok).
        Rows that are not ok are listed in ``.failed``, with their status.
        """
        return find_outliers(self._results, normalise=normalise_output, threshold=threshold, ignore=ignore)

    def summary(self) -> str:
        """One line telling the groups apart: ``7 devices printed "6.1.0", 2 printed "5.10.0", 1 offline``."""
        if not self._results:
            return "no results"
        parts = []
        groups = self.groups()
        # Lines every group printed alike (a header, a shared first line) tell nothing apart: skip them.
        printed = [output.split("\n") for output in groups.output if output]
        shared = _common_prefix_lines(printed) if len(printed) > 1 else 0
        for i, row in enumerate(groups.itertuples(index=False)):
            count = _plural(row.count, "device") if i == 0 else str(row.count)
            if not row.output:
                gist = "printed nothing"
            elif shared:
                rest = "\n".join(row.output.split("\n")[shared:])
                gist = f'printed "…{_first_line(rest)}"'
            else:
                gist = f'printed "{_first_line(row.output)}"'
            if row.status == ResultStatus.OK:
                parts.append(f"{count} {gist}")
            elif row.output:
                parts.append(f"{count} {row.status} {gist}")
            else:
                parts.append(f"{count} {row.status}")
        return ", ".join(parts)

    def parse(self, fmt: str, **opts: Any) -> pd.DataFrame:
        """Parse every device's output: :func:`tunnelnb.fleet.parsers.parse_results` on these results."""
        return parse_results(self._results, fmt, **opts)

    # -- display --------------------------------------------------------------

    def header(self) -> str:
        """``12 devices · ran: 10 ok, 1 error (non-zero exit) · did not run: 1 offline · 2.3 s``

        Counts grouped by :data:`STATUS_GROUPS`, so a command that ran and exited
        non-zero is not mistaken for a device that never ran it.
        """
        counts = self.counts()
        parts = [_plural(len(self), "device")]
        grouped: set[str] = set()
        for group, statuses in STATUS_GROUPS:
            found = [(status, counts[status]) for status in statuses if status in counts]
            grouped.update(statuses)
            if found:
                words = [
                    f"{n} {status} (non-zero exit)" if status == ResultStatus.ERROR else f"{n} {status}"
                    for status, n in found
                ]
                parts.append(f"{group}: {', '.join(words)}")
        others = [f"{n} {status}" for status, n in counts.items() if status not in grouped]
        if others:
            parts.append(f"other: {', '.join(others)}")
        if self._results:
            parts.append(f"{self.wall_time_s:.1f} s")
        return " · ".join(parts)

    def _commands(self) -> list[str]:
        return list(dict.fromkeys((r.command or "").rstrip() for r in self._results))

    def __repr__(self) -> str:
        """The header, then a text table: what a terminal shows (see :mod:`tunnelnb.fleet.text`)."""
        commands = self._commands()
        what = f" of {one_line(commands[0], 60)!r}" if len(commands) == 1 else ""
        first = f"<Results{what}: {self.header()}>"
        if not self._results:
            return first
        table = results_table(self._results, show_command=len(commands) > 1, max_rows=self.html_max_rows)
        return "\n".join([first, *table])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Terminal IPython's display: the same text table as :meth:`__repr__`."""
        printer.text("<Results …>" if cycle else repr(self))

    def to_html(self, *, max_chars: int | None = None, max_rows: int | None = None) -> str:
        """The notebook table: counts by status, then one row per result, everything escaped.

        Device output is untrusted (any device can print ``<script>``), so every cell is
        HTML-escaped, and long output is cut at ``max_chars`` (default
        :attr:`html_max_chars`) so one chatty device does not bury the rest.
        """
        max_chars = self.html_max_chars if max_chars is None else max_chars
        max_rows = self.html_max_rows if max_rows is None else max_rows
        esc = html.escape
        commands = self._commands()
        same_command = len(commands) == 1
        header = esc(self.header())
        if same_command:
            header += f" · <code>{esc(commands[0])}</code>"  # commands are stripped of trailing whitespace
        names = ["device_id", *([] if same_command else ["command"]), "status", "exit_code", "stdout", "duration_s"]
        names.append("error")
        out = [
            '<div class="tunnelnb-results">',
            f'<div class="tunnelnb-header" style="margin:0 0 4px 0">{header}</div>',
            '<table class="dataframe tunnelnb-table"><thead><tr>',
            *(f'<th style="text-align:left">{name}</th>' for name in names),
            "</tr></thead><tbody>",
        ]
        for result in self._results[:max_rows]:
            background, colour = STATUS_COLOURS.get(result.status, OTHER_COLOUR)
            cells = [f"<td>{esc(str(result.device_id))}</td>"]
            if not same_command:
                cells.append(f'<td style="text-align:left"><code>{esc((result.command or "").rstrip())}</code></td>')
            cells += [
                f'<td class="tunnelnb-status tunnelnb-status-{esc(result.status)}" '
                f'style="background:{background};color:{colour}">{esc(result.status)}</td>',
                f"<td>{'' if result.exit_code is None else result.exit_code}</td>",
                # Output keeps its lines (no wrapping inside a value such as fw_version=1.8.2) and
                # scrolls when wide; binary output is said, not shown as garbage.
                '<td style="text-align:left"><pre style="margin:0;white-space:pre;overflow-x:auto;max-width:70ch">'
                f"{_truncated_html(output_text((result.stdout or '').rstrip()), max_chars)}</pre></td>",
                f"<td>{result.duration_s:.2f}</td>",
                '<td style="text-align:left;min-width:20ch;max-width:50ch">'
                f"{_truncated_html(result.error or '', max_chars)}</td>",
            ]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        if len(self) > max_rows:
            out.append(f"<div>… {_plural(len(self) - max_rows, 'more row')}: see <code>.df</code></div>")
        out.append("</div>")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        return self.to_html()


def _truncated_html(text: str, max_chars: int) -> str:
    """``text`` escaped, cut to ``max_chars`` with a note of how much was left out."""
    if len(text) <= max_chars:
        return html.escape(text)
    hidden = len(text) - max_chars
    return f"{html.escape(text[:max_chars])}<i>… ({hidden} more chars)</i>"

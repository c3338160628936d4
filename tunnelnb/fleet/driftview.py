"""How a comparison of outputs shows itself: :class:`Report`, the base of :class:`~.drift.Drift` and
:class:`~.drift.Outliers`.

Kept apart from the comparing (:mod:`.drift`).  Device output is untrusted: every cell
and diff line is shown with control characters escaped (``\\x1b``), and HTML-escaped in
a notebook, where diffs are coloured (added green, removed red) and long ones collapsed.
Both displays are bounded, so a chatty fleet cannot bury a notebook or a terminal.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from .tables import escape_controls, text_table

__all__ = ["FAILED_COLUMNS", "NOT_COMPARED_STYLE", "SAME_STYLES", "Report", "cell", "plural", "some"]

FAILED_COLUMNS = ("device_id", "status", "exit_code", "error")
"""The columns of :attr:`Report.failed`."""

_LINE_STYLES = {"+": "color:#22863a;background:#f0fff4", "-": "color:#b31d28;background:#ffeef0", "@": "color:#6f42c1"}
#: Styles of a "same" cell (True), a "differs" or outlier cell (False), and of a row not compared.
SAME_STYLES = {True: "background:#d4edda;color:#155724", False: "background:#f8d7da;color:#721c24"}
NOT_COMPARED_STYLE = "background:#e2e3e5;color:#383d41"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def some(ids: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` ids, comma-separated, with … when there are more."""
    return ", ".join(ids[:limit]) + (", …" if len(ids) > limit else "")


def cell(value: object) -> str:
    """A table cell as text: blank for None and ``<NA>``."""
    return "" if value is None or value is pd.NA else str(value)


def _esc(text: object) -> str:
    """Untrusted text for HTML: control characters as ``\\x1b`` escapes, then HTML-escaped."""
    return html.escape(escape_controls(cell(text)))


def _diff_html(title: str, diff: str, *, open_lines: int, max_lines: int) -> str:
    """A diff under a title, open when short, collapsed when long: added lines green, removed red."""
    lines = diff.split("\n")
    out = []
    for i, line in enumerate(lines[:max_lines]):
        style = "font-weight:bold" if i < 2 else _LINE_STYLES.get(line[:1], "")
        out.append(f'<span style="{style}">{_esc(line)}</span>' if style else _esc(line))
    if len(lines) > max_lines:
        out.append(f"<i>… {plural(len(lines) - max_lines, 'more line')}: see .diff_of()</i>")
    is_open = " open" if len(lines) <= open_lines else ""
    pre = '<pre style="margin:0 0 6px 0;white-space:pre;overflow-x:auto">' + "\n".join(out) + "</pre>"
    return f"<details{is_open}><summary>{_esc(title)}</summary>{pre}</details>"


def _diff_text(diff: str, max_lines: int) -> list[str]:
    lines = escape_controls(diff).split("\n")
    more = [f"… {plural(len(lines) - max_lines, 'more line')}: see .diff_of()"] if len(lines) > max_lines else []
    return lines[:max_lines] + more


def _html_table(heads: Sequence[str], rows: Iterable[Sequence[object]], styles: Sequence[str] = ()) -> str:
    """An escaped HTML table; ``styles`` are inline styles of each row's third cell (same, or the share)."""
    out = ['<table class="dataframe tunnelnb-table"><thead><tr>']
    out += [f'<th style="text-align:left">{_esc(h)}</th>' for h in heads] + ["</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        style = styles[i] if i < len(styles) else ""
        cells = [f'<td style="{style}">' if j == 2 and style else "<td>" for j in range(len(row))]
        out.append("<tr>" + "".join(f"{td}{_esc(c)}</td>" for td, c in zip(cells, row, strict=True)) + "</tr>")
    return "\n".join([*out, "</tbody></table>"])


class Report:
    """What :class:`~.drift.Drift` and :class:`~.drift.Outliers` share: their frame, the rows not
    compared, :meth:`diff_of`, and the terminal and notebook displays of a table and its diffs."""

    kind = "Report"
    lists_failed = True
    """Show :attr:`failed` below the diffs (a :class:`~.drift.Drift` table has those rows already)."""
    html_max_rows: int = 200
    """Rows of each table and diffs shown in a notebook; :attr:`df` has them all."""
    max_diff_lines: int = 200
    """Lines of one diff shown in a notebook; :meth:`diff_of` has them all."""
    text_max_diffs: int = 20
    text_max_lines: int = 40
    """Diffs, and lines of each, shown in a terminal."""
    open_lines: int = 20
    """Diffs of at most this many lines are shown open, longer ones collapsed in ``<details>``."""

    def __init__(self, frame: pd.DataFrame, failed: pd.DataFrame) -> None:
        self._df, self._failed = frame, failed

    @property
    def df(self) -> pd.DataFrame:
        """The table (a copy): see the class."""
        return self._df.copy()

    @property
    def failed(self) -> pd.DataFrame:
        """The rows not compared (any status but ok): :data:`FAILED_COLUMNS`, in run order (a copy)."""
        return self._failed.copy()

    def diff_of(self, device_id: str) -> str:
        """One device's row's ``diff`` (the last row if the device ran more than once)."""
        matches = self._df.index[self._df.device_id == device_id]
        if not len(matches):
            ids = list(dict.fromkeys(self._df.device_id))
            raise KeyError(f"{device_id} has no row here: pass one of {some(ids) or 'no device'}.")
        return str(self._df.loc[matches[-1], "diff"])

    def _not_compared(self) -> str:
        """`` · not compared: 1 offline, 1 error`` (or "")."""
        counts = self._failed.status.value_counts(sort=False)
        return f" · not compared: {', '.join(f'{n} {s}' for s, n in counts.items())}" if len(counts) else ""

    def summary(self) -> str:
        """One line: what was compared and what was found."""
        raise NotImplementedError

    def _sections(self) -> list[tuple[str, str]]:
        """(title, diff) of each diff to show, in order."""
        raise NotImplementedError

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        """The main table: header, rows (cells as text), each row's HTML style."""
        raise NotImplementedError

    def __repr__(self) -> str:
        """The summary, a short table, then the diffs: what a terminal shows."""
        heads, rows, _ = self._table()
        out = [f"<{self.kind}: {self.summary()}>"]
        if rows:
            out.append(text_table([h.upper() for h in heads], rows[: self.html_max_rows]))
        sections = self._sections()
        for title, diff in sections[: self.text_max_diffs]:
            out += ["", title, *_diff_text(diff, self.text_max_lines)]
        if len(rows) > self.html_max_rows or len(sections) > self.text_max_diffs:
            out += ["", "… more: see .df and .diff_of(device_id)"]
        if len(self._failed) and self.lists_failed:
            failed = [[cell(v) for v in row] for row in self._failed.itertuples(index=False)]
            out += ["", "not compared:", text_table(["DEVICE", "STATUS", "EXIT", "ERROR"], failed)]
        return "\n".join(out)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Terminal IPython's display: :meth:`__repr__`."""
        printer.text(f"<{self.kind} …>" if cycle else repr(self))

    def to_html(self) -> str:
        """The notebook display: summary, table, each diff (collapsed when long), the rows not compared; escaped."""
        heads, rows, styles = self._table()
        out = [
            f'<div class="tunnelnb-{self.kind.lower()}">',
            f'<div class="tunnelnb-header" style="margin:0 0 4px 0">{_esc(self.summary())}</div>',
        ]
        if rows:
            out.append(_html_table(heads, rows[: self.html_max_rows], styles))
        if len(rows) > self.html_max_rows:
            out.append(f"<div>… {plural(len(rows) - self.html_max_rows, 'more row')}: see <code>.df</code></div>")
        limits = {"open_lines": self.open_lines, "max_lines": self.max_diff_lines}
        out += [_diff_html(title, diff, **limits) for title, diff in self._sections()[: self.html_max_rows]]
        if len(self._failed) and self.lists_failed:
            failed = self._failed.head(self.html_max_rows).itertuples(index=False)
            out += ["<div>not compared:</div>", _html_table(FAILED_COLUMNS, failed)]
        return "\n".join([*out, "</div>"])

    def _repr_html_(self) -> str:
        return self.to_html()

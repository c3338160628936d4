"""What a get or a put did on many devices, as one table: :class:`TransferResults`.

One :class:`TransferRow` per target, whatever happened (the statuses of
:class:`~tunnelnb.client.result.ResultStatus`), with a fixed schema
(:data:`TRANSFER_COLUMNS`) for notebooks and scripts; the fleet's own rows
(:class:`~tunnelnb.fleet.results.Results`, in :attr:`Fleet.history`) stay
available as :attr:`TransferResults.results`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..client.result import ResultStatus
from .results import OTHER_COLOUR, STATUS_COLOURS, Results
from .tables import text_table

__all__ = ["TRANSFER_COLUMNS", "TransferResults", "TransferRow", "byte_count"]

TRANSFER_COLUMNS = ("device_id", "path", "bytes", "sha256", "status", "duration_s", "error")
"""The columns of :attr:`TransferResults.df`, in order: ``bytes`` is nullable ``Int64`` (none when
nothing moved), ``duration_s`` ``float64``, the rest strings (``""`` when absent).  ``path`` is the
local file written (get) or the remote path (put)."""


def byte_count(n: int | None) -> str:
    """``10.5 MB``, ``812 B``: a size as people read it (powers of 1,000); blank when unknown."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # (not reached)


@dataclass(frozen=True)
class TransferRow:
    """One device's file: where it went, its size and sha256, and how it went."""

    device_id: str
    path: str
    bytes: int | None
    sha256: str
    status: str
    duration_s: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == ResultStatus.OK


class TransferResults:
    """The rows of one get or put, one per target, in order.

    ``len()``, iteration (over :class:`TransferRow`), ``res["device-01"]``,
    :attr:`ok` and :attr:`failed` (lists of rows), :attr:`df`, and a notebook
    table.  ``direction`` is ``"get"`` or ``"put"``; ``remote_path`` the file on
    the devices.
    """

    html_max_rows: int = 200

    def __init__(self, direction: str, remote_path: str, rows: Iterable[TransferRow], results: Results) -> None:
        self.direction = direction
        self.remote_path = remote_path
        self.rows: tuple[TransferRow, ...] = tuple(rows)
        #: The fleet's rows of the same run (:class:`CommandResult`, as in :attr:`Fleet.history`).
        self.results = results

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[TransferRow]:
        return iter(self.rows)

    def __getitem__(self, device_id: str) -> TransferRow:
        for row in self.rows:
            if row.device_id == device_id:
                return row
        raise KeyError(f"no row for device {device_id!r}")

    @property
    def ok(self) -> list[TransferRow]:
        return [row for row in self.rows if row.ok]

    @property
    def failed(self) -> list[TransferRow]:
        return [row for row in self.rows if not row.ok]

    @property
    def df(self) -> pd.DataFrame:
        """One row per device, columns :data:`TRANSFER_COLUMNS` (a new frame each time)."""
        rows = self.rows
        return pd.DataFrame(
            {
                "device_id": pd.Series([r.device_id for r in rows], dtype=str),
                "path": pd.Series([r.path for r in rows], dtype=str),
                "bytes": pd.array([r.bytes for r in rows], dtype="Int64"),
                "sha256": pd.Series([r.sha256 for r in rows], dtype=str),
                "status": pd.Series([r.status for r in rows], dtype=str),
                "duration_s": pd.Series([r.duration_s for r in rows], dtype="float64"),
                "error": pd.Series([r.error for r in rows], dtype=str),
            },
            columns=list(TRANSFER_COLUMNS),
        )

    def header(self) -> str:
        """``get /etc/app.conf · 3 devices: 2 ok, 1 offline · 24.6 kB``"""
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        devices = f"{len(self)} device{'' if len(self) == 1 else 's'}"
        parts = [
            f"{self.direction} {self.remote_path}",
            devices + ": " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        ]
        moved = sum(row.bytes or 0 for row in self.ok)
        if self.ok:
            parts.append(byte_count(moved))
        return " · ".join(parts)

    def text(self) -> str:
        """The header and a text table (what a terminal shows)."""
        rows = [
            (r.device_id, r.status, byte_count(r.bytes), f"{r.duration_s:.2f} s", r.sha256[:12], r.path, r.error)
            for r in self.rows
        ]
        table = text_table(("device_id", "status", "bytes", "duration", "sha256", "path", "error"), rows)
        return f"{self.header()}\n{table}" if self.rows else self.header()

    def __repr__(self) -> str:
        return f"<TransferResults: {self.text()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("<TransferResults …>" if cycle else self.text())

    def _repr_html_(self) -> str:
        """The notebook table: the header, then one row per device, everything escaped."""
        esc = html.escape
        names = ("device_id", "status", "bytes", "sha256", "duration_s", "path", "error")
        out = [
            '<div class="tunnelnb-results">',
            f'<div class="tunnelnb-header" style="margin:0 0 4px 0">{esc(self.header())}</div>',
            '<table class="dataframe tunnelnb-table"><thead><tr>',
            *(f'<th style="text-align:left">{name}</th>' for name in names),
            "</tr></thead><tbody>",
        ]
        for r in self.rows[: self.html_max_rows]:
            background, colour = STATUS_COLOURS.get(r.status, OTHER_COLOUR)
            out.append(
                "<tr>"
                f"<td>{esc(r.device_id)}</td>"
                f'<td class="tunnelnb-status tunnelnb-status-{esc(r.status)}" '
                f'style="background:{background};color:{colour}">{esc(r.status)}</td>'
                f"<td>{esc(byte_count(r.bytes))}</td>"
                f'<td title="{esc(r.sha256)}"><code>{esc(r.sha256[:12])}</code></td>'
                f"<td>{r.duration_s:.2f}</td>"
                f'<td style="text-align:left"><code>{esc(r.path)}</code></td>'
                f'<td style="text-align:left;max-width:50ch">{esc(r.error)}</td>'
                "</tr>"
            )
        out.append("</tbody></table>")
        if len(self) > self.html_max_rows:
            out.append(f"<div>… {len(self) - self.html_max_rows} more rows: see <code>.df</code></div>")
        out.append("</div>")
        return "\n".join(out)

"""The fleet's views for people: the inventory table and the live status table (dashboards).

Pure functions of what the fleet knows, so :class:`~tunnelnb.fleet.fleet.Fleet`
keeps the fan-out logic and these keep the columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from ..client.result import CommandResult
from ..client.session import DeviceSession

__all__ = [
    "INVENTORY_COLUMNS",
    "STATUS_COLUMNS",
    "devices_text",
    "devices_view",
    "escape_controls",
    "inventory_table",
    "is_binary",
    "output_text",
    "status_table",
    "status_text",
    "terminal_text",
    "text_table",
    "tunnel_state",
]

INVENTORY_COLUMNS = ["device_id", "status", "device_name", "product_id", "fw_version", "sw_version", "tags"]
STATUS_COLUMNS = [
    "device_id",
    "online",
    "tunnel",
    "logged_in",
    "running",
    "last_status",
    "last_exit_code",
    "last_duration_s",
]


def inventory_table(inventory: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per device, tags as a dict."""
    rows = []
    for d in inventory:
        tags = {t.get("tag_key"): t.get("tag_value") for t in d.get("tags") or [] if isinstance(t, dict)}
        rows.append({**{c: d.get(c) for c in INVENTORY_COLUMNS}, "tags": tags})
    return pd.DataFrame(rows, columns=INVENTORY_COLUMNS)


def tunnel_state(session: DeviceSession | None) -> str:
    """The ``tunnel`` column: none, closed, connected (the device is in it) or waiting."""
    if session is None:
        return "none"
    if session.closed:
        return "closed"
    return "connected" if session.joined else "waiting"


def status_table(
    inventory: list[dict[str, Any]],
    sessions: Mapping[str, DeviceSession],
    running: Mapping[str, str],
    last: Mapping[str, CommandResult],
) -> pd.DataFrame:
    """One row per device: online, tunnel, logged in, running command, last result."""
    rows = []
    for d in inventory:
        device_id = str(d.get("device_id"))
        session = sessions.get(device_id)
        result = last.get(device_id)
        rows.append(
            {
                "device_id": device_id,
                "online": d.get("status") == "ONLINE",
                "tunnel": tunnel_state(session),
                "logged_in": bool(session is not None and session.logged_in),
                "running": running.get(device_id),
                "last_status": result.status if result else None,
                "last_exit_code": result.exit_code if result else None,
                "last_duration_s": result.duration_s if result else None,
            }
        )
    df = pd.DataFrame(rows, columns=STATUS_COLUMNS)
    df["last_exit_code"] = df["last_exit_code"].astype("Int64")
    return df


# -- text renderings, for terminals (``tunnelnb run``, ``%tunnel status`` in terminal IPython) ---------
#
# A DataFrame's repr is for programmers: ``None``, ``NaN``, ``<NA>``, six decimals,
# a 0..n index and dicts cut off mid-way.  An operator reading a terminal wants the
# columns that matter, blanks for "nothing", rounded durations and no escape
# sequence that a device (or a tag) could use to drive their terminal.

#: Control characters other than tab, newline and carriage return; lone surrogates
#: (bytes that were not UTF-8); the replacement character (bytes a decoder gave up on).
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")
#: SGR colour sequences (``ls --color``, ``grep --color``): text, not binary.
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

#: Header label, then how a terminal shows the column of :func:`status_table`.
STATUS_TEXT_COLUMNS = {
    "device_id": "device",
    "online": "online",
    "tunnel": "tunnel",
    "logged_in": "logged in",
    "running": "running",
    "last_status": "last status",
    "last_exit_code": "exit",
    "last_duration_s": "duration",
}
DEVICES_TEXT_COLUMNS = {
    "device_id": "device",
    "status": "status",
    "device_name": "name",
    "product_id": "product",
    "fw_version": "fw",
    "sw_version": "sw",
    "tags": "tags",
}


def is_binary(text: str) -> bool:
    """Would printing ``text`` send a terminal bytes that are not text (colour sequences aside)?"""
    return _NOT_TEXT.search(_SGR.sub("", text)) is not None


def byte_size(text: str) -> int:
    """How many bytes the device sent for ``text``: a lone surrogate or a replacement character was one byte."""
    odd = sum(1 for _ in re.finditer("[\ud800-\udfff\ufffd]", text))
    return len(text.encode("utf-8", "surrogatepass")) - 2 * odd


def escape_controls(text: str) -> str:
    """``text`` with control characters (tab and newline kept) as ``\\x1b``-style escapes, for files and pipes.

    Lone surrogates (bytes that were not UTF-8) become ``\\udcXX``, so the result always encodes.
    """

    def escape(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(escape, text)


def output_text(text: str) -> str:
    """What a terminal may show of a device's output: the text without colours, or ``binary output, N bytes``."""
    if is_binary(text):
        return f"binary output, {byte_size(text)} bytes"
    return _SGR.sub("", text)


def cell_text(value: object) -> str:
    """One cell as a terminal shows it: blank for missing, ``yes``/``no``, rounded floats, ``k=v`` tags."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, Mapping):
        return " ".join(f"{k}={'' if v is None else v}" for k, v in value.items())
    return escape_controls(str(value))


#: ``style(row, column, padded_cell)``: row 0 is the header.
CellStyle = Callable[[int, int, str], str]


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, style: CellStyle | None = None) -> str:
    """Aligned columns under a header row, two spaces apart; ``style`` may colour a cell.

    Cells are one line each, control characters escaped.  Only the padded cell
    is styled, so escape sequences added by ``style`` never upset the alignment;
    the last column is not padded (nothing follows it).
    """
    table = [list(header), *([escape_controls(c).replace("\t", " ").replace("\n", " ") for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for n, row in enumerate(table):
        cells = []
        for i, cell in enumerate(row):
            padded = cell if i == len(row) - 1 else cell.ljust(widths[i])
            cells.append(style(n, i, padded) if style else padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _shorten(text: str, limit: int) -> str:
    """The first line of ``text``, cut to ``limit`` characters, with … when anything was left out."""
    first, _, rest = text.strip().partition("\n")
    if len(first) > limit:
        return first[: limit - 1] + "…"
    return first + " …" if rest else first


def status_text(df: pd.DataFrame) -> str:
    """The status table (:func:`status_table`) for a terminal: a header, blanks, ``yes``/``no``, ``0.02 s``."""
    rows = []
    for row in df.to_dict("records"):
        cells = {c: cell_text(row.get(c)) for c in STATUS_TEXT_COLUMNS}
        if cells["last_duration_s"]:
            cells["last_duration_s"] += " s"
        cells["running"] = _shorten(cells["running"], 40)
        rows.append(list(cells.values()))
    if not rows:
        return "no devices"
    return text_table([h.upper() for h in STATUS_TEXT_COLUMNS.values()], rows)


def devices_text(df: pd.DataFrame) -> str:
    """The inventory (:func:`inventory_table`) for a terminal: tags as ``key=value`` text, blanks for missing."""
    rows = [[cell_text(row.get(c)) for c in DEVICES_TEXT_COLUMNS] for row in df.to_dict("records")]
    if not rows:
        return "no devices"
    return text_table([h.upper() for h in DEVICES_TEXT_COLUMNS.values()], rows)


def devices_view(df: pd.DataFrame) -> pd.DataFrame:
    """The inventory for people: device ids as the index, tags as ``key=value`` text (not a cut-off dict)."""
    return df.assign(tags=[cell_text(tags) for tags in df.tags]).set_index("device_id")


def terminal_text(df: pd.DataFrame) -> str | None:
    """A status or devices table (by its columns) as terminal text; None for any other frame."""
    columns = list(df.columns)
    if columns == STATUS_COLUMNS:
        return status_text(df)
    if columns == INVENTORY_COLUMNS:
        return devices_text(df)
    if df.index.name == "device_id" and columns == INVENTORY_COLUMNS[1:]:
        return devices_text(df.reset_index())
    return None

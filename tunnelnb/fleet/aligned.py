"""Whitespace-aligned tables (``df -h``, ``ps aux``, ``free -m``, ``lsblk``): the ``table`` format.

Cells are placed under their header by position, not by counting words, because
real tools right-align numbers wider than their header, leave cells blank and
put spaces inside values; see :func:`parse_table`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ParseError
from .rows import LABEL_COLUMN, dedupe, excerpt, normalise

__all__ = ["parse_table"]

Row = dict[str, Any]


@dataclass
class _Column:
    name: str
    start: int
    end: int


Span = tuple[int, int]


def _spans(line: str) -> list[Span]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", line)]


def _overlaps(span: Span, column: _Column | None) -> bool:
    return column is not None and span[0] < column.end and column.start < span[1]


def _join_direction(words: list[_Column], i: int, cells: list[Span]) -> int:
    """-1 or +1 when header word ``i`` is part of its left or right neighbour's name, else 0.

    A word can join a neighbour one space away only if no data cell lies under it
    alone.  A cell under both it and a neighbour (a long mount point under
    ``Mounted on``, a container id under ``CONTAINER ID``) decides; with no cell
    under it at all, an all-upper-case word is a column that happens to be empty
    (lsblk's ``MOUNTPOINTS``), and other words join the side whose cells come nearest
    (``ss``'s right-aligned ``Local Address:Port``).
    """
    word = words[i]
    left = words[i - 1] if i > 0 and word.start - words[i - 1].end == 1 else None
    right = words[i + 1] if i + 1 < len(words) and words[i + 1].start - word.end == 1 else None
    if left is None and right is None:
        return 0
    under = [cell for cell in cells if _overlaps(cell, word)]
    if any(not _overlaps(cell, left) and not _overlaps(cell, right) for cell in under):
        return 0
    if under:
        return -1 if any(_overlaps(cell, left) for cell in under) else 1
    if word.name.isupper():
        return 0
    inf = float("inf")
    left_gap = min((word.start - e for s, e in cells if left and left.start < e <= word.start), default=inf)
    right_gap = min((s - word.end for s, e in cells if right and word.end <= s < right.end), default=inf)
    if left is None or right_gap <= left_gap:
        return 1
    return -1


def _merge_multiword_headers(columns: list[_Column], header: str, rows: list[list[Span]]) -> list[_Column]:
    """Join header words that name one column, like df's ``Mounted on`` (see :func:`_join_direction`)."""
    cells = [span for spans in rows for span in spans]
    directions = [_join_direction(columns, i, cells) for i in range(len(columns))]
    merged: list[_Column] = []
    for i, word in enumerate(columns):
        if merged and (directions[i] == -1 or directions[i - 1] == 1):
            left = merged[-1]
            merged[-1] = _Column(header[left.start : word.end], left.start, word.end)
        else:
            merged.append(word)
    return merged


def _column_for(span: Span, columns: list[_Column]) -> int:
    """The column a cell belongs to: the header it lies under, else the one to its left."""
    start, end = span
    overlapping = [i for i, c in enumerate(columns) if start < c.end and c.start < end]
    if len(overlapping) == 1:
        return overlapping[0]
    if overlapping:
        # A cell under two headers: the one it is aligned with (left or right edge), else the bigger overlap.
        aligned = [i for i in overlapping if columns[i].start == start or columns[i].end == end]
        if aligned:
            return aligned[0]
        return max(overlapping, key=lambda i: (min(end, columns[i].end) - max(start, columns[i].start), -i))
    # Under no header: the rest of a left-aligned value with spaces ("2 days ago"), so the column to its left.
    return max((i for i, c in enumerate(columns) if c.start <= start), default=0)


def parse_table(text: str, *, columns: Sequence[str] | None = None, skip: int = 0) -> list[Row]:
    """Read whitespace-aligned output, placing each cell under its header.

    Cells are assigned by position, not by counting words, so right-aligned numbers
    wider than their header (``ps``'s VSZ), values with spaces (``ps``'s COMMAND, the
    last column, takes the rest of its line) and blank cells (``free``'s Swap row)
    land in the right column.  A header indented past the first cells means an unnamed
    first column (``free``'s ``Mem:``), named ``label`` with its colon dropped.
    Missing cells are None.
    """
    lines = [line.expandtabs(8).rstrip() for line in normalise(text).split("\n")][skip:]
    lines = [line for line in lines if line.strip()]
    if columns is not None:
        names = dedupe(columns)
        rows = []
        for line in lines:
            words = line.split(None, len(names) - 1)
            rows.append({name: words[i] if i < len(words) else None for i, name in enumerate(names)})
        return rows
    if not lines:
        raise ParseError("table: the output is empty (no header line)")
    header, body = lines[0], lines[1:]
    if not body:
        # One line is a header with nothing under it, or (uptime, `df | tail -1`) not a table at all.
        raise ParseError(f"table: no data lines under the header{excerpt(header)}")
    row_spans = [_spans(line) for line in body]
    cols = _merge_multiword_headers([_Column(header[s:e], s, e) for s, e in _spans(header)], header, row_spans)
    if any(spans and spans[0][1] <= cols[0].start for spans in row_spans):
        cols.insert(0, _Column(LABEL_COLUMN, 0, cols[0].start))
        has_label = True
    else:
        has_label = False
    names = dedupe([c.name for c in cols])
    last = len(cols) - 1
    rows = []
    for line, spans in zip(body, row_spans, strict=True):
        cells: list[list[Span]] = [[] for _ in cols]
        previous = 0
        for span in spans:
            index = max(_column_for(span, cols), previous)  # cells never go back left
            if index == last:
                cells[last] = [(span[0], len(line))]  # the last column takes the rest of the line
                break
            cells[index].append(span)
            previous = index
        row: Row = {}
        for name, spans_in_cell in zip(names, cells, strict=True):
            row[name] = line[spans_in_cell[0][0] : spans_in_cell[-1][1]].strip() if spans_in_cell else None
        if has_label and isinstance(row[names[0]], str):
            row[names[0]] = row[names[0]].removesuffix(":")
        rows.append(row)
    return rows

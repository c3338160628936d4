"""Turn command output into rows, then many devices' rows into one long table.

:func:`parse_output` reads one device's output in one of the formats below and returns
a list of dicts (cells stay text, as printed, except JSON's own types).
:func:`parse_results` does it for every device of a run and returns a DataFrame with a
leading ``device_id`` column; a device whose output does not parse gets one row saying
why (``parse_error``) instead of spoiling the whole table, because on a fleet one odd
device is the normal case.

Formats and their options:

``kv``
    ``key=value`` and ``key: value`` lines (``/etc/os-release``, ``systemctl show``,
    ``lscpu``) → one row.  Keys and values are stripped, one pair of surrounding quotes
    is removed (``unquote=False`` keeps it), ``#`` comments and other lines are skipped,
    a repeated key keeps its last value.  ``sep="="`` uses only that separator.
``json``
    a JSON object → one row; a list of objects → one row each; JSON Lines too.
``csv``
    a header row, then data rows; ``sep=`` the delimiter (default ``,``), ``columns=``
    names for output without a header row.
``table``
    whitespace-aligned output (``df -h``, ``ps aux``, ``free -m``, ``lsblk``): the first
    line is the header; see :func:`_parse_table`.  ``columns=`` names for output without
    a header (``ip -br a``: the last column takes the rest of the line), ``skip=`` lines
    to drop before the header.
``regex``
    ``pattern=`` with named groups; one row per match, ``re.MULTILINE`` is on;
    ``flags=`` more :mod:`re` flags.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ParseError

if TYPE_CHECKING:
    import pandas as pd

    from ..client.result import CommandResult

__all__ = ["FORMATS", "make_parser", "parse_output", "parse_results"]

Row = dict[str, Any]
Parser = Callable[[str], list[Row]]

FORMATS = ("kv", "json", "csv", "table", "regex")
LABEL_COLUMN = "label"
"""Name of the unnamed first column of tables like ``free``'s (``Mem:``, ``Swap:``)."""


def _normalise(text: str) -> str:
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _dedupe(names: Sequence[str]) -> list[str]:
    """Unique column names, as pandas does it: ``a, a`` → ``a, a.1``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            candidate = f"{name}.{seen[name]}"
            while candidate in seen:
                seen[name] += 1
                candidate = f"{name}.{seen[name]}"
            name = candidate
        seen.setdefault(name, 0)
        out.append(name)
    return out


# -- kv ---------------------------------------------------------------------------

# "=" anywhere, or ":" followed by a blank or the end (so "23:10:08" and URLs do not split).
_KV_SEPARATOR = re.compile(r"=|:(?=\s|$)")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _parse_kv(text: str, *, sep: str | None = None, unquote: bool = True) -> list[Row]:
    row: Row = {}
    for line in _normalise(text).split("\n"):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if sep:
            key, found, value = stripped.partition(sep)
            if not found:
                continue
        else:
            match = _KV_SEPARATOR.search(stripped)
            if match is None:
                continue
            key, value = stripped[: match.start()], stripped[match.end() :]
        key, value = key.strip(), value.strip()
        if not key:
            continue
        row[key] = _unquote(value) if unquote else value
    if not row:
        shown = f"'key{sep}value'" if sep else "'key=value' or 'key: value'"
        raise ParseError(f"kv: no {shown} lines in the output{_excerpt(text)}")
    return [row]


def _excerpt(text: str, limit: int = 40) -> str:
    first = next((line.strip() for line in _normalise(text).split("\n") if line.strip()), "")
    if not first:
        return " (it is empty)"
    return f" (it starts {first[:limit] + '…' if len(first) > limit else first!r})"


# -- json -------------------------------------------------------------------------


def _json_rows(data: Any, where: str) -> list[Row]:
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        for i, item in enumerate(data, 1):
            if not isinstance(item, dict):
                raise ParseError(f"json: item {i} of the list{where} is {type(item).__name__}, not an object")
        return list(data)
    raise ParseError(f"json: expected an object or a list of objects{where}, got {type(data).__name__}")


def _parse_json(text: str) -> list[Row]:
    body = _normalise(text).strip()
    if not body:
        raise ParseError("json: the output is empty")
    try:
        return _json_rows(json.loads(body), "")
    except json.JSONDecodeError as whole_error:
        lines = [(n, line) for n, line in enumerate(body.split("\n"), 1) if line.strip()]
        try:
            json.loads(lines[0][1])
        except json.JSONDecodeError:
            # Not JSON Lines either: report the error of the document as a whole.
            raise ParseError(
                f"json: {whole_error.msg} at line {whole_error.lineno} column {whole_error.colno}{_excerpt(body)}"
            ) from None
    rows: list[Row] = []
    for n, line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ParseError(f"json: line {n} of the JSON Lines is not JSON: {exc.msg}") from None
        rows.extend(_json_rows(item, f" on line {n}"))
    return rows


# -- csv --------------------------------------------------------------------------


def _parse_csv(text: str, *, sep: str = ",", columns: Sequence[str] | None = None) -> list[Row]:
    reader = csv.reader(io.StringIO(_normalise(text)), delimiter=sep, skipinitialspace=True)
    records: list[tuple[int, list[str]]] = []
    try:
        for record in reader:
            if any(cell.strip() for cell in record):
                records.append((reader.line_num, [cell.strip() for cell in record]))
    except csv.Error as exc:
        raise ParseError(f"csv: line {reader.line_num}: {exc}") from None
    if columns is None:
        if not records:
            raise ParseError("csv: the output is empty (no header row)")
        header = _dedupe(records[0][1])
        records = records[1:]
    else:
        header = _dedupe(columns)
    rows = []
    for line_num, record in records:
        if len(record) != len(header):
            raise ParseError(
                f"csv: line {line_num} has {len(record)} fields, the header has {len(header)} "
                f"(is the separator {sep!r} right?)"
            )
        rows.append(dict(zip(header, record, strict=True)))
    return rows


# -- table ------------------------------------------------------------------------


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


def _parse_table(text: str, *, columns: Sequence[str] | None = None, skip: int = 0) -> list[Row]:
    """Read whitespace-aligned output, placing each cell under its header.

    Cells are assigned by position, not by counting words, so right-aligned numbers
    wider than their header (``ps``'s VSZ), values with spaces (``ps``'s COMMAND, the
    last column, takes the rest of its line) and blank cells (``free``'s Swap row)
    land in the right column.  A header indented past the first cells means an unnamed
    first column (``free``'s ``Mem:``), named ``label`` with its colon dropped.
    Missing cells are None.
    """
    lines = [line.expandtabs(8).rstrip() for line in _normalise(text).split("\n")][skip:]
    lines = [line for line in lines if line.strip()]
    if columns is not None:
        names = _dedupe(columns)
        rows = []
        for line in lines:
            words = line.split(None, len(names) - 1)
            rows.append({name: words[i] if i < len(words) else None for i, name in enumerate(names)})
        return rows
    if not lines:
        raise ParseError("table: the output is empty (no header line)")
    header, body = lines[0], lines[1:]
    row_spans = [_spans(line) for line in body]
    cols = _merge_multiword_headers([_Column(header[s:e], s, e) for s, e in _spans(header)], header, row_spans)
    if any(spans and spans[0][1] <= cols[0].start for spans in row_spans):
        cols.insert(0, _Column(LABEL_COLUMN, 0, cols[0].start))
        has_label = True
    else:
        has_label = False
    names = _dedupe([c.name for c in cols])
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


# -- regex ------------------------------------------------------------------------


def _parse_regex(text: str, *, pattern: re.Pattern[str]) -> list[Row]:
    return [match.groupdict() for match in pattern.finditer(_normalise(text))]


def _compile(pattern: str | re.Pattern[str] | None, flags: int = 0) -> re.Pattern[str]:
    if pattern is None:
        raise ParseError("regex: give pattern=, a regular expression with named groups like (?P<load>[\\d.]+)")
    if isinstance(pattern, re.Pattern):  # re.compile() refuses flags with a compiled pattern
        flags |= pattern.flags
        pattern = pattern.pattern
    try:
        compiled = re.compile(pattern, flags | re.MULTILINE)
    except re.error as exc:
        raise ParseError(f"regex: the pattern does not compile: {exc}") from None
    if not compiled.groupindex:
        raise ParseError("regex: the pattern has no named groups: name each column like (?P<name>...)")
    return compiled


# -- entry points -----------------------------------------------------------------

_OPTIONS: dict[str, tuple[str, ...]] = {
    "kv": ("sep", "unquote"),
    "json": (),
    "csv": ("sep", "columns"),
    "table": ("columns", "skip"),
    "regex": ("pattern", "flags"),
}


def make_parser(fmt: str, **opts: Any) -> Parser:
    """A parser for one format, with its options checked once (not once per device)."""
    if fmt not in _OPTIONS:
        raise ParseError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    unknown = sorted(set(opts) - set(_OPTIONS[fmt]))
    if unknown:
        known = ", ".join(_OPTIONS[fmt]) or "none"
        raise ParseError(f"{fmt}: unknown option {', '.join(unknown)} (options: {known})")
    if fmt == "kv":
        return partial(_parse_kv, **opts)
    if fmt == "json":
        return _parse_json
    if fmt == "csv":
        sep = opts.get("sep", ",")
        if not isinstance(sep, str) or len(sep) != 1:
            raise ParseError(f"csv: sep must be one character, not {sep!r}")
        if opts.get("columns") is not None and not list(opts["columns"]):
            raise ParseError("csv: columns must name at least one column")
        return partial(_parse_csv, **opts)
    if fmt == "table":
        if opts.get("columns") is not None and not list(opts["columns"]):
            raise ParseError("table: columns must name at least one column")
        if not isinstance(opts.get("skip", 0), int) or opts.get("skip", 0) < 0:
            raise ParseError(f"table: skip must be a number of lines, not {opts['skip']!r}")
        return partial(_parse_table, **opts)
    return partial(_parse_regex, pattern=_compile(opts.get("pattern"), opts.get("flags", 0)))


def parse_output(fmt: str, text: str, **opts: Any) -> list[Row]:
    """Parse one device's output; raises :class:`ParseError` when it does not fit ``fmt``."""
    return make_parser(fmt, **opts)(text)


def _numeric(column: pd.Series) -> pd.Series:
    """The column as numbers when every present cell is a number written as text, else as is.

    What ``pd.to_numeric(errors="ignore")`` did, without its deprecation: integers stay
    integers (nullable ``Int64`` when some rows lack the cell), and a column with any
    non-number (``12G``, ``22%``, blank) stays text.
    """
    import pandas as pd

    present = column.dropna()
    if present.empty or not all(isinstance(v, str) and v.strip() for v in present):
        return column
    try:
        numbers = pd.to_numeric(present.astype(object))
    except (ValueError, TypeError, OverflowError):
        return column
    if numbers.dtype.kind not in "iuf" or numbers.isna().any():
        return column
    if numbers.dtype.kind in "iu" and len(present) < len(column):
        return numbers.astype("Int64").reindex(column.index)
    return numbers.reindex(column.index)


def parse_results(
    results: Iterable[CommandResult], fmt: str, *, include_failed: bool = False, **opts: Any
) -> pd.DataFrame:
    """Parse every device's output into one long DataFrame.

    Columns: ``device_id``, the parsed columns in the order first seen, ``parse_error``
    (empty when the device's output parsed).  A device whose output does not parse gets
    one row with ``parse_error`` set; a device whose output gives no rows (a regex with no
    match, ``[]``) gets none.  Only results with status ``ok`` are parsed unless
    ``include_failed=True`` (useful for ``grep``, which exits 1 when nothing matches).
    Parsed keys named ``device_id`` or ``parse_error`` become ``device_id_parsed`` …;
    columns whose cells are all numbers become numeric.  A bad format or option raises
    :class:`ParseError` at once.
    """
    import pandas as pd

    from ..client.result import ResultStatus

    parser = make_parser(fmt, **opts)
    reserved = ("device_id", "parse_error")
    records: list[Row] = []
    for result in results:
        if result.status != ResultStatus.OK and not include_failed:
            continue
        try:
            rows = parser(result.stdout or "")
        except ParseError as exc:
            records.append({"device_id": result.device_id, "parse_error": str(exc)})
            continue
        for row in rows:
            record: Row = {"device_id": result.device_id}
            for key, value in row.items():
                name = str(key)
                record[f"{name}_parsed" if name in reserved else name] = value
            record["parse_error"] = ""
            records.append(record)
    if not records:
        return pd.DataFrame({"device_id": pd.Series(dtype=str), "parse_error": pd.Series(dtype=str)})
    columns = list(dict.fromkeys(key for record in records for key in record if key != "parse_error"))
    columns.append("parse_error")
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame["parse_error"] = frame["parse_error"].fillna("").astype(str)
    for name in columns[1:-1]:
        frame[name] = _numeric(frame[name])
    return frame

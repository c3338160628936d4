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
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ParseError
from .aligned import parse_table as _parse_table
from .rows import LABEL_COLUMN, dedupe, excerpt, normalise
from .typed import TYPED_FORMATS, TypedParser, typed_parser

if TYPE_CHECKING:
    import pandas as pd

    from ..client.result import CommandResult

__all__ = ["FORMATS", "LABEL_COLUMN", "make_parser", "parse_output", "parse_results"]

Row = dict[str, Any]
Parser = Callable[[str], list[Row]]

GENERIC_FORMATS = ("kv", "json", "csv", "table", "regex")
FORMATS = GENERIC_FORMATS + TYPED_FORMATS
"""Every format: the generic ones (cells as printed), then the typed ones (:mod:`.typed`: numbers, bytes)."""
# The helpers every format shares (tunnelnb.fleet.rows); the underscore names are this module's.
_normalise, _dedupe, _excerpt = normalise, dedupe, excerpt


# -- kv ---------------------------------------------------------------------------

# "=" anywhere, or ":" followed by a blank or the end (so "23:10:08" and URLs do not split).
_KV_SEPARATOR = re.compile(r"=|:(?=\s|$)")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _looks_like_key(key: str) -> bool:
    """Is this the key of a pair, not a sentence with a colon in it?

    ``uptime``'s line has ``load average:`` in it, which would make the whole
    start of the line one "key" (one column per device, named after its
    output): keys are short, have no commas and at most a few words
    (``Model name``, ``NUMA node0 CPU(s)``).
    """
    return bool(key) and "," not in key and len(key) <= 64 and len(key.split()) <= 5


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
        if not _looks_like_key(key):
            continue
        row[key] = _unquote(value) if unquote else value
    if not row:
        shown = f"'key{sep}value'" if sep else "'key=value' or 'key: value'"
        raise ParseError(f"kv: no {shown} lines in the output{_excerpt(text)}")
    return [row]


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
    typed = typed_parser(fmt, **opts)
    if typed is not None:
        return typed
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


#: The columns every parsed table starts with (and ends with ``parse_error``): a device whose
#: output was not parsed still has its row, saying why.
LEADING_COLUMNS = ("device_id", "status", "error")


def _typed_column(column: pd.Series) -> pd.Series:
    """Python ints with gaps as nullable ``Int64`` and bools as ``boolean``, not floats and objects."""
    import pandas as pd

    present = column.dropna()
    if column.dtype != object or present.empty:
        return column
    if all(isinstance(v, bool) for v in present):
        return column.astype("boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return column.astype("Int64") if len(present) < len(column) else column.astype("int64")
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pd.to_numeric(column.astype(object), errors="coerce").astype("float64")
    return column


def parse_results(
    results: Iterable[CommandResult], fmt: str, *, include_failed: bool = False, **opts: Any
) -> pd.DataFrame:
    """Parse every device's output into one long DataFrame; every result keeps at least one row.

    Columns: ``device_id``, ``status``, ``error`` (the result's), the parsed columns in
    the order first seen, ``parse_error`` (empty when the output parsed).  Only results
    with status ``ok`` are parsed unless ``include_failed=True``; the others keep one
    row with their status and error and empty parsed columns, so a table of "disks over
    90 %" cannot look healthier by leaving out the devices that did not answer.  A device
    whose output does not parse gets one row with ``parse_error`` set; one whose output
    gives no rows (a regex with no match, ``[]``) one row with empty parsed columns.
    Parsed keys named like the leading columns become ``device_id_parsed`` …; columns
    whose cells are all numbers become numeric.  A bad format or option raises
    :class:`ParseError` at once.
    """
    import pandas as pd

    from ..client.result import ResultStatus

    parser = make_parser(fmt, **opts)
    reserved = (*LEADING_COLUMNS, "parse_error")
    records: list[Row] = []
    for result in results:
        base: Row = {"device_id": result.device_id, "status": result.status or "", "error": result.error or ""}
        if result.status != ResultStatus.OK and not include_failed:
            records.append({**base, "parse_error": ""})
            continue
        try:
            if isinstance(parser, TypedParser):  # typed formats may need the command (free -m)
                rows = parser(result.stdout or "", result.command or "")
            else:
                rows = parser(result.stdout or "")
        except ParseError as exc:
            records.append({**base, "parse_error": str(exc)})
            continue
        if not rows:
            records.append({**base, "parse_error": ""})
        for row in rows:
            record: Row = dict(base)
            for key, value in row.items():
                name = str(key)
                record[f"{name}_parsed" if name in reserved else name] = value
            record["parse_error"] = ""
            records.append(record)
    columns = list(dict.fromkeys([*LEADING_COLUMNS, *(k for r in records for k in r if k != "parse_error")]))
    columns.append("parse_error")
    if not records:
        return pd.DataFrame({name: pd.Series(dtype=str) for name in columns})
    # Object columns first, so ints with gaps do not turn into floats before _typed_column sees them.
    frame = pd.DataFrame({name: pd.Series([r.get(name) for r in records], dtype=object) for name in columns})
    for name in LEADING_COLUMNS:
        frame[name] = frame[name].astype(str)
    frame["parse_error"] = frame["parse_error"].fillna("").astype(str)
    for name in columns[len(LEADING_COLUMNS) : -1]:
        frame[name] = _typed_column(_numeric(frame[name]))
    return frame

"""``tunnelnb run``: the fleet fan-out from a terminal.

Parses nothing itself (the CLI does) and decides nothing about devices (the
fleet does): it gets a password, shows progress on stderr, and prints the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
import warnings
from typing import TextIO

from ..fleet.results import Results
from ..fleet.tables import escape_controls, output_text, text_table
from . import connecting

__all__ = ["RESULT_HEADER", "format_table", "run_command", "short_stdout", "use_colour"]

#: The table's columns: what an operator scans for, the full output is in ``--format json``.
RESULT_HEADER = ("DEVICE", "STATUS", "EXIT", "DURATION", "STDOUT", "ERROR")
#: Characters of output shown per row (its lines joined by ↵).
STDOUT_WIDTH = 60

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
#: ANSI colours of a status cell (the terminal's palette, so they suit dark and light themes).
_STATUS_SGR = {
    "ok": "\x1b[32m",
    "error": "\x1b[31m",
    "timeout": "\x1b[33m",
    "offline": "\x1b[2m",
    "auth_failed": "\x1b[31;1m",
    "disconnected": "\x1b[35m",
    "cancelled": "\x1b[2m",
    "skipped": "\x1b[2m",
}
_STATUS_COLUMN = RESULT_HEADER.index("STATUS")


def short_stdout(text: str, width: int = STDOUT_WIDTH) -> str:
    """A device's output in one cell: ``binary output, N bytes``, or its lines joined by ↵, cut to ``width``."""
    shown = output_text(text)
    lines = [line.rstrip("\r") for line in shown.rstrip("\n").split("\n")]
    joined = " ↵ ".join(lines)
    return joined if len(joined) <= width else joined[: width - 1] + "…"


def format_table(results: Results, *, colour: bool = False) -> str:
    """A header and one row per device; ``colour`` for a terminal (header bold, status coloured).

    Device output never reaches the terminal as it came: binary output is
    summarised, control characters are escaped, colours stripped.
    """
    rows = [
        (
            r.device_id,
            str(r.status),
            "" if r.exit_code is None else str(r.exit_code),
            f"{r.duration_s:.2f}s",
            short_stdout(r.stdout or ""),
            r.error or "",
        )
        for r in results
    ]
    if not rows:
        return ""

    def style(row: int, column: int, cell: str) -> str:
        if row == 0:
            return f"{_BOLD}{cell}{_RESET}"
        sgr = _STATUS_SGR.get(cell.strip()) if column == _STATUS_COLUMN else None
        return f"{sgr}{cell}{_RESET}" if sgr else cell

    return text_table(RESULT_HEADER, rows, style=style if colour else None)


def use_colour(stream: TextIO) -> bool:
    """Colour only for a person at a terminal: never into a pipe or a file, never with ``$NO_COLOR`` set."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run_command(args: argparse.Namespace, command: str) -> int:
    """Run ``command`` on ``args.targets``; the exit status says whether every device succeeded."""
    where = connecting.where(args)
    password = connecting.login_password(args)
    outcome: dict[str, Results] = {}
    started = time.perf_counter()

    async def main() -> None:
        async with connecting.fleet_with_progress(where, args.targets, args.user, password) as (fleet, ids, progress):
            try:
                outcome["results"] = await fleet.run(
                    command,
                    ids,
                    timeout=args.timeout,
                    concurrency=args.concurrency,
                    on_result=progress.update,
                    ok_codes=args.ok_codes,
                    verify=args.verify,
                    batch=args.batch,
                    max_errors=args.max_errors,
                    canary=args.canary,
                )
            except asyncio.CancelledError:
                if fleet.last_results is not None:
                    outcome["results"] = fleet.last_results
                raise

    interrupted = False
    try:
        with warnings.catch_warnings():
            asyncio.run(main())
    except KeyboardInterrupt:
        interrupted = True
    results = outcome.get("results")
    if results is None:
        return 130 if interrupted else 1
    _print(results, args.format, sys.stdout)
    counts = ", ".join(f"{n} {status}" for status, n in results.counts().items() if n)
    print(f"{len(results)} devices: {counts} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    if interrupted:
        return 130
    return 0 if all(r.ok for r in results) else 1


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(value: object) -> object:
    if isinstance(value, str) and _SURROGATE.search(value):
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    return value


def _print(results: Results, fmt: str, stream: TextIO) -> None:
    """The rows in ``fmt``: JSON and CSV keep every device's text, with control characters escaped."""
    if fmt == "json":
        # to_json escapes C0 controls and non-ASCII; DEL is the one control it leaves raw.  Bytes that are
        # not UTF-8 (lone surrogates in a verified run's binary output) cannot be JSON text: escaped as \udcXX.
        df = results.df.copy()
        for column in ("command", "stdout", "error"):
            df[column] = df[column].map(_escape_surrogates)
        text = df.to_json(orient="records", date_format="iso", indent=1).replace("\x7f", "\\u007f")
        stream.write(text + "\n")
    elif fmt == "csv":
        df = results.df.copy()
        for column in ("command", "stdout", "error"):
            df[column] = df[column].map(escape_controls)
        stream.write(df.to_csv(index=False))
    else:
        text = format_table(results, colour=use_colour(stream))
        if text:
            stream.write(text + "\n")

"""``tunnelnb get`` and ``tunnelnb put``: files in and out of many devices from a terminal.

Parses nothing itself (:mod:`.main` does) and decides nothing about devices
(:mod:`tunnelnb.fleet.files` does): it connects as ``tunnelnb run`` does, gets a
password, shows progress on stderr and prints one row per device.

    tunnelnb get --platform URL 'device-*' -- /var/log/app.log ./logs
    tunnelnb put --platform URL @edge -- ./app.conf /etc/app/
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import TunnelnbError
from . import connecting, options

if TYPE_CHECKING:
    from ..fleet.transfers import TransferResults

__all__ = ["TRANSFER_HEADER", "format_transfers", "transfer_command"]

#: The table's columns (``--format json`` has the full sha256).
TRANSFER_HEADER = ("DEVICE", "STATUS", "BYTES", "DURATION", "SHA256", "PATH", "ERROR")
_STATUS_COLUMN = TRANSFER_HEADER.index("STATUS")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``tunnelnb get`` and ``tunnelnb put``: the connection options are ``run``'s."""
    usages = {
        "get": ("TARGETS... -- REMOTE LOCAL_DIR", "copy a file from many devices to LOCAL_DIR/DEVICE_ID/NAME"),
        "put": ("TARGETS... -- LOCAL REMOTE", "copy a local file to many devices (REMOTE ending in /: a directory)"),
    }
    for name, (usage, what) in usages.items():
        p = sub.add_parser(
            name,
            help=what,
            usage=f"tunnelnb {name} --platform URL [options] {usage}",
            description=f"{what[0].upper()}{what[1:]}: through each device's shell, checksummed, atomic at the "
            "destination. Exit status: 0 when every device's file went through, 1 otherwise, 130 when interrupted.",
        )
        options.add_connection(p)
        p.add_argument("--format", choices=["table", "json", "csv"], default="table")
        p.add_argument(
            "--timeout",
            type=float,
            default=120.0,
            help="seconds each exchange with a device may take (one moves about a megabyte; default 120)",
        )
        p.add_argument("--concurrency", type=int, default=20, help="devices at once (default 20)")
        if name == "get":
            p.add_argument("--force", action="store_true", help="replace local files that exist")
        else:
            p.add_argument("--keep-mode", action="store_true", help="give the remote file the local file's mode")
        options.add_cloud(p)
        options.add_tls_client(p)
        p.add_argument("targets", nargs="+", help="device ids, globs, ranges device-0[1-4], tags @edge @fw=2.1")
        p.add_argument("paths", nargs=2, metavar="PATH", help="REMOTE LOCAL_DIR (get), LOCAL REMOTE (put)")
        options.add_log_level(p)


def transfer_command(args: argparse.Namespace) -> int:
    """``tunnelnb get`` / ``put``: 0 when every device's file went through, 1 otherwise, 130 when interrupted."""
    from ..fleet import files

    if args.timeout <= 0 or args.concurrency < 1:
        raise TunnelnbError("--timeout must be positive and --concurrency at least 1")
    where = connecting.where(args)
    if args.command == "put" and not os.path.isfile(args.paths[0]):
        raise TunnelnbError(f"{args.paths[0]}: no such local file")
    password = connecting.login_password(args)
    outcome: dict[str, TransferResults] = {}
    started = time.perf_counter()

    async def main() -> None:
        async with connecting.fleet_with_progress(where, args.targets, args.user, password) as (fleet, ids, progress):
            options: dict[str, Any] = {
                "timeout": args.timeout,
                "concurrency": args.concurrency,
                "on_result": progress.update,
            }
            if args.command == "get":
                remote, local_dir = args.paths
                outcome["rows"] = await files.get(fleet, remote, ids, local_dir, overwrite=args.force, **options)
            else:
                local, remote = args.paths
                outcome["rows"] = await files.put(fleet, local, remote, ids, keep_mode=args.keep_mode, **options)

    try:
        with warnings.catch_warnings():
            asyncio.run(main())
    except KeyboardInterrupt:
        print("tunnelnb: interrupted (the rows so far are in the fleet's history)", file=sys.stderr)
        return 130
    rows = outcome["rows"]
    _print(rows, args.format, sys.stdout)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"{len(rows)} devices: {summary} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0 if rows.rows and all(row.ok for row in rows) else 1


def format_transfers(rows: TransferResults, *, colour: bool = False) -> str:
    """A header and one row per device; ``colour`` for a terminal (as ``tunnelnb run`` colours statuses)."""
    from ..fleet.tables import text_table
    from ..fleet.transfers import byte_count
    from .run import _BOLD, _RESET, _STATUS_SGR

    table = [
        (r.device_id, r.status, byte_count(r.bytes), f"{r.duration_s:.2f}s", r.sha256[:12], r.path, r.error)
        for r in rows
    ]

    def style(row: int, column: int, cell: str) -> str:
        if row == 0:
            return f"{_BOLD}{cell}{_RESET}"
        sgr = _STATUS_SGR.get(cell.strip()) if column == _STATUS_COLUMN else None
        return f"{sgr}{cell}{_RESET}" if sgr else cell

    return text_table(TRANSFER_HEADER, table, style=style if colour else None)


def _print(rows: TransferResults, fmt: str, stream: TextIO) -> None:
    if fmt == "json":
        stream.write(rows.df.to_json(orient="records", indent=1) + "\n")
    elif fmt == "csv":
        stream.write(rows.df.to_csv(index=False))
    else:
        from .run import use_colour

        stream.write(format_transfers(rows, colour=use_colour(stream)) + "\n")

"""``tunnelnb run``: the fleet fan-out from a terminal.

Parses nothing itself (the CLI does) and decides nothing about devices (the
fleet does): it gets a password, shows progress on stderr, and prints the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
import time
import warnings
from typing import TextIO

from ..errors import FleetSizeWarning, TunnelnbError
from ..fleet.progress import TextProgress
from ..fleet.results import Results

__all__ = ["format_table", "run_command"]

def format_table(results: Results) -> str:
    """One aligned row per device; further output lines are indented under the first."""
    rows = []
    for r in results:
        text = r.stdout.rstrip("\n") if r.stdout else ""
        if r.status != "ok" and r.status != "error":
            text = r.error if not text else text + "\n" + r.error
        code = "" if r.exit_code is None else str(r.exit_code)
        rows.append((r.device_id, r.status, code, f"{r.duration_s:.2f}s", text.split("\n")))
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    indent = " " * (sum(widths) + 2 * 4)
    out = []
    for *cells, lines in rows:
        head = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        out.append(f"{head}  {lines[0]}".rstrip())
        out.extend(f"{indent}{line}".rstrip() for line in lines[1:])
    return "\n".join(out)


def _password(args: argparse.Namespace) -> str:
    password = os.environ.get(args.password_env)
    if password:
        return password
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    raise TunnelnbError(f"no login password: set ${args.password_env} (or run in a terminal to be asked)")


def run_command(args: argparse.Namespace, command: str) -> int:
    """Run ``command`` on ``args.targets``; the exit status says whether every device succeeded."""
    from ..connection import connect

    if args.huaweicloud:
        if not (args.region or args.endpoint):
            raise TunnelnbError("--huaweicloud needs --region R (or --endpoint URL of your instance)")
        where: dict[str, object] = {
            "huaweicloud": args.region or True,
            "endpoint": args.endpoint,
            "instance_id": args.instance_id,
            # "demo" is the local platform's default project, never a cloud one: let the SDK's variable decide.
            "project_id": None if args.project_id == "demo" else args.project_id,
        }
    else:
        if not args.platform:
            raise TunnelnbError("no platform URL: pass --platform URL or set $TUNNELNB_URL")
        api_token = args.api_token or os.environ.get("TUNNELNB_API_TOKEN")
        if not api_token:
            raise TunnelnbError("no API token: set $TUNNELNB_API_TOKEN (or pass --api-token)")
        where = {
            "url": args.platform,
            "project_id": args.project_id,
            "api_token": api_token,
            "ca_bundle": args.ca_bundle,
            "insecure": args.insecure,
        }
    password = _password(args)
    outcome: dict[str, Results] = {}
    started = time.perf_counter()

    async def main() -> None:
        fleet = await connect(**where)  # type: ignore[arg-type]
        try:
            ids = fleet.select(args.targets)
            fleet.set_login(ids, args.user, password)
            progress = TextProgress(len(ids), sys.stderr)
            shower = asyncio.create_task(progress.show())
            try:
                # One run logs every device in once anyway: the pool-size warning is for repeated runs.
                warnings.simplefilter("ignore", FleetSizeWarning)
                outcome["results"] = await fleet.run(
                    command, ids, timeout=args.timeout, concurrency=args.concurrency, on_result=progress.update
                )
            except asyncio.CancelledError:
                if fleet.last_results is not None:
                    outcome["results"] = fleet.last_results
                raise
            finally:
                shower.cancel()
                progress.close()
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await fleet.close()

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


def _print(results: Results, fmt: str, stream: TextIO) -> None:
    if fmt == "json":
        stream.write(results.df.to_json(orient="records", date_format="iso", indent=1) + "\n")
    elif fmt == "csv":
        stream.write(results.df.to_csv(index=False))
    else:
        text = format_table(results)
        if text:
            stream.write(text + "\n")

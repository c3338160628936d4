"""Running commands: ``%tunnel TARGETS -- COMMAND`` and the ``%%tunnel TARGETS`` cell.

Both come to :func:`run`, which resolves the targets, shows device output live
(:class:`~tunnelnb.fleet.progress.LiveOutput`) and progress (a widget in a
notebook, text elsewhere) while :meth:`Fleet.run` goes, and returns the
:class:`~tunnelnb.fleet.results.Results`.  Ctrl-C shows what finished, then
interrupts the cell.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...fleet.progress import LiveOutput, TextProgress
from ...fleet.results import Results
from ..progress import WidgetProgress
from .parsing import expand, parse, subcommand, target_words

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["run", "run_cell", "run_line"]


@subcommand("TARGETS -- COMMAND")
@argument("targets", nargs="*")
@argument("--timeout", type=float)
@argument("--concurrency", type=int)
@argument("--parse", metavar="FMT")
@argument("--pattern")
@argument("--include-failed", action="store_true")
@argument("-o", "--out", metavar="VAR")
@argument("--no-stream", action="store_true")
def run_line(magics: TunnelMagics, line: str) -> Any:
    """Run one command on the targets."""
    before, _, command = line.partition(" -- ") if " -- " in line else (line.rstrip("- "), "", "")
    if not command.strip():
        raise UsageError("no command after --: %tunnel TARGETS -- COMMAND")
    args = parse(before, run_line.parser)
    return run(magics, args, shell_words(command))


def shell_words(text: str) -> str:
    """The words after ``--`` as a shell command line means them, joined as ``tunnelnb run`` joins its argv.

    ``%tunnel d -- 'uptime; hostname'`` runs ``uptime; hostname``, as
    ``tunnelnb run d -- 'uptime; hostname'`` does: the quotes group words, they
    are not part of the command.
    """
    try:
        return " ".join(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"cannot read the command {text.strip()!r}: {exc}") from None


def run_cell(magics: TunnelMagics, args: argparse.Namespace, cell: str) -> Any:
    """``%%tunnel``: the cell is one script, with ``{expr}`` and ``$var`` expanded unless ``--raw``."""
    if not cell.strip():
        raise UsageError("the cell is empty: write the shell script to run below %%tunnel TARGETS")
    script = cell if args.raw else expand(cell, magics.user_ns)
    return run(magics, args, script)


def run(magics: TunnelMagics, args: argparse.Namespace, command: str) -> Any:
    """Run ``command`` on ``args.targets``, showing it live; the results (or what ``--parse`` makes of them)."""
    fleet = magics.need_fleet()
    if not args.targets:
        raise UsageError("no targets: %%tunnel device-01 device-02 (ids, globs, ranges or @tags)")
    ids = fleet.select(target_words(args.targets))
    if not ids:
        raise UsageError(f"no device matches {' '.join(args.targets)!r}: %tunnel devices lists them")
    timeout = magics.timeout if args.timeout is None else args.timeout
    concurrency = magics.concurrency if args.concurrency is None else args.concurrency
    if timeout <= 0 or concurrency < 1:
        raise UsageError("--timeout must be positive and --concurrency at least 1")
    live = None
    if magics.stream and not args.no_stream:
        live = LiveOutput(sys.stdout, ids, max_lines=magics.stream_max_lines)
    progress: WidgetProgress | TextProgress
    timer: Any
    loop = magics.event_loop()
    if magics.in_kernel():
        progress = WidgetProgress(len(ids), after_s=magics.progress_after)
        timer = loop.call_later(magics.progress_after, progress.show)
    else:
        progress = TextProgress(len(ids), sys.stderr, after_s=magics.progress_after)
        timer = None

    def on_result(row: Any) -> None:
        if live is not None:
            live.finish(row.device_id)
        progress.update(row)

    async def run_on_fleet() -> Results:
        shower = asyncio.ensure_future(progress.show()) if isinstance(progress, TextProgress) else None
        try:
            return await fleet.run(
                command,
                ids,
                timeout=timeout,
                concurrency=concurrency,
                on_output=live.write if live is not None else None,
                on_result=on_result,
            )
        finally:
            if shower is not None:
                shower.cancel()

    interrupted = False
    try:
        results = magics.call(run_on_fleet())
    except KeyboardInterrupt:
        interrupted = True
        if fleet.last_results is None:
            raise
        results = fleet.last_results
    finally:
        if timer is not None:
            loop.call_soon_threadsafe(timer.cancel)
        if live is not None:
            live.close()
        progress.close()
    results.html_max_rows = magics.display_limit
    if args.out:
        magics.user_ns[args.out] = results
    if interrupted:
        from IPython.display import display

        display(results)
        raise KeyboardInterrupt
    if args.parse:
        options: dict[str, Any] = {"pattern": args.pattern} if args.pattern else {}
        if args.include_failed:
            options["include_failed"] = True
        return results.parse(args.parse, **options)
    return results

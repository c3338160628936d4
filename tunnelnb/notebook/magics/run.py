"""Running commands: ``%tunnel TARGETS -- COMMAND`` and the ``%%tunnel TARGETS`` cell.

Both come to :func:`run`, which resolves the targets, shows device output live
(:class:`~tunnelnb.fleet.progress.LiveOutput`) and progress (a widget in a
notebook, text elsewhere) while :meth:`Fleet.run` goes, and returns the
:class:`~tunnelnb.fleet.results.Results`.  Ctrl-C shows what finished, then
interrupts the cell with one line (:class:`Interrupted`), not a traceback.
``--batch``, ``--max-errors`` and ``--canary`` make it a rolling run
(:mod:`tunnelnb.fleet.rollout`); ``--bg`` hands the run to :mod:`.background`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...errors import TunnelnbError
from ...fleet.progress import LiveOutput
from ...fleet.results import Results
from ...fleet.rollout import batch_option, canary_option, max_errors_option
from ..progress import cell_progress
from .parsing import expand, parse, plural, subcommand, target_words

if TYPE_CHECKING:
    from ...fleet.fleet import Fleet
    from . import TunnelMagics

__all__ = [
    "Interrupted",
    "batch_arg",
    "canary_arg",
    "max_errors_arg",
    "missing_dashes",
    "ok_codes",
    "run",
    "run_cell",
    "run_line",
]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (Kernel → Interrupt) during a magic, shown as one line: ``interrupted: 4 rows cancelled``.

    It stays a :class:`KeyboardInterrupt`, so the cell ends in error and a Run All
    stops there; IPython shows what :meth:`_render_traceback_` returns instead of
    a traceback, which here would only show tunnelnb's insides.  Its ``__name__``
    is the builtin's, so a Jupyter reply still says ``ename: KeyboardInterrupt``
    to front ends that look for it.
    """

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


Interrupted.__name__ = "KeyboardInterrupt"


def ok_codes(text: str) -> tuple[int, ...]:
    """``--ok-codes 0,1``: the exit codes that count as ``ok`` (grep's 1 means "no match", not a failure)."""
    try:
        codes = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        codes = ()
    if not codes or not all(0 <= code <= 255 for code in codes):
        raise argparse.ArgumentTypeError(f"give exit codes from 0 to 255 separated by commas, e.g. 0,1 (not {text!r})")
    return codes


def _checked(check: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse type from a rollout check, whose ValueError says what is wanted (a one-line UsageError)."""

    def parse_value(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse_value.__name__ = name
    return parse_value


#: ``--batch N|P%``, ``--max-errors N|P%``, ``--canary N``: a rolling run's options, checked.
batch_arg = _checked(batch_option, "batch")
max_errors_arg = _checked(max_errors_option, "max_errors")
canary_arg = _checked(canary_option, "canary")


@subcommand("TARGETS -- COMMAND")
@argument("targets", nargs="*")
@argument("--timeout", type=float)
@argument("--concurrency", type=int)
@argument("--parse", metavar="FMT")
@argument("--pattern")
@argument("--include-failed", action="store_true")
@argument("-o", "--out", metavar="VAR")
@argument("--no-stream", action="store_true")
@argument("--ok-codes", type=ok_codes, metavar="0,1")
@argument("--verify", action="store_true")
@argument("--batch", type=batch_arg, metavar="N|P%")
@argument("--max-errors", type=max_errors_arg, metavar="N|P%")
@argument("--canary", type=canary_arg, metavar="N")
@argument("--bg", action="store_true")
def run_line(magics: TunnelMagics, line: str) -> Any:
    """Run one command on the targets."""
    before, _, command = line.partition(" -- ") if " -- " in line else (line.rstrip("- "), "", "")
    if not command.strip():
        raise UsageError("no command after --: %tunnel TARGETS -- COMMAND")
    args = parse(before, run_line.parser)
    return run(magics, args, shell_words(command))


def missing_dashes(fleet: Fleet, line: str) -> str | None:
    """``put -- before the command: %tunnel device-01 -- uptime``, when a line without ``--`` reads that way.

    Without ``--`` the first word is a subcommand, so ``%tunnel device-01 uptime``
    would only be "unknown subcommand".  When the line starts with targets this
    says where the ``--`` goes (after the run's options); None when it does not.
    """
    words = line.split()
    count = 0
    while count < len(words) and not words[count].startswith("-") and _is_target(fleet, words[count]):
        count += 1
    if count == 0:
        return None
    end = count
    while end < len(words) and words[end].startswith("-"):
        action = run_line.parser._option_string_actions.get(words[end].split("=", 1)[0])
        takes_value = action is not None and action.nargs != 0 and "=" not in words[end]
        end += 2 if takes_value else 1
    if end >= len(words):
        return f"no command: %tunnel {' '.join(words)} -- COMMAND"
    return f"put -- before the command: %tunnel {' '.join(words[:end])} -- {' '.join(words[end:])}"


def _is_target(fleet: Fleet, word: str) -> bool:
    try:
        return bool(fleet.select(word))
    except (TunnelnbError, ValueError):
        return False


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
    # What goes to Fleet.run, and to a background job with --bg: the other options only when
    # given, so Fleet.run's own defaults apply and the magics need no newer Fleet.run than they use.
    options: dict[str, Any] = {"timeout": timeout, "concurrency": concurrency}
    if args.ok_codes is not None:
        options["ok_codes"] = args.ok_codes
    if args.verify or magics.verify:
        options["verify"] = True  # exact output, checksummed; nothing to show live meanwhile
    rolling = {"batch": args.batch, "max_errors": args.max_errors, "canary": args.canary}
    options.update({name: value for name, value in rolling.items() if value is not None})
    if args.bg:
        from .background import start

        return start(magics, args, command, ids, options)
    live = None
    if magics.stream and not args.no_stream:
        # Colour in a notebook (it renders it) and on a terminal, never into a pipe or a file.
        colour = magics.in_kernel() or sys.stdout.isatty()
        live = LiveOutput(sys.stdout, ids, max_lines=magics.stream_max_lines, colour=colour)
    interrupted = False
    with cell_progress(
        len(ids), magics.event_loop(), in_kernel=magics.in_kernel(), after_s=magics.progress_after
    ) as progress:

        def on_result(row: Any) -> None:
            if live is not None:
                live.finish(row.device_id)
            progress.update(row)

        on_output = live.write if live is not None else None
        try:
            results = magics.call(
                progress.around(fleet.run(command, ids, on_output=on_output, on_result=on_result, **options))
            )
        except KeyboardInterrupt:
            interrupted = True
            if fleet.last_results is None:
                raise Interrupted("interrupted before any device started") from None
            results = fleet.last_results
        finally:
            if live is not None:
                live.close()
    results.html_max_rows = magics.display_limit
    if args.out:
        magics.user_ns[args.out] = results
    if interrupted:
        from IPython.display import display

        display(results)
        raise Interrupted(_interrupted(results)) from None
    if args.parse:
        parse_options: dict[str, Any] = {"pattern": args.pattern} if args.pattern else {}
        if args.include_failed:
            parse_options["include_failed"] = True
        return results.parse(args.parse, **parse_options)
    return results


def _interrupted(results: Results) -> str:
    """``interrupted: 4 rows cancelled, 1 finished``: the line an interrupted run ends with."""
    counts = results.counts()
    cancelled = counts.get("cancelled", 0)
    finished = sum(counts.values()) - cancelled
    return f"interrupted: {plural(cancelled, 'row')} cancelled" + (f", {finished} finished" if finished else "")

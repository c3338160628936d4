"""``%tunnel`` and ``%%tunnel``: the IPython face of the fleet.

A thin front end: it parses, picks the loop (:mod:`tunnelnb.fleet.runner`), and shows
what the :class:`~tunnelnb.fleet.fleet.Fleet` does.  Options are traitlets, so
``%config TunnelMagics.timeout = 60`` and IPython profiles work.  Mistakes by
the user are one line (:class:`~IPython.core.error.UsageError`), never a
traceback.

:class:`TunnelMagics` holds the options and the connection and dispatches; each
subcommand lives in a module of its own, with its parser: :mod:`.connect`
(``connect``, ``close``), :mod:`.login`, :mod:`.run` (``TARGETS -- COMMAND`` and
the cell), :mod:`.record`, :mod:`.inventory` (``devices``, ``history``),
:mod:`.status` and :mod:`.shell`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pandas as pd
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Int
from traitlets.config import Configurable

from ...errors import CassetteMismatch, TunnelnbError
from ...fleet.fleet import Fleet
from ...fleet.jobs import Job
from ...fleet.runner import KernelLoopRunner, LoopRunner
from ...fleet.tables import terminal_text
from . import connect, files, inventory, jobs, login, record, run, shell, status
from .parsing import HelpShown, did_you_mean, parse
from .run import Interrupted, batch_arg, canary_arg, max_errors_arg, ok_codes

__all__ = ["SUBCOMMANDS", "TunnelMagics", "load_ipython_extension", "unload_ipython_extension"]

#: ``%tunnel NAME …``: what runs it, given the magics and the rest of the line.
SUBCOMMANDS: dict[str, Callable[[TunnelMagics, str], Any]] = {
    "connect": connect.connect,
    "devices": inventory.devices,
    "login": login.login,
    "shell": shell.shell,
    "status": status.status,
    "history": inventory.history,
    "get": files.get,
    "put": files.put,
    "jobs": jobs.jobs,
    "record": record.record,
    "close": connect.close,
}

LINE_HELP = """\
Run shell commands on devices behind the secure tunnel, and manage the connection.

Line magic::

  %tunnel connect --embedded [--devices N] [--seed S]   local platform + simulated fleet in this kernel
  %tunnel connect URL [--project-id P] [--api-token-env VAR] [--ca-bundle PEM]
  %tunnel connect huaweicloud --region R [--project-id P] [--instance-id I]   AK/SK from $HUAWEICLOUD_SDK_AK/_SK
  %tunnel connect                         $TUNNELNB_URL when set, else --embedded
  %tunnel devices [--refresh]             the inventory table
  %tunnel login TARGETS [--user U] [--password-env VAR]   (prompts when no variable is given)
  %tunnel TARGETS [--timeout S] [--ok-codes 0,1] [--verify] -- COMMAND    one command on the targets
  %tunnel TARGETS [--batch N|P%] [--max-errors N|P%] [--canary N] -- COMMAND
                                          a rolling run: batches one after another (P% of the targets,
                                          rounded up); no new device once more than N (P%, rounded down)
                                          have failed; the first N targets first, stopping if one fails;
                                          devices never started are rows with status skipped
  %tunnel TARGETS --bg -o VAR -- COMMAND  run in the background, VAR gets a job handle (also %%tunnel)
  %tunnel jobs [N] [--wait | --cancel]    background jobs: the table, job N, its rows, or stop it (all)
  %tunnel get TARGETS REMOTE LOCAL_DIR [--force] [--timeout S] [-o VAR]   a file from each device, checksummed
  %tunnel put TARGETS LOCAL REMOTE [--keep-mode] [--timeout S] [-o VAR]   a file to each device, whole or not at all
  %tunnel shell DEVICE                    an interactive terminal (notebooks)
  %tunnel status                          the live fleet dashboard
  %tunnel history [--last N]              every run so far
  %tunnel close [TARGETS | --all]         close sessions (everything with --all or no targets)

Record and replay (cassettes: JSON Lines, passwords and tokens masked)::

  %tunnel record PATH                     record what the fleet gets from now on (platform answers, frames)
  %tunnel record --stop                   write it: says how many events, devices and secrets masked
  %tunnel connect --replay PATH [--mode none|new_episodes|all]   play a cassette back, no network
                                          (new_episodes: what it lacks runs live and is added; all: record anew)
  %tunnel connect --cassette PATH [--devices N --seed S]   a notebook's own cassette: replayed, unless
                                          $TUNNELNB_URL is set (then live, nothing recorded); --mode or
                                          $TUNNELNB_RECORD_MODE=all records it anew (from $TUNNELNB_URL, else an
                                          embedded fleet of N devices, seed S)

Cell magic: the cell is one shell script, run on every target in its persistent
shell; ``{expr}`` and ``$var`` expand from the notebook's namespace as for ``!``
lines (``$$`` is a literal ``$``; ``--raw`` turns expansion off).

TARGETS: ids, globs (``device-*``), ranges (``device-0[1-4]``), tags (``@edge``,
``@fw=2.1``), several separated by spaces.  Secrets are never accepted on the
line: passwords and tokens come from environment variables or a hidden prompt.
"""


@magics_class
class TunnelMagics(Magics):
    """The ``%tunnel`` magics; configurable with ``%config TunnelMagics.<option> = value``."""

    timeout = Float(30.0, help="Seconds a command may run on a device before it is interrupted.").tag(config=True)
    concurrency = Int(100, help="Devices running a command at once.").tag(config=True)
    display_limit = Int(50, help="Rows shown in a results table (all rows stay in .df).").tag(config=True)
    stream = Bool(True, help="Show device output live while a cell runs.").tag(config=True)
    stream_max_lines = Int(1000, help="Live output lines per run before the rest is left to the table.").tag(
        config=True
    )
    progress_after = Float(2.0, help="Seconds into a run before the progress bar appears.").tag(config=True)
    verify = Bool(
        False,
        help="Verified runs: the device sends output checksummed and damaged parts are read again (exact output "
        "from devices that damage it, e.g. the C SDK's; no live output). Like --verify on every run.",
    ).tag(config=True)
    devices = Int(8, help="Devices in the embedded simulated fleet (connect --embedded).").tag(config=True)
    seed = Int(1, help="Seed of the embedded simulated fleet (connect --embedded).").tag(config=True)

    def __init__(self, shell: Any) -> None:
        Configurable.__init__(self, config=shell.config)
        Magics.__init__(self, shell=shell)
        self.fleet: Fleet | None = None
        self.runner: LoopRunner | None = None  # the fleet's event loop, from connect to close
        self.where = ""  # what we are connected to, as connect said it
        self.dashboard: Any = None  # the one live dashboard: a new %tunnel status replaces it
        self.recording: Any = None  # %tunnel record PATH, until --stop

    # -- the magic ---------------------------------------------------------

    @magic_arguments()
    @argument("targets", nargs="*", help="devices: ids, globs, ranges, @tags")
    @argument("--timeout", type=float, help="seconds per device (default: TunnelMagics.timeout)")
    @argument("--concurrency", type=int, help="devices at once (default: TunnelMagics.concurrency)")
    @argument("--parse", metavar="FMT", help="parse the outputs: kv, json, csv, table or regex")
    @argument("--pattern", help="the regex for --parse regex (named groups become columns)")
    @argument("--include-failed", action="store_true", help="--parse also the output of devices that failed")
    @argument("-o", "--out", metavar="VAR", help="store the Results object in this variable")
    @argument("--no-stream", action="store_true", help="do not show device output live")
    @argument("--raw", action="store_true", help="do not expand {expr} and $var in the cell")
    @argument(
        "--ok-codes",
        type=ok_codes,
        metavar="0,1",
        help="exit codes that count as ok (e.g. grep's 1, no match; default: 0 only)",
    )
    @argument(
        "--verify",
        action="store_true",
        help="exact output from devices that damage it: checksummed, damaged parts read again; no live output "
        "(default: TunnelMagics.verify)",
    )
    @argument("--batch", type=batch_arg, metavar="N|P%", help="run in batches of N devices (or P%% of the targets)")
    @argument(
        "--max-errors",
        type=max_errors_arg,
        metavar="N|P%",
        help="start no new device once more than N (or P%% of the targets) have failed; the rest are skipped",
    )
    @argument("--canary", type=canary_arg, metavar="N", help="run the first N targets first; stop if any fails")
    @argument("--bg", action="store_true", help="run in the background; with -o VAR, VAR gets a job handle")
    @line_cell_magic
    def tunnel(self, line: str, cell: str | None = None) -> Any:
        try:
            if cell is None:
                return self._line(line)
            return run.run_cell(self, parse(line, self.tunnel.parser), cell)
        except (TunnelnbError, CassetteMismatch) as exc:
            raise UsageError(str(exc)) from None
        except HelpShown:
            return None
        except Interrupted:
            raise
        except KeyboardInterrupt:
            # Any other Ctrl-C (a login, a prompt, a connect): one line, and still an
            # error, so Run All stops.
            raise Interrupted("interrupted") from None

    # The help shows the subcommands first, then the cell magic's options.
    tunnel.__doc__ = LINE_HELP + "\n" + (tunnel.__doc__ or "")

    def _line(self, line: str) -> Any:
        words = line.split()
        if "--" in words:
            return run.run_line(self, line)
        if not words:
            raise UsageError("what should %tunnel do? Try %tunnel connect --embedded, or %tunnel? for help")
        sub, rest = words[0], line.strip()[len(words[0]) :]
        if sub not in SUBCOMMANDS:
            raise UsageError(self._unknown_subcommand(sub, line))
        return SUBCOMMANDS[sub](self, rest)

    def _unknown_subcommand(self, sub: str, line: str) -> str:
        """What to say when ``%tunnel WORD …`` names no subcommand: the likely subcommand, or the missing ``--``."""
        if self.fleet is not None:
            fixed = run.missing_dashes(self.fleet, line)
            if fixed is not None:
                return fixed
        # Only a word of letters can be a mistyped subcommand: "device-01" is a target, not "devices".
        guess = did_you_mean(sub, SUBCOMMANDS) if sub.isalpha() else None
        if guess is not None:
            rest = line.strip()[len(sub) :]
            return f"unknown subcommand {sub!r}: did you mean %tunnel {guess}{rest}?"
        return f"unknown subcommand {sub!r}: use {', '.join(SUBCOMMANDS)}, or TARGETS -- COMMAND (see %tunnel?)"

    # -- what the subcommands share ----------------------------------------------

    @property
    def user_ns(self) -> dict[str, Any]:
        """The user's namespace (``-o VAR`` writes there, ``$var`` and ``{expr}`` read it)."""
        assert self.shell is not None, "the magics are registered with a shell"
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    def need_fleet(self) -> Fleet:
        """The connected fleet; a usage error when there is none."""
        if self.fleet is None:
            raise UsageError("not connected: run %tunnel connect --embedded (or %tunnel connect URL) first")
        return self.fleet

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the fleet's loop until it is done."""
        assert self.runner is not None
        return self.runner.run(coro)

    def event_loop(self) -> Any:
        """The fleet's event loop, for widgets and timers."""
        assert self.runner is not None
        return self.runner.loop

    def in_kernel(self) -> bool:
        """Is this a notebook kernel (widgets can be shown), not a terminal IPython?"""
        return isinstance(self.runner, KernelLoopRunner) and getattr(self.shell, "kernel", None) is not None


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tunnelnb``."""
    magics = TunnelMagics(ipython)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    ipython._tunnelnb_magics = magics
    if getattr(ipython, "kernel", None) is None:  # terminal IPython: tables as text, not raw DataFrames
        ipython.display_formatter.formatters["text/plain"].for_type(pd.DataFrame, _plain_table)


def _plain_table(df: pd.DataFrame, printer: Any, cycle: bool) -> None:
    """The status and devices tables as a terminal reads them; any other frame as pandas prints it."""
    text = terminal_text(df)
    printer.text(text if text is not None else repr(df))


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext tunnelnb``: close the connection."""
    ipython.display_formatter.formatters["text/plain"].type_printers.pop(pd.DataFrame, None)
    ipython.display_formatter.ipython_display_formatter.type_printers.pop(Job, None)  # background.start's
    magics = getattr(ipython, "_tunnelnb_magics", None)
    if magics is not None:
        connect.disconnect(magics, quiet=True)
        if magics in ipython.configurables:
            ipython.configurables.remove(magics)
        del ipython._tunnelnb_magics

"""``%tunnel`` and ``%%tunnel``: the IPython face of the fleet.

A thin front end: it parses, picks the loop (:mod:`tunnelnb.fleet.runner`), and shows
what the :class:`~tunnelnb.fleet.fleet.Fleet` does.  Options are traitlets, so
``%config TunnelMagics.timeout = 60`` and IPython profiles work.  Mistakes by
the user are one line (:class:`~IPython.core.error.UsageError`), never a
traceback.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments
from IPython.utils.text import DollarFormatter
from traitlets import Bool, Float, Int
from traitlets.config import Configurable

from ..cassette.file import PASSWORD_PLACEHOLDER
from ..cassette.replay import MODES
from ..errors import CassetteMismatch, TunnelnbError
from ..fleet.fleet import Fleet
from ..fleet.progress import LiveOutput, TextProgress, WidgetProgress
from ..fleet.results import Results
from ..fleet.runner import KernelLoopRunner, LoopRunner, runner_for_this_thread

__all__ = ["TunnelMagics", "load_ipython_extension", "unload_ipython_extension"]

SUBCOMMANDS = ("connect", "devices", "login", "shell", "status", "history", "record", "close")

_LINE_HELP = """\
Run shell commands on devices behind the secure tunnel, and manage the connection.

Line magic::

  %tunnel connect --embedded [--devices N] [--seed S]   local platform + simulated fleet in this kernel
  %tunnel connect URL [--project-id P] [--api-token-env VAR] [--ca-bundle PEM]
  %tunnel connect huaweicloud --region R [--project-id P] [--instance-id I]   AK/SK from $HUAWEICLOUD_SDK_AK/_SK
  %tunnel connect                         $TUNNELNB_URL when set, else --embedded
  %tunnel devices [--refresh]             the inventory table
  %tunnel login TARGETS [--user U] [--password-env VAR]   (prompts when no variable is given)
  %tunnel TARGETS [--timeout S] -- COMMAND    one command on the targets
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
    devices = Int(8, help="Devices in the embedded simulated fleet (connect --embedded).").tag(config=True)
    seed = Int(1, help="Seed of the embedded simulated fleet (connect --embedded).").tag(config=True)

    def __init__(self, shell: Any) -> None:
        Configurable.__init__(self, config=shell.config)
        Magics.__init__(self, shell=shell)
        self.fleet: Fleet | None = None
        self._runner: LoopRunner | None = None
        self._where = ""
        self._dashboard: Any = None  # the one live dashboard: a new %tunnel status replaces it
        self._recording: Any = None  # %tunnel record PATH, until --stop

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
    @line_cell_magic
    def tunnel(self, line: str, cell: str | None = None) -> Any:
        try:
            if cell is None:
                return self._line(line)
            return self._cell(line, cell)
        except (TunnelnbError, CassetteMismatch) as exc:
            raise UsageError(str(exc)) from None
        except _HelpShown:
            return None

    # The help shows the subcommands first, then the cell magic's options.
    tunnel.__doc__ = _LINE_HELP + "\n" + (tunnel.__doc__ or "")

    def _line(self, line: str) -> Any:
        words = line.split()
        if "--" in words:
            before, _, command = line.partition(" -- ") if " -- " in line else (line.rstrip("- "), "", "")
            if not command.strip():
                raise UsageError("no command after --: %tunnel TARGETS -- COMMAND")
            args = self._parse(before, _RUN_OPTIONS)
            return self._run(args, command.strip())
        if not words:
            raise UsageError("what should %tunnel do? Try %tunnel connect --embedded, or %tunnel? for help")
        sub, rest = words[0], line.strip()[len(words[0]) :]
        if sub not in SUBCOMMANDS:
            raise UsageError(
                f"unknown subcommand {sub!r}: use {', '.join(SUBCOMMANDS)}, or TARGETS -- COMMAND (see %tunnel?)"
            )
        return getattr(self, f"_{sub}")(rest)

    def _cell(self, line: str, cell: str) -> Any:
        args = self._parse(line, self.tunnel.parser)
        if not cell.strip():
            raise UsageError("the cell is empty: write the shell script to run below %%tunnel TARGETS")
        script = cell if args.raw else _expand(cell, self.shell.user_ns)
        return self._run(args, script)

    # -- subcommands ---------------------------------------------------------

    def _connect(self, rest: str) -> None:
        args = self._parse(rest, _CONNECT)
        import tunnelnb

        if args.embedded and args.url:
            raise UsageError("connect takes a platform URL or --embedded, not both")
        cassette, mode = _cassette(args)
        if cassette is not None and mode == "none":
            self._close_all(quiet=True)
            runner = runner_for_this_thread()
            try:
                fleet = runner.run(tunnelnb.connect(replay=cassette, concurrency=self.concurrency))
            except BaseException:
                runner.close()
                raise
            api: Any = fleet.api
            when = f"{api.recorded_at:%Y-%m-%d %H:%M} UTC"
            self._connected(fleet, runner, f"cassette {cassette} (recorded {when} from {api.platform})", args.out)
            return
        replay = {"replay": cassette, "mode": mode} if cassette is not None else {}
        if not args.embedded and not args.url:
            # The notebook default: the platform in $TUNNELNB_URL (Binder, a real one), else an embedded one.
            args.url = os.environ.get("TUNNELNB_URL") or None
            args.embedded = args.url is None
            if args.url and (args.devices is not None or args.seed is not None):
                print("note: --devices and --seed are for an embedded fleet; connecting to $TUNNELNB_URL instead")
        self._close_all(quiet=True)
        runner = runner_for_this_thread()
        try:
            if args.embedded:
                devices = self.devices if args.devices is None else args.devices
                seed = self.seed if args.seed is None else args.seed
                fleet = runner.run(
                    tunnelnb.connect(
                        embedded=True, devices=devices, seed=seed, concurrency=self.concurrency, **replay
                    )
                )
                platform = fleet.embedded[0]  # type: ignore[attr-defined]
                where = f"embedded platform {platform.base_url} with {devices} simulated devices (seed {seed})"
            elif args.url == "huaweicloud":
                if not (args.region or args.endpoint):
                    raise UsageError("connect huaweicloud needs --region R (or --endpoint URL of your instance)")
                fleet = runner.run(
                    tunnelnb.connect(
                        huaweicloud=args.region or True,
                        project_id=args.project_id,
                        instance_id=args.instance_id,
                        endpoint=args.endpoint,
                        concurrency=self.concurrency,
                        **replay,
                    )
                )
                where = f"Huawei Cloud IoTDA {fleet.api.base_url}, project {fleet.api.project_id}, access key ****"
            else:
                token = os.environ.get(args.api_token_env)
                if not token:
                    token = _prompt(f"API token for {args.url} (${args.api_token_env} is not set): ")
                fleet = runner.run(
                    tunnelnb.connect(
                        args.url,
                        project_id=args.project_id,
                        api_token=token,
                        ca_bundle=args.ca_bundle,
                        insecure=args.insecure,
                        concurrency=self.concurrency,
                        **replay,
                    )
                )
                where = f"{args.url}, project {fleet.api.project_id}, token ****"
        except BaseException:
            runner.close()
            raise
        if mode == "all":
            where += f", recording to {cassette}"
        elif mode == "new_episodes":
            where += f", replaying {cassette} (what it lacks runs live and is added to it)"
        self._connected(fleet, runner, where, args.out)

    def _connected(self, fleet: Fleet, runner: LoopRunner, where: str, out: str | None) -> None:
        self.fleet, self._runner, self._where = fleet, runner, where
        df = fleet.devices()
        online = int((df.status == "ONLINE").sum())
        print(f"connected to {where}: {len(df)} devices, {online} online")
        if out:
            self.shell.user_ns[out] = fleet

    def _record(self, rest: str) -> None:
        args = self._parse(rest, _RECORD)
        fleet = self._need_fleet()
        if args.stop:
            recording = self._recording or getattr(fleet.api, "recording", None)
            if recording is None or not recording.active:
                raise UsageError("not recording: %tunnel record PATH starts a recording")
            self._recording = None
            print(recording.stop())
            return
        if not args.path:
            raise UsageError("record to which file? %tunnel record PATH (e.g. incident.cassette.jsonl), or --stop")
        if self._recording is not None and self._recording.active:
            raise UsageError(f"already recording to {self._recording.path}: %tunnel record --stop first")
        recording = fleet.record(args.path)
        self._call(recording.astart())
        self._recording = recording
        print(f"recording to {args.path} (passwords and tokens are masked); %tunnel record --stop writes it")

    def _devices(self, rest: str) -> Any:
        args = self._parse(rest, _DEVICES)
        fleet = self._need_fleet()
        if args.refresh:
            return self._call(fleet.refresh())
        return fleet.devices()

    def _login(self, rest: str) -> Results:
        args = self._parse(rest, _LOGIN)
        fleet = self._need_fleet()
        targets = " ".join(args.targets) or "*"
        ids = fleet.select(targets)
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if args.user is not None or args.password_env is not None or not fleet.has_login(ids):
            replaying = getattr(fleet.api, "replaying", False)  # a replay needs no password: it sends none
            kwargs["user"] = args.user or getpass.getuser()
            if args.password_env:
                if args.password_env not in os.environ and not replaying:
                    raise UsageError(f"environment variable {args.password_env} is not set: export it, or omit it")
                kwargs["password_env"] = args.password_env
            elif replaying:
                kwargs["password"] = PASSWORD_PLACEHOLDER
            else:
                kwargs["password"] = _prompt(f"password for {kwargs['user']} on {len(ids)} device(s): ")
        results = self._call(fleet.login(ids, **kwargs))
        results.html_max_rows = self.display_limit
        return results

    def _shell(self, rest: str) -> Any:
        args = self._parse(rest, _SHELL)
        fleet = self._need_fleet()
        ids = fleet.select(args.device)
        if len(ids) != 1:
            raise UsageError(f"shell takes one device; {args.device!r} means {len(ids)}")
        device_id = ids[0]
        if not self._in_kernel():
            raise UsageError("%tunnel shell needs a notebook (ipywidgets); here use %tunnel DEVICE -- COMMAND")
        from .widgets import Terminal

        return Terminal(fleet, device_id, loop=self._loop(), timeout=self.timeout)

    def _status(self, rest: str) -> Any:
        self._parse(rest, _STATUS)
        fleet = self._need_fleet()
        if not self._in_kernel():
            return fleet.status()
        from .widgets import FleetDashboard

        self._close_dashboard()
        self._dashboard = FleetDashboard(fleet, loop=self._loop())
        return self._dashboard

    def _close_dashboard(self) -> None:
        if self._dashboard is not None:
            self._dashboard.close()
            self._dashboard = None

    def _history(self, rest: str) -> Any:
        args = self._parse(rest, _HISTORY)
        history = self._need_fleet().history
        if args.last:
            runs = sorted(history.run.unique())[-args.last :]
            history = history[history.run.isin(runs)]
        return history

    def _close(self, rest: str) -> None:
        args = self._parse(rest, _CLOSE)
        if args.all or not args.targets:
            if self.fleet is None:
                print("nothing to close")
                return
            self._close_all()
            return
        fleet = self._need_fleet()
        ids = fleet.select(" ".join(args.targets))
        self._call(fleet.close(ids))
        print(f"closed {len(ids)} session(s)")

    # -- running -------------------------------------------------------------

    def _run(self, args: argparse.Namespace, command: str) -> Any:
        fleet = self._need_fleet()
        if not args.targets:
            raise UsageError("no targets: %%tunnel device-01 device-02 (ids, globs, ranges or @tags)")
        ids = fleet.select(_targets(args.targets))
        if not ids:
            raise UsageError(f"no device matches {' '.join(args.targets)!r}: %tunnel devices lists them")
        timeout = self.timeout if args.timeout is None else args.timeout
        concurrency = self.concurrency if args.concurrency is None else args.concurrency
        if timeout <= 0 or concurrency < 1:
            raise UsageError("--timeout must be positive and --concurrency at least 1")
        live = None
        if self.stream and not args.no_stream:
            live = LiveOutput(sys.stdout, ids, max_lines=self.stream_max_lines)
        progress: WidgetProgress | TextProgress
        timer: Any
        loop = self._loop()
        if self._in_kernel():
            progress = WidgetProgress(len(ids), after_s=self.progress_after)
            timer = loop.call_later(self.progress_after, progress.show)
        else:
            progress = TextProgress(len(ids), sys.stderr, after_s=self.progress_after)
            timer = None

        def on_result(row: Any) -> None:
            if live is not None:
                live.finish(row.device_id)
            progress.update(row)

        async def run() -> Results:
            shower = None if timer is not None else _start(progress)
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
            results = self._call(run())
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
        results.html_max_rows = self.display_limit
        if args.out:
            self.shell.user_ns[args.out] = results
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

    # -- plumbing -----------------------------------------------------------

    def _need_fleet(self) -> Fleet:
        if self.fleet is None:
            raise UsageError("not connected: run %tunnel connect --embedded (or %tunnel connect URL) first")
        return self.fleet

    def _call(self, coro: Any) -> Any:
        assert self._runner is not None
        return self._runner.run(coro)

    def _loop(self) -> Any:
        assert self._runner is not None
        return self._runner.loop

    def _in_kernel(self) -> bool:
        return isinstance(self._runner, KernelLoopRunner) and getattr(self.shell, "kernel", None) is not None

    def _close_all(self, *, quiet: bool = False) -> None:
        self._close_dashboard()
        fleet, runner = self.fleet, self._runner
        self.fleet, self._runner = None, None
        if fleet is None or runner is None:
            return
        recording = self._recording or getattr(fleet.api, "recording", None)
        self._recording = None
        summary = recording.stop() if recording is not None and recording.active else None
        try:
            runner.run(fleet.close())
        finally:
            runner.close()
        if not quiet:
            print(f"closed the connection to {self._where}")
            if summary is not None:
                print(summary)

    @staticmethod
    def _parse(rest: str, parser: MagicArgumentParser) -> argparse.Namespace:
        try:
            words = shlex.split(rest)
        except ValueError as exc:
            raise UsageError(f"cannot parse {rest.strip()!r}: {exc}") from None
        try:
            return parser.parse_args(words)
        except SystemExit:  # -h printed the help
            raise _HelpShown from None


def _targets(words: list[str]) -> list[str]:
    """The target words of a magic line; a Python list or tuple expanded into it (``$ids``) counts too.

    IPython expands ``$ids`` to ``['device-01', 'device-02']``, which the line's
    shell-style splitting turns into ``[device-01,`` ``device-02]``.  Bracket
    ranges (``device-0[1-4]``) never start with a bracket, so they are safe.
    """
    text = " ".join(words).strip()
    if len(text) >= 2 and text[0] in "[(" and text[-1] in "])":
        return [w for w in text[1:-1].replace(",", " ").split() if w]
    return words


def _cassette(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The cassette and mode ``connect`` uses: ``(None, None)`` to connect live without one.

    ``--replay PATH`` always uses it; ``--cassette PATH`` only when no platform is
    at hand (no URL, no ``--embedded``, no ``$TUNNELNB_URL``) or a mode says to.
    """
    if args.replay and args.cassette:
        raise UsageError("connect takes --replay PATH or --cassette PATH, not both")
    path = args.replay or args.cassette
    mode = args.mode or os.environ.get("TUNNELNB_RECORD_MODE") or None
    if path is None:
        if args.mode:
            raise UsageError("--mode is a cassette's: connect --replay PATH --mode MODE")
        return None, None
    if mode is not None and mode not in MODES:
        raise UsageError(f"unknown cassette mode {mode!r} ($TUNNELNB_RECORD_MODE?): use one of {', '.join(MODES)}")
    if args.cassette and mode is None and (args.url or args.embedded or os.environ.get("TUNNELNB_URL")):
        print(f"note: a platform is at hand, so this runs live; the cassette {path} is not used")
        return None, None
    return path, mode or "none"


class _HelpShown(Exception):
    """A subcommand's ``-h``: its help is printed, and there is nothing else to do."""


def _expand(script: str, namespace: dict[str, Any]) -> str:
    """``{expr}`` and ``$var`` from the notebook, as IPython expands ``!`` lines.

    As there, it is all or nothing: when one name is unknown (``$HOME`` is the
    shell's), the script is left exactly as written.  IPython's formatter is
    made for single lines (it drops the lines before a ``$name``), so each line
    is expanded on its own.
    """
    formatter = DollarFormatter()
    try:
        return "".join(
            formatter.vformat(line, args=[], kwargs=namespace) for line in script.splitlines(keepends=True)
        )
    except Exception:
        return script


def _prompt(question: str) -> str:
    try:
        answer = getpass.getpass(question)
    except Exception as exc:  # no terminal and no notebook front end (e.g. nbclient)
        raise UsageError(f"cannot prompt here ({exc}): give the secret through an environment variable") from None
    if not answer:
        raise UsageError("nothing entered")
    return answer


def _start(progress: TextProgress) -> Any:
    import asyncio

    return asyncio.ensure_future(progress.show())


def _parser(prog: str, description: str) -> MagicArgumentParser:
    return MagicArgumentParser(prog=f"tunnel {prog}", description=description, add_help=True)


_CONNECT = _parser("connect", "Connect to a platform, or start an embedded one with a simulated fleet.")
_CONNECT.add_argument(
    "url", nargs="?", help="the platform's base URL (default: $TUNNELNB_URL, else --embedded)"
)
_CONNECT.add_argument("--embedded", action="store_true", help="local platform + simulated fleet in this process")
_CONNECT.add_argument("--devices", type=int, help="simulated devices (default: TunnelMagics.devices)")
_CONNECT.add_argument("--seed", type=int, help="simulated fleet seed (default: TunnelMagics.seed)")
_CONNECT.add_argument("--project-id", help="project id (default: $TUNNELNB_PROJECT_ID or demo)")
_CONNECT.add_argument(
    "--api-token-env", default="TUNNELNB_API_TOKEN", metavar="VAR", help="variable holding the API token"
)
_CONNECT.add_argument("-o", "--out", metavar="VAR", help="also store the Fleet in this variable")
_CONNECT.add_argument("--region", help="connect huaweicloud: the IoTDA region, e.g. cn-north-4")
_CONNECT.add_argument("--endpoint", metavar="URL", help="connect huaweicloud: your instance's application endpoint")
_CONNECT.add_argument("--instance-id", help="connect huaweicloud: the IoTDA instance (Instance-Id header)")
_CONNECT.add_argument("--ca-bundle", metavar="PEM", help="trust an https platform's certificate from this CA bundle")
_CONNECT.add_argument("--insecure", action="store_true", help="do not verify the platform's certificate (warns)")
_CONNECT.add_argument("--replay", metavar="PATH", help="play this cassette back instead (no network with --mode none)")
_CONNECT.add_argument(
    "--cassette",
    metavar="PATH",
    help="the notebook's cassette: replayed unless $TUNNELNB_URL is set (then live, nothing recorded)",
)
_CONNECT.add_argument(
    "--mode",
    choices=MODES,
    help="cassette mode (default $TUNNELNB_RECORD_MODE, else none): none replays strictly, new_episodes runs "
    "what the cassette lacks live and adds it, all records anew",
)

_RECORD = _parser("record", "Record what the fleet gets from the platform and devices to a cassette (JSON Lines).")
_RECORD.add_argument("path", nargs="?", help="the cassette file to write, e.g. incident.cassette.jsonl")
_RECORD.add_argument("--stop", action="store_true", help="stop recording and write the rest")

_DEVICES = _parser("devices", "The inventory: one row per device.")
_DEVICES.add_argument("--refresh", action="store_true", help="read it from the platform again")

_LOGIN = _parser("login", "Log in to devices (the password is never echoed or stored outside memory).")
_LOGIN.add_argument("targets", nargs="*", help="devices (default: all)")
_LOGIN.add_argument("--user", help="login user (default: the one already known, else your user name)")
_LOGIN.add_argument("--password-env", metavar="VAR", help="variable holding the password (else a hidden prompt)")

_SHELL = _parser("shell", "An interactive terminal to one device.")
_SHELL.add_argument("device", help="the device id")

_HISTORY = _parser("history", "Every run so far, one row per device and run.")
_HISTORY.add_argument("--last", type=int, metavar="N", help="only the last N runs")

_CLOSE = _parser("close", "Close sessions; with no targets (or --all) the whole connection.")
_CLOSE.add_argument("targets", nargs="*", help="devices whose sessions to close")
_CLOSE.add_argument("--all", action="store_true", help="close everything, including an embedded platform")

_RUN_OPTIONS = _parser("TARGETS -- COMMAND", "Run one command on the targets.")
_RUN_OPTIONS.add_argument("targets", nargs="*")
_RUN_OPTIONS.add_argument("--timeout", type=float)
_RUN_OPTIONS.add_argument("--concurrency", type=int)
_RUN_OPTIONS.add_argument("--parse", metavar="FMT")
_RUN_OPTIONS.add_argument("--pattern")
_RUN_OPTIONS.add_argument("--include-failed", action="store_true")
_RUN_OPTIONS.add_argument("-o", "--out", metavar="VAR")
_RUN_OPTIONS.add_argument("--no-stream", action="store_true")


_STATUS = _parser("status", "The live fleet dashboard (a table outside notebooks).")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tunnelnb``."""
    magics = TunnelMagics(ipython)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    ipython._tunnelnb_magics = magics


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext tunnelnb``: close the connection."""
    magics = getattr(ipython, "_tunnelnb_magics", None)
    if magics is not None:
        magics._close_all(quiet=True)
        if magics in ipython.configurables:
            ipython.configurables.remove(magics)
        del ipython._tunnelnb_magics

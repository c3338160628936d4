"""``%tunnel connect`` and ``%tunnel close``: the connection's beginning and end.

``connect`` opens a :class:`~tunnelnb.fleet.fleet.Fleet` with
:func:`tunnelnb.connect` (an embedded platform, a URL, Huawei Cloud, or a
cassette) on a loop picked for this thread; :func:`disconnect` stops a
recording, closes the fleet and its loop.  One connection at a time: a new
``connect`` replaces the old one once it has worked, and a failed one leaves the
old one open (and says so).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...cassette import MODES, recording_of
from ...errors import CassetteMismatch, PlatformError, TunnelnbError
from ...fleet.fleet import Fleet
from ...fleet.runner import LoopRunner, runner_for_this_thread
from .parsing import parse, plural, prompt, subcommand
from .run import Interrupted
from .status import close_dashboard

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["close", "connect", "disconnect"]


@subcommand("connect")
@argument("url", nargs="?", help="the platform's base URL (default: $TUNNELNB_URL, else --embedded)")
@argument("--embedded", action="store_true", help="local platform + simulated fleet in this process")
@argument("--devices", type=int, help="simulated devices (default: TunnelMagics.devices)")
@argument("--seed", type=int, help="simulated fleet seed (default: TunnelMagics.seed)")
@argument("--project-id", help="project id (default: $TUNNELNB_PROJECT_ID or demo)")
@argument("--api-token-env", default="TUNNELNB_API_TOKEN", metavar="VAR", help="variable holding the API token")
@argument("-o", "--out", metavar="VAR", help="also store the Fleet in this variable")
@argument("--region", help="connect huaweicloud: the IoTDA region, e.g. cn-north-4")
@argument("--endpoint", metavar="URL", help="connect huaweicloud: your instance's application endpoint")
@argument("--instance-id", help="connect huaweicloud: the IoTDA instance (Instance-Id header)")
@argument("--ca-bundle", metavar="PEM", help="trust an https platform's certificate from this CA bundle")
@argument("--insecure", action="store_true", help="do not verify the platform's certificate (warns)")
@argument("--replay", metavar="PATH", help="play this cassette back instead (no network with --mode none)")
@argument(
    "--cassette",
    metavar="PATH",
    help="the notebook's cassette: replayed unless $TUNNELNB_URL is set (then live, nothing recorded)",
)
@argument(
    "--mode",
    choices=MODES,
    help="cassette mode (default $TUNNELNB_RECORD_MODE, else none): none replays strictly, new_episodes runs "
    "what the cassette lacks live and adds it, all records anew",
)
def connect(magics: TunnelMagics, rest: str) -> None:
    """Connect to a platform, or start an embedded one with a simulated fleet."""
    # The new connection is made first and replaces the old one only once it works: a
    # mistyped URL or token must not cost the working connection and its logins.
    args = parse(rest, connect.parser)
    try:
        fleet, runner, where = _open(magics, args)
    except (UsageError, TunnelnbError, CassetteMismatch) as exc:
        raise UsageError(_still_open(magics, str(exc))) from None
    except KeyboardInterrupt:
        raise Interrupted(_still_open(magics, "connect interrupted")) from None
    except Exception as exc:  # a bug: its traceback, and what it left as it was
        if magics.fleet is not None:
            exc.add_note(f"the connection to {magics.where} is still open")
        raise
    disconnect(magics, quiet=True)
    _connected(magics, fleet, runner, where, args.out)


def _still_open(magics: TunnelMagics, message: str) -> str:
    """``message``, plus that the connection in use is still there, when there is one."""
    if magics.fleet is None:
        return message
    return f"{message.rstrip('.')}; the connection to {magics.where} is still open"


def _open(magics: TunnelMagics, args: argparse.Namespace) -> tuple[Fleet, LoopRunner, str]:
    """A new fleet as ``args`` say, on a loop runner of its own, and how to name it; nothing is replaced yet."""
    if args.embedded and args.url:
        raise UsageError("connect takes a platform URL or --embedded, not both")
    cassette, mode = _cassette(args)
    if (cassette is None or mode != "none") and not args.embedded and not args.url:
        # The notebook default: the platform in $TUNNELNB_URL (Binder, a real one), else an embedded one.
        args.url = os.environ.get("TUNNELNB_URL") or None
        args.embedded = args.url is None
        if args.url and (args.devices is not None or args.seed is not None):
            print("note: --devices and --seed are for an embedded fleet; connecting to $TUNNELNB_URL instead")
    runner = runner_for_this_thread()
    try:
        fleet, where = _fleet(magics, args, runner, cassette, mode)
    except BaseException:
        runner.close()
        raise
    if mode == "all":
        where += f", recording to {cassette}"
    elif mode == "new_episodes":
        where += f", replaying {cassette} (what it lacks runs live and is added to it)"
    return fleet, runner, where


def _fleet(
    magics: TunnelMagics, args: argparse.Namespace, runner: LoopRunner, cassette: str | None, mode: str | None
) -> tuple[Fleet, str]:
    import tunnelnb

    if cassette is not None and mode == "none":
        fleet = runner.run(tunnelnb.connect(replay=cassette, concurrency=magics.concurrency))
        api: Any = fleet.api
        return fleet, f"cassette {cassette} (recorded {api.recorded_at:%Y-%m-%d %H:%M} UTC from {api.platform})"
    replay: dict[str, Any] = {"replay": cassette, "mode": mode} if cassette is not None else {}
    if args.embedded:
        devices = magics.devices if args.devices is None else args.devices
        seed = magics.seed if args.seed is None else args.seed
        fleet = runner.run(
            tunnelnb.connect(embedded=True, devices=devices, seed=seed, concurrency=magics.concurrency, **replay)
        )
        platform = fleet.embedded[0] if fleet.embedded else None
        url = platform.base_url if platform is not None else fleet.api.base_url
        return fleet, f"embedded platform {url} with {plural(devices, 'simulated device')} (seed {seed})"
    if args.url == "huaweicloud":
        if not (args.region or args.endpoint):
            raise UsageError("connect huaweicloud needs --region R (or --endpoint URL of your instance)")
        fleet = runner.run(
            tunnelnb.connect(
                huaweicloud=args.region or True,
                project_id=args.project_id,
                instance_id=args.instance_id,
                endpoint=args.endpoint,
                concurrency=magics.concurrency,
                **replay,
            )
        )
        return fleet, f"Huawei Cloud IoTDA {fleet.api.base_url}, project {fleet.api.project_id}, access key ****"
    variable = args.api_token_env
    token = os.environ.get(variable)
    typed = not token
    if typed:
        token = prompt(f"API token for {args.url} (${variable} is not set): ")
    try:
        fleet = runner.run(
            tunnelnb.connect(
                args.url,
                project_id=args.project_id,
                api_token=token,
                ca_bundle=args.ca_bundle,
                insecure=args.insecure,
                concurrency=magics.concurrency,
                **replay,
            )
        )
    except PlatformError as exc:
        if exc.status != 401:
            raise
        # The API's own hint names tunnelnb run's --api-token, which %tunnel connect does not have.
        where = "the API token you typed" if typed else f"the API token in ${variable}"
        raise UsageError(
            f"{exc.error_msg} (HTTP 401, {exc.error_code}): check {where} (--api-token-env VAR reads another variable)"
        ) from None
    return fleet, f"{args.url}, project {fleet.api.project_id}, token ****"


@subcommand("close")
@argument("targets", nargs="*", help="devices whose sessions to close")
@argument("--all", action="store_true", help="close everything, including an embedded platform")
def close(magics: TunnelMagics, rest: str) -> None:
    """Close sessions; with no targets (or --all) the whole connection."""
    args = parse(rest, close.parser)
    if args.all or not args.targets:
        if magics.fleet is None:
            print("nothing to close")
            return
        disconnect(magics)
        return
    fleet = magics.need_fleet()
    ids = fleet.select(" ".join(args.targets))
    magics.call(fleet.close(ids))
    print(f"closed {plural(len(ids), 'session')}")


def disconnect(magics: TunnelMagics, *, quiet: bool = False) -> None:
    """Close the dashboard, stop a recording, close the fleet and its loop; say so unless ``quiet``."""
    close_dashboard(magics)
    fleet, runner = magics.fleet, magics.runner
    magics.fleet, magics.runner = None, None
    if fleet is None or runner is None:
        return
    recording = magics.recording or recording_of(fleet)
    magics.recording = None
    summary = recording.stop() if recording is not None and recording.active else None
    try:
        runner.run(fleet.close())
    finally:
        runner.close()
    if not quiet:
        print(f"closed the connection to {magics.where}")
        if summary is not None:
            print(summary)


def _connected(magics: TunnelMagics, fleet: Fleet, runner: LoopRunner, where: str, out: str | None) -> None:
    magics.fleet, magics.runner, magics.where = fleet, runner, where
    df = fleet.devices()
    online = int((df.status == "ONLINE").sum())
    print(f"connected to {where}: {plural(len(df), 'device')}, {online} online")
    if out:
        magics.user_ns[out] = fleet


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

"""The ``tunnelnb`` command: a thin face over the servers and the Python API.

Each subcommand parses its arguments and calls one function of the layer that
owns the work; nothing here speaks the protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import ssl
import sys
from collections.abc import Sequence

from ..errors import TunnelnbError

__all__ = ["main", "parse_ok_codes"]

DEFAULT_PORT = 8765


def _add_log_level(p: argparse.ArgumentParser, default: str = "warning") -> None:
    # Quiet by default: an operator following the README runs these in the background of
    # the terminal they type in, where every INFO line is noise; --log-level info shows more.
    p.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error"],
        help=f"how much to log on stderr (default {default}; never tokens or passwords)",
    )


def parse_ok_codes(text: str) -> tuple[int, ...]:
    """``--ok-codes 0,1`` → ``(0, 1)``: exit statuses that count as success (an argparse type).

    Here rather than in :mod:`.run`, so that parsing a command line imports no pandas.
    """
    try:
        codes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"want exit codes separated by commas, e.g. 0,1; got {text!r}") from None
    if not codes or any(not 0 <= code <= 255 for code in codes):
        raise argparse.ArgumentTypeError(f"exit codes are 0 to 255, e.g. 0,1; got {text!r}")
    return codes


def _add_platform_auth(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--project-id",
        default=os.environ.get("TUNNELNB_PROJECT_ID", "demo"),
        help="IoTDA project id (default: $TUNNELNB_PROJECT_ID or 'demo')",
    )
    p.add_argument(
        "--api-token",
        default=None,
        help="API token sent as X-Auth-Token (default: $TUNNELNB_API_TOKEN); prefer the variable, "
        "command lines are visible to other users",
    )


def _add_connection(p: argparse.ArgumentParser) -> None:
    """The platform and login options of the commands that work on devices (run, get, put)."""
    p.add_argument(
        "--platform",
        default=os.environ.get("TUNNELNB_URL"),
        metavar="URL",
        help="platform base URL (default: $TUNNELNB_URL)",
    )
    _add_platform_auth(p)
    p.add_argument("--user", default=os.environ.get("TUNNELNB_LOGIN_USER", "ops"), help="login user (default ops)")
    p.add_argument(
        "--password-env",
        default="TUNNELNB_LOGIN_PASSWORD",
        metavar="VAR",
        help="environment variable holding the login password (default TUNNELNB_LOGIN_PASSWORD); "
        "prompted for when unset and stdin is a terminal",
    )


def _add_cloud(p: argparse.ArgumentParser) -> None:
    """Huawei Cloud IoTDA through the official SDK, instead of --platform (run, get, put)."""
    cloud = p.add_argument_group(
        "Huawei Cloud IoTDA (pip install 'tunnelnb[huaweicloud]'; AK/SK from $HUAWEICLOUD_SDK_AK / _SK, "
        "project from --project-id or $HUAWEICLOUD_SDK_PROJECT_ID)"
    )
    cloud.add_argument("--huaweicloud", action="store_true", help="use IoTDA through the official SDK")
    cloud.add_argument("--region", help="IoTDA region, e.g. cn-north-4")
    cloud.add_argument("--endpoint", metavar="URL", help="your instance's application endpoint")
    cloud.add_argument("--instance-id", help="IoTDA instance id (Instance-Id header)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelnb",
        description="Operate IoT devices behind Huawei Cloud IoTDA's Secure Tunnel.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("platform", help="serve a local IoTDA-compatible platform (REST + WebSocket), in memory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    _add_platform_auth(p)
    p.add_argument("--max-message-bytes", type=int, default=10_240, help="WebSocket message limit (default 10240)")
    p.add_argument("--token-ttl", type=int, default=86_400, help="tunnel token lifetime in seconds (default 86400)")
    p.add_argument(
        "--ak-env",
        metavar="VAR",
        help="also accept requests AK/SK-signed (as Huawei Cloud's SDK signs them) with the access key in $VAR",
    )
    p.add_argument("--sk-env", metavar="VAR", help="the variable holding that access key's secret (with --ak-env)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve https/wss with this certificate (chain included)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (default: in --tls-cert)")
    p.add_argument(
        "--mqtt-port",
        type=int,
        default=1883,
        help="the platform's own MQTT broker, where devices log in as on IoTDA (default 1883; 0 picks a free one)",
    )
    p.add_argument(
        "--mqtts-port",
        type=int,
        default=8883,
        help="its TLS listener, with --tls-cert (default 8883; 0 picks a free one)",
    )
    p.add_argument("--no-mqtt", action="store_true", help="run no MQTT broker (devices use device links only)")
    p.add_argument(
        "--notify-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="notify a device again only if it has not joined its tunnel within this time (default 5)",
    )
    _add_log_level(p)
    p.add_argument("--access-log", action="store_true", help="log every HTTP request (aiohttp's access log) on stderr")

    p = sub.add_parser("agent", help="the device side: keep the device link, bridge tunnels to SSH")
    p.add_argument("--platform", metavar="URL", help="platform base URL, e.g. http://127.0.0.1:8765")
    p.add_argument(
        "--mqtt",
        metavar="URL",
        help="take tunnel notifications from this MQTT broker instead of a device link: mqtt://HOST[:PORT] or "
        "mqtts://HOST[:PORT] (IoTDA: mqtts://DEVICE-ACCESS-HOST:8883)",
    )
    p.add_argument(
        "--mqtt-check-timestamp", action="store_true", help="client id sign type 1 (IoTDA also checks the time)"
    )
    # Accepted and ignored: the agent publishes no presence any more (brokers know who is connected).
    p.add_argument("--no-presence", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device-id", required=True)
    p.add_argument(
        "--device-secret",
        default=None,
        help="device secret (default: $TUNNELNB_DEVICE_SECRET); prefer the variable",
    )
    backend = p.add_mutually_exclusive_group()
    backend.add_argument("--ssh", default="127.0.0.1:22", metavar="HOST:PORT", help="SSH server (default 127.0.0.1:22)")
    backend.add_argument(
        "--local-shell",
        action="store_true",
        help="no sshd: spawn a PTY shell directly; logins must match --login-user and $TUNNELNB_LOGIN_PASSWORD; "
        "started as root, the shell runs as the --login-user account (which must exist)",
    )
    p.add_argument("--login-user", default=os.environ.get("USER", "ops"), help="user name for --local-shell")
    p.add_argument("--shell", default="/bin/sh", help="shell for --local-shell (default /bin/sh)")
    p.add_argument(
        "--quirks",
        choices=["none", "c-sdk", "c-sdk-1.1", "csharp-sdk"],
        default="none",
        help="behave like an official device SDK (for testing clients): c-sdk is the C SDK of today (raw "
        "2,048-byte reads that may split characters, stray bytes after some full reads, a new connection on "
        "every tunnel notify, disconnect 400 on every SSH failure), c-sdk-1.1 the C SDK up to v1.1.3 (drops "
        "a chunk whose JSON overflows 2,304 bytes), csharp-sdk the C# SDK; $TUNNELNB_STRAY_BYTES="
        "PROBABILITY[:SEED] sets how often c-sdk's stray bytes come (default 0.25)",
    )
    p.add_argument("--idle-timeout", type=float, default=600.0, help="close an idle SSH session after S seconds")
    p.add_argument(
        "--abandon-grace",
        type=float,
        default=10.0,
        metavar="S",
        help="when the tunnel connection drops, interrupt the running command (Ctrl-C) and end the shell "
        "session unless the application is heard from within S seconds (default 10)",
    )
    p.add_argument("--max-message-bytes", type=int, default=10_240)
    _add_tls_client(p)
    _add_log_level(p)

    p = sub.add_parser(
        "sim",
        help="a simulated fleet: N devices with sandboxed shells, registered on a platform",
        description="Run N simulated devices (real agents, real shells on PTYs, seeded profiles, some "
        "misbehaving on purpose) against a platform. See tunnelnb.sim.fleet for the profiles.",
    )
    p.add_argument("--platform", required=True, metavar="URL", help="platform base URL")
    _add_platform_auth(p)
    p.add_argument("--devices", type=int, default=8, metavar="N", help="how many devices (default 8)")
    p.add_argument("--prefix", default="device-", help="device id prefix (default device-)")
    p.add_argument("--seed", type=int, default=1, help="profile seed (default 1)")
    p.add_argument(
        "--misbehaving", type=float, default=0.1, help="share of devices that misbehave on purpose (default 0.1)"
    )
    p.add_argument("--backend", choices=["ssh", "local"], default="ssh", help="ssh: an SSH server per device")
    p.add_argument("--quirks", choices=["none", "c-sdk", "c-sdk-1.1", "csharp-sdk", "mixed"], default="none")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run the devices in N processes (default 1: this one); the parent registers them, reports, and "
        "stops every worker on SIGINT, SIGTERM or a worker's death",
    )
    _add_tls_client(p)
    _add_log_level(p)

    p = sub.add_parser(
        "run",
        help="run a command on many devices and print one row per device",
        usage="tunnelnb run --platform URL [options] TARGETS... -- COMMAND",
        description="Exit status: 0 when every device ran the command with exit code 0, 1 otherwise, "
        "130 when interrupted (the rows so far are printed, the rest marked cancelled).",
    )
    _add_connection(p)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--timeout", type=float, default=30.0, help="per-device command timeout in seconds (default 30)")
    p.add_argument("--concurrency", type=int, default=100, help="devices running at once (default 100)")
    p.add_argument(
        "--ok-codes",
        type=parse_ok_codes,
        default=(0,),
        metavar="0,1",
        help="exit codes that count as success (default 0), e.g. 0,1 for grep",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="exact output from devices that damage it (the C SDK's): sent checksummed, damaged parts read again",
    )
    from collections.abc import Callable

    from ..fleet.rollout import batch_option, canary_option, max_errors_option  # light: no pandas, no network

    def checked(check: Callable[[str], object], name: str) -> Callable[[str], object]:
        def parse_value(text: str) -> object:
            try:
                return check(text)
            except ValueError as exc:  # argparse shows this message, not "invalid value"
                raise argparse.ArgumentTypeError(str(exc)) from None

        parse_value.__name__ = name
        return parse_value

    rolling = p.add_argument_group(
        "rolling runs (as AWS Run Command's MaxErrors and Ansible's serial): devices never started are "
        "rows with status skipped"
    )
    rolling.add_argument(
        "--batch",
        type=checked(batch_option, "batch"),
        metavar="N|P%",
        help="run in batches of N devices (or P%% of the targets, rounded up), each finishing before the next",
    )
    rolling.add_argument(
        "--max-errors",
        type=checked(max_errors_option, "max_errors"),
        metavar="N|P%",
        help="start no new device once more than N (or P%% of the targets, rounded down) have failed; "
        "those running finish",
    )
    rolling.add_argument(
        "--canary",
        type=checked(canary_option, "canary"),
        metavar="N",
        help="run the first N targets first, and stop there if any of them fails",
    )
    _add_cloud(p)
    _add_tls_client(p)
    p.add_argument("targets", nargs="+", help="device ids, globs, ranges device-0[1-4], tags @edge @fw=2.1")
    _add_log_level(p, default="warning")

    _add_file_parsers(sub)
    _add_shell_parsers(sub)

    p = sub.add_parser(
        "demo",
        help="a local platform, a simulated fleet and JupyterLab on the quickstart notebook (make demo)",
        description="Starts tunnelnb platform and tunnelnb sim on loopback with a fresh API token and login "
        "password (never printed), then JupyterLab on notebooks/01-quickstart.ipynb with $TUNNELNB_URL and the "
        "credentials in its environment, and prints the notebook's URL. Ctrl-C stops everything. "
        "--text runs the older demo instead: a platform, a device and a few commands in this process.",
    )
    p.add_argument("--text", action="store_true", help="no JupyterLab: run a few commands through a tunnel, in text")
    p.add_argument("--port", type=int, default=8888, help="JupyterLab's port (default 8888; 0 picks a free one)")
    p.add_argument("--devices", type=int, default=8, metavar="N", help="simulated devices (default 8)")
    p.add_argument("--seed", type=int, default=1, help="simulated fleet seed (default 1, the quickstart's)")
    p.add_argument(
        "--no-browser",
        action="store_true",
        help="do not open a browser (the default without $DISPLAY or $WAYLAND_DISPLAY); open the printed URL",
    )
    return parser


def _add_file_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``tunnelnb get`` and ``tunnelnb put`` (:mod:`.files`): the connection options are ``run``'s."""
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
        _add_connection(p)
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
        _add_cloud(p)
        _add_tls_client(p)
        p.add_argument("targets", nargs="+", help="device ids, globs, ranges device-0[1-4], tags @edge @fw=2.1")
        p.add_argument("paths", nargs=2, metavar="PATH", help="REMOTE LOCAL_DIR (get), LOCAL REMOTE (put)")
        _add_log_level(p)


def _add_shell_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``tunnelnb shell`` and ``tunnelnb play`` (:mod:`.shell`): the connection options are ``run``'s."""
    from .shell import escape_char

    p = sub.add_parser(
        "shell",
        help="an interactive shell on one device in this terminal, like ssh (~. after Enter detaches)",
        usage="tunnelnb shell --platform URL [options] [--record FILE.cast] DEVICE",
        description="Attach this terminal to a device's shell through its tunnel: every key goes to the device "
        "(Ctrl-C too); after Enter, ~. detaches, ~~ types ~ and ~? lists the escapes. The device's terminal gets "
        "this terminal's size at the start and keeps it. Exit status: 0 after a detach or when the shell "
        "exited, 1 when no terminal could be opened or the connection could not be restored.",
    )
    _add_connection(p)
    p.add_argument(
        "--record",
        metavar="FILE.cast",
        help="write what the terminal shows to FILE.cast (asciicast v2: tunnelnb play, asciinema play), "
        "with passwords and tokens masked and nothing typed",
    )
    p.add_argument(
        "--escape-char",
        type=escape_char,
        default="~",
        metavar="C|none",
        help="the escape character (default ~), or none for no escapes",
    )
    _add_cloud(p)
    _add_tls_client(p)
    p.add_argument("device", metavar="DEVICE", help="one device id")
    _add_log_level(p, default="error")  # log lines would land in the middle of the device's screen

    p = sub.add_parser(
        "play",
        help="replay a terminal recording (tunnelnb shell --record, asciicast v2) in this terminal",
        description="Write the recording's output to this terminal with its timing.",
    )
    p.add_argument("file", metavar="FILE.cast", help="an asciicast v2 recording")
    p.add_argument("--speed", type=float, default=1.0, help="play X times as fast (default 1; 0: no waiting)")
    p.add_argument(
        "--idle-limit", type=float, default=None, metavar="S", help="cut every pause longer than S seconds to S"
    )


def _configure_logging(level: str, *, access_log: bool = False) -> None:
    """Log ``level`` and above on stderr; aiohttp's access log only with ``access_log``, asyncssh's chatter at debug.

    One access line per request, and asyncssh's several per SSH login, bury the
    lines that matter even at info, so each has its own switch.
    """
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if access_log else logging.WARNING)
    if level != "debug":
        logging.getLogger("asyncssh").setLevel(max(logging.WARNING, getattr(logging, level.upper())))


def _secret(value: str | None, env: str, what: str) -> str:
    secret = value or os.environ.get(env)
    if not secret:
        raise SystemExit(f"tunnelnb: no {what}: pass it in ${env} (or the command-line option)")
    return secret


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"tunnelnb: --ssh wants HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run" and not command:
        parser.error("run: give the command after --, e.g. tunnelnb run 'device-*' -- uptime")
    try:
        if args.command == "run":
            from .run import run_command

            _configure_logging(args.log_level)
            return run_command(args, " ".join(command))
        if args.command in ("get", "put"):
            from .files import transfer_command

            _configure_logging(args.log_level)
            return transfer_command(args)
        if args.command == "shell":
            from .shell import shell_command

            _configure_logging(args.log_level)
            return shell_command(args)
        if args.command == "play":
            from .shell import play_command

            return play_command(args)
        if args.command == "sim":
            return _sim(args)
        if args.command == "platform":
            return _platform(args)
        if args.command == "agent":
            return _agent(args)
        if args.command == "demo":
            from . import demo

            if args.text:
                return demo.text_demo()
            return demo.lab_demo(
                port=args.port, devices=args.devices, seed=args.seed, open_browser=False if args.no_browser else None
            )
    except KeyboardInterrupt:
        return 130
    except TunnelnbError as exc:
        # Errors raised on purpose carry one sentence for the operator: no traceback.
        print(f"tunnelnb: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is taken
        print(f"tunnelnb: {exc.strerror or exc}{_where(args)}", file=sys.stderr)
        return 1
    raise AssertionError(args.command)


def _where(args: argparse.Namespace) -> str:
    if getattr(args, "command", None) == "platform":
        return f" ({args.host}:{args.port}): pick another --port, or 0 for a free one"
    return ""


def _platform(args: argparse.Namespace) -> int:
    from ..server.platform import serve

    _configure_logging(args.log_level, access_log=args.access_log)
    token = args.api_token or os.environ.get("TUNNELNB_API_TOKEN")
    if not token:
        # Like Jupyter's server token: made up once and shown to the operator only, never logged.
        token = secrets.token_urlsafe(24)
        print(f"no API token given; use this one: export TUNNELNB_API_TOKEN={token}", flush=True)
    asyncio.run(
        serve(
            host=args.host,
            port=args.port,
            project_id=args.project_id,
            api_token=token,
            max_message_bytes=args.max_message_bytes,
            token_ttl=args.token_ttl,
            ssl_context=_server_ssl(args),
            **_access_key(args),
            mqtt_port=None if args.no_mqtt else args.mqtt_port,
            mqtts_port=None if args.no_mqtt or not args.tls_cert else args.mqtts_port,
            notify_grace=args.notify_grace,
        )
    )
    return 0


def _sim(args: argparse.Namespace) -> int:
    from ..sim import serve

    _configure_logging(args.log_level)
    if args.workers < 1:
        raise TunnelnbError(f"--workers {args.workers}: give at least 1 (1 runs every device in this process)")
    token = _secret(args.api_token, "TUNNELNB_API_TOKEN", "API token")
    # Workers make their own TLS contexts, from the same options.
    tls = {"ca_bundle": args.ca_bundle, "insecure": args.insecure} if args.workers > 1 else {"ssl": _client_ssl(args)}
    asyncio.run(
        serve(
            workers=args.workers,
            platform_url=args.platform,
            api_token=token,
            project_id=args.project_id,
            devices=args.devices,
            seed=args.seed,
            prefix=args.prefix,
            misbehaving=args.misbehaving,
            backend=args.backend,
            quirks=args.quirks,
            password=os.environ.get("TUNNELNB_LOGIN_PASSWORD"),
            **tls,
        )
    )
    return 0


def _add_tls_client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-bundle", metavar="PEM", help="trust the platform's certificate from this CA bundle")
    p.add_argument("--insecure", action="store_true", help="do not verify the platform's certificate (warns)")


def _access_key(args: argparse.Namespace) -> dict[str, str]:
    """``ak``/``sk`` for the platform, from the variables --ak-env and --sk-env name (never from the line)."""
    if not args.ak_env and not args.sk_env:
        return {}
    if not (args.ak_env and args.sk_env):
        raise TunnelnbError("--ak-env and --sk-env go together")
    values = {name: os.environ.get(var) for name, var in (("ak", args.ak_env), ("sk", args.sk_env))}
    missing = [var for var, value in zip((args.ak_env, args.sk_env), values.values(), strict=True) if not value]
    if missing:
        raise TunnelnbError(f"environment variable {missing[0]} is not set")
    return values  # type: ignore[return-value]


def _server_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    from ..tls import server_ssl

    if not args.tls_cert:
        if args.tls_key:
            raise TunnelnbError("--tls-key needs --tls-cert")
        return None
    return server_ssl(args.tls_cert, args.tls_key)


def _client_ssl(args: argparse.Namespace) -> ssl.SSLContext | bool:
    from ..tls import client_ssl

    return client_ssl(args.ca_bundle, insecure=args.insecure)


def _agent(args: argparse.Namespace) -> int:
    from ..server.agent import serve

    _configure_logging(args.log_level)
    if not args.platform and not args.mqtt:
        raise TunnelnbError("give the platform's URL (--platform URL) or an MQTT broker (--mqtt URL)")
    secret = _secret(args.device_secret, "TUNNELNB_DEVICE_SECRET", "device secret")
    kwargs: dict[str, object] = {}
    if args.local_shell:
        password = _secret(None, "TUNNELNB_LOGIN_PASSWORD", "login password for --local-shell")
        kwargs["local_shell"] = (args.login_user, password)
        kwargs["shell"] = (args.shell,)
        kwargs["shell_user"] = args.login_user
    else:
        kwargs["ssh_host"], kwargs["ssh_port"] = _host_port(args.ssh)
    asyncio.run(
        serve(
            platform_url=args.platform or "",
            device_id=args.device_id,
            device_secret=secret,
            quirks=args.quirks,
            idle_timeout=args.idle_timeout,
            abandon_grace=args.abandon_grace,
            max_message_bytes=args.max_message_bytes,
            ssl=_client_ssl(args),
            mqtt_url=args.mqtt,
            mqtt_check_timestamp=args.mqtt_check_timestamp,
            **kwargs,
        )
    )
    return 0

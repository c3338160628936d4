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
from . import files as files_parsers
from . import options
from . import shell as shell_parsers

__all__ = ["main", "parse_ok_codes"]

DEFAULT_PORT = 8765


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
    options.add_platform_auth(p)
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
    options.add_log_level(p)
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
    options.add_tls_client(p)
    options.add_log_level(p)

    p = sub.add_parser(
        "sim",
        help="a simulated fleet: N devices with sandboxed shells, registered on a platform",
        description="Run N simulated devices (real agents, real shells on PTYs, seeded profiles, some "
        "misbehaving on purpose) against a platform. See tunnelnb.sim.fleet for the profiles.",
    )
    p.add_argument("--platform", required=True, metavar="URL", help="platform base URL")
    options.add_platform_auth(p)
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
    options.add_tls_client(p)
    options.add_log_level(p)

    p = sub.add_parser(
        "run",
        help="run a command on many devices and print one row per device",
        usage="tunnelnb run --platform URL [options] TARGETS... -- COMMAND",
        description="Exit status: 0 when every device ran the command with exit code 0, 1 otherwise, "
        "130 when interrupted (the rows so far are printed, the rest marked cancelled).",
    )
    options.add_connection(p)
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
    options.add_cloud(p)
    options.add_tls_client(p)
    p.add_argument("targets", nargs="+", help="device ids, globs, ranges device-0[1-4], tags @edge @fw=2.1")
    options.add_log_level(p, default="warning")

    files_parsers.add_parsers(sub)
    shell_parsers.add_parsers(sub)

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

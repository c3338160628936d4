"""``tunnelnb shell DEVICE`` and ``tunnelnb play FILE.cast``: a device's shell in this terminal, and its replay.

Parses nothing itself (:mod:`.main` does): ``shell`` connects as ``tunnelnb run``
does (:func:`.files._where`, :func:`.files._password`), on a loop thread of its
own, and hands the local terminal to :func:`tunnelnb.localterm.run_local_terminal`.

    tunnelnb shell --platform URL device-01                      # ~. after Enter detaches
    tunnelnb shell --platform URL --record incident.cast device-01
    tunnelnb play --speed 2 --idle-limit 1 incident.cast
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import sys
from collections.abc import Coroutine
from typing import Any

from ..errors import TunnelnbError
from . import options

__all__ = ["play_command", "shell_command"]

#: How long closing the fleet may take once the terminal is done.
CLOSE_TIMEOUT_S = 15.0


def escape_char(text: str) -> str | None:
    """``--escape-char``: one ASCII character, or ``none`` for no escapes (an argparse type)."""
    if text.lower() == "none":
        return None
    if len(text) != 1 or not text.isascii() or not text.isprintable() or text in ".?":
        raise argparse.ArgumentTypeError(f"want one printable character other than . and ?, or none; got {text!r}")
    return text


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``tunnelnb shell`` and ``tunnelnb play``: the connection options are ``run``'s."""
    p = sub.add_parser(
        "shell",
        help="an interactive shell on one device in this terminal, like ssh (~. after Enter detaches)",
        usage="tunnelnb shell --platform URL [options] [--record FILE.cast] DEVICE",
        description="Attach this terminal to a device's shell through its tunnel: every key goes to the device "
        "(Ctrl-C too); after Enter, ~. detaches, ~~ types ~ and ~? lists the escapes. The device's terminal gets "
        "this terminal's size at the start and keeps it. Exit status: 0 after a detach or when the shell "
        "exited, 1 when no terminal could be opened or the connection could not be restored.",
    )
    options.add_connection(p)
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
    options.add_cloud(p)
    options.add_tls_client(p)
    p.add_argument("device", metavar="DEVICE", help="one device id")
    options.add_log_level(p, default="error")  # log lines would land in the middle of the device's screen

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


def shell_command(args: argparse.Namespace) -> int:
    """``tunnelnb shell``: 0 after a detach or when the shell exited, 1 when no terminal could be had."""
    from ..connection import connect
    from ..fleet.runner import ThreadLoopRunner
    from ..fleet.terminals import open_terminal
    from ..localterm import DETACHED, run_local_terminal
    from .connecting import login_password, where

    if not os.isatty(sys.stdin.fileno()):
        raise TunnelnbError("tunnelnb shell needs a terminal; use tunnelnb run for commands")
    target = where(args)
    password = login_password(args)  # a hidden prompt, before the terminal goes raw
    runner = ThreadLoopRunner()
    try:
        fleet = runner.run(connect(**target))
        try:
            fleet.set_login([args.device], args.user, password)
            secrets = [*fleet.secret_values(), *fleet.api.secret_values()]
            reason = run_local_terminal(
                runner,
                functools.partial(open_terminal, fleet, args.device),
                record=args.record,
                secrets=secrets,
                escape_char=args.escape_char,
                title=f"tunnelnb shell {args.device}",
            )
        finally:
            with contextlib.suppress(Exception):
                runner.run(_bounded(fleet.close(), CLOSE_TIMEOUT_S))
    finally:
        runner.close()
    if reason == DETACHED:
        print(f"tunnelnb: detached from {args.device}", file=sys.stderr)
        return 0
    print(f"tunnelnb: {reason}", file=sys.stderr)
    return 0 if reason == f"the shell on {args.device} ended" else 1


async def _bounded(coro: Coroutine[Any, Any, None], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        await coro


def play_command(args: argparse.Namespace) -> int:
    """``tunnelnb play``: write a recording to this terminal at its pace (``--speed``, ``--idle-limit``)."""
    from ..cassette.asciicast import play

    if math.isnan(args.speed) or args.speed < 0:
        raise TunnelnbError(f"--speed {args.speed}: give 0 (no waiting) or more, e.g. 2 for twice as fast")
    if args.idle_limit is not None and not args.idle_limit >= 0:
        raise TunnelnbError(f"--idle-limit {args.idle_limit}: give a number of seconds, 0 or more")
    try:
        play(args.file, sys.stdout.buffer, speed=args.speed, idle_limit=args.idle_limit)
    except BrokenPipeError:  # `tunnelnb play x.cast | head`: quiet, as cat is
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        os.close(devnull)
    return 0

"""``%tunnel shell DEVICE``: an interactive terminal to one device.

In a notebook (a Jupyter kernel) it is the xterm.js widget
(:class:`tunnelnb.notebook.widgets.Terminal`); in terminal IPython it is the
local terminal itself, as ``tunnelnb shell`` gives it (:mod:`tunnelnb.localterm`:
raw mode, ``~.`` after Enter detaches), and the magic returns when it ends.
``--record FILE.cast`` writes an asciicast v2 recording in both.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...errors import TerminalError
from ...fleet.runner import ThreadLoopRunner
from ...fleet.terminals import open_terminal
from .parsing import parse, subcommand

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["shell"]


@subcommand("shell")
@argument("device", help="the device id")
@argument("--record", metavar="FILE.cast", help="write the session to FILE.cast (asciicast v2), secrets masked")
def shell(magics: TunnelMagics, rest: str) -> Any:
    """An interactive terminal to one device: a widget in a notebook, this terminal in IPython."""
    args = parse(rest, shell.parser)
    fleet = magics.need_fleet()
    ids = fleet.select(args.device)
    if len(ids) != 1:
        raise UsageError(f"shell takes one device; {args.device!r} means {len(ids)}")
    device_id = ids[0]
    if magics.in_kernel():
        from ..widgets import Terminal

        return Terminal(fleet, device_id, loop=magics.event_loop(), record=args.record, timeout=magics.timeout)
    if not sys.stdin.isatty():
        raise UsageError("%tunnel shell needs a terminal or a notebook; here use %tunnel DEVICE -- COMMAND")
    from ...localterm import DETACHED, run_local_terminal

    runner = magics.runner
    if not isinstance(runner, ThreadLoopRunner):  # the loop runs in this thread: nothing would read the keys
        raise UsageError("%tunnel shell needs a notebook or terminal IPython; here use %tunnel DEVICE -- COMMAND")
    try:
        reason = run_local_terminal(
            runner,
            functools.partial(open_terminal, fleet, device_id, timeout=magics.timeout),
            record=args.record,
            secrets=[*fleet.secret_values(), *fleet.api.secret_values()],
            title=f"tunnelnb shell {device_id}",
        )
    except TerminalError as exc:
        raise UsageError(str(exc)) from None
    print(f"detached from {device_id}" if reason == DETACHED else reason)
    return None

"""``%tunnel shell DEVICE``: an interactive terminal to one device (a notebook widget)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from .parsing import parse, subcommand

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["shell"]


@subcommand("shell")
@argument("device", help="the device id")
def shell(magics: TunnelMagics, rest: str) -> Any:
    """An interactive terminal to one device."""
    args = parse(rest, shell.parser)
    fleet = magics.need_fleet()
    ids = fleet.select(args.device)
    if len(ids) != 1:
        raise UsageError(f"shell takes one device; {args.device!r} means {len(ids)}")
    device_id = ids[0]
    if not magics.in_kernel():
        raise UsageError("%tunnel shell needs a notebook (ipywidgets); here use %tunnel DEVICE -- COMMAND")
    from ..widgets import Terminal

    return Terminal(fleet, device_id, loop=magics.event_loop(), timeout=magics.timeout)

"""``%tunnel devices`` and ``%tunnel history``: the fleet's tables, the inventory and every run so far."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.magic_arguments import argument

from ...fleet.tables import devices_view
from .parsing import parse, subcommand

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["devices", "history"]


@subcommand("devices")
@argument("--refresh", action="store_true", help="read it from the platform again")
def devices(magics: TunnelMagics, rest: str) -> Any:
    """The inventory: one row per device (``fleet.devices()`` has the tags as dicts)."""
    args = parse(rest, devices.parser)
    fleet = magics.need_fleet()
    table = magics.call(fleet.refresh()) if args.refresh else fleet.devices()
    return devices_view(table)


@subcommand("history")
@argument("--last", type=int, metavar="N", help="only the last N runs")
def history(magics: TunnelMagics, rest: str) -> Any:
    """Every run so far, one row per device and run."""
    args = parse(rest, history.parser)
    table = magics.need_fleet().history
    if args.last:
        runs = sorted(table.run.unique())[-args.last :]
        table = table[table.run.isin(runs)]
    return table

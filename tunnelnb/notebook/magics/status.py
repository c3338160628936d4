"""``%tunnel status``: the live fleet dashboard in a notebook, the status table elsewhere.

There is one dashboard at a time: a new ``status`` (or closing the
connection) closes the one before, so no stale widget keeps following the fleet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .parsing import parse, subcommand

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["close_dashboard", "status"]


@subcommand("status")
def status(magics: TunnelMagics, rest: str) -> Any:
    """The live fleet dashboard (a table outside notebooks)."""
    parse(rest, status.parser)
    fleet = magics.need_fleet()
    if not magics.in_kernel():
        return fleet.status()
    from ..widgets import FleetDashboard

    close_dashboard(magics)
    magics.dashboard = FleetDashboard(fleet, loop=magics.event_loop())
    return magics.dashboard


def close_dashboard(magics: TunnelMagics) -> None:
    """Close the live dashboard, if there is one."""
    if magics.dashboard is not None:
        magics.dashboard.close()
        magics.dashboard = None

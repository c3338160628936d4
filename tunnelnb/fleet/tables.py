"""The fleet's views for people: the inventory table and the live status table (dashboards).

Pure functions of what the fleet knows, so :class:`~tunnelnb.fleet.fleet.Fleet`
keeps the fan-out logic and these keep the columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..client.result import CommandResult
from ..client.session import DeviceSession

__all__ = ["INVENTORY_COLUMNS", "STATUS_COLUMNS", "inventory_table", "status_table", "tunnel_state"]

INVENTORY_COLUMNS = ["device_id", "status", "device_name", "product_id", "fw_version", "sw_version", "tags"]
STATUS_COLUMNS = [
    "device_id", "online", "tunnel", "logged_in", "running", "last_status", "last_exit_code", "last_duration_s"
]


def inventory_table(inventory: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per device, tags as a dict."""
    rows = []
    for d in inventory:
        tags = {t.get("tag_key"): t.get("tag_value") for t in d.get("tags") or [] if isinstance(t, dict)}
        rows.append({**{c: d.get(c) for c in INVENTORY_COLUMNS}, "tags": tags})
    return pd.DataFrame(rows, columns=INVENTORY_COLUMNS)


def tunnel_state(session: DeviceSession | None) -> str:
    """The ``tunnel`` column: none, closed, connected (the device is in it) or waiting."""
    if session is None:
        return "none"
    if session.closed:
        return "closed"
    return "connected" if session.joined else "waiting"


def status_table(
    inventory: list[dict[str, Any]],
    sessions: Mapping[str, DeviceSession],
    running: Mapping[str, str],
    last: Mapping[str, CommandResult],
) -> pd.DataFrame:
    """One row per device: online, tunnel, logged in, running command, last result."""
    rows = []
    for d in inventory:
        device_id = str(d.get("device_id"))
        session = sessions.get(device_id)
        result = last.get(device_id)
        rows.append(
            {
                "device_id": device_id,
                "online": d.get("status") == "ONLINE",
                "tunnel": tunnel_state(session),
                "logged_in": bool(session is not None and session.logged_in),
                "running": running.get(device_id),
                "last_status": result.status if result else None,
                "last_exit_code": result.exit_code if result else None,
                "last_duration_s": result.duration_s if result else None,
            }
        )
    df = pd.DataFrame(rows, columns=STATUS_COLUMNS)
    df["last_exit_code"] = df["last_exit_code"].astype("Int64")
    return df

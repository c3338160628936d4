"""``tunnelnb.connect(replay=PATH, mode=...)``: a fleet that plays a cassette back, or records one."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from ..client.backend import PASSWORD_PLACEHOLDER
from ..errors import TunnelnbError
from ..fleet.fleet import Fleet
from .file import Cassette
from .recording import Recording
from .replay import ReplayAPI

__all__ = ["MODES", "connect_replay"]

#: The record modes, as vcrpy's: strict replay, replay then live, record anew.
MODES = ("none", "new_episodes", "all")


async def connect_replay(
    path: str | os.PathLike[str],
    *,
    mode: str = "none",
    live: Callable[[], Awaitable[Fleet]] | None = None,
    **fleet_options: Any,
) -> Fleet:
    """A :class:`~tunnelnb.fleet.fleet.Fleet` playing back the cassette at ``path``.

    ``none`` replays without a network; ``new_episodes`` replays what the
    cassette has and runs the rest live, appending it (a device whose recording
    runs out goes live from there, logging in again with the session's own
    login; its shell is a fresh one); ``all`` runs live and records anew.
    ``live`` makes the live fleet that ``new_episodes`` falls back on and ``all``
    records; ``fleet_options`` go to the fleet of a ``none`` replay (the
    recorded fleet's settings are the default).
    """
    if mode not in MODES:
        raise TunnelnbError(f"unknown cassette mode {mode!r}: use one of {', '.join(MODES)}")
    if mode != "none" and live is None:
        raise TunnelnbError(f"mode={mode!r} needs a live platform: a URL (or $TUNNELNB_URL), or embedded=True")
    if mode == "all":
        assert live is not None
        fleet = await live()
        try:
            await Recording(fleet, path).astart()
        except BaseException:
            await fleet.close()
            raise
        return fleet
    cassette = Cassette.load(path)
    header = cassette.header
    login = header.get("login") or None
    logins: dict[str, str] = header.get("logins") or {}
    if mode == "none":
        recorded = header.get("fleet") or {}
        settings: dict[str, Any] = {k: v for k, v in recorded.items() if k in ("concurrency", "max_sessions")}
        if "join_timeout" in recorded:
            settings["join_timeout"] = float(recorded["join_timeout"])
        fleet = Fleet(
            ReplayAPI(cassette),
            login=(str(login["user"]), PASSWORD_PLACEHOLDER) if login else None,
            **{**settings, **fleet_options},
        )
    else:
        assert live is not None
        fleet = await live()
        fleet.use_backend(ReplayAPI(cassette, mode=mode, live=fleet.api, secrets=fleet.secret_values()))
    try:
        await fleet.refresh()
        known = fleet.login_users()
        for device_id, user in logins.items():
            if device_id in fleet.select("*") and device_id not in known:
                fleet.set_login([device_id], user, PASSWORD_PLACEHOLDER)
    except BaseException:
        await fleet.close()
        raise
    return fleet

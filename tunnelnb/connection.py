"""Connecting: a fleet on a platform URL, on Huawei Cloud, on an embedded platform, or on a cassette.

The composition root: the one place that knows every way to make a
:class:`~tunnelnb.fleet.fleet.Fleet`, so it may import every package; its
imports are deferred, so ``import tunnelnb`` stays light.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cassette import Recording
    from .client.backend import PlatformBackend
    from .fleet.blocking import SyncFleet
    from .fleet.fleet import Fleet

__all__ = ["connect", "connect_sync", "record"]


async def connect(
    url: str | None = None,
    *,
    project_id: str | None = None,
    api_token: str | None = None,
    embedded: bool = False,
    devices: int = 8,
    seed: int = 1,
    replay: str | os.PathLike[str] | None = None,
    mode: str = "none",
    huaweicloud: str | bool | None = None,
    instance_id: str | None = None,
    endpoint: str | None = None,
    ca_bundle: str | None = None,
    insecure: bool = False,
    **fleet_options: Any,
) -> Fleet:
    """A :class:`~tunnelnb.fleet.fleet.Fleet` for a platform at ``url``, or an embedded one.

    ``embedded=True`` starts a local platform and a simulated fleet of ``devices``
    devices (seeded by ``seed``) in this process; the fleet then knows their login.
    ``url``, ``project_id`` and ``api_token`` default to ``$TUNNELNB_URL``,
    ``$TUNNELNB_PROJECT_ID`` and ``$TUNNELNB_API_TOKEN``; the devices' default
    login to ``$TUNNELNB_LOGIN_USER`` / ``$TUNNELNB_LOGIN_PASSWORD`` when set.

    ``replay=PATH`` plays a cassette back (:mod:`tunnelnb.cassette`): with ``mode="none"``
    (the default) without any network; ``"new_episodes"`` runs what the cassette lacks
    on the platform the other arguments name and appends it; ``"all"`` records anew.

    ``huaweicloud="cn-north-4"`` (a region; or ``True`` with ``endpoint=``) talks to Huawei
    Cloud IoTDA through the official SDK (``pip install 'tunnelnb[huaweicloud]'``), with the
    access key from ``$HUAWEICLOUD_SDK_AK`` / ``$HUAWEICLOUD_SDK_SK`` and the project from
    ``project_id`` or ``$HUAWEICLOUD_SDK_PROJECT_ID``; ``instance_id`` selects the instance.
    ``ca_bundle`` trusts an https platform's certificate from that file; ``insecure=True``
    turns verification off, with a warning.
    """
    from .errors import TunnelnbError

    if replay is not None:
        from .cassette import connect_replay

        async def live() -> Fleet:
            return await connect(
                url,
                project_id=project_id,
                api_token=api_token,
                embedded=embedded,
                devices=devices,
                seed=seed,
                huaweicloud=huaweicloud,
                instance_id=instance_id,
                endpoint=endpoint,
                ca_bundle=ca_bundle,
                insecure=insecure,
                **fleet_options,
            )

        has_live = embedded or bool(huaweicloud or url or os.environ.get("TUNNELNB_URL"))
        return await connect_replay(replay, mode=mode, live=live if has_live else None, **fleet_options)
    if mode != "none":
        raise TunnelnbError(f"mode={mode!r} is a cassette mode: give the cassette too, replay=PATH")

    from .client.api import PlatformAPI
    from .fleet.fleet import Fleet
    from .tls import client_ssl

    if huaweicloud:
        from .client.cloud import cloud_api_from_env

        region = huaweicloud if isinstance(huaweicloud, str) else None
        api = cloud_api_from_env(region=region, project_id=project_id, instance_id=instance_id, endpoint=endpoint)
        return await _fleet_for(api, fleet_options)
    if embedded:
        from .server.platform import Platform
        from .sim import SimulatedFleet

        platform = Platform(project_id=project_id or "demo")
        await platform.start()
        sim = SimulatedFleet(
            platform.base_url, devices=devices, seed=seed, api_token=platform.api_token, project_id=platform.project_id
        )
        try:
            await sim.start()
        except BaseException:
            await platform.stop()
            raise
        local = PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=platform.api_token)
        fleet = Fleet(
            local, login=sim.login(), cleanup=[platform.stop, sim.stop], embedded=(platform, sim), **fleet_options
        )
        await fleet.refresh()
        return fleet
    url = url or os.environ.get("TUNNELNB_URL")
    if not url:
        raise TunnelnbError("no platform URL: tunnelnb.connect(url) or $TUNNELNB_URL, or embedded=True")
    project_id = project_id or os.environ.get("TUNNELNB_PROJECT_ID") or "demo"
    api_token = api_token or os.environ.get("TUNNELNB_API_TOKEN")
    if not api_token:
        raise TunnelnbError("no API token: pass api_token=... or set $TUNNELNB_API_TOKEN")
    tls = client_ssl(ca_bundle, insecure=insecure)
    return await _fleet_for(PlatformAPI(url, project_id=project_id, api_token=api_token, ssl=tls), fleet_options)


async def _fleet_for(api: PlatformBackend, fleet_options: dict[str, Any]) -> Fleet:
    """A fleet on ``api`` with its inventory read; the API's connections are closed if that fails."""
    from .fleet.fleet import Fleet

    if "login" not in fleet_options and os.environ.get("TUNNELNB_LOGIN_PASSWORD"):
        import getpass

        user = os.environ.get("TUNNELNB_LOGIN_USER") or getpass.getuser()
        fleet_options["login"] = (user, os.environ["TUNNELNB_LOGIN_PASSWORD"])
    fleet = Fleet(api, **fleet_options)
    try:
        await fleet.refresh()
    except BaseException:
        await api.close()
        raise
    return fleet


def connect_sync(url: str | None = None, **kwargs: Any) -> SyncFleet:
    """:func:`connect` for scripts: a :class:`~tunnelnb.fleet.blocking.SyncFleet` whose methods block.

    The fleet lives on an event loop in a background thread, so its sessions
    survive between calls.
    """
    from .fleet.blocking import SyncFleet
    from .fleet.runner import ThreadLoopRunner

    runner = ThreadLoopRunner()
    try:
        fleet = runner.run(connect(url, **kwargs))
    except BaseException:
        runner.close()
        raise
    return SyncFleet(fleet, runner)


def record(fleet: Fleet, path: str | os.PathLike[str]) -> Recording:
    """Record what ``fleet`` gets from its platform and devices to a cassette (:func:`tunnelnb.cassette.record`)."""
    from .cassette import record as _record

    return _record(fleet, path)

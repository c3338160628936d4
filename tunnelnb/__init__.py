"""tunnelnb: operate IoT devices behind Huawei Cloud IoTDA's Secure Tunnel from notebooks.

    fleet = await tunnelnb.connect("http://127.0.0.1:8765", project_id="demo", api_token="…")
    res = await fleet.run("uptime", targets="device-*", timeout=30)
    res.df
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "connect", "connect_sync", "load_ipython_extension", "unload_ipython_extension"]

# A library logs; the application decides where that goes.  Without this, Python's
# last-resort handler would print the embedded fleet's warnings into notebook cells.
logging.getLogger("tunnelnb").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .fleet.fleet import Fleet


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

    ``replay=PATH`` plays a cassette back (:mod:`tunnelnb.cassette.replay`): with ``mode="none"``
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
        from .cassette.replay import connect_replay

        async def live() -> Fleet:
            return await connect(
                url, project_id=project_id, api_token=api_token, embedded=embedded, devices=devices, seed=seed,
                huaweicloud=huaweicloud, instance_id=instance_id, endpoint=endpoint, ca_bundle=ca_bundle,
                insecure=insecure, **fleet_options,
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
        from .sim.fleet import SimulatedFleet

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
        api = PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=platform.api_token)
        fleet = Fleet(api, login=sim.login(), cleanup=[platform.stop, sim.stop], **fleet_options)
        fleet.embedded = (platform, sim)  # type: ignore[attr-defined]
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


async def _fleet_for(api: Any, fleet_options: dict[str, Any]) -> Fleet:
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


def connect_sync(url: str | None = None, **kwargs: Any) -> Any:
    """:func:`connect` for scripts: a :class:`~tunnelnb.fleet.blocking.SyncFleet` whose methods block."""
    from .fleet.blocking import connect_sync as _connect_sync

    return _connect_sync(url, **kwargs)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tunnelnb``: registers the ``%tunnel`` / ``%%tunnel`` magics."""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .notebook.magics import unload_ipython_extension as unload

    unload(ipython)

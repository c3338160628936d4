"""A local Huawei Cloud IoTDA-compatible platform: REST control plane, tunnel relay, device links.

One aiohttp application (:class:`Platform`, in :mod:`.app`) serves the IoTDA REST calls
tunnelnb uses, with IoTDA's paths, JSON shapes, error bodies and constraints (docs/architecture.md, "The platform"),
authenticated by ``X-Auth-Token`` or by an AK/SK signature as Huawei Cloud's SDKs make
them, so the official SDK runs against it unmodified (:mod:`.rest`, :mod:`.auth`); the
Secure Tunnel WebSockets, the application's ``source-connect`` and the device's
``device-connect`` side of each tunnel, relayed frame by frame (:mod:`.relay`); and
device links (:mod:`tunnelnb.protocol.devicelink`), the WebSocket through which a device
is ONLINE and learns of its tunnels, standing in for IoTDA's MQTT events -- or, with
``mqtt_url``, those MQTT events themselves, through a broker (:mod:`.devices`,
:mod:`.mqtt`).  All state lives in memory: projects, devices, tunnels and tokens vanish
when the process stops, as demos, tests and benchmarks want.  Device ids are unique
across the whole platform, not only within a project, because the device-link path
carries no project id.
"""

from .app import Platform, serve
from .model import ErrorCode, Side

__all__ = ["ErrorCode", "Platform", "Side", "serve"]

"""The simulated fleet: many device agents with embedded SSH servers and varied profiles.

Serves the demo, Binder, tests and benchmarks.  Uses :mod:`tunnelnb.server`
(agents, SSH servers) and :mod:`tunnelnb.client` (to register its devices).
"""

from .fleet import BACKENDS, SimulatedFleet, device_secret
from .profiles import MISBEHAVIOURS, MODELS, DeviceProfile, app_log, device_conf, make_profiles
from .sandbox import SANDBOX_MODES
from .serve import serve
from .workers import ShardedFleet

__all__ = [
    "BACKENDS",
    "MISBEHAVIOURS",
    "MODELS",
    "SANDBOX_MODES",
    "DeviceProfile",
    "ShardedFleet",
    "SimulatedFleet",
    "app_log",
    "device_conf",
    "device_secret",
    "make_profiles",
    "serve",
]

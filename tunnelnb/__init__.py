"""tunnelnb: operate IoT devices behind Huawei Cloud IoTDA's Secure Tunnel from notebooks.

fleet = await tunnelnb.connect("http://127.0.0.1:8765", project_id="demo", api_token="…")
res = await fleet.run("uptime", targets="device-*", timeout=30)
res.df
"""

from __future__ import annotations

import logging
from typing import Any

from .connection import connect, connect_sync, record
from .version import VERSION

__version__ = VERSION

__all__ = [
    "__version__",
    "connect",
    "connect_sync",
    "load_ipython_extension",
    "record",
    "unload_ipython_extension",
]

# A library logs; the application decides where that goes.  Without this, Python's
# last-resort handler would print the embedded fleet's warnings into notebook cells.
logging.getLogger("tunnelnb").addHandler(logging.NullHandler())


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tunnelnb``: registers the ``%tunnel`` / ``%%tunnel`` magics."""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .notebook.magics import unload_ipython_extension as unload

    unload(ipython)

"""The device agent: a tunnel's device side, bridged to an SSH login shell.

No device SDK in Python implements IoTDA's Secure Tunnel, so this is the
device half of tunnelnb.  An :class:`Agent` (:mod:`.agent`) keeps the device's
link to the platform open; each ``tunnel_notify`` opens the device-side tunnel
WebSocket (:mod:`.tunnel`); a ``connect`` frame logs in to the device's SSH
server or spawns a local PTY shell (:mod:`.shells`), and from then on
``command`` frames are typed into the shell and its terminal output streams
back as ``command_response`` frames (:mod:`.session`, docs/architecture.md, "The platform"), framed the way
the official device SDKs frame it when asked to (``quirks``, :mod:`.quirks`).
:func:`serve` (:mod:`.serve`) is the ``tunnelnb agent`` command.
"""

from .agent import Agent
from .quirks import QUIRKS, c_sdk_json_size
from .serve import serve

__all__ = ["QUIRKS", "Agent", "c_sdk_json_size", "serve"]

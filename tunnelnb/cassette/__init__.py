"""Record a fleet's traffic to a cassette, and play it back without a network.

    async with tunnelnb.record(fleet, "incident.cassette.jsonl"):      # or %tunnel record PATH
        res = await fleet.run("df -h /data", "@edge")
    fleet = await tunnelnb.connect(replay="incident.cassette.jsonl")   # anywhere, no platform
    res = await fleet.run("df -h /data", "@edge")                       # the same table

Like vcrpy, but for tunnels: a cassette (:mod:`.file`) holds every platform
answer the fleet used and every message its tunnels' WebSockets carried, per
device, in order and with their times.  It works through public seams only:
the recording (:mod:`.recording`) and the replay (:mod:`.replay`) are
:class:`~tunnelnb.client.backend.PlatformBackend` implementations that a fleet
is given with :meth:`Fleet.use_backend <tunnelnb.fleet.fleet.Fleet.use_backend>`,
below the :class:`~tunnelnb.client.transport.TunnelSocket`, so a replay runs the
same protocol decoding, shell framing and output parsing as a live run.
Imports :mod:`tunnelnb.fleet` and below.
"""

from .connect import MODES, connect_replay
from .recording import CassetteSummary, Recording, RecordingAPI, record, recording_of
from .replay import ReplayAPI

__all__ = [
    "MODES",
    "CassetteSummary",
    "Recording",
    "RecordingAPI",
    "ReplayAPI",
    "connect_replay",
    "record",
    "recording_of",
]

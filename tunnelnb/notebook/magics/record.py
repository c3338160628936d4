"""``%tunnel record``: record what the fleet gets (platform answers, frames) to a cassette, until ``--stop``.

The recording itself is the fleet's (:meth:`Fleet.record`); the magics only
remember the one in progress, so ``close`` and a new ``connect`` can stop it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...cassette import Recording, recording_of
from .parsing import parse, subcommand

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["record"]


@subcommand("record")
@argument("path", nargs="?", help="the cassette file to write, e.g. incident.cassette.jsonl")
@argument("--stop", action="store_true", help="stop recording and write the rest")
def record(magics: TunnelMagics, rest: str) -> None:
    """Record what the fleet gets from the platform and devices to a cassette (JSON Lines)."""
    args = parse(rest, record.parser)
    fleet = magics.need_fleet()
    if args.stop:
        recording = magics.recording or recording_of(fleet)
        if recording is None or not recording.active:
            raise UsageError("not recording: %tunnel record PATH starts a recording")
        magics.recording = None
        print(recording.stop())
        return
    if not args.path:
        raise UsageError("record to which file? %tunnel record PATH (e.g. incident.cassette.jsonl), or --stop")
    if magics.recording is not None and magics.recording.active:
        raise UsageError(f"already recording to {magics.recording.path}: %tunnel record --stop first")
    recording = Recording(fleet, args.path)
    magics.call(recording.astart())
    magics.recording = recording
    print(f"recording to {args.path} (passwords and tokens are masked); %tunnel record --stop writes it")

"""What a device's task has done so far in a run, and the row it gets when the run stops early.

A cancelled run (Ctrl-C, Kernel → Interrupt) and a device whose task failed
still get true rows: the output that had arrived and the time really spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..client.clock import Clock
from ..client.result import CommandResult
from ..protocol.shell import strip_escapes

__all__ = ["Partial", "partial_row"]


@dataclass
class Partial:
    """A device's part of a run so far: when it started, on which clock, the output it printed."""

    clock: Clock
    t0: float
    started_at: datetime
    chunks: list[str] = field(default_factory=list)


def partial_row(
    device_id: str, command: str, status: str, error: str, partial: Partial | None, run_started_at: datetime
) -> CommandResult:
    """The row of a device whose part of the run stopped early (``partial`` None: it never started)."""
    if partial is None:
        return CommandResult(device_id, command, status, None, "", 0.0, run_started_at, error)
    return CommandResult(
        device_id,
        command,
        status,
        None,
        strip_escapes("".join(partial.chunks)),
        partial.clock.monotonic() - partial.t0,
        partial.started_at,
        error,
    )

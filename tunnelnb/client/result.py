"""What one command did on one device: :class:`CommandResult` and its :class:`ResultStatus`.

A fleet's results table has one row per :class:`CommandResult`; the statuses
are defined here once and the table, the widgets and the CLI read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["CommandResult", "ResultStatus"]


class ResultStatus:
    """The ``status`` column of a result (docs/architecture.md, "Results and targets")."""

    OK = "ok"
    ERROR = "error"  # the command ran and exited non-zero
    TIMEOUT = "timeout"
    OFFLINE = "offline"
    AUTH_FAILED = "auth_failed"
    DISCONNECTED = "disconnected"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # never started: a rolling run stopped first (fleet/rollout.py)


@dataclass
class CommandResult:
    """What one command did on one device."""

    device_id: str
    command: str
    status: str
    exit_code: int | None
    stdout: str
    duration_s: float
    started_at: datetime
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == ResultStatus.OK

"""One device's recorded events, consumed in order as a replay goes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .events import TEARDOWN_CALLS
from .file import DELIVERY_KINDS, HARD_KINDS

__all__ = ["ReplayStream"]


def _is_teardown(event: dict[str, Any]) -> bool:
    return event["kind"] == "close" or (event["kind"] == "rest" and event.get("call") in TEARDOWN_CALLS)


class ReplayStream:
    """One device's recorded events (``dev`` None: the fleet's own), consumed as the replay goes."""

    def __init__(self, dev: str | None, events: list[dict[str, Any]]) -> None:
        self.dev = dev
        self.events = events
        self.done = [False] * len(events)
        self.cursor = 0
        self.vnow = 0.0  # the time of the latest event served
        self.ws: Any = None  # the ReplayWS serving this device's tunnel, once opened
        self.live = False
        self.left: str | None = None  # what first left the cassette (a strict replay's mismatch)

    def __repr__(self) -> str:
        return f"<ReplayStream {self.dev} {self.cursor}/{len(self.events)}{' live' if self.live else ''}>"

    def consume(self, i: int) -> dict[str, Any]:
        event = self.events[i]
        self.done[i] = True
        self.vnow = max(self.vnow, float(event["t"]))
        while self.cursor < len(self.events) and self.done[self.cursor]:
            self.cursor += 1
        return event

    def exhausted(self) -> bool:
        """Nothing left but readings and teardowns?"""
        return not any(
            not self.done[i]
            and (self.events[i]["kind"] in DELIVERY_KINDS or self.events[i]["kind"] in HARD_KINDS)
            and not _is_teardown(self.events[i])
            for i in range(self.cursor, len(self.events))
        )

    def take_soft(self, kind: str) -> dict[str, Any] | None:
        """The next unserved reading of ``kind``, looking no further than past the next recorded action."""
        hard = 0
        for i in range(self.cursor, len(self.events)):
            if self.done[i]:
                continue
            event_kind = self.events[i]["kind"]
            if event_kind == kind:
                return self.consume(i)
            if event_kind in HARD_KINDS:
                hard += 1
                if hard > 1:
                    return None
        return None

    def find_hard(self, matches: Callable[[dict[str, Any]], bool]) -> tuple[int | None, int | None]:
        """``(index of the matching recorded action, None)``, or ``(None, index of the one in the way)``.

        Teardown actions (closing a WebSocket or a tunnel) may be passed over:
        they change nothing a later action sees.  ``(None, None)``: nothing left.
        """
        for i in range(self.cursor, len(self.events)):
            if self.done[i] or self.events[i]["kind"] not in HARD_KINDS:
                continue
            if matches(self.events[i]):
                return i, None
            if not _is_teardown(self.events[i]):
                return None, i
        return None, None

    def take_hard(self, i: int) -> dict[str, Any]:
        for j in range(self.cursor, i):  # teardowns passed over
            if not self.done[j] and self.events[j]["kind"] in HARD_KINDS:
                self.consume(j)
        return self.consume(i)

    def next_delivery(self) -> int | None:
        """The next message to release: only once every recorded action before it is done."""
        for i in range(self.cursor, len(self.events)):
            if self.done[i]:
                continue
            kind = self.events[i]["kind"]
            if kind in DELIVERY_KINDS:
                return i
            if kind in HARD_KINDS:
                return None
        return None

"""Where a trivial command's round trip goes: per-stage medians (``bench/relay.py --stages``).

The relay benchmark says how much slower tunnelnb is than "bare relay floor + SSH alone";
this says where the difference is.  It stamps the first time each stage is reached in a
trivial command (``await dev.run("true")``) by wrapping the methods at the stage
boundaries (as ``relay.count_frames`` wraps the platform's ``_route``), runs ``samples``
commands after a warm-up, and takes each stage's median.  The wrappers cost about half a
microsecond each; they are installed only for this measurement and removed after it.

Stages, in order (application = the client's DeviceSession, agent = the device side):

====================  ===================================================================
application send      ``run()`` called → its ``command`` frame written to the WebSocket
→ platform            written → the platform routes it (WebSocket, frame check, decode)
platform → agent      routed → the agent's tunnel reads it
agent: type           read → typed into the SSH channel (decode, session, then asyncssh's
                      encryption and send: SSH's work, in "SSH alone" too)
SSH + PTY + shell     typed → the first output back in the agent (the SSH server, the PTY,
                      ``/bin/sh`` running the framed ``true``, the SSH client's decryption)
agent: frame          output → its ``command_response`` frame being sent
agent → platform      sent → the platform routes it
platform → app        routed → the application reads it
application end       read → ``run()`` returns its result (marker parsing, the row; and the rest
                      of the output, when the shell's reply came in two reads)
====================  ===================================================================
"""

from __future__ import annotations

import functools
import inspect
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tunnelnb.client import session as client_session
from tunnelnb.client import transport as client_transport
from tunnelnb.server.agent import shells as agent_shells
from tunnelnb.server.agent import tunnel as agent_tunnel
from tunnelnb.server.platform.model import Side

#: (label, mark where the stage ends); the first stage starts at ``run()``'s call.
STAGES = [
    ("application send", "app_sent"),
    ("→ platform", "platform_up"),
    ("platform → agent", "agent_read"),
    ("agent: decode, type into SSH", "agent_typing"),
    ("agent: SSH encrypt and send", "agent_typed"),
    ("SSH server + PTY + shell + SSH client", "agent_output"),
    ("agent: output → frame sent", "agent_sending"),
    ("agent → platform", "platform_down"),
    ("platform → application", "app_read"),
    ("application: first output → result", "app_done"),
]
#: the stages that "SSH alone" in bench/relay.py also does (an asyncssh client typing into the same server)
SSH_STAGES = {"agent: SSH encrypt and send", "SSH server + PTY + shell + SSH client"}
#: the WebSocket hops, which the bare relay floor makes too (without frame checks or decoding)
HOP_STAGES = {"→ platform", "platform → agent", "agent → platform", "platform → application"}


class _Marks:
    def __init__(self) -> None:
        self.at: dict[str, int] = {}

    def __call__(self, name: str) -> None:
        if name not in self.at:
            self.at[name] = time.perf_counter_ns()


def _wrap(owner: Any, name: str, stamp: Callable[[], None], *, after: bool, saved: list[tuple[Any, str, Any]]) -> None:
    original = getattr(owner, name)
    saved.append((owner, name, original))
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not after:
                stamp()
            result = await original(*args, **kwargs)
            if after:
                stamp()
            return result

    else:

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            if not after:
                stamp()
            result = original(*args, **kwargs)
            if after:
                stamp()
            return result

    setattr(owner, name, wrapper)


@contextmanager
def stamped(platform: Any, marks: _Marks) -> Iterator[None]:
    """Install the stage wrappers (and the platform's routing stamp) for the duration of the block."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        _wrap(client_transport.TunnelSocket, "send", lambda: marks("app_sent"), after=True, saved=saved)
        _wrap(agent_tunnel.Tunnel, "_on_message", lambda: marks("agent_read"), after=False, saved=saved)
        _wrap(agent_shells.SSHBackend, "write", lambda: marks("agent_typing"), after=False, saved=saved)
        _wrap(agent_shells.SSHBackend, "write", lambda: marks("agent_typed"), after=True, saved=saved)
        _wrap(agent_shells.Inbox, "feed", lambda: marks("agent_output"), after=False, saved=saved)
        _wrap(agent_tunnel.Tunnel, "send_output_message", lambda: marks("agent_sending"), after=False, saved=saved)
        _wrap(client_session.DeviceSession, "_on_output", lambda: marks("app_read"), after=False, saved=saved)
        route = platform._route

        async def routing(tunnel: Any, conn: Any, frame: Any, text: str) -> None:
            marks("platform_up" if conn.side is Side.SOURCE else "platform_down")
            await route(tunnel, conn, frame, text)

        platform._route = routing
        yield
    finally:
        if "_route" in vars(platform):
            del platform._route  # back to the class's method
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


async def measure(tnb: Any, samples: int, warmup: int = 20) -> dict[str, float]:
    """Median microseconds of each stage over ``samples`` trivial commands on ``tnb`` (bench/relay.py's Tunnelnb)."""
    marks = _Marks()
    rows: list[dict[str, int]] = []
    with stamped(tnb.platform, marks):
        for i in range(warmup + samples):
            marks.at = {}
            start = time.perf_counter_ns()
            await tnb.trivial()
            marks.at["app_done"] = time.perf_counter_ns()
            if i >= warmup:
                rows.append({"start": start} | marks.at)
    out: dict[str, float] = {}
    previous = "start"
    for label, mark in STAGES:
        spans = [(r[mark] - r[previous]) / 1000 for r in rows if mark in r and previous in r]
        out[label] = statistics.median(spans) if spans else float("nan")
        previous = mark
    out["total"] = statistics.median([(r["app_done"] - r["start"]) / 1000 for r in rows])
    return out


def markdown(stages: dict[str, float], floor_us: float, ssh_us: float) -> str:
    """The stage table, with what the same run measured for the floor and SSH alone."""
    lines = ["| stage | median µs | the reference's part |", "|---|---:|---|"]
    for label, _ in STAGES:
        where = "SSH alone" if label in SSH_STAGES else "a floor hop" if label in HOP_STAGES else "none"
        lines.append(f"| {label} | {stages[label]:.1f} | {where} |")

    def total(kind: set[str]) -> float:
        return sum(stages[k] for k in kind)

    own = sum(stages[label] for label, _ in STAGES if label not in SSH_STAGES | HOP_STAGES)
    lines += [
        f"| **total** (median of the round trips, not the sum) | {stages['total']:.1f} | |",
        "",
        f"SSH's stages: {total(SSH_STAGES):.0f} µs (SSH alone measured {ssh_us:.0f} µs). The four WebSocket hops: "
        f"{total(HOP_STAGES):.0f} µs (each end checks and decodes every frame), against {floor_us:.0f} µs for the "
        f"bare relay floor's four. tunnelnb's work at the ends (framing, markers, the row): {own:.0f} µs. The p50 "
        f"target (≤ 1.15x floor + SSH alone) leaves {0.15 * (floor_us + ssh_us):.0f} µs above floor + SSH "
        "for all of it.",
    ]
    return "\n".join(lines)

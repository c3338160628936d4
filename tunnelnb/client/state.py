"""A device session's state, as one enum and one table of transitions (in the style of h11's ``_state.py``).

A :class:`~tunnelnb.client.session.DeviceSession` is in exactly one
:class:`SessionState`; everything that changes it is an :class:`Event`, and
:data:`TRANSITIONS` lists every legal ``(state, event) → state`` in one place.
An event that the table does not list for the current state is a bug in the
caller and raises :class:`SessionStateError`.  What the device and the platform
do (join, leave, a ``disconnect``, a dropped connection) can happen at any time,
so those events are legal in every state; what the session itself does (open,
log in, run) is legal only where it makes sense.

    IDLE ─open→ CONNECTING ─connected→ WAITING ─joined→ JOINED ─login→ LOGGING_IN ─logged_in→ READY
    READY ─run→ RUNNING ─done→ READY          RUNNING ─interrupted→ RESYNC ─run→ RUNNING
    READY ─attach→ ATTACHED ─detach→ RESYNC   (a terminal: keys raw, no framing)
    any open state ─lost→ RECONNECTING ─reconnected→ WAITING  (─gave_up→ IDLE)
    any state ─close→ CLOSED
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from ..errors import SessionStateError

__all__ = ["TRANSITIONS", "Event", "SessionState", "StateMachine"]


class SessionState(enum.Enum):
    """Where a device session stands."""

    IDLE = "idle"  # no tunnel connection: new, or lost and not reopened
    CONNECTING = "connecting"  # creating the tunnel and opening its WebSocket
    WAITING = "waiting"  # the WebSocket is open; the device has not joined the tunnel
    JOINED = "joined"  # the device is in the tunnel; no shell logged in
    LOGGING_IN = "logging_in"  # connect sent; waiting for the shell to answer a framed no-op
    READY = "ready"  # logged in; the shell answers framed commands
    RUNNING = "running"  # a framed command (or the shell's re-sync) is in flight
    RESYNC = "resync"  # logged in, but typed-ahead input was flushed (Ctrl-C, a timeout): sync before the next command
    ATTACHED = "attached"  # an interactive terminal has the shell (echo on, a prompt): no framed commands
    RECONNECTING = "reconnecting"  # the WebSocket dropped; reopening it with back-off
    CLOSED = "closed"  # closed by the application; open() starts again

    @property
    def joined(self) -> bool:
        """Is the device side in the tunnel?"""
        return self in _JOINED

    @property
    def logged_in(self) -> bool:
        """Does the session hold a logged-in shell?"""
        return self in _LOGGED_IN


class Event(enum.Enum):
    """What happens to a session."""

    # what the session does
    OPEN = "open"
    CONNECTED = "connected"
    OPEN_FAILED = "open_failed"
    LOGIN = "login"
    LOGGED_IN = "logged_in"
    LOGIN_FAILED = "login_failed"
    RUN = "run"
    DONE = "done"
    INTERRUPTED = "interrupted"
    ATTACH = "attach"
    DETACH = "detach"
    RECONNECTED = "reconnected"
    GAVE_UP = "gave_up"
    CLOSE = "close"
    # what the device and the platform do, at any time
    JOIN = "join"  # connect_tunnel: the device side joined
    LEAVE = "leave"  # disconnect 503 / 204: the device side left, or the tunnel was closed
    DISCONNECT = "disconnect"  # any other disconnect: the device's shell is gone, the device stays
    LOST = "lost"  # the WebSocket closed or failed


S, E = SessionState, Event

_JOINED = frozenset({S.JOINED, S.LOGGING_IN, S.READY, S.RUNNING, S.RESYNC, S.ATTACHED})
_LOGGED_IN = frozenset({S.READY, S.RUNNING, S.RESYNC, S.ATTACHED})
#: States with an open WebSocket, where the device's frames arrive.
_SOCKET_OPEN = frozenset({S.WAITING, *_JOINED})


def _peer_events(state: SessionState) -> dict[Event, SessionState]:
    """What the device and the platform can do to a session in ``state``."""
    if state in _SOCKET_OPEN:
        return {
            E.JOIN: S.JOINED if state is S.WAITING else state,
            E.LEAVE: S.WAITING,
            E.DISCONNECT: S.WAITING if state is S.WAITING else S.JOINED,
            E.LOST: S.RECONNECTING,
        }
    # No socket (or one being replaced): a late frame of the old one changes nothing.
    return {E.JOIN: state, E.LEAVE: state, E.DISCONNECT: state, E.LOST: state}


#: Every legal transition: ``TRANSITIONS[state][event]`` is the next state.
TRANSITIONS: Mapping[SessionState, Mapping[Event, SessionState]] = {
    S.IDLE: {E.OPEN: S.CONNECTING, E.CLOSE: S.CLOSED},
    S.CONNECTING: {E.CONNECTED: S.WAITING, E.OPEN_FAILED: S.IDLE, E.CLOSE: S.CLOSED},
    S.WAITING: {E.CLOSE: S.CLOSED},
    S.JOINED: {E.LOGIN: S.LOGGING_IN, E.CLOSE: S.CLOSED},
    S.LOGGING_IN: {E.LOGGED_IN: S.READY, E.LOGIN_FAILED: S.JOINED, E.CLOSE: S.CLOSED},
    S.READY: {E.RUN: S.RUNNING, E.LOGIN: S.LOGGING_IN, E.ATTACH: S.ATTACHED, E.CLOSE: S.CLOSED},
    S.RUNNING: {E.DONE: S.READY, E.INTERRUPTED: S.RESYNC, E.CLOSE: S.CLOSED},
    S.RESYNC: {E.RUN: S.RUNNING, E.LOGIN: S.LOGGING_IN, E.CLOSE: S.CLOSED},
    # The shell is the terminal's: after it, the next command re-syncs (framing back on).
    S.ATTACHED: {E.DETACH: S.RESYNC, E.CLOSE: S.CLOSED},
    S.RECONNECTING: {
        E.RECONNECTED: S.WAITING,
        E.GAVE_UP: S.IDLE,
        E.OPEN: S.CONNECTING,
        E.CLOSE: S.CLOSED,
    },
    S.CLOSED: {E.OPEN: S.CONNECTING, E.CLOSE: S.CLOSED},
}
TRANSITIONS = {state: {**_peer_events(state), **moves} for state, moves in TRANSITIONS.items()}


class StateMachine:
    """The current state, moved only through :data:`TRANSITIONS`."""

    def __init__(self, state: SessionState = SessionState.IDLE) -> None:
        self.state = state

    def process(self, event: Event) -> SessionState:
        """Apply ``event``; :class:`SessionStateError` when the table does not list it here."""
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise SessionStateError(f"cannot handle event {event.value!r} in state {self.state.value!r}") from None
        return self.state

    def process_if(self, expected: SessionState, event: Event) -> bool:
        """Apply ``event`` only if the state is still ``expected`` (something else may have moved it)."""
        if self.state is not expected:
            return False
        self.process(event)
        return True

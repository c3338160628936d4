"""The device session's state machine (tunnelnb.client.state): one table, illegal moves raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelnb.client.state import TRANSITIONS, Event, SessionState, StateMachine
from tunnelnb.errors import SessionStateError, TunnelnbError

S, E = SessionState, Event
PEER_EVENTS = (E.JOIN, E.LEAVE, E.DISCONNECT, E.LOST)


def test_every_state_has_a_row_and_close_is_legal_everywhere():
    assert set(TRANSITIONS) == set(SessionState)
    for state in SessionState:
        assert TRANSITIONS[state][E.CLOSE] is S.CLOSED


def test_the_happy_path_of_a_session():
    machine = StateMachine()
    path = [
        (E.OPEN, S.CONNECTING),
        (E.CONNECTED, S.WAITING),
        (E.JOIN, S.JOINED),
        (E.LOGIN, S.LOGGING_IN),
        (E.LOGGED_IN, S.READY),
        (E.RUN, S.RUNNING),
        (E.DONE, S.READY),
        (E.RUN, S.RUNNING),
        (E.INTERRUPTED, S.RESYNC),
        (E.RUN, S.RUNNING),
        (E.DONE, S.READY),
        (E.LOST, S.RECONNECTING),
        (E.RECONNECTED, S.WAITING),
        (E.JOIN, S.JOINED),
        (E.CLOSE, S.CLOSED),
        (E.OPEN, S.CONNECTING),
    ]
    for event, expected in path:
        assert machine.process(event) is expected, event


def test_an_illegal_event_raises_and_leaves_the_state_alone():
    machine = StateMachine(S.WAITING)
    with pytest.raises(SessionStateError, match="cannot handle event 'run' in state 'waiting'") as info:
        machine.process(E.RUN)
    assert isinstance(info.value, TunnelnbError)
    assert machine.state is S.WAITING
    assert machine.process_if(S.READY, E.RUN) is False
    assert machine.state is S.WAITING


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (S.READY, E.DISCONNECT, S.JOINED),  # the device's shell ended: log in again, the device stays
        (S.RUNNING, E.LEAVE, S.WAITING),  # disconnect 503: the device left the tunnel
        (S.LOGGING_IN, E.DISCONNECT, S.JOINED),
        (S.WAITING, E.DISCONNECT, S.WAITING),
        (S.READY, E.JOIN, S.READY),
        (S.RESYNC, E.LOST, S.RECONNECTING),
        (S.IDLE, E.LOST, S.IDLE),  # a late close of an old socket changes nothing
        (S.CLOSED, E.JOIN, S.CLOSED),
        (S.RECONNECTING, E.GAVE_UP, S.IDLE),
        (S.RECONNECTING, E.OPEN, S.CONNECTING),  # a login reopens the tunnel itself
    ],
)
def test_what_the_device_and_the_platform_do(state, event, expected):
    assert StateMachine(state).process(event) is expected


def test_joined_and_logged_in_are_read_off_the_state():
    assert {s for s in SessionState if s.joined} == {S.JOINED, S.LOGGING_IN, S.READY, S.RUNNING, S.RESYNC, S.ATTACHED}
    assert {s for s in SessionState if s.logged_in} == {S.READY, S.RUNNING, S.RESYNC, S.ATTACHED}


def test_a_terminal_has_the_shell_until_it_detaches():
    """READY → ATTACHED (no framed command meanwhile) → RESYNC: the next command re-syncs the shell first."""
    machine = StateMachine(S.READY)
    assert machine.process(E.ATTACH) is S.ATTACHED
    for event in (E.RUN, E.LOGIN, E.ATTACH, E.DONE):
        with pytest.raises(SessionStateError, match=f"cannot handle event '{event.value}' in state 'attached'"):
            StateMachine(S.ATTACHED).process(event)
    assert machine.process(E.DETACH) is S.RESYNC
    assert StateMachine(S.ATTACHED).process(E.LOST) is S.RECONNECTING
    assert StateMachine(S.ATTACHED).process(E.DISCONNECT) is S.JOINED  # the shell ended (exit)
    assert StateMachine(S.ATTACHED).process(E.LEAVE) is S.WAITING


@given(st.sampled_from(list(SessionState)), st.lists(st.sampled_from(PEER_EVENTS), max_size=30))
def test_the_peer_can_do_anything_at_any_time(start, events):
    machine = StateMachine(start)
    for event in events:
        machine.process(event)  # never raises: a device's behaviour is never a bug of ours
    assert machine.state in SessionState

"""A terminal to one device of a fleet (fleet/terminals.py): the pool, the login, rows, runs meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from tests.client.test_terminal import PROMPT, Screen
from tests.conftest import Devices, device_ids, open_fleet
from tunnelnb.errors import TerminalError
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.fleet.terminals import open_terminal

WAIT_S = 20


@pytest.fixture
async def fleet(api, devices: Devices, ssh_server):
    await devices.add_all(device_ids(3), ssh_port=ssh_server.port)
    async with open_fleet(api) as f:
        yield f


async def test_runs_on_other_devices_go_on_and_this_one_says_why_not(fleet: Fleet):
    before = await fleet.run("echo before", "device-02", timeout=WAIT_S)
    screen = Screen()
    terminal = await open_terminal(fleet, "device-01", screen.output, on_note=screen.note, timeout=WAIT_S)
    await screen.wait_for(PROMPT)
    assert fleet.last_results is before  # the terminal's row is in the history, not in last_results
    history = fleet.history
    assert history[history.run == 2][["device_id", "command", "status", "error"]].values.tolist() == [
        ["device-01", "shell", "ok", ""]
    ]

    res = await fleet.run("echo cell", "device-0[1-3]", timeout=WAIT_S)
    assert [(r.device_id, r.status, r.stdout) for r in res] == [
        ("device-01", "skipped", ""),
        ("device-02", "ok", "cell\n"),
        ("device-03", "ok", "cell\n"),
    ]
    assert res["device-01"].error.startswith("a terminal is attached to device-01 (%tunnel shell, tunnelnb shell)")
    with pytest.raises(TerminalError, match=r"^no terminal to device-01: skipped: a terminal is already attached"):
        await open_terminal(fleet, "device-01", screen.output, timeout=WAIT_S)

    await fleet.close(["device-02", "device-03"])
    fleet.max_sessions = 1  # a full pool does not evict the attached session for another device
    waiting = asyncio.create_task(fleet.run("echo waits", "device-02", timeout=WAIT_S))
    done, _ = await asyncio.wait({waiting}, timeout=1.0)
    assert not done and fleet.session("device-01") is not None and fleet.session("device-01").attached
    await terminal.detach()
    late = await asyncio.wait_for(waiting, WAIT_S)
    assert [(r.status, r.stdout) for r in late] == [("ok", "waits\n")]
    fleet.max_sessions = 100
    again = await fleet.run("echo again", "device-01", timeout=WAIT_S)
    assert [(r.status, r.stdout) for r in again] == [("ok", "again\n")]


async def test_what_cannot_be_attached_is_one_sentence(fleet: Fleet, devices: Devices):
    screen = Screen()
    with pytest.raises(TerminalError, match=r"^no device matches 'device-99' \(did you mean device-01,") as bad:
        await open_terminal(fleet, "device-99", screen.output)
    assert bad.value.status == "error"
    with pytest.raises(TerminalError, match=r"^'device-0\*' is not one device: a terminal goes to one device id$"):
        await open_terminal(fleet, "device-0*", screen.output)
    await devices.agents[2].stop()
    await fleet.refresh()
    with pytest.raises(TerminalError, match=r"^no terminal to device-03: offline: ") as offline:
        await open_terminal(fleet, "device-03", screen.output, timeout=WAIT_S)
    assert offline.value.status == "offline"


async def test_no_terminal_while_a_cassette_records(fleet: Fleet, tmp_path):
    """A cassette keeps every tunnel message: a terminal's keys (a sudo password, say) must not end up there."""
    import tunnelnb

    screen = Screen()
    async with tunnelnb.record(fleet, tmp_path / "incident.cassette.jsonl"):
        with pytest.raises(TerminalError, match=r"^a cassette recording is on \(%tunnel record\): ") as refused:
            await open_terminal(fleet, "device-01", screen.output, timeout=WAIT_S)
        assert refused.value.status == "error"
        res = await fleet.run("echo recorded", "device-01", timeout=WAIT_S)
        assert [(r.status, r.stdout) for r in res] == [("ok", "recorded\n")]
    terminal = await open_terminal(fleet, "device-01", screen.output, timeout=WAIT_S)
    await screen.wait_for(PROMPT)
    await terminal.detach()

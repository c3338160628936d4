"""Notebook widgets over a real Fleet: real agents, SSH servers and shells on loopback."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable

import pytest
from IPython.utils.text import DollarFormatter

from tests.conftest import API_TOKEN, SSH_PASSWORD, SSH_USER, Devices, open_fleet
from tunnelnb.client.api import PlatformAPI
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.fleet.results import STATUS_COLOURS as _STATUS_COLOURS
from tunnelnb.fleet.runner import ThreadLoopRunner
from tunnelnb.notebook.widgets import ANY_TAG, DevicePicker, FleetDashboard, Targets, Terminal
from tunnelnb.server.agent import Agent
from tunnelnb.server.sshserver import ShellServer

ALL = ("device-01", "device-02", "device-03", "device-04", "device-05", "device-06")


async def _add_tagged(platform, devices: Devices, device_id: str, ssh_port: int, tags: dict[str, str]) -> None:
    """Like Devices.add, with tags on the platform's record."""
    secret = "secret-" + secrets.token_hex(4)
    platform.add_device(device_id, secret, tags=tags)
    agent = Agent(platform.base_url, device_id, secret, heartbeat=None, ssh_port=ssh_port)
    await agent.start()
    devices.agents.append(agent)
    await agent.wait_online(10)


@pytest.fixture
async def fleet(api, platform, devices: Devices, ssh_server, tmp_path):
    """Two tagged gateways, two plain devices, one with another password, one offline edge device."""
    for device_id in ("device-01", "device-02"):
        await _add_tagged(platform, devices, device_id, ssh_server.port, {"role": "gateway", "site": "lab"})
    await devices.add("device-03", ssh_port=ssh_server.port)
    await devices.add("device-04", ssh_port=ssh_server.port)
    other = ShellServer(users={SSH_USER: "a-different-password"}, cwd=str(tmp_path))
    await other.start()
    try:
        await devices.add("device-05", ssh_port=other.port)
        platform.add_device("device-06", "never-online", tags={"role": "edge"})
        async with open_fleet(api) as f:
            yield f
    finally:
        await other.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def done(future, timeout: float = 20.0):
    assert future is not None
    return await asyncio.wait_for(asyncio.wrap_future(future), timeout)


def cells(dashboard_html: str, device_id: str) -> list[str]:
    """The cells of a device's row in the dashboard."""
    m = re.search(rf'<tr data-device="{re.escape(device_id)}">(.*?)</tr>', dashboard_html, re.S)
    assert m, f"no row for {device_id}"
    return re.findall(r"<td[^>]*>(.*?)</td>", m.group(1), re.S)


def running_of(fleet: Fleet, device_id: str) -> object:
    return fleet.status().set_index("device_id").loc[device_id, "running"]


# -- FleetDashboard ----------------------------------------------------------------------------


async def test_dashboard_shows_a_finished_run(fleet: Fleet):
    dash = FleetDashboard(fleet, loop=asyncio.get_running_loop(), refresh_s=30)
    try:
        assert "6 devices · 5 online · 0 logged in · 0 running" in dash.html.value
        assert cells(dash.html.value, "device-01") == ["device-01", "yes", "none", "no", "", "", "", ""]
        assert cells(dash.html.value, "device-06")[:2] == ["device-06", "no"]

        res = await fleet.run("echo hi", "device-01 device-05", timeout=10)
        assert [r.status for r in res] == ["ok", "auth_failed"]
        # The watcher re-renders by itself, within the coalescing delay.
        await wait_until(lambda: "auth_failed" in dash.html.value, 5, "the dashboard to show the run")
        page = dash.html.value
        assert page == dash.render_html()
        assert "6 devices · 5 online · 1 logged in · 0 running" in page

        ok = cells(page, "device-01")
        assert ok[:6] == ["device-01", "yes", "connected", "yes", "", "ok"]
        assert ok[6] == "0"
        assert re.fullmatch(r"\d+\.\d\d s", ok[7]) and float(ok[7][:-2]) == pytest.approx(res[0].duration_s, abs=0.01)
        background, colour = _STATUS_COLOURS["ok"]
        assert f'style="background:{background};color:{colour}">ok</td>' in page

        failed = cells(page, "device-05")
        assert failed[3:7] == ["no", "", "auth_failed", ""]
        background, colour = _STATUS_COLOURS["auth_failed"]
        assert f'style="background:{background};color:{colour}">auth_failed</td>' in page
        assert cells(page, "device-02")[5] == ""  # never ran anything
    finally:
        dash.close()


async def test_dashboard_shows_the_running_command_escaped(fleet: Fleet):
    dash = FleetDashboard(fleet, loop=asyncio.get_running_loop(), refresh_s=30)
    command = "sleep 1.5; echo '<b>done</b>'"
    try:
        task = asyncio.create_task(fleet.run(command, "device-02", timeout=10))
        await wait_until(lambda: "1 running" in dash.html.value, 10, "the run to show")
        row = cells(dash.html.value, "device-02")
        assert row[4] == "<code>sleep 1.5; echo &#x27;&lt;b&gt;done&lt;/b&gt;&#x27;</code>"
        assert "<b>" not in dash.html.value
        res = await asyncio.wait_for(task, 15)
        assert res["device-02"].stdout == "<b>done</b>\n"
        await wait_until(lambda: "0 running" in dash.html.value, 5, "the run to end")
        row = cells(dash.html.value, "device-02")
        assert row[4] == "" and row[5] == "ok" and row[6] == "0"
    finally:
        dash.close()


async def test_dashboard_shortens_long_commands(fleet: Fleet):
    dash = FleetDashboard(fleet, loop=asyncio.get_running_loop(), refresh_s=30)
    command = "sleep 1; echo " + "x" * 100 + "\necho second line"
    try:
        task = asyncio.create_task(fleet.run(command, "device-03", timeout=10))
        await wait_until(lambda: isinstance(running_of(fleet, "device-03"), str), 10, "the run to start")
        row = cells(dash.render_html(), "device-03")
        assert row[4] == "<code>sleep 1; echo " + "x" * 25 + "…</code>"
        await asyncio.wait_for(task, 15)
    finally:
        dash.close()


async def test_dashboard_coalesces_bursts(fleet: Fleet, monkeypatch):
    dash = FleetDashboard(fleet, loop=asyncio.get_running_loop(), refresh_s=30)
    renders = 0
    real = dash.render_html

    def counting() -> str:
        nonlocal renders
        renders += 1
        return real()

    dash.render_html = counting
    try:
        for _ in range(200):
            fleet._changed("device-01")  # what the fleet does on every state change
        await asyncio.sleep(0.5)
        assert renders == 1
        fleet._changed(None)
        await asyncio.sleep(0.5)
        assert renders == 2
    finally:
        dash.close()


async def test_dashboard_refreshes_periodically_and_close_stops_everything(fleet: Fleet):
    watchers = len(fleet._watchers)
    dash = FleetDashboard(fleet, loop=asyncio.get_running_loop(), refresh_s=0.1)
    assert len(fleet._watchers) == watchers + 1
    renders = 0
    real = dash.render_html

    def counting() -> str:
        nonlocal renders
        renders += 1
        return real()

    dash.render_html = counting
    await asyncio.sleep(0.55)
    assert renders >= 3  # every refresh_s, with nothing happening in the fleet

    dash.close()
    assert len(fleet._watchers) == watchers
    frozen, count = dash.html.value, renders
    await fleet.run("echo after close", "device-03", timeout=10)
    await asyncio.sleep(0.5)
    assert renders == count
    assert dash.html.value == frozen
    assert "device-03" in frozen and "ok" not in cells(frozen, "device-03")


async def test_widgets_on_a_loop_in_another_thread(platform, fleet: Fleet):
    """The fleet's loop runs in a thread (terminal IPython, scripts): the same widgets work."""
    runner = ThreadLoopRunner()

    async def connect() -> Fleet:
        api = PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=API_TOKEN)
        threaded = Fleet(api, login=(SSH_USER, SSH_PASSWORD))
        await threaded.refresh()
        return threaded

    threaded = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(connect(), runner.loop))

    def on_loop(coro):
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, runner.loop))

    dash = FleetDashboard(threaded, loop=runner.loop, refresh_s=30)
    try:
        result = (await on_loop(threaded.run("echo red", "device-03", timeout=10)))["device-03"]
        assert (result.status, result.stdout) == ("ok", "red\n")
        await wait_until(lambda: "data-device" in dash.html.value and "ok" in cells(dash.html.value, "device-03"))

        sleeping = asyncio.run_coroutine_threadsafe(threaded.run("sleep 30", "device-03", timeout=60), runner.loop)
        await wait_until(lambda: "1 running" in dash.html.value, 10, "the dashboard to show sleep")
        assert "<code>sleep 30</code>" in cells(dash.html.value, "device-03")[4]
        runner.loop.call_soon_threadsafe(sleeping.cancel)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wrap_future(sleeping)
        # Ctrl-C on the device, the rows kept (recorded once the run's task has finished on its loop).
        await wait_until(lambda: len(threaded.history) == 2, 10, "the cancelled run's rows")
        assert list(threaded.history.status) == ["ok", "cancelled"]
    finally:
        dash.close()
        await on_loop(threaded.close())
        runner.close()


async def test_widgets_made_on_the_fleets_loop_find_it_themselves(fleet: Fleet):
    """Issue 15: ``FleetDashboard(fleet)`` in a notebook cell, no ``loop=``: the running loop is the fleet's."""
    dash = FleetDashboard(fleet, refresh_s=30)
    try:
        assert dash.loop is asyncio.get_running_loop()
        assert (await fleet.run("echo found", "device-01", timeout=10))["device-01"].stdout == "found\n"
        await wait_until(lambda: "ok" in cells(dash.html.value, "device-01"), 5, "the dashboard to show the run")
    finally:
        dash.close()


def test_a_widget_that_cannot_be_made_says_why_and_leaves_no_del_error(monkeypatch):
    """Issue 15: no loop here (no running loop, none given): a TypeError naming ``loop=``, nothing at __del__."""
    import gc

    unraisable: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    inert = Fleet(PlatformAPI("http://127.0.0.1:9", project_id="demo", api_token="t"))
    idle = asyncio.new_event_loop()
    for make in (
        lambda: FleetDashboard(inert),
        lambda: Terminal(inert, "device-01"),
        lambda: FleetDashboard(inert, loop=idle, refresh_s=0),
    ):
        with pytest.raises((TypeError, ValueError)) as failed:
            make()
        if failed.type is TypeError:
            assert "loop=" in str(failed.value)
        del failed
        gc.collect()
    idle.close()
    assert unraisable == []


async def test_dashboard_header_cells_read_as_columns(fleet: Fleet):
    """Issue 15: one <th> per column, each padded and ruled, so the names do not run together."""
    page = FleetDashboard(fleet, refresh_s=30)
    try:
        head = re.search(r"<thead><tr>(.*?)</tr></thead>", page.html.value, re.S)
        assert head
        headers = re.findall(r'<th style="([^"]*)">(.*?)</th>', head.group(1))
        assert [name for _, name in headers] == [
            "device", "online", "tunnel", "logged in", "running", "last status", "exit", "duration"
        ]  # fmt: skip
        assert len(headers) == len(cells(page.html.value, "device-01"))
        for style, _ in headers:
            rules = dict(part.split(":", 1) for part in style.split(";") if part)
            assert re.fullmatch(r"\d+px \d+px", rules["padding"]) and int(rules["padding"].split()[1][:-2]) >= 6
            assert "solid" in rules["border-right"] and "solid" in rules["border-bottom"]
    finally:
        page.close()


# -- DevicePicker ------------------------------------------------------------------------------


async def test_picker_filters_by_tag_and_status(fleet: Fleet):
    picker = DevicePicker(fleet)
    assert picker.tag_filter.options == (ANY_TAG, "role=edge", "role=gateway", "site=lab")
    assert picker.status_filter.options == ("all", "online", "offline")
    assert picker.selector.options == ALL
    assert picker.value == ()

    picker.tag_filter.value = "role=gateway"
    assert picker.selector.options == ("device-01", "device-02")
    picker.status_filter.value = "offline"
    assert picker.selector.options == ()
    picker.tag_filter.value = ANY_TAG
    assert picker.selector.options == ("device-06",)
    picker.status_filter.value = "online"
    assert picker.selector.options == ALL[:5]
    picker.tag_filter.value = "role=edge"
    assert picker.selector.options == ()


async def test_picker_value_is_space_joined_targets(fleet: Fleet):
    picker = DevicePicker(fleet)
    picker.tag_filter.value = "site=lab"
    picker.all_button.click()
    value = picker.value
    assert isinstance(value, Targets) and isinstance(value, tuple)
    assert value == ("device-01", "device-02")
    assert str(value) == "device-01 device-02"
    assert f"{value}" == "device-01 device-02"
    assert repr(value) == "Targets('device-01', 'device-02')"
    # What IPython does with `%%tunnel $picker.value`:
    assert DollarFormatter().vformat("$picker.value", args=[], kwargs={"picker": picker}) == "device-01 device-02"
    assert fleet.select(value) == ["device-01", "device-02"]
    assert picker.count_label.value == "2 of 2 picked"

    picker.none_button.click()
    assert picker.value == () and str(picker.value) == ""


async def test_picker_keeps_picked_devices_that_still_match(fleet: Fleet):
    picker = DevicePicker(fleet)
    picker.selector.value = ("device-01", "device-03", "device-06")
    picker.status_filter.value = "online"
    assert picker.value == ("device-01", "device-03")
    picker.tag_filter.value = "role=gateway"
    assert picker.value == ("device-01",)
    picker.tag_filter.value = ANY_TAG
    assert picker.value == ("device-01",)


async def test_picker_refresh_sees_a_device_go_offline(fleet: Fleet, platform, devices: Devices):
    picker = DevicePicker(fleet)
    picker.status_filter.value = "offline"
    assert picker.selector.options == ("device-06",)
    agent = next(a for a in devices.agents if a.device_id == "device-04")
    await agent.stop()
    await wait_until(lambda: platform.devices["device-04"]["status"] == "OFFLINE", 10, "device-04 offline")
    await fleet.refresh()
    picker.refresh()
    assert picker.selector.options == ("device-04", "device-06")


def test_widgets_find_the_loop_of_a_fleet_on_a_loop_thread():
    """A fleet from connect_sync lives on a loop thread; widgets made elsewhere use that loop, unasked."""
    import tunnelnb

    sync = tunnelnb.connect_sync(embedded=True, devices=2, seed=3)
    try:
        dash = FleetDashboard(sync.fleet, refresh_s=30)
        try:
            assert dash.loop is sync.fleet.loop
            assert dash.loop is not None and dash.loop.is_running()
        finally:
            dash.close()
    finally:
        sync.close()

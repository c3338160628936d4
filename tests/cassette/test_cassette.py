"""Record and replay: cassettes of a real embedded fleet, played back with no network at all.

The recording runs on the embedded platform and simulated fleet (real agents, real
shells), with devices that misbehave: with 20 devices and seed 1, device-16 is
offline and device-17 refuses the fleet's password.  The platform and the fleet are
stopped before anything is replayed, and replays run with aiohttp unable to make a
single HTTP session.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import tunnelnb
from tunnelnb.cassette.file import SUFFIX, Cassette, Masker, command_of, scan
from tunnelnb.client import transport as transport_module
from tunnelnb.client.api import PlatformAPI
from tunnelnb.errors import CassetteError, TunnelnbError
from tunnelnb.protocol import shell as shell_module
from tunnelnb.protocol.shell import command_script, setup_script
from tunnelnb.sim import device_secret as _device_secret

ROOT = Path(__file__).resolve().parents[2]
DEVICES, SEED = 20, 1  # device-16 offline, device-17 wrong_password
OFFLINE, WRONG_PASSWORD = "device-16", "device-17"
TARGETS = "device-0[1-4] device-1[5-7]"

#: What the recorded session does; a replay does the same and must get the same tables.
STEPS: list[tuple[str, str, float]] = [
    ("login", TARGETS, 10.0),
    ("run", "hostname; grep -c ERROR /var/log/app.log", 10.0),
    ("run", "cd /tmp && export MARK=kept; echo $MARK $(pwd); (exit 3)", 10.0),
    ("run", "sleep 5; echo never", 1.5),  # times out: Ctrl-C, then the next command resyncs
    ("run", "echo after; pwd; printf 'no newline'", 10.0),
    ("run", "printf 'caf\\303\\251 \\033[1;31mred\\033[0m\\n'; seq 1 3000 | tail -n 2", 10.0),
]


async def perform(fleet: Any, steps: list[tuple[str, str, float]] = STEPS) -> list[pd.DataFrame]:
    """Run ``steps`` on ``fleet``: every results table, then the history."""
    tables = []
    for kind, what, timeout in steps:
        if kind == "login":
            res = await fleet.login(what, timeout=timeout)
        else:
            res = await fleet.run(what, TARGETS, timeout=timeout)
        tables.append(res.df)
    tables.append(fleet.history)
    return tables


def assert_tables_equal(recorded: list[pd.DataFrame], replayed: list[pd.DataFrame]) -> None:
    assert len(recorded) == len(replayed)
    for a, b in zip(recorded, replayed, strict=True):
        # check_exact: durations are bit-for-bit the recorded ones, not merely close.
        pd.testing.assert_frame_equal(a, b, check_exact=True)


@dataclass
class Recorded:
    path: Path
    tables: list[pd.DataFrame]
    live_s: float
    secrets: list[str] = field(default_factory=list)


async def _record(path: Path) -> Recorded:
    tokens: list[str] = []
    add_tunnel = PlatformAPI.add_tunnel

    async def spy(self: PlatformAPI, device_id: str) -> Any:
        grant = await add_tunnel(self, device_id)
        tokens.append(grant.token)
        return grant

    PlatformAPI.add_tunnel = spy  # type: ignore[method-assign]
    try:
        fleet = await tunnelnb.connect(embedded=True, devices=DEVICES, seed=SEED)
        platform, sim = fleet.embedded  # type: ignore[attr-defined]
        try:
            async with tunnelnb.record(fleet, path) as recording:
                t0 = time.perf_counter()
                tables = await perform(fleet)
                live_s = time.perf_counter() - t0
            assert recording.summary is not None and recording.summary.events > 100
        finally:
            await fleet.close()  # the platform and the simulated fleet stop here
    finally:
        PlatformAPI.add_tunnel = add_tunnel  # type: ignore[method-assign]
    secrets = [platform.api_token, sim.login()[1], sim.credentials(WRONG_PASSWORD)[1], *tokens]
    secrets += [_device_secret(platform.api_token, platform.project_id, d) for d in sim.device_ids]
    return Recorded(path, tables, live_s, secrets)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """One recording for the module, made in an event loop of its own that is gone afterwards."""
    path = tmp_path_factory.mktemp("cassette") / ("session" + SUFFIX)
    return asyncio.run(_record(path))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any HTTP or WebSocket session is a test failure."""

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a replay made an HTTP session")

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", refuse)


# ---------------------------------------------------------------------------
# The round trip


async def test_replay_gives_the_recorded_tables_without_a_network(recorded: Recorded, no_network: None):
    t0 = time.perf_counter()
    fleet = await tunnelnb.connect(replay=recorded.path)
    try:
        replayed = await perform(fleet)
    finally:
        await fleet.close()
    replay_s = time.perf_counter() - t0
    assert_tables_equal(recorded.tables, replayed)
    # Failures replay as what they were.
    login, _, exit3, timed_out, after, _, _ = replayed
    assert dict(zip(login.device_id, login.status, strict=True))[OFFLINE] == "offline"
    assert dict(zip(login.device_id, login.status, strict=True))[WRONG_PASSWORD] == "auth_failed"
    ok = exit3[exit3.status == "error"]
    assert len(ok) == 5 and set(ok.exit_code) == {3} and set(ok.stdout) == {"kept /tmp\n"}
    assert set(timed_out.status) == {"timeout", "offline", "auth_failed"}
    assert (timed_out[timed_out.status == "timeout"].duration_s >= 1.5).all()
    assert set(after[after.status == "ok"].stdout) == {"after\n/tmp\nno newline"}  # the shell persisted
    # The recorded timeout took its 1.5 s; its replay does not wait for it.
    assert recorded.live_s > 1.5 and replay_s < 1.0, (recorded.live_s, replay_s)


async def test_replay_twice_from_one_cassette_is_the_same(recorded: Recorded, no_network: None):
    for _ in range(2):
        async with await tunnelnb.connect(replay=recorded.path) as fleet:
            assert_tables_equal(recorded.tables, await perform(fleet))


async def test_a_parsing_bug_shows_in_a_replay(recorded: Recorded, no_network: None, monkeypatch):
    """Replay feeds the recorded messages to the real protocol decoder and shell parser."""
    decoded = []
    real_decode = transport_module.decode_frame

    def counting_decode(message: Any, **kwargs: Any) -> Any:
        decoded.append(message)
        return real_decode(message, **kwargs)

    monkeypatch.setattr(transport_module, "decode_frame", counting_decode)
    async with await tunnelnb.connect(replay=recorded.path) as fleet:
        replayed = await perform(fleet, STEPS[:2])
    assert len(decoded) > 20 and all(isinstance(m, bytes) for m in decoded)
    assert set(replayed[1].status) == {"ok", "offline", "auth_failed"}

    # A bug in cleaning terminal output: the replayed table shows it.
    monkeypatch.setattr(shell_module, "_ESCAPE", re.compile(r"\x1bNEVER"))
    async with await tunnelnb.connect(replay=recorded.path) as fleet:
        broken = await perform(fleet)
    assert "\x1b[1;31m" not in "".join(recorded.tables[5].stdout)
    assert "café \x1b[1;31mred\x1b[0m\n2999\n3000\n" in set(broken[5].stdout)

    # A bug in finding the end of a command's output: the session never sees its shell
    # answer, types its no-op again, and the replay stops there (the device never saw that).
    monkeypatch.setattr(shell_module, "_END_TAIL", re.compile(r"(\d+)__NEVER"))
    async with await tunnelnb.connect(replay=recorded.path) as fleet:
        login = (await perform(fleet, STEPS[:1]))[0]
    # Each device whose login the cassette has: its row names what left the cassette.
    left = login[login.status == "disconnected"]
    assert len(left) >= 1
    assert all(re.search(r"the login is not in the cassette .* sent the command 'true'", e) for e in left.error)


# ---------------------------------------------------------------------------
# Strictness, format, modes


async def test_strict_replay_names_the_device_and_the_command(recorded: Recorded, no_network: None):
    async with await tunnelnb.connect(replay=recorded.path) as fleet:
        await fleet.login(TARGETS, timeout=10)
        # A mismatch is that device's row; every target still gets one.
        res = await fleet.run("uptime -p", TARGETS, timeout=10)
        assert list(res.df.device_id) == fleet.select(TARGETS)
        logged_in = res.df[res.df.status == "disconnected"]
        assert len(logged_in) >= 1
        message = logged_in.error.iloc[0]
        assert "'uptime -p'" in message and "device-0" in message and "is not in the cassette" in message
        assert "has the command 'hostname; grep -c ERROR /var/log/app.log' next" in message
        # That device's session has gone its own way: it says so, rather than replaying something else.
        again = await fleet.run(STEPS[1][1], "device-01", timeout=10)
        assert again.df.status[0] == "disconnected"
        assert "left the cassette earlier, at the command 'uptime -p'" in again.df.error[0]
        other = await fleet.run("true", "device-09")
        assert other.df.status[0] == "disconnected"
        assert "device-09: the command 'true' is not in the cassette" in other.df.error[0]
    async with await tunnelnb.connect(replay=recorded.path) as fleet:  # a new replay starts afresh
        replayed = await perform(fleet, STEPS[:2])
    pd.testing.assert_frame_equal(replayed[1], recorded.tables[1], check_exact=True)


def test_unknown_version_not_a_cassette_and_no_file_are_clear_errors(recorded: Recorded, tmp_path: Path):
    lines = recorded.path.read_text().splitlines()
    header = json.loads(lines[0])
    future = tmp_path / ("future" + SUFFIX)
    future.write_text("\n".join([json.dumps({**header, "version": 2}), *lines[1:]]) + "\n")
    with pytest.raises(CassetteError, match=r"format version 2, and this tunnelnb .* reads version 1"):
        asyncio.run(tunnelnb.connect(replay=future))
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": "world"}\n')
    with pytest.raises(CassetteError, match="is not a tunnelnb cassette"):
        Cassette.load(other)
    broken = tmp_path / ("broken" + SUFFIX)
    broken.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(CassetteError, match="line 2: not JSON"):
        Cassette.load(broken)
    with pytest.raises(CassetteError, match="no cassette at"):
        Cassette.load(tmp_path / "missing.cassette.jsonl")


async def test_new_episodes_replays_what_it_has_and_appends_the_rest(recorded: Recorded, tmp_path: Path):
    path = tmp_path / ("episodes" + SUFFIX)
    shutil.copy(recorded.path, path)
    size = path.stat().st_size
    fleet = await tunnelnb.connect(replay=path, mode="new_episodes", embedded=True, devices=DEVICES, seed=SEED)
    try:
        replayed = await perform(fleet)
        assert_tables_equal(recorded.tables, replayed)
        assert path.stat().st_size == size  # all of that came from the cassette
        # New: runs live (a fresh shell behind the replayed sessions), and is appended.
        new = (await fleet.run("echo new; pwd", TARGETS, timeout=10)).df
        other = (await fleet.run("hostname", "device-09", timeout=10)).df  # a device the cassette never saw
    finally:
        await fleet.close()
    status = dict(zip(new.device_id, new.status, strict=True))
    assert status[OFFLINE] == "offline" and status[WRONG_PASSWORD] == "auth_failed"
    assert set(new[new.status == "ok"].stdout) == {"new\n/home/ops\n"} and len(new[new.status == "ok"]) == 5
    assert other.stdout[0] == "device-09\n"
    assert path.stat().st_size > size
    assert scan(path, recorded.secrets) == []

    async with await tunnelnb.connect(replay=path) as again:  # strict, and offline: all of it replays
        replayed = await perform(again)
        new_again = (await again.run("echo new; pwd", TARGETS, timeout=10)).df
        other_again = (await again.run("hostname", "device-09", timeout=10)).df
    assert_tables_equal(recorded.tables, replayed)
    pd.testing.assert_frame_equal(new, new_again, check_exact=True)
    pd.testing.assert_frame_equal(other, other_again, check_exact=True)


async def test_mode_all_records_anew(tmp_path: Path):
    path = tmp_path / ("anew" + SUFFIX)
    path.write_text("not even a cassette\n")
    fleet = await tunnelnb.connect(replay=path, mode="all", embedded=True, devices=3, seed=2)
    try:
        live = (await fleet.run("hostname", "device-0[1-3]", timeout=10)).df
    finally:
        await fleet.close()
    assert json.loads(path.read_text().splitlines()[0])["format"] == "tunnelnb-cassette"
    async with await tunnelnb.connect(replay=path) as fleet:
        pd.testing.assert_frame_equal(live, (await fleet.run("hostname", "device-0[1-3]", timeout=10)).df)


async def test_modes_that_need_a_platform_say_so(recorded: Recorded, monkeypatch):
    monkeypatch.delenv("TUNNELNB_URL", raising=False)
    with pytest.raises(TunnelnbError, match="needs a live platform"):
        await tunnelnb.connect(replay=recorded.path, mode="new_episodes")
    with pytest.raises(TunnelnbError, match="unknown cassette mode"):
        await tunnelnb.connect(replay=recorded.path, mode="sometimes", embedded=True)


# ---------------------------------------------------------------------------
# Secrets


async def test_secrets_never_reach_a_cassette(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TNB_CASSETTE_PASSWORD", "env-password-" + "x7Qz")
    path = tmp_path / ("secrets" + SUFFIX)
    fleet = await tunnelnb.connect(embedded=True, devices=3, seed=2)
    platform, sim = fleet.embedded  # type: ignore[attr-defined]
    user, password = sim.login()
    try:
        with tunnelnb.record(fleet, path) as recording:  # the blocking form, inside a running loop
            await fleet.login("device-01", user=user, password_env="TNB_CASSETTE_PASSWORD")  # refused
            await fleet.login("device-0[2-3]", user=user, password=password)
            # Devices printing secrets: their output is masked too.
            res = await fleet.run(f"echo {password} {platform.api_token}", "device-0[2-3]", timeout=10)
    finally:
        await fleet.close()
    assert set(res.df.status) == {"ok"}
    text = path.read_text()
    for secret in (password, platform.api_token, "env-password-x7Qz"):
        assert secret not in text
    assert '"password": "<password>"' in text and '"tunnel_access_token": "<tunnel-access-token>"' in text
    assert "<password> <api-token>" in text  # the echoed secrets, as placeholders
    assert recording.summary is not None and recording.summary.masked >= 6
    assert scan(path, [password, platform.api_token, "env-password-x7Qz"]) == []


def test_every_cassette_in_the_repository_is_free_of_secrets():
    cassettes = [p for p in ROOT.rglob("*" + SUFFIX) if ".venv" not in p.parts and ".git" not in p.parts]
    assert any(p.parent.name == "notebooks" for p in cassettes), cassettes
    for path in cassettes:
        assert scan(path) == [], path


def test_the_recording_session_masked_every_secret_it_used(recorded: Recorded):
    assert len(recorded.secrets) >= 10  # API token, passwords, tunnel tokens, device secrets
    assert scan(recorded.path, recorded.secrets) == []


def test_scan_finds_a_leak(tmp_path: Path):
    path = tmp_path / ("leaky" + SUFFIX)
    lines = [
        {"format": "tunnelnb-cassette", "version": 1},
        {"t": 0, "dev": "d", "kind": "out", "frame": {"operation_type": "connect", "data": {"password": "hunter2"}}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    problems = scan(path, ["hunter2"])
    assert len(problems) == 2 and "'password' holds a value" in problems[1]


def test_masker_masks_keys_and_known_values():
    masker = Masker([("s3cret-value", "<password>")])
    out = masker({"Password": "short", "X-Auth-Token": "tok", "list": ["say s3cret-value twice s3cret-value"]})
    assert out == {"Password": "<password>", "X-Auth-Token": "<api-token>", "list": ["say <password> twice <password>"]}
    assert masker("no short mask: short") == "no short mask: short"  # too short to search for in free text
    assert masker({"password": "<password>"}) == {"password": "<password>"}  # placeholders stay
    assert masker.masked == 4


# ---------------------------------------------------------------------------
# The file


def test_the_cassette_is_json_lines_a_person_can_read(recorded: Recorded):
    lines = recorded.path.read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["format"], header["version"], header["login"]) == ("tunnelnb-cassette", 1, {"user": "ops"})
    events = [json.loads(line) for line in lines[1:]]
    assert all(list(e)[:3] == ["t", "dev", "kind"] for e in events)
    times = [e["t"] for e in events]
    assert times == sorted(times)  # in the order things happened, all devices on one timeline
    commands = {e.get("cmd") for e in events if e["kind"] == "out"}
    assert {STEPS[1][1], STEPS[3][1]} <= commands  # the user's commands, readable next to their frames
    kinds = {e["kind"] for e in events}
    assert {"rest", "open", "out", "in", "clock", "now", "random"} <= kinds


@pytest.mark.parametrize(
    "command",
    [
        "uptime",
        "echo 'quoted' \"double\" $HOME; (exit 3)",
        "line one\nline two\n",
        "printf 'tab\\there'\t# a real tab: sent base64",
        "x" * 1200,  # a long line: sent base64
        "echo café ✓",
    ],
)
def test_command_of_reads_the_command_back_from_its_framing(command: str):
    assert command_of(command_script("abc1x2", command)) == command
    assert command_of(setup_script() + command_script("abc1x1", command)) == command
    assert command_of("\x03") is None


# ---------------------------------------------------------------------------
# Front ends


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "tunnelnb")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "tunnelnb")


def cell(ip: InteractiveShell, code: str) -> Any:
    result = ip.run_cell(code)
    if result.error_in_exec is not None:
        raise result.error_in_exec
    return result.result


def test_magics_record_stop_and_replay(ip: InteractiveShell, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("TUNNELNB_URL", raising=False)
    monkeypatch.delenv("TUNNELNB_RECORD_MODE", raising=False)
    path = tmp_path / ("magic" + SUFFIX)
    cell(ip, "%tunnel connect --embedded --devices 6 --seed 6")  # device-06 is offline
    cell(ip, f"%tunnel record {path}")
    with pytest.raises(UsageError, match="already recording"):
        cell(ip, f"%tunnel record {path}")
    live = cell(ip, "%%tunnel device-0[1-6] --no-stream\necho hi $(hostname); (exit 4)").df
    capsys.readouterr()
    cell(ip, "%tunnel record --stop")
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {path}: ") and " devices, " in printed and "secrets masked" in printed
    with pytest.raises(UsageError, match="not recording"):
        cell(ip, "%tunnel record --stop")
    cell(ip, "%tunnel close --all")

    cell(ip, f"%tunnel connect --replay {path}")
    assert "connected to cassette" in capsys.readouterr().out
    replayed = cell(ip, "%%tunnel device-0[1-6] --no-stream\necho hi $(hostname); (exit 4)").df
    pd.testing.assert_frame_equal(live, replayed, check_exact=True)
    assert set(replayed.status) == {"error", "offline"}
    # A command the cassette does not have: that device's row names device and command.
    missing = cell(ip, "%tunnel device-01 --no-stream -- uptime").df
    assert missing.status[0] == "disconnected"
    assert "device-01: the command 'uptime' is not in the cassette" in missing.error[0]
    cell(ip, "%tunnel close --all")


def test_magics_cassette_replays_offline_and_runs_live_with_a_platform(
    ip: InteractiveShell, recorded: Recorded, capsys, monkeypatch
):
    monkeypatch.delenv("TUNNELNB_RECORD_MODE", raising=False)
    monkeypatch.delenv("TUNNELNB_URL", raising=False)
    cell(ip, f"%tunnel connect --cassette {recorded.path} --devices {DEVICES} --seed {SEED}")
    assert "connected to cassette" in capsys.readouterr().out
    res = cell(ip, f"%tunnel login {TARGETS} --user ops --password-env TNB_NOT_SET_IN_A_REPLAY")
    assert list(res.df.status) == list(recorded.tables[0].status)  # no password needed: none is sent
    cell(ip, "%tunnel close --all")
    # With a platform at hand the same line runs live (here: one that is not there).
    monkeypatch.setenv("TUNNELNB_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TUNNELNB_API_TOKEN", "not-a-real-token")
    with pytest.raises(UsageError, match=re.escape("cannot reach the platform at http://127.0.0.1:9")):
        cell(ip, f"%tunnel connect --cassette {recorded.path}")
    assert "runs live" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--replay PATH or --cassette PATH, not both"):
        cell(ip, f"%tunnel connect --cassette {recorded.path} --replay {recorded.path}")


async def test_recording_stops_and_the_fleet_goes_on_live(tmp_path: Path):
    path = tmp_path / ("stop" + SUFFIX)
    fleet = await tunnelnb.connect(embedded=True, devices=2, seed=2)
    try:
        await fleet.run("true", "device-01")  # a session open before the recording: it gets closed
        recording = await tunnelnb.record(fleet, path).astart()
        with pytest.raises(CassetteError, match="already records"):
            tunnelnb.record(fleet, tmp_path / "second.cassette.jsonl").start()
        await fleet.run("echo one", "device-0[1-2]")
        summary = recording.stop()
        size = path.stat().st_size
        after = await fleet.run("echo two", "device-0[1-2]")
        assert set(after.df.stdout) == {"two\n"} and path.stat().st_size == size
    finally:
        await fleet.close()
    assert summary.devices == 2 and summary.events > 20
    async with await tunnelnb.connect(replay=path) as replay:
        with pytest.raises(CassetteError, match="already records or replays"):
            tunnelnb.record(replay, tmp_path / "again.cassette.jsonl").start()
        res = await replay.run("echo one", "device-0[1-2]")
    assert set(res.df.stdout) == {"one\n"}


@pytest.mark.kernel
def test_replay_in_a_fresh_kernel_gives_equal_tables(recorded: Recorded, tmp_path: Path):
    from jupyter_client.manager import KernelManager

    from tests.notebook.test_kernel import Kernel

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path))
    kernel = Kernel(km)
    out = tmp_path / "tables.pickle"
    try:
        kernel.ok("%load_ext tunnelnb")
        kernel.ok(f"%tunnel connect --replay {recorded.path} -o fleet")
        code = ["import pickle", "tables = []"]
        for kind, what, timeout in STEPS:
            if kind == "login":
                code.append(f"login = %tunnel login {what}")
                code.append("tables.append(login.df)")
            else:
                code.append(f"tables.append((await fleet.run({what!r}, {TARGETS!r}, timeout={timeout})).df)")
        code.append("tables.append(fleet.history)")
        code.append(f"pickle.dump(tables, open({str(out)!r}, 'wb'))")
        kernel.ok("\n".join(code))
        kernel.ok("%tunnel close --all")
    finally:
        kernel.close()
    assert_tables_equal(recorded.tables, pickle.loads(out.read_bytes()))


async def test_a_login_the_recording_did_not_have_costs_one_row_not_the_table(tmp_path: Path):
    """Replaying with an extra `login`: devices whose recorded login worked replay as recorded."""
    path = tmp_path / ("nologin" + SUFFIX)
    async with await tunnelnb.connect(embedded=True, devices=DEVICES, seed=SEED) as live:
        async with tunnelnb.record(live, path):
            recorded = (await live.run("df -h /data | tail -1", "device-0[1-3] device-17", timeout=10)).df
    assert list(recorded.status) == ["ok", "ok", "ok", "auth_failed"]
    async with await tunnelnb.connect(replay=path) as replay:
        login = (await replay.login("device-0[1-3] device-17", user="ops", password="whatever", timeout=10)).df
        assert list(login.status) == ["ok", "ok", "ok", "auth_failed"]  # the recorded logins, replayed
        res = (await replay.run("df -h /data | tail -1", "device-0[1-3] device-17", timeout=10)).df
    assert list(res.device_id) == list(recorded.device_id)
    same = ["device_id", "command", "status", "exit_code", "stdout", "error"]  # the login moved: times differ
    pd.testing.assert_frame_equal(res.iloc[:3][same], recorded.iloc[:3][same], check_exact=True)
    assert res.status[3] == "disconnected"
    assert res.error[3].startswith("device-17: the command 'df -h /data | tail -1' is not in the cassette")

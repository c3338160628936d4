"""Rolling runs from the magics: ``--batch``, ``--max-errors``, ``--canary`` and ``--bg``.

Through a real InteractiveShell on an embedded fleet, as tests/notebook/test_magics.py.
Devices fail on purpose by their id (the command reads it from the device's ``device.conf``).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from tunnelnb.fleet.results import Results

SEED, DEVICES = 6, 6  # device-06 is offline with this seed; the others are healthy
DEVICE_ID = "ID=$(sed -n 's/^device_id=//p' /etc/device.conf etc/device.conf 2>/dev/null | head -n 1)"


def failing_on(*ids: str, code: int = 4) -> str:
    return f'{DEVICE_ID}; echo "ran $ID"; case "$ID" in {"|".join(ids)}) (exit {code});; esac'


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "tunnelnb")
    result = shell.run_cell(f"%tunnel connect --embedded --devices {DEVICES} --seed {SEED}")
    assert result.success, result.error_in_exec
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "tunnelnb")


def run(ip: InteractiveShell, code: str) -> Any:
    result = ip.run_cell(code)
    assert result.error_before_exec is None
    assert result.success, result.error_in_exec
    return result.result


def test_a_cell_with_a_batch_and_an_error_budget(ip, capsys):
    res = run(ip, f"%%tunnel device-0[1-5] --batch 2 --max-errors 0 --raw -o res\n{failing_on('device-02')}\n")
    assert isinstance(res, Results) and ip.user_ns["res"] is res
    df = res.df
    assert list(df.device_id) == [f"device-0{i}" for i in range(1, 6)]
    assert list(df.status) == ["ok", "error", "skipped", "skipped", "skipped"]
    assert list(df.exit_code[:2]) == [0, 4]
    assert list(df.error[2:]) == ["not started: 1 device failed, more than --max-errors 0"] * 3
    out = capsys.readouterr().out
    assert "device-01 │ ran device-01" in out
    assert "ran device-03" not in out  # live output: the skipped devices never ran
    assert "skipped" in res.to_html()


def test_a_line_with_a_canary(ip):
    res = run(ip, f"%tunnel device-0[1-5] --canary 1 --no-stream -- '{failing_on('device-01')}'")
    assert list(res.df.status) == ["error"] + ["skipped"] * 4
    assert list(res.df.error[1:]) == ["not started: the canary device-01 failed"] * 4


def test_a_line_with_percentages(ip):
    """5 targets: batches of 40 % are 2 devices, 20 % allows 1 failure; the 2nd failure stops the run."""
    command = failing_on("device-01", "device-03")
    res = run(ip, f"%tunnel device-0[1-5] --batch 40% --max-errors 20% --no-stream -- '{command}'")
    assert list(res.df.status) == ["error", "ok", "error", "ok", "skipped"]
    assert res.df.error[4] == "not started: 2 devices failed, more than --max-errors 20% (1 of 5 devices)"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%tunnel device-01 --batch 0 -- true", "batch must be a positive number or a percentage like 25% (not '0')"),
        ("%%tunnel device-01 --batch 0%\ntrue", "batch must be a positive number or a percentage like 25% (not '0%')"),
        (
            "%tunnel device-01 --max-errors lots -- true",
            "max_errors must be a number (0 or more) or a percentage like 10% (not 'lots')",
        ),
        ("%%tunnel device-01 --canary 0\ntrue", "canary must be a positive number of devices (not '0')"),
        ("%tunnel device-01 --canary two -- true", "canary must be a positive number of devices (not 'two')"),
    ],
)
def test_bad_rolling_options_are_one_line(ip, capsys, line, message):
    result = ip.run_cell(line)
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err


@pytest.fixture
def background(monkeypatch) -> list[tuple[Any, ...]]:
    """A stand-in for the background module (another part of the project): records what it is given."""
    calls: list[tuple[Any, ...]] = []
    module = types.ModuleType("tunnelnb.notebook.magics.background")

    def start(magics: Any, args: Any, command: str, ids: list[str], options: dict[str, Any]) -> str:
        calls.append((magics, args, command, ids, options))
        return "a job handle"

    module.start = start  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls


def test_bg_hands_the_run_to_the_background_module(ip, background):
    magics = ip._tunnelnb_magics
    runs = len(magics.fleet.history)
    got = run(ip, "%tunnel device-0[1-3] --bg --batch 2 --max-errors 10% --canary 1 --timeout 9 -- echo hi")
    assert got == "a job handle"
    [(given_magics, args, command, ids, options)] = background
    assert given_magics is magics
    assert args.bg is True
    assert command == "echo hi"
    assert ids == ["device-01", "device-02", "device-03"]
    assert options == {"timeout": 9.0, "concurrency": 100, "batch": 2, "max_errors": "10%", "canary": 1}
    assert len(magics.fleet.history) == runs  # nothing ran in the foreground


def test_bg_on_a_cell_passes_every_run_option(ip, background):
    run(ip, "%%tunnel device-01 --bg -o job --ok-codes 0,1 --verify --concurrency 3\ngrep x /etc/hostname\n")
    [(_, args, command, ids, options)] = background
    assert (args.out, command, ids) == ("job", "grep x /etc/hostname\n", ["device-01"])
    # Options not given are left out: Fleet.run's own defaults apply.
    assert options == {"timeout": 30.0, "concurrency": 3, "ok_codes": (0, 1), "verify": True}


def test_help_describes_the_rolling_options(ip):
    doc = ip.find_line_magic("tunnel").__doc__
    for word in ("--batch N|P%", "--max-errors N|P%", "--canary N", "skipped", "--bg -o VAR"):
        assert word in doc

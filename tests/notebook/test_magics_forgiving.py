"""Magics that forgive (issue 15): a failed connect keeps the working one, an interrupt is one line,
near misses get a "did you mean", and the messages say things once and count right.

Through a real InteractiveShell on an embedded fleet, as tests/notebook/test_magics.py.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from tunnelnb.notebook.magics.run import ok_codes

SEED, DEVICES = 6, 6  # device-06 is offline with this seed; the others are healthy


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


def usage_error(ip: InteractiveShell, line: str) -> str:
    result = ip.run_cell(line)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    return str(result.error_in_exec)


# -- item 2: a failed connect leaves the working connection as it was ------------------


@pytest.mark.parametrize("kind", ["wrong token", "nothing listens"])
def test_a_failed_connect_keeps_the_connection_and_its_logins(ip, monkeypatch, kind):
    magics = ip._tunnelnb_magics
    fleet, where = magics.fleet, magics.where
    assert ip.run_cell("%tunnel login device-01").result.df.status[0] == "ok"
    session = fleet.session("device-01")
    assert session is not None
    monkeypatch.setenv("TNB_WRONG_TOKEN", "not-the-token")
    if kind == "wrong token":
        line = f"%tunnel connect {fleet.api.base_url} --project-id {fleet.api.project_id}"
        line += " --api-token-env TNB_WRONG_TOKEN"
    else:
        line = "%tunnel connect http://127.0.0.1:9 --api-token-env TNB_WRONG_TOKEN"
    message = usage_error(ip, line)
    assert message.endswith(f"; the connection to {where} is still open"), message
    assert "\n" not in message
    # Everything is as it was: the same fleet, its inventory, its logged-in shell.
    assert magics.fleet is fleet and magics.where == where
    assert len(ip.run_cell("%tunnel devices").result) == DEVICES
    assert fleet.session("device-01") is session
    status = ip.run_cell("%tunnel status").result.set_index("device_id")
    assert bool(status.loc["device-01", "logged_in"])
    assert ip.run_cell("%tunnel device-01 --no-stream -- echo still here").result.df.stdout[0] == "still here\n"


def test_a_failed_connect_without_a_connection_says_only_why(ip, monkeypatch):
    magics = ip._tunnelnb_magics
    saved = magics.fleet, magics.runner, magics.where
    magics.fleet = None  # as if nothing were connected (restored below, untouched)
    try:
        monkeypatch.setenv("TNB_WRONG_TOKEN", "x")
        message = usage_error(ip, "%tunnel connect http://127.0.0.1:9 --api-token-env TNB_WRONG_TOKEN")
        assert "still open" not in message and message.startswith("cannot reach the platform")
    finally:
        magics.fleet, magics.runner, magics.where = saved


# -- item 12: messages ------------------------------------------------------------------


def test_a_wrong_token_names_what_the_magic_takes(ip, monkeypatch):
    fleet = ip._tunnelnb_magics.fleet
    monkeypatch.setenv("TNB_WRONG_TOKEN", "not-the-token")
    message = usage_error(
        ip, f"%tunnel connect {fleet.api.base_url} --project-id {fleet.api.project_id} --api-token-env TNB_WRONG_TOKEN"
    )
    assert "check the API token in $TNB_WRONG_TOKEN (--api-token-env VAR" in message
    assert "--api-token " not in message and "--api-token)" not in message
    assert "TUNNELNB_API_TOKEN" not in message
    assert "not-the-token" not in message


def test_an_unreachable_url_says_why_in_plain_words(ip, monkeypatch):
    monkeypatch.setenv("TNB_WRONG_TOKEN", "x")
    message = usage_error(ip, "%tunnel connect http://127.0.0.1:9 --api-token-env TNB_WRONG_TOKEN")
    assert message.startswith("cannot reach the platform at http://127.0.0.1:9 (connection refused): check the URL")
    assert "ssl:" not in message and "Errno" not in message and "Connect call failed" not in message


def test_an_offline_device_is_said_once(ip):
    res = ip.run_cell("%tunnel device-06 --no-stream -- true").result
    assert res.df.status[0] == "offline"
    assert res.df.error[0] == "device device-06 is offline"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("%tunnel conect --embedded", "unknown subcommand 'conect': did you mean %tunnel connect --embedded?"),
        ("%tunnel devies", "did you mean %tunnel devices?"),
        ("%tunnel device-01 --timout 3 -- true", "unrecognized arguments: --timout 3; did you mean --timeout?"),
        ("%tunnel connect --embeded", "did you mean --embedded?"),
        ("%tunnel history --bogus", "unrecognized arguments: --bogus"),
        ("%tunnel device-01 uptime", "put -- before the command: %tunnel device-01 -- uptime"),
        ("%tunnel device-0[1-2] --timeout 5 df -h", "%tunnel device-0[1-2] --timeout 5 -- df -h"),
        ("%tunnel device-01", "no command: %tunnel device-01 -- COMMAND"),
        ("%%tunnel device-01 --concurency 3\ntrue", "did you mean --concurrency?"),
    ],
)
def test_near_misses_say_what_was_meant(ip, capsys, line, expected):
    message = usage_error(ip, line)
    assert expected in message, message
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err


def test_a_target_is_never_taken_for_a_mistyped_subcommand(ip):
    message = usage_error(ip, "%tunnel device-99 uptime")  # no such device: no "--" hint, no "devices?"
    assert "did you mean %tunnel devices" not in message and "unknown subcommand 'device-99'" in message


def test_subcommand_help_has_no_rest_marker(ip, capsys):
    assert ip.run_cell("%tunnel connect -h").success
    out = capsys.readouterr().out
    assert out.startswith("usage: %tunnel connect [-h]"), out[:80]
    assert "::" not in out
    assert "%tunnel? shows the help" in usage_error(ip, "%%tunnel -h\ntrue")


def test_counts_in_messages_are_plural_only_when_more_than_one(ip, capsys):
    ip.run_cell("%tunnel close device-01")
    assert "closed 1 session\n" in capsys.readouterr().out
    ip.run_cell("%tunnel close device-0[1-2]")
    assert "closed 2 sessions\n" in capsys.readouterr().out


# -- item 11: an interrupt is one line, and still an error -----------------------------


def test_an_interrupted_cell_ends_in_one_line(ip, capsys):
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C
    timer.start()
    try:
        result = ip.run_cell("%%tunnel device-0[3-5] -o cut\nsleep 30")
    finally:
        timer.cancel()
    error = result.error_in_exec
    assert isinstance(error, KeyboardInterrupt)  # the cell fails, so Run All stops
    assert error._render_traceback_() == ["interrupted: 3 rows cancelled"]
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    assert "interrupted: 3 rows cancelled" in printed.out + printed.err
    assert set(ip.user_ns["cut"].df.status) == {"cancelled"}


# -- --ok-codes --------------------------------------------------------------------------


def test_ok_codes_are_read_as_a_tuple_of_exit_codes():
    assert ok_codes("0,1") == (0, 1)
    assert ok_codes("0, 2,") == (0, 2)
    for bad in ("", "x", "0,256", "-1"):
        with pytest.raises(Exception, match="exit codes from 0 to 255"):
            ok_codes(bad)


def test_ok_codes_reach_fleet_run(ip, monkeypatch):
    fleet = ip._tunnelnb_magics.fleet
    seen: list[dict[str, Any]] = []
    real_run = fleet.run

    async def spy(command: str, targets: Any, **kwargs: Any) -> Any:
        seen.append(dict(kwargs))
        kwargs.pop("ok_codes", None)
        return await real_run(command, targets, **kwargs)

    monkeypatch.setattr(fleet, "run", spy)
    ip.run_cell("%tunnel device-01 --no-stream --ok-codes 0,1 -- true")
    ip.run_cell("%%tunnel device-01 --no-stream --ok-codes 1\ntrue")
    ip.run_cell("%tunnel device-01 --no-stream -- true")
    assert [s.get("ok_codes") for s in seen] == [(0, 1), (1,), None]
    assert "ok_codes" not in seen[2]  # not given: Fleet.run's own default
    assert "exit codes from 0 to 255" in usage_error(ip, "%tunnel device-01 --ok-codes 0,x -- true")


def test_ok_codes_make_an_exit_code_ok(ip):
    """Needs Fleet.run(ok_codes=...), which another change adds."""
    res = ip.run_cell("%tunnel device-01 --no-stream --ok-codes 0,1 -- '(exit 1)'").result
    assert res is not None, "Fleet.run does not take ok_codes yet"
    assert (res.df.status[0], res.df.exit_code[0]) == ("ok", 1)
    res = ip.run_cell("%%tunnel device-01 --no-stream --ok-codes 0,1\n(exit 2)").result
    assert res.df.status[0] == "error"

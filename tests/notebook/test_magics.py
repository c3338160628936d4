"""The %tunnel magics through a real InteractiveShell, on an embedded fleet (real platform, agents, shells).

Outside a kernel the magics run the fleet on a loop thread of their own
(:class:`tunnelnb.fleet.runner.ThreadLoopRunner`), as terminal IPython does.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from tunnelnb.fleet.results import Results

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


def run(ip: InteractiveShell, code: str):
    result = ip.run_cell(code)
    assert result.error_before_exec is None
    return result


def test_a_cell_runs_on_every_target_and_every_device_gets_a_row(ip, capsys):
    result = run(ip, "%%tunnel device-0[1-6] -o res\necho hello from $(hostname)\n")
    assert result.success
    res = result.result
    assert isinstance(res, Results) and ip.user_ns["res"] is res and ip.user_ns["_"] is res
    status = dict(zip(res.df.device_id, res.df.status, strict=True))
    assert status == {f"device-0{i}": "ok" for i in range(1, 6)} | {"device-06": "offline"}
    assert res.df.set_index("device_id").loc["device-03", "stdout"] == "hello from device-03\n"
    out = capsys.readouterr().out
    assert "device-02 │ hello from device-02" in out  # live output, labelled by device (no colour in a pipe)
    assert "device-06" in res.to_html() and "offline" in res.to_html()


def test_expansion_from_the_namespace_like_bang_lines(ip):
    ip.user_ns["threshold"] = 42
    res = run(ip, "%%tunnel device-01\necho {threshold * 2} $threshold $$HOME").result
    assert res.df.stdout[0].startswith("84 42 /")  # $$ is a literal $: the device's shell expanded $HOME
    # An unknown name leaves the script exactly as written (the shell's own $VAR).
    res = run(ip, "%%tunnel device-01\nX=shell-var; echo $X {threshold}").result
    assert res.df.stdout[0] == "shell-var {threshold}\n"
    res = run(ip, "%%tunnel device-01 --raw\necho {threshold}").result
    assert res.df.stdout[0] == "{threshold}\n"


def test_expansion_keeps_every_line_of_a_multi_line_cell(ip):
    ip.user_ns["threshold"] = 42
    res = run(ip, "%%tunnel device-01\necho a\necho $threshold {threshold + 1}\necho $$PWD | cut -c1\necho b").result
    assert res.df.stdout[0] == "a\n42 43\n/\nb\n"


def test_targets_from_a_python_list(ip):
    ip.user_ns["ids"] = ["device-01", "device-03"]
    res = run(ip, "%%tunnel $ids --no-stream\nhostname").result
    assert list(res.df.device_id) == ["device-01", "device-03"]
    assert list(res.df.stdout) == ["device-01\n", "device-03\n"]
    ip.user_ns["one"] = ("device-04",)
    assert list(run(ip, "%tunnel $one -- true").result.df.device_id) == ["device-04"]


def test_parse_regex_with_a_quoted_pattern_and_failed_devices(ip):
    table = run(ip, "%%tunnel device-0[1-2] --parse regex --pattern '(?P<n>\\d+) apples'\necho 5 apples").result
    assert list(table.n) == [5, 5]
    table = run(ip, "%%tunnel device-01 --parse kv --include-failed\necho a=1; (exit 2)").result
    assert list(table.a) == [1]
    # A failed device keeps its row, unparsed, with its status and error.
    failed = run(ip, "%%tunnel device-01 --parse kv\necho a=1; (exit 2)").result
    assert (list(failed.device_id), list(failed.status), list(failed.error)) == (
        ["device-01"],
        ["error"],
        ["exit status 2"],
    )
    assert "a" not in failed or failed.a.isna().all()


def test_parse_returns_the_long_table(ip):
    result = run(ip, "%%tunnel device-0[1-3] --parse kv -o raw\necho temp=40\necho model: X1")
    table = result.result
    assert isinstance(table, pd.DataFrame)
    assert list(table.device_id) == ["device-01", "device-02", "device-03"]
    assert list(table.temp) == [40, 40, 40]
    assert isinstance(ip.user_ns["raw"], Results)


def test_one_liner_and_targets_by_tag(ip):
    devices = ip.run_cell("%tunnel devices").result  # for people: device ids as the index, tags as text
    tags = {device_id: dict(kv.split("=", 1) for kv in text.split()) for device_id, text in devices.tags.items()}
    role = tags["device-01"]["role"]
    expected = sorted(d for d, t in tags.items() if t.get("role") == role)
    res = run(ip, f"%tunnel @role={role} --no-stream -- echo $((6*7))").result
    assert sorted(res.df.device_id) == expected
    assert set(res.ok.df.stdout) == {"42\n"}


def test_words_after_the_dashes_mean_what_they_mean_on_a_command_line(ip):
    """As with `tunnelnb run`: quotes group words, they are not part of the command."""
    res = run(ip, "%tunnel device-01 --no-stream -- '(exit 7)'").result
    assert (res.df.status[0], res.df.exit_code[0]) == ("error", 7)
    res = run(ip, "%tunnel device-01 --no-stream -- 'echo one; echo two'").result
    assert (res.df.status[0], res.df.stdout[0]) == ("ok", "one\ntwo\n")
    res = run(ip, '%tunnel device-01 --no-stream -- echo "a  b" | tr a A').result
    assert res.df.stdout[0] == "A b\n"
    with pytest.raises(UsageError, match="cannot read the command"):
        ip.run_line_magic("tunnel", "device-01 -- echo 'unbalanced")


def test_config_sets_the_default_timeout(ip):
    run(ip, "%config TunnelMagics.timeout = 1.5")
    try:
        res = run(ip, "%tunnel device-01 -- sleep 20").result
        assert res.df.status[0] == "timeout"
        assert "1.5 s" in res.df.error[0]
        assert run(ip, "%tunnel device-01 -- echo next").result.df.stdout[0] == "next\n"
    finally:
        run(ip, "%config TunnelMagics.timeout = 30")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%tunnel bogus", "unknown subcommand 'bogus'"),
        ("%tunnel devcie-01 -- true", "devcie-01"),
        ("%tunnel device-01 --", "no command after --"),
        ("%%tunnel device-01\n   \n", "the cell is empty"),
        ("%%tunnel\necho x", "no targets"),
        ("%tunnel shell device-01", "%tunnel shell needs a terminal or a notebook"),
        ("%tunnel login device-01 --password-env TUNNELNB_NOT_SET_ANYWHERE", "TUNNELNB_NOT_SET_ANYWHERE is not set"),
        ("%tunnel connect http://127.0.0.1:9 --embedded", "not both"),
        ("%tunnel history --bogus", "unrecognized arguments"),
    ],
)
def test_user_mistakes_are_one_line(ip, capsys, line, message):
    result = ip.run_cell(line)
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err


def test_login_history_status_and_close(ip, monkeypatch):
    assert run(ip, "%tunnel device-01 -- true").result.df.status[0] == "ok"  # logged in
    monkeypatch.setenv("TNB_TEST_PASSWORD", "definitely-wrong")
    res = run(ip, "%tunnel login device-01 --user ops --password-env TNB_TEST_PASSWORD").result
    assert res.df.status[0] == "auth_failed"
    assert "the previous login works and stays in use" in res.df.error[0]
    assert "definitely-wrong" not in res.to_html() + repr(res)
    # The simulated fleet's own login still works for the others.
    res = run(ip, "%tunnel login device-0[2-3]").result
    assert list(res.df.status) == ["ok", "ok"]
    history = run(ip, "%tunnel history").result
    assert "definitely-wrong" not in history.to_csv()
    assert list(run(ip, "%tunnel history --last 1").result.run.unique()) == [history.run.max()]
    status = run(ip, "%tunnel status").result
    assert set(status.columns) >= {"device_id", "online", "tunnel", "logged_in", "last_status"}
    assert not status.set_index("device_id").loc["device-06", "online"]
    run(ip, "%tunnel close device-02")
    assert ip.run_cell("%tunnel status").result.set_index("device_id").loc["device-02", "tunnel"] == "none"
    # device-01's refused new login did not break it: it kept the login that worked.
    res = run(ip, "%tunnel device-01 -- true").result
    assert res.df.status[0] == "ok"


def test_ctrl_c_cancels_the_cell_and_the_next_one_works(ip, capsys):
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C
    timer.start()
    try:
        result = ip.run_cell("%%tunnel device-0[3-5] -o interrupted\nsleep 30")
    finally:
        timer.cancel()
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert set(ip.user_ns["interrupted"].df.status) == {"cancelled"}
    res = run(ip, "%tunnel device-0[3-5] -- echo after").result
    assert set(res.df.stdout) == {"after\n"}


def test_help_describes_subcommands_and_options(ip):
    doc = ip.find_line_magic("tunnel").__doc__
    for word in ("connect --embedded", "login TARGETS", "shell DEVICE", "--timeout", "--parse", "-o VAR"):
        assert word in doc


def test_subcommand_help_prints_and_does_not_exit(ip, capsys):
    result = run(ip, "%tunnel connect -h")
    assert result.success
    assert "--embedded" in capsys.readouterr().out


def test_status_and_devices_read_as_text_in_terminal_ipython(ip):
    """Issue 15: no raw DataFrame (None, NaN, <NA>, 0.015496) in a terminal; other frames print as pandas does."""
    run(ip, "%tunnel device-01 -- true")
    for line, header in (("%tunnel status", "DEVICE"), ("%tunnel devices", "DEVICE")):
        table = ip.run_cell(line).result
        text = ip.display_formatter.format(table)[0]["text/plain"]
        assert text.splitlines()[0].split()[0] == header
        for noise in ("None", "NaN", "<NA>", "{'"):
            assert noise not in text, (line, noise)
    other = pd.DataFrame({"a": [1.5, None]})
    assert ip.display_formatter.format(other)[0]["text/plain"] == repr(other)


def test_live_output_has_no_colour_codes_outside_a_terminal(ip, capsys):
    """Issue 15: colour only on a terminal; pytest's captured stdout is not one."""
    capsys.readouterr()
    run(ip, "%tunnel device-0[1-2] -- echo plain")
    out = capsys.readouterr().out
    assert "│ plain" in out and "\x1b[" not in out


def test_close_all_then_not_connected(ip):
    shell = ip
    magics = shell._tunnelnb_magics
    fleet = magics.fleet
    assert fleet is not None
    # Reconnecting replaces the connection (the old one is closed once the new one works).
    assert shell.run_cell("%tunnel connect --embedded --devices 2 --seed 3").success
    assert magics.fleet is not fleet and len(magics.fleet.devices()) == 2
    assert shell.run_cell("%tunnel close --all").success
    result = shell.run_cell("%tunnel devices")
    assert isinstance(result.error_in_exec, UsageError) and "not connected" in str(result.error_in_exec)

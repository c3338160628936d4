"""Verified runs from the magics: ``%%tunnel --verify``, ``%tunnel … --verify -- …``, ``TunnelMagics.verify``.

Through a real InteractiveShell on an embedded fleet, as tests/notebook/test_magics.py.
A verified run keeps the bytes the command wrote (``\\r`` included), where a plain
run shows the terminal's text (``\\r\\n`` read as ``\\n``): that tells them apart.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

SEED, DEVICES = 6, 3

COMMAND = "printf 'a\\r\\nb\\n'; cd /tmp"


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
    assert result.success, result.error_in_exec
    return result.result


def test_the_cell_magics_verify_flag(ip, capsys):
    res = run(ip, f"%%tunnel device-01 device-02 --verify\n{COMMAND}\n")
    assert list(res.df.stdout) == ["a\r\nb\n", "a\r\nb\n"]
    assert list(res.df.status) == ["ok", "ok"]
    assert "│ a" not in capsys.readouterr().out  # nothing live during a verified run
    # The verified cd held, and a plain run reads the terminal's text.
    res = run(ip, "%%tunnel device-01\npwd; printf 'a\\r\\nb\\n'\n")
    assert res.df.stdout[0] == "/tmp\na\nb\n"
    assert "device-01 │ /tmp" in capsys.readouterr().out


def test_the_line_magics_verify_flag(ip):
    res = run(ip, f'%tunnel device-03 --verify -- "{COMMAND}"')
    assert res.df.stdout[0] == "a\r\nb\n"
    res = run(ip, f'%tunnel device-03 -- "{COMMAND}"')
    assert res.df.stdout[0] == "a\nb\n"


def test_the_verify_setting(ip):
    magics = ip._tunnelnb_magics
    assert magics.verify is False  # a traitlets Bool, off by default
    run(ip, "%config TunnelMagics.verify = True")
    try:
        assert magics.verify is True
        res = run(ip, f"%%tunnel device-02\n{COMMAND}\n")
        assert res.df.stdout[0] == "a\r\nb\n"
        res = run(ip, "%%tunnel device-02 --verify\nsh -c 'exit 7'\n")
        assert (res.df.status[0], res.df.exit_code[0], res.df.error[0]) == ("error", 7, "exit status 7")
    finally:
        run(ip, "%config TunnelMagics.verify = False")
    assert run(ip, f"%%tunnel device-02\n{COMMAND}\n").df.stdout[0] == "a\nb\n"

"""%tunnel connect URL against `tunnelnb platform` and `tunnelnb sim` in their own processes; secrets stay secret."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.conftest import platform_and_sim_processes

TOKEN = "magic-token-" + secrets.token_hex(8)
PASSWORD = "magic-pass-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def remote() -> Iterator[str]:
    with platform_and_sim_processes(TOKEN, PASSWORD) as url:
        yield url


def test_connect_to_a_url_login_from_env_and_nothing_secret_is_shown(remote, monkeypatch, capsys):
    monkeypatch.setenv("TNB_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("TNB_TEST_PASSWORD", PASSWORD)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "tunnelnb")
    try:
        cells = [
            f"%tunnel connect {remote} --api-token-env TNB_TEST_TOKEN",
            "%tunnel devices",
            "%tunnel login device-* --user ops --password-env TNB_TEST_PASSWORD",
            "%tunnel device-* -- echo remote-$((40+2))",
            "%tunnel history",
            "%tunnel status",
        ]
        values = []
        for cell in cells:
            result = ip.run_cell(cell, store_history=True)
            assert result.success, (cell, result.error_in_exec)
            values.append(result.result)
        printed = capsys.readouterr()
        assert "token ****" in printed.out
        assert set(values[3].df.stdout) == {"remote-42\n"}
        shown = (
            printed.out
            + printed.err
            + "".join(v.to_html() if hasattr(v, "to_html") else repr(v) for v in values if v is not None)
        )
        inputs = "\n".join(ip.history_manager.input_hist_raw)
        for secret in (TOKEN, PASSWORD):
            assert secret not in shown
            assert secret not in inputs
            assert secret not in values[4].to_csv()
    finally:
        ip.run_line_magic("unload_ext", "tunnelnb")


def test_a_missing_token_variable_cannot_prompt_without_a_terminal(remote, monkeypatch):
    monkeypatch.delenv("TUNNELNB_API_TOKEN", raising=False)
    monkeypatch.setattr("getpass.getpass", _no_terminal)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "tunnelnb")
    try:
        result = ip.run_cell(f"%tunnel connect {remote}")
        assert "environment variable" in str(result.error_in_exec)
    finally:
        ip.run_line_magic("unload_ext", "tunnelnb")


def _no_terminal(prompt: str = "") -> str:
    raise OSError("no terminal to read a password from")

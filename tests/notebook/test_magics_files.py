"""``%tunnel get`` and ``%tunnel put`` through a real InteractiveShell, on an embedded fleet.

The embedded fleet is a real platform, real agents and sandboxed shells; outside a
kernel the magics run it on a loop thread of their own, as terminal IPython does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tunnelnb.fleet.transfers import TransferResults

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


def cell(ip: InteractiveShell, code: str):
    result = ip.run_cell(code)
    assert result.error_before_exec is None
    return result


def test_put_then_get_round_trip(ip: InteractiveShell, tmp_path: Path) -> None:
    local = tmp_path / "app.conf"
    local.write_bytes(b"threshold=42\n\xff binary too\n")
    local.chmod(0o640)
    result = cell(ip, f"%tunnel put device-0[1-3] device-06 {local} /tmp/ --keep-mode -o sent")
    assert result.success, result.error_in_exec
    sent = ip.user_ns["sent"]
    assert isinstance(sent, TransferResults) and result.result is sent
    assert {r.device_id: r.status for r in sent} == {
        "device-01": "ok",
        "device-02": "ok",
        "device-03": "ok",
        "device-06": "offline",
    }
    assert {r.path for r in sent} == {"/tmp/app.conf"}
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert [r.sha256 for r in sent.ok] == [digest] * 3
    check = cell(ip, "%tunnel device-02 --no-stream -- stat -c %a /tmp/app.conf").result
    assert check.df.stdout[0] == "640\n"

    out = tmp_path / "got"
    result = cell(ip, f"%tunnel get device-0[1-2] /tmp/app.conf {out} -o got")
    assert result.success, result.error_in_exec
    got = ip.user_ns["got"]
    assert [(r.device_id, r.status, r.bytes) for r in got] == [("device-01", "ok", 26), ("device-02", "ok", 26)]
    assert (out / "device-01" / "app.conf").read_bytes() == local.read_bytes()
    # Again without --force: refused, and the files are kept; with it, replaced.
    (out / "device-01" / "app.conf").write_bytes(b"mine")
    got = cell(ip, f"%tunnel get device-01 /tmp/app.conf {out}").result
    assert [(r.status, r.error) for r in got] == [
        ("error", f"{out / 'device-01' / 'app.conf'} exists: pass overwrite=True (--force) to replace it")
    ]
    assert (out / "device-01" / "app.conf").read_bytes() == b"mine"
    got = cell(ip, f"%tunnel get device-01 /tmp/app.conf {out} --force --timeout 30").result
    assert [r.status for r in got] == ["ok"]
    assert (out / "device-01" / "app.conf").read_bytes() == local.read_bytes()
    assert "device-01" in got._repr_html_()


def test_mistakes_are_one_line(ip: InteractiveShell, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cell(ip, "%tunnel get device-01 /etc/hostname")  # no local directory
    assert not result.success
    assert "the following arguments are required: local_dir" in str(result.error_in_exec)
    result = cell(ip, f"%tunnel put device-01 {tmp_path / 'missing'} /tmp/x")
    assert not result.success
    assert str(result.error_in_exec) == f"cannot read {tmp_path / 'missing'}: No such file or directory"
    result = cell(ip, "%tunnel get nosuch-* /etc/hostname /tmp/x")
    assert not result.success
    assert "nosuch-*" in str(result.error_in_exec)
    result = cell(ip, "%tunnel get device-01 /etc/hostname /tmp/x --timeout 0")
    assert str(result.error_in_exec) == "--timeout must be positive"
    assert cell(ip, "%tunnel put -h").success
    assert "usage: %tunnel put" in capsys.readouterr().out

"""``%tunnel shell`` in terminal IPython: the local terminal becomes the device's, as ``tunnelnb shell`` makes it.

IPython runs on a real pseudo-terminal (pexpect), with an embedded platform and
simulated fleet; every wait is for a string, with a bound.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

from tunnelnb.cassette.asciicast import read_cast

WAIT_S = 60
IPYTHON = str(Path(sys.executable).with_name("ipython"))
DEVICE_PROMPT = r"[\w.-]+@device-01:[^\r\n]*\$ "


@pytest.fixture
def ipython(tmp_path: Path):
    env = {**os.environ, "TERM": "xterm", "TUNNELNB_URL": ""}
    child = pexpect.spawn(
        IPYTHON,
        ["--simple-prompt", "--no-banner", "--colors=NoColor", "--HistoryManager.enabled=False"],
        cwd=str(tmp_path),
        env=env,
        dimensions=(30, 120),
        timeout=WAIT_S,
        encoding="utf-8",
    )
    child.expect(r"In \[1\]: ")
    try:
        yield child
    finally:
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()


def test_shell_in_terminal_ipython_then_the_next_command_works(ipython: pexpect.spawn, tmp_path: Path) -> None:
    ipython.sendline("%load_ext tunnelnb")
    ipython.expect(r"In \[2\]: ")
    ipython.sendline("%tunnel connect --embedded --devices 2 --seed 1")
    ipython.expect(r"connected to .*: 2 devices")
    ipython.expect(r"In \[3\]: ")
    ipython.sendline("%tunnel shell device-01 --record session.cast")
    ipython.expect(DEVICE_PROMPT)
    ipython.send("echo hi from $TERM\r")
    ipython.expect(r"\r\nhi from xterm-256color\r\n")
    ipython.expect(DEVICE_PROMPT)
    ipython.send("sh -c 'echo nap-$((6*7)); exec sleep 30'\r")
    ipython.expect(r"\r\nnap-42\r\n")  # the sleep has started
    ipython.send("\x03")  # Ctrl-C goes to the device's sleep, not to IPython
    ipython.expect(r"\^C\r\n")
    ipython.expect(DEVICE_PROMPT)
    ipython.send("echo status $?\r")
    ipython.expect(r"\r\nstatus 130\r\n")  # the sleep died of SIGINT on the device
    ipython.send("\r~.")
    ipython.expect(r"detached from device-01")
    ipython.expect(r"In \[4\]: ")
    ipython.sendline("%tunnel device-01 -- echo after")
    ipython.expect(r"device-01\s+ok\s+0\s+\S+ s\s+after")
    ipython.expect(r"In \[5\]: ")
    header, events = read_cast(tmp_path / "session.cast")
    assert (header["version"], header["width"], header["height"]) == (2, 120, 30)
    recorded = "".join(text for _, kind, text in events if kind == "o")
    assert "hi from xterm-256color" in recorded

"""``tunnelnb shell`` in a real pseudo-terminal, against ``tunnelnb platform`` and ``tunnelnb sim`` processes.

The command runs on the slave side of a pty this test owns (so the terminal's
attributes can be read before, during and after), driven with pexpect from the
master side.  Every wait is for a string in the output, with a bound.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import re
import secrets
import struct
import subprocess
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect.fdpexpect
import pytest

from tests.conftest import TUNNELNB, platform_and_sim_processes
from tunnelnb.cassette.asciicast import read_cast
from tunnelnb.localterm import _LocalSession

TOKEN, PASSWORD = "shell-token-" + secrets.token_hex(6), "shell-pass-" + secrets.token_hex(6)
WAIT_S = 30
ROWS, COLS = 30, 100
PROMPT = r"[\w.-]+@device-0[12]:[^\r\n]*\$ "


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with platform_and_sim_processes(TOKEN, PASSWORD, devices=2) as base_url:
        yield base_url


@dataclass
class Shell:
    """``tunnelnb shell`` on a pty: ``term`` is pexpect on the master, ``slave`` stays open to read attributes."""

    proc: subprocess.Popen[bytes]
    term: pexpect.fdpexpect.fdspawn
    master: int
    slave: int
    seen: io.BytesIO

    def expect(self, pattern: str, timeout: float = WAIT_S) -> None:
        self.term.expect(pattern, timeout=timeout)

    def send(self, keys: str) -> None:
        self.term.send(keys.encode())

    def wait(self) -> int:
        return self.proc.wait(WAIT_S)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)
        os.close(self.slave)
        os.close(self.master)


def start_shell(url: str, *args: str, env: dict[str, str] | None = None) -> Shell:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))

    def controlling_terminal() -> None:  # as a login shell has it: Ctrl-C would be SIGINT without raw mode
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [TUNNELNB, "shell", "--platform", url, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TUNNELNB_API_TOKEN": TOKEN, "TUNNELNB_LOGIN_PASSWORD": PASSWORD, **(env or {})},
        preexec_fn=controlling_terminal,
    )
    term = pexpect.fdpexpect.fdspawn(master, timeout=WAIT_S)
    seen = io.BytesIO()
    term.logfile_read = seen
    return Shell(proc, term, master, slave, seen)


def test_a_session_like_ssh_and_its_recording_replayed(url: str, tmp_path: Path) -> None:
    cast = tmp_path / "session.cast"
    shell = start_shell(url, "--record", str(cast), "device-01")
    try:
        before = termios.tcgetattr(shell.slave)
        shell.expect(PROMPT)
        during = termios.tcgetattr(shell.slave)
        assert during[3] & (termios.ICANON | termios.ECHO | termios.ISIG) == 0  # raw: Ctrl-C is a byte
        assert before[3] & termios.ICANON

        shell.send("echo hi; stty size\r")
        shell.expect(rf"\r\nhi\r\n{ROWS} {COLS}\r\n")  # the local terminal's size, sent at the start
        shell.expect(PROMPT)

        name = f"/tmp/tnb-vi-{secrets.token_hex(4)}.txt"
        shell.send(f"vi {name}\r")
        shell.expect(re.escape(f'"{name}"'))  # vi's status line names the new file
        shell.send("itext typed in vi")
        shell.expect("text typed in vi")
        shell.send("\x1b:q!\r")
        shell.expect(PROMPT)
        shell.send(f"test -e {name} || echo not-saved\r")
        shell.expect(r"\r\nnot-saved\r\n")
        shell.expect(PROMPT)

        shell.send("top\r")
        shell.expect("load average")
        shell.send("q")
        shell.expect(PROMPT)

        shell.send("sh -c 'echo nap-$((6*7)); exec sleep 30'\r")
        shell.expect(r"\r\nnap-42\r\n")  # the sleep's process runs (a Ctrl-C before it would hit the shell)
        shell.send("\x03")  # to the device's sleep, not to tunnelnb
        shell.expect(PROMPT, timeout=10)  # well before the 30 s
        shell.send("echo still-here\r")
        shell.expect(r"\r\nstill-here\r\n")
        shell.expect(PROMPT)

        shell.send("\r")
        shell.expect(PROMPT)
        shell.send("~.")
        shell.expect(r"tunnelnb: detached from device-01\r\n")
        assert shell.wait() == 0
        assert termios.tcgetattr(shell.slave) == before
    finally:
        shell.close()

    header, events = read_cast(cast)
    assert {k: header[k] for k in ("version", "width", "height", "title", "env")} == {
        "version": 2,
        "width": COLS,
        "height": ROWS,
        "title": "tunnelnb shell device-01",
        "env": {"TERM": "xterm-256color"},
    }
    assert [code for _, code, _ in events] == ["o"] * len(events)
    assert [at for at, _, _ in events] == sorted(at for at, _, _ in events)
    recorded = "".join(text for _, _, text in events)
    # Everything the terminal showed was the session, then tunnelnb's last line (cooked again: \r\n).
    assert shell.seen.getvalue().decode("utf-8", "replace") == recorded + "tunnelnb: detached from device-01\r\n"
    assert "text typed in vi" in recorded and "load average" in recorded

    played = subprocess.run([TUNNELNB, "play", "--speed", "0", str(cast)], capture_output=True, timeout=WAIT_S)
    assert (played.returncode, played.stderr) == (0, b"")
    assert played.stdout == recorded.encode("utf-8")


def test_the_recording_masks_passwords_and_never_holds_keys(url: str, tmp_path: Path) -> None:
    cast = tmp_path / "secret.cast"
    typed = "typed-at-a-prompt-" + secrets.token_hex(4)
    shell = start_shell(url, "--record", str(cast), "device-01")
    try:
        shell.expect(PROMPT)
        shell.send(f"echo {PASSWORD} {TOKEN}\r")  # the terminal shows both: the recording must not
        shell.expect(rf"\r\n{PASSWORD} {TOKEN}\r\n")
        shell.expect(PROMPT)
        shell.send("stty -echo; printf 'Pass''word: '; read -r x; stty echo; echo; echo got ${#x} chars\r")
        shell.expect(r"\r\nPassword: ")  # the prompt itself, not the typed line's echo
        shell.send(typed + "\r")  # echo is off: the device shows nothing of it
        shell.expect(rf"got {len(typed)} chars\r\n")
        shell.expect(PROMPT)
        shell.send("exit\r")  # the shell ends: the terminal ends with it, as ssh does
        shell.expect(r"\[tunnelnb\] terminal ended: the shell on device-01 ended\r\n")
        shell.expect(r"tunnelnb: the shell on device-01 ended\r\n")
        assert shell.wait() == 0
    finally:
        shell.close()
    raw = cast.read_text("utf-8")
    assert PASSWORD not in raw and TOKEN not in raw and typed not in raw
    recorded = "".join(text for _, _, text in read_cast(cast)[1])
    assert "\r\n<password> <api-token>\r\n" in recorded
    assert typed not in shell.seen.getvalue().decode()  # nor did the screen show it
    assert os.stat(cast).st_mode & 0o777 == 0o600


def test_a_device_that_is_not_there_is_one_sentence_and_exit_1(url: str, tmp_path: Path) -> None:
    cast = tmp_path / "none.cast"
    shell = start_shell(url, "--record", str(cast), "device-99")
    try:
        shell.expect(r"tunnelnb: [^\r\n]*\r\n")
        assert shell.wait() == 1
        assert (
            shell.seen.getvalue()
            == b"tunnelnb: no device matches 'device-99' (did you mean device-01 or device-02?)\r\n"
        )
        assert termios.tcgetattr(shell.slave)[3] & termios.ICANON  # never left raw
    finally:
        shell.close()
    assert not cast.exists()


def test_a_refused_login_is_one_sentence_and_exit_1(url: str, tmp_path: Path) -> None:
    cast = tmp_path / "refused.cast"
    shell = start_shell(url, "--record", str(cast), "device-02", env={"TUNNELNB_LOGIN_PASSWORD": "wrong-password"})
    try:
        shell.expect(r"tunnelnb: [^\r\n]*\r\n")
        assert shell.wait() == 1
        assert re.fullmatch(
            rb"tunnelnb: no terminal to device-02: auth_failed: device-02: SSH login refused for user 'ops' on "
            rb"127\.0\.0\.1:\d+: wrong user name or password\r\n",
            shell.seen.getvalue(),
        )
    finally:
        shell.close()
    assert not cast.exists()  # no recording of nothing


def test_a_recording_that_cannot_be_written_is_one_sentence(url: str, tmp_path: Path) -> None:
    cast = tmp_path / "no-such-dir" / "x.cast"
    shell = start_shell(url, "--record", str(cast), "device-01")
    try:
        shell.expect(r"tunnelnb: [^\r\n]*\r\n")
        assert shell.wait() == 1
        assert shell.seen.getvalue().decode() == (
            f"tunnelnb: cannot write the recording {cast} (No such file or directory): give a path in a directory "
            "you can write to\r\n"
        )
    finally:
        shell.close()


def test_a_resize_is_noted_once_and_sigterm_gives_the_terminal_back(url: str) -> None:
    shell = start_shell(url, "device-02")
    try:
        before = termios.tcgetattr(shell.slave)
        shell.expect(PROMPT)
        for cols in (90, 80):  # the kernel sends SIGWINCH to the terminal's foreground group
            fcntl.ioctl(shell.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, cols, 0, 0))
            shell.send("echo resized-$((6*7))\r")
            shell.expect(r"\r\nresized-42\r\n")
        note = (
            "[tunnelnb] the local terminal was resized; the device's keeps its size, 100x30 "
            "(the tunnel cannot resize it)"
        )
        assert shell.seen.getvalue().decode().count(note) == 1
        shell.send("stty size\r")
        shell.expect(rf"\r\n{ROWS} {COLS}\r\n")
        shell.proc.terminate()
        shell.expect(r"tunnelnb: stopped by SIGTERM\r\n")
        assert shell.wait() == 1
        assert termios.tcgetattr(shell.slave) == before
    finally:
        shell.close()


def test_stdin_that_is_no_terminal_is_refused(url: str) -> None:
    done = subprocess.run(
        [TUNNELNB, "shell", "--platform", url, "device-01"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, "TUNNELNB_API_TOKEN": TOKEN, "TUNNELNB_LOGIN_PASSWORD": PASSWORD},
        timeout=WAIT_S,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        "tunnelnb: tunnelnb shell needs a terminal; use tunnelnb run for commands\n",
    )


@pytest.mark.parametrize(
    ("chunks", "sent", "detached"),
    [
        ([b"~."], b"", True),  # at the very start
        ([b"ls\r~."], b"ls\r", True),
        ([b"ls~.\r"], b"ls~.\r", False),  # not after Enter: typed as it is
        ([b"\r~~x"], b"\r~x", False),  # ~~ types one ~
        ([b"\r~x~."], b"\r~x~.", False),  # ~ and anything else: both
        ([b"a\r~", b".rest"], b"a\r", True),  # split across reads
        ([b"\n~\x03"], b"\n~\x03", False),
    ],
)
def test_escapes_are_sshs(chunks: list[bytes], sent: bytes, detached: bool) -> None:
    loop = asyncio.new_event_loop()
    session = _LocalSession(loop, 0, 1, "~")
    try:
        out = b""
        ended = False
        for chunk in chunks:
            typed, ended = session._escapes(chunk)
            out += typed
        assert (out, ended) == (sent, detached)
    finally:
        session.close()
        loop.close()


def test_escape_help_and_no_escapes() -> None:
    loop = asyncio.new_event_loop()
    read_end, write_end = os.pipe()
    session = _LocalSession(loop, 0, write_end, "%")
    off = _LocalSession(loop, 0, write_end, None)
    try:
        assert session._escapes(b"%?%.") == (b"", True)  # after the help, still at a line's start
        assert os.read(read_end, 4096) == b"\r\n[tunnelnb] escapes after Enter: %. detach, %% type %, %? this help\r\n"
        assert off._escapes(b"~.%.") == (b"~.%.", False)
    finally:
        session.close()
        off.close()
        loop.close()
        os.close(read_end)
        os.close(write_end)

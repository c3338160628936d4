"""Shell framing end to end on real shells (docs/architecture.md): the recipe against /bin/sh and /bin/bash on a PTY.

The test plays both ends of the tunnel in-process, without sockets:

* "device": a real interactive shell on a real pseudo-terminal; what it prints is read from
  the master side in chunks, decoded with ``surrogateescape`` (UTF-8 cut anywhere), split
  into ``command_response`` frames of at most 2,048 bytes (as the C SDK does) and sent
  through JSON;
* "client": ``setup_script()`` and ``command_script()`` typed as ``command`` frames, output
  cleaned by ``TerminalText`` and framed by ``CommandParser``.

Every read and write is non-blocking with a deadline, so a broken recipe fails, never hangs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import shutil
import signal
import subprocess
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tunnelnb.protocol.frames import Frame, Op, RequestIds, chunk_text, decode_frame, encode_frame
from tunnelnb.protocol.shell import (
    CommandParser,
    Output,
    TerminalText,
    command_script,
    new_marker_id,
    setup_script,
)

pytestmark = pytest.mark.timeout(60)

SHELLS = {
    "sh": ["/bin/sh", "-i"],  # dash on Debian
    "bash": ["/bin/bash", "--norc", "--noprofile", "-i"],
}
#: A canonical-mode terminal line holds at most 4,095 bytes.
TTY_LINE_LIMIT = 4095
#: The C SDK sends terminal output in chunks of at most 2,048 bytes.
DEVICE_CHUNK = 2048


def _make_controlling_tty() -> None:
    """Runs in the child after setsid(): the PTY becomes its controlling terminal, so ^C works."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # A login shell starts with default signal dispositions (sshd resets them); pytest may not
    # (started with `&` from a script it ignores SIGINT, which the shell and its jobs inherit).
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_DFL)


class PtyShell:
    """A real shell on a real PTY, spoken to through tunnel frames."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
                preexec_fn=_make_controlling_tty,
                close_fds=True,
            )
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.terminal = TerminalText()
        self.clean: list[str] = []  # cleaned text no parser has seen yet
        self.raw = bytearray()  # everything the terminal printed, for failure messages
        self.eof = False
        self.ids = RequestIds()
        self.tag = os.urandom(3).hex()
        self.seq = 0

    # -- device side: terminal output → command_response frames → client ----------------
    def _received(self, data: bytes) -> None:
        self.raw += data
        text = data.decode("utf-8", "surrogateescape")
        for frame in chunk_text(text, "dev-req", max_bytes=DEVICE_CHUNK):
            wire = encode_frame(frame).encode("utf-8")
            assert len(wire) <= DEVICE_CHUNK
            self.clean.append(self.terminal.feed(decode_frame(wire).data))

    def _read_available(self) -> None:
        while not self.eof:
            try:
                data = os.read(self.master, 4096)
            except BlockingIOError:
                return
            except OSError:  # EIO: the slave side is gone (the shell exited)
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self._received(data)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for output and take in all that is available."""
        if self.eof:
            return
        readable, _, _ = select.select([self.master], [], [], max(0.0, timeout))
        if readable:
            self._read_available()

    # -- client side: typed text → command frames → device writes it into the PTY -------
    def send(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for frame in chunk_text(text, self.ids.next(), op=Op.COMMAND):
            data = decode_frame(encode_frame(frame).encode("utf-8")).data.encode("utf-8", "surrogateescape")
            while data:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"could not type into the shell; it printed {bytes(self.raw[-500:])!r}")
                readable, writable, _ = select.select([self.master], [self.master], [], remaining)
                if readable:
                    self._read_available()  # keep the shell's output flowing while we type
                if writable:
                    try:
                        data = data[os.write(self.master, data[:4096]) :]
                    except BlockingIOError:
                        pass

    def start(self, mid: str, command: str) -> CommandParser:
        script = command_script(mid, command)
        for line in script.split("\n"):
            assert len(line.encode("utf-8", "surrogateescape")) < TTY_LINE_LIMIT
        parser = CommandParser(mid)
        self.send(script)
        return parser

    def collect(self, parser: CommandParser, timeout: float, out: list[str] | None = None) -> tuple[str, int | None]:
        """Feed the parser until its end marker or ``timeout``; (output, exit code or None)."""
        out = [] if out is None else out
        deadline = time.monotonic() + timeout
        while True:
            pending, self.clean = "".join(self.clean), []
            for event in parser.feed(pending):
                if isinstance(event, Output):
                    out.append(event.text)
            if parser.finished is not None:
                return "".join(out), parser.finished.exit_code
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                return "".join(out), None
            self.pump(min(remaining, 0.5))

    def next_id(self) -> str:
        self.seq += 1
        return new_marker_id(self.seq, self.tag)

    def run(self, command: str, timeout: float = 10.0) -> tuple[str, int | None]:
        return self.collect(self.start(self.next_id(), command), timeout)

    def foreground_command(self) -> str | None:
        """The command name of the terminal's foreground process group (Linux /proc)."""
        try:
            pgrp = os.tcgetpgrp(self.master)
            return Path(f"/proc/{pgrp}/comm").read_text().strip()
        except OSError:
            return None

    def close(self) -> None:
        os.close(self.master)  # hang up: SIGHUP to the shell and its foreground job
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@contextmanager
def spawn(name: str, home: Path) -> Iterator[PtyShell]:
    argv = SHELLS[name]
    if not os.access(argv[0], os.X_OK):
        pytest.skip(f"{argv[0]} is not installed")
    if shutil.which("base64") is None or shutil.which("stty") is None:
        pytest.skip("needs coreutils' base64 and stty")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TERM": "xterm",  # like an SSH session: bash then emits bracketed-paste escapes
        "LANG": "C.UTF-8",
    }
    shell = PtyShell(argv, env)
    try:
        shell.send(setup_script())
        yield shell
    finally:
        shell.close()


@pytest.fixture(params=list(SHELLS))
def shell(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PtyShell]:
    with spawn(request.param, tmp_path) as sh:
        yield sh


def explain(sh: PtyShell) -> str:
    return f"terminal printed (last 800 bytes): {bytes(sh.raw[-800:])!r}"


# ---------------------------------------------------------------------------


def test_exit_codes(shell: PtyShell) -> None:
    assert shell.run("true") == ("", 0), explain(shell)
    assert shell.run("false") == ("", 1), explain(shell)
    assert shell.run("(exit 3)") == ("", 3), explain(shell)
    assert shell.run("sh -c 'exit 255'") == ("", 255), explain(shell)
    assert shell.run("echo hello") == ("hello\n", 0), explain(shell)


def test_stderr_is_merged(shell: PtyShell) -> None:
    assert shell.run("echo out; echo err >&2; echo out2") == ("out\nerr\nout2\n", 0), explain(shell)


def test_multi_line_script(shell: PtyShell) -> None:
    script = 'if [ 1 -lt 2 ]; then\n  echo small\nfi\nfor i in 1 2 3; do\n  echo "n=$i"\ndone\n[ -z "" ]'
    assert shell.run(script) == ("small\nn=1\nn=2\nn=3\n", 0), explain(shell)


def test_shell_state_persists(shell: PtyShell) -> None:
    assert shell.run("cd /tmp") == ("", 0)
    assert shell.run("pwd") == ("/tmp\n", 0), explain(shell)
    assert shell.run("GREETING=hello") == ("", 0)
    assert shell.run('echo "$GREETING world"') == ("hello world\n", 0), explain(shell)
    assert shell.run('greet() { echo "hi $1"; }') == ("", 0)
    assert shell.run("greet ops") == ("hi ops\n", 0), explain(shell)


def test_output_without_trailing_newline(shell: PtyShell) -> None:
    assert shell.run("printf abc") == ("abc", 0), explain(shell)
    assert shell.run("printf 'x\\ny'") == ("x\ny", 0), explain(shell)


def test_20kb_single_line_command(shell: PtyShell) -> None:
    command = "echo " + "x" * 20_000
    assert "base64 -d" in command_script("m1", command)
    out, code = shell.run(command, timeout=20)
    assert code == 0, explain(shell)
    assert out == "x" * 20_000 + "\n"
    assert shell.run("echo next") == ("next\n", 0)  # nothing left over from the here-document


def test_command_with_tab(shell: PtyShell) -> None:
    command = "printf '%s\\n' 'a\tb'"
    assert "base64 -d" in command_script("m1", command)
    assert shell.run(command) == ("a\tb\n", 0), explain(shell)
    assert shell.run("x=$(printf '1\t2'); echo \"$x\"") == ("1\t2\n", 0), explain(shell)


def test_unicode_command_typed_verbatim(shell: PtyShell) -> None:
    command = "echo 'héllo wörld 日本 😀'"
    assert "base64" not in command_script("m1", command)  # non-ASCII is typed, not encoded
    assert shell.run(command) == ("héllo wörld 日本 😀\n", 0), explain(shell)


def test_command_reading_stdin_gets_dev_null(shell: PtyShell) -> None:
    assert shell.run("cat", timeout=10) == ("", 0), explain(shell)
    assert shell.run('read line; echo "[$line] $?"') == ("[] 1\n", 0), explain(shell)
    assert shell.run("echo after") == ("after\n", 0), explain(shell)


def test_one_megabyte_of_multibyte_utf8(shell: PtyShell, tmp_path: Path) -> None:
    line = "héllo wörld ✓ 日本語テキスト 😀𝄞 ünïcödé ÄÖÜß €\n"
    content = (line * (1_100_000 // len(line.encode()) + 1)).encode()
    assert len(content) > 1_000_000
    path = tmp_path / "big.txt"
    path.write_bytes(content)
    out, code = shell.run(f"cat '{path}'", timeout=30)
    assert code == 0, explain(shell)
    assert len(out.encode()) == len(content)
    assert hashlib.sha256(out.encode()).hexdigest() == hashlib.sha256(content).hexdigest()
    assert shell.run("echo done") == ("done\n", 0)


def test_generated_output_with_a_loop(shell: PtyShell) -> None:
    out, code = shell.run("i=0; while [ $i -lt 2000 ]; do printf 'ligne %d — ✓\\n' $i; i=$((i+1)); done", timeout=30)
    assert code == 0, explain(shell)
    assert out == "".join(f"ligne {i} — ✓\n" for i in range(2000))


def test_syntax_error_then_next_command_works(shell: PtyShell) -> None:
    out, code = shell.run("done")
    assert code is not None and code != 0, explain(shell)
    assert "done" in out
    assert shell.run("echo still alive") == ("still alive\n", 0), explain(shell)


def test_ctrl_c_interrupts_and_next_command_works(shell: PtyShell) -> None:
    started = time.monotonic()
    parser = shell.start(shell.next_id(), "sleep 30")
    out: list[str] = []
    deadline = time.monotonic() + 10
    while not parser.started and time.monotonic() < deadline:
        shell.collect(parser, 0.1, out)
    assert parser.started, explain(shell)
    # Interrupt only once `sleep` runs as the terminal's foreground job: a ^C that lands while the
    # shell is still forking is taken by the shell and acted on only after the job ends.
    while shell.foreground_command() != "sleep" and time.monotonic() < deadline:
        shell.collect(parser, 0.05, out)
    assert shell.foreground_command() == "sleep", explain(shell)
    shell.send(Frame.command("c", "\x03").data)
    # The shell answers the interrupt with a newline. The interrupt also flushes the typed-ahead
    # input, so the end marker of the interrupted command may never come: a client must not wait
    # for it.
    deadline = time.monotonic() + 5
    while not "".join(out) and parser.finished is None and time.monotonic() < deadline:
        shell.collect(parser, 0.2, out)
    assert parser.finished is None or parser.finished.exit_code != 0
    time.sleep(0.2)  # let the shell finish handling SIGINT before typing on
    assert shell.run("echo after") == ("after\n", 0), explain(shell)
    assert time.monotonic() - started < 15  # sleep 30 was interrupted
    assert shell.run("(exit 4)") == ("", 4)


def test_many_commands_in_one_session(shell: PtyShell) -> None:
    for i in range(30):
        assert shell.run(f"echo {i}; (exit {i % 7})") == (f"{i}\n", i % 7), explain(shell)


# ---------------------------------------------------------------------------
# Edge cases of the recipe on real shells (found by these tests, fixed in shell.py)


@pytest.mark.parametrize(
    "name",
    [
        "sh",
        "bash",
    ],
)
def test_exclamation_mark_in_command(name: str, tmp_path: Path) -> None:
    with spawn(name, tmp_path) as sh:
        assert sh.run("echo a!b") == ("a!b\n", 0), explain(sh)
        assert sh.run('x=1; echo "hi!x$x"') == ("hi!x1\n", 0), explain(sh)


def test_unterminated_quote_fails_fast_and_next_command_works(shell: PtyShell) -> None:
    _, code = shell.run("echo 'abc", timeout=2)
    assert code is not None and code != 0, explain(shell)
    assert shell.run("echo after", timeout=2) == ("after\n", 0), explain(shell)


@pytest.mark.parametrize("command", ["", "# only a comment", "   "])
def test_empty_or_comment_only_command(shell: PtyShell, command: str) -> None:
    assert shell.run(command) == ("", 0), explain(shell)

"""An interactive terminal on a device's shell (client/terminal.py), over a real agent, SSH server and /bin/sh.

Every wait is for an event (a prompt, a string in the output) with a bound, never a sleep.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.conftest import SSH_PASSWORD, SSH_USER, Devices
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.session import NOTE_NEW_SHELL, NOTE_SHELL_RESTARTED, DeviceSession
from tunnelnb.client.state import SessionState
from tunnelnb.errors import TerminalError
from tunnelnb.protocol.shell import interactive_script
from tunnelnb.server.sshserver import ShellServer

WAIT_S = 20


class Screen:
    """What the terminal printed, and a way to wait for something in it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.notes: list[str] = []
        self._changed = asyncio.Event()

    def output(self, data: bytes) -> None:
        self.data += data
        self._changed.set()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._changed.set()

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    async def wait_for(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` after byte ``start`` of the output; fails after WAIT_S."""
        async with asyncio.timeout(WAIT_S):
            while True:
                found = re.search(pattern, self.data[start:].decode("utf-8", "replace"))
                if found:
                    return found
                self._changed.clear()
                await self._changed.wait()

    async def wait_note(self, pattern: str) -> str:
        async with asyncio.timeout(WAIT_S):
            while True:
                for note in self.notes:
                    if re.search(pattern, note):
                        return note
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def session(api: PlatformAPI, devices: Devices, ssh_server: ShellServer):
    await devices.add("device-01", ssh_port=ssh_server.port)
    async with DeviceSession(api, "device-01") as s:
        await s.login(SSH_USER, SSH_PASSWORD, timeout=WAIT_S)
        yield s


PROMPT = r"[\w.-]+@[^:\r\n]+:[^\r\n]*\$ "


def test_the_interactive_script_is_posix_and_checks_its_input():
    assert interactive_script(24, 80, "vt100") == (
        "stty sane rows 24 cols 80 2>/dev/null; export TERM=vt100; "
        "PS1=\"$(id -un 2>/dev/null)@$(uname -n 2>/dev/null):\\$PWD\\$ \"; PS2='> '; unset PROMPT_COMMAND\n"
    )
    with pytest.raises(ValueError, match="not a terminal type: 'xterm; rm -rf /'"):
        interactive_script(term="xterm; rm -rf /")
    with pytest.raises(ValueError, match="not a terminal size: 0x30"):
        interactive_script(30, 0)


async def test_keys_go_raw_and_commands_wait_their_turn(session: DeviceSession):
    screen = Screen()
    terminal = await session.attach(screen.output, on_note=screen.note, rows=30, cols=128)
    assert session.state is SessionState.ATTACHED and session.attached
    await screen.wait_for(PROMPT)
    mark = len(screen.data)
    await terminal.send("echo $TERM $(stty size)\r")
    await screen.wait_for(r"xterm-256color 30 128\r\n", mark)
    assert "echo $TERM" in screen.data[mark:].decode()  # echo is on: the typed line comes back

    refused = await session.run("echo framed", timeout=5)
    assert (refused.status, refused.exit_code, refused.stdout) == ("skipped", None, "")
    assert refused.error == (
        "a terminal is attached to device-01 (%tunnel shell, tunnelnb shell): "
        "detach it (its Detach button, or ~. after Enter) and run again"
    )
    with pytest.raises(TerminalError, match="a terminal is already attached to device-01") as info:
        await session.attach(screen.output)
    assert info.value.status == "skipped"

    await terminal.detach()
    assert terminal.closed and terminal.end_reason == "detached" and screen.notes == []
    assert session.state is SessionState.READY
    after = await session.run("echo framed; echo $TERM", timeout=WAIT_S)
    assert (after.status, after.stdout, after.error) == ("ok", "framed\ndumb\n", "")
    with pytest.raises(TerminalError, match="the terminal to device-01 has ended: detached"):
        await terminal.send("x")


async def test_a_full_screen_program_left_open_and_ctrl_c(session: DeviceSession, tmp_path):
    screen = Screen()
    terminal = await session.attach(screen.output)
    await screen.wait_for(PROMPT)
    mark = len(screen.data)
    # The program prints before it sleeps: a Ctrl-C sent earlier could reach the shell while it starts the
    # program (before the program's process group has the terminal) and leave the sleep running.
    await terminal.send("sh -c 'echo nap-$((6*7)); exec sleep 30'\r")
    await screen.wait_for(r"\r\nnap-42\r\n", mark)
    await terminal.send("\x03")  # Ctrl-C goes to the program, not to tunnelnb
    await screen.wait_for(PROMPT, mark)
    mark = len(screen.data)
    await terminal.send("echo status $?\r")
    await screen.wait_for(r"\r\nstatus 130\r\n", mark)
    mark = len(screen.data)
    await terminal.send(f"vi {tmp_path}/notes.txt\r")
    await screen.wait_for(r"\[New", mark)  # vi has drawn its screen (its status line says "[New]")
    await terminal.send("ihello from vi")
    await screen.wait_for("hello from vi", mark)
    await terminal.detach()  # vi still open: the session gets the shell back by itself
    res = await session.run("echo back", timeout=WAIT_S)
    assert (res.status, res.stdout) == ("ok", "back\n")
    assert res.error in ("", NOTE_SHELL_RESTARTED)  # vi left with :q!, or a new shell


async def test_exit_ends_the_terminal_and_the_next_run_logs_in_again(session: DeviceSession):
    screen = Screen()
    terminal = await session.attach(screen.output, on_note=screen.note)
    await screen.wait_for(PROMPT)
    await terminal.send("exit\r")
    assert await asyncio.wait_for(terminal.wait_closed(), WAIT_S) == "the shell on device-01 ended"
    assert screen.notes == ["terminal ended: the shell on device-01 ended"]
    res = await session.run("echo again", timeout=WAIT_S)
    assert (res.status, res.stdout) == ("ok", "again\n")
    assert res.error == NOTE_NEW_SHELL


async def test_an_agent_that_stops_ends_the_terminal(session: DeviceSession, devices: Devices):
    """The agent closes the shell on its way out (disconnect 410): the terminal ends, as ssh does."""
    screen = Screen()
    terminal = await session.attach(screen.output, on_note=screen.note, timeout=WAIT_S)
    await screen.wait_for(PROMPT)
    await devices.agents[0].stop()
    assert await asyncio.wait_for(terminal.wait_closed(), WAIT_S) == "the shell on device-01 ended"


async def test_a_dropped_connection_reconnects_and_says_so(session: DeviceSession):
    """The application's TCP connection dies (no close frame): the session reconnects and the terminal goes on."""
    screen = Screen()
    terminal = await session.attach(screen.output, on_note=screen.note, timeout=WAIT_S)
    await screen.wait_for(PROMPT)
    assert session._sock is not None
    session._sock.ws._conn.transport.abort()  # type: ignore[attr-defined]  # aiohttp's connection, cut
    await screen.wait_note("the connection to device-01 was lost: reconnecting")
    await screen.wait_note(r"^reconnected to device-01: a new shell \(what ran before is gone\)$")
    assert session.state is SessionState.ATTACHED and not terminal.closed
    await screen.wait_for(PROMPT)
    mark = len(screen.data)
    await terminal.send("echo still here\r")
    await screen.wait_for(r"still here\r\n", mark)
    await terminal.detach()
    res = await session.run("echo done", timeout=WAIT_S)
    assert (res.status, res.stdout) == ("ok", "done\n")

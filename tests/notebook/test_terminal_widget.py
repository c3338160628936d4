"""The xterm.js terminal widget's Python side, without a browser: messages in, messages out, over a real fleet.

The front end's messages are handed to the widget's own handler (what ipywidgets
does with a comm message); what the widget sends is captured in place of its
comm.  The fleet is the embedded one: a real platform, agents and /bin/sh on PTYs.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

import tunnelnb
from tests.client.test_terminal import PROMPT
from tunnelnb.errors import CassetteError, TunnelnbError
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.notebook.widgets import Terminal, TerminalReplay
from tunnelnb.notebook.widgets import terminal as terminal_module

WAIT_S = 20

pytestmark = pytest.mark.skipif(
    not (terminal_module.STATIC / "terminal.js").is_file(), reason="the front end is not built: run `make js`"
)


class Browser:
    """Stands in for the front end: what the widget sent, and the messages a browser would send."""

    def __init__(self, widget: Terminal) -> None:
        self.widget = widget
        self.sent: list[tuple[dict[str, Any], list[bytes]]] = []
        self.seq = 0
        self._changed = asyncio.Event()
        widget.send = self._capture  # the comm, replaced
        widget.observe(lambda _: self._changed.set(), names=["phase", "status"])

    def _capture(self, content: dict[str, Any], buffers: list[bytes] | None = None) -> None:
        self.sent.append((content, list(buffers or [])))
        self._changed.set()

    def message(self, content: dict[str, Any]) -> None:
        self.widget._on_message(self.widget, content, [])

    def type(self, keys: str, seq: int | None = None) -> int:
        """Keys as xterm.js sends them: numbered from 1 by this page (``seq`` sends them out of turn)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.message({"type": "keys", "page": "page-1", "seq": seq, "data": keys})
        return seq

    def acks(self) -> list[int]:
        return [c["seq"] for c, _ in self.sent if c["type"] == "ack" and c["page"] == "page-1"]

    def outputs(self, *, replay: bool = False) -> list[tuple[int, bytes]]:
        return [(c["at"], b[0]) for c, b in self.sent if c["type"] == "output" and c["replay"] is replay]

    @property
    def screen(self) -> str:
        return b"".join(chunk for _, chunk in self.outputs()).decode("utf-8", "replace")

    async def wait(self, check: Any, what: str) -> Any:
        async with asyncio.timeout(WAIT_S):
            while not (found := check()):
                self._changed.clear()
                await self._changed.wait()
        assert found, what
        return found

    async def wait_for(self, pattern: str, start: int = 0) -> re.Match[str]:
        return await self.wait(lambda: re.search(pattern, self.screen[start:]), pattern)

    async def wait_phase(self, phase: str) -> None:
        await self.wait(lambda: self.widget.phase == phase, f"phase {phase}")


@pytest.fixture
async def fleet():
    f = await tunnelnb.connect(embedded=True, devices=2, seed=1)
    try:
        yield f
    finally:
        await f.close()


async def test_keys_go_to_the_device_are_acked_and_output_comes_back_in_order(fleet: Fleet, tmp_path: Path):
    cast = tmp_path / "session.cast"
    widget = Terminal(fleet, "device-01", record=cast, timeout=WAIT_S)
    browser = Browser(widget)
    try:
        assert (widget.phase, widget.status) == ("connecting", "connecting to device-01…")
        assert (widget.cols, widget.rows, widget.mode) == (128, 30, "live")
        browser.type("echo typed-while-connecting\r")  # waits for the terminal, then goes
        assert browser.acks() == []  # acked once typed into the device
        await browser.wait_phase("attached")
        assert widget.status == "attached to device-01 (128x30)"
        await browser.wait_for(r"typed-while-connecting\r\n" + PROMPT + r"$")  # typed ahead: not echoed
        assert browser.acks() == [1]
        mark = len(browser.screen)
        for key in "echo h\u00e9llo | tr a-z A-Z\r":  # one message per key, as xterm.js types them
            browser.type(key)
        await browser.wait_for(r"\r\nHéLLO\r\n", mark)
        assert browser.acks() == list(range(1, browser.seq + 1))

        # Messages handled out of turn (ipykernel 7 does that) are typed in the page's order all the same.
        mark, first = len(browser.screen), browser.seq + 1
        browser.seq += 3
        browser.type("\r", first + 2)
        browser.type("ho sw", first + 1)
        browser.type("ec", first)
        await browser.wait_for(r"\r\nsw\r\n", mark)
        assert browser.acks()[-1] == first + 2

        # The stream has no gap and no overlap; a front end that missed it all gets it again in one piece.
        chunks = browser.outputs()
        assert [at for at, _ in chunks] == [sum(len(c) for _, c in chunks[:i]) for i in range(len(chunks))]
        browser.message({"type": "sync", "have": 5})
        await browser.wait(lambda: browser.outputs(replay=True), "a replay")
        ((at, data),) = browser.outputs(replay=True)
        assert at == 5 and data == b"".join(c for _, c in chunks)[5:]

        browser.message({"type": "detach"})
        await browser.wait_phase("detached")
        assert widget.status == "detached: device-01's shell is back to %%tunnel cells"
        assert "[tunnelnb: detached from device-01: %%tunnel cells can use its shell again]" in browser.screen
        sent = len(browser.sent)
        seq = browser.type("echo ignored\r")
        await browser.wait(lambda: browser.sent[sent:], "the ack")
        assert browser.sent[sent:] == [({"type": "ack", "page": "page-1", "seq": seq}, [])]  # acked, nothing else
        res = await fleet.run("echo after", "device-01", timeout=WAIT_S)
        assert [(r.status, r.stdout) for r in res] == [("ok", "after\n")]
    finally:
        widget.close()

    header, *events = [json.loads(line) for line in cast.read_text().splitlines()]
    assert (header["version"], header["width"], header["height"]) == (2, 128, 30)
    assert header["title"] == "device-01 (tunnelnb)"
    recorded = "".join(text for _, kind, text in events if kind == "o")
    assert "\r\nHéLLO\r\n" in recorded and "[tunnelnb:" not in recorded  # the device's output only
    replay = TerminalReplay(cast)
    assert (replay.mode, replay.cols, replay.rows, replay.title) == ("replay", 128, 30, "device-01 (tunnelnb)")
    assert "".join(text for _, text in replay.events) == recorded
    assert [t for t, _ in replay.events] == sorted(t for t, _ in replay.events)
    replay.close()


async def test_a_dropped_connection_says_reconnecting_then_attached(fleet: Fleet):
    widget = Terminal(fleet, "device-01", timeout=WAIT_S)
    browser = Browser(widget)
    try:
        await browser.wait_phase("attached")
        await browser.wait_for(PROMPT + r"$")
        phases: list[str] = []
        widget.observe(lambda change: phases.append(change["new"]), names=["phase"])
        session = fleet.session("device-01")
        assert session is not None and session._sock is not None
        session._sock.ws._conn.transport.abort()  # type: ignore[attr-defined]  # aiohttp's connection, cut
        await browser.wait(lambda: phases[-2:] == ["reconnecting", "attached"], "reconnecting, then attached")
        assert widget.status == "reconnected to device-01: a new shell (what ran before is gone)"
        assert "[tunnelnb: the connection to device-01 was lost: reconnecting]" in browser.screen
        mark = len(browser.screen)
        await browser.wait_for(PROMPT + r"$", mark)
        browser.type("echo still here\r")
        await browser.wait_for(r"\r\nstill here\r\n", mark)
        browser.type("exit\r")
        await browser.wait_phase("ended")
        assert widget.status == "ended: the shell on device-01 ended"
    finally:
        widget.close()


async def test_a_terminal_that_cannot_attach_ends_with_why(fleet: Fleet):
    widget = Terminal(fleet, "device-99", timeout=WAIT_S)
    browser = Browser(widget)
    try:
        await browser.wait_phase("ended")
        assert widget.status.startswith("ended: no device matches 'device-99'"), widget.status
    finally:
        widget.close()


def test_a_missing_bundle_says_to_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(terminal_module, "STATIC", tmp_path)
    monkeypatch.setattr(terminal_module, "_bundle_cache", {})
    cast = tmp_path / "x.cast"
    cast.write_text('{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "hi"]\n')
    with pytest.raises(TunnelnbError, match=r"front end .*terminal\.js is not built: run `make` \(or `make js`\)"):
        TerminalReplay(cast)


def test_a_replay_of_what_is_not_a_recording_says_so(tmp_path: Path):
    bad = tmp_path / "bad.cast"
    bad.write_text('{"version": 1}\n')
    with pytest.raises(CassetteError, match=r"bad\.cast line 1: asciicast version 1 is not supported, only version 2$"):
        TerminalReplay(bad)
    good = tmp_path / "good.cast"
    good.write_text(
        '{"version": 2, "width": 80, "height": 24, "idle_time_limit": 1.5}\n[0.5, "o", "hi"]\n[0.7, "i", "x"]\n'
    )
    replay = TerminalReplay(good, speed=2)
    assert (replay.cols, replay.rows, replay.events, replay.speed, replay.idle_time_limit) == (
        80,
        24,
        [[0.5, "hi"]],
        2.0,
        1.5,
    )
    replay.close()


def test_a_fleet_on_a_loop_thread_types_and_shows_the_same():
    """``connect_sync``: the fleet's loop runs in a thread of its own; messages come from this one."""
    sync = tunnelnb.connect_sync(embedded=True, devices=2, seed=1)
    loop = sync.fleet.loop
    assert loop is not None
    widget = Terminal(sync.fleet, "device-01", loop=loop, timeout=WAIT_S)
    sent: list[tuple[dict[str, Any], list[bytes]]] = []
    changed = threading.Condition()

    def capture(content: dict[str, Any], buffers: list[bytes] | None = None) -> None:
        with changed:
            sent.append((content, list(buffers or [])))
            changed.notify_all()

    def screen() -> str:
        return b"".join(b[0] for c, b in list(sent) if c["type"] == "output").decode("utf-8", "replace")

    def wait(check: Any, what: str) -> None:
        with changed:
            assert changed.wait_for(check, WAIT_S), f"no {what} within {WAIT_S} s: {screen()!r}"

    widget.send = capture
    try:
        wait(lambda: re.search(PROMPT + "$", screen()), "prompt")
        assert widget.phase == "attached"
        for seq, key in enumerate("echo $((6*7))\r", 1):
            widget._on_message(widget, {"type": "keys", "page": "p", "seq": seq, "data": key}, [])
        wait(lambda: "\r\n42\r\n" in screen(), "42")
        wait(lambda: [c["seq"] for c, _ in sent if c["type"] == "ack"][-1:] == [14], "the last ack")
        widget.detach()
        wait(lambda: widget.phase == "detached", "detach")
        res = sync.run("echo free", "device-01", timeout=WAIT_S)
        assert [(r.status, r.stdout) for r in res] == [("ok", "free\n")]
    finally:
        widget.close()
        sync.close()

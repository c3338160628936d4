"""asciicast v2 recordings (cassette/asciicast.py): what is written, what is masked, what is read, how it plays."""

from __future__ import annotations

import io
import json
import math
import os
import stat
from pathlib import Path

import pytest

from tunnelnb.cassette.asciicast import CastWriter, play, read_cast
from tunnelnb.errors import CassetteError, TunnelnbError


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[object]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_header_and_events_are_exact_and_the_file_is_private(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.cast"
    with CastWriter(
        path, width=100, height=30, title="tunnelnb shell device-01", clock=clock, timestamp=1_790_000_000
    ) as w:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert lines(path) == [  # the header is on disk before any output
            {
                "version": 2,
                "width": 100,
                "height": 30,
                "timestamp": 1_790_000_000,
                "title": "tunnelnb shell device-01",
                "env": {"TERM": "xterm-256color"},
            }
        ]
        clock.now = 100.25
        w.output(b"ops@device-01:~$ ")
        clock.now = 101.5
        w.output(b"\x1b[1mbold\x1b[0m\r\n")
        assert len(lines(path)) == 3  # flushed event by event
    text = path.read_text("utf-8").splitlines()
    assert text[1:] == [
        '[0.250000, "o", "ops@device-01:~$ "]',
        '[1.500000, "o", "\\u001b[1mbold\\u001b[0m\\r\\n"]',
    ]
    header, events = read_cast(path)
    assert header["width"] == 100 and header["height"] == 30
    assert events == [(0.25, "o", "ops@device-01:~$ "), (1.5, "o", "\x1b[1mbold\x1b[0m\r\n")]


def test_an_existing_file_becomes_private_and_the_shell_goes_in_env(tmp_path: Path) -> None:
    path = tmp_path / "old.cast"
    path.write_text("something else\n")
    path.chmod(0o644)
    CastWriter(path, width=80, height=24, shell="/bin/sh", timestamp=5).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert lines(path) == [
        {"version": 2, "width": 80, "height": 24, "timestamp": 5, "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"}}
    ]


def test_a_character_split_across_outputs_stays_whole_and_bad_bytes_become_replacement(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "u.cast"
    euro = "€".encode()  # three bytes
    with CastWriter(path, width=80, height=24, clock=clock) as w:
        w.output(b"a" + euro[:1])
        clock.now = 101.0
        w.output(euro[1:2])
        clock.now = 102.0
        w.output(euro[2:] + b"b\xffc")
        w.output("é".encode()[:1])  # cut off by the end of the session
    _, events = read_cast(path)
    assert events == [(0.0, "o", "a"), (2.0, "o", "€b\ufffdc"), (2.0, "o", "\ufffd")]


def test_secrets_are_masked_also_when_split_across_outputs(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "m.cast"
    secrets = ["hunter2-pass", ("tok-XYZ", "<api-token>")]
    with CastWriter(path, width=80, height=24, clock=clock, secrets=secrets, title="run hunter2-pass") as w:
        w.output(b"echo hunter2-pass\r\nhunter2-pass\r\n")
        clock.now = 101.0
        w.output(b"say hunt")  # could be the start of the password: held back
        clock.now = 102.0
        w.output(b"er2-pa")
        clock.now = 103.0
        w.output(b"ss and tok-")
        clock.now = 104.0
        w.output(b"XYZ done hun")  # "hun" is held until the close shows it is no secret
    raw = path.read_text("utf-8")
    assert "hunter2" not in raw and "tok-XYZ" not in raw
    header, events = read_cast(path)
    assert header["title"] == "run <password>"
    assert events == [
        (0.0, "o", "echo <password>\r\n<password>\r\n"),
        (1.0, "o", "say "),
        (3.0, "o", "<password> and "),
        (4.0, "o", "<api-token> done "),
        (4.0, "o", "hun"),
    ]


def test_a_secret_split_inside_a_multibyte_character(tmp_path: Path) -> None:
    path = tmp_path / "mb.cast"
    secret = "pässwörd"
    data = f"[{secret}]".encode()
    with CastWriter(path, width=80, height=24, secrets=[secret]) as w:
        for i in range(len(data)):  # byte by byte
            w.output(data[i : i + 1])
    assert "".join(text for _, _, text in read_cast(path)[1]) == "[<password>]"


def test_the_writer_refuses_output_after_close(tmp_path: Path) -> None:
    w = CastWriter(tmp_path / "c.cast", width=80, height=24)
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="this recording is closed"):
        w.output(b"x")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "{p} is empty: an asciicast v2 recording starts with a header line"),
        ("not json\n", "{p} line 1 is not an asciicast v2 header: it is not JSON in UTF-8"),
        ("[1, 2]\n", "{p} line 1 is not an asciicast v2 header: want a JSON object"),
        (
            '{"version": 1, "width": 80, "height": 24, "stdout": []}\n',
            "{p} line 1: asciicast version 1 is not supported, only version 2",
        ),
        (
            '{"version": 2, "width": 0, "height": 24}\n',
            "{p} line 1: the header's width must be a positive integer, not 0",
        ),
        (
            '{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "a"]\n\n[1.0, "o"]\n',
            "{p} line 4 is not an asciicast v2 event: want [seconds, code, text]",
        ),
        (
            '{"version": 2, "width": 80, "height": 24}\n[-1, "o", "a"]\n',
            "{p} line 2 is not an asciicast v2 event: want [seconds, code, text]",
        ),
        (
            '{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "a"]\n[0.2, "o", "b\n',
            "{p} line 3 is not an asciicast v2 event: it is not JSON in UTF-8",
        ),
    ],
)
def test_files_that_are_not_asciicast_v2_say_which_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.cast"
    path.write_text(content)
    with pytest.raises(CassetteError) as info:
        read_cast(path)
    assert str(info.value) == message.format(p=path)
    assert isinstance(info.value, TunnelnbError)


def test_bytes_that_are_not_utf8_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.cast"
    path.write_bytes(b'{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "\xff"]\n')
    with pytest.raises(CassetteError, match=r"line 2 is not an asciicast v2 event: it is not JSON in UTF-8$"):
        read_cast(path)
    missing = tmp_path / "nope.cast"
    with pytest.raises(CassetteError) as info:
        read_cast(missing)
    assert str(info.value) == f"{missing}: no such file; give the path of an asciicast v2 recording (.cast)"


EVENTS = [(0.5, "o", "a"), (0.75, "i", "typed"), (1.5, "o", "b€"), (11.5, "o", "c"), (11.5, "o", "d"), (12.0, "m", "")]


def test_play_keeps_the_pace_divided_by_the_speed() -> None:
    sleeps: list[float] = []
    out = io.BytesIO()
    play(EVENTS, out, speed=2.0, sleep=sleeps.append)
    assert out.getvalue() == "ab€cd".encode()
    assert sleeps == [0.25, 0.5, 5.0]  # input and marker events are not shown; no zero-length sleep


def test_play_caps_idle_gaps() -> None:
    sleeps: list[float] = []
    play(EVENTS, io.BytesIO(), idle_limit=2.0, sleep=sleeps.append)
    assert sleeps == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("speed", [0.0, math.inf])
def test_play_without_waiting(speed: float) -> None:
    sleeps: list[float] = []
    out = io.BytesIO()
    play(EVENTS, out, speed=speed, sleep=sleeps.append)
    assert (out.getvalue(), sleeps) == ("ab€cd".encode(), [])


def test_play_reads_a_file_and_refuses_a_negative_speed(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "p.cast"
    with CastWriter(path, width=80, height=24, clock=clock) as w:
        clock.now = 100.5
        w.output(b"one ")
        clock.now = 101.0
        w.output(b"two")
    sleeps: list[float] = []
    out = io.BytesIO()
    play(path, out, sleep=sleeps.append)
    assert (out.getvalue(), sleeps) == (b"one two", [0.5, 0.5])
    with pytest.raises(ValueError, match="speed must be 0"):
        play(path, out, speed=-1)

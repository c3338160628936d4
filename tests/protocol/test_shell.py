"""Exhaustive tests of shell framing over a raw PTY stream (tunnelnb.protocol.shell; docs/architecture.md).

TerminalText (decode, normalise, strip escapes; incrementally), CommandParser (find a
command's output and exit code between its markers) and command_script / setup_script
(what gets typed into the device's shell). No sockets: the real-shell counterpart is
tests/server/test_shell_pty.py.
"""

from __future__ import annotations

import base64
import itertools
import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tunnelnb.protocol.frames import Frame, Op, chunk_text, decode_frame, encode_frame
from tunnelnb.protocol.shell import (
    MAX_TYPED_LINE,
    CommandParser,
    Finished,
    Output,
    TerminalText,
    command_script,
    new_marker_id,
    setup_script,
)

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

#: The canonical-mode line limit of a Linux terminal (N_TTY_BUF_SIZE - 1).
TTY_LINE_LIMIT = 4095

# Escape sequences a real terminal stream carries, all of which TerminalText strips.
ESCAPES = [
    "\x1b[0m",  # SGR reset
    "\x1b[m",
    "\x1b[1;31m",  # bold red
    "\x1b[38;5;208m",  # 256 colours
    "\x1b[38;2;10;20;30m",  # true colour
    "\x1b[2J",  # clear screen
    "\x1b[H",  # cursor home
    "\x1b[10;20H",  # cursor position
    "\x1b[3A",  # cursor up
    "\x1b[K",  # erase line
    "\x1b[?2004h",  # bracketed paste on (bash 5.1+)
    "\x1b[?2004l",
    "\x1b[?25l",  # hide cursor
    "\x1b[>4;1m",  # xterm modifyOtherKeys
    "\x1b[ q",  # CSI with an intermediate byte (cursor style)
    "\x1b]0;ops@device-01: ~\x07",  # OSC window title ended by BEL
    "\x1b]2;title\x1b\\",  # OSC ended by ST
    "\x1b]8;;http://example.com\x1b\\",  # OSC 8 hyperlink
    "\x1b(B",  # charset G0 = ASCII
    "\x1b)0",  # charset G1 = DEC graphics
    "\x1b=",  # keypad application mode
    "\x1b>",
    "\x1bM",  # reverse index
]


def feed_all(tt: TerminalText, chunks: list[str] | list[bytes]) -> str:
    return "".join(tt.feed(c) for c in chunks) + tt.flush()


def split_at(data, cuts):  # type: ignore[no-untyped-def]
    """``data`` cut at the sorted positions ``cuts``."""
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# ---------------------------------------------------------------------------
# TerminalText: line ends


def test_crlf_normalised() -> None:
    tt = TerminalText()
    assert tt.feed("a\r\nb\r\n") == "a\nb\n"


def test_crlf_across_chunk_boundary() -> None:
    tt = TerminalText()
    assert tt.feed("line one\r") == "line one"  # the \r is held back
    assert tt.feed("\nline two\r") == "\nline two"
    assert tt.feed(b"\n") == "\n"
    assert tt.flush() == ""


def test_crlf_across_boundary_bytes_one_at_a_time() -> None:
    data = b"a\r\nb\r\n\r\nc\r"
    tt = TerminalText()
    assert feed_all(tt, [data[i : i + 1] for i in range(len(data))]) == "a\nb\n\nc\r"


@pytest.mark.parametrize(
    "text",
    ["progress 10%\rprogress 20%\rdone\n", "\r", "a\rb", "a\r\rb", "x\r", "\rleading"],
)
def test_lone_cr_preserved(text: str) -> None:
    assert feed_all(TerminalText(), [text]) == text
    # and also when every character is its own chunk
    assert feed_all(TerminalText(), list(text)) == text


def test_cr_then_something_else_in_next_chunk() -> None:
    tt = TerminalText()
    assert tt.feed("50%\r") == "50%"
    assert tt.feed("60%") == "\r60%"


# ---------------------------------------------------------------------------
# TerminalText: escape sequences


@pytest.mark.parametrize("esc", ESCAPES, ids=repr)
def test_escape_stripped_whole(esc: str) -> None:
    assert feed_all(TerminalText(), [f"ab{esc}cd\r\n"]) == "abcd\n"


@pytest.mark.parametrize("esc", ESCAPES, ids=repr)
def test_escape_stripped_split_at_every_position(esc: str) -> None:
    text = f"ab{esc}cd{esc}\r\n"
    for cut in range(len(text) + 1):
        assert feed_all(TerminalText(), [text[:cut], text[cut:]]) == "abcd\n", cut
        assert feed_all(TerminalText(), [text[:cut].encode(), text[cut:].encode()]) == "abcd\n", cut
    assert feed_all(TerminalText(), list(text)) == "abcd\n"


def test_escape_held_until_complete() -> None:
    tt = TerminalText()
    assert tt.feed("red: \x1b[3") == "red: "
    assert tt.feed("1mRED\x1b[") == "RED"
    assert tt.feed("0m\n") == "\n"
    tt = TerminalText()
    assert tt.feed("\x1b]0;a long window ti") == ""
    assert tt.feed("tle\x1b") == ""
    assert tt.feed("\\$ ") == "$ "


def test_typical_prompt_and_ls_colour_output() -> None:
    stream = (
        "\x1b[?2004h\x1b]0;ops@dev: ~\x07\x1b[01;32mops@dev\x1b[00m:\x1b[01;34m~\x1b[00m$ ls\r\n"
        "\x1b[?2004l\r\x1b[0m\x1b[01;34mbin\x1b[0m  \x1b[01;32mrun.sh\x1b[0m\r\n"
    )
    expected = "ops@dev:~$ ls\n\rbin  run.sh\n"
    assert feed_all(TerminalText(), [stream]) == expected
    for cut in range(len(stream) + 1):
        assert feed_all(TerminalText(), [stream[:cut], stream[cut:]]) == expected


def test_strip_escapes_false_keeps_them() -> None:
    text = "\x1b[31mred\x1b[0m\r\n\x1b]0;t\x07x\x1b(B"
    expected = "\x1b[31mred\x1b[0m\n\x1b]0;t\x07x\x1b(B"
    assert feed_all(TerminalText(strip_escapes=False), [text]) == expected
    for cut in range(len(text) + 1):
        assert feed_all(TerminalText(strip_escapes=False), [text[:cut], text[cut:]]) == expected


def test_strip_escapes_false_does_not_hold_escapes() -> None:
    tt = TerminalText(strip_escapes=False)
    assert tt.feed("a\x1b[") == "a\x1b["


@pytest.mark.parametrize("esc", ["\x1b7", "\x1b8", "\x1bc"], ids=repr)
def test_fp_and_fs_escapes_stripped(esc: str) -> None:
    assert feed_all(TerminalText(), [f"a{esc}b"]) == "ab"


# ---------------------------------------------------------------------------
# TerminalText: UTF-8 across chunks

UTF8_SAMPLE = "héllo wörld ✓ 日本語 😀 𝄞 end\r\n"


def test_utf8_split_at_every_byte_position() -> None:
    data = UTF8_SAMPLE.encode()
    expected = UTF8_SAMPLE.replace("\r\n", "\n")
    for cut in range(len(data) + 1):
        assert feed_all(TerminalText(), [data[:cut], data[cut:]]) == expected, cut


def test_utf8_split_at_every_pair_of_byte_positions() -> None:
    data = "é😀日".encode()
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert feed_all(TerminalText(), [data[:i], data[i:j], data[j:]]) == "é😀日"


def test_utf8_bytes_one_at_a_time() -> None:
    data = UTF8_SAMPLE.encode()
    tt = TerminalText()
    out = [tt.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) + tt.flush() == UTF8_SAMPLE.replace("\r\n", "\n")
    assert all("\ufffd" not in piece for piece in out)


def test_utf8_split_as_surrogateescape_str_pieces() -> None:
    """A device decodes each read with surrogateescape; the pieces reassemble exactly."""
    data = UTF8_SAMPLE.encode()
    expected = UTF8_SAMPLE.replace("\r\n", "\n")
    for cut in range(len(data) + 1):
        pieces = [data[:cut].decode("utf-8", "surrogateescape"), data[cut:].decode("utf-8", "surrogateescape")]
        assert feed_all(TerminalText(), pieces) == expected, cut
    one_by_one = [data[i : i + 1].decode("utf-8", "surrogateescape") for i in range(len(data))]
    assert feed_all(TerminalText(), one_by_one) == expected


def test_utf8_surrogateescape_pieces_through_json_frames() -> None:
    data = UTF8_SAMPLE.encode() * 3
    for cut in range(0, len(data) + 1, 3):
        tt = TerminalText()
        out = []
        for piece in (data[:cut], data[cut:]):
            frame = Frame(Op.COMMAND_RESPONSE, "r", piece.decode("utf-8", "surrogateescape"))
            out.append(tt.feed(decode_frame(encode_frame(frame).encode("utf-8")).data))
        assert "".join(out) + tt.flush() == (UTF8_SAMPLE * 3).replace("\r\n", "\n")


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert feed_all(TerminalText(), [b"a\xffb"]) == "a\ufffdb"
    assert feed_all(TerminalText(), ["a\udcffb"]) == "a\ufffdb"


def test_other_lone_surrogates_do_not_crash() -> None:
    frame = decode_frame('{"operation_type":"command_response","request_id":"r","data":"ok \\ud83d"}')
    tt = TerminalText()
    out = tt.feed(frame.data) + tt.feed("\ude00 done") + tt.flush()
    assert out.startswith("ok ") and out.endswith(" done")


# ---------------------------------------------------------------------------
# TerminalText: flush


def test_flush_releases_held_text() -> None:
    tt = TerminalText()
    assert tt.feed("abc\r") == "abc"
    assert tt.flush() == "\r"
    assert tt.flush() == ""

    tt = TerminalText()
    assert tt.feed(b"x\xe6\x97") == "x"
    assert tt.flush() == "\ufffd"

    tt = TerminalText()
    assert tt.feed("y\x1b[3") == "y"
    assert tt.flush() == "\x1b[3"

    tt = TerminalText()
    assert tt.feed("\x1b") == ""
    assert tt.flush() == "\x1b"


def test_feed_after_flush_continues() -> None:
    tt = TerminalText()
    assert tt.feed("a\r") == "a"
    assert tt.flush() == "\r"
    assert tt.feed("\nb") == "\nb"  # the earlier \r was already released: nothing to join


# ---------------------------------------------------------------------------
# TerminalText: hypothesis — any terminal stream, any chunking

PLAIN = st.text(st.characters(blacklist_characters="\r\x1b", blacklist_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def terminal_streams(draw: st.DrawFn) -> tuple[str, str]:
    """(raw stream, the clean text TerminalText must make of it)."""
    raw, clean = [], []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["plain", "crlf", "cr", "esc"]))
        if kind == "plain":
            s = draw(PLAIN)
            raw.append(s)
            clean.append(s)
        elif kind == "crlf":
            raw.append("\r\n")
            clean.append("\n")
        elif kind == "cr":  # a lone \r followed by something other than \n
            s = "\r" + draw(PLAIN.filter(lambda t: not t.startswith("\n")))
            raw.append(s)
            clean.append(s)
        else:
            raw.append(draw(st.sampled_from(ESCAPES)))
    return "".join(raw), "".join(clean)


@SETTINGS
@given(terminal_streams(), st.lists(st.integers(0, 10_000), max_size=12), st.sampled_from(["str", "bytes", "se"]))
def test_terminal_text_any_chunking(stream: tuple[str, str], cuts: list[int], form: str) -> None:
    raw, clean = stream
    data = raw.encode() if form != "str" else raw
    pieces = split_at(data, [c % (len(data) + 1) for c in cuts])
    if form == "se":  # bytes cut anywhere, carried as surrogateescape'd str
        pieces = [p.decode("utf-8", "surrogateescape") for p in pieces]
    assert feed_all(TerminalText(), pieces) == clean


# ---------------------------------------------------------------------------
# CommandParser

MID = "s0x7"


def begin(mid: str = MID) -> str:
    return f"__TNB_B_{mid}__\n"


def end(code: int, mid: str = MID) -> str:
    return f"__TNB_E_{mid}_{code}__\n"


def parse(mid: str, pieces: list[str]) -> tuple[str, Finished | None, list[Output | Finished]]:
    parser = CommandParser(mid)
    events: list[Output | Finished] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    out = "".join(e.text for e in events if isinstance(e, Output))
    return out, parser.finished, events


def check_events(events: list[Output | Finished]) -> None:
    assert all(e.text for e in events if isinstance(e, Output)), "no empty Output events"
    fins = [e for e in events if isinstance(e, Finished)]
    assert len(fins) <= 1
    if fins:
        assert events[-1] is fins[0]


def test_simple_command() -> None:
    out, fin, events = parse(MID, [begin() + "hello\n" + end(0)])
    assert out == "hello\n" and fin == Finished(0)
    assert events == [Output("hello\n"), Finished(0)]


def test_no_output() -> None:
    out, fin, events = parse(MID, [begin() + end(1)])
    assert out == "" and fin == Finished(1) and events == [Finished(1)]


def test_output_without_trailing_newline() -> None:
    out, fin, _ = parse(MID, [begin() + "abc" + end(0)])
    assert (out, fin) == ("abc", Finished(0))
    text = begin() + "abc" + end(0)
    for cut in range(len(text) + 1):
        assert parse(MID, [text[:cut], text[cut:]])[:2] == ("abc", Finished(0))


@pytest.mark.parametrize("tail", ["", "\n", "abc", "abc\n"])
def test_end_marker_split_at_every_position(tail: str) -> None:
    text = begin() + "x" + tail + end(42)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 3):
            out, fin, events = parse(MID, [text[:i], text[i:j], text[j:]])
            assert (out, fin) == ("x" + tail, Finished(42)), (i, j)
            check_events(events)


def test_exit_codes_0_to_255() -> None:
    for code in range(256):
        out, fin, _ = parse(MID, ["junk\n" + begin() + "o\n" + end(code) + "later"])
        assert fin == Finished(code)
        assert out == "o\n"


def test_leading_junk_and_echo_ignored() -> None:
    script = command_script(MID, "echo hi")
    echo = "\r\n".join(script.split("\n"))  # how a terminal with echo on shows typed lines
    banner = "Welcome to device-01\r\nLast login: today\r\n$ "
    stream = banner + setup_script() + echo + begin() + "hi\n" + end(0)
    tt = TerminalText()
    out, fin, _ = parse(MID, [tt.feed(stream) + tt.flush()])
    assert (out, fin) == ("hi\n", Finished(0))


def test_echo_alone_never_starts_or_finishes() -> None:
    for command in ("echo hi", "printf '%s\\n' x", "a\tb", "x" * 5000, "", "if true; then\n echo y\nfi"):
        script = command_script(MID, command)
        for echo in (script, script.replace("\n", "\r\n")):
            parser = CommandParser(MID)
            tt = TerminalText()
            assert parser.feed(tt.feed(echo) + tt.flush()) == []
            assert not parser.started and parser.finished is None


def test_stale_command_markers_ignored() -> None:
    stale = "s0x6"
    stream = begin(stale) + "old output\n" + end(130, stale) + begin() + "new\n" + end(0)
    assert parse(MID, [stream])[:2] == ("new\n", Finished(0))
    # a stale end marker arriving late, after our begin, is just output to us
    stream = begin() + end(1, stale) + "new\n" + end(0)
    assert parse(MID, [stream])[:2] == (end(1, stale) + "new\n", Finished(0))


@pytest.mark.parametrize(("ours", "other"), [("a1", "a12"), ("a12", "a1"), ("x1", "X1"), ("ab1", "b1")])
def test_ids_that_share_a_prefix_do_not_collide(ours: str, other: str) -> None:
    stream = begin(other) + "no\n" + end(9, other) + begin(ours) + "yes\n" + end(0, other) + end(3, ours)
    assert parse(ours, [stream])[:2] == ("yes\n" + end(0, other), Finished(3))


def test_nothing_after_finished() -> None:
    parser = CommandParser(MID)
    assert parser.feed(begin() + "a\n" + end(0) + "after\n") == [Output("a\n"), Finished(0)]
    assert parser.feed("more\n" + begin() + "x\n" + end(5)) == []
    assert parser.finished == Finished(0)


def test_started_flag() -> None:
    parser = CommandParser(MID)
    assert parser.feed("junk __TNB_B_s0x7_") == []
    assert not parser.started
    assert parser.feed("_\nout") == [Output("out")]
    assert parser.started and parser.finished is None


def test_near_miss_markers_are_output() -> None:
    near = [
        "__TNB_E_s0x7_12__x\n",  # digits and __ but no newline
        "__TNB_E_s0x7___\n",  # no digits
        "__TNB_E_s0x7_-1__\n",  # sign
        "__TNB_E_s0x7_1_\n",
        "__TNB_E_s0x_0__\n",  # another id
        "__TNB_E_%s_%d__\\n s0x7 $?\n",  # the typed (echoed) end line
        "_" * 30,
    ]
    for text in near:
        for cut in range(len(text) + 1):
            stream = begin() + text + end(0)
            out, fin, events = parse(MID, split_at(stream, [len(begin()) + cut]))
            assert (out, fin) == (text, Finished(0)), (text, cut)
            check_events(events)


FRAGMENTS = [
    "__TNB_E_",
    f"__TNB_E_{MID}_",
    f"__TNB_E_{MID}",
    "__TNB_B_",
    f"__TNB_B_{MID}__",
    f"__TNB_B_{MID}__\n",
    "__TNB_E_%s_%d__\\n",
    "_",
    "__",
    "__\n",
    "\n",
    "7",
    "12",
    "s0x7",
]
MARKERISH = st.lists(
    st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=6), st.sampled_from(FRAGMENTS)),
    max_size=10,
).map("".join)
END_RE = re.compile(rf"__TNB_E_{MID}_(\d+)__\n")


@SETTINGS
@given(
    junk=MARKERISH,
    output=MARKERISH,
    code=st.integers(0, 255),
    trailing=MARKERISH,
    cuts=st.lists(st.integers(0, 100_000), max_size=15),
)
@example(junk="", output="abc", code=0, trailing="", cuts=[])
@example(junk=f"__TNB_B_{MID}_", output=f"__TNB_E_{MID}_1", code=7, trailing="", cuts=[30, 31])
def test_parser_any_output_any_chunking(junk: str, output: str, code: int, trailing: str, cuts: list[int]) -> None:
    script = command_script(MID, "some command")
    pre = junk + script
    assume(begin() not in pre and (pre + begin()).find(begin()) == len(pre))
    # "no markers": the first end marker after the begin marker is the real one
    m = END_RE.search(output + end(code))
    assert m is not None
    assume(m.start() == len(output))
    stream = pre + begin() + output + end(code) + trailing
    pieces = split_at(stream, [c % (len(stream) + 1) for c in cuts])
    out, fin, events = parse(MID, pieces)
    assert out == output
    assert fin == Finished(code)
    check_events(events)


@SETTINGS
@given(terminal_streams(), st.integers(0, 255), st.lists(st.integers(0, 100_000), max_size=12), st.booleans())
def test_device_to_parser_pipeline(stream: tuple[str, str], code: int, cuts: list[int], small: bool) -> None:
    """Raw PTY bytes → surrogateescape str → command_response frames → JSON → TerminalText → parser."""
    raw_out, clean_out = stream
    assume("__TNB_" not in clean_out)
    raw_stream = (
        "Last login\r\n$ "
        + command_script(MID, "cmd").replace("\n", "\r\n")
        + begin().replace("\n", "\r\n")
        + raw_out
        + end(code).replace("\n", "\r\n")
    ).encode()
    tt = TerminalText()
    parser = CommandParser(MID)
    events: list[Output | Finished] = []
    for piece in split_at(raw_stream, [c % (len(raw_stream) + 1) for c in cuts]):
        text = piece.decode("utf-8", "surrogateescape")
        for frame in chunk_text(text, "dev-1", max_bytes=120 if small else 2048):
            data = decode_frame(encode_frame(frame, pretty=small).encode("utf-8")).data
            events.extend(parser.feed(tt.feed(data)))
    events.extend(parser.feed(tt.flush()))
    check_events(events)
    assert "".join(e.text for e in events if isinstance(e, Output)) == clean_out
    assert parser.finished == Finished(code)


# ---------------------------------------------------------------------------
# command_script / setup_script / new_marker_id


@pytest.mark.parametrize("bad", ["", "a-b", "a b", "a_b", "a;rm -rf /", "a'b", "a\n", "$(x)", "a.b"])
def test_command_script_rejects_non_alnum_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="letters and digits"):
        command_script(bad, "true")


def test_new_marker_id_is_alnum_and_unique() -> None:
    ids = {new_marker_id(i, "ab12") for i in range(1000)}
    assert len(ids) == 1000
    assert all(i.isalnum() for i in ids)
    assert all(command_script(i, "true") for i in list(ids)[:5])


def test_setup_script() -> None:
    s = setup_script()
    assert s.endswith("\n") and s.count("\n") == 1
    assert "stty -echo" in s and "PS1=''" in s and "PS2=''" in s
    assert len(s.encode()) < TTY_LINE_LIMIT


def test_plain_command_layout_of_design_section_3() -> None:
    script = command_script("ab1", "uptime")
    assert script == (
        "printf '__TNB_B_%s__\\n' ab1\n{ eval 'uptime'\n} </dev/null\nprintf '__TNB_E_%s_%d__\\n' ab1 $?\n"
    )


COMMANDS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=200),
    st.text(st.sampled_from("abc xyz;|&$'\"\\\n\t\x03\x7f\x15é😀"), max_size=200),
    st.integers(0, 9000).map(lambda n: "echo " + "x" * n),
    st.lists(st.integers(0, 3000), max_size=5).map(lambda ns: "\n".join("y" * n for n in ns)),
)


def typed_lines(script: str) -> list[str]:
    assert script.endswith("\n")
    return script[:-1].split("\n")


@SETTINGS
@given(COMMANDS, st.sampled_from(["s0x1", "abcdef123x99999", "Z9"]))
@example("echo " + "x" * 100_000, "s0x1")
@example("x" * (MAX_TYPED_LINE - 1), "s0x1")
@example("x" * MAX_TYPED_LINE, "s0x1")
def test_command_script_properties(command: str, mid: str) -> None:
    assume("__TNB_" not in command)
    script = command_script(mid, command)
    lines = typed_lines(script)
    # every typed line fits a canonical-mode terminal line, with margin
    assert all(len(line.encode("utf-8", "surrogateescape")) < TTY_LINE_LIMIT for line in lines)
    assert all(len(line.encode("utf-8", "surrogateescape")) <= MAX_TYPED_LINE + 2 for line in lines)
    # control characters never reach the terminal (they are line-editing keys)
    assert not any((ord(c) < 32 and c != "\n") or c == "\x7f" for c in script)
    # the echo of the typed text never contains the markers
    assert begin(mid) not in script and f"__TNB_E_{mid}_" not in script
    assert begin(mid) not in script.replace("\n", "\r\n")
    # the command itself is there, verbatim or in base64
    if "base64 -d" in script:
        assert decode_heredoc(script, mid) == command.encode("utf-8", "surrogateescape")
    else:
        assert typed_verbatim(command, script)
    assert lines[0] == f"printf '__TNB_B_%s__\\n' {mid}"
    assert lines[-1] == f"printf '__TNB_E_%s_%d__\\n' {mid} $?"


def typed_verbatim(command: str, script: str) -> bool:
    """The command is in the script as typed text (as is, or single-quoted for eval)."""
    return command in script or command.replace("'", "'\\''") in script


def decode_heredoc(script: str, mid: str) -> bytes:
    m = re.search(rf"<<'__TNB_H_{mid}__'\n(.*?)\n__TNB_H_{mid}__\n", script, re.S)
    assert m, script
    body = m.group(1).split("\n")
    assert all(len(line) <= 76 for line in body)
    return base64.b64decode("".join(body), validate=True)


@pytest.mark.parametrize(
    "command",
    ["printf 'a\\tb'\tx", "echo a\tb", "echo \x03", "echo \x15x", "echo \x7f", "echo \x04", "echo \x1b[31m", "a\r\nb"],
    ids=repr,
)
def test_control_characters_use_base64_heredoc(command: str) -> None:
    script = command_script("m1", command)
    assert "eval \"$(base64 -d <<'__TNB_H_m1__'" in script
    assert decode_heredoc(script, "m1") == command.encode()
    assert command not in script


def test_long_line_uses_base64_heredoc() -> None:
    command = "echo " + "x" * 100_000
    script = command_script("m1", command)
    assert "base64 -d" in script
    assert max(len(line) for line in typed_lines(script)) < 200
    assert decode_heredoc(script, "m1") == command.encode()


def test_short_multiline_command_is_typed_verbatim() -> None:
    command = "if true; then\n  echo yes\nfi\nfor i in 1 2; do echo $i; done"
    script = command_script("m1", command)
    assert "base64" not in script
    assert typed_verbatim(command, script)


def test_stdin_is_dev_null() -> None:
    for command in ("cat", "x" * 5000):
        assert "} </dev/null\n" in command_script("m1", command)


def test_surrogateescaped_command_bytes_survive_base64() -> None:
    command = "echo " + b"\xff\xfe".decode("utf-8", "surrogateescape") + "\t"
    script = command_script("m1", command)
    assert decode_heredoc(script, "m1") == b"echo \xff\xfe\t"

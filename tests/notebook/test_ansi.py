"""TerminalScreen: terminal output to escaped HTML, fed in pieces."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelnb.notebook.ansi import DEFAULT_BACKGROUND, DEFAULT_FOREGROUND, PALETTE, TerminalScreen

ESC = "\x1b"


def screen_of(*chunks: str, **kwargs) -> TerminalScreen:
    screen = TerminalScreen(**kwargs)
    for chunk in chunks:
        screen.feed(chunk)
    return screen


def body(screen: TerminalScreen) -> str:
    """The HTML inside the <pre>."""
    m = re.fullmatch(r'<pre class="tunnelnb-terminal" style="[^"<>]*">(.*)</pre>', screen.to_html(), re.S)
    assert m, screen.to_html()
    return m.group(1)


def spans(screen: TerminalScreen) -> list[tuple[str, str]]:
    """(style, text) of every styled run."""
    return re.findall(r'<span style="([^"]*)">([^<]*)</span>', body(screen))


# -- plain text and control characters --------------------------------------------


def test_plain_text_and_newlines():
    s = screen_of("hello\nworld\n")
    assert s.text == "hello\nworld\n"
    assert len(s) == 3
    assert s.cursor == (2, 0)
    assert body(s) == "hello\nworld\n"


def test_empty_screen():
    s = TerminalScreen()
    assert s.text == ""
    assert body(s) == ""


def test_carriage_return_overwrites_like_a_progress_bar():
    s = screen_of("progress  10%\rprogress  55%\rprogress 100%\n")
    assert s.text == "progress 100%\n"


def test_carriage_return_overwrites_only_what_is_written():
    assert screen_of("abcdef\rXY").text == "XYcdef"


def test_carriage_return_then_erase_line():
    assert screen_of("downloading 40%\r", f"{ESC}[Kdone\n").text == "done\n"


def test_crlf_is_one_newline():
    s = screen_of("a\r\nb\r\n")
    assert s.text == "a\nb\n"


def test_crlf_split_across_feeds():
    assert screen_of("a\r", "\nb").text == "a\nb"
    assert screen_of("abc\r", "X").text == "Xbc"


def test_backspace():
    assert screen_of("abc\bX").text == "abX"
    assert screen_of("\b\bX").text == "X"
    assert screen_of("ab\b\b\b\bZ").text == "Zb"


def test_tab_goes_to_the_next_multiple_of_eight():
    assert screen_of("a\tb").text == "a" + " " * 7 + "b"
    assert screen_of("12345678\tX").text == "12345678" + " " * 8 + "X"
    assert screen_of("\tX").text == " " * 8 + "X"
    assert screen_of("1234567\tX").text == "1234567 X"


def test_other_control_characters_are_dropped():
    assert screen_of("a\x07b\x00c\x7fd\x0e\x0fe\x85f").text == "abcdef"


def test_unicode_passes_through():
    s = screen_of("温度 23 °C ✓\n")
    assert s.text == "温度 23 °C ✓\n"
    assert "温度 23 °C ✓" in body(s)


# -- escaping -------------------------------------------------------------------------


def test_everything_is_html_escaped():
    s = screen_of("<script>alert('x')</script> & \"q\" <img src=x onerror=alert(1)>\n")
    html = body(s)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;" in html
    assert s.text.startswith("<script>alert('x')</script>")


def test_escaped_inside_coloured_runs_too():
    s = screen_of(f"{ESC}[31m<b>bold?</b>{ESC}[0m")
    assert spans(s) == [(f"color:{PALETTE[1]}", "&lt;b&gt;bold?&lt;/b&gt;")]


def test_only_our_own_tags_come_out():
    nasty = f"{ESC}[31m</span><script>{ESC}]8;;javascript:alert(1){ESC}\\link{ESC}]8;;{ESC}\\</pre>\n"
    html = screen_of(nasty).to_html()
    tags = re.findall(r"<[^>]*>", html)
    assert all(
        re.fullmatch(r'<pre class="tunnelnb-terminal" style="[^"]*">|</pre>|<span style="[^"]*">|</span>', t)
        for t in tags
    ), tags
    assert html.count("<span") == html.count("</span>") == 1


def test_a_leading_empty_line_survives_html_parsing():
    # An HTML parser drops one newline right after <pre>.
    html = screen_of("\nx").to_html()
    assert re.search(r">\n\nx</pre>$", html)
    assert screen_of("x\n").to_html().endswith(">x\n</pre>")


def test_pre_has_the_class_and_terminal_colours():
    html = TerminalScreen().to_html()
    assert html.startswith('<pre class="tunnelnb-terminal" style="')
    assert f"background:{DEFAULT_BACKGROUND}" in html and f"color:{DEFAULT_FOREGROUND}" in html


# -- SGR ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(8))
def test_basic_colours(n):
    s = screen_of(f"{ESC}[3{n}mfg{ESC}[0m{ESC}[4{n}mbg{ESC}[0m{ESC}[9{n}mbright{ESC}[10{n}mboth")
    assert spans(s) == [
        (f"color:{PALETTE[n]}", "fg"),
        (f"background-color:{PALETTE[n]}", "bg"),
        (f"color:{PALETTE[n + 8]}", "bright"),
        (f"color:{PALETTE[n + 8]};background-color:{PALETTE[n + 8]}", "both"),
    ]


def test_attributes_on_and_off():
    s = screen_of(
        f"{ESC}[1mB{ESC}[22m{ESC}[2mD{ESC}[22m{ESC}[3mI{ESC}[23m{ESC}[4mU{ESC}[24m{ESC}[1;3;4mall{ESC}[22;23;24mnone"
    )
    assert spans(s) == [
        ("font-weight:bold", "B"),
        ("opacity:0.6", "D"),
        ("font-style:italic", "I"),
        ("text-decoration:underline", "U"),
        ("font-weight:bold;font-style:italic;text-decoration:underline", "all"),
    ]
    assert body(s).endswith("none")


def test_22_ends_both_bold_and_dim():
    s = screen_of(f"{ESC}[1;2mx{ESC}[22my")
    assert spans(s) == [("font-weight:bold;opacity:0.6", "x")]
    assert body(s).endswith("y")


def test_reset_forms():
    for reset in ("[0m", "[m", "[;m", "[00m"):
        s = screen_of(f"{ESC}[1;31;42ma{ESC}{reset}b")
        assert body(s).endswith("</span>b"), reset


def test_default_colours_39_49():
    s = screen_of(f"{ESC}[31;42mab{ESC}[39mcd{ESC}[49mef")
    assert spans(s) == [
        (f"color:{PALETTE[1]};background-color:{PALETTE[2]}", "ab"),
        (f"background-color:{PALETTE[2]}", "cd"),
    ]
    assert body(s).endswith("</span>ef")


@pytest.mark.parametrize(
    ("n", "colour"),
    [
        (1, PALETTE[1]),
        (9, PALETTE[9]),
        (16, "#000000"),
        (21, "#0000ff"),
        (196, "#ff0000"),
        (46, "#00ff00"),
        (208, "#ff8700"),
        (231, "#ffffff"),
        (232, "#080808"),
        (244, "#808080"),
        (255, "#eeeeee"),
    ],
)
def test_256_colours(n, colour):
    s = screen_of(f"{ESC}[38;5;{n}mf{ESC}[0m{ESC}[48;5;{n}mb")
    assert spans(s) == [(f"color:{colour}", "f"), (f"background-color:{colour}", "b")]


def test_24_bit_colours():
    s = screen_of(f"{ESC}[38;2;255;128;0mo{ESC}[48;2;1;2;3mx")
    assert spans(s) == [("color:#ff8000", "o"), ("color:#ff8000;background-color:#010203", "x")]


def test_colon_forms_of_extended_colours():
    s = screen_of(f"{ESC}[38:5:196ma{ESC}[38:2::0:255:0mb{ESC}[38:2:0:0:255mc{ESC}[4:0md")
    assert spans(s) == [("color:#ff0000", "a"), ("color:#00ff00", "b"), ("color:#0000ff", "cd")]


def test_extended_colour_then_more_attributes_in_one_sequence():
    s = screen_of(f"{ESC}[38;5;196;1;48;2;0;0;255;4mx")
    assert spans(s) == [("color:#ff0000;background-color:#0000ff;font-weight:bold;text-decoration:underline", "x")]


def test_malformed_extended_colours_are_ignored():
    for params in ("38;5;300", "38;2;1;2", "38;5", "38", "38;9;1", "48;2;256;0;0"):
        s = screen_of(f"{ESC}[{params}mx")
        assert s.text == "x", params
        assert "color" not in body(s), params


def test_unknown_sgr_codes_are_ignored():
    s = screen_of(f"{ESC}[5;6;8;53;73;31mx")
    assert spans(s) == [(f"color:{PALETTE[1]}", "x")]


def test_inverse_swaps_colours():
    s = screen_of(f"{ESC}[7mdefault{ESC}[31;7mred{ESC}[27mback")
    assert spans(s) == [
        (f"color:{DEFAULT_BACKGROUND};background-color:{DEFAULT_FOREGROUND}", "default"),
        (f"color:{DEFAULT_BACKGROUND};background-color:{PALETTE[1]}", "red"),
        (f"color:{PALETTE[1]}", "back"),
    ]


def test_same_style_runs_merge_and_style_survives_newlines():
    s = screen_of(f"{ESC}[32mab{ESC}[32mcd\nef{ESC}[0m")
    assert spans(s) == [(f"color:{PALETTE[2]}", "abcd"), (f"color:{PALETTE[2]}", "ef")]


def test_overwrite_keeps_the_new_style():
    s = screen_of(f"{ESC}[31mred red\r{ESC}[32mgreen")
    assert s.text == "greened"
    assert spans(s) == [(f"color:{PALETTE[2]}", "green"), (f"color:{PALETTE[1]}", "ed")]


# -- erasing and clearing ------------------------------------------------------------


def test_erase_in_line_variants():
    assert screen_of(f"abcdef\r\x1b[3C{ESC}[K").text == "abc"
    assert screen_of(f"abcdef\r\x1b[3C{ESC}[0K").text == "abc"
    assert screen_of(f"abcdef\r\x1b[3C{ESC}[1K").text == "    ef"
    assert screen_of(f"abcdef\r\x1b[3C{ESC}[2K").text == ""
    assert screen_of(f"abcdef\r\x1b[3C{ESC}[2Kx").text == "   x"  # the cursor stays


def test_clear_screen_sequences():
    for clear in (f"{ESC}[H{ESC}[2J", f"{ESC}[2J", f"{ESC}[H{ESC}[2J{ESC}[3J", f"{ESC}[3J", f"{ESC}c"):
        s = screen_of("old\nlines\n", clear, "new")
        assert s.text == "new", repr(clear)


def test_erase_below_and_above():
    s = screen_of("1111\n2222\n3333", f"{ESC}[2;3H{ESC}[J")
    assert s.text == "1111\n22"
    s = screen_of("1111\n2222\n3333", f"{ESC}[2;3H{ESC}[1J")
    assert s.text == "\n   2\n3333"


def test_cursor_home_repaints_like_top():
    s = screen_of(f"{ESC}[H{ESC}[2J", "load 1\nload 2\n", f"{ESC}[H", "LOAD 9\n")
    assert s.text == "LOAD 9\nload 2\n"


def test_cursor_addressing_uses_the_last_rows_lines():
    s = screen_of("a\nb\nc\nd\ne", f"{ESC}[1;1HX{ESC}[3;2HY", rows=3)
    assert s.text == "a\nb\nX\nd\neY"


def test_cursor_movement():
    assert screen_of(f"line1\nline2{ESC}[AX").text == "line1X\nline2"
    assert screen_of(f"a\nb\nc{ESC}[2A{ESC}[GZ").text == "Z\nb\nc"
    assert screen_of(f"a{ESC}[Bb").text == "a\n b"
    assert screen_of(f"abc{ESC}[2DX").text == "aXc"
    assert screen_of(f"a{ESC}[3Cb").text == "a   b"
    assert screen_of(f"abc{ESC}[2GX").text == "aXc"
    assert screen_of(f"x\ny{ESC}[FZ").text == "Z\ny"
    assert screen_of(f"x{ESC}[EZ").text == "x\nZ"


def test_multiline_progress_with_cursor_up():
    frames = ["", f"{ESC}[2A"] + [f"{ESC}[2A"] * 2
    s = TerminalScreen()
    for i, up in enumerate(frames):
        s.feed(f"{up}layer1: {i * 10}%{ESC}[K\nlayer2: {i * 20}%{ESC}[K\n")
    assert s.text == "layer1: 30%\nlayer2: 60%\n"


def test_save_and_restore_cursor():
    assert screen_of(f"ab{ESC}7cd\nef{ESC}8X").text == "abXd\nef"
    assert screen_of(f"ab{ESC}[scd{ESC}[uX").text == "abXd"
    assert screen_of(f"{ESC}8x").text == "x"  # nothing saved: nothing moves


def test_huge_cursor_moves_are_bounded():
    s = screen_of(f"{ESC}[999999999Cx{ESC}[999999999;999999999Hy{ESC}[999999999Bz", rows=5)
    assert len(s) <= 5
    assert max(len(line) for line in s.text.split("\n")) < 5000


# -- everything else is stripped -----------------------------------------------------


@pytest.mark.parametrize(
    "sequence",
    [
        f"{ESC}[?25l",  # hide cursor
        f"{ESC}[?2004h",  # bracketed paste
        f"{ESC}[6n",  # cursor position report
        f"{ESC}[1;24r",  # scroll region
        f"{ESC}[>4;2m",  # modifyOtherKeys (private, with an m)
        f"{ESC}[0 q",  # cursor shape (intermediate)
        f"{ESC}[2@",  # insert characters
        f"{ESC}[!p",  # soft reset
        f"{ESC}]0;window title\x07",  # OSC ended by BEL
        f"{ESC}]2;title{ESC}\\",  # OSC ended by ST
        f"{ESC}]8;;https://example.com{ESC}\\",  # hyperlink
        f"{ESC}]52;c;aGVsbG8=\x07",  # clipboard
        f"{ESC}]0;title\x9c",  # OSC ended by 8-bit ST
        f"{ESC}P1$r0m{ESC}\\",  # DCS
        f"{ESC}_apc{ESC}\\",  # APC
        f"{ESC}^pm{ESC}\\",  # PM
        f"{ESC}Xsos{ESC}\\",  # SOS
        f"{ESC}=",  # keypad
        f"{ESC}>",
        f"{ESC}M",  # reverse index
        f"{ESC}(B",  # charset
        f"{ESC})0",
        f"{ESC}#8",
        f"{ESC}%G",
        f"{ESC}[{'1;' * 100}31m",  # absurdly long parameters
    ],
)
def test_other_sequences_are_stripped(sequence):
    s = screen_of(f"a{sequence}b\n")
    assert s.text == "ab\n"
    assert body(s) == "ab\n"


def test_cancel_and_substitute_abort_a_sequence():
    assert screen_of(f"a{ESC}[31\x18b").text == "ab"
    assert screen_of(f"a{ESC}]0;t\x1ab").text == "ab"
    assert "color" not in body(screen_of(f"a{ESC}[31\x18b"))


def test_escape_inside_a_sequence_starts_a_new_one():
    s = screen_of(f"{ESC}[31{ESC}[32mX")
    assert spans(s) == [(f"color:{PALETTE[2]}", "X")]
    s = screen_of(f"{ESC}]0;unterminated{ESC}[32mX")
    assert spans(s) == [(f"color:{PALETTE[2]}", "X")]


def test_control_characters_inside_a_csi_act():
    s = screen_of(f"a{ESC}[3\n1mb")
    assert s.text == "a\nb"
    assert spans(s) == [(f"color:{PALETTE[1]}", "b")]


def test_escape_before_text_drops_only_the_escape():
    assert screen_of(f"a{ESC}éb").text == "aéb"
    assert screen_of(f"a{ESC}[é").text == "aé"


def test_unterminated_osc_swallows_but_does_not_grow():
    s = TerminalScreen()
    s.feed(f"before{ESC}]0;")
    for _ in range(100):
        s.feed("x" * 10_000)
    assert s.text == "before"
    s.feed("\x07after")
    assert s.text == "beforeafter"
    assert sum(len(p) for p in s._params) < 100


# -- split escapes ---------------------------------------------------------------------

SAMPLES = [
    f"plain {ESC}[1;31mred bold{ESC}[0m and {ESC}[38;5;208morange{ESC}[39m\r\nnext line\n",
    f"{ESC}]0;user@host: ~\x07$ {ESC}[01;34mdir{ESC}[0m  file\n{ESC}[?2004h",
    f"50%\r{ESC}[K100% {ESC}[48;2;10;20;30mbar{ESC}[49m\n{ESC}(B{ESC}[m<tag>&amp;\t|\n",
    f"{ESC}[H{ESC}[2Jtop{ESC}[K\n{ESC}]8;;http://x{ESC}\\link{ESC}]8;;{ESC}\\\n{ESC}[2;1Hrow2\b!{ESC}7{ESC}8",
    f"\x9b31m{ESC}P+q544e{ESC}\\ok{ESC}[38:2::1:2:3mrgb{ESC}[0m{ESC}=\n",
]


@pytest.mark.parametrize("sample", SAMPLES)
def test_split_anywhere_gives_the_same_screen(sample):
    whole = screen_of(sample)
    for cut in range(len(sample) + 1):
        split = screen_of(sample[:cut], sample[cut:])
        assert split.to_html() == whole.to_html(), (cut, sample[:cut])
        assert split.text == whole.text
        assert split.cursor == whole.cursor


@pytest.mark.parametrize("sample", SAMPLES)
def test_split_in_three_anywhere(sample):
    whole = screen_of(sample).to_html()
    n = len(sample)
    for a in range(0, n + 1, 3):
        for b in range(a, n + 1, 2):
            assert screen_of(sample[:a], sample[a:b], sample[b:]).to_html() == whole, (a, b)


@pytest.mark.parametrize("sample", SAMPLES)
def test_one_character_at_a_time(sample):
    assert screen_of(*sample).to_html() == screen_of(sample).to_html()


def test_no_escape_reaches_the_text():
    for sample in SAMPLES:
        s = screen_of(sample)
        assert "\x1b" not in s.text and "\x1b" not in s.to_html()
        assert "\x9b" not in s.text and "\x07" not in s.text


_pieces = st.sampled_from(
    ["a", "b", "\n", "\r", "\r\n", "\b", "\t", ESC, "[", "]", ";", "m", "3", "1", "5", "2", "8", "0", "K", "J",
     "H", "A", "?", "\x07", "\\", "<", "&", "é", " ", "\x9c", "(", "P", "38;5;1m", "\x1b[0m"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_pieces, max_size=60), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_random_streams_split_anywhere_render_the_same(pieces, cuts):
    stream = "".join(pieces)
    bounds = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True)]
    whole, split = screen_of(stream, rows=4), screen_of(*chunks, rows=4)
    assert split.to_html() == whole.to_html()
    html = whole.to_html()
    assert "\x1b" not in html
    assert not re.search(r"<(?!/?span\b|/?pre\b)", html)


# -- limits and housekeeping ---------------------------------------------------------


def test_keeps_at_most_max_lines():
    s = TerminalScreen()
    s.feed("".join(f"line {i}\n" for i in range(2500)))
    lines = s.text.split("\n")
    assert len(s) == 2000
    assert lines[0] == "line 501" and lines[-2] == "line 2499" and lines[-1] == ""
    assert s.cursor == (1999, 0)


def test_small_line_limit_and_writing_continues():
    s = screen_of("1\n2\n3\n4\n5", max_lines=3)
    assert s.text == "3\n4\n5"
    s.feed("\r55\n6")
    assert s.text == "4\n55\n6"


def test_saved_cursor_follows_dropped_lines():
    s = screen_of(f"a\nb{ESC}7\nc\nd{ESC}8X", max_lines=3)
    assert s.text == "bX\nc\nd"


def test_long_lines_wrap_at_max_line_chars():
    s = screen_of("x" * 25, max_line_chars=10)
    assert s.text == "x" * 10 + "\n" + "x" * 10 + "\n" + "x" * 5


def test_clear_keeps_colour_and_unfinished_sequence():
    s = screen_of(f"old{ESC}[31mred{ESC}[3")
    s.clear()
    assert s.text == "" and s.cursor == (0, 0)
    s.feed("2mgreen")
    assert spans(s) == [(f"color:{PALETTE[2]}", "green")]


def test_fresh_line():
    s = screen_of("output without newline")
    s.fresh_line()
    s.feed("$ next")
    assert s.text == "output without newline\n$ next"
    s = screen_of("done\n")
    s.fresh_line()
    s.feed("$ next")
    assert s.text == "done\n$ next"
    s = screen_of("50%\r")
    s.fresh_line()
    assert s.text == "50%\n"
    s = screen_of(f"a\nb\nc{ESC}[2A")  # cursor moved up: still after everything
    s.fresh_line()
    s.feed("$")
    assert s.text == "a\nb\nc\n$"
    s = screen_of(f"x{ESC}]0;never ended")
    s.fresh_line()
    s.feed("shown")
    assert s.text == "x\nshown"


def test_invalid_limits():
    with pytest.raises(ValueError):
        TerminalScreen(max_lines=0)
    with pytest.raises(ValueError):
        TerminalScreen(rows=0)


def test_incremental_html_cache_tracks_changes():
    s = screen_of("a\nb")
    first = s.to_html()
    s.feed(f"\r{ESC}[31mB")
    assert s.to_html() != first
    assert spans(s) == [(f"color:{PALETTE[1]}", "B")]
    assert body(s).startswith("a\n")

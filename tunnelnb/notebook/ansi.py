"""Terminal output to HTML, for the notebook terminal widget.

Device output carries what a shell on a PTY prints: colours, progress bars
redrawn with ``\\r``, ``clear``, cursor movement, window-title escapes.  A
notebook cannot show those as they are, and must never pass them to the
browser as markup (any device can print ``<script>``), so :class:`TerminalScreen`
interprets them into lines of styled cells and renders those as escaped HTML.

Pure: no I/O, no widgets; feed it text, read :meth:`TerminalScreen.to_html` or
:attr:`TerminalScreen.text`.  The screen has no fixed width (lines are as long as
the output, the browser wraps them) and keeps up to ``max_lines`` lines of
scrollback; cursor addressing (``ESC[H``…) works on the last ``rows`` lines, as
on a terminal of that height.

Colours and text attributes (SGR) are :mod:`tunnelnb.notebook.sgr`'s; the
palette is re-exported here.
"""

from __future__ import annotations

import html
import re

from .sgr import DEFAULT_BACKGROUND, DEFAULT_FOREGROUND, DEFAULT_STYLE, PALETTE, Style, apply_sgr, css

__all__ = ["DEFAULT_BACKGROUND", "DEFAULT_FOREGROUND", "PALETTE", "TerminalScreen"]


class _Line:
    """One line of cells, with its HTML cached until it changes."""

    __slots__ = ("_html", "chars", "styles")

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.styles: list[Style] = []
        self._html: str | None = None

    def __len__(self) -> int:
        return len(self.chars)

    def put(self, col: int, text: str, style: Style) -> None:
        """Write ``text`` from column ``col`` on, over what was there."""
        gap = col - len(self.chars)
        if gap > 0:
            self.chars.extend(" " * gap)
            self.styles.extend([DEFAULT_STYLE] * gap)
        end = col + len(text)
        self.chars[col:end] = text
        self.styles[col:end] = [style] * len(text)
        self._html = None

    def erase(self, start: int, end: int | None = None) -> None:
        """Blank columns ``start`` to ``end`` (exclusive; ``None``: to the end of the line)."""
        if end is None or end >= len(self.chars):
            del self.chars[start:], self.styles[start:]
        elif end > start:
            self.chars[start:end] = " " * (end - start)
            self.styles[start:end] = [DEFAULT_STYLE] * (end - start)
        self._html = None

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def html(self) -> str:
        if self._html is None:
            out = []
            chars, styles, n, start = self.chars, self.styles, len(self.chars), 0
            while start < n:
                style, end = styles[start], start + 1
                while end < n and styles[end] == style:
                    end += 1
                text = html.escape("".join(chars[start:end]))
                style_css = css(style)
                out.append(f'<span style="{style_css}">{text}</span>' if style_css else text)
                start = end
            self._html = "".join(out)
        return self._html


# Parser states.
_GROUND, _ESC, _ESC_INTERMEDIATE, _CSI, _STRING, _STRING_ESC = range(6)

# Text with nothing to interpret: no C0 or C1 control, no DEL.
_PLAIN = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")
_CSI_BODY = re.compile(r"[\x20-\x3f]*")
_STRING_END = re.compile(r"[\x07\x1b\x9c\x18\x1a]")
_MAX_PARAMS = 64  # longer parameter strings are not real sequences: ignored
_MAX_COLUMN = 4096  # cursor movement stops here (ESC[999999999C must not allocate a gigabyte)

_PRE_STYLE = (
    f"background:{DEFAULT_BACKGROUND};color:{DEFAULT_FOREGROUND};margin:0;padding:6px 8px;"
    "font-family:SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono',monospace;font-size:12px;line-height:1.35;"
    "white-space:pre-wrap;overflow-wrap:anywhere"
)


class TerminalScreen:
    """A terminal's output as lines of styled text, fed incrementally, rendered as safe HTML.

    Understands what command output uses: ``\\n`` (a new line: devices run with
    ``-onlcr``), ``\\r`` (overwrite the line: progress bars), ``\\b``, ``\\t``, SGR
    colours and attributes (16, 256 and 24-bit colours), erase in line and display
    (``ESC[K``, ``ESC[J``; ``ESC[2J``/``ESC[3J`` clear everything, like ``clear``),
    cursor movement and save/restore.  Every other escape sequence (CSI, OSC,
    DCS, two-byte escapes) is dropped, also when it is split across feeds.
    Lines longer than ``max_line_chars`` wrap, so output without newlines cannot
    grow one line without end.
    """

    def __init__(self, *, max_lines: int = 2000, rows: int = 30, max_line_chars: int = 10_000) -> None:
        if max_lines < 1 or rows < 1 or max_line_chars < 1:
            raise ValueError("max_lines, rows and max_line_chars must be at least 1")
        self.max_lines = max_lines
        self.rows = rows
        self.max_line_chars = max_line_chars
        self._state = _GROUND
        self._params: list[str] = []
        self._params_len = 0
        self._style = DEFAULT_STYLE
        self._saved: tuple[int, int, Style] | None = None
        self._lines: list[_Line] = [_Line()]
        self._row = 0
        self._col = 0

    def __repr__(self) -> str:
        return f"<TerminalScreen {len(self._lines)} lines, cursor {self._row},{self._col}>"

    # -- reading --------------------------------------------------------------

    @property
    def text(self) -> str:
        """The screen as plain text, lines joined by ``\\n``, no escapes."""
        return "\n".join(line.text for line in self._lines)

    @property
    def cursor(self) -> tuple[int, int]:
        """``(line, column)`` of the cursor, both from 0, the line counted in the lines kept."""
        return self._row, self._col

    def __len__(self) -> int:
        """Lines kept (at most ``max_lines``)."""
        return len(self._lines)

    def to_html(self) -> str:
        """``<pre class="tunnelnb-terminal">``: every character escaped, styled runs as ``<span style>``."""
        body = "\n".join(line.html() for line in self._lines)
        # An HTML parser drops a newline right after <pre>: keep a leading empty line.
        lead = "\n" if body.startswith("\n") else ""
        return f'<pre class="tunnelnb-terminal" style="{_PRE_STYLE}">{lead}{body}</pre>'

    # -- writing --------------------------------------------------------------

    def clear(self) -> None:
        """Forget every line; the colours in effect and an unfinished escape sequence carry on."""
        self._lines = [_Line()]
        self._row = self._col = 0
        self._saved = None

    def fresh_line(self) -> None:
        """Go to the start of an empty line after everything shown, for text from elsewhere (a prompt).

        Ends an unfinished escape sequence, so what follows is read afresh.
        """
        self._state = _GROUND
        self._row = len(self._lines) - 1
        if len(self._lines[self._row]):
            self._newline()
        self._col = 0

    def feed(self, text: str) -> None:
        """Interpret more output; an escape sequence cut at the end waits for the next feed."""
        i, n = 0, len(text)
        while i < n:
            state = self._state
            if state == _GROUND:
                m = _PLAIN.match(text, i)
                if m:
                    self._write(m.group())
                    i = m.end()
                else:
                    self._control(text[i])
                    i += 1
            elif state == _CSI:
                m = _CSI_BODY.match(text, i)
                assert m is not None  # the body pattern matches the empty string too
                if m.end() > i:
                    self._add_params(m.group())
                    i = m.end()
                    continue
                ch = text[i]
                i += 1
                if "\x40" <= ch <= "\x7e":
                    self._state = _GROUND
                    if self._params_len <= _MAX_PARAMS:
                        self._csi("".join(self._params), ch)
                elif ch == "\x1b":
                    self._state = _ESC
                elif ch in "\x18\x1a":  # CAN, SUB: cancel
                    self._state = _GROUND
                elif ch < " ":
                    self._control(ch)  # a C0 control inside a sequence acts at once
                elif ch != "\x7f":
                    self._state = _GROUND  # not a sequence after all: drop it, keep the text
                    i -= 1
            elif state == _ESC:
                ch = text[i]
                i += 1
                self._escape(ch)
                if self._state == _GROUND and ch > "\x7f":
                    i -= 1  # ESC before text: the ESC goes, the text stays
            elif state == _STRING:
                m = _STRING_END.search(text, i)
                if m is None:
                    i = n  # OSC and friends: titles, hyperlinks, clipboard… never shown
                else:
                    i = m.end()
                    self._state = _STRING_ESC if m.group() == "\x1b" else _GROUND
            elif state == _STRING_ESC:
                if text[i] == "\\":  # ST
                    self._state = _GROUND
                    i += 1
                else:
                    self._state = _ESC  # ESC ends the string and starts a new sequence
            else:  # _ESC_INTERMEDIATE: ESC ( B and the like
                ch = text[i]
                i += 1
                if "\x30" <= ch <= "\x7e":
                    self._state = _GROUND
                elif ch == "\x1b":
                    self._state = _ESC
                elif not ("\x20" <= ch <= "\x2f"):
                    self._state = _GROUND
                    if ch not in "\x18\x1a\x7f":
                        i -= 1

    def _add_params(self, chunk: str) -> None:
        self._params_len += len(chunk)
        if self._params_len <= _MAX_PARAMS:
            self._params.append(chunk)

    def _write(self, text: str) -> None:
        while text:
            room = self.max_line_chars - self._col
            if room <= 0:
                self._newline()
                continue
            part, text = text[:room], text[room:]
            self._lines[self._row].put(self._col, part, self._style)
            self._col += len(part)

    def _control(self, ch: str) -> None:
        if ch == "\n":
            self._newline()
        elif ch == "\r":
            self._col = 0
        elif ch == "\x1b":
            self._state = _ESC
        elif ch == "\b":
            self._col = max(0, self._col - 1)
        elif ch == "\t":
            self._col = min(self._col // 8 * 8 + 8, _MAX_COLUMN)
        # BEL, NUL, SO/SI, DEL, C1 controls…: nothing to show.

    def _newline(self) -> None:
        self._row += 1
        self._col = 0
        if self._row == len(self._lines):
            self._lines.append(_Line())
            self._trim()

    def _trim(self) -> None:
        excess = len(self._lines) - self.max_lines
        if excess > 0:
            del self._lines[:excess]
            self._row = max(0, self._row - excess)
            if self._saved is not None:
                row, col, style = self._saved
                self._saved = (max(0, row - excess), col, style)

    def _escape(self, ch: str) -> None:
        """The character after ESC."""
        if ch == "[":
            self._state = _CSI
            self._params, self._params_len = [], 0
        elif ch in "]PX^_":  # OSC, DCS, SOS, PM, APC: strings up to BEL or ST
            self._state = _STRING
        elif "\x20" <= ch <= "\x2f":
            self._state = _ESC_INTERMEDIATE
        elif ch == "\x1b":
            pass  # ESC ESC: the second one starts the sequence
        else:
            self._state = _GROUND
            if ch == "c":  # RIS: full reset
                self.clear()
                self._style = DEFAULT_STYLE
            elif ch == "7":
                self._save_cursor()
            elif ch == "8":
                self._restore_cursor()
            elif ch == "E":
                self._newline()
            elif ch < " " and ch not in "\x18\x1a":
                self._control(ch)
            # Anything else (ESC =, ESC >, ESC M, ESC \ …): ignored.

    def _save_cursor(self) -> None:
        self._saved = (self._row, self._col, self._style)

    def _restore_cursor(self) -> None:
        if self._saved is not None:
            row, self._col, self._style = self._saved
            self._move_to_row(row)

    # -- CSI ------------------------------------------------------------------

    def _csi(self, params: str, final: str) -> None:
        if params.strip("0123456789;:"):
            return  # private (ESC[?25l), intermediates (ESC[0 q): modes we do not have
        if final == "m":
            self._style = apply_sgr(self._style, params)
            return
        args = [int(p.split(":")[0]) if p.split(":")[0] else 0 for p in params.split(";")] if params else []

        def arg(index: int = 0, default: int = 1) -> int:
            value = args[index] if index < len(args) else 0
            return value or default

        if final == "K":
            mode = arg(0, 0)
            line = self._lines[self._row]
            if mode == 0:
                line.erase(self._col)
            elif mode == 1:
                line.erase(0, self._col + 1)
            elif mode == 2:
                line.erase(0)
        elif final == "J":
            self._erase_display(arg(0, 0))
        elif final == "A":
            self._move_to_row(max(self._top(), self._row - arg()))
        elif final in "Be":
            self._move_to_row(min(self._top() + self.rows - 1, self._row + arg()))
        elif final in "Ca":
            self._col = min(self._col + arg(), _MAX_COLUMN)
        elif final == "D":
            self._col = max(0, self._col - arg())
        elif final == "E":
            self._move_to_row(min(self._top() + self.rows - 1, self._row + arg()))
            self._col = 0
        elif final == "F":
            self._move_to_row(max(self._top(), self._row - arg()))
            self._col = 0
        elif final in "G`":
            self._col = min(arg() - 1, _MAX_COLUMN)
        elif final in "Hf":
            self._move_to_row(self._top() + min(arg(0), self.rows) - 1)
            self._col = min(arg(1) - 1, _MAX_COLUMN)
        elif final == "d":
            self._move_to_row(self._top() + min(arg(0), self.rows) - 1)
        elif final == "s" and not params:
            self._save_cursor()
        elif final == "u" and not params:
            self._restore_cursor()
        # Anything else (scroll regions, insert/delete, modes, reports): ignored.

    def _top(self) -> int:
        """The first line of the screen cursor addressing works on: the last ``rows`` lines."""
        return max(0, len(self._lines) - self.rows)

    def _move_to_row(self, row: int) -> None:
        row = max(0, row)
        while len(self._lines) <= row:
            self._lines.append(_Line())
        self._row = row
        self._trim()

    def _erase_display(self, mode: int) -> None:
        if mode == 0:
            self._lines[self._row].erase(self._col)
            del self._lines[self._row + 1 :]
        elif mode == 1:
            for line in self._lines[: self._row]:
                line.erase(0)
            self._lines[self._row].erase(0, self._col + 1)
        elif mode in (2, 3):
            # A notebook terminal has no separate screen and scrollback: clear means all of it.
            self.clear()

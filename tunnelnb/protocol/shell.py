"""Framing commands over a raw PTY stream, sans-I/O (docs/architecture.md, "Shell framing").

A device writes ``command`` data into an interactive shell like keystrokes and
streams back whatever the terminal prints: no exit status, no end of output,
``\\r\\n`` line ends, escape sequences, echo, UTF-8 split across chunks.  This
module makes commands out of that stream:

* :func:`setup_script` quietens the shell once per session;
* :func:`command_script` wraps a command between two markers carrying a fresh id
  (:func:`framed` around :func:`command_block`, both reused by :mod:`tunnelnb.protocol.verify`);
* :class:`TerminalText` turns raw chunks into clean text, incrementally;
* :class:`CommandParser` finds a command's output and exit code between its markers.

Nothing here touches a socket, so every edge case is a unit test.
"""

from __future__ import annotations

import base64
import codecs
import re
from dataclasses import dataclass

__all__ = [
    "MAX_STATUS_DIGITS",
    "MAX_TYPED_LINE",
    "PTY_COLS",
    "PTY_ROWS",
    "CommandParser",
    "Finished",
    "Output",
    "TerminalText",
    "bad_exit_status",
    "command_block",
    "command_script",
    "framed",
    "interactive_script",
    "new_marker_id",
    "setup_script",
    "strip_escapes",
]

#: A canonical-mode terminal takes at most 4,095 bytes per typed line; stay well below.
MAX_TYPED_LINE = 1000

_B64_LINE = 76


def setup_script() -> str:
    """Sent once after login: no echo, no prompts, no ``\\n`` → ``\\r\\n`` rewriting, a dumb terminal."""
    # bash would expand "!" in typed lines (history); turn that off where it exists.
    return "stty -echo -onlcr 2>/dev/null; PS1=''; PS2=''; export TERM=dumb; case $- in *H*) set +H;; esac\n"


#: The size of the PTY a device opens for the tunnel's SSH session.  tunnelnb's agent opens 128x30;
#: what the C SDK asks libssh for could not be read here (its tunnel sources were not in the
#: searchable index), so a terminal that needs another size says so with ``stty``.
PTY_COLS, PTY_ROWS = 128, 30


def interactive_script(rows: int = PTY_ROWS, cols: int = PTY_COLS, term: str = "xterm-256color") -> str:
    """Typed when a terminal attaches: echo, a prompt and a real ``TERM`` back, the terminal's size.

    :func:`setup_script` undoes it (the session re-syncs after a terminal).  Typed
    while echo is still off, so the user sees only the prompt.  ``stty rows/cols``
    sets the PTY's size as a terminal resize would (the protocol has none); the
    prompt is POSIX (``$PWD`` expanded at each prompt), not bash's ``\\w``.
    """
    if not re.fullmatch(r"[A-Za-z0-9._+-]{1,64}", term):
        raise ValueError(f"not a terminal type: {term!r}")
    if not (0 < rows < 10_000 and 0 < cols < 10_000):
        raise ValueError(f"not a terminal size: {cols}x{rows}")
    prompt = '"$(id -un 2>/dev/null)@$(uname -n 2>/dev/null):\\$PWD\\$ "'
    return (
        f"stty sane rows {rows} cols {cols} 2>/dev/null; export TERM={term}; "
        f"PS1={prompt}; PS2='> '; unset PROMPT_COMMAND\n"
    )


def new_marker_id(seq: int, session_tag: str) -> str:
    """A marker id: letters and digits only, unique within the session."""
    return f"{session_tag}x{seq}"


def _needs_encoding(command: str) -> bool:
    """Would the terminal's line discipline mangle ``command`` if typed as is?"""
    for line in command.split("\n"):
        if len(line.encode("utf-8", "surrogatepass")) >= MAX_TYPED_LINE:
            return True
    # Control characters are line-editing keys to a terminal (^C, ^U, ^W, DEL, tab completion…).
    return _CONTROL_KEYS.search(command) is not None


#: Every control character but the newline, and DEL (one regex search, not a Python loop per character).
_CONTROL_KEYS = re.compile("[\x00-\x09\x0b-\x1f\x7f]")


#: Room left on a typed line for what a script puts before the ``eval`` (``{ ``, ``{ { ``).
_LINE_PREFIX = 8


def command_block(marker_id: str, command: str) -> str:
    """``{ eval '…'`` + newline + ``} </dev/null``: ``command`` run in the current shell (no trailing newline).

    The command is ``eval``'d from a single-quoted string, so a syntax error
    stays inside it, and stdin comes from ``/dev/null``, so a command cannot
    swallow the lines typed after it.  A command with long lines or control
    characters is sent as a here-document of short base64 lines and ``eval``'d,
    so it still runs in the session's shell (``cd`` and variables persist).
    Every line stays under :data:`MAX_TYPED_LINE`, even with a few characters
    put before the block on its first line.
    """
    if not marker_id.isalnum():
        raise ValueError("marker id must be letters and digits")
    # Single-quoted for eval: an unbalanced quote, a trailing backslash or an empty
    # command fails inside eval instead of swallowing the lines typed after it.
    quoted = "eval '" + command.replace("'", "'\\''") + "'"
    if _needs_encoding(" " * _LINE_PREFIX + quoted):
        encoded = base64.b64encode(command.encode("utf-8", "surrogateescape")).decode("ascii")
        lines = [encoded[i : i + _B64_LINE] for i in range(0, len(encoded), _B64_LINE)]
        heredoc = f"__TNB_H_{marker_id}__"
        body = "eval \"$(base64 -d <<'" + heredoc + "'\n" + "\n".join(lines) + "\n" + heredoc + '\n)"'
    else:
        body = quoted
    return f"{{ {body}\n}} </dev/null"


def framed(marker_id: str, body: str, status: str = "$?") -> str:
    """``body`` (whole lines) between the printed begin and end markers; the end marker carries ``status``.

    The typed text contains ``%s``, so an echo of it never matches the printed markers.
    """
    if not marker_id.isalnum():
        raise ValueError("marker id must be letters and digits")
    return f"printf '__TNB_B_%s__\\n' {marker_id}\n{body}printf '__TNB_E_%s_%d__\\n' {marker_id} {status}\n"


def command_script(marker_id: str, command: str) -> str:
    """The text to type so the shell prints ``command``'s output between markers.

    :func:`command_block` between the markers of :func:`framed`; the end
    marker carries the command's exit status.
    """
    return framed(marker_id, command_block(marker_id, command) + "\n")


# Terminal escape sequences: CSI, OSC (ended by BEL or ST), and two-byte escapes.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]{0,512}(?:\x07|\x1b\\)|[()*+][0-9A-Za-z]|[0-Z\\^-~])")
# An escape that may still be incomplete at the end of a chunk.
_PARTIAL_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]{0,512}\x1b?|[()*+])?\Z")


def strip_escapes(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves, titles)."""
    return _ESCAPE.sub("", text) if "\x1b" in text else text


_SURROGATE = re.compile("[\ud800-\udfff]")
_PAIR = re.compile("([\ud800-\udbff])([\udc00-\udfff])")
_NOT_BYTE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


class TerminalText:
    """Raw terminal chunks in, clean text out, incrementally.

    Decodes UTF-8 across chunk boundaries (bytes a device could not decode may
    arrive as ``surrogateescape`` surrogates and are reassembled here), turns
    ``\\r\\n`` into ``\\n`` and drops terminal escape sequences.  Holds back only
    what the next chunk could change: part of a character, a trailing ``\\r``,
    an unfinished escape sequence.
    """

    def __init__(self, *, strip_escapes: bool = True) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._high = ""  # a high surrogate waiting for its pair
        self._strip = strip_escapes

    def feed(self, chunk: str | bytes) -> str:
        raw = chunk if isinstance(chunk, bytes) else self._to_bytes(chunk)
        return self._clean(self._pending + self._decoder.decode(raw), final=False)

    def _to_bytes(self, chunk: str) -> bytes:
        """Text from a frame as the device's bytes.

        ``\\udc80`` to ``\\udcff`` are bytes carried with ``surrogateescape``; a UTF-16
        pair split between two frames (a C# device) is put back together; any
        other lone surrogate becomes U+FFFD.
        """
        chunk = self._high + chunk
        self._high = ""
        if chunk.isascii() or not _SURROGATE.search(chunk):
            return chunk.encode("utf-8")
        if "\ud800" <= chunk[-1] <= "\udbff":
            chunk, self._high = chunk[:-1], chunk[-1]
        chunk = _PAIR.sub(lambda m: chr(0x10000 + ((ord(m[1]) - 0xD800) << 10) + ord(m[2]) - 0xDC00), chunk)
        chunk = _NOT_BYTE.sub("\ufffd", chunk)
        return chunk.encode("utf-8", "surrogateescape")

    def flush(self) -> str:
        tail = "\ufffd" if self._high else ""
        self._high = ""
        return self._clean(self._pending + self._decoder.decode(b"", final=True) + tail, final=True)

    def _clean(self, text: str, *, final: bool) -> str:
        self._pending = ""
        if not final:
            hold = 0
            if self._strip and "\x1b" in text:  # (a scan for ESC is far cheaper than the regex's)
                m = _PARTIAL_ESCAPE.search(text)
                if m:
                    hold = len(text) - m.start()
            if not hold and text.endswith("\r"):
                hold = 1
            if hold:
                text, self._pending = text[:-hold], text[-hold:]
        if "\r" in text:  # str.replace scans slowly even when nothing matches
            text = text.replace("\r\n", "\n")
        return strip_escapes(text) if self._strip else text


@dataclass(frozen=True, slots=True)
class Output:
    """Output of the command, in order."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The end marker: the command is done with this exit status.

    ``exit_code`` is None when the marker's status is not one a shell gives (a
    number from 0 to 255); ``problem`` then says what it was.
    """

    exit_code: int | None
    problem: str = ""


#: At most this many digits are read as an end marker's exit status (a shell's is at most 3).
MAX_STATUS_DIGITS = 64


def bad_exit_status(digits: str) -> str:
    """The sentence for an end marker whose exit status is not a shell's (``digits``: what it held).

    ``digits`` longer than :data:`MAX_STATUS_DIGITS` means the parser stopped reading there.
    """
    if len(digits) > MAX_STATUS_DIGITS:
        shown = f"{digits[:12]}… (more than {MAX_STATUS_DIGITS} digits)"
    elif len(digits) > 20:
        shown = f"{digits[:12]}… ({len(digits)} digits)"
    else:
        shown = digits
    return f"the end marker's exit status {shown} is not a number from 0 to 255: the output was damaged or forged"


def _finished(digits: str) -> Finished:
    if len(digits) > 3 or int(digits) > 255:
        return Finished(None, bad_exit_status(digits))
    return Finished(int(digits))


class CommandParser:
    """Finds one command's output and exit code in the cleaned terminal stream.

    Everything before the command's begin marker (banners, leftovers of an
    earlier command that timed out, lost chunks) is skipped; the end marker
    may follow output on the same line (``printf abc`` has no newline).
    """

    def __init__(self, marker_id: str) -> None:
        self.marker_id = marker_id
        self._begin = f"__TNB_B_{marker_id}__\n"
        self._end_prefix = f"__TNB_E_{marker_id}_"
        self._buf = ""
        self.started = False
        self.finished: Finished | None = None

    def feed(self, text: str) -> list[Output | Finished]:
        """Feed cleaned text (from :class:`TerminalText`); return the events it completes."""
        if self.finished is not None:
            return []
        events: list[Output | Finished] = []
        buf = self._buf + text
        if not self.started:
            pos = buf.find(self._begin)
            if pos < 0:
                self._buf = buf[-(len(self._begin) - 1) :]
                return events
            self.started = True
            buf = buf[pos + len(self._begin) :]
        end = self._find_end(buf)
        if end is not None:
            start, finished = end
            if start:
                events.append(Output(buf[:start]))
            self.finished = finished
            events.append(self.finished)
            self._buf = ""
            return events
        keep = _marker_tail(buf, self._end_prefix)
        if keep < len(buf):
            events.append(Output(buf[: len(buf) - keep]))
        self._buf = buf[len(buf) - keep :]
        return events

    def _find_end(self, buf: str) -> tuple[int, Finished] | None:
        """Where the end marker starts in ``buf`` and what it says (no regex compiled per command).

        At most :data:`MAX_STATUS_DIGITS` digits are read: an end marker with more
        ends the command at once, as an unusable exit status, and never makes the
        parser buffer an endless number.
        """
        pos = buf.find(self._end_prefix)
        while pos >= 0:
            start = pos + len(self._end_prefix)
            m = _END_TAIL.match(buf, start)
            if m:
                return pos, _finished(m.group(1))
            m = _TOO_LONG.match(buf, start)
            if m:
                return pos, _finished(m.group(0))
            pos = buf.find(self._end_prefix, pos + 1)
        return None


_END_TAIL = re.compile(rf"(\d{{1,{MAX_STATUS_DIGITS}}})__\n")
_TOO_LONG = re.compile(rf"\d{{{MAX_STATUS_DIGITS + 1}}}")


_GROWING_TAIL = re.compile(rf"\d{{0,{MAX_STATUS_DIGITS}}}(_(_)?)?")


def _marker_tail(buf: str, prefix: str) -> int:
    """How many trailing chars of ``buf`` could still become the end marker."""
    pos = buf.rfind(prefix)
    if pos >= 0:
        tail = buf[pos + len(prefix) :]
        # prefix + digits + "__" awaiting its newline, or still growing
        if _GROWING_TAIL.fullmatch(tail):
            return len(buf) - pos
    # The longest end of ``buf`` (shorter than ``prefix``) that ``prefix`` begins with: it starts
    # with prefix's first character, so only those places are tried (not every length).
    first = prefix[0]
    pos = buf.find(first, max(len(buf) - len(prefix) + 1, 0))
    while pos >= 0:
        if prefix.startswith(buf[pos:]):
            return len(buf) - pos
        pos = buf.find(first, pos + 1)
    return 0

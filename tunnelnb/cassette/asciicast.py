"""Terminal sessions as asciinema's asciicast v2 files: write one, read one, play one back.

``tunnelnb shell --record FILE.cast`` (and ``%tunnel shell``) keep what the
terminal showed in the format asciinema's player and ``asciinema play`` read, so a
session can be replayed anywhere (``tunnelnb play FILE.cast``).  The file is a
header line (a JSON object) and one JSON array per event,
``[seconds_since_start, "o", text]``.

What a recording may hold is decided here, once: only output events, never
input (so keys typed at a password prompt, where the terminal echoes nothing,
cannot reach the file), every secret the caller names replaced by a placeholder
(also when it arrives split across two outputs), a file only its owner can
read.  Imports nothing of tunnelnb but its errors.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, BinaryIO

from ..errors import CassetteError

__all__ = ["PASSWORD_MASK", "CastWriter", "play", "read_cast"]

#: What a secret given as a bare string becomes in the file.
PASSWORD_MASK = "<password>"

Event = tuple[float, str, str]


class CastWriter:
    """Write a session's output to ``path`` as asciicast v2, masked, one flushed event per output.

    ``secrets`` are strings (masked as ``<password>``) or ``(secret, placeholder)``
    pairs, as :meth:`Fleet.secret_values` gives them.  Text that could be the start
    of a secret is held back until the next output (or :meth:`close`) shows whether it is.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        title: str | None = None,
        secrets: Iterable[str | tuple[str, str]] = (),
        clock: Callable[[], float] = time.monotonic,
        term: str = "xterm-256color",
        shell: str | None = None,
        timestamp: int | None = None,
    ) -> None:
        pairs = [(s, PASSWORD_MASK) if isinstance(s, str) else (s[0], s[1]) for s in secrets]
        # Longest first, so a secret that contains another is masked whole.
        self._masks = dict(sorted(((s, m) for s, m in pairs if s), key=lambda p: -len(p[0])))
        self._pattern = re.compile("|".join(re.escape(s) for s in self._masks)) if self._masks else None
        self._clock = clock
        self._start = clock()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""
        self._last = 0.0  # when the last output came: held-back text is written with that time
        self.path = os.fspath(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # O_CREAT's mode only applies to a new file
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        header: dict[str, Any] = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": int(time.time()) if timestamp is None else timestamp,
        }
        if title is not None:
            header["title"] = self._mask_all(title)
        header["env"] = {"TERM": term, **({"SHELL": shell} if shell else {})}
        self._write(json.dumps(header, ensure_ascii=False))

    @property
    def closed(self) -> bool:
        return self._file.closed

    def output(self, data: bytes) -> None:
        """Record terminal output ``data`` (raw bytes, possibly a split character) at the clock's time."""
        if self.closed:
            raise ValueError("this recording is closed")
        now = self._clock() - self._start
        done, self._held = self._masked(self._held + self._decoder.decode(data))
        self._last = now
        if done:
            self._event(now, done)

    def close(self) -> None:
        """Write what was held back (it was no secret) and close the file; idempotent."""
        if self.closed:
            return
        try:
            rest = self._mask_all(self._held + self._decoder.decode(b"", final=True))
            self._held = ""
            if rest:
                self._event(self._last, rest)
        finally:
            self._file.close()

    def __enter__(self) -> CastWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- masking ---------------------------------------------------------------

    def _mask_all(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._masks[m.group(0)], text)

    def _masked(self, text: str) -> tuple[str, str]:
        """``(masked text to write, tail held back)``: the tail is the longest suffix that starts a secret."""
        if self._pattern is None:
            return text, ""
        parts: list[str] = []
        end = 0
        for match in self._pattern.finditer(text):
            parts.append(text[end : match.start()])
            parts.append(self._masks[match.group(0)])
            end = match.end()
        rest = text[end:]
        hold = 0
        for secret in self._masks:
            for k in range(min(len(secret) - 1, len(rest)), hold, -1):
                if rest.endswith(secret[:k]):
                    hold = k
                    break
        parts.append(rest[: len(rest) - hold])
        return "".join(parts), rest[len(rest) - hold :]

    # -- the file ----------------------------------------------------------------

    def _event(self, at: float, text: str) -> None:
        self._write(f'[{at:.6f}, "o", {json.dumps(text, ensure_ascii=False)}]')

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()


def read_cast(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Event]]:
    """The header and the events of an asciicast v2 file; :class:`CassetteError` (with the line) if it is not one."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw_lines = f.read().split(b"\n")
    except FileNotFoundError:
        raise CassetteError(f"{name}: no such file; give the path of an asciicast v2 recording (.cast)") from None
    except OSError as exc:
        raise CassetteError(f"{name}: cannot read it ({exc.strerror or exc})") from None
    header: dict[str, Any] | None = None
    events: list[Event] = []
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            what = "an asciicast v2 header" if header is None else "an asciicast v2 event"
            raise CassetteError(f"{name} line {number} is not {what}: it is not JSON in UTF-8") from None
        if header is None:
            header = _header(value, name, number)
        else:
            events.append(_event(value, name, number))
    if header is None:
        raise CassetteError(f"{name} is empty: an asciicast v2 recording starts with a header line")
    return header, events


def _header(value: object, name: str, number: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CassetteError(f"{name} line {number} is not an asciicast v2 header: want a JSON object")
    if value.get("version") != 2:
        raise CassetteError(
            f"{name} line {number}: asciicast version {value.get('version')!r} is not supported, only version 2"
        )
    for key in ("width", "height"):
        size = value.get(key)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise CassetteError(f"{name} line {number}: the header's {key} must be a positive integer, not {size!r}")
    return value


def _event(value: object, name: str, number: int) -> Event:
    if (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], int | float)
        and not isinstance(value[0], bool)
        and math.isfinite(value[0])
        and value[0] >= 0
        and isinstance(value[1], str)
        and isinstance(value[2], str)
    ):
        return float(value[0]), value[1], value[2]
    raise CassetteError(f"{name} line {number} is not an asciicast v2 event: want [seconds, code, text]")


def play(
    path_or_events: str | os.PathLike[str] | Iterable[Event],
    out: BinaryIO,
    *,
    speed: float = 1.0,
    idle_limit: float | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Write the output events' text to ``out`` (UTF-8) at their pace divided by ``speed``.

    Pauses longer than ``idle_limit`` seconds (of the recording) are cut to it;
    ``speed`` 0 or infinity writes everything at once.
    """
    if math.isnan(speed) or speed < 0:
        raise ValueError(f"speed must be 0 (no waiting) or more, not {speed}")
    if idle_limit is not None and not idle_limit >= 0:
        raise ValueError(f"idle_limit must be 0 seconds or more, not {idle_limit}")
    if isinstance(path_or_events, str | os.PathLike):
        events: Iterable[Event] = read_cast(path_or_events)[1]
    else:
        events = path_or_events
    waits = 0 < speed < math.inf
    previous = 0.0
    for at, code, text in events:
        if code != "o":
            continue
        gap = max(0.0, at - previous)
        previous = at
        if idle_limit is not None:
            gap = min(gap, idle_limit)
        if waits and gap > 0:
            sleep(gap / speed)
        out.write(text.encode("utf-8"))
        out.flush()

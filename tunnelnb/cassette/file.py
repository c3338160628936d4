"""The cassette file: what a recorded fleet got from its platform and devices, as JSON Lines.

A cassette is written by :func:`tunnelnb.record` (``%tunnel record``)
and played back by ``tunnelnb.connect(replay=PATH)`` (see :mod:`tunnelnb.cassette.replay`).
It is meant to be read and diffed by people, and committed next to a notebook:

* the first line is a header: ``{"format": "tunnelnb-cassette", "version": 1,
  "recorded_at": …, "platform": …, "project_id": …, "login": …, "logins": …,
  "fleet": …}``;
* then one event per line, in the order they happened, each ``{"t": seconds since
  the recording began, "dev": device id (null: the fleet's own), "kind": …, …}``:

  ==========  ==============================================================================
  ``kind``    what happened (and its other keys)
  ==========  ==============================================================================
  ``rest``    a platform call and its answer: ``call``, ``args``, ``result`` or ``error``
  ``open``    the tunnel's WebSocket was opened: ``tunnel_id`` (or ``error``)
  ``out``     a frame the application sent: ``frame`` (``cmd``: the user's command, for
              people reading the file), ``error`` when the socket refused it
  ``in``      a message the application received: ``frame`` (the JSON object), or ``raw``
              when its text is not the compact JSON of that object (a pretty-printing SDK)
  ``closed``  the platform closed the WebSocket: ``type``, ``code``, ``reason``
  ``close``   the application closed the WebSocket: ``code``
  ``clock``   the session read its clock; the reading is ``t`` itself (durations, timeouts)
  ``now``     the session read the wall clock: ``value`` (``started_at``)
  ``random``  the session drew random hex: ``value`` (request and marker ids)
  ``branch``  appended by a ``new_episodes`` replay: the device's events from index ``at``
              on are replaced by the ones that follow
  ==========  ==============================================================================

Secrets never reach the file: the ``password`` of ``connect`` frames, tunnel access
tokens, API tokens, AK/SK, signatures and anything under such a key become
placeholders like ``<password>``, and every known secret value (the fleet's
passwords, the API token, tokens seen so far) is replaced wherever it appears.
:func:`scan` checks a file for leftovers.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import CassetteError
from ..version import VERSION as TUNNELNB_VERSION

__all__ = [
    "FORMAT",
    "SUFFIX",
    "VERSION",
    "Cassette",
    "CassetteWriter",
    "Masker",
    "command_of",
    "scan",
]

FORMAT = "tunnelnb-cassette"
VERSION = 1
#: Cassettes are ``NAME.cassette.jsonl``; the repository's tests scan every such file for secrets.
SUFFIX = ".cassette.jsonl"

#: Events a replay matches against what the application does, in order.
HARD_KINDS = frozenset({"rest", "open", "out", "close"})
#: What the application receives; released in recorded order.
DELIVERY_KINDS = frozenset({"in", "closed"})


# ---------------------------------------------------------------------------
# Secrets


#: Keys whose values are secrets wherever they appear (lower case, ``-`` as ``_``).
SECRET_KEYS = {
    "password": "<password>",
    "passwd": "<password>",
    "secret": "<secret>",
    "device_secret": "<secret>",
    "tunnel_access_token": "<tunnel-access-token>",
    "token": "<token>",
    "access_token": "<token>",
    "auth_token": "<token>",
    "x_auth_token": "<api-token>",
    "api_token": "<api-token>",
    "ak": "<access-key>",
    "access_key": "<access-key>",
    "access_key_id": "<access-key>",
    "accesskey": "<access-key>",
    "sk": "<secret-key>",
    "secret_key": "<secret-key>",
    "secret_access_key": "<secret-key>",
    "secretkey": "<secret-key>",
    "security_token": "<security-token>",
    "x_security_token": "<security-token>",
    "signature": "<signature>",
    "authorization": "<signature>",
}

#: Known secret values shorter than this are not searched for in free text (they would
#: match ordinary words); under a secret key they are masked whatever their length.
MIN_SECRET_LENGTH = 6

#: Environment variables whose values are secrets when set, and their placeholders.
SECRET_ENV = {
    "TUNNELNB_API_TOKEN": "<api-token>",
    "TUNNELNB_LOGIN_PASSWORD": "<password>",
    "HUAWEICLOUD_SDK_AK": "<access-key>",
    "HUAWEICLOUD_SDK_SK": "<secret-key>",
    "HUAWEICLOUD_SDK_SECURITY_TOKEN": "<security-token>",
}

_PLACEHOLDER = re.compile(r"<[a-z-]+>")


def _secret_key(key: object) -> str | None:
    if not isinstance(key, str):
        return None
    return SECRET_KEYS.get(key.lower().replace("-", "_"))


def is_placeholder(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, str) and _PLACEHOLDER.fullmatch(value) is not None)


class Masker:
    """Replaces secrets with placeholders in values about to be written; counts what it masked."""

    def __init__(self, secrets: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        self.masked = 0
        for value, placeholder in secrets:
            self.add(value, placeholder)
        for name, placeholder in SECRET_ENV.items():
            self.add(os.environ.get(name), placeholder)

    def add(self, value: object, placeholder: str = "<secret>") -> None:
        """Mask ``value`` wherever it appears from now on."""
        if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH and not is_placeholder(value):
            if value not in self._values:
                self._values[value] = placeholder
                self._pattern = None

    def __call__(self, value: Any) -> Any:
        """A copy of ``value`` (JSON-like) with secrets replaced."""
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                placeholder = _secret_key(key)
                if placeholder is not None and not is_placeholder(item):
                    self.add(item, placeholder)
                    self.masked += 1
                    out[key] = placeholder
                else:
                    out[key] = self(item)
            return out
        if isinstance(value, (list, tuple)):
            return [self(item) for item in value]
        return value

    def _text(self, text: str) -> str:
        if not self._values:
            return text
        if self._pattern is None:
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
        if self._pattern.search(text) is None:
            return text

        def sub(m: re.Match[str]) -> str:
            self.masked += 1
            return self._values[m.group()]

        return self._pattern.sub(sub, text)


def mask_keys(value: Any) -> Any:
    """``value`` with whatever sits under a secret key replaced (for comparing frames in a replay)."""
    if isinstance(value, dict):
        return {
            k: (_secret_key(k) if _secret_key(k) and not is_placeholder(v) else mask_keys(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_keys(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# Commands in frames (for people reading a cassette, and for error messages)

_PLAIN = re.compile(r"\{ eval '((?:[^']|'\\'')*)'\n\} </dev/null\n")
_ENCODED = re.compile(r"<<'(__TNB_H_[0-9A-Za-z]+__)'\n(.*?)\n\1\n", re.S)


def command_of(text: str) -> str | None:
    """The user's command in a ``command`` frame's text framed by :func:`tunnelnb.protocol.shell.command_script`.

    ``None`` for anything else (keys typed into a terminal, a piece of a long script).
    """
    m = _PLAIN.search(text)
    if m is not None:
        return m.group(1).replace("'\\''", "'")
    m = _ENCODED.search(text)
    if m is not None:
        try:
            return base64.b64decode("".join(m.group(2).split()), validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return None
    return None


def describe_frame(frame: dict[str, Any]) -> str:
    """A frame the application sent, in words."""
    op = frame.get("operation_type")
    data = frame.get("data")
    if op == "command" and isinstance(data, str):
        command = command_of(data)
        if command is not None:
            return f"the command {_short(command)}"
        if data == "\x03":
            return "an interrupt (Ctrl-C)"
        return f"the keys {_short(data)}"
    if op == "connect" and isinstance(data, dict):
        return f"a login as {data.get('username')!r}"
    return f"a {op} frame"


def _short(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


# ---------------------------------------------------------------------------
# Writing


def dumps(obj: Any) -> str:
    """One line of JSON: keys in the order given, non-ASCII as is, lone surrogates escaped."""
    text = json.dumps(obj, ensure_ascii=False)
    if not text.isascii():
        text = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


class CassetteWriter:
    """Appends events to a cassette file, in order, as soon as each is complete.

    An event may be logged before it is complete (a frame is logged when it is
    sent, and marked with an error if sending fails); the events behind it wait,
    so the file keeps the order things happened in.
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any] | None, *, append: bool = False) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise CassetteError(f"cannot write the cassette {self.path}: no directory {self.path.parent}")
        self._file: TextIO | None = open(self.path, "a" if append else "w", encoding="utf-8")
        if header is not None:
            self._file.write(dumps(header) + "\n")
            self._file.flush()
        self._queue: list[dict[str, Any]] = []
        self._pending: set[int] = set()
        self.events = 0
        self.devices: set[str] = set()

    def write(self, event: dict[str, Any], *, complete: bool = True) -> dict[str, Any]:
        self._queue.append(event)
        if not complete:
            self._pending.add(id(event))
        self._flush()
        return event

    def complete(self, event: dict[str, Any]) -> None:
        self._pending.discard(id(event))
        self._flush()

    def _flush(self) -> None:
        if self._file is None:
            return
        n = 0
        while n < len(self._queue) and id(self._queue[n]) not in self._pending:
            event = self._queue[n]
            self._file.write(dumps(event) + "\n")
            self.events += 1
            if event.get("dev") is not None:
                self.devices.add(event["dev"])
            n += 1
        if n:
            del self._queue[:n]
            self._file.flush()

    def close(self) -> None:
        self._pending.clear()
        self._flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None


# ---------------------------------------------------------------------------
# Reading


@dataclass
class Cassette:
    """A cassette read back: its header and each device's events (``None``: the fleet's own)."""

    path: Path
    header: dict[str, Any]
    streams: dict[str | None, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Cassette:
        """Read ``path``; :class:`CassetteError` names what is wrong with it (and which line)."""
        p = Path(path)
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise CassetteError(
                f"no cassette at {p}: record one first (tunnelnb.record(fleet, path), %tunnel record PATH, or "
                "mode='all')"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CassetteError(f"cannot read the cassette {p}: {exc}") from None
        header = _parse(lines[0], p, 1) if lines else None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CassetteError(f"{p} is not a tunnelnb cassette (its first line is not a {FORMAT} header)")
        version = header.get("version")
        if version != VERSION:
            raise CassetteError(
                f"{p} is a cassette of format version {version!r}, and this tunnelnb ({TUNNELNB_VERSION}) reads "
                f"version {VERSION}: use the tunnelnb that recorded it, or record it again"
            )
        cassette = cls(p, header)
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            event = _parse(line, p, number)
            if not isinstance(event, dict) or "kind" not in event or not isinstance(event.get("t"), (int, float)):
                raise CassetteError(f"{p}, line {number}: not a cassette event")
            if event.get("resume"):
                continue  # how a new_episodes replay went live: nothing the application did
            stream = cassette.streams.setdefault(event.get("dev"), [])
            if event["kind"] == "branch":
                del stream[int(event.get("at", len(stream))) :]
                continue
            stream.append(event)
        return cassette

    def events(self) -> Iterator[dict[str, Any]]:
        for stream in self.streams.values():
            yield from stream


def _parse(line: str, path: Path, number: int) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise CassetteError(f"{path}, line {number}: not JSON ({exc})") from None


# ---------------------------------------------------------------------------
# Checking


def scan(path: str | os.PathLike[str], secrets: Iterable[str] = ()) -> list[str]:
    """What in the cassette at ``path`` looks like a leaked secret: one sentence each (empty: none).

    Checks that every value under a secret key is a placeholder, that ``connect``
    frames carry no password, and that none of ``secrets`` (nor a secret from the
    environment, see :data:`SECRET_ENV`) appears anywhere in the file.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    problems: list[str] = []
    known = [s for s in secrets if s] + [v for name in SECRET_ENV if (v := os.environ.get(name))]
    for secret in known:
        escaped = json.dumps(secret)[1:-1]
        if secret in text or escaped in text:
            problems.append(f"{p.name}: contains a secret value ({len(secret)} characters) in plain text")

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if _secret_key(key) is not None and not is_placeholder(item):
                    problems.append(f"{where}: {key!r} holds a value, not a placeholder")
                walk(item, where)
        elif isinstance(value, list):
            for item in value:
                walk(item, where)
        elif isinstance(value, str) and value.lstrip().startswith("{") and '"password"' in value:
            try:
                walk(json.loads(value), where)  # a raw frame: the same rules inside
            except ValueError:
                pass

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            walk(json.loads(line), f"{p.name}, line {number}")
        except ValueError:
            problems.append(f"{p.name}, line {number}: not JSON")
    return problems

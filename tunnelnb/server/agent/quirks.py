"""The official device SDKs' habits, emulated: the quirk modes and how output is framed.

``quirks`` makes the agent send what the official device SDKs send, so the
client is tested against real devices' habits:

* ``"c-sdk"`` (huaweicloud-iot-device-sdk-c): ``connect_response`` goes out
  before SSH is even tried, without a ``data`` key; JSON is pretty-printed;
  ``command_response.request_id`` is the latest request id received; output is
  read in raw chunks of at most 2,048 bytes (coalesced for a few ms) cut
  anywhere (a UTF-8 character may be split: the bytes travel as
  ``surrogateescape`` escapes), and a chunk whose JSON does not fit cJSON's
  2,304-byte buffer is silently dropped.
* ``"csharp-sdk"`` (huaweicloud-iot-device-sdk-csharp): ``connect_response``
  carries the shell's first output; ``request_id`` is always the ``connect``'s;
  output goes in chunks of at most 1,024 bytes, decoded correctly.
* ``"none"``: well-behaved; output coalesced into frames as large as the
  platform allows, ``request_id`` of the latest ``command``.

This module holds the modes' constants and the frame encoding and sizing they
need; the shell session (:mod:`.session`) reads output the way each SDK does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from ...protocol.frames import Frame, Op, chunk_text, encode_frame

__all__ = [
    "COALESCE_SECONDS",
    "CSHARP_FIRST_OUTPUT_SECONDS",
    "CSHARP_READ_BYTES",
    "C_SDK_JSON_BYTES",
    "C_SDK_READ_BYTES",
    "QUIRKS",
    "c_sdk_json_size",
    "encode_as",
    "encoded_size",
    "output_budget",
    "output_frames",
]

QUIRKS = ("none", "c-sdk", "csharp-sdk")

#: How long to wait for more output before sending a short frame (the C SDK's full reads).
COALESCE_SECONDS = 0.005
#: The C SDK's read buffer and its cJSON print buffer (TUNNEL_SSH_RSPBUFF_LEN / TUNNEL_WSSCLIENT_RSPMSG_LEN).
C_SDK_READ_BYTES = 2048
C_SDK_JSON_BYTES = 2304
#: The C# SDK's read buffer.
CSHARP_READ_BYTES = 1024
#: How long the C# quirk waits for the shell's first output to put in connect_response.
CSHARP_FIRST_OUTPUT_SECONDS = 1.0

_EMPTY = Frame(Op.COMMAND_RESPONSE, "", "")
#: Extra bytes pretty-printing adds to a frame, for the size guard of the quirks.
_PRETTY_EXTRA = len(encode_frame(_EMPTY, pretty=True)) - len(encode_frame(_EMPTY))


def encode_as(quirks: str, frame: Frame) -> str:
    """``frame`` as JSON text, as the SDK that ``quirks`` names would write it."""
    if quirks != "c-sdk":
        return encode_frame(frame)
    if frame.op is Op.CONNECT_RESPONSE and frame.data is None:
        obj = frame.to_dict()
        del obj["data"]  # cJSON_AddStringToObject(..., NULL) adds nothing
        return json.dumps(obj, indent="\t")
    return encode_frame(frame, pretty=True)


def encoded_size(quirks: str, frame: Frame) -> int:
    """Bytes of ``encode_as(quirks, frame)``."""
    return len(encode_as(quirks, frame).encode("utf-8", "surrogatepass"))


def output_budget(quirks: str, max_message_bytes: int) -> int:
    """The ``max_bytes`` to chunk output with so that its frames, encoded as ``quirks`` does, fit the limit."""
    return max_message_bytes - (_PRETTY_EXTRA if quirks == "c-sdk" else 0)


# cJSON escapes '"', '\\' and control characters: \b \f \n \r \t take 2 bytes, the others \u00XX (6).
_C_SPECIAL = bytes(range(32)) + b'"\\'
_C_NOT_SPECIAL = bytes(b for b in range(256) if b not in _C_SPECIAL)
_C_SHORT = b'\b\f\n\r\t"\\'


def c_sdk_json_size(request_id: str, raw: bytes) -> int:
    """Bytes the C SDK needs to print a command_response carrying ``raw``, its NUL included.

    The C SDK formats with ``cJSON_PrintPreallocated(..., 2304, formatted)``:
    bytes >= 0x80 are copied as they are (one byte each), ``"``, ``\\`` and
    control characters are escaped.  Pretty JSON with tabs has the same length
    as cJSON's formatted output.
    """
    frame = Frame(Op.COMMAND_RESPONSE, request_id, "")
    overhead = len(encode_frame(frame, pretty=True).encode("utf-8", "surrogatepass"))
    special = raw.translate(None, _C_NOT_SPECIAL)
    short = len(special) - len(special.translate(None, _C_SHORT))
    return overhead + len(raw) + short + 5 * (len(special) - short) + 1


def output_frames(text: str, request_id: str, max_bytes: int) -> Iterator[Frame]:
    """``chunk_text``'s frames, found faster for terminal output.

    ``chunk_text`` starts from a guess that fits only escape-free text; PTY
    output has ``\\r\\n`` on every line, so each frame would cost it a binary
    search over JSON encodings.  Scaling the guess by the measured density
    lands within a step or two; ``chunk_text`` still checks every piece.
    """
    budget = max_bytes - len(encode_frame(Frame(Op.COMMAND_RESPONSE, request_id, "")).encode())
    pos, n = 0, len(text)
    while pos < n:
        end = min(n, pos + max(budget, 1))
        while True:
            cost = len(json.dumps(text[pos:end], ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2
            if cost <= budget or end - pos <= 1:
                break
            end = pos + max(1, (end - pos) * budget // cost - 1)
        yield from chunk_text(text[pos:end], request_id, max_bytes=max_bytes)
        pos = end

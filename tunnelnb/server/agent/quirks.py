"""The official device SDKs' habits, emulated: the quirk modes and how output is framed.

``quirks`` makes the agent send what the official device SDKs send, so the
client is tested against real devices' habits.  The C SDK is
huaweicloud-iot-device-sdk-c; what its modes do comes from its
``src/tunnel/wss_client.c`` and ``src/tunnel/ssh_client.c`` (and the
``tunnel_notify`` handler, ``src/agentlite/iota_defaultCallback.c``):

* ``"c-sdk"`` (its master, from v1.1.4, September 2023, to v1.2.0 and after):

  - ``connect_response`` goes out before SSH is even tried, without a ``data``
    key (``WssClientListenerOnMsg``); JSON is pretty-printed (``cJSON_Print``);
    ``command_response.request_id`` is the latest request id received;
  - output is read in raw pieces of at most 2,048 bytes (``SSHClientRead``;
    coalesced for a few ms here, as its reader thread blocks in each send) and
    copied into the JSON text as raw bytes: a UTF-8 character split at a read
    boundary makes a WebSocket *text* message that is not valid UTF-8;
  - a full 2,048-byte read is not NUL-terminated before ``cJSON_AddStringToObject``
    copies it, so stray heap bytes can follow it: modelled by :class:`StrayBytes`
    (after a full read, with probability ``stray_bytes``, 1 to 80 junk bytes);
  - every ``tunnel_notify`` closes the tunnel WebSocket (1000) and opens a new
    one (``WssClientCreate`` → ``WssClientConnect``), losing the SSH session, even
    when it names the tunnel already connected;
  - every close of the tunnel WebSocket ends the SSH session
    (``WssClientListenerOnClose`` → ``SSHClientSessionDestroy``); after any code but
    1000, 1002 and 4000 (1007 included) it reconnects, and the application must
    log in again;
  - every SSH failure (wrong password, no SSH server, no channel) is answered with
    ``disconnect`` 400 :data:`C_SDK_CHANNEL_FAILED`; it never says 401;
  - nothing is kept while the WebSocket is down (``WssClientSendRsp`` sends on a
    dead connection and moves on).

* ``"c-sdk-1.1"`` (v1.1.3 and before, still in the field): the same, except that
  each response is formatted into a 2,304-byte buffer (``cJSON_PrintPreallocated``,
  ``TUNNEL_WSSCLIENT_RSPMSG_LEN``) and a chunk whose JSON does not fit is silently
  dropped, and that a full read is NUL-terminated (``buff[len] = '\\0'``), so no
  stray bytes follow it.  Its notify handling: v1.1.3's ``WssClientConnect`` closes
  the old connection and opens a new one on every ``WssClientCreate`` (the same
  code as master, so modelled alike), but the SDK itself did not handle
  ``tunnel_notify`` then: the device application's event callback called
  ``WssClientCreate`` (its ``device_demo.c`` does, for every notify); a device whose
  callback skipped repeated notifies would not reconnect.  Not modelled: v1.1.3
  read output only after a ``connect`` or ``command`` frame, until 2 s of silence
  (``ssh_channel_read_timeout``), in a thread per command, stamping that command's
  request id; output that comes later waits for the next command.

* ``"csharp-sdk"`` (huaweicloud-iot-device-sdk-csharp): ``connect_response``
  carries the shell's first output; ``request_id`` is always the ``connect``'s;
  output goes in chunks of at most 1,024 bytes, decoded correctly.
* ``"none"``: well-behaved; output coalesced into frames as large as the
  platform allows (:func:`~tunnelnb.protocol.frames.encode_chunks`: escaped
  once, sent as encoded), ``request_id`` of the latest ``command``.

This module holds the modes' constants and the frame encoding and sizing they
need; the shell session (:mod:`.session`) reads output the way each SDK does,
the tunnel (:mod:`.tunnel`) and the agent (:mod:`.agent`) handle the connection
the way each does.
"""

from __future__ import annotations

import json
import os
import random
import re

from ...protocol.frames import Frame, Op, encode_frame

__all__ = [
    "COALESCE_SECONDS",
    "CSHARP_FIRST_OUTPUT_SECONDS",
    "CSHARP_READ_BYTES",
    "C_SDK_CHANNEL_FAILED",
    "C_SDK_JSON_BYTES",
    "C_SDK_QUIRKS",
    "C_SDK_READ_BYTES",
    "C_SDK_STRAY_MAX_BYTES",
    "C_SDK_STRAY_PROBABILITY",
    "QUIRKS",
    "STRAY_BYTES_ENV",
    "StrayBytes",
    "c_sdk_json_size",
    "cjson_escape",
    "encode_as",
    "output_budget",
]

QUIRKS = ("none", "c-sdk", "c-sdk-1.1", "csharp-sdk")
#: The modes that emulate the C SDK (today's and v1.1's).
C_SDK_QUIRKS = frozenset({"c-sdk", "c-sdk-1.1"})

#: How long to wait for more output before sending a short frame (the C SDK's full reads).
COALESCE_SECONDS = 0.005
#: The C SDK's read buffer and v1.1's cJSON print buffer (TUNNEL_SSH_RSPBUFF_LEN / TUNNEL_WSSCLIENT_RSPMSG_LEN).
C_SDK_READ_BYTES = 2048
C_SDK_JSON_BYTES = 2304
#: The status_msg of the C SDK's ``disconnect`` 400, its answer to every SSH failure (wss_client.c).
C_SDK_CHANNEL_FAILED = "WssClientListenerOnMsg: Create SSH channel failed"
#: How often stray bytes follow a full 2,048-byte read (c-sdk), unless the agent is told otherwise.
C_SDK_STRAY_PROBABILITY = 0.25
#: At most this many stray bytes follow a full read.
C_SDK_STRAY_MAX_BYTES = 80
#: ``PROBABILITY[:SEED]``: the agent's ``stray_bytes`` (and seed) when not given, e.g. ``0`` for none.
STRAY_BYTES_ENV = "TUNNELNB_STRAY_BYTES"
#: The C# SDK's read buffer.
CSHARP_READ_BYTES = 1024
#: How long the C# quirk waits for the shell's first output to put in connect_response.
CSHARP_FIRST_OUTPUT_SECONDS = 1.0

_EMPTY = Frame(Op.COMMAND_RESPONSE, "", "")
#: Extra bytes pretty-printing adds to a frame, for the size guard of the quirks.
_PRETTY_EXTRA = len(encode_frame(_EMPTY, pretty=True)) - len(encode_frame(_EMPTY))


class StrayBytes:
    """The heap bytes that follow some of the C SDK's full reads, from a seeded RNG.

    ``ssh_client.c`` (``SSHClientRead``) reads into a 2,048-byte buffer zeroed before
    each read; a read that fills it leaves no NUL, and ``cJSON_AddStringToObject``
    copies on past its end up to the next NUL in the heap.  ``probability`` is how
    often that brings junk (0 never, 1 always); the junk is 1 to 80 bytes, none NUL
    (a C string ends there), not necessarily UTF-8.  The same ``seed`` gives the same
    draws.
    """

    def __init__(self, probability: float, seed: int | str) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"stray_bytes is a probability, from 0 to 1, not {probability}")
        self.probability = probability
        self._rng = random.Random(f"tunnelnb-stray-bytes:{seed}")

    def __repr__(self) -> str:
        return f"StrayBytes(probability={self.probability:g})"

    @classmethod
    def configure(cls, probability: float | None, seed: int | str | None, default_seed: str) -> StrayBytes:
        """From the agent's arguments, else :data:`STRAY_BYTES_ENV` (``P`` or ``P:SEED``), else the defaults."""
        env_seed: str | None = None
        if probability is None:
            setting = os.environ.get(STRAY_BYTES_ENV, "").strip()
            if setting:
                value, _, env_seed = setting.partition(":")
                try:
                    probability = float(value)
                except ValueError:
                    raise ValueError(f"{STRAY_BYTES_ENV} must be PROBABILITY[:SEED], not {setting!r}") from None
            else:
                probability = C_SDK_STRAY_PROBABILITY
        if seed is None:
            seed = env_seed or default_seed
        return cls(probability, seed)

    def after_full_read(self) -> bytes:
        """What follows a full read: usually nothing, sometimes junk."""
        rng = self._rng
        if self.probability <= 0.0 or rng.random() >= self.probability:
            return b""
        return bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, C_SDK_STRAY_MAX_BYTES)))


# cJSON escapes '"', '\\' and control characters: \b \f \n \r \t take 2 bytes, the others \u00XX (6);
# every other byte, 0x80-0xff included, is copied as it is.
_C_SPECIAL = bytes(range(32)) + b'"\\'
_C_NOT_SPECIAL = bytes(b for b in range(256) if b not in _C_SPECIAL)
_C_SHORT = b'\b\f\n\r\t"\\'
_C_ESCAPES = {
    **{bytes([b]): b"\\u%04x" % b for b in range(32)},
    b"\b": b"\\b",
    b"\f": b"\\f",
    b"\n": b"\\n",
    b"\r": b"\\r",
    b"\t": b"\\t",
    b'"': b'\\"',
    b"\\": b"\\\\",
}
_C_SPECIAL_RE = re.compile(rb'[\x00-\x1f"\\]')


def cjson_escape(raw: bytes) -> bytes:
    """``raw`` as the inside of a JSON string, the way cJSON prints it: other bytes as they are."""
    return _C_SPECIAL_RE.sub(lambda m: _C_ESCAPES[m.group()], raw)


def encode_as(quirks: str, frame: Frame) -> bytes:
    """The message carrying ``frame``, as the SDK that ``quirks`` names would write it.

    The C SDK's text data goes in as raw bytes (a string from ``surrogateescape``
    gives back the bytes it was read from): the result need not be valid UTF-8.
    """
    if quirks not in C_SDK_QUIRKS:
        return encode_frame(frame).encode("utf-8")
    if frame.op is Op.CONNECT_RESPONSE and frame.data is None:
        obj = frame.to_dict()
        del obj["data"]  # cJSON_AddStringToObject(..., NULL) adds nothing
        return json.dumps(obj, indent="\t").encode("utf-8")
    if isinstance(frame.data, str):
        try:
            raw = frame.data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that stands for no byte: not terminal output
            return encode_frame(frame, pretty=True).encode("utf-8")
        # "data" is the last key and its value "" the last "" of the text: put the bytes there.
        skeleton = encode_frame(Frame(frame.op, frame.request_id, "", frame.service_type), pretty=True)
        cut = skeleton.rindex('""') + 1
        return skeleton[:cut].encode("utf-8") + cjson_escape(raw) + skeleton[cut:].encode("utf-8")
    return encode_frame(frame, pretty=True).encode("utf-8")


def output_budget(quirks: str, max_message_bytes: int) -> int:
    """The ``max_bytes`` to chunk output with so that its frames, encoded as ``quirks`` does, fit the limit."""
    return max_message_bytes - (_PRETTY_EXTRA if quirks in C_SDK_QUIRKS else 0)


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

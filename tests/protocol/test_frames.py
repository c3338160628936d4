"""Exhaustive tests of the sans-I/O Secure Tunnel frame layer (tunnelnb.protocol.frames).

Modelled on h11/wsproto: every frame that should round-trip does (hypothesis), every
malformed input raises ProtocolError with a message naming the problem, and what real
devices send (C SDK, C# SDK) is accepted.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tunnelnb.errors import ProtocolError
from tunnelnb.protocol.frames import (
    DEFAULT_MAX_MESSAGE_BYTES,
    SERVICE_TYPE,
    SSH_IDLE_REQUEST_ID,
    Frame,
    Op,
    RequestIds,
    Status,
    chunk_text,
    decode_frame,
    encode_chunks,
    encode_frame,
    encoded_size,
    require_utf8,
)
from tunnelnb.protocol.shell import TerminalText

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------
# Strategies

#: Bytes a device could not decode, carried through JSON as surrogateescape'd lone surrogates.
LONE_SURROGATES = st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)])
#: Characters that JSON escapes or that are awkward for byte accounting.
AWKWARD = st.sampled_from(
    ['"', "\\", "/", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1b", "\x1f", "\x7f", "\u2028", "\u2029", "\ufeff"]
)
NON_BMP = st.sampled_from(["😀", "𝄞", "🂡", "\U0010ffff", "\U00020000"])
CHARS = st.one_of(st.characters(), AWKWARD, NON_BMP, LONE_SURROGATES)
#: Any text a frame could carry, including lone surrogates \udc80-\udcff.
TEXT = st.text(CHARS, max_size=60)
#: Text without lone surrogates (valid Unicode).
VALID_TEXT = st.text(st.one_of(st.characters(), AWKWARD, NON_BMP), max_size=60)

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(TEXT, JSON_VALUES, max_size=4)


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    op = draw(st.sampled_from(list(Op)))
    if op is Op.CONNECT:
        data = {"username": draw(TEXT), "password": draw(TEXT)}
        if draw(st.booleans()):
            data["port"] = draw(st.integers(min_value=1, max_value=65535))
        if draw(st.booleans()):
            data.update({k: v for k, v in draw(JSON_OBJECTS).items() if k not in data})
    elif op in (Op.COMMAND, Op.COMMAND_RESPONSE):
        data = draw(TEXT)
    elif op is Op.DISCONNECT:
        data = draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries({"status_code": st.one_of(TEXT, st.integers(0, 999)), "status_msg": TEXT}),
            )
        )
    else:  # connect_tunnel, connect_response, ping, pong: null, a string or an object
        data = draw(st.one_of(st.none(), TEXT, JSON_OBJECTS))
    service = draw(st.one_of(st.just(SERVICE_TYPE), TEXT))
    return Frame(op, draw(TEXT), data, service)


def raw(**fields: object) -> str:
    return json.dumps(fields)


# ---------------------------------------------------------------------------
# Round trips


@SETTINGS
@given(valid_frames(), st.booleans())
def test_encode_decode_round_trip(frame: Frame, pretty: bool) -> None:
    text = encode_frame(frame, pretty=pretty)
    # Always valid UTF-8 on the wire, even with lone surrogates in the data.
    wire = text.encode("utf-8")
    assert decode_frame(text, max_bytes=None) == frame
    assert decode_frame(wire, max_bytes=None) == frame


@SETTINGS
@given(TEXT)
@example("\udc80\udcff")
@example("é".encode().decode("ascii", "surrogateescape"))
@example('a"b\\c\n\r\t\x00\x1b[31m😀')
def test_command_text_round_trips_exactly(text: str) -> None:
    for op in (Op.COMMAND, Op.COMMAND_RESPONSE):
        frame = Frame(op, "r-1", text)
        decoded = decode_frame(encode_frame(frame).encode("utf-8"), max_bytes=None)
        assert decoded.data == text
        assert decoded.op is op
        assert decoded.request_id == "r-1"


def test_surrogateescape_bytes_survive_the_wire() -> None:
    # A device read b"...\xe6\x97" (half of 日) and carried it with surrogateescape.
    raw_bytes = "日本".encode()[:4]
    text = raw_bytes.decode("utf-8", "surrogateescape")
    wire = encode_frame(Frame.command(text=text, request_id="r")).encode("utf-8")
    wire.decode("utf-8")  # strict: the message itself is valid UTF-8
    back = decode_frame(wire).data
    assert back.encode("utf-8", "surrogateescape") == raw_bytes


@SETTINGS
@given(valid_frames(), st.booleans())
def test_encoded_size_is_the_utf8_length(frame: Frame, pretty: bool) -> None:
    assert encoded_size(frame) == len(encode_frame(frame).encode("utf-8"))
    if pretty:
        assert "\t" in encode_frame(frame, pretty=True)


def test_compact_encoding_shape() -> None:
    text = encode_frame(Frame(Op.PING, "p-1"))
    assert text == '{"operation_type":"ping","tunnel_service_type":"ssh","request_id":"p-1","data":null}'
    assert json.loads(encode_frame(Frame.command("c", "ls")))["operation_type"] == "command"


def test_constructors() -> None:
    assert Frame.connect("r", "u", "p").data == {"username": "u", "password": "p"}
    assert Frame.connect("r", "u", "p", port=2222).data == {"username": "u", "password": "p", "port": 2222}
    assert Frame.command("r", "ls\n") == Frame(Op.COMMAND, "r", "ls\n")
    d = Frame.disconnect("r", 408, "idle")  # type: ignore[arg-type]
    assert d.data == {"status_code": "408", "status_msg": "idle"}
    assert Status.SSH_IDLE == "408" and Status.CHANNEL_FAILED == "400"
    assert str(Op.COMMAND) == "command"
    for frame in (Frame.connect("r", "u", "p", 22), Frame.command("r", "x"), d):
        assert decode_frame(encode_frame(frame)) == frame


# ---------------------------------------------------------------------------
# What real devices and the platform send


C_SDK_CONNECT_RESPONSE = (
    '{\n\t"operation_type":\t"connect_response",\n\t"tunnel_service_type":\t"ssh",\n\t"request_id":\t"b7c1"\n}'
)
C_SDK_COMMAND_RESPONSE = (
    '{\n\t"operation_type":\t"command_response",\n\t"tunnel_service_type":\t"ssh",\n'
    '\t"request_id":\t"b7c1",\n\t"data":\t"total 0\\r\\n\\u001b[0m$ "\n}'
)
C_SDK_IDLE_DISCONNECT = (
    '{\n\t"operation_type":\t"disconnect",\n\t"tunnel_service_type":\t"ssh",\n'
    '\t"request_id":\t"SSH_timeout_disconnect",\n\t"data":\t{\n\t\t"status_code":\t"408",\n'
    '\t\t"status_msg":\t"SSH idle timeout"\n\t}\n}'
)


def test_c_sdk_connect_response_without_data() -> None:
    frame = decode_frame(C_SDK_CONNECT_RESPONSE)
    assert frame == Frame(Op.CONNECT_RESPONSE, "b7c1", None)
    assert decode_frame(C_SDK_CONNECT_RESPONSE.encode()) == frame


def test_c_sdk_pretty_printed_command_response() -> None:
    frame = decode_frame(C_SDK_COMMAND_RESPONSE)
    assert frame.op is Op.COMMAND_RESPONSE
    assert frame.data == "total 0\r\n\x1b[0m$ "


def test_c_sdk_idle_disconnect() -> None:
    frame = decode_frame(C_SDK_IDLE_DISCONNECT)
    assert frame.op is Op.DISCONNECT
    assert frame.request_id == SSH_IDLE_REQUEST_ID
    assert frame.data == {"status_code": Status.SSH_IDLE, "status_msg": "SSH idle timeout"}


def test_csharp_connect_response_with_shell_output() -> None:
    frame = decode_frame(raw(operation_type="connect_response", tunnel_service_type="ssh", request_id="r", data="$ "))
    assert frame.data == "$ "


@pytest.mark.parametrize("port", ["22", 22, "2222", 65535, 1])
def test_connect_port_as_number_or_digit_string(port: object) -> None:
    msg = raw(operation_type="connect", request_id="r", data={"username": "u", "password": "p", "port": port})
    frame = decode_frame(msg)
    assert frame.op is Op.CONNECT
    assert int(frame.data["port"]) == int(port)  # type: ignore[call-overload]


@pytest.mark.parametrize("op", ["connect_tunnel", "ping", "pong", "connect_response"])
def test_null_or_absent_data(op: str) -> None:
    assert decode_frame(raw(operation_type=op, request_id="r")).data is None
    assert decode_frame(raw(operation_type=op, request_id="r", data=None)).data is None


def test_missing_service_type_defaults_to_ssh() -> None:
    assert decode_frame(raw(operation_type="ping", request_id="r")).service_type == SERVICE_TYPE


def test_disconnect_status_code_number_and_null_data() -> None:
    frame = decode_frame(raw(operation_type="disconnect", request_id="r", data={"status_code": 400, "status_msg": "x"}))
    assert frame.data["status_code"] == 400
    assert decode_frame(raw(operation_type="disconnect", request_id="r")).data is None


def test_unknown_extra_fields_are_ignored() -> None:
    frame = decode_frame(raw(operation_type="ping", request_id="r", extra=[1, 2], data=None))
    assert frame == Frame(Op.PING, "r")


# ---------------------------------------------------------------------------
# Invalid input: ProtocolError naming the problem


def err(message: str | bytes, *, max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_frame(message, max_bytes=max_bytes)
    text = str(info.value)
    assert text and "\n" not in text  # one sentence
    return text


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ("", "not JSON"),
        ("hello", "not JSON"),
        ("{", "not JSON"),
        ('{"operation_type": "ping",}', "not JSON"),
        ("{'operation_type': 'ping'}", "not JSON"),
        ("[]", "array"),
        ('[{"operation_type": "ping", "request_id": "r"}]', "array"),
        ("3", "number"),
        ("-1.5e3", "number"),
        ('"ping"', "string"),
        ("null", "null"),
        ("true", "boolean"),
        ("{}", "no operation_type"),
        ('{"request_id": "r", "data": null}', "no operation_type"),
    ],
)
def test_not_a_frame_object(message: str, needle: str) -> None:
    assert needle in err(message)


@pytest.mark.parametrize("value", [5, None, True, ["ping"], {"op": "ping"}, 1.5])
def test_operation_type_must_be_a_string(value: object) -> None:
    assert "operation_type must be a string" in err(raw(operation_type=value, request_id="r"))


@pytest.mark.parametrize("value", ["pingg", "PING", "Command", "", "connect_tunnel ", "ssh"])
def test_unknown_operation_type(value: str) -> None:
    text = err(raw(operation_type=value, request_id="r"))
    assert "unknown operation_type" in text
    assert repr(value) in text
    assert "command_response" in text  # lists what is expected


@pytest.mark.parametrize("op", [op.value for op in Op])
def test_missing_request_id(op: str) -> None:
    text = err(raw(operation_type=op, data=None))
    assert "no request_id" in text and op in text


@pytest.mark.parametrize("value", [1, None, True, ["r"], {"id": "r"}, 2.0])
def test_request_id_must_be_a_string(value: object) -> None:
    assert "request_id must be a string" in err(raw(operation_type="ping", request_id=value))


@pytest.mark.parametrize("value", [1, None, ["ssh"], {}])
def test_service_type_must_be_a_string(value: object) -> None:
    assert "tunnel_service_type must be a string" in err(
        raw(operation_type="ping", request_id="r", tunnel_service_type=value)
    )


_BAD_DATA: dict[str, list[object]] = {
    "connect_tunnel": [1, True, [], 2.5],
    "connect": [None, "u:p", 1, True, [], ["u", "p"]],
    "connect_response": [1, False, [], [1]],
    "command": [None, 1, True, [], {}, {"text": "ls"}],
    "command_response": [None, 1, False, ["x"], {}],
    "disconnect": ["408", 408, True, []],
    "ping": [1, True, []],
    "pong": [0, False, [None]],
}


@pytest.mark.parametrize(("op", "data"), [(op, data) for op, values in _BAD_DATA.items() for data in values], ids=repr)
def test_wrong_data_type_per_op(op: str, data: object) -> None:
    text = err(raw(operation_type=op, request_id="r", data=data))
    assert f"{op} data must be" in text


def test_command_without_data_is_rejected() -> None:
    assert "command data must be a string, got null" in err(raw(operation_type="command", request_id="r"))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"password": "p"}, "data.username"),
        ({"username": "u"}, "data.password"),
        ({}, "data.username"),
        ({"username": None, "password": "p"}, "data.username"),
        ({"username": "u", "password": 1234}, "data.password"),
        ({"username": ["u"], "password": "p"}, "data.username"),
    ],
)
def test_connect_without_username_or_password(data: dict[str, object], needle: str) -> None:
    assert needle in err(raw(operation_type="connect", request_id="r", data=data))


@pytest.mark.parametrize("port", [0, -1, 65536, 10**9, "abc", "", " 22", "22 ", "-22", "0", 22.5, True, None, [22]])
def test_connect_bad_port(port: object) -> None:
    msg = raw(operation_type="connect", request_id="r", data={"username": "u", "password": "p", "port": port})
    assert "data.port" in err(msg)


@pytest.mark.parametrize("port", ["²", "٢٢" + "²", "9" * 5000])
def test_connect_port_string_that_int_cannot_parse(port: str) -> None:
    msg = raw(operation_type="connect", request_id="r", data={"username": "u", "password": "p", "port": port})
    assert "data.port" in err(msg)


@pytest.mark.parametrize("value", [[1], {"a": 1}, 1.5])
def test_disconnect_bad_status_fields(value: object) -> None:
    for key in ("status_code", "status_msg"):
        data = {"status_code": "400", "status_msg": "m", key: value}
        assert f"disconnect data.{key}" in err(raw(operation_type="disconnect", request_id="r", data=data))


@pytest.mark.parametrize(
    ("message", "field", "raw"),
    [
        (b'{"operation_type":"ping","request_id":"\xff"}', "request_id", b"\xff"),
        (b'{"operation_type":"command","request_id":"r","data":"\xe6\x97"}', "data", b"\xe6\x97"),  # truncated
        (b'{"operation_type":"command","request_id":"r","data":"\xed\xb2\x80"}', "data", b"\xed\xb2\x80"),  # surrogate
        (b'{"operation_type":"command","request_id":"r","data":"\xc0\xaf"}', "data", b"\xc0\xaf"),  # overlong
    ],
)
def test_invalid_utf8_bytes_are_carried_not_refused(message: bytes, field: str, raw: bytes) -> None:
    # The C SDK copies raw terminal bytes into its JSON: each byte that is not UTF-8
    # becomes a lone surrogate \udc80-\udcff, as a \udcXX escape of encode_frame would.
    value = getattr(decode_frame(message), field)
    assert value.encode("utf-8", "surrogateescape") == raw
    assert all("\udc80" <= c <= "\udcff" for c in value)
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        require_utf8(message)  # for whoever must refuse them (the platform, from an application)


def test_invalid_utf8_outside_a_string_is_not_json() -> None:
    assert "not JSON" in err(b"\x80")
    assert "not JSON" in err(b'{"operation_type":\xff"ping","request_id":"r"}')
    message = encode_frame(Frame.command("r", "\udc80 é"))
    assert require_utf8(message.encode()) == message  # escapes: valid UTF-8; the text comes back


def test_a_character_split_between_two_raw_c_sdk_messages_is_reassembled() -> None:
    def c_sdk(raw: bytes) -> bytes:  # pretty JSON with the bytes copied raw, as cJSON prints them
        text = raw.decode("utf-8", "surrogateescape")
        return json.dumps(
            {"operation_type": "command_response", "tunnel_service_type": "ssh", "request_id": "r", "data": text},
            indent="\t",
            ensure_ascii=False,
        ).encode("utf-8", "surrogateescape")

    output = "é中\r\n".encode() * 3
    first, second = c_sdk(output[:4]), c_sdk(output[4:] + b"\xff")  # 中 split; then a byte that is no character
    assert b'\xe4\xb8"' in first and not any(_valid_utf8(m) for m in (first, second))
    term = TerminalText()
    text = term.feed(decode_frame(first).data) + term.feed(decode_frame(second).data) + term.flush()
    assert text == "é中\n" * 3 + "\ufffd"


def _valid_utf8(message: bytes) -> bool:
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@SETTINGS
@given(st.binary(max_size=80))
def test_raw_bytes_in_a_message_come_back_exactly(raw: bytes) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    message = json.dumps({"operation_type": "command_response", "request_id": "r", "data": text}, ensure_ascii=False)
    frame = decode_frame(message.encode("utf-8", "surrogateescape"), max_bytes=None)
    assert frame.data.encode("utf-8", "surrogateescape") == raw


def test_oversize_message() -> None:
    frame = Frame.command("r", "x" * 20_000)
    text = err(encode_frame(frame))
    assert "exceeds" in text and "10240" in text
    assert "exceeds" in err(encode_frame(frame).encode())
    # max_bytes=None switches the check off
    assert decode_frame(encode_frame(frame), max_bytes=None) == frame


@SETTINGS
@given(st.integers(min_value=90, max_value=3000), st.sampled_from(["x", "é", "😀", "\udc80", '"']))
def test_size_limit_boundary_is_exact(limit: int, char: str) -> None:
    base = encoded_size(Frame.command("r", ""))
    assume(base <= limit)
    per_char = encoded_size(Frame.command("r", char)) - base
    data = char * ((limit - base) // per_char)  # as close to the limit as this character allows
    assert encoded_size(Frame.command("r", data + char)) > limit
    message = encode_frame(Frame.command("r", data))
    size = len(message.encode("utf-8"))
    assert size <= limit
    assert decode_frame(message, max_bytes=size).data == data
    assert decode_frame(message.encode(), max_bytes=size).data == data
    assert "exceeds" in err(message, max_bytes=size - 1)
    assert "exceeds" in err(message.encode(), max_bytes=size - 1)


@pytest.mark.parametrize(
    "message",
    [
        "[" * 5000 + "]" * 5000,
        '{"a":' * 3000 + "1" + "}" * 3000,
        '{"operation_type":"ping","request_id":"r","data":' + '{"a":' * 3000 + "null" + "}" * 3001,
        " " + "[" * 5000 + "]" * 5000,  # not a value alone: json.loads has its say, and the same answer
    ],
)
def test_deeply_nested_json(message: str) -> None:
    assert "nested too deeply" in err(message, max_bytes=None)


def test_whitespace_around_the_value_is_json_and_a_second_value_is_not() -> None:
    ping = '{"operation_type":"ping","request_id":"r"}'
    assert decode_frame(f" \n{ping}\r\n ") == decode_frame(ping) == Frame(Op.PING, "r")
    assert err(ping + ping) == "message is not JSON: Extra data at line 1 column 43"
    assert err("") == "message is not JSON: Expecting value at line 1 column 1"


@SETTINGS
@given(valid_frames())
def test_compact_encoding_is_the_json_of_to_dict(frame: Frame) -> None:
    # encode_frame writes frames with text data without building the dict: the same text, byte for byte.
    text = json.dumps(frame.to_dict(), ensure_ascii=False, separators=(",", ":"))
    assert encode_frame(frame) == re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)


def test_moderately_nested_data_is_fine() -> None:
    message = '{"operation_type":"ping","request_id":"r","data":' + '{"a":' * 50 + "null" + "}" * 51
    assert decode_frame(message).op is Op.PING


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.text(CHARS, max_size=200)))
def test_garbage_raises_only_protocol_error(message: str | bytes) -> None:
    try:
        decode_frame(message)
    except ProtocolError as exc:
        assert str(exc)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["operation_type", "request_id", "data", "tunnel_service_type", "x"]),
        st.one_of(JSON_VALUES, st.sampled_from([op.value for op in Op])),
        max_size=5,
    )
)
def test_arbitrary_objects_raise_only_protocol_error(obj: dict[str, object]) -> None:
    try:
        frame = decode_frame(json.dumps(obj), max_bytes=None)
    except ProtocolError as exc:
        assert str(exc)
    else:
        assert frame.op.value == obj["operation_type"]


# ---------------------------------------------------------------------------
# Secrets


@SETTINGS
@given(st.text(min_size=1, max_size=40), st.one_of(st.none(), st.integers(1, 65535)))
def test_repr_never_shows_connect_password(secret: str, port: int | None) -> None:
    password = "PW<" + secret + ">"
    frame = Frame.connect("r-1", "ops", password, port)
    decoded = decode_frame(encode_frame(frame))
    for f in (frame, decoded):
        for shown in (repr(f), str(f), f"{f!r}", repr([f]), repr({"f": f})):
            assert password not in shown
            assert repr(password)[1:-1] not in shown
            assert "***" in shown
            assert "ops" in shown


def test_connect_errors_do_not_echo_password() -> None:
    password = "s3cr3t-PW"
    for data in (
        {"username": "u", "password": password, "port": "x"},
        {"username": 5, "password": password},
        {"username": "u", "password": password, "port": 0},
    ):
        assert password not in err(raw(operation_type="connect", request_id="r", data=data))


def test_repr_truncates_long_data() -> None:
    frame = Frame(Op.COMMAND_RESPONSE, "r", "y" * 10_000)
    assert len(repr(frame)) < 200
    assert "..." in repr(frame)


# ---------------------------------------------------------------------------
# chunk_text


VALID_CHARS = st.one_of(st.characters(), AWKWARD, NON_BMP)


def chunk_strategy(draw: st.DrawFn, *, valid: bool) -> tuple[str, int]:
    """Text of about 0..3 times the budget, made of a repeated piece and a tail."""
    chars = VALID_CHARS if valid else CHARS
    max_bytes = draw(
        st.one_of(st.integers(64, 130), st.integers(130, 600), st.integers(600, 20_000), st.sampled_from([10_240]))
    )
    piece = draw(st.text(chars, min_size=1, max_size=40))
    piece_bytes = len(piece.encode("utf-8", "surrogatepass"))
    reps = draw(st.integers(1, max(1, 3 * max_bytes // piece_bytes)))
    tail = draw(st.text(chars, max_size=10))
    return piece * reps + tail, max_bytes


@st.composite
def chunk_cases(draw: st.DrawFn) -> tuple[str, int, str, Op]:
    text, max_bytes = chunk_strategy(draw, valid=draw(st.booleans()))
    request_id = draw(st.one_of(st.just("r-1"), st.text(CHARS, max_size=20)))
    op = draw(st.sampled_from([Op.COMMAND_RESPONSE, Op.COMMAND]))
    return text, max_bytes, request_id, op


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_cases())
@example(("😀" * 5000, 10_240, "r-1", Op.COMMAND_RESPONSE))
@example(('"' * 8000, 10_240, "r-1", Op.COMMAND_RESPONSE))
@example(("\x01" * 3000, 10_240, "r-1", Op.COMMAND_RESPONSE))
@example(("\udc80" * 3000 + "a", 2048, "r-1", Op.COMMAND_RESPONSE))
@example(("a" * 100, 100, "r-1", Op.COMMAND_RESPONSE))
def test_chunk_text_invariants(case: tuple[str, int, str, Op]) -> None:
    text, max_bytes, request_id, op = case
    overhead = encoded_size(Frame(op, request_id, ""))
    if max_bytes - overhead < 6:
        with pytest.raises(ValueError, match="max_bytes"):
            list(chunk_text(text, request_id, op=op, max_bytes=max_bytes))
        return
    frames = list(chunk_text(text, request_id, op=op, max_bytes=max_bytes))
    assert frames
    assert "".join(f.data for f in frames) == text
    has_lone_surrogates = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    for i, f in enumerate(frames):
        assert f.op is op and f.request_id == request_id
        assert f.data, "no chunk is empty"
        wire = encode_frame(f).encode("utf-8")
        assert len(wire) == encoded_size(f) <= max_bytes
        assert decode_frame(wire, max_bytes=max_bytes) == f
        if not has_lone_surrogates:
            f.data.encode("utf-8")  # strict: no character split between chunks
        if i + 1 < len(frames):
            # as full as possible: one more character would not have fitted
            nxt = frames[i + 1].data[0]
            assert encoded_size(Frame(op, request_id, f.data + nxt)) > max_bytes


@pytest.mark.parametrize("max_bytes", [64, 80, 93, 98, 99])
def test_chunk_text_too_small_max_bytes(max_bytes: int) -> None:
    # overhead of an empty command_response with request id "abc" is 94 bytes; 6 more are needed
    assert encoded_size(Frame(Op.COMMAND_RESPONSE, "abc", "")) == 94
    with pytest.raises(ValueError, match="max_bytes"):
        list(chunk_text("hello", "abc", max_bytes=max_bytes))


def test_chunk_text_smallest_workable_max_bytes() -> None:
    text = 'a"\x01😀\udc80é'
    frames = list(chunk_text(text, "abc", max_bytes=100))
    assert "".join(f.data for f in frames) == text
    assert all(encoded_size(f) <= 100 for f in frames)


def test_chunk_text_empty_yields_nothing() -> None:
    assert list(chunk_text("", "r")) == []
    assert list(chunk_text("", "r", max_bytes=10)) == []


def test_chunk_text_small_text_is_one_frame() -> None:
    assert list(chunk_text("hello\r\n", "r")) == [Frame(Op.COMMAND_RESPONSE, "r", "hello\r\n")]


def test_chunk_text_default_limit_and_large_input() -> None:
    text = ('line ✓ 日本 😀 "q" \\ \t\r\n' * 20_000)[:300_000]
    frames = list(chunk_text(text, "r"))
    assert "".join(f.data for f in frames) == text
    assert max(encoded_size(f) for f in frames) <= DEFAULT_MAX_MESSAGE_BYTES
    assert min(encoded_size(f) for f in frames[:-1]) > DEFAULT_MAX_MESSAGE_BYTES - 12


# ---------------------------------------------------------------------------
# encode_chunks: each frame encoded once, cut from the text escaped once

#: What goes around the data of a command_response with request id "r".
PREFIX = b'{"operation_type":"command_response","tunnel_service_type":"ssh","request_id":"r","data":"'
SUFFIX = b'"}'


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_cases())
@example(("a" * 9000 + "\x01" * 500, 10_240, "r-1", Op.COMMAND_RESPONSE))
@example(("\\" * 7000, 10_240, "r-1", Op.COMMAND_RESPONSE))
@example(("é\r\n" * 5000, 10_240, "r-1", Op.COMMAND_RESPONSE))
def test_encode_chunks_are_the_chunked_frames_encoded(case: tuple[str, int, str, Op]) -> None:
    text, max_bytes, request_id, op = case
    if max_bytes - encoded_size(Frame(op, request_id, "")) < 6:
        with pytest.raises(ValueError, match="max_bytes"):
            list(encode_chunks(text, request_id, op=op, max_bytes=max_bytes))
        return
    messages = list(encode_chunks(text, request_id, op=op, max_bytes=max_bytes))
    frames = list(chunk_text(text, request_id, op=op, max_bytes=max_bytes))
    # Byte for byte what encode_frame writes for each frame chunk_text makes (whose invariants
    # are checked above: every piece fits, none could take one more character).
    assert messages == [encode_frame(f).encode("utf-8") for f in frames]
    assert "".join(decode_frame(m, max_bytes=max_bytes).data for m in messages) == text


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(st.one_of(st.characters(max_codepoint=127), st.sampled_from('"\\\n\r\t\b\f\x00\x1b\x7f')), max_size=300),
    st.integers(98, 400),
)
@example("line\r\n" * 100, 98)
@example('"\\\x1b[0m\t' * 100, 101)
def test_encode_chunks_of_ascii_bytes_are_those_of_their_text(text: str, max_bytes: int) -> None:
    # Terminal output as read: ASCII bytes are escaped without decoding, to the very same messages.
    assert list(encode_chunks(text.encode(), "r", max_bytes=max_bytes)) == list(
        encode_chunks(text, "r", max_bytes=max_bytes)
    )


def test_encode_chunks_refuses_bytes_that_are_not_ascii() -> None:
    with pytest.raises(ValueError, match="only when they are ASCII"):
        list(encode_chunks("é".encode(), "r"))
    assert list(encode_chunks(b"", "r")) == []
    assert list(encode_chunks(b'a"\\\n\x01', "r")) == [PREFIX + b'a\\"\\\\\\n\\u0001' + SUFFIX]


def test_encode_chunks_shape() -> None:
    assert PREFIX + SUFFIX == encode_frame(Frame(Op.COMMAND_RESPONSE, "r", "")).encode()
    assert list(encode_chunks("hi\r\n", "r")) == [PREFIX + b"hi\\r\\n" + SUFFIX]
    assert list(encode_chunks("", "r")) == []
    assert list(encode_chunks("ls\n", "c-1", op=Op.COMMAND)) == [encode_frame(Frame.command("c-1", "ls\n")).encode()]


@pytest.mark.parametrize(
    ("text", "budget", "pieces"),
    [
        ("abcdefgh", 6, [b"abcdef", b"gh"]),
        # not inside an escape: \u0001 takes 6 bytes, \n 2
        ("abcde\x01fg", 6, [b"abcde", b"\\u0001", b"fg"]),
        ("abcde\nfg", 6, [b"abcde", b"\\nfg"]),
        ("abcd\r\nfg", 6, [b"abcd\\r", b"\\nfg"]),
        # backslashes pair up from the piece's start: the 7th escaped one opens "\n", the 2nd closes "\\"
        ("abcd\\e", 6, [b"abcd\\\\", b"e"]),
        ("\\\\\\\n", 7, [b"\\\\\\\\\\\\", b"\\n"]),
        ("\\\\\\\\", 7, [b"\\\\\\\\\\\\", b"\\\\"]),
        # not inside a UTF-8 character
        ("ab日本", 6, ["ab日".encode(), "本".encode()]),
        ("abc😀d", 6, [b"abc", "😀d".encode()]),
        # a byte a device could not decode: one \udcXX escape, whole
        ("abc\udc80", 6, [b"abc", b"\\udc80"]),
        # a high and a low surrogate's escapes stay together (JSON reads them as one character) ...
        ("x\ud83d\ude00", 12, [b"x", b"\\ud83d\\ude00"]),
        # ... unless the pair alone is over the budget
        ("\ud83d\ude00", 11, [b"\\ud83d", b"\\ude00"]),
    ],
)
def test_encode_chunks_cut_only_where_a_piece_may_end(text: str, budget: int, pieces: list[bytes]) -> None:
    max_bytes = len(PREFIX) + len(SUFFIX) + budget
    assert list(encode_chunks(text, "r", max_bytes=max_bytes)) == [PREFIX + piece + SUFFIX for piece in pieces]


def test_encode_chunks_of_a_surrogate_pair_decode_as_the_receiver_reads_them() -> None:
    together = list(encode_chunks("x\ud83d\ude00", "r", max_bytes=len(PREFIX) + len(SUFFIX) + 12))
    assert [decode_frame(m).data for m in together] == ["x", "😀"]
    assert [f.data for f in chunk_text("x\ud83d\ude00", "r", max_bytes=len(PREFIX) + len(SUFFIX) + 12)] == ["x", "😀"]
    apart = list(encode_chunks("\ud83d\ude00", "r", max_bytes=len(PREFIX) + len(SUFFIX) + 11))
    assert [decode_frame(m).data for m in apart] == ["\ud83d", "\ude00"]


def test_encode_chunks_terminal_output_fills_frames() -> None:
    line = "tunnelnb-bench 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEF\r\n"  # 61 characters, 63 bytes escaped
    # 92 bytes of framing leave 10,148 for data; 10,148 = 161 lines + 5 bytes: no cut falls in an escape.
    messages = list(encode_chunks(line * 1000, "r"))
    assert [len(m) for m in messages] == [10_240] * 6 + [63_000 - 6 * 10_148 + 92]
    assert "".join(decode_frame(m).data for m in messages) == line * 1000
    # With a 9-character id, 10,140 bytes = 160 lines + 60: the first cut would fall inside "\r".
    prefix = PREFIX.replace(b'"r"', b'"r-1234567"')
    messages = list(encode_chunks(line * 1000, "r-1234567"))
    assert len(messages[0]) == 10_239 and messages[0].endswith(b'ABCDEF"}')
    assert messages[1].startswith(prefix + b"\\r\\ntunnelnb-bench")
    assert all(len(m) in (10_239, 10_240) for m in messages[:-1])
    assert "".join(decode_frame(m).data for m in messages) == line * 1000


# ---------------------------------------------------------------------------
# RequestIds


def test_request_ids_unique() -> None:
    ids = RequestIds()
    many = [ids.next() for _ in range(20_000)]
    assert len(set(many)) == len(many)
    assert all(isinstance(i, str) and i for i in many)


def test_request_ids_unique_across_instances() -> None:
    a, b = RequestIds(), RequestIds()
    first = {a.next() for _ in range(5000)}
    second = {b.next() for _ in range(5000)}
    assert not first & second


def test_request_ids_iterator_and_prefix() -> None:
    ids = RequestIds("tun")
    assert next(ids) == "tun-1"
    assert ids.next() == "tun-2"
    assert iter(ids) is ids
    assert [x for _, x in zip(range(3), ids, strict=False)] == ["tun-3", "tun-4", "tun-5"]

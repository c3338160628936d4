"""Verified output, sans-I/O (tunnelnb.protocol.verify; docs/architecture.md, *Verified output*).

POSIX ``cksum`` against the real binary; the dump the device's shell prints
(``verified_script``, ``reread_script``, ``cleanup_command`` run by real
``sh`` and ``bash`` processes, no PTY, no sockets) against what the reader
expects; and the reader against damage: stray characters anywhere, lost
blocks, damaged headers and trailers.  It reports exactly the blocks that were
damaged and never accepts bytes that differ from the device's.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnelnb.protocol.cksum import cksum, cksum_reference
from tunnelnb.protocol.dump import DumpReader, Trailer, block_bytes
from tunnelnb.protocol.shell import MAX_TYPED_LINE, CommandParser, Finished, Output
from tunnelnb.protocol.verify import (
    BLOCK_BYTES,
    PART_BYTES,
    PARTS_PER_BLOCK,
    cleanup_command,
    reread_script,
    temp_file_glob,
    verified_script,
)

SETTINGS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
SHELLS = [s for s in ("/bin/sh", "/bin/bash") if os.access(s, os.X_OK)]
CKSUM = shutil.which("cksum")


# -- POSIX cksum ------------------------------------------------------------------------------


def real_cksum(data: bytes) -> tuple[int, int]:
    out = subprocess.run([CKSUM or "cksum"], input=data, capture_output=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(CKSUM is None, reason="needs the cksum binary (coreutils)")
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a",
        b"\x00",
        b"\xff",
        b"123456789",
        bytes(range(256)),
        random.Random(1).randbytes(255),
        random.Random(2).randbytes(256),
        random.Random(3).randbytes(65_537),
        random.Random(4).randbytes(1 << 20),
    ],
    ids=lambda d: f"{len(d)}B",
)
def test_cksum_is_the_cksum_binarys(data: bytes) -> None:
    crc, size = real_cksum(data)
    assert size == len(data)
    assert cksum(data) == crc
    assert cksum_reference(data) == crc


def test_known_cksum_values() -> None:
    assert cksum(b"") == 4294967295
    assert cksum(b"123456789") == 0x377A6011  # the CRC-32/CKSUM check value
    assert cksum(b"123456789\n") == 1552147931  # `echo 123456789 | cksum`


def test_cksum_of_a_megabyte_is_fast() -> None:
    data = os.urandom(1 << 20)
    t0 = time.perf_counter()
    cksum(data)
    assert time.perf_counter() - t0 < 0.3
    t0 = time.perf_counter()
    cksum_reference(data)
    assert time.perf_counter() - t0 < 3.0  # the textbook table version, within ~0.3 s/MB on a laptop


# -- what a device prints -----------------------------------------------------------------------


def encoded_lines(piece: bytes, encoding: str) -> list[str]:
    """``base64`` (76 a line) or ``od -An -v -tx1`` (16 bytes a line) of ``piece``."""
    if encoding == "b64":
        text = base64.b64encode(piece).decode()
        return [text[i : i + 76] for i in range(0, len(text), 76)]
    return ["".join(f" {b:02x}" for b in piece[i : i + 16]) for i in range(0, len(piece), 16)]


def dump(
    data: bytes,
    encoding: str = "b64",
    *,
    kind: str = "B",
    indices: list[int] | None = None,
    trailer: bool = True,
) -> list[tuple[int | None, list[str]]]:
    """The dump as a device prints it, as ``(index, lines)`` groups: each piece's header and data, then the trailer."""
    unit = BLOCK_BYTES if kind == "B" else PART_BYTES
    count = -(-len(data) // unit)
    groups: list[tuple[int | None, list[str]]] = []
    for i in range(count) if indices is None else indices:
        piece = data[i * unit : (i + 1) * unit]
        if piece:
            header = f"#TNB {kind} {encoding} {i} {i} {cksum(piece)} {len(piece)}"
            groups.append((i, [header, *encoded_lines(piece, encoding)]))
    if trailer:
        groups.append((None, [f"#TNB T {encoding} {cksum(data)} {len(data)}"]))
    return groups


def text_of(groups: list[tuple[int | None, list[str]]]) -> str:
    return "".join(line + "\n" for _, lines in groups for line in lines)


def blocks_of(data: bytes) -> dict[int, bytes]:
    return {i: data[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES] for i in range(-(-len(data) // BLOCK_BYTES))}


# -- the scripts in real shells -------------------------------------------------------------------


class Shell:
    """A real non-interactive shell reading typed scripts from a pipe (what matters here: the same shell state)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        self.seq = 0
        self.tag = os.urandom(4).hex()
        self.markers: list[str] = []

    def marker(self) -> str:
        self.seq += 1
        self.markers.append(f"{self.tag}x{self.seq}")
        return self.markers[-1]

    def type(self, script: str) -> None:
        for line in script.split("\n"):
            assert len(line.encode("utf-8", "surrogateescape")) < MAX_TYPED_LINE
        assert self.proc.stdin is not None
        self.proc.stdin.write(script.encode("utf-8", "surrogateescape"))
        self.proc.stdin.flush()

    def read(self, marker: str, timeout: float = 30) -> tuple[str, Finished]:
        """The text between ``marker``'s markers and its end marker, as a session's parser finds them."""
        assert self.proc.stdout is not None
        parser, out = CommandParser(marker), []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            assert line, "the shell exited"
            for event in parser.feed(line.decode("utf-8", "surrogateescape")):
                if isinstance(event, Output):
                    out.append(event.text)
                else:
                    return "".join(out), event
        raise TimeoutError(marker)

    def run(self, script_of, *args, **kwargs) -> tuple[str, Finished, str]:
        marker = self.marker()
        self.type(script_of(marker, *args, **kwargs))
        return (*self.read(marker), marker)

    def plain(self, command: str) -> str:
        """A command's output, unframed (a test's own look at the shell)."""
        marker = self.marker()
        self.type(f"{command}\necho __TNB_B_{marker}__\n")
        assert self.proc.stdout is not None
        lines = []
        while (line := self.proc.stdout.readline().decode()) != f"__TNB_B_{marker}__\n":
            lines.append(line)
        return "".join(lines)

    def close(self) -> None:
        assert self.proc.stdin is not None
        for start in range(0, len(self.markers), 10):  # whatever a test left
            self.type(cleanup_command(self.markers[start : start + 10]) + "\n")
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest) -> Iterator[Shell]:
    sh = Shell([request.param])
    try:
        yield sh
    finally:
        sh.close()


@pytest.fixture
def no_base64(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has the tools a dump uses, but no ``base64``: the dump is hex."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "dd", "cksum", "od", "mktemp", "rm", "head", "printf"):
        path = shutil.which(tool)
        assert path is not None, tool
        (bin_dir / tool).symlink_to(path)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}


@pytest.mark.parametrize("size", [0, 1, 57, 3071, 3072, 3073, 3 * 3072 + 5])
def test_the_shells_dump_is_what_the_reader_expects(shell: Shell, tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    (tmp_path / "f").write_bytes(data)
    text, finished, _ = shell.run(verified_script, f"cat '{tmp_path / 'f'}'")
    assert finished == Finished(0)
    assert text == text_of(dump(data))
    reader = DumpReader()
    reader.feed(text)
    assert reader.data() == data and reader.missing() == []


def test_without_base64_the_dump_is_hex(no_base64: dict[str, str], tmp_path: Path) -> None:
    data = random.Random(5).randbytes(2 * BLOCK_BYTES + 100)
    (tmp_path / "f").write_bytes(data)
    sh = Shell(["/bin/sh"], env={**no_base64, "TMPDIR": str(tmp_path)})
    try:
        text, finished, _ = sh.run(verified_script, f"cat '{tmp_path / 'f'}'; exit_code_is=3; (exit 3)")
        assert finished == Finished(3)
        assert text == text_of(dump(data, "hex"))
        reader = DumpReader()
        reader.feed(text)
        assert reader.data() == data and reader.trailer() == Trailer("hex", cksum(data), len(data))
        text, finished, _ = sh.run(reread_script, [1, 9, 10])
        assert finished == Finished(3)
        assert text == text_of(dump(data, "hex", kind="P", indices=[1, 9, 10]))
    finally:
        sh.close()


def test_a_verified_command_runs_in_the_current_shell(shell: Shell, tmp_path: Path) -> None:
    """cd, variables and functions persist; stdin is /dev/null; stderr is in the output; the exit status kept."""
    command = f"cd '{tmp_path}'; X=kept; f() {{ echo fn; }}; cat; echo out; echo err >&2; (exit 7)"
    text, finished, _ = shell.run(verified_script, command)
    assert finished == Finished(7)
    reader = DumpReader()
    reader.feed(text)
    assert reader.data() == b"out\nerr\n"
    text, finished, _ = shell.run(verified_script, 'pwd; echo "$X"; f')
    reader = DumpReader()
    reader.feed(text)
    assert reader.data() == f"{tmp_path}\nkept\nfn\n".encode()
    # The file and the status stay for re-reads; the rest of the __tnb_ variables are gone.
    assert shell.plain("set | grep '^__tnb_' | cut -d= -f1 | sort").split() == ["__tnb_f", "__tnb_s"]
    path = shell.plain('echo "$__tnb_f"').strip()
    assert Path(path).name.startswith("tnb-") and Path(path).exists()
    assert shell.plain("echo $__tnb_s") == "0\n"


def test_the_cleanup_deletes_the_files_and_unsets_the_variables(shell: Shell) -> None:
    markers = []
    for _ in range(3):
        _, finished, marker = shell.run(verified_script, "echo x")
        assert finished == Finished(0)
        markers.append(marker)
    files = set(shell.plain(f"ls -d {' '.join(temp_file_glob(m) for m in markers)} 2>/dev/null").split())
    assert len(files) == 3
    shell.type(cleanup_command(markers) + "\n")
    assert shell.plain(f"ls -d {' '.join(temp_file_glob(m) for m in markers)} 2>/dev/null") == ""
    assert shell.plain("set | grep -c '^__tnb_'") == "0\n"
    # Nothing left to delete: still quiet and successful.
    assert shell.plain(f"{cleanup_command(markers)}; echo $?") == "0\n"


def test_a_re_read_prints_the_parts_asked_for_and_the_trailer(shell: Shell, tmp_path: Path) -> None:
    data = random.Random(6).randbytes(3 * BLOCK_BYTES + 10)
    (tmp_path / "f").write_bytes(data)
    shell.run(verified_script, f"cat '{tmp_path / 'f'}'; false")
    text, finished, _ = shell.run(reread_script, [0, 5, 11, 12, 13, 99])
    assert finished == Finished(1)  # the command's status, kept
    assert text == text_of(dump(data, kind="P", indices=[0, 5, 11, 12]))  # 13 and 99 are past the end
    text, finished, _ = shell.run(reread_script, [], tail_from=10)
    assert text == text_of(dump(data, kind="P", indices=[10, 11, 12]))
    # A shell that lost the file (a new one): nothing, and a status no shell gives.
    shell.type(cleanup_command([]) + "\n")
    text, finished, _ = shell.run(reread_script, [0])
    assert text == ""
    assert finished.exit_code is None and "999" in finished.problem


def test_every_typed_line_is_short(tmp_path: Path) -> None:
    for command in ("x" * 20_000, "a\tb", "echo " + "y" * (MAX_TYPED_LINE - 12), "l1\n" * 500):
        for line in verified_script("m1", command).split("\n"):
            assert len(line.encode()) < MAX_TYPED_LINE, line[:80]
    script = reread_script("m2", range(0, 400_000, 3), tail_from=123_456)
    assert max(len(line) for line in script.split("\n")) < MAX_TYPED_LINE
    assert max(len(line) for line in cleanup_command([f"abcdef01x{i}" for i in range(10)]).split("\n")) < 2000


def test_a_long_verified_command_runs_exactly(shell: Shell) -> None:
    command = "printf '%s' " + "z" * 5000 + "; printf '\\t<-tab\\n'"
    text, finished, _ = shell.run(verified_script, command)
    reader = DumpReader()
    reader.feed(text)
    assert (finished, reader.data()) == (Finished(0), b"z" * 5000 + b"\t<-tab\n")


def test_marker_ids_are_checked() -> None:
    for bad in ("a b", "a;b", "", "x/1"):
        with pytest.raises(ValueError):
            verified_script(bad, "true")
        with pytest.raises(ValueError):
            temp_file_glob(bad)


# -- the reader ----------------------------------------------------------------------------------


DATA = random.Random(7).randbytes(5 * BLOCK_BYTES + 1000)


def read(text: str, *, repair: bool = True) -> DumpReader:
    reader = DumpReader(repair=repair)
    reader.feed(text)
    return reader


def test_a_clean_dump_reads_back_exactly() -> None:
    for encoding in ("b64", "hex"):
        reader = read(text_of(dump(DATA, encoding)))
        assert reader.data() == DATA
        assert reader.blocks == blocks_of(DATA)
        assert reader.wanted() == ([], None)


def test_empty_output() -> None:
    reader = read(text_of(dump(b"")))
    assert reader.data() == b"" and reader.missing() == []


def test_no_temporary_file() -> None:
    reader = read("#TNB N\n")
    assert reader.no_file and reader.data() is None


def test_a_lost_block_is_the_one_reported_and_read_again_in_parts() -> None:
    groups = dump(DATA)
    del groups[3]
    reader = read(text_of(groups))
    assert reader.data() is None
    assert reader.missing() == [3]
    assert reader.wanted() == ([12, 13, 14, 15], None)
    assert reader.failed() == "1 of 6 blocks failed their checksum after 1 read"
    reader.feed(text_of(dump(DATA, kind="P", indices=[12, 13, 14, 15])))
    assert reader.data() == DATA


def test_parts_of_the_last_block() -> None:
    groups = dump(DATA)
    del groups[5]  # the last block: 1,000 bytes, two parts
    reader = read(text_of(groups))
    assert reader.missing() == [5]
    parts, tail = reader.wanted()
    assert (parts, tail) == ([20, 21, 22, 23], None)  # the device skips 22 and 23: past the end
    reader.feed(text_of(dump(DATA, kind="P", indices=[20])))
    assert reader.data() is None and reader.wanted() == ([21, 22, 23], None)
    reader.feed(text_of(dump(DATA, kind="P", indices=[21])))
    assert reader.data() == DATA


def test_a_lost_trailer_means_reading_on_to_the_end() -> None:
    groups = dump(DATA)[:-3]  # blocks 4 and 5 and the trailer lost
    reader = read(text_of(groups))
    assert reader.trailer() is None and reader.missing() is None and reader.data() is None
    assert reader.wanted() == ([], 4 * PARTS_PER_BLOCK)
    assert reader.failed() == "the dump's last line never arrived intact in 1 read"
    reader.feed(text_of(dump(DATA, kind="P", indices=list(range(16, 22)))))
    assert reader.data() == DATA


def test_a_damaged_trailer_is_refuted_by_the_whole_files_crc() -> None:
    groups = dump(DATA)
    trailer = Trailer("b64", cksum(DATA), len(DATA))
    groups[-1] = (None, [f"#TNB T b64 {trailer.crc ^ 1} {len(DATA)}"])
    reader = read(text_of(groups))
    assert reader.data() is None  # every block is fine, the whole is not
    assert reader.failed() == "the whole output failed its checksum after 1 read"
    assert reader.wanted() == ([], 6 * PARTS_PER_BLOCK)  # the trailer again (nothing is past the end)
    reader.feed(f"#TNB T b64 {trailer.crc} {trailer.size}\n")
    assert reader.data() == DATA


def test_a_trailer_that_does_not_fit_the_blocks_is_not_used() -> None:
    groups = dump(DATA)
    groups[-1] = (None, [f"#TNB T b64 {cksum(DATA)} {len(DATA) + 5000}"])  # junk digits in the size
    reader = read(text_of(groups))
    assert reader.trailer() is None and reader.data() is None


@pytest.mark.parametrize(
    "header",
    [
        "#TNB B b64 2 12 {crc} {size}",  # junk in one copy of the index: it does not move the block
        "#TNB B b64 2 2 {crc}9 {size}",
        "#TNB B b64 2 2 {crc} 1{size}",
        "#TNB B b64 2 2 {crc} {size}0",
        "#TNB Bx b64 2 2 {crc} {size}",
        "#TNx B b64 2 2 {crc} {size}",
        "#TNB B hex 2 2 {crc} {size}",
    ],
)
def test_a_damaged_header_loses_its_block_only(header: str) -> None:
    groups = dump(DATA)
    block = DATA[2 * BLOCK_BYTES : 3 * BLOCK_BYTES]
    groups[2] = (2, [header.format(crc=cksum(block), size=len(block)), *groups[2][1][1:]])
    reader = read(text_of(groups))
    # "#TNx …" is no header: its block's lines join block 1, which fails too.
    assert reader.missing() == ([1, 2] if header.startswith("#TNx") else [2])
    assert all(reader.blocks[i] == b for i, b in blocks_of(DATA).items() if i in reader.blocks)


def test_junk_before_a_header_on_its_line_is_dropped() -> None:
    groups = dump(DATA)
    groups[2] = (2, ["\ufffdj\x1b[Kunk" + groups[2][1][0], *groups[2][1][1:]])
    assert read(text_of(groups)).data() == DATA


@pytest.mark.parametrize(
    "junk",
    ["\ufffd\ufffd\x01", "\x1b[31m\ufffd", "#\ufffd", "\ufffd\n\ufffd\ufffd", "é中\ufffd\x7f", "\r\ufffd"],
)
@pytest.mark.parametrize("encoding", ["b64", "hex"])
def test_one_run_of_stray_bytes_is_taken_out_and_never_kept(junk: str, encoding: str) -> None:
    rng = random.Random(junk)
    for _ in range(20):
        text = text_of(dump(DATA, encoding))
        start = text.index(f"#TNB B {encoding} 1 1")
        end = text.index(f"#TNB B {encoding} 2 2")
        pos = rng.randrange(text.index("\n", start) + 1, end)
        damaged = text[:pos] + junk + text[pos:]
        assert read(damaged, repair=False).missing() == [1]
        reader = read(damaged)
        assert reader.data() == DATA, (pos, junk)


def test_stray_characters_from_the_alphabet_are_never_taken_as_data() -> None:
    """Junk of base64 characters leaves the right shape in too many places: the block is read again."""
    text = text_of(dump(DATA))
    start = text.index("#TNB B b64 1 1")
    pos = text.index("\n", start) + 30
    reader = read(text[:pos] + "QUJD" + text[pos:])
    assert reader.missing() == [1]
    assert all(reader.blocks[i] == b for i, b in blocks_of(DATA).items() if i in reader.blocks)


def test_block_bytes_checks_size_and_crc() -> None:
    piece = b"hello world"
    lines = encoded_lines(piece, "b64")
    assert block_bytes("b64", cksum(piece), len(piece), lines) == piece
    assert block_bytes("b64", cksum(piece) ^ 1, len(piece), lines) is None
    assert block_bytes("b64", cksum(piece), len(piece) + 1, lines) is None
    assert block_bytes("hex", cksum(piece), len(piece), encoded_lines(piece, "hex")) == piece
    assert block_bytes("hex", cksum(piece), len(piece), ["zz"]) is None


# -- damage at random: the reader reports exactly the damaged blocks and never accepts wrong bytes ------

_JUNK_CHARS = st.sampled_from(list("AZaz09+/=# \t\x1b\x01\x7f\r\ufffd\u00e9\u4e2d\udcff.x"))
#: Junk that cannot look clean: it starts with a character that is no digit and no space.
_JUNK = st.builds(
    lambda head, tail: head + tail, st.sampled_from(list("#x\ufffd\x1bQ=/\udcff")), st.text(_JUNK_CHARS, max_size=12)
)


@st.composite
def damaged_dumps(draw: st.DrawFn) -> tuple[bytes, str, str, set[int]]:
    """Random output, its dump as the device prints it, the dump damaged, and the blocks the damage touched."""
    size = draw(st.integers(0, 6 * BLOCK_BYTES + 200))
    data = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    encoding = draw(st.sampled_from(["b64", "hex"]))
    groups = dump(data, encoding)
    blocks = len(groups) - 1
    touched: set[int] = set()
    if blocks:
        for _ in range(draw(st.integers(0, 4))):
            index = draw(st.integers(0, blocks - 1))
            lines = groups[index][1]
            junk = draw(_JUNK)
            if draw(st.booleans()):  # into a data line, anywhere in it
                n = draw(st.integers(1, len(lines) - 1))
                pos = draw(st.integers(0, len(lines[n])))
            else:  # into the header, after "#TNB " and before its last character
                n, pos = 0, draw(st.integers(5, len(lines[0]) - 1))
            lines[n] = lines[n][:pos] + junk + lines[n][pos:]
            touched.add(index)
        if draw(st.booleans()):
            lost = draw(st.integers(0, blocks - 1))
            groups[lost] = (lost, [])
            touched.add(lost)
    return data, encoding, text_of(groups), touched


@SETTINGS
@given(damaged_dumps())
def test_random_damage_is_reported_exactly_and_never_accepted(case: tuple[bytes, str, str, set[int]]) -> None:
    data, _, text, touched = case
    originals = blocks_of(data)
    strict = read(text, repair=False)
    assert strict.missing() == sorted(touched)
    assert all(originals[i] == b for i, b in strict.blocks.items())
    assert strict.data() == (data if not touched else None)
    repaired = read(text)
    assert all(originals[i] == b for i, b in repaired.blocks.items())
    missing = repaired.missing()
    assert missing is not None and set(missing) <= touched
    assert repaired.data() in (data, None) and (repaired.data() is None) == bool(missing)
    # What is asked for again, printed clean, completes the output.
    parts, tail = repaired.wanted()
    assert tail is None
    repaired.feed(text_of(dump(data, kind="P", indices=parts, trailer=False)))
    assert repaired.data() == data


@SETTINGS
@given(st.binary(max_size=3 * BLOCK_BYTES), st.lists(st.tuples(st.floats(0, 1), st.text(max_size=90)), max_size=6))
def test_arbitrary_junk_anywhere_never_gives_wrong_bytes(data: bytes, junk: list[tuple[float, str]]) -> None:
    text = text_of(dump(data))
    for where, stray in junk:
        pos = int(where * len(text))
        text = text[:pos] + stray + text[pos:]
    reader = read(text)
    originals = blocks_of(data)
    assert all(originals.get(i) == b for i, b in reader.blocks.items())
    assert reader.data() in (data, None)

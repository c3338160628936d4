"""Files in and out through a shell, sans-I/O (:mod:`tunnelnb.protocol.transfer`).

The scripts run in real shells (``/bin/sh``, ``bash``, and BusyBox's ``ash`` with
BusyBox's tools where the machine has ``busybox``), read through the same
:class:`CommandParser` a session uses; the parsing is also fed damaged text.
A full filesystem is a real one: a small tmpfs mounted in a user and mount
namespace of the test's own (``unshare -rm``, no privileges needed where user
namespaces are allowed; skipped elsewhere).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tunnelnb.protocol.cksum import cksum
from tunnelnb.protocol.dump import DumpReader
from tunnelnb.protocol.putfile import (
    PUT_BLOCK_BYTES,
    PutFinish,
    free_bytes,
    parse_put_finish,
    parse_put_prepare,
    parse_put_writes,
    put_abort_script,
    put_blocks_script,
    put_finish_script,
    put_prepare_script,
)
from tunnelnb.protocol.shell import MAX_TYPED_LINE, CommandParser, Finished, Output
from tunnelnb.protocol.transfer import (
    GET_LAYOUT,
    GET_RANGE_PARTS,
    GetStat,
    get_range_script,
    get_stat_script,
    parse_get_stat,
    shell_path,
    split_path,
)
from tunnelnb.protocol.verify import reread_script

from .test_verify import Shell

PART = GET_LAYOUT.part_bytes
BUSYBOX = shutil.which("busybox")
UNSHARE = shutil.which("unshare")


# -- running scripts in a real shell ---------------------------------------------------------


def _busybox_env(tmp: Path) -> dict[str, str]:
    """A PATH of BusyBox applets only (Debian's BusyBox has no ``cksum``: coreutils' stands in, the one exception)."""
    assert BUSYBOX is not None
    bin_dir = tmp / "busybox-bin"
    bin_dir.mkdir()
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        (bin_dir / applet).symlink_to(BUSYBOX)
    if "cksum" not in applets:
        (bin_dir / "cksum").symlink_to(shutil.which("cksum") or "/usr/bin/cksum")
    return {"PATH": str(bin_dir), "HOME": str(tmp)}


SHELLS = ["sh", "bash", *(["busybox"] if BUSYBOX else [])]


@pytest.fixture(params=SHELLS)
def shell(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[str], dict[str, str] | None]:
    if request.param == "busybox":
        return [str(BUSYBOX), "sh"], _busybox_env(tmp_path_factory.mktemp("busybox"))
    return [shutil.which(request.param) or request.param], None


def run(shell: tuple[list[str], dict[str, str] | None], *scripts: str, cwd: Path | None = None) -> list[str]:
    """Type ``scripts`` into one shell; each one's text between its markers (the marker ids are m1, m2, …)."""
    argv, env = shell
    for script in scripts:
        for line in script.split("\n"):
            assert len(line.encode()) < MAX_TYPED_LINE, line[:80]
    out = subprocess.run(argv, input="".join(scripts).encode(), capture_output=True, env=env, cwd=cwd, timeout=120)
    text = out.stdout.decode("utf-8", "surrogateescape")
    results = []
    for n in range(1, len(scripts) + 1):
        parser, got, finished = CommandParser(f"m{n}"), [], None
        for event in parser.feed(text):
            if isinstance(event, Output):
                got.append(event.text)
            else:
                finished = event
        assert finished == Finished(0), (n, text[-500:], out.stderr[-500:])
        results.append("".join(got))
    return results


def get_all(shell, path: str, *, cwd: Path | None = None) -> tuple[GetStat | None, DumpReader]:
    """A get's stat and first reading in one shell, fed to a reader."""
    stat_text = run(shell, get_stat_script("m1", path), cwd=cwd)[0]
    stat = parse_get_stat(stat_text)
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(stat_text)
    if stat is None or stat.error:
        return stat, reader
    parts = -(-stat.size // PART)
    scripts = [get_stat_script("m1", path)]
    for first in range(0, parts, GET_RANGE_PARTS):
        scripts.append(
            get_range_script(f"m{len(scripts) + 1}", first, min(GET_RANGE_PARTS, parts - first), awk=stat.awk)
        )
    for text in run(shell, *scripts, cwd=cwd)[1:]:
        reader.feed(text)
    return stat, reader


# -- paths ----------------------------------------------------------------------------------------


def test_paths_are_one_shell_word() -> None:
    assert shell_path("/etc/app.conf") == "/etc/app.conf"
    assert shell_path("it's here/x y") == "'it'\"'\"'s here/x y'"
    assert shell_path("~/app.conf") == '"$HOME"/app.conf'
    assert shell_path("~") == '"$HOME"'
    assert shell_path("-rf") == "./-rf"
    assert split_path("/data/x.bin") == ("/data", "x.bin")
    assert split_path("x.bin") == (".", "x.bin")
    assert split_path("/x") == ("/", "x")
    assert split_path("~/x") == ('"$HOME"', "x")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "the remote path is empty: give a file's path"),
        ("a\nb", "the remote path 'a\\nb' has a newline or another control character: rename the file"),
        ("/data/", "'/data/' names a directory: give the file's path, e.g. /data/NAME"),
        ("/data/..", "'/data/..' names a directory: give the file's path, e.g. /data/../NAME"),
    ],
)
def test_bad_paths_are_refused_with_one_sentence(path: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        split_path(path)
    assert str(info.value) == message


# -- get --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 56, 57, PART - 1, PART, PART + 1, 4 * PART * 3 + 5, 1_100_000])
def test_a_get_reads_every_byte(shell, tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    (tmp_path / "f.bin").write_bytes(data)
    stat, reader = get_all(shell, str(tmp_path / "f.bin"))
    assert stat == GetStat("", "b64", True, hashlib.sha256(data).hexdigest(), cksum(data), size)
    assert reader.data() == data
    assert reader.missing() == []


def test_a_relative_path_and_a_home_path(shell, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"relative\n")
    stat, reader = get_all(shell, "sub/f", cwd=tmp_path)
    assert (stat.size if stat else None, reader.data()) == (9, b"relative\n")
    argv, env = shell
    home = {**(env or os.environ), "HOME": str(tmp_path / "sub")}
    stat, reader = get_all((argv, home), "~/f")
    assert reader.data() == b"relative\n"


@pytest.mark.parametrize(
    ("make", "error"),
    [("none", "noent"), ("dir", "isdir"), ("fifo", "notfile"), ("dangling", "noent")],
)
def test_what_a_get_cannot_read_is_said(shell, tmp_path: Path, make: str, error: str) -> None:
    path = tmp_path / "x"
    if make == "dir":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)
    elif make == "dangling":
        path.symlink_to(tmp_path / "nowhere")
    stat, _ = get_all(shell, str(path))
    assert stat == GetStat(error=error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_permission_denied(shell, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"x")
    (tmp_path / "secret").chmod(0)
    stat, _ = get_all(shell, str(tmp_path / "secret"))
    assert stat == GetStat(error="perm")


def _env_without(tmp_path: Path, *missing: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = (
        "cat",
        "dd",
        "cksum",
        "od",
        "base64",
        "awk",
        "sha256sum",
        "rm",
        "head",
        "printf",
        "tail",
        "grep",
        "df",
        "ls",
    )
    for tool in (*tools, "mv", "chmod", "chown", "pwd"):
        if tool not in missing and (found := shutil.which(tool)):
            (bin_dir / tool).symlink_to(found)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}


@pytest.mark.parametrize("missing", [("awk",), ("base64",), ("awk", "base64"), ("sha256sum",)])
def test_a_get_without_awk_base64_or_sha256sum(tmp_path: Path, missing: tuple[str, ...]) -> None:
    data = random.Random(9).randbytes(5 * PART + 100)
    (tmp_path / "f").write_bytes(data)
    stat, reader = get_all((["/bin/sh"], _env_without(tmp_path, *missing)), str(tmp_path / "f"))
    assert stat is not None
    assert (stat.encoding, stat.awk) == ("hex" if "base64" in missing else "b64", "awk" not in missing)
    assert stat.sha256 == ("" if "sha256sum" in missing else hashlib.sha256(data).hexdigest())
    assert reader.data() == data
    # Without awk, every part came checksummed; with it, every part came shaped.
    assert len(reader.parts) == (6 if "awk" in missing else 0)


def test_a_reread_of_shaped_parts_in_hex(tmp_path: Path) -> None:
    data = random.Random(8).randbytes(6 * PART + 5)
    (tmp_path / "f").write_bytes(data)
    shell = (["/bin/sh"], _env_without(tmp_path, "base64"))
    text = run(shell, get_stat_script("m1", str(tmp_path / "f")), get_range_script("m2", 0, 0, only=[1, 6]))[1]
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(f"#TNB T hex {cksum(data)} {len(data)}\n" + text)
    assert reader._part(1, PART) == data[PART : 2 * PART]
    assert reader._part(6, 5) == data[6 * PART :]
    assert reader.wanted() == ([0, 2, 3, 4, 5, 7], None)


def test_a_put_without_base64_types_octal_escapes(tmp_path: Path) -> None:
    data = random.Random(12).randbytes(PUT_BLOCK_BYTES + 300)
    (tmp_path / "d").mkdir()
    shell = (["/bin/sh"], _env_without(tmp_path, "base64", "sha256sum"))
    prep, finish = put(shell, data, tmp_path / "d" / "f.bin")
    assert (prep.encoding, prep.sha256) == ("oct", False)
    assert finish == PutFinish("ok")
    assert (tmp_path / "d" / "f.bin").read_bytes() == data


def test_a_reread_of_shaped_parts_sends_only_those(shell, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(40 * PART)
    (tmp_path / "f").write_bytes(data)
    script = get_stat_script("m1", str(tmp_path / "f"))
    text = run(shell, script, get_range_script("m2", 0, 0, only=[3, 17, 18, 39]))[1]
    assert [line for line in text.split("\n") if line.startswith("#TNB")] == [
        f"#TNB S b64 {i} {i}" for i in (3, 17, 18, 39)
    ] + ["#TNB Z"]
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(text)
    reader.feed(f"#TNB T b64 {cksum(data)} {len(data)}\n")
    assert reader.missing() == list(range(10))  # no block has all four of its parts
    assert reader.wanted() == ([k for k in range(40) if k not in (3, 17, 18, 39)], None)
    assert reader._part(17, PART) == data[17 * PART : 18 * PART]


def test_a_reread_of_checksummed_parts_of_a_gets_file(shell, tmp_path: Path) -> None:
    data = random.Random(4).randbytes(10 * PART + 7)
    (tmp_path / "f").write_bytes(data)
    reread = reread_script("m2", [0, 10, 11], source="__tnb_g", part_bytes=PART, status="0")
    text = run(shell, get_stat_script("m1", str(tmp_path / "f")), reread)[1]
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(text)
    assert sorted(reader.parts) == [0, 10]  # part 11 is past the end
    assert reader.parts[10] == data[10 * PART :]


# -- the reader with damaged shaped parts ------------------------------------------------------------


def shaped_text(data: bytes, first: int = 0) -> str:
    """What ``get_range_script`` prints for ``data`` (base64), as a list of lines per part."""
    out = []
    for k in range(-(-len(data) // PART)):
        text = base64.b64encode(data[k * PART : (k + 1) * PART]).decode()
        out.append(
            f"#TNB S b64 {first + k} {first + k}\n" + "".join(text[i : i + 76] + "\n" for i in range(0, len(text), 76))
        )
    return "".join(out)


DATA = random.Random(11).randbytes(8 * PART + 300)
TRAILER = f"#TNB T b64 {cksum(DATA)} {len(DATA)}\n"


def test_a_clean_shaped_dump_is_the_file() -> None:
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(TRAILER)
    reader.feed(shaped_text(DATA))
    assert reader.data() == DATA


def test_a_run_of_stray_bytes_that_can_go_one_way_only_is_taken_out() -> None:
    text = shaped_text(DATA)
    cut = text.index("\n", text.index("#TNB S b64 2 2")) + 30
    damaged = text[:cut] + "\ufffd\x07\ufffd" + text[cut:]
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(TRAILER + damaged)
    assert reader.data() == DATA
    assert reader._unchecked[2][1] is True  # repaired


def test_an_ambiguous_run_of_stray_bytes_makes_the_part_wanted() -> None:
    text = shaped_text(DATA)
    cut = text.index("\n", text.index("#TNB S b64 5 5")) + 30
    damaged = text[:cut] + "AB\ufffd" + text[cut:]  # "AB" could be data: three ways to take it out
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(TRAILER + damaged)
    assert reader.data() is None
    assert reader.wanted() == ([5], None)


def test_a_shaped_part_that_lies_loses_the_trust_not_the_trailer() -> None:
    forged = DATA[:PART] + bytes(PART) + DATA[2 * PART :]  # part 1 of the right shape, but zeros
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(TRAILER + shaped_text(forged))
    assert reader.data() is None  # the whole file's CRC disagrees
    assert reader.trailer() is not None
    assert reader.wanted() == (list(range(12)), None)  # every part of the 3 blocks (10 and 11: past the end)
    part1 = DATA[PART : 2 * PART]
    lines = base64.b64encode(part1).decode()
    reader.feed(
        f"#TNB P b64 1 1 {cksum(part1)} {PART}\n" + "".join(lines[i : i + 76] + "\n" for i in range(0, len(lines), 76))
    )
    reader.feed(shaped_text(DATA))
    assert reader.data() == DATA


def test_a_damaged_shaped_header_loses_its_part_only() -> None:
    text = shaped_text(DATA).replace("#TNB S b64 3 3", "#TNB S b64 3\udcc3 3")
    reader = DumpReader(layout=GET_LAYOUT)
    reader.feed(TRAILER + text)
    assert reader.missing() == [0]
    assert reader.wanted() == ([3], None)


# -- parsing what a get's stat printed -----------------------------------------------------------------


def test_a_damaged_stat_is_none_and_a_clean_one_is_read() -> None:
    sha = "ab" * 32
    clean = f"#TNB G b64 awk\n#TNB H {sha}  -\n#TNB T b64 123 456\n#TNB Z\n"
    assert parse_get_stat(clean) == GetStat("", "b64", True, sha, 123, 456)
    assert parse_get_stat(clean.replace("#TNB T b64 123", "#TNB T b\ufffd64 123")) is None
    assert parse_get_stat(clean.replace(sha, sha[:40] + "\ufffd" + sha[40:])) is None  # never a wrong sha256
    assert parse_get_stat(clean.replace("#TNB G b64", "#TNB G hex")) is None  # the encodings disagree
    assert parse_get_stat("junk#TNB X isdir\n") == GetStat(error="isdir")
    assert parse_get_stat("") is None


# -- put ---------------------------------------------------------------------------------------------


def put(
    shell, data: bytes, dest: Path | str, *, encoding: str | None = None, mode: int = 0o640, cwd: Path | None = None
):
    """A whole put in one shell per step; returns the prepare's answer and the finish's."""
    prep = parse_put_prepare(run(shell, put_prepare_script("m1", str(dest)), cwd=cwd)[0])
    assert prep is not None and not prep.error, prep
    blocks = [(i // PUT_BLOCK_BYTES, data[i : i + PUT_BLOCK_BYTES]) for i in range(0, len(data), PUT_BLOCK_BYTES)]
    if blocks:
        writes = parse_put_writes(run(shell, put_blocks_script("m1", prep.temp, blocks, encoding or prep.encoding))[0])
        assert writes.written == {i: (cksum(b), len(b)) for i, b in blocks}
        assert writes.failed == {}
    sha = hashlib.sha256(data).hexdigest() if prep.sha256 else None
    finish = put_finish_script("m1", prep.temp, str(dest), crc=cksum(data), size=len(data), sha256=sha, mode=mode)
    return prep, parse_put_finish(run(shell, finish, cwd=cwd)[0])


@pytest.mark.parametrize("size", [0, 1, PUT_BLOCK_BYTES - 1, PUT_BLOCK_BYTES, 3 * PUT_BLOCK_BYTES + 11])
@pytest.mark.parametrize("encoding", ["b64", "oct"])
def test_a_put_writes_every_byte_and_leaves_nothing_else(shell, tmp_path: Path, size: int, encoding: str) -> None:
    data = random.Random(size).randbytes(size)
    prep, finish = put(shell, data, tmp_path / "out.bin", encoding=encoding)
    assert finish == PutFinish("ok")
    assert (tmp_path / "out.bin").read_bytes() == data
    assert os.listdir(tmp_path) == ["out.bin"]
    assert Path(prep.temp).name == ".out.bin.tnb-m1"
    assert (tmp_path / "out.bin").stat().st_mode & 0o7777 == 0o640


def test_the_prepare_tells_the_umask_the_space_and_the_replaced_files_mode_and_owner(shell, tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"old")
    dest.chmod(0o751)
    text = run(shell, "umask 027\n" + put_prepare_script("m1", str(dest)))[0]
    prep = parse_put_prepare(text)
    assert prep is not None
    assert (prep.umask, prep.existing_mode, prep.existing_owner) == (0o027, 0o751, (os.getuid(), os.getgid()))
    assert prep.sha256 is True and prep.encoding == "b64"
    st = os.statvfs(tmp_path)
    assert prep.free is not None and abs(prep.free - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    assert prep.temp == str(tmp_path / ".app.conf.tnb-m1") and Path(prep.temp).stat().st_mode & 0o777 == 0o600


def test_a_relative_destination_gets_an_absolute_temporary_path(shell, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    prep, finish = put(shell, b"rel\n", "d/x.txt", cwd=tmp_path)
    assert prep.temp == str(tmp_path / "d" / ".x.txt.tnb-m1")
    assert finish == PutFinish("ok") and (tmp_path / "d" / "x.txt").read_bytes() == b"rel\n"


@pytest.mark.parametrize(
    ("make", "error"),
    [("dir", "isdir"), ("nodir", "nodir"), ("symlink", "symlink"), ("fifo", "notfile")],
)
def test_what_a_put_cannot_replace_is_said(shell, tmp_path: Path, make: str, error: str) -> None:
    dest = tmp_path / "x"
    if make == "dir":
        dest.mkdir()
    elif make == "nodir":
        dest = tmp_path / "no" / "x"
    elif make == "symlink":
        dest.symlink_to(tmp_path / "y")
    elif make == "fifo":
        os.mkfifo(dest)
    prep = parse_put_prepare(run(shell, put_prepare_script("m1", str(dest)))[0])
    assert prep is not None and (prep.error, prep.temp) == (error, "")


def test_sending_a_block_again_is_harmless(shell, tmp_path: Path) -> None:
    data = random.Random(5).randbytes(2 * PUT_BLOCK_BYTES + 10)
    prep = parse_put_prepare(run(shell, put_prepare_script("m1", str(tmp_path / "f")))[0])
    assert prep is not None
    blocks = [(i, data[i * PUT_BLOCK_BYTES : (i + 1) * PUT_BLOCK_BYTES]) for i in range(3)]
    run(shell, put_blocks_script("m1", prep.temp, [blocks[2], blocks[0]], "b64"))  # out of order
    writes = parse_put_writes(run(shell, put_blocks_script("m1", prep.temp, [blocks[1], blocks[2]], "oct"))[0])
    assert writes.written == {1: (cksum(blocks[1][1]), len(blocks[1][1])), 2: (cksum(blocks[2][1]), 10)}
    assert Path(prep.temp).read_bytes() == data


def test_a_file_that_fails_its_check_is_never_moved_into_place(shell, tmp_path: Path) -> None:
    dest = tmp_path / "f"
    dest.write_bytes(b"the old contents\n")
    prep = parse_put_prepare(run(shell, put_prepare_script("m1", str(dest)))[0])
    assert prep is not None
    run(shell, put_blocks_script("m1", prep.temp, [(0, b"new, but not what the client sent")], "b64"))
    finish = put_finish_script("m1", prep.temp, str(dest), crc=cksum(b"new"), size=3, sha256=None, mode=0o644)
    got = parse_put_finish(run(shell, finish)[0])
    assert got is not None and got.outcome == "crc"
    assert got.detail == f"{cksum(b'new, but not what the client sent')} 33"
    assert dest.read_bytes() == b"the old contents\n"
    assert not Path(prep.temp).exists()
    # The same with a right cksum but the wrong sha256 (a stand-in for a collision).
    prep = parse_put_prepare(run(shell, put_prepare_script("m1", str(dest)))[0])
    assert prep is not None
    run(shell, put_blocks_script("m1", prep.temp, [(0, b"new")], "b64"))
    finish = put_finish_script("m1", prep.temp, str(dest), crc=cksum(b"new"), size=3, sha256="0" * 64, mode=0o644)
    got = parse_put_finish(run(shell, finish)[0])
    assert got is not None and got.outcome == "sha" and got.detail.startswith(hashlib.sha256(b"new").hexdigest())
    assert dest.read_bytes() == b"the old contents\n" and not Path(prep.temp).exists()


def test_an_abort_removes_the_temporary_file_and_says_the_space(shell, tmp_path: Path) -> None:
    prep = parse_put_prepare(run(shell, put_prepare_script("m1", str(tmp_path / "f")))[0])
    assert prep is not None and Path(prep.temp).exists()
    text = run(shell, put_abort_script("m1", shlex.quote(prep.temp), str(tmp_path / "f")))[0]
    assert not Path(prep.temp).exists()
    line = next(t for t in text.split("\n") if t.startswith("#TNB F "))
    assert free_bytes(line[7:]) is not None


def test_parsing_what_a_put_printed() -> None:
    text = "#TNB W 0 0 123 65536\nju#TNB W 1 1 456 65536\n#TNB W 2 3 7 7\n#TNB W 4 4 1\ufffd2 65536\n"
    text += "#TNB D 5 dd: error writing 'x': No space left on device\n"
    writes = parse_put_writes(text)
    assert writes.written == {0: (123, 65536), 1: (456, 65536)}  # a block's index twice, or it is not taken
    assert writes.failed == {5: "dd: error writing 'x': No space left on device"}
    assert parse_put_finish("#TNB M mv mv: cannot move 'a': Read-only file system\n") == PutFinish(
        "mv", "mv: cannot move 'a': Read-only file system"
    )
    assert parse_put_finish("#TNB M o\ufffdk\n") is None
    assert free_bytes("/dev/vda1 1000 400 600 40% /data") == 600 * 1024
    assert free_bytes("") is None
    # A damaged prepare: no path, not an absolute one, two that differ, not the temporary file's name.
    ok = "#TNB E b64\n#TNB U 0022\n#TNB R /d/.f.tnb-m1\n#TNB Q /d/.f.tnb-m1\n"
    assert parse_put_prepare(ok, ".f.tnb-m1") is not None
    assert parse_put_prepare(ok.replace("/d/", "d/"), ".f.tnb-m1") is None
    assert parse_put_prepare(ok.replace("#TNB Q /d/", "#TNB Q /e/"), ".f.tnb-m1") is None
    assert parse_put_prepare(ok, ".f.tnb-m2") is None
    assert parse_put_prepare("#TNB E b64\n#TNB U 0022\n") is None
    prep = parse_put_prepare(
        "#TNB E oct\n#TNB U 0002\n#TNB F \n#TNB L -rwsr-x--T 1 5 6 9 Jan 1 00:00 f\n"
        "#TNB R /d/.f.tnb-1\n#TNB Q /d/.f.tnb-1\n"
    )
    assert prep is not None
    assert (prep.encoding, prep.umask, prep.free, prep.existing_mode, prep.existing_owner, prep.sha256) == (
        "oct",
        0o002,
        None,
        0o5750,
        (5, 6),
        False,
    )


# -- a full filesystem --------------------------------------------------------------------------------


def test_a_full_filesystem_is_a_failed_write_and_the_temporary_file_goes(tmp_path: Path) -> None:
    """A small tmpfs in a user and mount namespace of the test's own, with a shell in it for the whole put."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    room = 2 * PUT_BLOCK_BYTES  # two blocks fit exactly, the third does not
    mount = f"mount -t tmpfs -o size={room // 1024}k tmpfs '{data_dir}'"
    if UNSHARE is None or subprocess.run([UNSHARE, "-rm", "sh", "-c", mount], capture_output=True).returncode:
        pytest.skip("no user and mount namespaces here (unshare -rm)")
    sh = Shell([UNSHARE, "-rm", "sh", "-c", f"{mount} && exec sh"])
    try:
        dest = str(data_dir / "big.bin")
        text, _, _ = sh.run(put_prepare_script, dest)
        prep = parse_put_prepare(text)
        assert prep is not None and prep.free == room
        data = random.Random(6).randbytes(3 * PUT_BLOCK_BYTES)
        blocks = [(i, data[i * PUT_BLOCK_BYTES : (i + 1) * PUT_BLOCK_BYTES]) for i in range(3)]
        text, _, _ = sh.run(put_blocks_script, prep.temp, blocks, "b64")
        writes = parse_put_writes(text)
        assert list(writes.failed) == [2]  # two blocks fill it, the third does not fit
        assert writes.failed[2].startswith("dd: ") and writes.failed[2].endswith("No space left on device")
        assert sh.plain(f"ls -A '{data_dir}'") == f"{Path(prep.temp).name}\n"
        text, _, _ = sh.run(put_abort_script, shlex.quote(prep.temp), dest)
        free_line = next(t for t in text.split("\n") if t.startswith("#TNB F "))
        assert free_bytes(free_line[7:]) == room  # all of it again: the temporary file is gone
        assert sh.plain(f"ls -A '{data_dir}'") == ""
    finally:
        sh.proc.stdin.close()  # type: ignore[union-attr]
        sh.proc.wait(10)

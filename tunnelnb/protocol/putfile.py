"""Writing a file on a device through its shell, sans-I/O: the put half of :mod:`tunnelnb.protocol.transfer`.

That module's docstring says how a put goes (prepare, blocks, finish, abort);
this one writes those scripts and reads their answers.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from .shell import framed
from .transfer import END_COMMAND, HAS_SHA256, shell_path, split_path

__all__ = [
    "PUT_BATCH_BLOCKS",
    "PUT_BLOCK_BYTES",
    "PutFinish",
    "PutPrepared",
    "PutWrites",
    "free_bytes",
    "parse_put_finish",
    "parse_put_prepare",
    "parse_put_writes",
    "put_abort_script",
    "put_blocks_script",
    "put_finish_script",
    "put_prepare_script",
    "temp_name",
    "temp_word",
]

#: Bytes of a put's block: one here-document, one ``cksum`` answer, sent again whole when it fails.
PUT_BLOCK_BYTES = 262144
#: Blocks per exchange of a put (a megabyte).
PUT_BATCH_BLOCKS = 4
#: Bytes per typed ``printf`` line of octal escapes (4 characters each), short of MAX_TYPED_LINE.
_OCTAL_LINE_BYTES = 200
#: Characters per typed base64 line of a put (a terminal reads a line per read(): long lines are fewer reads).
_TYPED_B64_WIDTH = 960


@dataclass(frozen=True)
class PutPrepared:
    """What :func:`put_prepare_script` found: an error, or the temporary file and the device's tools."""

    error: str = ""  # isdir, symlink, nodir, notfile, perm, create
    detail: str = ""  # the shell's message for ``create``
    temp: str = ""
    encoding: str = "b64"  # b64, or oct (printf octal escapes)
    sha256: bool = False
    free: int | None = None  # bytes free for an unprivileged user where the file goes (df -kP)
    umask: int = 0o022
    existing_mode: int | None = None  # the file being replaced: its permission bits
    existing_owner: tuple[int, int] | None = None  # and its uid, gid


def temp_name(marker_id: str, path: str) -> str:
    """The temporary file's name for a put to ``path`` whose preparation has ``marker_id``: ``.NAME.tnb-MARKER``."""
    if not marker_id.isalnum():
        raise ValueError("marker id must be letters and digits")
    return f".{split_path(path)[1]}.tnb-{marker_id}"


def put_prepare_script(marker_id: str, path: str) -> str:
    """The text to type to check ``path``'s place and make the temporary file :func:`temp_name` beside it.

    The name comes from the marker id (unique in the session, which holds a
    random tag), so the client knows it without trusting the device's output;
    ``set -C`` (noclobber: ``O_EXCL``) makes it exclusively, mode 0600
    (``umask 077``), in POSIX (no ``mktemp``).  Its absolute path is printed
    twice (``#TNB R``, ``#TNB Q``), so that junk in one shows.
    """
    folder, _ = split_path(path)
    temp = f"{folder}/{shlex.quote(temp_name(marker_id, path))}"
    body = (
        f"__tnb_p={shell_path(path)}; __tnb_t={temp}\n"
        "if [ -d \"$__tnb_p\" ]; then printf '#TNB X isdir\\n'\n"
        "elif [ -L \"$__tnb_p\" ]; then printf '#TNB X symlink\\n'\n"
        f"elif [ ! -d {folder} ]; then printf '#TNB X nodir\\n'\n"
        'elif [ -e "$__tnb_p" ] && [ ! -f "$__tnb_p" ]; then printf \'#TNB X notfile\\n\'\n'
        f"elif [ ! -w {folder} ] || [ ! -x {folder} ]; then printf '#TNB X perm\\n'\n"
        'elif ! __tnb_m=$( (umask 077; set -C; : >"$__tnb_t") 2>&1 ); then printf \'#TNB X create %s\\n\' "$__tnb_m"\n'
        "else\n"
        'case $__tnb_t in /*) ;; *) __tnb_t="$(pwd)/$__tnb_t" ;; esac\n'
        "if command -v base64 >/dev/null 2>&1; then printf '#TNB E b64\\n'; else printf '#TNB E oct\\n'; fi\n"
        f"if {HAS_SHA256}; then printf '#TNB H 1\\n'; fi\n"
        f"printf '#TNB F %s\\n' \"$(df -kP {folder} 2>/dev/null | tail -n 1)\"\n"
        "printf '#TNB U %s\\n' \"$(umask)\"\n"
        'if [ -f "$__tnb_p" ]; then printf \'#TNB L %s\\n\' "$(ls -lnd "$__tnb_p")"; fi\n'
        'printf \'#TNB R %s\\n#TNB Q %s\\n\' "$__tnb_t" "$__tnb_t"\n'
        "fi\n"
        f"{END_COMMAND}unset __tnb_p __tnb_m __tnb_t\n"
    )
    return framed(marker_id, body, "0")


_PUT_ERROR = re.compile(r"#TNB X (isdir|symlink|nodir|notfile|perm|create)\b ?(.*)")
_PERMS = re.compile(r"^[-][rwxsStT-]{9}")


def _mode_of(perms: str) -> int:
    """``-rwsr-x--T`` (``ls -l``'s first field) → ``0o5750``."""
    mode = 0
    for i, (special, bit) in enumerate(((0o4000, "sS"), (0o2000, "sS"), (0o1000, "tT"))):
        r, w, x = (perms[1 + 3 * i + j] for j in range(3))
        shift = 6 - 3 * i
        mode |= (r == "r") << (shift + 2) | (w == "w") << (shift + 1)
        if x in "xst":
            mode |= 1 << shift
        if x in bit:
            mode |= special
    return mode


def free_bytes(df_line: str) -> int | None:
    """Bytes available from ``df -kP``'s line for one filesystem (``FS 1024-blocks Used Available Capacity MOUNT``)."""
    fields = df_line.split()
    if len(fields) >= 6 and fields[3].isdigit():
        return int(fields[3]) * 1024
    return None


def parse_put_prepare(text: str, name: str | None = None) -> PutPrepared | None:
    """What :func:`put_prepare_script` printed, or None when its lines did not arrive intact.

    ``name`` (:func:`temp_name`): the temporary file's path must end with it.
    """
    lines = text.split("\n")
    for line in lines:
        if m := _PUT_ERROR.search(line):
            return PutPrepared(error=m[1], detail=m[2].strip())
    found: dict[str, str] = {}
    for line in lines:
        pos = line.rfind("#TNB ")
        if pos >= 0 and len(line) > pos + 6 and line[pos + 6] == " ":
            found[line[pos + 5]] = line[pos + 7 :]
    if not {"R", "Q", "E", "U"} <= set(found) or found["E"] not in ("b64", "oct"):
        return None
    temp = found["R"]
    if temp != found["Q"] or not temp.startswith("/") or (name is not None and not temp.endswith("/" + name)):
        return None
    try:
        umask = int(found["U"].strip(), 8)
    except ValueError:
        return None
    mode = owner = None
    if "L" in found:
        fields = found["L"].split()
        if len(fields) < 4 or not _PERMS.match(fields[0]) or not (fields[2].isdigit() and fields[3].isdigit()):
            return None
        mode, owner = _mode_of(fields[0]), (int(fields[2]), int(fields[3]))
    return PutPrepared(
        temp=temp,
        encoding=found["E"],
        sha256="H" in found,
        free=free_bytes(found.get("F", "")),
        umask=umask & 0o777,
        existing_mode=mode,
        existing_owner=owner,
    )


def _octal_lines(data: bytes) -> list[str]:
    return [
        "printf '" + "".join(f"\\{b:03o}" for b in data[i : i + _OCTAL_LINE_BYTES]) + "'"
        for i in range(0, len(data), _OCTAL_LINE_BYTES)
    ]


def put_blocks_script(marker_id: str, temp: str, blocks: Sequence[tuple[int, bytes]], encoding: str) -> str:
    """The text to type to write ``blocks`` (index, bytes) into ``temp``, each answered with its ``cksum``.

    A block goes as a here-document for ``base64 -d`` (76 characters a line),
    or (``encoding="oct"``) as ``printf`` lines of octal escapes (``printf`` is
    a builtin in dash, ash and bash: no process per line).  ``dd seek=N
    conv=notrunc`` writes it at its offset, so sending one again is harmless;
    then ``#TNB W N N CRC SIZE``, the ``cksum`` of what is there, or, when
    ``dd`` failed (a full disk), ``#TNB D N`` and ``dd``'s error message.
    """
    if not blocks:
        raise ValueError("a put sends at least one block (an empty file needs none)")
    quoted = shlex.quote(temp)
    size = PUT_BLOCK_BYTES
    out = [f"__tnb_t={quoted}\n"]
    for index, data in blocks:
        if not 0 < len(data) <= size:
            raise ValueError(f"block {index} has {len(data)} bytes; a block has 1 to {size}")
        write = f'dd of="$__tnb_t" bs={size} seek={int(index)} conv=notrunc 2>&1'
        failed = f"printf '#TNB D %d %s\\n' {int(index)} \"$(printf '%s\\n' \"$__tnb_m\" | grep '^dd:' | head -n 1)\""
        if encoding == "b64":
            text = base64.b64encode(data).decode("ascii")
            width = _TYPED_B64_WIDTH
            lines = "\n".join(text[i : i + width] for i in range(0, len(text), width))
            delimiter = f"__TNB_D_{marker_id}__"
            out.append(f"__tnb_m=$(base64 -d <<'{delimiter}' | {write}\n{lines}\n{delimiter}\n) || {failed}\n")
        elif encoding == "oct":
            out.append("__tnb_m=$( {\n" + "\n".join(_octal_lines(data)) + f"\n}} | {write} ) || {failed}\n")
        else:
            raise ValueError(f"encoding must be b64 or oct, not {encoding!r}")
        read = f'dd if="$__tnb_t" bs={size} skip={int(index)} count=1 2>/dev/null | cksum'
        out.append(f"printf '#TNB W %d %d %s\\n' {int(index)} {int(index)} \"$({read})\"\n")
    gone = f"else printf '#TNB D %d %s\\n' {int(blocks[0][0])} 'the temporary file is gone'\nfi\n"
    out.insert(1, 'if [ -f "$__tnb_t" ]; then\n')  # never made here: dd would make it
    out.append(f"{gone}{END_COMMAND}unset __tnb_t __tnb_m\n")
    return framed(marker_id, "".join(out), "0")


@dataclass(frozen=True)
class PutWrites:
    """What a :func:`put_blocks_script` answered: each block's ``(crc, size)``, and the blocks whose write failed."""

    written: dict[int, tuple[int, int]]
    failed: dict[int, str]  # block → dd's error message (``dd: error writing '…': No space left on device``)


_WRITTEN = re.compile(r"#TNB W (\d{1,9}) (\d{1,9}) (\d{1,10}) (\d{1,9})\b")
_WRITE_FAILED = re.compile(r"#TNB D (\d{1,9}) ?(.*)")


def parse_put_writes(text: str) -> PutWrites:
    """Every intact ``#TNB W`` and ``#TNB D`` line of ``text``."""
    written: dict[int, tuple[int, int]] = {}
    failed: dict[int, str] = {}
    for line in text.split("\n"):
        if m := _WRITTEN.search(line):
            if m[1] == m[2]:
                written[int(m[1])] = (int(m[3]), int(m[4]))
        elif m := _WRITE_FAILED.search(line):
            failed[int(m[1])] = m[2].strip()
    return PutWrites(written, failed)


def put_finish_script(
    marker_id: str,
    temp: str,
    path: str,
    *,
    crc: int,
    size: int,
    sha256: str | None,
    mode: int,
    owner: tuple[int, int] | None = None,
) -> str:
    """The text to type to check ``temp`` whole, give it ``mode`` (and ``owner``) and move it to ``path``.

    The checks run on the device, so nothing is moved into place unless the
    whole file has the ``cksum`` (and, with ``sha256``, the sha256) of what was
    sent; any failure removes the temporary file.  ``#TNB M ok``, or ``#TNB M``
    with ``crc``, ``sha`` or ``mv`` and what the device said.  ``chown``
    works for root only and fails quietly otherwise.
    """
    t = shlex.quote(temp)
    checks = (
        f"__tnb_c=$(cksum <{t} 2>&1)\n"
        f"if [ \"$__tnb_c\" != '{int(crc)} {int(size)}' ]; then printf '#TNB M crc %s\\n' \"$__tnb_c\"\n"
    )
    if sha256 is not None:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        checks += (
            f'elif __tnb_c=$(sha256sum <{t} 2>&1); [ "${{__tnb_c%% *}}" != {sha256} ]; then '
            "printf '#TNB M sha %s\\n' \"$__tnb_c\"\n"
        )
    chown = f"chown {int(owner[0])}:{int(owner[1])} {t} 2>/dev/null\n" if owner is not None else ""
    body = (
        f"{checks}"
        f"elif ! chmod {int(mode) & 0o7777:04o} {t}; then printf '#TNB M chmod\\n'\n"
        f"elif {chown}__tnb_c=$(mv -f {t} {shell_path(path)} 2>&1); then printf '#TNB M ok\\n'\n"
        "else printf '#TNB M mv %s\\n' \"$__tnb_c\"\n"
        "fi\n"
        f"[ -f {t} ] && rm -f {t}\n"
        f"{END_COMMAND}unset __tnb_c\n"
    )
    return framed(marker_id, body, "0")


@dataclass(frozen=True)
class PutFinish:
    """What :func:`put_finish_script` answered: ``ok``, or what failed (``crc``, ``sha``, ``chmod``, ``mv``)."""

    outcome: str
    detail: str = ""


_FINISHED = re.compile(r"#TNB M (ok|crc|sha|chmod|mv)\b ?(.*)")


def parse_put_finish(text: str) -> PutFinish | None:
    """What :func:`put_finish_script` printed, or None when its line did not arrive intact."""
    for line in text.split("\n"):
        if m := _FINISHED.search(line):
            return PutFinish(m[1], m[2].strip())
    return None


def temp_word(prepare_marker: str, path: str) -> str:
    """The temporary file of the put whose preparation had ``prepare_marker``, as one shell word (maybe relative)."""
    folder, _ = split_path(path)
    return f"{folder}/{shlex.quote(temp_name(prepare_marker, path))}"


def put_abort_script(marker_id: str, temp: str, path: str) -> str:
    """The text to type to remove ``temp`` (a shell word) and print the space left where ``path`` goes (``#TNB F``).

    ``temp`` is ``shlex.quote`` of the path the preparation printed, or
    :func:`temp_word` when its answer never arrived intact.
    """
    folder, _ = split_path(path)
    body = f"rm -f {temp}\nprintf '#TNB F %s\\n' \"$(df -kP {folder} 2>/dev/null | tail -n 1)\"\n{END_COMMAND}"
    return framed(marker_id, body, "0")

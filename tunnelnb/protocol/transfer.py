"""Files in and out through the device's shell, sans-I/O: the scripts to type and what their output says.

The tunnel carries keystrokes and terminal output only (no SFTP, no port
forwarding), so a file travels as text the shell prints or is typed, within the
10 KB message limit and a canonical-mode terminal's 4,095-byte lines, through
devices that damage output (docs/architecture.md, *Verified output*).  Every
command is POSIX (``sh``, ``dd``, ``od``, ``cksum``, ``printf``, ``mv``,
``chmod``, ``df -kP``, ``ls -lnd``, ``awk``, ``grep``, ``tail``); where a script relies on
something beyond POSIX (``base64``, ``sha256sum``) it asks the shell first
and has a POSIX way without it.

**get** (the dump of :mod:`tunnelnb.protocol.verify`, of an existing file):

1. :func:`get_stat_script`: is it a readable file (else ``#TNB X noent``,
   ``isdir``, ``notfile``, ``perm``)?  Its ``cksum`` (``#TNB T``, the
   dump's trailer), its sha256 where ``sha256sum`` exists (``#TNB H``), the
   encoding and whether ``awk`` is there (``#TNB G``);
2. :func:`get_range_script`: about a megabyte at a time, as *shaped* parts
   (one ``dd``, one ``base64`` or ``od``, one ``awk`` for all of them), or
   checksummed parts where there is no ``awk``;
3. :func:`~tunnelnb.protocol.verify.reread_script` for what did not arrive
   intact, with :data:`GET_LAYOUT` and :data:`GET_VAR`.

**put** (its scripts and answers are in :mod:`tunnelnb.protocol.putfile`):

1. :func:`put_prepare_script`: checks the destination, makes the temporary
   file ``DIR/.NAME.tnb-MARKER`` next to it (``set -C``: exclusively), says
   which encoder there is, the free space (``df -kP``), the umask and an
   existing file's mode and owner (``ls -lnd``): ``#TNB R``, ``E``, ``F``,
   ``U``, ``L``, ``H``;
2. :func:`put_blocks_script`: blocks of :data:`PUT_BLOCK_BYTES` typed as
   base64 here-documents (``base64 -d``), or as ``printf`` octal escapes where
   there is no ``base64``, each written at its offset (``dd seek=N
   conv=notrunc``, so a block can be sent again) and answered with its
   ``cksum`` (``#TNB W``), or ``#TNB D`` and ``dd``'s message when the write
   failed (``grep`` and ``head`` run only then);
3. :func:`put_finish_script`: the whole file's ``cksum`` and sha256 checked on
   the device, ``chmod``, ``chown`` where it may, then ``mv`` into place (a
   rename in one directory: atomic), else the temporary file removed
   (``#TNB M``).  :func:`put_abort_script` removes it and measures the space left.

Every exchange's output ends with ``#TNB Z``, so a lost end marker costs a
moment, not a timeout.  Paths travel single-quoted (``~/`` becomes ``$HOME``);
a path with a newline or another control character is refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from .shell import MAX_TYPED_LINE, framed
from .verify import DumpLayout, pieces_loop

__all__ = [
    "END_COMMAND",
    "END_LINE",
    "GET_LAYOUT",
    "GET_RANGE_PARTS",
    "GET_VAR",
    "HAS_SHA256",
    "GetStat",
    "get_range_script",
    "get_stat_script",
    "parse_get_stat",
    "shell_path",
    "split_path",
]

#: A get's pieces: parts of 912 bytes (16 base64 lines, 57 od lines: what awk can count), blocks of four.
GET_LAYOUT = DumpLayout(block_bytes=4 * 912, part_bytes=912)
#: Parts a get reads per exchange in its first reading (1,050,624 bytes).
GET_RANGE_PARTS = 1152
#: The shell variable holding a get's file (never the verified runs' ``__tnb_f``, which cleanups delete).
GET_VAR = "__tnb_g"
#: The last line of every exchange's output.
END_LINE = "#TNB Z"

#: The command that ends every exchange's output with :data:`END_LINE`.
END_COMMAND = "printf '#TNB Z\\n'\n"
_ENCODING = "if command -v base64 >/dev/null 2>&1; then __tnb_e=b64; else __tnb_e=hex; fi\n"
#: A test that the device has ``sha256sum``.
HAS_SHA256 = "command -v sha256sum >/dev/null 2>&1"
#: Bytes per encoded line: ``base64`` wraps at 76 characters (57 bytes), ``od -An -v -tx1`` prints 16.
_LINE_BYTES = {"b64": 57, "hex": 16}
#: Part indices per typed line of a re-read's list.
_INDICES_PER_LINE = 80


# -- paths ----------------------------------------------------------------------------------


def _check_path(path: str) -> None:
    if not path:
        raise ValueError("the remote path is empty: give a file's path")
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        raise ValueError(f"the remote path {path!r} has a newline or another control character: rename the file")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_TYPED_LINE // 2:
        raise ValueError(f"the remote path is longer than {MAX_TYPED_LINE // 2} bytes: use a shorter one")


def shell_path(path: str) -> str:
    """``path`` as one shell word: single-quoted, with a leading ``~/`` (or ``~``) as ``"$HOME"``.

    A relative path that starts with ``-`` gets ``./``, so no command takes it for an option.
    """
    _check_path(path)
    if path.startswith("-"):
        path = "./" + path
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def split_path(path: str) -> tuple[str, str]:
    """``(directory, name)`` of a remote file's path; the directory as :func:`shell_path` writes it.

    ``data/x`` → ``('data', 'x')``, ``x`` → ``('.', 'x')``, ``/x`` → ``('/', 'x')``.
    A path ending in ``/`` (or ``.``, ``..``) names no file: :class:`ValueError`.
    """
    _check_path(path)
    head, _, name = path.rpartition("/")
    if name in ("", ".", "..", "~"):
        raise ValueError(f"{path!r} names a directory: give the file's path, e.g. {path.rstrip('/')}/NAME")
    if not _:
        head = "."
    elif not head:
        head = "/"
    return shell_path(head), name


# -- get ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GetStat:
    """What :func:`get_stat_script` found: an error (``noent``, ``isdir``, ``notfile``, ``perm``), or the facts."""

    error: str = ""
    encoding: str = "b64"
    awk: bool = True
    sha256: str = ""  # empty: the device has no sha256sum
    crc: int = 0
    size: int = 0


def get_stat_script(marker_id: str, path: str) -> str:
    """The text to type to look at ``path``, keep it in :data:`GET_VAR` and print its checksums.

    ``[ -r ]`` can be wrong for root and ACLs, so a file ``cksum`` cannot read
    is ``perm`` too.
    """
    body = (
        f"{GET_VAR}={shell_path(path)}\n"
        f"if [ -d \"${GET_VAR}\" ]; then printf '#TNB X isdir\\n'\n"
        f"elif [ ! -e \"${GET_VAR}\" ]; then printf '#TNB X noent\\n'\n"
        f"elif [ ! -f \"${GET_VAR}\" ]; then printf '#TNB X notfile\\n'\n"
        f'elif [ ! -r "${GET_VAR}" ] || ! __tnb_z=$(cksum <"${GET_VAR}" 2>/dev/null); then printf \'#TNB X perm\\n\'\n'
        f"else\n{_ENCODING}"
        "if command -v awk >/dev/null 2>&1; then __tnb_i=awk; else __tnb_i=noawk; fi\n"
        'printf \'#TNB G %s %s\\n\' "$__tnb_e" "$__tnb_i"\n'
        f'if {HAS_SHA256}; then printf \'#TNB H %s\\n\' "$(sha256sum <"${GET_VAR}" 2>/dev/null)"; fi\n'
        'printf \'#TNB T %s %s\\n\' "$__tnb_e" "$__tnb_z"\n'
        f"fi\n{END_COMMAND}unset __tnb_e __tnb_z __tnb_i\n"
    )
    return framed(marker_id, body, "0")


_STAT_ERROR = re.compile(r"#TNB X (noent|isdir|notfile|perm)\b")
_STAT_TOOLS = re.compile(r"#TNB G (b64|hex) (awk|noawk)\b")
_STAT_SHA = re.compile(r"#TNB H ([0-9a-f]{64})\b")
_STAT_TRAILER = re.compile(r"#TNB T (b64|hex) (\d{1,10}) (\d{1,15})\b")


def parse_get_stat(text: str) -> GetStat | None:
    """What :func:`get_stat_script` printed, or None when its lines did not arrive intact."""
    lines = text.split("\n")
    for line in lines:
        if m := _STAT_ERROR.search(line):
            return GetStat(error=m[1])
    tools = trailer = None
    sha = ""
    for line in lines:
        if m := _STAT_TOOLS.search(line):
            tools = m
        elif m := _STAT_SHA.search(line):
            sha = m[1]
        elif m := _STAT_TRAILER.search(line):
            trailer = m
    if tools is None or trailer is None or tools[1] != trailer[1]:
        return None
    if "#TNB H " in text and not sha:  # the device has sha256sum, but its line came damaged
        return None
    return GetStat("", trailer[1], tools[2] == "awk", sha, int(trailer[2]), int(trailer[3]))


def get_range_script(
    marker_id: str, first: int, count: int, *, awk: bool = True, only: Sequence[int] | None = None
) -> str:
    """The text to type to print ``count`` parts of :data:`GET_VAR`'s file from part ``first``.

    With ``awk``: *shaped* parts, one ``dd``, one encoder and one ``awk`` for
    all of them (``awk`` puts a header before each part's lines, so a part is a
    whole number of encoded lines); ``only`` (a re-read) keeps just those
    parts, so the device encodes the range again but sends only what is asked.
    Without ``awk``: checksummed parts, four processes each
    (:func:`~tunnelnb.protocol.verify.pieces_loop`).
    """
    part = GET_LAYOUT.part_bytes
    wanted = ""
    if only is not None:
        indices = sorted(set(only))
        if not indices:
            raise ValueError("a re-read needs at least one part")
        first, count = indices[0], indices[-1] - indices[0] + 1
        # A list of any length, typed in short lines: one single-quoted shell word.
        step = _INDICES_PER_LINE
        groups = [" ".join(str(i) for i in indices[j : j + step]) for j in range(0, len(indices), step)]
        wanted = "__tnb_w='" + "\n".join(groups) + "'\n"
    if awk:
        dd = f'dd if="${GET_VAR}" bs={part} skip={int(first)} count={int(count)} 2>/dev/null'
        if only is None:
            options, begin, pick, keep = "", "", "", "1"
        else:  # the wanted parts' indices as the keys of an array; ``on`` while in one of them
            options = ' -v w="$__tnb_w"'
            begin = "BEGIN { n = split(w, a); for (j = 1; j <= n; j++) want[a[j]] = 1 } "
            pick, keep = "on = (i in want); if (on) ", "on"

        def headers(encoding: str) -> str:
            n = part // _LINE_BYTES[encoding]
            header = f'"#TNB S {encoding} " i " " i'
            program = f"{begin}(NR - 1) % {n} == 0 {{ i = k + int((NR - 1) / {n}); {pick}print {header} }} {keep}"
            return f"awk -v k={int(first)}{options} '{program}'"

        dump = (
            f'if [ "$__tnb_e" = b64 ]; then {dd} | base64 | {headers("b64")}\n'
            f"else {dd} | od -An -v -tx1 | {headers('hex')}; fi\n"
        )
    else:
        dump = f'__tnb_z=$(cksum <"${GET_VAR}"); __tnb_i={int(first)}\n' + pieces_loop(
            "P", part, GET_VAR, first + count
        )
    body = (
        f'if [ -f "${{{GET_VAR}-}}" ]; then\n{_ENCODING}{wanted}{dump}fi\n'
        f"{END_COMMAND}unset __tnb_e __tnb_z __tnb_i __tnb_w\n"
    )
    return framed(marker_id, body, "0")

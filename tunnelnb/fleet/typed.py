"""Typed tables for the commands operators run: ``df``, ``free``, ``uptime``, ``ps``, ``ip addr`` …

The generic formats keep cells as printed (``12G``, ``22%``), which cannot be
compared or summed across a fleet.  These formats give numbers: sizes in bytes
(``int``), percentages as ``float``, load averages as ``float``, seconds as
``int``, so ``df[df.use_percent > 90]`` answers "which disks are over 90 %?".

The reading of each tool's layout is `jc <https://github.com/kellyjbrazil/jc>`_'s
(kept up with GNU, procps, util-linux and BusyBox), in its *raw* mode; the
typing is done here, because only here is the unit known: ``df``'s header says
it (``1K-blocks``, ``1M-blocks``, ``Size``), ``free`` prints KiB unless the
command asked otherwise (``free -m``: read from the run's command, or
``unit=``), ``ps`` prints VSZ/RSS in KiB (BusyBox may write ``12m``).  jc
reads almost anything as something, so each format checks that the output has
the shape of its tool and says so in ``parse_error`` when it does not.

``ip addr`` has no jc parser: :func:`_ip_addr` reads it (one row per address).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..errors import ParseError
from .rows import Row, excerpt, normalise

__all__ = ["TYPED_FORMATS", "TypedParser", "typed_parser"]

KIB = 1024
_UNITS = {"": 1, "b": 1, "k": KIB, "m": KIB**2, "g": KIB**3, "t": KIB**4, "p": KIB**5}


def _jc(parser: str, text: str, fmt: str) -> Any:
    import jc  # deferred: only typed formats need it

    try:
        return jc.parse(parser, normalise(text), raw=True, quiet=True)
    except Exception as exc:  # jc raises whatever its parser hit on text it cannot read
        raise ParseError(f"{fmt}: this is not {fmt} output ({type(exc).__name__}: {exc}){excerpt(text)}") from None


def _int(value: Any) -> int | None:
    if value is None or not str(value).strip().lstrip("-").isdigit():
        return None
    return int(str(value).strip())


def _float(value: Any) -> float | None:
    try:
        return float(str(value).strip().rstrip("%"))
    except (TypeError, ValueError):
        return None


def _bytes(value: Any, factor: int) -> int | None:
    """A size as bytes: a plain number times ``factor``, or ``1.5G`` / ``479Mi`` / ``12m`` (powers of 1024)."""
    if value is None:
        return None
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtpKMGTPB]?)(?:i?[bB]?)", text)
    if match is None:
        return None
    number, unit = match.groups()
    if not unit or unit == "B":
        return round(float(number) * factor) if unit == "" else round(float(number))
    return round(float(number) * _UNITS[unit.lower()])


def _need(rows: list[Row], fmt: str, text: str, check: Callable[[Row], bool], what: str) -> list[Row]:
    if not rows:
        raise ParseError(f"{fmt}: no {what} in the output{excerpt(text)}")
    for n, row in enumerate(rows, 1):
        if not check(row):
            raise ParseError(f"{fmt}: line {n} is not {what}{excerpt(text)}")
    return rows


# -- df ----------------------------------------------------------------------------

_BLOCKS = re.compile(r"^(\d+)([kmgtpb]?)_blocks$")


def _df(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
    lines = normalise(text).split("\n")
    if lines and "Capacity" in lines[0]:  # POSIX df -P (and BusyBox) say Capacity; jc reads only Use%
        lines[0] = lines[0].replace("Capacity", "Use%    ")
    # A long device name makes df wrap its row: join it with the next line.
    joined: list[str] = []
    for line in lines:
        if joined and line[:1].isspace() and len(joined[-1].split()) == 1 and len(joined) > 1:
            joined[-1] = joined[-1] + " " + line.strip()
        else:
            joined.append(line)
    if not joined or not joined[0].lstrip().startswith("Filesystem"):
        raise ParseError(
            "df: no 'Filesystem … Mounted on' header line (keep it: not `| tail -1`; "
            f"grep the mount point with `df -h /data` instead){excerpt(text)}"
        )
    rows = []
    for raw in _jc("df", "\n".join(joined), "df"):
        row: Row = {"filesystem": raw.get("filesystem")}
        if "type" in raw:
            row["type"] = raw.get("type")
        factor = next((int(m[1]) * _UNITS[m[2]] for key in raw if (m := _BLOCKS.match(key))), None)
        if "inodes" in raw:
            row.update(
                inodes=_int(raw.get("inodes")),
                iused=_int(raw.get("iused")),
                ifree=_int(raw.get("ifree")),
                iuse_percent=_float(raw.get("iuse%")),
            )
        else:
            blocks = next((raw[key] for key in raw if _BLOCKS.match(key)), raw.get("size"))
            unit = factor or 1
            row.update(
                size_bytes=_bytes(blocks, unit),
                used_bytes=_bytes(raw.get("used"), unit),
                available_bytes=_bytes(raw.get("available", raw.get("avail")), unit),
                use_percent=_float(raw.get("use%", raw.get("capacity"))),
            )
        row["mounted_on"] = raw.get("mounted_on")
        rows.append(row)
    return _need(
        rows,
        "df",
        text,
        lambda r: (
            bool(r["filesystem"])
            and bool(r["mounted_on"])
            and (r.get("use_percent") is not None or r.get("iuse_percent") is not None or r.get("inodes") is not None)
        ),
        "a df row (filesystem, sizes, use %, mount point)",
    )


# -- free --------------------------------------------------------------------------

_FREE_FLAGS = {
    "-b": 1,
    "--bytes": 1,
    "-k": KIB,
    "--kibi": KIB,
    "-m": KIB**2,
    "--mebi": KIB**2,
    "-g": KIB**3,
    "--gibi": KIB**3,
    "--tebi": KIB**4,
    "--kilo": 1000,
    "--mega": 1000**2,
    "--giga": 1000**3,
    "--tera": 1000**4,
}


def free_unit(command: str) -> int:
    """Bytes per printed unit of the ``free`` in ``command``: KiB (free's default) unless a flag says otherwise."""
    match = re.search(r"(?:^|[\s;&|(])free((?:\s+-[-\w]+)*)", command)
    factor = KIB
    for flag in match.group(1).split() if match else []:
        if flag in _FREE_FLAGS:
            factor = _FREE_FLAGS[flag]
        elif re.fullmatch(r"-[a-zA-Z]+", flag):  # combined short flags, e.g. -mt
            factor = next((_FREE_FLAGS[f"-{c}"] for c in flag[1:] if f"-{c}" in _FREE_FLAGS), factor)
    return factor


def _free(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
    unit = opts.get("unit")
    factor = free_unit(command) if unit is None else _UNITS.get(str(unit).lower().rstrip("ib"), 0)
    if not factor:
        raise ParseError(f"free: unit must be one of b, k, m, g, t, not {unit!r}")
    rows = []
    for raw in _jc("free", text, "free"):
        label = str(raw.get("type") or "")
        if label == "-/+":  # old procps' "-/+ buffers/cache" line repeats Mem's numbers
            continue
        row: Row = {"type": label.rstrip(":")}
        for key, value in raw.items():
            if key != "type":
                row[f"{key}_bytes"] = _bytes(value, factor)
        rows.append(row)
    return _need(
        rows,
        "free",
        text,
        lambda r: r["type"] in ("Mem", "Swap", "Total", "Low", "High") and r.get("total_bytes") is not None,
        "a free row (Mem:, Swap: and their sizes)",
    )


# -- uptime, ps, lsblk, the rest ------------------------------------------------------


def _uptime(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
    import jc

    lines = [line for line in normalise(text).split("\n") if "load average" in line]
    if len(lines) != 1:
        raise ParseError(f"uptime: expected one line with 'load average'{excerpt(text)}")
    try:
        raw: dict[str, Any] = jc.parse("uptime", lines[0], quiet=True)  # type: ignore[assignment]
    except Exception as exc:
        raise ParseError(f"uptime: cannot read it ({type(exc).__name__}: {exc}){excerpt(text)}") from None
    row = {
        "time": raw.get("time"),
        "uptime_s": raw.get("uptime_total_seconds"),
        "users": raw.get("users"),
        "load_1m": _float(raw.get("load_1m")),
        "load_5m": _float(raw.get("load_5m")),
        "load_15m": _float(raw.get("load_15m")),
    }
    return _need([row], "uptime", text, lambda r: r["load_15m"] is not None, "an uptime line")


_PS_NAMES = {"%cpu": "cpu_percent", "%mem": "mem_percent", "vsz": "vsz_bytes", "rss": "rss_bytes"}


def _ps(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
    rows = []
    for raw in _jc("ps", text, "ps"):
        row: Row = {}
        for key, value in raw.items():
            name = _PS_NAMES.get(key, key.replace("%", "").lower())
            if key in ("pid", "ppid", "uid", "nlwp", "pgid", "sid"):
                row[name] = _int(value)
            elif key in ("%cpu", "%mem"):
                row[name] = _float(value)
            elif key in ("vsz", "rss"):
                row[name] = _bytes(value, KIB)  # ps prints KiB; BusyBox writes 12m past 9999k
            else:
                row[name] = None if value in (None, "?") and key == "tty" else value
        rows.append(row)
    return _need(rows, "ps", text, lambda r: r.get("pid") is not None, "a ps row with a PID")


def _lsblk(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
    if not normalise(text).lstrip().startswith("NAME"):
        raise ParseError(f"lsblk: no 'NAME … TYPE …' header line{excerpt(text)}")
    rows = []
    for raw in _jc("lsblk", text, "lsblk"):
        row: Row = {}
        for key, value in raw.items():
            if key == "size":
                row["size_bytes"] = _bytes(value, 1)  # lsblk -b prints bytes
            elif key in ("rm", "ro"):
                row[key] = None if value is None else str(value) == "1"
            elif isinstance(value, list):
                row[key] = " ".join(str(v) for v in value)  # MOUNTPOINTS: one cell, blank-separated
            else:
                row[key] = value
        rows.append(row)
    return _need(rows, "lsblk", text, lambda r: bool(r.get("name")), "an lsblk row")


def _os_release(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
    import jc

    try:  # processed, not raw: jc removes the quotes os-release values may have
        row: dict[str, Any] = jc.parse("os_release", normalise(text), quiet=True)  # type: ignore[assignment]
    except Exception as exc:
        raise ParseError(f"os-release: cannot read it ({type(exc).__name__}: {exc}){excerpt(text)}") from None
    if not row or not all(re.fullmatch(r"[A-Z][A-Z0-9_]*", str(key)) for key in row):
        raise ParseError(f"os-release: not KEY=value lines as in /etc/os-release{excerpt(text)}")
    return [dict(row)]


def _jc_rows(parser: str, fmt: str, key: str, what: str) -> Callable[[str, str, dict[str, Any]], list[Row]]:
    """A format that takes jc's rows as they are, once each has ``key``; list cells are joined."""

    def parse(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
        result = _jc(parser, text, fmt)
        rows = [result] if isinstance(result, dict) else list(result)
        rows = [{k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
        return _need(rows, fmt, text, lambda r: bool(r.get(key)), what)

    return parse


def _ifconfig(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
    import jc

    try:
        rows: list[Row] = jc.parse("ifconfig", normalise(text), quiet=True)  # type: ignore[assignment]
    except Exception as exc:
        raise ParseError(f"ifconfig: cannot read it ({type(exc).__name__}: {exc}){excerpt(text)}") from None
    rows = [{k: v for k, v in r.items() if not isinstance(v, list | dict)} for r in rows]
    return _need(rows, "ifconfig", text, lambda r: bool(r.get("name")), "an ifconfig interface")


# -- ip addr (no jc parser) ------------------------------------------------------------

_IP_LINK = re.compile(r"^(\d+):\s+([^:@\s]+)(?:@\S+)?:\s+<([^>]*)>(.*)$")
_IP_ADDR = re.compile(r"^\s+(inet6?)\s+([0-9a-fA-F.:]+)(?:/(\d+))?(.*)$")


def _ip_addr(text: str, command: str, opts: dict[str, Any]) -> list[Row]:
    """``ip addr`` (iproute2 or BusyBox): one row per address, an interface without one gets a row too."""
    rows: list[Row] = []
    link: Row | None = None
    has_address = False

    def close_link() -> None:
        if link is not None and not has_address:
            rows.append({**link, "family": None, "address": None, "prefixlen": None, "scope": None})

    for line in normalise(text).split("\n"):
        if m := _IP_LINK.match(line):
            close_link()
            rest = m.group(4)
            mtu = re.search(r"\bmtu (\d+)", rest)
            state = re.search(r"\bstate (\S+)", rest)
            link = {
                "ifindex": int(m.group(1)),
                "ifname": m.group(2),
                "flags": m.group(3),
                "mtu": int(mtu.group(1)) if mtu else None,
                "state": state.group(1) if state else None,
                "mac": None,
            }
            has_address = False
        elif link is not None and (mac := re.match(r"^\s+link/\S+\s+([0-9a-fA-F:]{17})", line)):
            link["mac"] = mac.group(1).lower()
        elif link is not None and (a := _IP_ADDR.match(line)):
            scope = re.search(r"\bscope (\S+)", a.group(4))
            rows.append(
                {
                    **link,
                    "family": a.group(1),
                    "address": a.group(2),
                    "prefixlen": int(a.group(3)) if a.group(3) else None,
                    "scope": scope.group(1) if scope else None,
                }
            )
            has_address = True
    close_link()
    if not rows:
        raise ParseError(f"ip-addr: no '1: lo: <…>' interface lines as `ip addr` prints them{excerpt(text)}")
    return rows


# -- the table of formats --------------------------------------------------------------

TypedParse = Callable[[str, str, dict[str, Any]], list[Row]]

_FORMATS: dict[str, tuple[TypedParse, tuple[str, ...]]] = {
    "df": (_df, ()),
    "free": (_free, ("unit",)),
    "uptime": (_uptime, ()),
    "ps": (_ps, ()),
    "ip-addr": (_ip_addr, ()),
    "lsblk": (_lsblk, ()),
    "systemctl": (_jc_rows("systemctl", "systemctl", "unit", "a `systemctl list-units` row"), ()),
    "os-release": (_os_release, ()),
    "mount": (_jc_rows("mount", "mount", "mount_point", "a `mount` line (… on … type …)"), ()),
    "ip-route": (_jc_rows("ip_route", "ip-route", "dev", "an `ip route` line with a dev"), ()),
    "ifconfig": (_ifconfig, ()),
}
#: The typed formats, by the command they read.
TYPED_FORMATS = tuple(_FORMATS)
_ALIASES = {"ip-address": "ip-addr", "ip_address": "ip-addr", "os_release": "os-release"}


class TypedParser:
    """One typed format with its options checked: call it with an output and the command that printed it."""

    def __init__(self, fmt: str, opts: dict[str, Any]) -> None:
        self.fmt = _ALIASES.get(fmt, fmt)
        parse, allowed = _FORMATS[self.fmt]
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            known = ", ".join(allowed) or "none"
            raise ParseError(f"{self.fmt}: unknown option {', '.join(unknown)} (options: {known})")
        self._parse = parse
        self._opts = dict(opts)

    def __call__(self, text: str, command: str = "") -> list[Row]:
        if not normalise(text).strip():
            raise ParseError(f"{self.fmt}: the output is empty")
        return self._parse(text, command, self._opts)


def typed_parser(fmt: str, **opts: Any) -> TypedParser | None:
    """The typed parser for ``fmt``, or None when ``fmt`` is not a typed format."""
    if _ALIASES.get(fmt, fmt) not in _FORMATS:
        return None
    return TypedParser(fmt, opts)

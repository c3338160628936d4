"""Typed formats (jc underneath): numbers, not text, for df, free, uptime, ps, ip addr, lsblk …

Samples are what the simulated devices print (Debian: coreutils, procps, util-linux,
iproute2) and what BusyBox and POSIX variants print on smaller devices.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from tunnelnb.client.result import CommandResult
from tunnelnb.errors import ParseError
from tunnelnb.fleet.parsers import parse_output, parse_results
from tunnelnb.fleet.typed import free_unit

MIB = 1024**2

DF_H = "Filesystem      Size  Used Avail Use% Mounted on\n/dev/loop0      128M   16M  113M  12% /data\n"
DF_K = "Filesystem     1K-blocks  Used Available Use% Mounted on\n/dev/loop0        130771 15510    115261  12% /data\n"
DF_POSIX = (
    "Filesystem     1024-blocks  Used Available Capacity Mounted on\n"
    "/dev/loop0          130771 15510    115261      12% /data\n"
)
DF_BUSYBOX = (
    "Filesystem           1K-blocks      Used Available Use% Mounted on\n"
    "/dev/root              7451560   1739012   5356224  25% /\n"
    "tmpfs                    63380         0     63380   0% /dev/shm\n"
)
FREE = (
    "               total        used        free      shared  buff/cache   available\n"
    "Mem:        24683568      491412    23354288        9508     1123952    24192156\n"
    "Swap:              0           0           0\n"
)
FREE_H = (
    "               total        used        free      shared  buff/cache   available\n"
    "Mem:            23Gi       479Mi        22Gi       9.3Mi       1.1Gi        23Gi\n"
    "Swap:             0B          0B          0B\n"
)
UPTIME = " 19:15:23 up 58 days,  6:12,  0 user,  load average: 0.31, 0.28, 0.25\n"
UPTIME_BUSYBOX = " 10:01:02 up 3 min,  load average: 0.00, 0.01, 0.00\n"
PS_AUX = (
    "USER       PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND\n"
    "ops      10868  1.5  0.2   2592  1740 pts/0    Ss   19:15   0:00 sh\n"
    "ops      10952  0.0  0.0   8548  4600 pts/0    R+   19:15   0:00 ps aux\n"
)
PS_BUSYBOX = (
    "  PID USER       VSZ STAT COMMAND\n    1 root      1300 S    init\n  100 root       12m S    /usr/bin/app -d\n"
)
IP_ADDR = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000
    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
    inet 127.0.0.1/8 scope host lo
       valid_lft forever preferred_lft forever
    inet6 ::1/128 scope host
       valid_lft forever preferred_lft forever
2: ifb0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default qlen 32
    link/ether ce:15:62:9e:4b:27 brd ff:ff:ff:ff:ff:ff
4: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1400 qdisc pfifo_fast state UP group default qlen 1000
    link/ether 02:fc:00:00:00:01 brd ff:ff:ff:ff:ff:ff
    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0
       valid_lft forever preferred_lft forever
"""
LSBLK = (
    "NAME  MAJ:MIN RM  SIZE RO TYPE MOUNTPOINTS\n"
    "loop0   7:0    0  128M  0 loop /data\n"
    "zram0 253:0    0    0B  0 disk \n"
    "vda   254:0    0  256G  0 disk /tmp\n"
    "                               /home\n"
)
OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
SYSTEMCTL = """\
  UNIT                               LOAD   ACTIVE SUB       DESCRIPTION
  ssh.service                        loaded active running   OpenBSD Secure Shell server
● app.service                        loaded failed failed    The App

LOAD   = Reflects whether the unit definition was properly loaded.
2 loaded units listed.
"""


@pytest.mark.parametrize("text", [DF_H, DF_K, DF_POSIX])
def test_df_sizes_are_bytes_and_use_is_a_float(text: str) -> None:
    (row,) = parse_output("df", text)
    assert row["filesystem"] == "/dev/loop0" and row["mounted_on"] == "/data"
    assert row["use_percent"] == 12.0 and isinstance(row["use_percent"], float)
    assert isinstance(row["size_bytes"], int) and 127 * MIB < row["size_bytes"] <= 128 * MIB
    assert isinstance(row["used_bytes"], int) and isinstance(row["available_bytes"], int)


def test_df_busybox_and_one_k_blocks() -> None:
    rows = parse_output("df", DF_BUSYBOX)
    assert [r["size_bytes"] for r in rows] == [7451560 * 1024, 63380 * 1024]
    assert [r["use_percent"] for r in rows] == [25.0, 0.0]


def test_df_without_its_header_says_so() -> None:
    # Issue 15: `df -h /data | tail -1` then a parser gave an error on every row; this one says why.
    with pytest.raises(ParseError, match=r"^df: no 'Filesystem … Mounted on' header line \(keep it: not `\| tail -1`"):
        parse_output("df", DF_H.splitlines()[1])


def test_free_is_bytes_whatever_the_unit() -> None:
    mem, swap = parse_output("free", FREE)
    assert mem["type"] == "Mem" and mem["total_bytes"] == 24683568 * 1024 and swap["total_bytes"] == 0
    human = parse_output("free", FREE_H)[0]
    assert human["total_bytes"] == 23 * 1024**3 and human["used_bytes"] == 479 * MIB
    assert free_unit("free -m") == MIB and free_unit("uptime; free -b | head -2") == 1 and free_unit("cat x") == 1024
    assert parse_output("free", FREE, unit="m")[0]["total_bytes"] == 24683568 * MIB


def test_free_unit_comes_from_the_command_in_parse_results() -> None:
    result = CommandResult("d", "free -m", "ok", 0, FREE.replace("24683568", "24105"), 0.1, datetime.now(UTC))
    frame = parse_results([result], "free")
    assert frame["total_bytes"].tolist()[0] == 24105 * MIB
    assert frame["shared_bytes"].dtype == "Int64"  # Swap has none: nullable integers, not floats


@pytest.mark.parametrize("text", [UPTIME, UPTIME_BUSYBOX])
def test_uptime_loads_are_floats(text: str) -> None:
    (row,) = parse_output("uptime", text)
    assert all(isinstance(row[k], float) for k in ("load_1m", "load_5m", "load_15m"))
    assert isinstance(row["uptime_s"], int)
    if text == UPTIME:
        assert row["load_1m"] == 0.31 and row["uptime_s"] == (58 * 24 + 6) * 3600 + 12 * 60 and row["users"] == 0


def test_uptime_rejects_other_output() -> None:
    with pytest.raises(ParseError, match=r"^uptime: expected one line with 'load average'"):
        parse_output("uptime", DF_H)


def test_ps_gnu_and_busybox() -> None:
    sh, ps = parse_output("ps", PS_AUX)
    assert sh["pid"] == 10868 and sh["cpu_percent"] == 1.5 and sh["vsz_bytes"] == 2592 * 1024
    assert ps["command"] == "ps aux"
    init, app = parse_output("ps", PS_BUSYBOX)
    assert init["vsz_bytes"] == 1300 * 1024 and app["vsz_bytes"] == 12 * MIB and app["command"] == "/usr/bin/app -d"


def test_ip_addr_one_row_per_address() -> None:
    rows = parse_output("ip-addr", IP_ADDR)
    assert [(r["ifname"], r["address"]) for r in rows] == [
        ("lo", "127.0.0.1"),
        ("lo", "::1"),
        ("ifb0", None),
        ("eth0", "192.0.2.2"),
    ]
    eth0 = rows[-1]
    assert eth0["prefixlen"] == 24 and eth0["mtu"] == 1400 and eth0["state"] == "UP" and eth0["scope"] == "global"
    assert eth0["mac"] == "02:fc:00:00:00:01"
    with pytest.raises(ParseError, match=r"^ip-addr: no"):
        parse_output("ip-address", UPTIME)


def test_lsblk_sizes_and_flags() -> None:
    rows = parse_output("lsblk", LSBLK)
    assert [r["size_bytes"] for r in rows] == [128 * MIB, 0, 256 * 1024**3]
    assert rows[0]["rm"] is False and rows[2]["mountpoints"] == "/tmp /home"


def test_os_release_and_systemctl() -> None:
    (row,) = parse_output("os-release", OS_RELEASE)
    assert row["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)" and row["VERSION_ID"] == "12"
    with pytest.raises(ParseError, match=r"^os-release: not KEY=value lines"):
        parse_output("os-release", UPTIME)
    units = parse_output("systemctl", SYSTEMCTL)
    assert [(u["unit"], u["active"]) for u in units] == [("ssh.service", "active"), ("app.service", "failed")]


@pytest.mark.parametrize("fmt", ["df", "free", "ps", "lsblk", "systemctl", "mount", "ip-route", "ifconfig"])
def test_typed_formats_say_when_they_do_not_fit(fmt: str) -> None:
    with pytest.raises(ParseError, match=f"^{fmt}: "):
        parse_output(fmt, UPTIME)
    with pytest.raises(ParseError, match=f"^{fmt}: the output is empty"):
        parse_output(fmt, "\n")


def test_typed_table_across_devices_keeps_failed_ones() -> None:
    t0 = datetime.now(UTC)
    results = [
        CommandResult("a", "df -h /data", "ok", 0, DF_H, 0.1, t0),
        CommandResult("b", "df /data", "ok", 0, DF_K.replace("12%", "95%"), 0.1, t0),
        CommandResult("c", "df -h /data", "offline", None, "", 0.1, t0, "device c is offline"),
    ]
    frame = parse_results(results, "df")
    assert list(frame.columns)[:3] == ["device_id", "status", "error"] and frame.columns[-1] == "parse_error"
    assert frame["use_percent"].dtype == "float64" and frame["size_bytes"].dtype == "Int64"
    assert frame[frame.use_percent > 90].device_id.tolist() == ["b"]
    assert frame.loc[2, "status"] == "offline" and frame.loc[2, "error"] == "device c is offline"
    assert pd.isna(frame.loc[2, "use_percent"])


def test_unknown_option_of_a_typed_format() -> None:
    with pytest.raises(ParseError, match=r"^df: unknown option unit \(options: none\)$"):
        parse_output("df", DF_H, unit="m")

"""Output parsers, on output captured from real commands and on the live commands themselves."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime

import pandas as pd
import pytest

from tunnelnb.client.result import CommandResult, ResultStatus
from tunnelnb.errors import ParseError, TunnelnbError
from tunnelnb.fleet.parsers import FORMATS, make_parser, parse_output, parse_results

# -- samples (captured on Debian 12 machines and a Raspberry Pi OS gateway) ------

DF_H_PI = """\
Filesystem      Size  Used Avail Use% Mounted on
/dev/root        29G  4.1G   24G  15% /
devtmpfs        1.8G     0  1.8G   0% /dev
tmpfs           1.9G     0  1.9G   0% /dev/shm
tmpfs           759M  1.2M  758M   1% /run
tmpfs           5.0M  4.0K  5.0M   1% /run/lock
/dev/mmcblk0p1  253M   51M  202M  21% /boot
tmpfs           380M   20K  380M   1% /run/user/1000
"""

# A mount point longer than "Mounted on" runs under both header words.
DF_H_LONG_MOUNT = """\
Filesystem               Size  Used Avail Use% Mounted on
devtmpfs                  12G     0   12G   0% /dev
/dev/vda                 252G   23G   80G  22% /
model_tools_unavailable  4.0K     0  4.0K   0% /mnt/sandboxing/model_tools_env/v1/python
tmpfs                     12G     0   12G   0% /sys/fs/cgroup
"""

FREE_M = """\
               total        used        free      shared  buff/cache   available
Mem:           24105         356       23503           8         497       23748
Swap:              0           0           0
"""

FREE_M_PI = """\
               total        used        free      shared  buff/cache   available
Mem:            3794        1032         412          52        2349        2480
Swap:           1023          14        1009
"""

# ps aux with commands containing spaces, a truncated user name and a java process whose
# VSZ and RSS overflow their columns and push the rest of the row right (as procps does).
PS_AUX = """\
USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND
root           1  0.0  0.1 167744 11904 ?        Ss   Apr30   0:07 /sbin/init splash
root           2  0.0  0.0      0     0 ?        S    Apr30   0:00 [kthreadd]
systemd+     612  0.0  0.3  25532 12800 ?        Ss   Apr30   0:01 /lib/systemd/systemd-resolved
message+     845  0.0  0.1   9620  5120 ?        Ss   Apr30   0:03 @dbus-daemon --system --address=systemd: --nofork
mosquit+    1012  0.1  0.1  11948  6656 ?        Ss   Apr30   2:14 /usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf
app         1290  2.5 12.9 14598764 502344 ?     Sl   Apr30 120:33 java -Xmx512m -jar /opt/app/app.jar --prod
ops        23817  0.0  0.0  10072  3456 pts/0    R+   09:41   0:00 ps aux
"""

IP_BR_A = """\
lo               UNKNOWN        127.0.0.1/8 ::1/128
eth0             UP             192.168.10.23/24 fe80::dea6:32ff:fe0b:1c2d/64
wlan0            DOWN
wwan0            UP             10.64.3.201/30
"""

LSBLK = """\
NAME        MAJ:MIN RM  SIZE RO TYPE MOUNTPOINTS
mmcblk0     179:0    0 29.7G  0 disk
├─mmcblk0p1 179:1    0  256M  0 part /boot
└─mmcblk0p2 179:2    0 29.5G  0 part /
"""

DOCKER_PS = (  # wider than a source line: each output line is split in two
    "CONTAINER ID   IMAGE          COMMAND                  CREATED        STATUS                    "
    "PORTS                    NAMES\n"
    '4c01db0b339c   nginx:1.25     "/docker-entrypoint.…"   2 hours ago    Up 2 hours                '
    "0.0.0.0:8080->80/tcp     web\n"
    'd7886598dbe2   redis:7        "docker-entrypoint.s…"   3 days ago     Exited (0) 2 days ago     '
    "                         cache\n"
)

SS_TLN = """\
State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess
LISTEN 0      128          0.0.0.0:2024      0.0.0.0:*
LISTEN 0      4096       127.0.0.1:1883      0.0.0.0:*
"""

W_OUTPUT = """\
 09:41:07 up 12 days,  3:04,  1 user,  load average: 0.08, 0.12, 0.10
USER     TTY      FROM             LOGIN@   IDLE   JCPU   PCPU WHAT
ops      pts/0    10.8.0.6         09:12    0.00s  0.05s  0.00s w
"""

OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""

LSCPU = """\
Architecture:                       aarch64
CPU op-mode(s):                     32-bit, 64-bit
Byte Order:                         Little Endian
CPU(s):                             4
Model name:                         Cortex-A72
CPU max MHz:                        1800.0000
"""

UPTIME = " 09:41:07 up 12 days,  3:04,  2 users,  load average: 0.08, 0.12, 0.10\n"
UPTIME_REGEX = r"load average: (?P<load1>[\d.]+), (?P<load5>[\d.]+), (?P<load15>[\d.]+)"


# -- kv ---------------------------------------------------------------------------


def test_kv_os_release_unquotes_values() -> None:
    (row,) = parse_output("kv", OS_RELEASE)
    assert row["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert row["VERSION_ID"] == "12"  # numbers stay text at this level
    assert row["HOME_URL"] == "https://www.debian.org/"
    assert len(row) == 9


def test_kv_keep_quotes() -> None:
    (row,) = parse_output("kv", OS_RELEASE, unquote=False)
    assert row["VERSION_ID"] == '"12"'


def test_kv_colon_lines_strip_keys_and_values() -> None:
    (row,) = parse_output("kv", LSCPU)
    assert row == {
        "Architecture": "aarch64",
        "CPU op-mode(s)": "32-bit, 64-bit",
        "Byte Order": "Little Endian",
        "CPU(s)": "4",
        "Model name": "Cortex-A72",
        "CPU max MHz": "1800.0000",
    }


def test_kv_mixed_separators_comments_crlf_and_noise() -> None:
    text = "# device facts\r\nserial=ABC123\r\nuptime: 23:10:08 up\r\nnot a pair\r\nurl: http://x/?a=1\r\nempty=\r\n"
    (row,) = parse_output("kv", text)
    # ":" only separates when a blank follows it, so times and URLs survive; the first separator wins.
    assert row == {"serial": "ABC123", "uptime": "23:10:08 up", "url": "http://x/?a=1", "empty": ""}


def test_kv_explicit_separator_and_last_value_wins() -> None:
    (row,) = parse_output("kv", "a=1=2\nb: 3\na=4\n", sep="=")
    assert row == {"a": "4"}


def test_kv_without_pairs_fails_clearly() -> None:
    with pytest.raises(ParseError, match=r"^kv: no 'key=value' or 'key: value' lines in the output \(it starts"):
        parse_output("kv", "just some text\nand more")
    with pytest.raises(ParseError, match=r"\(it is empty\)$"):
        parse_output("kv", "\n\n")


# -- json -------------------------------------------------------------------------


def test_json_object_is_one_row() -> None:
    assert parse_output("json", '{"temp": 41.5, "fan": true, "ok": null}\r\n') == [
        {"temp": 41.5, "fan": True, "ok": None}
    ]


def test_json_list_of_objects() -> None:
    text = '[\n  {"iface": "eth0", "rx": 1200},\n  {"iface": "wlan0", "rx": 0}\n]\n'
    assert parse_output("json", text) == [{"iface": "eth0", "rx": 1200}, {"iface": "wlan0", "rx": 0}]


def test_json_lines() -> None:
    text = '{"ts": 1, "level": "info"}\n\n{"ts": 2, "level": "warn"}\n'
    assert parse_output("json", text) == [{"ts": 1, "level": "info"}, {"ts": 2, "level": "warn"}]


def test_json_empty_list_is_no_rows() -> None:
    assert parse_output("json", "[]") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"^json: the output is empty$"),
        ("[1, 2]", r"^json: item 1 of the list is int, not an object$"),
        ('"hello"', r"^json: expected an object or a list of objects, got str$"),
        ('{\n  "a": 1,\n  "b": \n}', r"^json: Expecting value at line 4 column 1"),
        ("bash: jq: command not found", r"^json: Expecting value at line 1 column 1 \(it starts 'bash: jq"),
        ('{"a": 1}\n{"a": ', r"^json: line 2 of the JSON Lines is not JSON"),
        ('{"a": 1}\n[3]', r"^json: item 1 of the list on line 2 is int"),
    ],
)
def test_json_errors(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_output("json", text)


# -- csv --------------------------------------------------------------------------


def test_csv_with_header_and_quotes() -> None:
    text = 'name,size,comment\r\nboot.img,1024,"kernel, v6.1"\r\nroot.img, 2048 ,plain\r\n\r\n'
    assert parse_output("csv", text) == [
        {"name": "boot.img", "size": "1024", "comment": "kernel, v6.1"},
        {"name": "root.img", "size": "2048", "comment": "plain"},
    ]


def test_csv_separator_and_columns() -> None:
    text = "eth0;UP;1500\nwlan0;DOWN;1500\n"
    assert parse_output("csv", text, sep=";", columns=["iface", "state", "mtu"]) == [
        {"iface": "eth0", "state": "UP", "mtu": "1500"},
        {"iface": "wlan0", "state": "DOWN", "mtu": "1500"},
    ]


def test_csv_explicit_none_columns_means_header_row() -> None:
    assert parse_output("csv", "a,b\n1,2\n", columns=None) == [{"a": "1", "b": "2"}]
    assert parse_output("table", "A B\n1 2\n", columns=None) == [{"A": "1", "B": "2"}]
    with pytest.raises(ParseError, match="csv: columns must name at least one column"):
        make_parser("csv", columns=[])


def test_csv_duplicate_header_names_are_made_unique() -> None:
    assert parse_output("csv", "a,a,b\n1,2,3\n") == [{"a": "1", "a.1": "2", "b": "3"}]


def test_csv_ragged_row_is_an_error() -> None:
    with pytest.raises(
        ParseError, match=r"^csv: line 3 has 2 fields, the header has 3 \(is the separator ',' right\?\)"
    ):
        parse_output("csv", "a,b,c\n1,2,3\n4,5\n")


def test_csv_empty() -> None:
    with pytest.raises(ParseError, match="csv: the output is empty"):
        parse_output("csv", "  \n")


# -- table ------------------------------------------------------------------------


def test_table_df_mounted_on_is_one_column() -> None:
    rows = parse_output("table", DF_H_PI)
    assert list(rows[0]) == ["Filesystem", "Size", "Used", "Avail", "Use%", "Mounted on"]
    assert rows[0] == {
        "Filesystem": "/dev/root",
        "Size": "29G",
        "Used": "4.1G",
        "Avail": "24G",
        "Use%": "15%",
        "Mounted on": "/",
    }
    assert [r["Mounted on"] for r in rows] == ["/", "/dev", "/dev/shm", "/run", "/run/lock", "/boot", "/run/user/1000"]
    assert rows[5]["Filesystem"] == "/dev/mmcblk0p1"


def test_table_df_with_mount_point_longer_than_header() -> None:
    rows = parse_output("table", DF_H_LONG_MOUNT)
    assert list(rows[0]) == ["Filesystem", "Size", "Used", "Avail", "Use%", "Mounted on"]
    assert rows[2]["Filesystem"] == "model_tools_unavailable"
    assert rows[2]["Mounted on"] == "/mnt/sandboxing/model_tools_env/v1/python"
    assert [r["Size"] for r in rows] == ["12G", "252G", "4.0K", "12G"]


@pytest.mark.parametrize("text", [FREE_M, FREE_M_PI])
def test_table_free_row_labels(text: str) -> None:
    mem, swap = parse_output("table", text)
    assert list(mem) == ["label", "total", "used", "free", "shared", "buff/cache", "available"]
    assert mem["label"] == "Mem" and swap["label"] == "Swap"
    assert all(value is not None for value in mem.values())
    # Swap has no shared / buff/cache / available cells: missing, not shifted.
    assert swap["shared"] is None and swap["buff/cache"] is None and swap["available"] is None
    assert int(mem["used"]) + int(mem["free"]) <= int(mem["total"])


def test_table_free_exact_values() -> None:
    mem, swap = parse_output("table", FREE_M_PI)
    assert mem == {
        "label": "Mem",
        "total": "3794",
        "used": "1032",
        "free": "412",
        "shared": "52",
        "buff/cache": "2349",
        "available": "2480",
    }
    assert (swap["total"], swap["used"], swap["free"]) == ("1023", "14", "1009")


def test_table_ps_aux_command_keeps_its_spaces() -> None:
    rows = parse_output("table", PS_AUX)
    assert len(rows) == 7
    assert list(rows[0]) == ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME", "COMMAND"]
    assert rows[0]["COMMAND"] == "/sbin/init splash"
    assert rows[3]["COMMAND"] == "@dbus-daemon --system --address=systemd: --nofork"
    assert rows[3]["USER"] == "message+"
    assert rows[6] == {
        "USER": "ops",
        "PID": "23817",
        "%CPU": "0.0",
        "%MEM": "0.0",
        "VSZ": "10072",
        "RSS": "3456",
        "TTY": "pts/0",
        "STAT": "R+",
        "START": "09:41",
        "TIME": "0:00",
        "COMMAND": "ps aux",
    }


def test_table_ps_aux_overflowing_row() -> None:
    java = parse_output("table", PS_AUX)[5]
    assert java["PID"] == "1290"
    assert (java["VSZ"], java["RSS"], java["TTY"], java["STAT"]) == ("14598764", "502344", "?", "Sl")
    assert java["TIME"] == "120:33"
    assert java["COMMAND"] == "java -Xmx512m -jar /opt/app/app.jar --prod"


def test_table_without_header_uses_columns_and_last_takes_the_rest() -> None:
    rows = parse_output("table", IP_BR_A, columns=["iface", "state", "addresses"])
    assert rows == [
        {"iface": "lo", "state": "UNKNOWN", "addresses": "127.0.0.1/8 ::1/128"},
        {"iface": "eth0", "state": "UP", "addresses": "192.168.10.23/24 fe80::dea6:32ff:fe0b:1c2d/64"},
        {"iface": "wlan0", "state": "DOWN", "addresses": None},
        {"iface": "wwan0", "state": "UP", "addresses": "10.64.3.201/30"},
    ]


def test_table_lsblk_keeps_an_empty_upper_case_column_apart() -> None:
    rows = parse_output("table", LSBLK)
    assert list(rows[0]) == ["NAME", "MAJ:MIN", "RM", "SIZE", "RO", "TYPE", "MOUNTPOINTS"]
    assert rows[0]["MOUNTPOINTS"] is None and rows[0]["TYPE"] == "disk"
    assert rows[1]["NAME"] == "├─mmcblk0p1" and rows[1]["MOUNTPOINTS"] == "/boot"
    assert rows[2]["SIZE"] == "29.5G"


def test_table_docker_ps_multiword_cells_and_blank_middle_cell() -> None:
    web, cache = parse_output("table", DOCKER_PS)
    assert list(web) == ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert web["CREATED"] == "2 hours ago" and web["PORTS"] == "0.0.0.0:8080->80/tcp"
    assert cache["STATUS"] == "Exited (0) 2 days ago"
    assert cache["PORTS"] is None and cache["NAMES"] == "cache"


def test_table_ss_right_aligned_two_word_headers() -> None:
    rows = parse_output("table", SS_TLN)
    assert list(rows[0]) == ["State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:PortProcess"]
    assert rows[1]["Local Address:Port"] == "127.0.0.1:1883"
    assert rows[1]["Send-Q"] == "4096"


def test_table_skip_lines_before_the_header() -> None:
    (row,) = parse_output("table", W_OUTPUT, skip=1)
    assert row["USER"] == "ops" and row["FROM"] == "10.8.0.6" and row["LOGIN@"] == "09:12"
    assert row["WHAT"] == "w"


def test_table_header_only_or_one_line_is_an_error_that_says_so() -> None:
    # Issue 15: `--parse table` on uptime (one line) was an empty frame with no error.
    with pytest.raises(ParseError, match=r"^table: no data lines under the header \(it starts 'PID TTY TIME CMD'\)$"):
        parse_output("table", "PID TTY TIME CMD\n")
    with pytest.raises(ParseError, match=r"^table: no data lines under the header \(it starts '09:41:07 up"):
        parse_output("table", UPTIME)
    with pytest.raises(ParseError, match=r"^table: the output is empty \(no header line\)$"):
        parse_output("table", "\n  \n")


def test_table_tabs_and_crlf() -> None:
    rows = parse_output("table", "NAME\tSTATE\r\neth0\tUP\r\nwlan0\tDOWN\r\n")
    assert rows == [{"NAME": "eth0", "STATE": "UP"}, {"NAME": "wlan0", "STATE": "DOWN"}]


# -- regex ------------------------------------------------------------------------


def test_regex_uptime_load() -> None:
    assert parse_output("regex", UPTIME, pattern=UPTIME_REGEX) == [{"load1": "0.08", "load5": "0.12", "load15": "0.10"}]


def test_regex_one_row_per_match_multiline() -> None:
    text = "eth0: rx 100 tx 7\nwlan0: rx 0 tx 0\nnoise\n"
    rows = parse_output("regex", text, pattern=r"^(?P<iface>\w+): rx (?P<rx>\d+) tx (?P<tx>\d+)$")
    assert rows == [{"iface": "eth0", "rx": "100", "tx": "7"}, {"iface": "wlan0", "rx": "0", "tx": "0"}]


def test_regex_flags_and_optional_groups() -> None:
    rows = parse_output(
        "regex", "ERROR disk\nwarn fan\n", pattern=r"^(?P<level>error|warn)(?P<x>!)? (?P<what>\w+)", flags=re.I
    )
    assert rows == [{"level": "ERROR", "x": None, "what": "disk"}, {"level": "warn", "x": None, "what": "fan"}]


def test_regex_compiled_pattern_gets_multiline() -> None:
    compiled = re.compile(r"^(?P<word>\w+)$", re.IGNORECASE)
    assert parse_output("regex", "one\ntwo\n", pattern=compiled) == [{"word": "one"}, {"word": "two"}]
    assert parse_output("regex", "One\n", pattern=re.compile(r"^(?P<w>one)$"), flags=re.I) == [{"w": "One"}]


def test_regex_no_match_is_no_rows() -> None:
    assert parse_output("regex", "nothing here", pattern=UPTIME_REGEX) == []


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({}, r"^regex: give pattern="),
        ({"pattern": "(unclosed"}, r"^regex: the pattern does not compile: missing \), unterminated subpattern"),
        ({"pattern": r"(\d+)"}, r"^regex: the pattern has no named groups"),
    ],
)
def test_regex_bad_patterns(opts: dict, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_output("regex", "1 2 3", **opts)


# -- formats and options ----------------------------------------------------------


def test_unknown_format_and_option() -> None:
    with pytest.raises(ParseError, match=r"^unknown output format 'yaml': use one of kv, json, csv, table, regex, df,"):
        parse_output("yaml", "a: 1")
    with pytest.raises(ParseError, match=r"^table: unknown option sepp \(options: columns, skip\)$"):
        parse_output("table", DF_H_PI, sepp=",")
    with pytest.raises(ParseError, match=r"^csv: sep must be one character"):
        make_parser("csv", sep="::")
    with pytest.raises(ParseError, match=r"^table: skip must be a number of lines"):
        make_parser("table", skip=-1)
    assert set(FORMATS) >= {"kv", "json", "csv", "table", "regex", "df", "free", "uptime", "ps", "ip-addr", "lsblk"}
    assert issubclass(ParseError, TunnelnbError)


# -- live commands on this machine ------------------------------------------------


def _run(command: str) -> str:
    return subprocess.run(command, shell=True, capture_output=True, text=True, check=True, timeout=10).stdout


def test_live_df_h() -> None:
    out = _run("df -h")
    rows = parse_output("table", out)
    assert len(rows) == len(out.strip().splitlines()) - 1
    assert all(list(r) == ["Filesystem", "Size", "Used", "Avail", "Use%", "Mounted on"] for r in rows)
    assert all(re.fullmatch(r"\d+%|-", r["Use%"]) for r in rows)
    assert all(r["Mounted on"].startswith("/") for r in rows)
    assert "/" in {r["Mounted on"] for r in rows}


def test_live_df_posix_matches_a_naive_split() -> None:
    # With -P every cell is one word except the last: a word split is the ground truth.
    out = _run("df -P")
    rows = parse_output("table", out)
    for row, line in zip(rows, out.strip().splitlines()[1:], strict=True):
        assert list(row.values()) == line.rstrip().split(None, 5)


def test_live_free_m() -> None:
    rows = parse_output("table", _run("free -m"))
    by_label = {r["label"]: r for r in rows}
    assert set(by_label) >= {"Mem", "Swap"}
    mem = by_label["Mem"]
    assert all(mem[c].isdigit() for c in ("total", "used", "free", "shared", "buff/cache", "available"))
    assert int(mem["available"]) <= int(mem["total"])
    assert by_label["Swap"]["total"].isdigit()


def test_live_ps_aux_matches_a_naive_split() -> None:
    out = _run("ps aux")
    rows = parse_output("table", out)
    lines = out.strip().splitlines()[1:]
    assert len(rows) == len(lines) > 1
    for row, line in zip(rows, lines, strict=True):
        assert list(row.values()) == line.rstrip().split(None, 10)  # ten one-word cells, then COMMAND
    assert any(r["COMMAND"] == "ps aux" for r in rows)


def test_live_os_release() -> None:
    (row,) = parse_output("kv", _run("cat /etc/os-release"))
    assert row["ID"] and re.fullmatch(r"[a-z0-9._-]+", row["ID"])
    assert not row["PRETTY_NAME"].startswith('"')


def test_live_uptime() -> None:
    (row,) = parse_output("regex", _run("uptime"), pattern=UPTIME_REGEX)
    assert all(float(row[k]) >= 0 for k in ("load1", "load5", "load15"))


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_live_ip_br_a() -> None:
    rows = parse_output("table", _run("ip -br a"), columns=["iface", "state", "addresses"])
    lo = next(r for r in rows if r["iface"] == "lo")
    assert "127.0.0.1/8" in lo["addresses"].split()


# -- many devices: parse_results --------------------------------------------------

T0 = datetime(2024, 5, 1, 9, 41, tzinfo=UTC)


def result(device_id: str, stdout: str, status: str = ResultStatus.OK, exit_code: int | None = 0) -> CommandResult:
    return CommandResult(device_id, "cmd", status, exit_code, stdout, 0.1, T0, "" if status == "ok" else status)


def test_parse_results_long_table_with_numbers() -> None:
    frame = parse_results([result("gw-1", FREE_M), result("gw-2", FREE_M_PI)], "table")
    assert list(frame.columns) == [
        "device_id",
        "status",
        "error",
        "label",
        "total",
        "used",
        "free",
        "shared",
        "buff/cache",
        "available",
        "parse_error",
    ]
    assert frame["device_id"].tolist() == ["gw-1", "gw-1", "gw-2", "gw-2"]
    assert frame["label"].tolist() == ["Mem", "Swap", "Mem", "Swap"]
    assert frame["total"].dtype == "int64" and frame["total"].tolist() == [24105, 0, 3794, 1023]
    # Swap rows lack "shared": the integers stay integers, nullable.
    assert frame["shared"].dtype == "Int64"
    assert frame["shared"].isna().tolist() == [False, True, False, True]
    assert (frame["parse_error"] == "").all()


def test_parse_results_keeps_non_numbers_as_text() -> None:
    frame = parse_results([result("pi", DF_H_PI)], "table")
    assert frame["Size"].tolist()[:2] == ["29G", "1.8G"]
    assert pd.api.types.is_string_dtype(frame["Use%"])
    assert not pd.api.types.is_numeric_dtype(frame["Size"])


def test_parse_results_floats_and_kv() -> None:
    frame = parse_results([result("a", "temp=41.5\nfan=on\n"), result("b", "temp=39\nfan=off\n")], "kv")
    assert frame["temp"].dtype == "float64" and frame["temp"].tolist() == [41.5, 39.0]
    assert frame["fan"].tolist() == ["on", "off"]


def test_parse_failure_is_a_row_for_that_device_only() -> None:
    frame = parse_results(
        [result("a", '{"v": 1}'), result("b", "sh: 1: jq: not found"), result("c", '[{"v": 2}, {"v": 3}]')],
        "json",
    )
    assert frame["device_id"].tolist() == ["a", "b", "c", "c"]
    assert frame["parse_error"].tolist()[0] == "" and frame["parse_error"].tolist()[2:] == ["", ""]
    assert frame["parse_error"][1].startswith("json: Expecting value at line 1 column 1")
    assert frame["v"].isna().tolist() == [False, True, False, False]
    assert frame["v"].dtype == "Int64"  # JSON's own integers, with a gap: nullable, not floats


def test_failed_commands_keep_their_row_unparsed_unless_asked() -> None:
    # Issue 15: devices that were not ok vanished from parsed tables.
    results = [
        result("a", "x=1"),
        result("b", "x=2", ResultStatus.ERROR, 1),
        result("c", "", ResultStatus.OFFLINE, None),
    ]
    frame = parse_results(results, "kv")
    assert list(frame.columns) == ["device_id", "status", "error", "x", "parse_error"]
    assert frame["device_id"].tolist() == ["a", "b", "c"]
    assert frame["status"].tolist() == ["ok", "error", "offline"]
    assert frame["error"].tolist() == ["", "error", "offline"]
    assert frame["x"].tolist()[0] == 1 and frame["x"].isna().tolist() == [False, True, True]
    assert frame["x"].dtype == "Int64" and frame["parse_error"].tolist() == ["", "", ""]
    frame = parse_results(results, "kv", include_failed=True)
    assert frame["device_id"].tolist() == ["a", "b", "c"]
    assert frame["x"].tolist()[:2] == [1, 2]
    assert frame["parse_error"][2] == "kv: no 'key=value' or 'key: value' lines in the output (it is empty)"


def test_devices_with_no_rows_keep_one_empty_row() -> None:
    frame = parse_results([result("a", UPTIME), result("b", "no load here")], "regex", pattern=UPTIME_REGEX)
    assert frame["device_id"].tolist() == ["a", "b"]
    assert frame["load15"].tolist()[0] == 0.10 and pd.isna(frame["load15"][1])
    assert frame["parse_error"].tolist() == ["", ""]


def test_parsed_columns_named_like_ours_are_renamed() -> None:
    frame = parse_results([result("gw-1", '{"device_id": "sensor-7", "parse_error": 0, "status": "up"}')], "json")
    assert list(frame.columns) == [
        "device_id",
        "status",
        "error",
        "device_id_parsed",
        "parse_error_parsed",
        "status_parsed",
        "parse_error",
    ]
    assert frame.iloc[0].tolist() == ["gw-1", "ok", "", "sensor-7", 0, "up", ""]


def test_no_results_gives_an_empty_frame_with_the_fixed_columns() -> None:
    frame = parse_results([], "kv")
    assert list(frame.columns) == ["device_id", "status", "error", "parse_error"] and len(frame) == 0


def test_bad_options_raise_once_not_per_device() -> None:
    with pytest.raises(ParseError, match="regex: give pattern="):
        parse_results([result("a", "x")], "regex")


def test_mixed_numbers_and_text_stay_text() -> None:
    frame = parse_results([result("a", "v=1"), result("b", "v=n/a"), result("c", "v=")], "kv")
    assert frame["v"].tolist() == ["1", "n/a", ""]

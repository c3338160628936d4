"""Results: the fixed table schema, grouping by output, and the (escaped) notebook display."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from tunnelnb.client.result import CommandResult, ResultStatus
from tunnelnb.fleet.parsers import parse_results
from tunnelnb.fleet.results import COLUMNS, Results, normalise_output

T0 = datetime(2024, 5, 1, 9, 41, 0, tzinfo=UTC)
STR_DTYPE = pd.Series(["x"], dtype=str).dtype  # pandas' default string dtype (object in 2.x, str in 3.x)


def make(
    device_id: str,
    stdout: str = "",
    status: str = ResultStatus.OK,
    exit_code: int | None = 0,
    *,
    command: str = "uname -r",
    duration_s: float = 0.5,
    started_at: datetime = T0,
    error: str = "",
) -> CommandResult:
    return CommandResult(device_id, command, status, exit_code, stdout, duration_s, started_at, error)


@pytest.fixture
def fleet() -> Results:
    """12 devices: 7 print 6.1.0 (with assorted line ends), 3 print 5.10.0, one fails, one is offline."""
    results = []
    kernel_new = ["6.1.0-21-arm64\n", "6.1.0-21-arm64\r\n", "6.1.0-21-arm64  \n\n", "\n6.1.0-21-arm64"]
    for n in range(1, 8):
        results.append(make(f"device-{n:02d}", kernel_new[n % 4], started_at=T0 + timedelta(seconds=0.1 * n)))
    for n in range(8, 11):
        results.append(make(f"device-{n:02d}", "5.10.0-9-arm64\n", duration_s=0.8))
    results.append(make("device-11", "uname: not found\n", ResultStatus.ERROR, 127, error="exit status 127"))
    results.append(
        make("device-12", "", ResultStatus.OFFLINE, None, duration_s=2.3, error="device device-12 is offline")
    )
    return Results(results)


# -- the table --------------------------------------------------------------------


def test_df_schema_is_exact(fleet: Results) -> None:
    frame = fleet.df
    assert (
        tuple(frame.columns)
        == COLUMNS
        == (
            "device_id",
            "command",
            "status",
            "exit_code",
            "stdout",
            "duration_s",
            "started_at",
            "error",
        )
    )
    assert frame.dtypes.to_dict() == {
        "device_id": STR_DTYPE,
        "command": STR_DTYPE,
        "status": STR_DTYPE,
        "exit_code": pd.Int64Dtype(),
        "stdout": STR_DTYPE,
        "duration_s": "float64",
        "started_at": pd.DatetimeTZDtype("us", "UTC"),
        "error": STR_DTYPE,
    }
    assert list(frame.index) == list(range(12))


def test_df_rows_in_the_given_order_with_values(fleet: Results) -> None:
    frame = fleet.df
    assert frame["device_id"].tolist() == [f"device-{n:02d}" for n in range(1, 13)]
    assert frame.loc[10, "exit_code"] == 127
    assert frame["exit_code"].isna().tolist() == [False] * 11 + [True]
    assert frame.loc[11, "status"] == "offline" and frame.loc[11, "error"] == "device device-12 is offline"
    assert frame.loc[0, "error"] == "" and frame.loc[0, "stdout"] == "6.1.0-21-arm64\r\n"  # stdout kept as is
    assert frame.loc[3, "started_at"] == pd.Timestamp("2024-05-01 09:41:00.400", tz="UTC")  # device-04
    assert frame.loc[9, "duration_s"] == 0.8


def test_df_times_are_utc_whatever_came_in() -> None:
    naive = datetime(2024, 5, 1, 9, 41)
    beijing = datetime(2024, 5, 1, 17, 41, tzinfo=timezone(timedelta(hours=8)))
    frame = Results([make("a", started_at=naive), make("b", started_at=beijing)]).df
    assert frame["started_at"].tolist() == [pd.Timestamp("2024-05-01 09:41", tz="UTC")] * 2
    assert str(frame["started_at"].dt.tz) == "UTC"


def test_df_none_texts_become_empty_strings() -> None:
    frame = Results([CommandResult("a", "true", "timeout", None, None, 30.0, T0, None)]).df  # type: ignore[arg-type]
    assert frame.loc[0, "stdout"] == "" and frame.loc[0, "error"] == ""


def test_empty_results_keep_the_schema(fleet: Results) -> None:
    empty = Results().df
    assert tuple(empty.columns) == COLUMNS and len(empty) == 0
    assert empty.dtypes.to_dict() == fleet.df.dtypes.to_dict()


def test_df_is_a_fresh_frame_and_to_frame_is_the_same(fleet: Results) -> None:
    frame = fleet.df
    frame.loc[0, "stdout"] = "changed"
    assert fleet.df.loc[0, "stdout"] == "6.1.0-21-arm64\r\n"
    pd.testing.assert_frame_equal(fleet.to_frame(), fleet.df)


# -- container --------------------------------------------------------------------


def test_len_iteration_and_lookup(fleet: Results) -> None:
    assert len(fleet) == 12
    assert [r.device_id for r in fleet] == fleet.device_ids
    assert fleet["device-11"].exit_code == 127
    assert fleet[0].device_id == "device-01" and fleet[-1].device_id == "device-12"
    assert fleet[np.int64(2)].device_id == "device-03"
    assert isinstance(fleet[1:3], Results) and fleet[1:3].device_ids == ["device-02", "device-03"]
    assert "device-05" in fleet and "device-99" not in fleet


def test_unknown_device_lookup_says_what_there_is() -> None:
    res = Results([make("a"), make("b")])
    with pytest.raises(KeyError, match=r"no result for device 'zz' \(results for: a, b\)"):
        res["zz"]


def test_repeated_device_lookup_gives_the_last() -> None:
    res = Results([make("a", "first"), make("a", "second")])
    assert res["a"].stdout == "second"
    assert res.device_ids == ["a"]


def test_ok_and_failed_are_results(fleet: Results) -> None:
    assert isinstance(fleet.ok, Results) and isinstance(fleet.failed, Results)
    assert len(fleet.ok) == 10
    assert fleet.failed.device_ids == ["device-11", "device-12"]
    assert fleet.failed.df["status"].tolist() == ["error", "offline"]
    assert len(fleet.ok) + len(fleet.failed) == len(fleet)


def test_counts_in_status_order() -> None:
    res = Results(
        [make("a", status="offline"), make("b", status="weird"), make("c"), make("d", status="timeout"), make("e")]
    )
    assert list(res.counts().items()) == [("ok", 2), ("timeout", 1), ("offline", 1), ("weird", 1)]


# -- groups -----------------------------------------------------------------------


def test_normalise_output() -> None:
    assert normalise_output("\r\n\n\nA  \r\nB\t\r\n\r\n  \n") == "A\nB"
    assert normalise_output("  indented\n") == "  indented"  # leading blanks of a line are content
    assert normalise_output(None) == normalise_output("") == normalise_output("\n \n") == ""
    assert normalise_output("a\rb") == "a\nb"


def test_groups_merge_line_end_and_padding_differences(fleet: Results) -> None:
    groups = fleet.groups()
    assert list(groups.columns) == ["output", "count", "devices", "status"]
    assert groups["output"].tolist() == ["6.1.0-21-arm64", "5.10.0-9-arm64", "uname: not found", ""]
    assert groups["count"].tolist() == [7, 3, 1, 1]
    assert groups["count"].dtype == "int64"
    assert groups["devices"][0] == [f"device-{n:02d}" for n in range(1, 8)]
    assert groups["devices"][1] == ["device-08", "device-09", "device-10"]
    assert groups["status"].tolist() == ["ok", "ok", "error", "offline"]


def test_groups_split_same_output_by_status_and_keep_ties_in_order() -> None:
    res = Results(
        [
            make("a", "", ResultStatus.TIMEOUT, None),
            make("b", ""),
            make("c", " \r\n"),
            make("d", "", ResultStatus.TIMEOUT, None),
            make("e", "x"),
        ]
    )
    groups = res.groups()
    assert groups[["output", "count", "status"]].values.tolist() == [
        ["", 2, "timeout"],
        ["", 2, "ok"],
        ["x", 1, "ok"],
    ]
    assert groups["devices"].tolist() == [["a", "d"], ["b", "c"], ["e"]]


def test_groups_of_nothing() -> None:
    groups = Results().groups()
    assert list(groups.columns) == ["output", "count", "devices", "status"] and len(groups) == 0


def test_summary_line(fleet: Results) -> None:
    assert fleet.summary() == (
        '7 devices printed "6.1.0-21-arm64", 3 printed "5.10.0-9-arm64", 1 error printed "uname: not found", 1 offline'
    )


def test_summary_truncates_long_and_multiline_outputs() -> None:
    res = Results([make("a", "x" * 100), make("b", "line one\nline two\n"), make("c", "")])
    assert res.summary() == f'1 device printed "{"x" * 60}…", 1 printed "line one…", 1 printed nothing'
    assert Results().summary() == "no results"


def test_header_counts_and_wall_time(fleet: Results) -> None:
    # The first starts at T0, the offline one ends at T0 + 2.3 s: the run took 2.3 s.
    assert fleet.wall_time_s == pytest.approx(2.3)
    assert fleet.header() == "12 devices · ran: 10 ok, 1 error (non-zero exit) · did not run: 1 offline · 2.3 s"
    assert Results([make("a")]).header() == "1 device · ran: 1 ok · 0.5 s"
    assert Results().header() == "0 devices"


def test_repr_is_a_text_table(fleet: Results) -> None:
    lines = repr(fleet).split("\n")
    header = "12 devices · ran: 10 ok, 1 error (non-zero exit) · did not run: 1 offline · 2.3 s"
    assert lines[0] == f"<Results of 'uname -r': {header}>"
    assert lines[1].split() == ["device_id", "status", "exit", "duration", "stdout", "error"]
    assert len(lines) == 14
    assert lines[2].split() == ["device-01", "ok", "0", "0.50", "s", "6.1.0-21-arm64"]
    assert lines[12].split()[:5] == ["device-11", "error", "127", "0.50", "s"] and "uname: not found" in lines[12]
    assert lines[12].endswith("exit status 127")
    assert lines[13].split() == ["device-12", "offline", "2.30", "s", "device", "device-12", "is", "offline"]
    assert not any(word in repr(fleet) for word in ("None", "NaN", "<NA>", "nan"))
    assert repr(Results()) == "<Results: 0 devices>"


def test_repr_cuts_wide_values_and_shows_commands_that_differ() -> None:
    res = Results(
        [
            make("a", "x" * 200 + "\nsecond line\n", error="e" * 200, command="uptime\n"),
            make("b", "", ResultStatus.AUTH_FAILED, None, error="SSH login refused", command="df -h\n"),
        ]
    )
    lines = repr(res).split("\n")
    assert lines[0] == "<Results: 2 devices · ran: 1 ok · did not run: 1 auth_failed · 0.5 s>"
    assert lines[1].split() == ["device_id", "command", "status", "exit", "duration", "stdout", "error"]
    assert "x" * 39 + "…" in lines[2] and "x" * 41 not in lines[2] and "e" * 59 + "…" in lines[2]
    assert lines[2].split()[1] == "uptime" and lines[3].split()[1:3] == ["df", "-h"]
    assert lines[3].endswith("SSH login refused")


def test_repr_pretty_is_the_text_table(fleet: Results) -> None:
    from IPython.lib.pretty import pretty

    assert pretty(fleet) == repr(fleet)


def test_commands_lose_trailing_whitespace_for_display() -> None:
    # Issue 15: %%tunnel cell scripts end with a newline, which showed in the history table.
    res = Results([make("a", command="uptime\n"), make("b", command="uptime\n")])
    assert res.df["command"].tolist() == ["uptime", "uptime"]
    assert repr(res).startswith("<Results of 'uptime': ")
    assert "<code>uptime</code>" in res.to_html()


def test_parse_is_parse_results() -> None:
    res = Results([make("a", "x=1\ny=on"), make("b", "x=2\ny=off"), make("c", "x=3", ResultStatus.ERROR, 1)])
    pd.testing.assert_frame_equal(res.parse("kv"), parse_results(list(res), "kv"))
    assert res.parse("kv")["x"].tolist()[:2] == [1, 2] and res.parse("kv")["status"].tolist()[2] == "error"
    assert res.parse("kv", include_failed=True)["x"].tolist() == [1, 2, 3]


# -- notebook display -------------------------------------------------------------


class _Cells(HTMLParser):
    """Collects the text of each table cell and the class of each <td>, as a browser would read them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self.classes: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
            self.classes.append(dict(attrs).get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def cells(markup: str) -> _Cells:
    parser = _Cells()
    parser.feed(markup)
    parser.close()
    return parser


def test_html_escapes_untrusted_output() -> None:
    evil = "<script>alert(1)</script></pre></td></tr><img src=x onerror=alert(2)>&amp;"
    res = Results([make("dev-<b>", evil, ResultStatus.ERROR, 1, error="<i>boom</i>", command="cat <x>")])
    markup = res._repr_html_()
    assert "<script>" not in markup and "<img" not in markup and "<b>" not in markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    parsed = cells(markup)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    header, row = parsed.rows
    assert header == ["device_id", "status", "exit_code", "stdout", "duration_s", "error"]
    assert row == ["dev-<b>", "error", "1", evil, "0.50", "<i>boom</i>"]  # the text a reader sees is exact


def test_html_header_and_coloured_status_cells(fleet: Results) -> None:
    markup = fleet._repr_html_()
    header = "12 devices · ran: 10 ok, 1 error (non-zero exit) · did not run: 1 offline · 2.3 s"
    assert f"{header} · <code>uname -r</code>" in markup
    parsed = cells(markup)
    assert len(parsed.rows) == 13
    statuses = [c for c in parsed.classes if c.startswith("tunnelnb-status")]
    assert statuses.count("tunnelnb-status tunnelnb-status-ok") == 10
    assert "tunnelnb-status tunnelnb-status-offline" in statuses
    assert 'tunnelnb-status-ok" style="background:#d4edda' in markup
    assert 'tunnelnb-status-error" style="background:#f8d7da' in markup
    assert parsed.rows[12][2] == ""  # no exit code for the offline device


def test_html_truncates_each_cell() -> None:
    res = Results([make("a", "A" * 1000 + "TAIL"), make("b", "short")])
    row_a, row_b = cells(res.to_html(max_chars=50)).rows[1:]
    assert row_a[3] == "A" * 50 + "… (954 more chars)"
    assert row_b[3] == "short"
    assert "TAIL" not in res._repr_html_() and "A" * 300 in res._repr_html_()  # default html_max_chars = 300


def test_html_max_chars_is_configurable_per_instance() -> None:
    res = Results([make("a", "abcdefghij")])
    res.html_max_chars = 4
    assert cells(res._repr_html_()).rows[1][3] == "abcd… (6 more chars)"
    assert Results.html_max_chars == 300


def test_html_shows_commands_when_they_differ_and_caps_rows() -> None:
    res = Results([make(f"d{n}", command=f"echo {n}") for n in range(5)])
    markup = res.to_html(max_rows=3)
    parsed = cells(markup)
    assert parsed.rows[0] == ["device_id", "command", "status", "exit_code", "stdout", "duration_s", "error"]
    assert [row[1] for row in parsed.rows[1:]] == ["echo 0", "echo 1", "echo 2"]
    assert "… 2 more rows" in markup


def test_html_of_nothing() -> None:
    parsed = cells(Results()._repr_html_())
    assert len(parsed.rows) == 1 and parsed.rows[0][0] == "device_id"


def test_summary_skips_lines_every_group_printed_alike():
    res = Results(
        [
            make("a", stdout="model=X1\nhost=a\n"),
            make("b", stdout="model=X1\nhost=b\n"),
            make("c", stdout="model=X1\nhost=b\n"),
        ]
    )
    assert res.summary() == '2 devices printed "…host=b", 1 printed "…host=a"'
    # Groups that differ on the first line are shown from it.
    res = Results([make("a", stdout="5.10\nx\n"), make("b", stdout="6.1\nx\n")])
    assert res.summary() == '1 device printed "5.10…", 1 printed "6.1…"'


def test_html_keeps_output_lines_whole_says_binary_and_counts_rows_in_words():
    """Issue 15: no wrapping inside values, binary output said not shown, "1 more row"."""
    now = datetime.now(UTC)
    rows = [
        CommandResult("device-01", "cat conf", "ok", 0, "fw_version=1.8.2\n", 0.1, now),
        CommandResult("device-02", "cat conf", "ok", 0, "\x00\x01\x02\x03garbage", 0.1, now),
    ]
    html = Results(rows).to_html(max_rows=1)
    assert "white-space:pre;overflow-x:auto" in html and "pre-wrap" not in html
    assert "… 1 more row: see <code>.df</code>" in html
    assert "binary output, 11 bytes" in Results(rows).to_html()
    assert "\x00" not in Results(rows).to_html()


def test_live_output_says_binary_lines_never_prints_them():
    import io

    from tunnelnb.fleet.progress import LiveOutput

    stream = io.StringIO()
    live = LiveOutput(stream, ["d1"], colour=False)
    live.write("d1", "text\n\x00\x01\x02garbage\n")
    live.close()
    assert stream.getvalue() == "d1 │ text\nd1 │ [binary output, 10 bytes]\n"

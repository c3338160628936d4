"""Drift against a baseline and outliers: ``Results.diff`` and ``Results.outliers`` (tunnelnb/fleet/drift.py).

Pure tests on hand-built rows, then one run on the simulated fleet where some devices'
configuration drifts from the fleet's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from tests.conftest import API_TOKEN
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.result import CommandResult, ResultStatus
from tunnelnb.fleet.drift import DRIFT_COLUMNS, FAILED_COLUMNS, OUTLIER_COLUMNS, Drift, Outliers
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.fleet.results import Results
from tunnelnb.server.platform import Platform
from tunnelnb.sim import SimulatedFleet
from tunnelnb.sim.profiles import make_profiles

T0 = datetime(2024, 5, 1, 9, 41, 0, tzinfo=UTC)
STR_DTYPE = pd.Series(["x"], dtype=str).dtype  # pandas' default string dtype

CONF = "hostname=gw\nntp=ntp.example\nlog_level=info\ninterval=60\nmode=edge\n"


def make(
    device_id: str, stdout: str = "", status: str = ResultStatus.OK, exit_code: int | None = 0, error: str = ""
) -> CommandResult:
    return CommandResult(device_id, "cat /etc/app.conf", status, exit_code, stdout, 0.5, T0, error)


@pytest.fixture
def res() -> Results:
    """Six devices: three print CONF (with assorted line ends), one drifts, one fails, one is offline."""
    return Results(
        [
            make("device-01", CONF),
            make("device-02", CONF.replace("\n", "\r\n")),
            make("device-03", CONF.replace("log_level=info", "log_level=debug") + "extra=1\n"),
            make("device-04", "  \n" + CONF.replace("\n", "   \n") + "\n\n"),
            make("device-05", "cat: /etc/app.conf: No such file\n", ResultStatus.ERROR, 1, "exit status 1"),
            make("device-06", "", ResultStatus.OFFLINE, None, "device device-06 is offline"),
        ]
    )


# -- diff against a device ------------------------------------------------------------------


def test_diff_against_a_device_gives_the_exact_unified_diff(res: Results) -> None:
    drift = res.diff("device-01")
    assert isinstance(drift, Drift)
    assert drift.differs == ["device-03"]
    assert drift.diff_of("device-03") == (
        "--- device-01 (baseline)\n"
        "+++ device-03\n"
        "@@ -1,5 +1,6 @@\n"
        " hostname=gw\n"
        " ntp=ntp.example\n"
        "-log_level=info\n"
        "+log_level=debug\n"
        " interval=60\n"
        " mode=edge\n"
        "+extra=1"
    )
    assert drift.diff_of("device-01") == "baseline"
    assert drift.diff_of("device-02") == "" and drift.diff_of("device-04") == ""  # CRLF, padding, blank edges
    assert drift.baseline == "device-01 (baseline)"
    assert drift.reference == CONF.rstrip("\n")


def test_drift_table_has_one_row_per_result_with_exact_values(res: Results) -> None:
    df = res.diff("device-01").df
    assert tuple(df.columns) == DRIFT_COLUMNS
    assert df.dtypes.to_dict() == {
        "device_id": STR_DTYPE,
        "status": STR_DTYPE,
        "same": pd.BooleanDtype(),
        "lines_added": pd.Int64Dtype(),
        "lines_removed": pd.Int64Dtype(),
        "diff": STR_DTYPE,
    }
    assert df.device_id.tolist() == [f"device-0{n}" for n in range(1, 7)]
    assert df.status.tolist() == ["ok", "ok", "ok", "ok", "error", "offline"]
    assert df.same.tolist() == [True, True, False, True, pd.NA, pd.NA]
    assert df.lines_added.tolist() == [0, 0, 2, 0, pd.NA, pd.NA]
    assert df.lines_removed.tolist() == [0, 0, 1, 0, pd.NA, pd.NA]
    assert df.loc[4, "diff"] == "not compared: error (exit 1): exit status 1"
    assert df.loc[5, "diff"] == "not compared: offline: device device-06 is offline"
    # Nullable booleans filter without tripping over <NA>.
    assert df[df.same == False].device_id.tolist() == ["device-03"]  # noqa: E712


def test_counts_of_added_and_removed_lines() -> None:
    res = Results(
        [
            make("a", "1\n2\n3\n4\n"),
            make("b", "1\n3\n4\n"),  # one removed
            make("c", "0\n1\n2\n3\n4\n5\n"),  # two added
            make("d", "x\ny\n"),  # four removed, two added
            make("e", ""),  # printed nothing: four removed
        ]
    )
    df = res.diff("a").df
    assert df.lines_added.tolist() == [0, 0, 2, 2, 0]
    assert df.lines_removed.tolist() == [0, 1, 0, 4, 4]
    assert df.same.tolist() == [True, False, False, False, False]
    assert res.diff("a").diff_of("e") == "--- a (baseline)\n+++ e\n@@ -1,4 +0,0 @@\n-1\n-2\n-3\n-4"


def test_context_lines(res: Results) -> None:
    assert res.diff("device-01", context=0).diff_of("device-03") == (
        "--- device-01 (baseline)\n+++ device-03\n"
        "@@ -3 +3 @@\n-log_level=info\n+log_level=debug\n"
        "@@ -5,0 +6 @@\n+extra=1"
    )
    with pytest.raises(ValueError, match=r"^context is a number of lines, 0 or more, not -1\.$"):
        res.diff("device-01", context=-1)


def test_a_baseline_device_not_in_the_results_is_a_clear_error(res: Results) -> None:
    with pytest.raises(ValueError) as info:
        res.diff("device-99")
    assert str(info.value) == (
        "device-99 is not in these results: pass one of device-01, device-02, device-03, device-04, device-05, …, "
        "or the reference text itself (a text ending in a newline is never taken for a device id)."
    )


def test_a_failed_baseline_device_is_a_clear_error(res: Results) -> None:
    with pytest.raises(ValueError) as info:
        res.diff("device-06")
    assert str(info.value) == (
        "device-06 cannot be the baseline, its command did not succeed (offline: device device-06 is offline): "
        "pass a device whose status is ok, or the reference text itself."
    )


# -- diff against a text or the majority -----------------------------------------------------


def test_diff_against_a_reference_text(res: Results) -> None:
    known_good = CONF.replace("interval=60", "interval=30")
    drift = res.diff(known_good)
    assert drift.baseline == "baseline"
    assert drift.differs == ["device-01", "device-02", "device-03", "device-04"]
    assert drift.diff_of("device-01") == (
        "--- baseline\n+++ device-01\n@@ -1,5 +1,5 @@\n hostname=gw\n ntp=ntp.example\n log_level=info\n"
        "-interval=30\n+interval=60\n mode=edge"
    )
    assert drift.summary() == "4 of 4 devices differ from baseline · not compared: 1 error, 1 offline"


def test_a_one_word_text_is_a_reference_unless_it_is_shaped_like_a_device_id() -> None:
    res = Results([make("node-1", "6.1.0-21-arm64\n"), make("node-2", "5.10.0-9-arm64\n")])
    assert res.diff("6.1.0-21-arm64").differs == ["node-2"]  # not shaped like node-N: a text
    assert res.diff("node-7\n").differs == ["node-1", "node-2"]  # a newline makes it a text
    with pytest.raises(ValueError, match=r"^node-7 is not in these results: pass one of node-1, node-2, or the"):
        res.diff("node-7")


def test_no_baseline_compares_with_the_majority(res: Results) -> None:
    drift = res.diff()
    assert drift.baseline == "majority (3 devices)"
    assert drift.differs == ["device-03"]
    assert drift.diff_of("device-03").splitlines()[:2] == ["--- majority (3 devices)", "+++ device-03"]
    assert drift.df["diff"].tolist()[:4] == ["", "", drift.diff_of("device-03"), ""]
    nothing = Results([make("a", "", ResultStatus.TIMEOUT, None, "no answer within 30 s")])
    with pytest.raises(ValueError, match=r"^no device ran the command successfully, so there is no majority"):
        nothing.diff()


def test_every_status_but_ok_is_not_compared_including_new_ones() -> None:
    res = Results(
        [
            make("a", "1\n"),
            make("b", "2\n", "skipped", None, "a rolling run stopped first"),
            make("c", "1\n", ResultStatus.CANCELLED, None),
        ]
    )
    drift = res.diff("a")
    assert drift.df.same.tolist() == [True, pd.NA, pd.NA]
    assert drift.diff_of("b") == "not compared: skipped: a rolling run stopped first"
    assert drift.diff_of("c") == "not compared: cancelled"
    assert drift.summary() == "0 of 1 device differ from a (baseline) · not compared: 1 skipped, 1 cancelled"
    outliers = res.outliers()
    assert outliers.failed.device_id.tolist() == ["b", "c"]
    assert outliers.failed.status.tolist() == ["skipped", "cancelled"]


# -- ignore ----------------------------------------------------------------------------------


LOGS = {
    "a": "2024-05-01T09:41:00Z app[311]: started\n2024-05-01T09:41:02Z app[311]: ready\n",
    "b": "2024-05-02T10:00:00Z app[877]: started\n2024-05-02T10:00:09Z app[877]: ready\n",
    "c": "2024-05-02T10:00:00Z app[120]: started\nLast login: Mon May 1\n2024-05-02T10:00:01Z app[120]: failed\n",
}


def test_ignore_removes_matches_and_drops_lines_left_empty() -> None:
    res = Results([make(d, out) for d, out in LOGS.items()])
    assert res.diff("a").differs == ["b", "c"]
    ignore = [r"^\S+Z ", r"(?<=\[)\d+(?=\])", re.compile(r"^Last login:.*")]
    drift = res.diff("a", ignore=ignore)
    assert drift.differs == ["c"]
    assert drift.reference == "app[]: started\napp[]: ready"
    assert drift.diff_of("c") == (
        "--- a (baseline)\n+++ c\n@@ -1,2 +1,2 @@\n app[]: started\n-app[]: ready\n+app[]: failed"
    )
    assert res.diff("a", ignore=r"\d").differs == ["c"]  # one pattern, as a string


def test_ignore_keeps_blank_lines_the_device_printed() -> None:
    res = Results([make("a", "x\n\ny\n"), make("b", "x\ny\n"), make("c", "x\npid 7\ny\n")])
    assert res.diff("a", ignore=r"pid \d+").differs == ["b", "c"]
    assert res.diff("b", ignore=r"pid \d+").differs == ["a"]


def test_bad_ignore_patterns_are_clear_errors(res: Results) -> None:
    with pytest.raises(ValueError, match=r"^ignore pattern '\(' is not a valid regular expression \(.*\): fix it"):
        res.diff("device-01", ignore="(")
    with pytest.raises(TypeError, match=r"^ignore takes regular expressions \(strings\), not int"):
        res.outliers(ignore=[3])  # type: ignore[list-item]


# -- outliers --------------------------------------------------------------------------------


def _fleet(*sizes: int, offline: int = 0) -> Results:
    """Groups of devices printing ``v1``, ``v2`` …, in that order, then ``offline`` offline devices."""
    rows, n = [], 0
    for k, size in enumerate(sizes, 1):
        for _ in range(size):
            n += 1
            rows.append(make(f"dev-{n:03d}", f"fw=1.0\nbuild=v{k}\n"))
    for _ in range(offline):
        n += 1
        rows.append(make(f"dev-{n:03d}", "", ResultStatus.OFFLINE, None, f"device dev-{n:03d} is offline"))
    return Results(rows)


def test_outliers_in_a_small_fleet_are_every_group_smaller_than_the_largest() -> None:
    found = _fleet(7, 2, 1, offline=1).outliers()
    assert isinstance(found, Outliers)
    assert found.devices == ["dev-008", "dev-009", "dev-010"]
    df = found.df
    assert tuple(df.columns) == OUTLIER_COLUMNS
    assert df.group.tolist() == [2, 2, 3]
    assert df.group_size.tolist() == [2, 2, 1]
    assert df.share.tolist() == [0.2, 0.2, 0.1]
    assert df.first_line.tolist() == ["fw=1.0"] * 3
    assert found.diff_of("dev-010") == (
        "--- majority (group 1, 7 devices)\n+++ dev-010\n@@ -1,2 +1,2 @@\n fw=1.0\n-build=v1\n+build=v3"
    )
    assert found.majority == "fw=1.0\nbuild=v1"
    groups = found.groups
    assert groups["size"].tolist() == [7, 2, 1] and groups.outlier.tolist() == [False, True, True]
    assert groups.devices.tolist()[1:] == [["dev-008", "dev-009"], ["dev-010"]]
    failed = found.failed
    assert tuple(failed.columns) == FAILED_COLUMNS
    assert failed.values.tolist() == [["dev-011", "offline", pd.NA, "device dev-011 is offline"]]
    assert found.summary() == (
        "3 outliers among 10 ok devices in 3 groups · not compared: 1 offline"
        " · outlier: smaller than the largest group (fewer than 20 ok devices)"
    )


def test_outliers_in_a_large_fleet_hold_at_most_ten_percent() -> None:
    # 30 ok devices: 23 alike, 4 (13 %) on another build, 3 (10 %) on a third: only the 10 % are rare.
    found = _fleet(23, 4, 3).outliers()
    assert found.devices == ["dev-028", "dev-029", "dev-030"]
    assert found.df.share.tolist() == [0.1, 0.1, 0.1]
    assert found.groups.outlier.tolist() == [False, False, True]
    # An explicit threshold: at most 15 %.
    assert found.rule == "smaller than the largest group and at most 10% of the ok devices"
    assert _fleet(23, 4, 3).outliers(threshold=0.15).devices == [f"dev-0{n}" for n in range(24, 31)]
    assert _fleet(7, 2, 1).outliers(threshold=0.1).devices == ["dev-010"]


def test_no_outliers_without_a_majority() -> None:
    assert _fleet(1, 1, 1, 1).outliers().devices == []  # all different: nothing is rare
    assert _fleet(3, 3).outliers().devices == []  # a tie for the largest
    assert _fleet(3, 3, 1).outliers().devices == ["dev-007"]
    empty = _fleet(offline=2).outliers()
    assert empty.devices == [] and len(empty.groups) == 0 and len(empty.failed) == 2
    assert empty.summary() == "no device ran the command successfully: nothing to compare · not compared: 2 offline"


def test_outliers_use_ignore_and_a_bad_threshold_is_a_clear_error() -> None:
    res = Results([make(f"d{n}", f"uptime {n * 37} s\nok\n") for n in range(5)] + [make("d9", "uptime 1 s\nfail\n")])
    assert res.outliers().devices == []  # every uptime differs
    assert res.outliers(ignore=r"\d+").devices == ["d9"]
    with pytest.raises(ValueError, match=r"^threshold is a share of the ok devices, between 0 and 1 \(0\.1 for 10 %\)"):
        res.outliers(threshold=10)


# -- displays --------------------------------------------------------------------------------


HOSTILE = "<script>alert('x')</script>\n\x1b]0;pwned\x07<b>bold</b>\n"


def test_html_escapes_device_output_everywhere() -> None:
    res = Results(
        [
            make("device-01", "safe\n"),
            make("device-02", HOSTILE),
            make("device-03", "safe\n"),
            make("device-04", "", ResultStatus.ERROR, 2, "<img src=x onerror=alert(1)>"),
        ]
    )
    for page in (res.diff("device-01")._repr_html_(), res.outliers()._repr_html_()):
        assert "<script>" not in page and "<b>" not in page and "<img" not in page
        assert "\x1b" not in page and "\x07" not in page
        assert "+&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
    text = repr(res.diff("device-01"))
    assert "\x1b" not in text and "+\\x1b]0;pwned\\x07<b>bold</b>" in text


def test_html_colours_diffs_and_collapses_long_ones(res: Results) -> None:
    page = res.diff("device-01")._repr_html_()
    assert '<details open><summary>device-03: +2 -1</summary><pre style="' in page
    assert '<span style="color:#b31d28;background:#ffeef0">-log_level=info</span>' in page
    assert '<span style="color:#22863a;background:#f0fff4">+log_level=debug</span>' in page
    long = Results([make("a", ""), make("b", "".join(f"line {n}\n" for n in range(300)))])
    drift = long.diff("a")
    page = drift._repr_html_()
    assert "<details><summary>b: +300 -0</summary>" in page
    assert "<i>… 103 more lines: see .diff_of()</i>" in page  # 303 lines, 200 shown
    assert drift.diff_of("b").count("\n") == 302


def test_terminal_display_is_a_short_table_then_the_diffs(res: Results) -> None:
    drift = res.diff("device-01")
    lines = repr(drift).split("\n")
    assert lines[0] == "<Drift: 1 of 4 devices differ from device-01 (baseline) · not compared: 1 error, 1 offline>"
    assert lines[1].split() == ["DEVICE_ID", "STATUS", "SAME", "+", "-", "NOTE"]
    assert lines[2].split() == ["device-01", "ok", "same", "0", "0", "baseline"]
    assert lines[4].split() == ["device-03", "ok", "differs", "2", "1"]
    assert lines[7].split()[:4] == ["device-06", "offline", "not", "compared"]
    assert lines[8:11] == ["", "device-03: +2 -1", "--- device-01 (baseline)"]
    printed: list[str] = []

    class Printer:
        def text(self, value: str) -> None:
            printed.append(value)

    drift._repr_pretty_(Printer(), False)
    assert printed == [repr(drift)]
    outliers = repr(_fleet(3, 1, offline=1).outliers()).split("\n")
    assert outliers[0].startswith("<Outliers: 1 outlier among 4 ok devices in 2 groups · not compared: 1 offline")
    assert outliers[-3:-1] == ["not compared:", "DEVICE   STATUS   EXIT  ERROR"]


def test_diff_of_an_unknown_device_is_a_clear_error(res: Results) -> None:
    with pytest.raises(KeyError, match=r"device-42 has no row here: pass one of device-01, device-02"):
        res.diff("device-01").diff_of("device-42")


def test_empty_results_keep_the_schema() -> None:
    drift = Results().diff("reference\n")
    assert tuple(drift.df.columns) == DRIFT_COLUMNS and len(drift.df) == 0
    assert drift.summary() == "0 of 0 devices differ from baseline"
    assert tuple(Results().outliers().df.columns) == OUTLIER_COLUMNS


# -- end to end: the simulated fleet --------------------------------------------------------


DEFAULT_CONFIG = {"log_level": "info", "ntp_server": "ntp.tunnelnb.example", "telemetry_interval_s": "60"}
REFERENCE = "log_level=info\nntp_server=ntp.tunnelnb.example\ntelemetry_interval_s=60\n"
IDENTITY = r"^device_id=.*"


@pytest.fixture
async def drifting(platform: Platform) -> AsyncIterator[SimulatedFleet]:
    """Six devices: device-02 uses another NTP server, device-04 logs at debug, device-06 is offline."""
    drift: dict[str, dict[str, Any]] = {
        "device-02": {"config": {**DEFAULT_CONFIG, "ntp_server": "pool.ntp.org"}},
        "device-04": {"config": {**DEFAULT_CONFIG, "log_level": "debug"}},
        "device-06": {"config": DEFAULT_CONFIG, "misbehaviour": "offline"},
    }
    profiles = [
        dataclasses.replace(p, **drift.get(p.device_id, {"config": DEFAULT_CONFIG}))
        for p in make_profiles(6, seed=1, misbehaving=0.0)
    ]
    fleet = SimulatedFleet(platform.base_url, api_token=API_TOKEN, devices=profiles, backend="local")
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def test_drift_and_outliers_on_the_simulated_fleet(api: PlatformAPI, drifting: SimulatedFleet) -> None:
    conf = "/etc/device.conf" if drifting.sandbox != "none" else "etc/device.conf"
    async with Fleet(api, login=drifting.login()) as fleet:
        res = await fleet.run(f"grep -E '^(device_id|log_level|ntp_server|telemetry_interval_s)=' {conf}", timeout=20)
    assert res.df.status.tolist() == ["ok"] * 5 + ["offline"], res.df.error.tolist()

    # Every device prints its own id: without ignoring that line, everyone differs.
    assert res.diff("device-01").differs == ["device-02", "device-03", "device-04", "device-05"]
    drift = res.diff("device-01", ignore=IDENTITY)
    assert drift.differs == ["device-02", "device-04"]
    assert drift.df.same.tolist() == [True, False, True, False, True, pd.NA]
    assert drift.diff_of("device-02") == (
        "--- device-01 (baseline)\n+++ device-02\n@@ -1,3 +1,3 @@\n log_level=info\n"
        "-ntp_server=ntp.tunnelnb.example\n+ntp_server=pool.ntp.org\n telemetry_interval_s=60"
    )
    assert drift.diff_of("device-06").startswith("not compared: offline")

    # Against the known-good text, the id line is one added line on every device.
    known = res.diff(REFERENCE).df
    assert known.lines_added.tolist() == [1, 2, 1, 2, 1, pd.NA]
    assert known.lines_removed.tolist() == [0, 1, 0, 1, 0, pd.NA]

    outliers = res.outliers(ignore=IDENTITY)
    assert outliers.devices == ["device-02", "device-04"]
    assert outliers.df.group_size.tolist() == [1, 1] and outliers.df.share.tolist() == [0.2, 0.2]
    assert outliers.groups.devices.tolist()[0] == ["device-01", "device-03", "device-05"]
    assert outliers.failed.device_id.tolist() == ["device-06"]
    assert outliers.diff_of("device-04").splitlines()[3:5] == ["-log_level=info", "+log_level=debug"]

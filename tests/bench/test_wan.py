"""bench/wan.py: the protocol's minimum, its JSON rows, and one small run end to end through delaying proxies."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WAN = ROOT / "bench" / "wan.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_wan", WAN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wan = _load()


# ---------------------------------------------------------------------------
# The minimum (pure)


def test_login_minimum_overlaps_the_device_join_with_the_application_side() -> None:
    # 40 / 150 ms: the device's join (a + d = 190 ms) hides AddTunnel + upgrade (2a = 80 ms), then two a + d.
    assert wan.join_minimum_s(0.040, 0.150) == pytest.approx(0.190, abs=1e-12)
    assert wan.login_minimum_s(0.040, 0.150) == pytest.approx(0.570, abs=1e-12)
    # A device closer than the application: 2a sets the join.
    assert wan.join_minimum_s(0.100, 0.050) == pytest.approx(0.200, abs=1e-12)
    assert wan.login_minimum_s(0.100, 0.050) == pytest.approx(0.500, abs=1e-12)
    assert wan.login_minimum_s(0.0, 0.0) == 0.0


def test_login_minimum_counts_one_login_per_slot_after_another_their_tunnels_joined_ahead() -> None:
    assert wan.login_minimum_s(0.040, 0.150, devices=1000) == pytest.approx(0.570, abs=1e-12)
    assert wan.login_minimum_s(0.040, 0.150, devices=1000, concurrency=1000) == pytest.approx(0.570, abs=1e-12)
    # One join (0.190 s), then ten logins of 2(a + d) = 0.380 s per slot.
    assert wan.login_minimum_s(0.040, 0.150, devices=1000, concurrency=100) == pytest.approx(3.990, abs=1e-12)
    assert wan.login_minimum_s(0.040, 0.150, devices=101, concurrency=100) == pytest.approx(0.950, abs=1e-12)


def test_run_minimum_is_one_application_to_device_round_trip() -> None:
    assert wan.run_minimum_s(0.040, 0.150) == pytest.approx(0.190, abs=1e-12)
    assert wan.run_minimum_s(0.040, 0.150, command_s=0.5) == pytest.approx(0.690, abs=1e-12)


# ---------------------------------------------------------------------------
# Arguments and rows


def test_quick_is_one_size_of_100_and_one_repeat() -> None:
    args = wan.parse_args(["--quick"])
    assert (args.sizes, args.repeats, args.baseline_repeats) == ([100], 1, 1)
    assert (args.login_concurrency, args.pssh_pool_size) == (100, 100)
    assert (args.app_rtt_ms, args.device_rtt_ms) == (40.0, 150.0)
    assert args.variants == ["tunnelnb", "asyncssh-shell"]  # parallel-ssh's logins alone would take 20 s
    defaults = wan.parse_args([])
    assert (defaults.sizes, defaults.repeats) == ([100, 1000], 3)
    assert defaults.variants == ["tunnelnb", "asyncssh-shell", "pssh"]
    assert wan.parse_args(["--quick", "--variants", "pssh"]).variants == ["pssh"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--sizes", "10,x"],
        ["--sizes", "0"],
        ["--repeats", "0"],
        ["--variants", "telnet"],
        ["--app-rtt-ms", "-1"],
        ["--login-concurrency", "0"],
        ["--baseline-repeats", "0"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        wan.parse_args(argv)
    assert exc.value.code == 2


def _record(login_s: float, runs: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "label": "x",
        "login": {"seconds": login_s, "ok": 10, "cpu_s": 0.5, "devices_cpu_s": 1.5, "network_cpu_s": 0.25},
        "runs": [{"seconds": s, "ok": 10, "cpu_s": 0.1, "devices_cpu_s": 0.2, "network_cpu_s": 0.05} for s in runs],
        "errors": [],
        **extra,
    }


def test_summary_row_has_the_figures_the_minimum_and_the_ratios() -> None:
    args = argparse.Namespace(
        app_rtt_ms=40.0, device_rtt_ms=150.0, login_concurrency=100, pssh_pool_size=100, repeats=3, baseline_repeats=1
    )
    size = {
        "n": 10,
        "devices_up": {"start_s": 1.0, "workers": 1},
        "variants": {
            "tunnelnb": _record(1.14, [0.38, 0.19, 0.57]) | {"login": _record(1.14, [])["login"] | {"connect_s": 0.3}},
            "asyncssh-shell": _record(2.28, [0.19, 0.19, 0.19]),
            "pssh": {"label": "p", "runs": [], "errors": [], "unavailable": "no gevent"},
        },
    }
    row = wan.summarize(size, args, {"nproc": 2})
    assert row["devices"] == 10
    assert (row["login_s"], row["run_s"], row["run_walls_s"]) == (1.14, 0.38, [0.38, 0.19, 0.57])
    assert row["login_minimum_s"] == pytest.approx(0.570, abs=1e-12)
    assert row["run_minimum_s"] == pytest.approx(0.190, abs=1e-12)
    assert row["login_ratio"] == pytest.approx(2.0, abs=1e-9)
    assert row["run_ratio"] == pytest.approx(2.0, abs=1e-9)
    assert (row["asyncssh_login_s"], row["asyncssh_run_s"]) == (2.28, 0.19)
    assert row["login_vs_asyncssh"] == pytest.approx(0.5, abs=1e-9)
    assert row["run_vs_asyncssh"] == pytest.approx(2.0, abs=1e-9)
    assert (row["ok"], row["asyncssh_ok"], row["pssh_ok"]) == (True, True, False)
    assert row["pssh_unavailable"] == "no gevent"
    assert row["cpu_s"]["login"] == {"client": 0.5, "devices": 1.5, "network": 0.25}
    assert row["cpu_s"]["run"] == {"client": 0.1, "devices": 0.2, "network": 0.05}
    assert (row["login_concurrency"], row["pssh_pool_size"], row["connect_s"]) == (10, 100, 0.3)
    assert (row["repeats"], row["baseline_repeats"], row["sim_workers"]) == (3, 1, 1)
    # 250 devices, 100 at a time: three logins one after the other per slot, the later ones joined ahead.
    wide = wan.summarize(size | {"n": 250}, args, {"nproc": 2})
    assert wide["login_minimum_s"] == pytest.approx(1.330, abs=1e-12)
    assert wide["login_concurrency"] == 100
    table = wan.markdown([row])
    assert (
        "| 10 | 40 / 150 | 1.140 | 0.570 | 2.00x | 0.380 | 0.190 | 2.00x | 2.280 | 0.190 | 0.50x, 2.00x | n/a | n/a |"
        in (table)
    )


# ---------------------------------------------------------------------------
# Where a login's time goes (pure: fake frames through the platform's wrapped _route)


class _Platform:
    def __init__(self) -> None:
        self.routed: list[Any] = []

    async def _route(self, tunnel: Any, conn: Any, frame: Any, text: str) -> None:
        self.routed.append(frame.op)


def test_device_logins_time_connect_and_the_first_command_up_to_its_end_marker(monkeypatch) -> None:
    import asyncio
    from types import SimpleNamespace as NS

    from tunnelnb.protocol.frames import Op
    from tunnelnb.server.platform.model import Side

    clock = iter([10.0, 10.5, 10.6, 10.7, 11.4, 20.0])
    monkeypatch.setattr(wan.time, "perf_counter", lambda: next(clock))
    platform = _Platform()
    logins = wan.DeviceLogins(platform, device_rtt=0.1)
    tunnel, app, dev = NS(device_id="d1"), NS(side=Side.SOURCE), NS(side=Side.DEVICE)

    async def feed() -> None:
        await platform._route(tunnel, app, NS(op=Op.CONNECT), "")  # 10.0
        await platform._route(tunnel, dev, NS(op=Op.CONNECT_RESPONSE), "")  # 10.5: 0.4 s less the RTT
        await platform._route(tunnel, app, NS(op=Op.COMMAND), "")  # 10.6
        await platform._route(tunnel, dev, NS(op=Op.COMMAND_RESPONSE), "$ ")  # 10.7: a prompt, not the answer
        await platform._route(tunnel, dev, NS(op=Op.COMMAND_RESPONSE), "__TNB_E_ab12x1_0__\r\n")  # 11.4: 0.7 s
        await platform._route(tunnel, app, NS(op=Op.CONNECT), "")  # 20.0: a second connect is not timed

    asyncio.run(feed())
    assert platform.routed == [
        Op.CONNECT,
        Op.CONNECT_RESPONSE,
        Op.COMMAND,
        Op.COMMAND_RESPONSE,
        Op.COMMAND_RESPONSE,
        Op.CONNECT,
    ]  # every frame still routed
    assert logins.take() == {"d1": pytest.approx(0.4 + 0.7, abs=1e-9)}
    assert logins.take() == {}


def test_device_share_takes_each_device_s_own_login_out_of_its_login() -> None:
    login = {"durations": {"a": 2.0, "b": 2.5, "c": 1.0}, "device_logins": {"a": 1.4, "b": 1.8}}
    share = wan.device_share(login, 0.040, 0.150)
    assert share["device_own_login_s"] == {"median": pytest.approx(1.6), "max": pytest.approx(1.8)}
    assert share["login_less_devices_s"] == {"median": pytest.approx(0.65), "max": pytest.approx(0.7), "devices": 2}
    assert share["login_less_devices_ratio"] == pytest.approx(0.7 / 0.570)
    assert wan.device_share({"durations": {"a": 1.0}}, 0.04, 0.15) == {}


# ---------------------------------------------------------------------------
# End to end: two devices behind the delaying proxies


def test_a_small_run_logs_in_and_runs_through_the_proxies(tmp_path: Path) -> None:
    out = tmp_path / "wan.json"
    argv = [sys.executable, str(WAN), "--sizes", "2", "--repeats", "1", "--app-rtt-ms", "10", "--device-rtt-ms", "20"]
    argv += ["--variants", "tunnelnb,asyncssh-shell", "--sandbox", "none", "--timeout", "30", "--json", str(out)]
    argv += ["--login-timeout", "90", "--run-timeout", "60", "--quiet"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.loads(out.read_text())
    assert row["devices"] == 2
    assert (row["app_rtt_ms"], row["device_rtt_ms"]) == (10.0, 20.0)
    assert row["login_minimum_s"] == pytest.approx(0.090, abs=1e-12)  # max(0.02, 0.03) + 2 x 0.03
    assert row["run_minimum_s"] == pytest.approx(0.030, abs=1e-12)
    assert (row["ok"], row["asyncssh_ok"]) == (True, True)
    assert (row["errors"], row["asyncssh_errors"]) == ([], [])
    assert len(row["run_walls_s"]) == 1 and len(row["asyncssh_run_walls_s"]) == 1
    assert row["login_ratio"] == row["login_s"] / row["login_minimum_s"]
    assert "pssh_login_s" not in row
    assert "| 2 | 10 / 20 |" in proc.stdout
    # Each login split at the platform into the device's own SSH login and the rest: both devices timed.
    own, rest = row["device_own_login_s"], row["login_less_devices_s"]
    assert rest["devices"] == 2
    assert 0 <= own["median"] <= own["max"] < row["login_s"]
    assert 0 < rest["median"] <= rest["max"] <= row["login_s"]
    assert "where tunnelnb's login time goes" in proc.stdout

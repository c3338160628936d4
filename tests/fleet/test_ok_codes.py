"""ok_codes: exit statuses that count as success (issue 15: grep -c exits 1 when it finds nothing)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import Devices, device_ids, open_fleet
from tunnelnb.client.result import CommandResult, ResultStatus
from tunnelnb.fleet.exitcodes import apply_ok_codes, check_ok_codes
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.fleet.results import Results

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def row(status: str, code: int | None, error: str = "") -> CommandResult:
    return CommandResult("d", "grep -c ERROR log", status, code, "0\n", 0.1, T0, error)


def test_an_ok_code_makes_the_row_ok_and_keeps_exit_code_and_notes() -> None:
    done = apply_ok_codes(row(ResultStatus.ERROR, 1, "exit status 1"), (0, 1))
    assert (done.status, done.exit_code, done.error) == ("ok", 1, "")
    noted = apply_ok_codes(row(ResultStatus.ERROR, 1, "exit status 1; the shell is new"), (0, 1))
    assert (noted.status, noted.error) == ("ok", "the shell is new")
    assert apply_ok_codes(row(ResultStatus.ERROR, 2, "exit status 2"), (0, 1)).status == "error"


def test_zero_is_an_error_when_not_listed_and_unfinished_rows_stay() -> None:
    zero = apply_ok_codes(row(ResultStatus.OK, 0), (1,))
    assert (zero.status, zero.error) == ("error", "exit status 0 (ok_codes: 1)")
    for status in (ResultStatus.TIMEOUT, ResultStatus.OFFLINE, ResultStatus.AUTH_FAILED):
        assert apply_ok_codes(row(status, None, "x"), (0, 1)).status == status


def test_check_ok_codes() -> None:
    assert check_ok_codes([0, 1, 1]) == (0, 1) and check_ok_codes(1) == (1,)
    for bad in ([], [256], [-1], ["1"], [True]):
        with pytest.raises(ValueError, match="ok_codes"):
            check_ok_codes(bad)  # type: ignore[arg-type]


@pytest.fixture
async def fleet(api, platform, devices: Devices, ssh_server):
    await devices.add_all(device_ids(2), ssh_port=ssh_server.port)
    platform.add_device("device-03", "never-online")
    async with open_fleet(api) as f:
        yield f


async def test_grep_with_no_match_is_ok_with_ok_codes_and_told_apart_from_offline(fleet: Fleet):
    plain = await fleet.run("grep -c NOPE /etc/hostname", timeout=10)
    assert list(plain.df.status) == ["error", "error", "offline"]
    assert plain.header().startswith("3 devices · ran: 2 error (non-zero exit) · did not run: 1 offline")
    res = await fleet.run("grep -c NOPE /etc/hostname", timeout=10, ok_codes=(0, 1))
    df = res.df
    assert list(df.status) == ["ok", "ok", "offline"] and list(df.exit_code[:2]) == [1, 1]
    assert list(df.error[:2]) == ["", ""]
    assert [r.device_id for r in res.failed] == ["device-03"]
    assert res.header().startswith("3 devices · ran: 2 ok · did not run: 1 offline")
    with pytest.raises(ValueError, match="ok_codes"):
        await fleet.run("true", ok_codes=())


def test_sync_fleet_passes_ok_codes_through() -> None:
    import asyncio
    from typing import Any

    from tunnelnb.fleet.blocking import SyncFleet

    seen: dict[str, Any] = {}

    class StubFleet:
        last_results = None

        async def run(self, command: str, targets: Any, **kwargs: Any) -> Results:
            seen.update(kwargs)
            return Results()

    class Runner:
        def run(self, coro: Any) -> Any:
            return asyncio.run(coro)

    SyncFleet(StubFleet(), Runner()).run("grep -c x y", "*", ok_codes=(0, 1))  # type: ignore[arg-type]
    assert seen["ok_codes"] == (0, 1)

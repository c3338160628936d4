"""The rolling-run policy on its own: numbers, percentages, rounding, canaries, the budget's boundary."""

from __future__ import annotations

import pytest

from tunnelnb.client.result import ResultStatus
from tunnelnb.fleet.rollout import (
    Rollout,
    batch_option,
    canary_option,
    max_errors_option,
    parse_batch,
    parse_canary,
    parse_max_errors,
)

IDS = [f"device-{i:02d}" for i in range(1, 11)]


def drive(plan: Rollout, failing: set[str]) -> list[list[str]]:
    """Run the plan as the fleet does (every ready device of a wave at once); the waves that started."""
    waves = []
    for _ in range(len(plan.targets) + 1):
        wave = plan.ready()
        if not wave:
            break
        started = []
        for d in wave:
            if plan.may_start(d):
                plan.start(d)
                started.append(d)
        for d in started:
            plan.finish(d, ResultStatus.ERROR if d in failing else ResultStatus.OK)
        waves.append(started)
    return waves


# -- parsing N and P% ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "targets", "size"),
    [
        (3, 10, 3),
        ("3", 10, 3),
        (" 4 ", 10, 4),
        (20, 10, 20),
        ("25%", 10, 3),  # 2.5 rounded up
        ("20%", 10, 2),
        ("10%", 5, 1),  # 0.5 rounded up
        ("1%", 10, 1),  # at least 1
        ("100%", 7, 7),
        ("12.5%", 16, 2),
        ("50%", 0, 1),
    ],
)
def test_batch_sizes_round_up_and_are_at_least_one(value, targets, size):
    assert parse_batch(value, targets) == size


@pytest.mark.parametrize("value", [0, "0", "0%", -1, "-1", "101%", "abc", "3 devices", "%", True, 2.5, ""])
def test_bad_batches_say_what_is_wanted(value):
    with pytest.raises(ValueError) as caught:
        parse_batch(value, 10)
    assert str(caught.value) == f"batch must be a positive number or a percentage like 25% (not {str(value)!r})"


def test_the_batch_message_quotes_what_was_given():
    with pytest.raises(ValueError, match=r"^batch must be a positive number or a percentage like 25% \(not '0'\)$"):
        parse_batch("0", 10)


@pytest.mark.parametrize(
    ("value", "targets", "allowed"),
    [
        (0, 10, 0),
        ("0", 10, 0),
        (2, 10, 2),
        ("25%", 10, 2),  # 2.5 rounded down
        ("9%", 10, 0),
        ("10%", 10, 1),
        ("0%", 10, 0),
        ("100%", 10, 10),
        ("33%", 7, 2),  # 2.31 rounded down
    ],
)
def test_max_errors_round_down(value, targets, allowed):
    assert parse_max_errors(value, targets) == allowed


@pytest.mark.parametrize("value", [-1, "-1", "150%", "x", "1.5", False])
def test_bad_max_errors_say_what_is_wanted(value):
    with pytest.raises(ValueError) as caught:
        parse_max_errors(value, 10)
    assert str(caught.value) == (
        f"max_errors must be a number (0 or more) or a percentage like 10% (not {str(value)!r})"
    )


@pytest.mark.parametrize("value", [0, "0", -2, "10%", "two"])
def test_bad_canaries_say_what_is_wanted(value):
    with pytest.raises(ValueError) as caught:
        parse_canary(value)
    assert str(caught.value) == f"canary must be a positive number of devices (not {str(value)!r})"


def test_options_are_checked_and_kept_as_given():
    assert batch_option("5") == 5
    assert batch_option(" 25% ") == "25%"
    assert max_errors_option("0") == 0
    assert max_errors_option("10%") == "10%"
    assert canary_option("2") == 2
    with pytest.raises(ValueError, match=r"^batch must be"):
        batch_option("0%")
    with pytest.raises(ValueError, match=r"^max_errors must be"):
        max_errors_option("-3")
    with pytest.raises(ValueError, match=r"^canary must be"):
        canary_option("0")


def test_a_rollout_with_a_bad_option_refuses_to_start():
    with pytest.raises(ValueError, match=r"\(not '0'\)"):
        Rollout(IDS, batch=0)
    with pytest.raises(ValueError, match=r"\(not '-1'\)"):
        Rollout(IDS, max_errors=-1)
    with pytest.raises(ValueError, match=r"\(not '0'\)"):
        Rollout(IDS, canary=0)


# -- batches and canaries -----------------------------------------------------------


def test_no_options_is_one_batch_that_never_stops():
    plan = Rollout(IDS)
    assert plan.batches == (tuple(IDS),)
    assert not plan.active
    assert drive(plan, failing=set(IDS)) == [IDS]
    assert plan.stop_reason is None
    assert plan.not_started() == []
    assert len(plan.failed) == 10


def test_batches_keep_the_targets_order_and_the_last_is_short():
    plan = Rollout(IDS, batch=3)
    assert plan.active
    assert plan.batches == (tuple(IDS[0:3]), tuple(IDS[3:6]), tuple(IDS[6:9]), (IDS[9],))


def test_a_percentage_batch_is_of_all_the_targets():
    assert Rollout(IDS[:5], batch="50%").batches == (tuple(IDS[0:3]), tuple(IDS[3:5]))


def test_canaries_are_a_batch_of_their_own_before_the_others():
    plan = Rollout(IDS, canary=1, batch=4)
    assert plan.batches == ((IDS[0],), tuple(IDS[1:5]), tuple(IDS[5:9]), (IDS[9],))
    assert Rollout(IDS, canary=2).batches == (tuple(IDS[:2]), tuple(IDS[2:]))
    assert Rollout(IDS[:3], canary=20).batches == (tuple(IDS[:3]),)


def test_duplicate_targets_run_once():
    assert Rollout(["a", "b", "a"], batch=1).batches == (("a",), ("b",))


def test_each_batch_waits_for_the_previous_to_finish():
    plan = Rollout(IDS[:4], batch=2)
    assert plan.ready() == IDS[:2]
    assert not plan.may_start(IDS[2])
    plan.start(IDS[0])
    plan.start(IDS[1])
    assert plan.ready() == []  # batch 1 is running, batch 2 waits
    plan.finish(IDS[0], ResultStatus.OK)
    assert plan.ready() == [] and not plan.may_start(IDS[2])
    plan.finish(IDS[1], ResultStatus.OK)
    assert plan.ready() == IDS[2:4]
    assert plan.may_start(IDS[2])


def test_start_and_finish_out_of_turn_are_errors():
    plan = Rollout(IDS[:4], batch=2)
    with pytest.raises(ValueError, match=r"^device-03 may not start now: ask may_start\(\) first$"):
        plan.start(IDS[2])
    with pytest.raises(ValueError, match=r"^device-01 is not running: start\(\) it before finish\(\)$"):
        plan.finish(IDS[0], ResultStatus.OK)
    plan.start(IDS[0])
    with pytest.raises(ValueError, match="may not start now"):
        plan.start(IDS[0])
    plan.finish(IDS[0], ResultStatus.OK)
    with pytest.raises(ValueError, match="is not running"):
        plan.finish(IDS[0], ResultStatus.OK)


# -- the error budget -------------------------------------------------------------


def test_the_budget_stops_after_the_batch_that_exceeds_it():
    """10 devices, batches of 2, at most 1 error; devices 3 and 4 fail: 5..10 never start."""
    plan = Rollout(IDS, batch=2, max_errors=1)
    waves = drive(plan, failing={"device-03", "device-04"})
    assert waves == [IDS[0:2], IDS[2:4]]
    assert plan.not_started() == IDS[4:]
    assert plan.failed == ["device-03", "device-04"]
    assert plan.stop_reason == "2 devices failed, more than --max-errors 1"
    assert plan.skip_reason == "not started: 2 devices failed, more than --max-errors 1"


def test_exactly_max_errors_failures_do_not_stop_the_run():
    plan = Rollout(IDS, batch=2, max_errors=2)
    drive(plan, failing={"device-03", "device-04"})
    assert plan.stop_reason is None
    assert plan.not_started() == []


def test_max_errors_zero_stops_at_the_first_failure_but_running_devices_finish():
    plan = Rollout(IDS[:4], max_errors=0)
    plan.start(IDS[0])
    plan.start(IDS[1])
    plan.finish(IDS[0], ResultStatus.TIMEOUT)
    assert plan.stop_reason == "1 device failed, more than --max-errors 0"
    assert not plan.may_start(IDS[2])
    assert plan.ready() == []
    plan.finish(IDS[1], ResultStatus.OK)  # the one already running finishes
    assert plan.finished == {IDS[0]: ResultStatus.TIMEOUT, IDS[1]: ResultStatus.OK}
    assert plan.not_started() == IDS[2:4]


@pytest.mark.parametrize(
    "status",
    [
        ResultStatus.ERROR,
        ResultStatus.TIMEOUT,
        ResultStatus.OFFLINE,
        ResultStatus.AUTH_FAILED,
        ResultStatus.DISCONNECTED,
        ResultStatus.CANCELLED,
    ],
)
def test_every_status_but_ok_counts_against_the_budget(status):
    plan = Rollout(IDS[:3], max_errors=0)
    plan.start(IDS[0])
    plan.finish(IDS[0], status)
    assert plan.failed == [IDS[0]]
    assert not plan.may_start(IDS[1])


def test_ok_rows_never_count():
    plan = Rollout(IDS[:3], max_errors=0)
    plan.start(IDS[0])
    plan.finish(IDS[0], ResultStatus.OK)
    assert plan.failed == [] and plan.may_start(IDS[1])


def test_a_percentage_budget_says_what_it_came_to():
    plan = Rollout(IDS, batch="30%", max_errors="10%")  # batches of 3, at most 1 error
    waves = drive(plan, failing={"device-02", "device-05"})
    assert waves == [IDS[0:3], IDS[3:6]]
    assert plan.not_started() == IDS[6:]
    assert plan.skip_reason == "not started: 2 devices failed, more than --max-errors 10% (1 of 10 devices)"


def test_a_zero_percent_budget_rounds_down_to_zero():
    plan = Rollout(IDS, batch=5, max_errors="9%")  # 0.9 devices: none may fail
    drive(plan, failing={"device-01"})
    assert plan.not_started() == IDS[5:]
    assert plan.stop_reason == "1 device failed, more than --max-errors 9% (0 of 10 devices)"


# -- canaries -------------------------------------------------------------------------


def test_a_failed_canary_stops_everything_else():
    plan = Rollout(IDS, canary=1)
    waves = drive(plan, failing={"device-01"})
    assert waves == [[IDS[0]]]
    assert plan.not_started() == IDS[1:]
    assert plan.skip_reason == "not started: the canary device-01 failed"


def test_several_failed_canaries_are_named():
    plan = Rollout(IDS, canary=2)
    drive(plan, failing={"device-01", "device-02"})
    assert plan.skip_reason == "not started: the canaries device-01, device-02 failed"
    plan = Rollout(IDS, canary=5)
    drive(plan, failing=set(IDS[:5]))
    assert plan.stop_reason == "the canaries device-01, device-02, device-03 and 2 more failed"


def test_a_canary_failure_stops_canaries_still_waiting():
    plan = Rollout(IDS[:4], canary=2)
    plan.start(IDS[0])
    plan.finish(IDS[0], ResultStatus.ERROR)
    assert not plan.may_start(IDS[1])
    assert plan.not_started() == IDS[1:4]


def test_healthy_canaries_let_the_rest_run_and_later_failures_are_not_canaries():
    plan = Rollout(IDS, canary=2, batch=4)
    waves = drive(plan, failing={"device-05"})
    assert waves == [IDS[0:2], IDS[2:6], IDS[6:10]]
    assert plan.stop_reason is None and plan.not_started() == []


def test_a_canary_failure_is_said_before_the_budget():
    plan = Rollout(IDS, canary=2, max_errors=0)
    drive(plan, failing={"device-02"})
    assert plan.skip_reason == "not started: the canary device-02 failed"
    assert plan.not_started() == IDS[2:]


def test_canary_failures_count_against_the_budget_too():
    plan = Rollout(IDS, canary=1, batch=3, max_errors=1)
    plan.start(IDS[0])
    plan.finish(IDS[0], ResultStatus.OK)
    drive(plan, failing={"device-02", "device-03"})
    assert plan.not_started() == IDS[4:]
    assert plan.skip_reason == "not started: 2 devices failed, more than --max-errors 1"

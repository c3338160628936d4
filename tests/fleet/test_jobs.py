"""Background jobs (fleet.submit) over real agents, SSH servers and shells on loopback.

A job's command waits for a gate file the test creates, so "the other run finished
while the job was still in flight" follows from events, never from timing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import Devices, device_ids, open_fleet
from tunnelnb.errors import TunnelnbError, UnknownTargets
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.fleet.jobs import Job, JobStillRunning, busy_devices, jobs_of, jobs_table, submit

#: The longest a gated command waits for its gate (a bound, never reached when the test works).
GATE_WAIT_S = 60


@pytest.fixture
async def fleet(api, devices: Devices, ssh_server):
    await devices.add_all(device_ids(4), ssh_port=ssh_server.port)
    async with open_fleet(api) as f:
        yield f


class Gate:
    """A shell command that waits for a file, and the test's hand on that file."""

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.path = directory / name
        self.script = directory / f"wait-{name}.sh"
        tries = int(GATE_WAIT_S / 0.05)
        self.script.write_text(
            f'i=0; while [ ! -e "{self.path}" ] && [ $i -lt {tries} ]; do sleep 0.05; i=$((i+1)); done\n'
        )

    def command(self, then: str) -> str:
        return f"sh {self.script}; {then}"

    def open(self) -> None:
        self.path.touch()


async def test_a_job_runs_while_other_runs_go_on(fleet: Fleet, tmp_path):
    gate = Gate(tmp_path)
    job = submit(fleet, gate.command("echo done"), "device-0[1-2]", timeout=GATE_WAIT_S + 10)
    assert isinstance(job, Job) and (job.id, job.targets) == (1, ["device-01", "device-02"])
    other = await asyncio.wait_for(fleet.run("echo other", "device-0[3-4]", timeout=20), 30)
    assert list(other.df.status) == ["ok", "ok"] and list(other.df.stdout) == ["other\n", "other\n"]
    assert not job.done() and job.state == "running"  # the other run finished while the job was in flight
    assert str(job.progress) == "0/2 done"
    assert busy_devices(fleet) == {"device-01": job, "device-02": job}
    with pytest.raises(JobStillRunning) as info:
        await asyncio.to_thread(job.result, 0.01)
    assert str(info.value) == (
        f"job 1 ({job.command[:39]}… on 2 devices) is still running: job.wait() or job.result(timeout=...)"
    )
    # On the loop's own thread, outside a notebook, blocking would stop the job's loop: await it instead.
    with pytest.raises(TunnelnbError, match=r"^job 1 runs on this thread's event loop, which blocking here would"):
        job.wait(0.01)
    gate.open()
    res = await asyncio.wait_for(job, 30)
    assert res is job.result() and job.done() and job.state == "finished"
    assert [(r.device_id, r.status, r.exit_code, r.stdout) for r in res] == [
        ("device-01", "ok", 0, "done\n"),
        ("device-02", "ok", 0, "done\n"),
    ]
    assert str(job.progress) == "2/2 done (2 ok)"
    assert repr(job).startswith("<Job 1 finished: 2/2 done (2 ok) 'sh ")
    assert job.finished_at is not None and job.finished_at >= job.started_at
    # The job's rows are in the history, as the second run; last_results stays the foreground's.
    history = fleet.history
    assert list(history[history.run == 2].device_id) == ["device-01", "device-02"]
    assert set(history[history.run == 2].command) == {job.command}
    assert fleet.last_results is other
    assert jobs_of(fleet) == [job] and busy_devices(fleet) == {}
    table = jobs_table(fleet)
    assert table[["job", "state", "devices", "done", "ok", "failed"]].values.tolist() == [[1, "finished", 2, 2, 2, 0]]


@pytest.mark.parametrize("warm", [True, False], ids=["logged-in", "first-use"])
async def test_a_busy_device_waits_for_the_job_and_the_others_go_ahead(fleet: Fleet, tmp_path, warm):
    """A cell on a device a job holds waits for the device; its other devices are not held up."""
    if warm:
        await fleet.run("true", "device-0[1-2]", timeout=20)
    gate = Gate(tmp_path)
    order: list[tuple[str, str]] = []
    device_02_done = asyncio.Event()

    def cell_row(row):
        order.append(("cell", row.device_id))
        if row.device_id == "device-02":
            device_02_done.set()

    job = submit(
        fleet,
        gate.command("echo first"),
        "device-01",
        timeout=GATE_WAIT_S + 10,
        on_result=lambda row: order.append(("job", row.device_id)),
    )
    assert busy_devices(fleet, ["device-01", "device-02"]) == {"device-01": job}
    cell = asyncio.create_task(fleet.run("echo second", "device-01 device-02", timeout=20, on_result=cell_row))
    await asyncio.wait_for(device_02_done.wait(), 30)
    assert not job.done()
    gate.open()
    res = await asyncio.wait_for(cell, 30)
    job_res = await asyncio.wait_for(job, 30)
    assert [(r.device_id, r.status, r.stdout) for r in res] == [
        ("device-01", "ok", "second\n"),
        ("device-02", "ok", "second\n"),
    ]
    assert [(r.status, r.stdout, r.error) for r in job_res] == [("ok", "first\n", "")]
    assert order.index(("cell", "device-02")) < order.index(("job", "device-01"))
    # The job holds device-01 from its first use (its login too): the cell's row comes after.
    assert order == [("cell", "device-02"), ("job", "device-01"), ("cell", "device-01")]
    assert res["device-01"].error == ""


async def test_a_second_job_on_a_busy_device_waits_for_the_first(fleet: Fleet, tmp_path):
    await fleet.run("true", "device-0[1-2]", timeout=20)
    gate = Gate(tmp_path)
    first = submit(fleet, gate.command("echo one"), "device-01", timeout=GATE_WAIT_S + 10)
    device_02_done = asyncio.Event()
    second = submit(fleet, "echo two", "device-01 device-02", timeout=20, on_result=lambda row: device_02_done.set())
    assert second.id == 2
    await asyncio.wait_for(device_02_done.wait(), 30)
    assert [(r.device_id, r.stdout) for r in second.results_so_far()] == [("device-02", "two\n")]
    assert str(second.progress) == "1/2 done (1 ok)"
    assert second.pending_devices == ["device-01"]
    assert repr(second) == "<Job 2 running: 1/2 done (1 ok) 'echo two'>"
    assert busy_devices(fleet) == {"device-01": first}  # the first job holds it (the second waits there too)
    assert not first.done() and not second.done()
    gate.open()
    res = await asyncio.wait_for(second, 30)
    assert first.done()
    assert [(r.device_id, r.status, r.stdout) for r in res] == [
        ("device-01", "ok", "two\n"),
        ("device-02", "ok", "two\n"),
    ]
    assert [(r.status, r.stdout) for r in first.result()] == [("ok", "one\n")]


async def test_cancel_interrupts_the_devices_and_the_sessions_stay_usable(fleet: Fleet):
    started: set[str] = set()
    all_started = asyncio.Event()

    def output(device_id: str, text: str) -> None:
        started.add(device_id)
        if len(started) == 3:
            all_started.set()

    before = await fleet.run("echo before", "device-04", timeout=20)
    job = submit(fleet, "echo started; sleep 30", "device-0[1-3]", timeout=60, on_output=output)
    await asyncio.wait_for(all_started.wait(), 30)
    assert job.cancel() is True
    res = await asyncio.wait_for(job, 30)
    assert job.state == "cancelled" and job.cancel() is False
    assert [(r.device_id, r.status, r.exit_code, r.stdout, r.error) for r in res] == [
        (d, "cancelled", None, "started\n", "the run was cancelled") for d in ("device-01", "device-02", "device-03")
    ]
    assert str(job.progress) == "3/3 done (3 cancelled)"
    assert fleet.last_results is before  # the foreground's, not the job's
    history = fleet.history
    assert list(history[history.run == 2].status) == ["cancelled"] * 3
    again = await fleet.run("echo again", "device-0[1-3]", timeout=20)
    assert [(r.status, r.stdout) for r in again] == [("ok", "again\n")] * 3


async def test_closing_the_fleet_cancels_its_jobs_first(fleet: Fleet):
    """``fleet.close()`` (``%tunnel close``) stops a job's devices with Ctrl-C: rows ``cancelled``, not dropped."""
    started = asyncio.Event()
    job = submit(fleet, "echo started; sleep 30", "device-01", timeout=60, on_output=lambda d, t: started.set())
    await asyncio.wait_for(started.wait(), 30)
    late = submit(fleet, "sleep 30", "device-02", timeout=60)  # submitted in the same step of the loop as the close
    await asyncio.wait_for(fleet.close(), 30)
    assert (job.state, late.state) == ("cancelled", "cancelled")
    assert [(r.status, r.stdout, r.error) for r in job.result(0)] == [
        ("cancelled", "started\n", "the run was cancelled")
    ]
    assert [(r.status, r.error) for r in late.result(0)] == [("cancelled", "the run was cancelled")]


async def test_a_job_cancelled_before_it_started_still_has_its_rows(fleet: Fleet):
    job = submit(fleet, "echo never", "device-0[1-2]", timeout=20)
    assert job.cancel() is True  # on the loop's thread, before its task has run
    res = await asyncio.wait_for(job, 30)
    assert [(r.device_id, r.status, r.stdout, r.error) for r in res] == [
        ("device-01", "cancelled", "", "the run was cancelled"),
        ("device-02", "cancelled", "", "the run was cancelled"),
    ]
    assert list(fleet.history.status) == ["cancelled", "cancelled"]
    assert fleet.last_results is None


async def test_wait_and_result_from_another_thread(fleet: Fleet, tmp_path):
    gate = Gate(tmp_path)
    job = submit(fleet, gate.command("echo late"), "device-03", timeout=GATE_WAIT_S + 10)
    assert await asyncio.to_thread(job.wait, 0.05) is False
    with pytest.raises(JobStillRunning, match=r"^job 1 \(sh .* on 1 device\) is still running: job.wait\(\)"):
        await asyncio.to_thread(job.result, 0.05)
    gate.open()
    res = await asyncio.to_thread(job.result, 30)
    assert [(r.device_id, r.status, r.stdout) for r in res] == [("device-03", "ok", "late\n")]
    assert await asyncio.to_thread(job.wait, 0) is True


async def test_mistakes_are_errors_at_submit_and_a_bug_surfaces_on_result(fleet: Fleet, caplog):
    with pytest.raises(UnknownTargets, match="devcie-01"):
        submit(fleet, "true", "devcie-01")
    with pytest.raises(TypeError, match=r"^fleet.submit: got an unexpected keyword argument 'timout'"):
        submit(fleet, "true", "device-01", timout=5)
    with pytest.raises(ValueError, match="ok_codes: 300 is not an exit status"):
        submit(fleet, "true", "device-01", ok_codes=(300,))
    assert jobs_of(fleet) == []

    def broken(row):
        raise RuntimeError("boom")

    before = await fleet.run("echo before", "device-04", timeout=20)
    job = submit(fleet, "echo x", "device-01", timeout=20, on_result=broken)
    with pytest.raises(RuntimeError, match=r"^boom$"):
        await asyncio.wait_for(job, 30)
    assert job.state == "failed"
    assert job.summary() == "job 1 failed: 1/1 done (1 ok) · echo x · RuntimeError: boom (job.result() raises it)"
    with pytest.raises(RuntimeError, match=r"^boom$"):
        job.result(timeout=0)
    assert fleet.last_results is before
    assert "job 1 (echo x on 1 device) failed" in caplog.text
    history = fleet.history  # fleet.run recorded the job's rows before the bug came through
    assert list(history[history.run == 2].stdout) == ["x\n"]


def test_a_job_from_a_script_on_the_loop_thread_of_connect_sync():
    """connect_sync's loop runs in a thread: submit, wait, result and cancel from the main thread."""
    import threading

    import tunnelnb

    with tunnelnb.connect_sync(embedded=True, devices=4, seed=1) as fleet:
        healthy = [d for d in fleet.select("*") if d not in fleet.fleet.embedded[1].misbehaving][:2]
        job = submit(fleet.fleet, "echo bg", healthy, timeout=30)
        assert job.wait(60) is True
        assert [(r.status, r.stdout) for r in job.result()] == [("ok", "bg\n")] * 2
        started = threading.Event()
        seen: set[str] = set()

        def output(device_id: str, text: str) -> None:
            seen.add(device_id)
            if len(seen) == len(healthy):
                started.set()

        long = submit(fleet.fleet, "echo going; sleep 30", healthy, timeout=60, on_output=output)
        assert started.wait(60)
        assert long.cancel() is True
        res = long.result(timeout=60)
        assert [(r.status, r.stdout) for r in res] == [("cancelled", "going\n")] * 2
        assert [(r.status, r.stdout) for r in fleet.run("echo after", healthy, timeout=30)] == [("ok", "after\n")] * 2
        assert list(fleet.history.run.unique()) == [1, 2, 3]

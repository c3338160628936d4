"""Background runs through the magics: ``--bg``, :func:`background.start`, ``%tunnel jobs``.

First through a real InteractiveShell on an embedded fleet (its loop in a thread,
as in terminal IPython), then in a real Jupyter kernel, where the job runs on the
kernel's own loop while other cells run.  A job's command waits for a gate file
the test creates, so "the other cell ran while the job was in flight" follows
from events, never from timing.
"""

from __future__ import annotations

import argparse
import ast
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from tests.notebook.test_kernel import WIDGET_MIME, Kernel
from tunnelnb.fleet.jobs import Job
from tunnelnb.fleet.results import Results
from tunnelnb.notebook.magics import background

SEED, DEVICES = 6, 6  # device-06 is offline with this seed; the others are healthy
GATE_TRIES = 1200  # 60 s of 0.05 s sleeps: a bound, never reached when the test works


def gated(gate: str, then: str) -> str:
    """A command that waits (at most 60 s) for the file ``gate`` on the device, then runs ``then``."""
    return f"i=0; while [ ! -e {gate} ] && [ $i -lt {GATE_TRIES} ]; do sleep 0.05; i=$((i+1)); done; {then}"


def host_path(sandbox: str, root: str, device_id: str, path: str) -> Path:
    """Where ``path`` of a simulated device's file system is on this machine (its fleet's sandbox and root)."""
    if sandbox == "none":  # no namespaces: the device's absolute paths are the host's
        return Path(path)
    return Path(root) / device_id / path.lstrip("/")


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "tunnelnb")
    result = shell.run_cell(f"%tunnel connect --embedded --devices {DEVICES} --seed {SEED}")
    assert result.success, result.error_in_exec
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "tunnelnb")
    # The extension takes back the display of jobs it installed.
    assert Job not in shell.display_formatter.ipython_display_formatter.type_printers


class Gates:
    """Gate files on the simulated devices, and the test's hand on them."""

    def __init__(self, ip: InteractiveShell) -> None:
        self.sim = ip._tunnelnb_magics.fleet.embedded[1]

    def new(self) -> str:
        return f"/tmp/gate-{uuid.uuid4().hex[:8]}"

    def open(self, gate: str, *device_ids: str) -> None:
        for device_id in device_ids:
            path = host_path(self.sim.sandbox, str(self.sim.root), device_id, gate)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def run(ip: InteractiveShell, code: str) -> Any:
    result = ip.run_cell(code)
    assert result.success, result.error_in_exec or result.error_before_exec
    return result.result


def test_start_returns_the_job_at_once_and_a_cell_runs_meanwhile(ip, capsys):
    magics = ip._tunnelnb_magics
    fleet = magics.fleet
    run(ip, "%tunnel device-0[1-3] --no-stream -- true")  # logged in
    capsys.readouterr()
    gates = Gates(ip)
    gate = gates.new()
    args = argparse.Namespace(out="job", parse=None)
    options = {"timeout": 90.0, "concurrency": 100, "ok_codes": (0,), "batch": None, "max_errors": None}
    job = background.start(magics, args, gated(gate, "echo done"), ["device-01", "device-02"], options)
    assert isinstance(job, Job) and ip.user_ns["job"] is job
    assert capsys.readouterr().out == (
        f"job {job.id} runs in the background on 2 devices: job.result() waits for its rows\n"
    )
    other = run(ip, "%tunnel device-03 --no-stream -- echo other")
    assert [(r.status, r.stdout) for r in other] == [("ok", "other\n")]
    assert not job.done()  # the cell ran while the job was in flight
    gates.open(gate, "device-01", "device-02")
    res = job.result(timeout=60)
    assert [(r.device_id, r.status, r.exit_code, r.stdout) for r in res] == [
        ("device-01", "ok", 0, "done\n"),
        ("device-02", "ok", 0, "done\n"),
    ]
    assert fleet.last_results is other  # the job's end did not replace the cell's table
    assert res.html_max_rows == magics.display_limit


def test_bg_magic_jobs_table_busy_devices_and_wait(ip, capsys):
    gates = Gates(ip)
    gate = gates.new()
    capsys.readouterr()
    result = ip.run_cell(f"%%tunnel device-0[1-2] --bg -o job\n{gated(gate, 'echo done')}\n")
    assert result.success, result.error_in_exec
    job = result.result
    assert isinstance(job, Job) and ip.user_ns["job"] is job and ip.user_ns["_"] is job
    assert job.command == gated(gate, "echo done") + "\n" and job.targets == ["device-01", "device-02"]
    # One line, and the job as the cell's value (terminal IPython shows its repr).
    assert capsys.readouterr().out.splitlines() == [
        f"job {job.id} runs in the background on 2 devices: job.result() waits for its rows",
        f"Out[0]: <Job {job.id} running: 0/2 done 'i=0; while [ ! -e {gate} ] …'>",
    ]

    # Another job on a device the first holds: it says so, and runs there after it.
    second = run(ip, "%tunnel device-02 device-03 --bg -- echo second")
    assert capsys.readouterr().out.splitlines()[0] == (
        f"job {second.id} runs in the background on 2 devices: %tunnel jobs {second.id} --wait waits for its rows; "
        f"device-02 is busy with job {job.id} ('i=0; while [ ! -e {gate} ] …'): "
        "the command runs there once that is done (job.cancel() stops a job)"
    )
    table = run(ip, "%tunnel jobs")
    assert isinstance(table, pd.DataFrame)
    mine = table[table.job.isin([job.id, second.id])]
    assert mine[["state", "devices"]].values.tolist() == [["running", 2], ["running", 2]]
    assert run(ip, f"%tunnel jobs {job.id}") is job

    gates.open(gate, "device-01", "device-02")
    rows = run(ip, f"%tunnel jobs {second.id} --wait")
    assert isinstance(rows, Results)
    assert [(r.device_id, r.status, r.stdout) for r in rows] == [
        ("device-02", "ok", "second\n"),
        ("device-03", "ok", "second\n"),
    ]
    assert [(r.status, r.stdout) for r in job.result(timeout=60)] == [("ok", "done\n")] * 2
    table = run(ip, "%tunnel jobs")
    assert table[table.job.isin([job.id, second.id])].state.tolist() == ["finished", "finished"]
    history = run(ip, "%tunnel history --last 2")
    assert set(history.command.str.strip()) == {job.command.strip(), "echo second"}


def test_cancel_a_job_from_the_magic_and_the_devices_work_after(ip):
    job = run(ip, "%tunnel device-0[4-5] --bg -o long -- echo going; sleep 30")
    assert ip.user_ns["long"] is job
    assert run(ip, f"%tunnel jobs {job.id} --cancel") is job
    res = job.result(timeout=60)
    assert [(r.device_id, r.status) for r in res] == [("device-04", "cancelled"), ("device-05", "cancelled")]
    assert job.state == "cancelled"
    after = run(ip, "%tunnel device-0[4-5] --no-stream -- echo after")
    assert [(r.status, r.stdout) for r in after] == [("ok", "after\n")] * 2


def test_mistakes_with_jobs_are_one_line(ip):
    for line, message in [
        ("%%tunnel device-01 --bg --parse kv\necho a=1", "job.result().parse('kv')"),
        ("%tunnel jobs 999", "no job 999 (jobs: "),
        ("%tunnel jobs --wait", "which job? %tunnel jobs N --wait"),
    ]:
        result = ip.run_cell(line)
        assert isinstance(result.error_in_exec, UsageError), line
        assert message in str(result.error_in_exec)


def test_ctrl_c_in_a_cell_stops_that_cell_not_the_job(ip):
    gates = Gates(ip)
    gate = gates.new()
    job = run(ip, f"%tunnel device-01 --bg -- {gated(gate, 'echo survived')}")
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C, during the next cell
    timer.start()
    try:
        result = ip.run_cell("%%tunnel device-0[2-3] -o cut\necho going; sleep 30")
    finally:
        timer.cancel()
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert [r.status for r in ip.user_ns["cut"]] == ["cancelled", "cancelled"]  # the cell's rows, not the job's
    assert job.state == "running"
    gates.open(gate, "device-01")
    assert [(r.status, r.stdout) for r in job.result(timeout=60)] == [("ok", "survived\n")]


# -- in a real Jupyter kernel: the job runs on the kernel's own loop ------------------


class SyncedKernel(Kernel):
    """A :class:`Kernel` whose shell channel holds no reply from before: ``wait_for_ready`` may ask twice."""

    def __init__(self, km: Any) -> None:
        super().__init__(km)
        msg_id = self.kc.kernel_info()
        while self.kc.get_shell_msg(timeout=60)["parent_header"].get("msg_id") != msg_id:
            pass  # a second kernel_info_reply to wait_for_ready, which would be taken for a cell's reply


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> Iterator[Kernel]:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("kernel")))
    k = SyncedKernel(km)
    try:
        k.ok("%load_ext tunnelnb")
        k.ok(f"%tunnel connect --embedded --devices {DEVICES} --seed {SEED} -o fleet")
        yield k
    finally:
        k.close()


def messages_of(kernel: Kernel, code: str, *, timeout: float = 120) -> list[dict[str, Any]]:
    """Every iopub message until one cell has run, whichever cell it belongs to.

    What a job displays belongs to the cell that started it (ipykernel keeps the
    parent in a context variable, which the job's task inherited), so its updates
    are collected whatever their parent.
    """
    msg_id = kernel.kc.execute(code, allow_stdin=False)
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kernel did not finish {code!r} within {timeout} s")
        try:
            msg = kernel.kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        ours = msg["parent_header"].get("msg_id") == msg_id
        if ours and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        seen.append(msg)
    reply = kernel.kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "ok", seen
    return seen


@pytest.mark.kernel
def test_a_bg_cell_returns_at_once_and_other_cells_run_while_it_is_in_flight(kernel: Kernel):
    gate = f"/tmp/gate-{uuid.uuid4().hex[:8]}"
    kernel.ok("%%tunnel device-0[1-3] --no-stream\ntrue")  # logged in
    cell = kernel.ok(f"%%tunnel device-0[1-2] --bg -o job\n{gated(gate, 'echo done')}")
    assert cell.mime(WIDGET_MIME), "the job's live line was not displayed"
    assert [m for m in cell.outputs if m["msg_type"] == "execute_result"] == []  # the line is the cell's value
    assert kernel.value("job.state") == repr("running")

    kernel.ok("%%tunnel device-03 -o other\necho other")  # runs while the job waits for its gate
    assert kernel.value("(job.done(), [(r.status, r.stdout) for r in other])") == repr((False, [("ok", "other\n")]))

    # Open the gate and wait in the same cell: job.wait() runs the kernel's loop meanwhile.
    sandbox, root = ast.literal_eval(kernel.value("(fleet.embedded[1].sandbox, str(fleet.embedded[1].root))"))
    paths = [str(host_path(sandbox, root, d, gate)) for d in ("device-01", "device-02")]
    touch = "".join(f"Path({p!r}).touch()\n" for p in paths)
    seen = messages_of(kernel, f"from pathlib import Path\n{touch}res = job.result(timeout=60)")
    bg_cell = cell.outputs[0]["parent_header"]["msg_id"]
    updates = [m["content"]["data"]["text/plain"] for m in seen if m["msg_type"] == "update_display_data"]
    assert {m["parent_header"]["msg_id"] for m in seen if m["msg_type"] == "update_display_data"} == {bg_cell}
    assert len(updates) == 1 and updates[0].startswith(f"job 1 finished: 2/2 done (2 ok) · i=0; while [ ! -e {gate}")
    assert updates[0].endswith(" s (job.result() has the rows)")
    assert kernel.value("[(r.device_id, r.status, r.stdout) for r in res]") == repr(
        [("device-01", "ok", "done\n"), ("device-02", "ok", "done\n")]
    )
    assert kernel.value("(fleet.last_results is other, job.state)") == repr((True, "finished"))
    shown = kernel.ok("job")  # a finished job shows its summary, no widget
    assert not shown.mime(WIDGET_MIME) and "job 1 finished: 2/2 done (2 ok)" in shown.mime("text/html")[0]

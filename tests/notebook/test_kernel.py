"""The magics in a real Jupyter kernel (ipykernel over ZeroMQ, driven by jupyter_client and nbclient).

Inside a kernel the fleet lives on the kernel's own event loop (re-entered with
nest-asyncio2), so sessions survive between cells, ``await fleet.run(...)``
works in a cell, and Kernel → Interrupt cancels what is running.
"""

from __future__ import annotations

import ast
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
SEED, DEVICES = 6, 6  # device-06 is offline with this seed


@dataclass
class Reply:
    status: str
    content: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)
    comm_updates: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        parts = []
        for msg in self.outputs:
            c = msg["content"]
            if msg["msg_type"] == "stream":
                parts.append(c["text"])
            elif msg["msg_type"] in ("execute_result", "display_data"):
                parts.append(c["data"].get("text/html") or c["data"].get("text/plain", ""))
            elif msg["msg_type"] == "error":
                parts.append("\n".join(c["traceback"]))
        return "".join(parts)

    def mime(self, kind: str) -> list[Any]:
        return [
            m["content"]["data"][kind]
            for m in self.outputs
            if m["msg_type"] in ("execute_result", "display_data") and kind in m["content"]["data"]
        ]


class Kernel:
    def __init__(self, km: KernelManager) -> None:
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str, *, timeout: float = 120, interrupt_after: float | None = None) -> Reply:
        msg_id = self.kc.execute(code, allow_stdin=False)
        reply = Reply("", {})
        deadline = time.monotonic() + timeout
        interrupt_at = None if interrupt_after is None else time.monotonic() + interrupt_after
        idle = False
        while not idle:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the kernel did not finish {code!r} within {timeout} s")
            if interrupt_at is not None and time.monotonic() >= interrupt_at:
                self.km.interrupt_kernel()
                interrupt_at = None
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind in ("stream", "execute_result", "display_data", "error"):
                reply.outputs.append(msg)
            elif kind == "comm_msg":
                reply.comm_updates.append(msg["content"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        shell = self.kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 5))
        assert shell["parent_header"]["msg_id"] == msg_id
        reply.status, reply.content = shell["content"]["status"], shell["content"]
        return reply

    def ok(self, code: str, **kwargs: Any) -> Reply:
        reply = self.execute(code, **kwargs)
        assert reply.status == "ok", reply.text()
        return reply

    def value(self, expr: str) -> str:
        return self.ok(f"print(repr({expr}))").text().strip()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> Iterator[Kernel]:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("kernel")))
    k = Kernel(km)
    try:
        k.ok("%load_ext tunnelnb")
        k.ok(f"%tunnel connect --embedded --devices {DEVICES} --seed {SEED} -o fleet")
        yield k
    finally:
        k.close()


def test_devices_login_and_a_cell_with_an_offline_device(kernel: Kernel):
    devices = kernel.ok("%tunnel devices")
    assert "device-06" in devices.text() and "OFFLINE" in devices.text()
    login = kernel.ok("%tunnel login device-0[1-5]")
    assert login.text().count("ok") >= 5
    cell = kernel.ok("%%tunnel device-0[1-6] -o res\necho up $(hostname)")
    html = cell.mime("text/html")[-1]
    assert "device-06" in html and "offline" in html and "up device-03" in html
    assert "device-01\x1b[0m │ up device-01" in cell.text()  # live output, labelled
    assert kernel.value("dict(zip(res.df.device_id, res.df.status))") == repr(
        {f"device-0{i}": "ok" for i in range(1, 6)} | {"device-06": "offline"}
    )
    assert kernel.value("_ is res") == "True"


def test_parse_gives_the_long_table(kernel: Kernel):
    reply = kernel.ok("%%tunnel device-0[1-3] --parse kv\necho temp=41\necho fw: 2.1")
    html = reply.mime("text/html")[-1]
    assert "temp" in html and "41" in html and "parse_error" in html


def test_await_on_the_same_fleet_and_sessions(kernel: Kernel):
    kernel.ok("%tunnel device-01 -- cd /tmp; export MARK=kept")
    assert kernel.value("(await fleet.run('echo $MARK $(pwd)', 'device-01')).df.stdout[0]") == repr("kept /tmp\n")


def test_user_error_is_one_line(kernel: Kernel):
    for line, word in [("%tunnel devcie-01 -- true", "devcie-01"), ("%tunnel bogus", "unknown subcommand")]:
        reply = kernel.execute(line)
        assert reply.status == "error" and reply.content["ename"] == "UsageError"
        # IPython shows a UsageError as one line on stderr, without a traceback.
        assert reply.text().startswith("UsageError: ") and reply.text().count("\n") == 1, reply.text()
        assert word in reply.text()


def test_progress_bar_and_dashboard_are_widgets_updated_live(kernel: Kernel):
    dashboard = kernel.ok("%tunnel status")
    assert dashboard.mime(WIDGET_MIME), dashboard.outputs
    kernel.ok("%config TunnelMagics.progress_after = 0.3")
    try:
        reply = kernel.ok("%%tunnel device-0[1-5]\nsleep 1.5; echo slow-done")
    finally:
        kernel.ok("%config TunnelMagics.progress_after = 2.0")
    assert reply.mime(WIDGET_MIME), "no progress bar was displayed"
    updates = [str(u.get("data", {}).get("state", {})) for u in reply.comm_updates]
    assert any("[5/5] 5 ok, 0 failed" in u for u in updates), "the progress bar did not reach 5/5"
    # The dashboard shown in the earlier cell was re-rendered while this one ran.
    assert any("sleep 1.5" in u for u in updates), "the dashboard did not show the running command"


def test_interrupt_cancels_and_the_next_cell_works(kernel: Kernel):
    reply = kernel.execute("%%tunnel device-0[1-5] -o cut\necho going; sleep 30", interrupt_after=3.0, timeout=60)
    assert reply.status == "error" and reply.content["ename"] == "KeyboardInterrupt"  # so Run All stops here
    # One line under the table, not a 20-line KeyboardInterrupt traceback.
    assert reply.content["traceback"] == ["interrupted: 5 rows cancelled"]
    errors = [m["content"]["traceback"] for m in reply.outputs if m["msg_type"] == "error"]
    assert errors == [["interrupted: 5 rows cancelled"]]
    assert "cancelled" in "".join(reply.mime("text/html"))
    assert kernel.value("sorted(set(cut.df.status))") == repr(["cancelled"])
    # Cancelled rows keep what had arrived, and their real duration.
    assert kernel.value("sorted(set(cut.df.stdout))") == repr(["going\n"])
    assert kernel.value("bool((cut.df.duration_s > 1.0).all())") == "True"
    after = kernel.ok("%%tunnel device-0[1-5] -o again\necho after")
    assert "after" in after.text()
    assert kernel.value("sorted(set(again.df.stdout))") == repr(["after\n"])


def test_a_failed_connect_keeps_the_connection_and_says_so(kernel: Kernel):
    kernel.ok("%tunnel login device-01")
    kernel.ok(
        "import os\nos.environ['TNB_WRONG_TOKEN'] = 'not-the-token'\n"
        "magics = get_ipython()._tunnelnb_magics\nwhere, session = magics.where, fleet.session('device-01')"
    )
    where = ast.literal_eval(kernel.value("where"))
    url, project = ast.literal_eval(kernel.value("(fleet.api.base_url, fleet.api.project_id)"))
    for line, why in [
        (f"%tunnel connect {url} --project-id {project} --api-token-env TNB_WRONG_TOKEN", "in $TNB_WRONG_TOKEN"),
        ("%tunnel connect http://127.0.0.1:9 --api-token-env TNB_WRONG_TOKEN", "(connection refused)"),
    ]:
        reply = kernel.execute(line)
        assert reply.status == "error" and reply.content["ename"] == "UsageError"
        text = reply.text()
        assert text.count("\n") == 1 and why in text, text
        assert text.rstrip().endswith(f"; the connection to {where} is still open"), text
    # Nothing changed: the same fleet and logged-in shell, still running commands.
    assert kernel.value("(magics.fleet is fleet, magics.where == where, fleet.session('device-01') is session)") == (
        "(True, True, True)"
    )
    assert "device-06" in kernel.ok("%tunnel devices").text()
    kernel.ok("%tunnel device-01 --no-stream -o still -- echo still here")
    assert kernel.value("(still.df.status[0], still.df.stdout[0])") == repr(("ok", "still here\n"))


def test_a_small_notebook_under_nbclient(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext tunnelnb"),
        nbformat.v4.new_code_cell("%tunnel connect --embedded --devices 3 --seed 2"),
        nbformat.v4.new_code_cell("%%tunnel device-0[1-3] -o res\nuname -s"),
        nbformat.v4.new_code_cell("assert set(res.df.status) == {'ok'}, res.df\nres.groups()"),
        nbformat.v4.new_code_cell("%tunnel close --all"),
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    html = nb.cells[2].outputs[-1]["data"]["text/html"]
    assert html.count("Linux") >= 3
    assert "closed the connection" in nb.cells[4].outputs[0]["text"]


def test_shell_terminal_and_picker_in_the_kernel(kernel: Kernel):
    reply = kernel.ok("term = %tunnel shell device-02\nterm")
    assert reply.mime(WIDGET_MIME)
    wait_phase = (
        "import asyncio\n"
        "for _ in range(600):  # at most 30 s: the terminal opens on the kernel's loop\n"
        "    if term.phase not in ('', 'connecting'):\n"
        "        break\n"
        "    await asyncio.sleep(0.05)"
    )
    kernel.ok(wait_phase)
    assert kernel.value("term.phase") == repr("attached")
    kernel.ok("held = %tunnel device-02 -- echo held")
    assert kernel.value("held['device-02'].status") == repr("skipped")  # the terminal has the shell
    kernel.ok("term.detach()")
    kernel.ok(wait_phase.replace("('', 'connecting')", "('', 'connecting', 'attached')"))
    assert kernel.value("term.phase") == repr("detached")
    kernel.ok("after = %tunnel device-02 -- echo after")
    assert kernel.value("(after['device-02'].status, after['device-02'].stdout)") == repr(("ok", "after\n"))
    kernel.ok("from tunnelnb.notebook.widgets import DevicePicker\npicker = DevicePicker(fleet)\npicker.select_all()")
    kernel.ok("picker.children")  # it renders
    reply = kernel.ok("%%tunnel $picker.value --no-stream -o picked\necho picked")
    assert kernel.value("list(picked.df.device_id)") == repr([f"device-0{i}" for i in range(1, DEVICES + 1)])

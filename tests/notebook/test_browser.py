"""The quickstart notebook in a real browser: ``tunnelnb demo``, JupyterLab, headless Chromium.

What a newcomer sees after ``make demo``: the demo starts the platform, the simulated
fleet and JupyterLab; Chromium opens the printed URL; Run All; the results table and
the live fleet dashboard render.  Debian's ``chromium`` is driven by Playwright (no
browser download).  A full-page screenshot is kept in ``test-output/quickstart.png``.

JupyterLab gets a temporary configuration (see :func:`tests.test_demo.isolated_env`):
its application object exposed to the page, so the test runs JupyterLab's own
commands (``notebook:run-all-cells``) rather than clicking through menus; autosave
off, so the repository's notebook is never overwritten with this run's outputs; and
no "official Jupyter news?" notification over the page.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_demo import NOTEBOOK, ROOT, Demo, environ, running_demo

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
OUTPUT = ROOT / "test-output"
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}
RUN_TIMEOUT = 120.0  # Run All takes a few seconds here
MS = 1000  # Playwright counts in milliseconds
EXPECTED = {"device-01": "ok", "device-02": "auth_failed", "device-03": "ok", "device-04": "ok"}
WIDGET_TROUBLE = ("Loading widget", "Error displaying widget", "model not found")

# JavaScript run in the page; ``app`` is JupyterLab (exposed by LabApp.expose_app_in_browser).
KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""
RUN_ALL = """async () => {
    const commands = window.jupyterapp.commands;
    await commands.execute('notebook:clear-all-cell-outputs');
    window.__tunnelnbRun = 'running';
    commands.execute('notebook:run-all-cells').then(
        ok => { window.__tunnelnbRun = ok === false ? 'a cell failed' : 'done'; },
        err => { window.__tunnelnbRun = 'error: ' + err; });
}"""
# Every code cell's input and output, in order: what the assertions read.
CELLS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(cell => ({
    input: cell.querySelector('.jp-InputArea-editor').textContent,
    output: cell.querySelector('.jp-OutputArea') ? cell.querySelector('.jp-OutputArea').innerText : '',
    rows: [...cell.querySelectorAll('.jp-OutputArea table.tunnelnb-table tbody tr')].map(tr => ({
        device: tr.getAttribute('data-device') || tr.querySelector('td').textContent.trim(),
        status: (tr.querySelector('td.tunnelnb-status') || {}).textContent || '',
        statusClass: (tr.querySelector('td.tunnelnb-status') || {className: ''}).className,
    })),
    dashboard: !!cell.querySelector('.jp-OutputArea .tunnelnb-dashboard'),
    widget: !!cell.querySelector('.jp-OutputArea .jupyter-widgets'),
    error: !!cell.querySelector('.jp-OutputArea [data-mime-type="application/vnd.jupyter.error"]'),
}))"""


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's chromium (apt-get install chromium); CI does")
    return CHROMIUM


def lab_config(tmp_path: Path) -> None:
    """Expose JupyterLab's application object to the page (how JupyterLab's own UI tests drive it)."""
    config = tmp_path / "jupyter-config"
    config.mkdir(exist_ok=True)
    (config / "jupyter_lab_config.json").write_text(json.dumps({"LabApp": {"expose_app_in_browser": True}}))


def wait_for_run(page: Any, demo: Demo, timeout: float) -> None:
    """Until Run All has finished; fail early on a dialog (kernel choice, error) or the demo dying."""
    deadline = time.monotonic() + timeout
    while (state := page.evaluate("window.__tunnelnbRun")) == "running":
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            pytest.fail(f"a dialog blocks the run: {dialog.first.inner_text()!r}")
        if demo.popen.poll() is not None:
            pytest.fail(f"the demo exited during the run: {demo.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"Run All did not finish within {timeout:g} s")
        time.sleep(0.25)
    assert state == "done", state


SCROLLER = "document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')"  # the notebook scrolls inside it


def full_page_screenshot(page: Any, path: Path) -> None:
    """The whole notebook in one image: the viewport is made as tall as the notebook, scrolled to the top."""
    height = page.evaluate(
        f"""() => {{
            const scroller = {SCROLLER};
            const cells = scroller.querySelectorAll('.jp-Cell');
            const bottom = cells[cells.length - 1].getBoundingClientRect().bottom;  // not the scroll-past-end space
            const content = bottom - scroller.getBoundingClientRect().top + scroller.scrollTop;
            return window.innerHeight - scroller.clientHeight + content + 24;
        }}"""
    )
    page.set_viewport_size({"width": 1400, "height": min(int(height), 16000)})
    page.evaluate(f"() => {{ {SCROLLER}.scrollTop = 0; }}")
    page.wait_for_timeout(1000)  # JupyterLab lays the cells out again after a resize
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


@pytest.fixture
def no_checkpoints_left() -> Iterator[None]:
    """JupyterLab makes notebooks/.ipynb_checkpoints when it opens a notebook: remove it if this test made it."""
    checkpoints = (ROOT / NOTEBOOK).parent / ".ipynb_checkpoints"
    existed = checkpoints.exists()
    yield
    if not existed:
        shutil.rmtree(checkpoints, ignore_errors=True)


def open_and_run_all(page: Any, demo: Demo) -> float:
    """Open the printed URL, wait for the kernel, clear the saved outputs, Run All; the seconds Run All took."""
    page.goto(demo.notebook_url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook")
    page.wait_for_function(KERNEL_IDLE, timeout=90 * MS)  # python3, as the notebook says: no kernel dialog
    page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")  # a wider notebook
    t0 = time.monotonic()
    page.evaluate(RUN_ALL)
    wait_for_run(page, demo, RUN_TIMEOUT)
    run_s = time.monotonic() - t0
    page.wait_for_selector(".tunnelnb-dashboard tr[data-device='device-08']", timeout=30 * MS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea')].every(o => !/Loading widget/.test(o.innerText))",
        timeout=30 * MS,
    )
    return run_s


def check_outputs(cells: list[dict[str, Any]], platform_url: str) -> None:
    """What the quickstart shows: the demo's platform, the first table, the dashboard, and no widget trouble."""
    assert not any(c["error"] for c in cells), [c["output"] for c in cells if c["error"]]
    connect = next(c for c in cells if c["input"].startswith("%tunnel connect"))
    assert f"connected to {platform_url}, project demo" in connect["output"], connect  # not an embedded fleet
    assert "8 devices, 8 online" in connect["output"], connect

    # %%tunnel device-0[1-4]: the output streamed by device, then one table row per device.
    first = next(c for c in cells if c["input"].startswith("%%tunnel device-0[1-4]"))
    assert {r["device"]: r["status"] for r in first["rows"]} == EXPECTED, first
    for row in first["rows"]:
        assert f"tunnelnb-status-{EXPECTED[row['device']]}" in row["statusClass"], row
    assert "device-01 │ model=" in first["output"], first["output"]

    # %tunnel status: the dashboard widget, rendered from the live kernel, a row per device.
    (status,) = [c for c in cells if c["dashboard"]]
    assert status["widget"], status
    assert [r["device"] for r in status["rows"]] == [f"device-{i:02d}" for i in range(1, 9)], status
    assert "8 devices · 8 online · 7 logged in" in status["output"], status["output"]
    outputs = "\n".join(c["output"] for c in cells)
    assert not [t for t in WIDGET_TROUBLE if t in outputs], outputs


def check_dashboard_is_live(page: Any) -> None:
    """A command run now, outside any cell, turns device-05's dashboard row into an error."""
    page.evaluate(
        """() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel
            .requestExecute({code: "%tunnel device-05 -- '(exit 7)'"})"""
    )
    row = ".tunnelnb-dashboard tr[data-device='device-05']"
    page.wait_for_selector(f"{row} td.tunnelnb-status-error", timeout=30 * MS)
    # The quotes group the words as on a shell command line: the subshell's exit status, not 127.
    assert page.locator(f"{row} td").nth(6).inner_text() == "7"


@pytest.mark.usefixtures("no_checkpoints_left")
def test_quickstart_runs_in_jupyterlab_with_its_table_and_live_dashboard(tmp_path: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    lab_config(tmp_path)
    t0 = time.monotonic()
    with running_demo(tmp_path, LAB_SETTINGS) as demo, sync_playwright() as playwright:
        platform_url = environ(demo.children()["jupyterlab"])["TUNNELNB_URL"]
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--no-proxy-server"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60 * MS)
        try:
            run_s = open_and_run_all(page, demo)
            full_page_screenshot(page, OUTPUT / "quickstart.png")
            check_outputs(page.evaluate(CELLS), platform_url)
            check_dashboard_is_live(page)
        except BaseException:
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "quickstart-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
        os.killpg(demo.popen.pid, signal.SIGINT)  # Ctrl-C, as in the terminal
        assert demo.wait_exit(60) == 0, demo.describe()
        assert "left behind" not in demo.stderr, demo.describe()  # JupyterLab shut its kernel down itself

    saved = (ROOT / NOTEBOOK).read_text()
    assert platform_url not in saved and "token ****" not in saved, f"JupyterLab saved this run into {NOTEBOOK}"
    print(f"demo + Run All + checks in {time.monotonic() - t0:.1f} s (Run All {run_s:.1f} s)")

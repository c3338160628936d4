"""The xterm.js terminal widget in real JupyterLab, driven in headless Chromium: keys in, the device's screen out.

JupyterLab runs on a temporary notebook that connects an embedded fleet (a local
platform and simulated devices inside the kernel) and shows
``%tunnel shell device-01 --record device-01.cast``.  The test types into xterm.js as a user does
(focus, then ``page.keyboard``: xterm.js reads its hidden textarea) and reads
the screen from xterm.js's own buffer (``el.tunnelnbTerm``).  Every wait is for
something on the screen or in the page, with a bound.

Steps: ``echo hi``; ``vi`` with typed text, ``:q!`` (the screenshot
test-output/terminal-vi.png is taken then; TUNNELNB_UPDATE_DOCS=1 copies it to
docs/); ``top`` and ``q``; Ctrl-C to a ``sleep``;
keys typed while a cell runs (the status line says the kernel is busy, the keys
arrive when it is idle); Detach, and a ``%%tunnel`` cell on the same device is ok.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_demo import ROOT, family_of, isolated_env, still_running
from tests.notebook.test_browser import CHROMIUM, KERNEL_IDLE, LAB_SETTINGS, MS, OUTPUT, lab_config
from tunnelnb.cli.demo import lab_answers, lab_argv, lab_port
from tunnelnb.notebook.widgets.terminal import STATIC

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not (STATIC / "terminal.js").is_file(), reason="the front end is not built: run `make js`"),
]

#: The screenshot of vi in the notebook; the README's copy in docs/ is refreshed only when asked
#: (TUNNELNB_UPDATE_DOCS=1), so a test run never changes a tracked file.
SCREENSHOT = OUTPUT / "terminal-vi.png"
DOCS_SCREENSHOT = ROOT / "docs" / "terminal-vi.png"
WAIT_MS = 30 * MS  # one step on the screen: a loaded CI machine may be slow
LAB_READY_S = 120.0
LEFT_S = 10.0  # for the kernel and its children to go once the server has gone
CAST = "device-01.cast"  # the terminal's recording, beside the notebook (the kernel's working directory)
# The device's tools are this machine's: full vi and top if installed, else busybox's (.ci/run installs busybox).
VI = "vi" if shutil.which("vi") else "busybox vi"
TOP = "top" if shutil.which("top") else "busybox top"

# JavaScript run in the page.  The screen: xterm.js's buffer, one string per line, and the cursor's line.
SCREEN = """() => {
    const term = document.querySelector('.tunnelnb-xterm').tunnelnbTerm;
    const buffer = term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return {lines, cursor: lines[buffer.baseY + buffer.cursorY], alternate: buffer.type === 'alternate'};
}"""
PROMPT_JS = r"/^[\w.-]+@device-01:[^$]*\$ ?$/"
AT_PROMPT = f"""() => {{
    const term = document.querySelector('.tunnelnb-xterm').tunnelnbTerm;
    const buffer = term.buffer.active;
    const line = buffer.getLine(buffer.baseY + buffer.cursorY).translateToString(true);
    return buffer.type === 'normal' && {PROMPT_JS}.test(line);
}}"""
SCREEN_HAS = """([pattern, flags]) => {
    const term = document.querySelector('.tunnelnb-xterm').tunnelnbTerm;
    const buffer = term.buffer.active;
    const re = new RegExp(pattern, flags);
    for (let i = 0; i < buffer.length; i++) if (re.test(buffer.getLine(i).translateToString(true))) return true;
    return false;
}"""
RUN = """async ([index, command]) => {
    const panel = window.jupyterapp.shell.currentWidget;
    panel.content.activeCellIndex = index;
    window.jupyterapp.commands.execute(command);  // not awaited: it resolves when the cell has run
}"""
CELL = """(index) => {
    const cell = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[index];
    const area = cell.querySelector('.jp-OutputArea');
    return {
        output: area ? area.innerText : '',
        rows: [...cell.querySelectorAll('table.tunnelnb-table tbody tr')].map(tr => [
            tr.getAttribute('data-device') || tr.querySelector('td').textContent.trim(),
            (tr.querySelector('td.tunnelnb-status') || {}).textContent || '',
        ]),
    };
}"""


def notebook(gate: Path) -> dict[str, Any]:
    """Connect; the terminal (recording to CAST); a cell busy until ``gate`` exists; a %%tunnel; the replay."""
    sources = [
        "%load_ext tunnelnb",
        "%tunnel connect --embedded --devices 2 --seed 1 -o fleet",
        f"%tunnel shell device-01 --record {CAST}",
        "import pathlib, time\n\n"
        f"gate = pathlib.Path({str(gate)!r})\n"
        "for _ in range(1200):  # busy until the test opens the gate (at most a minute)\n"
        "    if gate.exists():\n"
        "        break\n"
        "    time.sleep(0.05)",
        "%%tunnel device-01\necho after",
        f'from tunnelnb.notebook.widgets import TerminalReplay\n\nTerminalReplay("{CAST}", speed=20)',
    ]
    cells = [
        {"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None} for s in sources
    ]
    return {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@contextlib.contextmanager
def jupyter_server(
    tmp_path: Path, root: Path, argv: Callable[[int], list[str]], what: str
) -> Iterator[tuple[str, str]]:
    """A Jupyter server (JupyterLab, Notebook 7) on loopback serving ``root``, ``argv(port)``; yields (URL, token).

    At the end it is stopped as a user stops it (SIGINT to its process group), and the
    kernel and what the kernel started (the fleet's devices, their shells), which are not
    all in that group, get a while to go and are then killed: gone before the test ends.
    """
    lab_config(tmp_path)
    env = isolated_env(tmp_path, LAB_SETTINGS)  # Notebook 7 reads JupyterLab's settings too: autosave off, no news
    token = secrets.token_hex(16)
    env["JUPYTER_TOKEN"] = token
    port = lab_port(0)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            argv(port), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=root, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}"
    family: dict[int, int] = {}
    try:
        ready = lab_answers(base_url, token)
        deadline = time.monotonic() + LAB_READY_S
        while not ready():
            if popen.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not come up: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield base_url, token
    finally:
        family = family_of(popen.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(30)
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(5)
        if not gone(family, LEFT_S):
            for pid, start in family.items():
                if still_running({pid: start}):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            assert gone(family, LEFT_S), still_running(family)


def gone(family: dict[int, int], timeout: float) -> bool:
    """Wait until no member of ``family`` runs (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while still_running(family):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def jupyterlab(tmp_path: Path, root: Path) -> Iterator[str]:
    """JupyterLab on loopback serving ``root``, with a temporary configuration; yields the notebook's URL."""

    def argv(port: int) -> list[str]:
        command = lab_argv(root, port, False)
        command[0] = sys.executable
        return command

    with jupyter_server(tmp_path, root, argv, "JupyterLab") as (base_url, token):
        yield f"{base_url}/lab/tree/terminal.ipynb?token={token}"


def screen_has(page: Any, pattern: str, flags: str = "") -> None:
    """Wait until a line of the terminal's screen matches ``pattern`` (a JavaScript regular expression)."""
    page.wait_for_function(SCREEN_HAS, arg=[pattern, flags], timeout=WAIT_MS)


def at_prompt(page: Any) -> None:
    """Wait until the cursor is on a bare shell prompt, outside any full-screen program."""
    page.wait_for_function(AT_PROMPT, timeout=WAIT_MS)


def type_line(page: Any, text: str) -> None:
    page.keyboard.type(text)
    page.keyboard.press("Enter")


@contextlib.contextmanager
def chromium_page(playwright: Any, failure_png: str) -> Iterator[tuple[Any, list[str]]]:
    """Headless Chromium's page and the console lines it logs; on a failure, a full-page screenshot and them."""
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--no-proxy-server"]
    )
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60 * MS)
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"page error: {error}"))
        try:
            yield page, console
        except BaseException:
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / failure_png), full_page=True)
            print("the page's console:", *console, sep="\n")
            raise
    finally:
        browser.close()


def detach_then_run(page: Any, index: int) -> None:
    """Detach with the widget's button; then the ``%%tunnel`` cell at ``index``, on the same device, is ok."""
    page.locator(".tunnelnb-xterm-button").click()
    page.wait_for_selector(".tunnelnb-xterm[data-phase='detached']", timeout=WAIT_MS)
    assert status(page) == "detached: device-01's shell is back to %%tunnel cells"
    page.wait_for_function(KERNEL_IDLE, timeout=WAIT_MS)
    page.evaluate(RUN, [index, "notebook:run-cell"])
    page.wait_for_function(f"() => ({CELL})({index}).rows.length > 0", timeout=WAIT_MS)
    result = page.evaluate(CELL, index)
    assert result["rows"] == [["device-01", "ok"]], result
    assert "after" in result["output"], result


def status(page: Any) -> str:
    return page.locator(".tunnelnb-xterm-status").inner_text()


def test_the_terminal_widget_runs_vi_top_and_ctrl_c_in_jupyterlab(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's chromium (apt-get install chromium); CI does")

    root = tmp_path / "work"
    root.mkdir()
    gate = tmp_path / "gate"
    (root / "terminal.ipynb").write_text(json.dumps(notebook(gate)))
    marker = f"tunnelnb-{secrets.token_hex(4)}"
    with (
        jupyterlab(tmp_path, root) as url,
        sync_playwright() as playwright,
        chromium_page(playwright, "terminal-failure.png") as (page, _),
    ):
        page.goto(url)
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook")
        page.wait_for_function(KERNEL_IDLE, timeout=90 * MS)
        page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
        page.evaluate(RUN, [3, "notebook:run-all-above"])  # connect, the terminal
        page.wait_for_selector(".tunnelnb-xterm[data-phase='attached'] .xterm-screen", timeout=WAIT_MS)
        assert status(page) == "attached to device-01 (128x30)"
        at_prompt(page)
        size = page.evaluate("() => { const t = document.querySelector('.tunnelnb-xterm').tunnelnbTerm;"
                             " return [t.cols, t.rows]; }")  # fmt: skip
        assert size == [128, 30]
        page.locator(".tunnelnb-xterm .xterm-screen").click()

        type_line(page, "echo hi")
        screen_has(page, "^hi$")
        at_prompt(page)

        type_line(page, f"{VI} /tmp/{marker}.txt")
        page.wait_for_function(f"() => ({SCREEN})().alternate", timeout=WAIT_MS)  # vi's own screen
        page.keyboard.press("i")
        page.keyboard.type("typed in vi, in a notebook: héllo ✓")
        screen_has(page, "^typed in vi, in a notebook: héllo ✓$")
        cell = page.locator(".jp-CodeCell", has=page.locator(".tunnelnb-xterm"))
        cell.scroll_into_view_if_needed()
        OUTPUT.mkdir(exist_ok=True)
        cell.screenshot(path=str(SCREENSHOT))
        if os.environ.get("TUNNELNB_UPDATE_DOCS") == "1":
            shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)
        page.keyboard.press("Escape")
        type_line(page, ":q!")
        at_prompt(page)
        assert not Path(f"/tmp/{marker}.txt").exists()  # :q! wrote nothing

        type_line(page, TOP)
        screen_has(page, "load average", "i")
        page.keyboard.press("q")
        at_prompt(page)

        # The program prints before it sleeps: a Ctrl-C sent while the shell starts it could miss it.
        type_line(page, "sh -c 'echo nap-$((6*7)); exec sleep 30'")
        screen_has(page, "^nap-42$")
        page.keyboard.press("Control+c")
        at_prompt(page)
        type_line(page, "echo status=$?")
        screen_has(page, "^status=130$")  # the sleep died of SIGINT

        # A busy kernel: the keys wait in it (the status line says so) and arrive once it is idle.
        page.evaluate(RUN, [3, "notebook:run-cell"])
        page.wait_for_function(f"() => !({KERNEL_IDLE})()", timeout=WAIT_MS)
        page.locator(".tunnelnb-xterm .xterm-screen").click()
        type_line(page, "echo queued")
        page.wait_for_function(
            "() => document.querySelector('.tunnelnb-xterm-busy').textContent === 'kernel busy: 12 keys waiting'",
            timeout=WAIT_MS,
        )
        gate.touch()
        screen_has(page, "^queued$")
        page.wait_for_function(
            "() => document.querySelector('.tunnelnb-xterm-busy').textContent === ''", timeout=WAIT_MS
        )
        at_prompt(page)

        detach_then_run(page, 4)

        # The recording, played back in the notebook: the same screen, from the file.
        page.evaluate(RUN, [5, "notebook:run-cell"])
        page.wait_for_selector(".tunnelnb-xterm[data-phase='played']", timeout=WAIT_MS)
        replayed = page.evaluate(
            """() => { const t = document.querySelectorAll('.tunnelnb-xterm')[1].tunnelnbTerm;
                const b = t.buffer.active; const lines = [];
                for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
                return [t.cols, t.rows, lines]; }"""
        )
        assert replayed[:2] == [128, 30]
        assert "status=130" in replayed[2] and "queued" in replayed[2], replayed[2]
        assert not any("[tunnelnb:" in line for line in replayed[2])  # the device's output only
        assert (root / CAST).stat().st_mode & 0o777 == 0o600
        OUTPUT.mkdir(exist_ok=True)
        page.locator(".jp-CodeCell").nth(4).scroll_into_view_if_needed()
        page.screenshot(path=str(OUTPUT / "terminal.png"))

"""The xterm.js terminal widget in Jupyter Notebook 7 (not JupyterLab), driven in headless Chromium.

The same widget as in :mod:`tests.notebook.test_terminal_browser`, in the other front end
it claims to work in: ``jupyter notebook`` (Notebook 7, the JupyterLab components in a
one-document page) serves a temporary notebook that connects an embedded fleet and shows
``%tunnel shell device-01``.  Notebook 7 exposes its application as ``window.jupyterapp``
when started with ``--JupyterNotebookApp.expose_app_in_browser=True``, so cells run
through the notebook's own commands, as in the JupyterLab test.

Steps: ``echo hi``; ``top`` and ``q``; Detach, and a ``%%tunnel`` cell on the same device
is ok with its output.  Every wait is for something on the screen or in the page, with a
bound.  The screenshot is test-output/terminal-notebook7.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.notebook.test_browser import CHROMIUM, KERNEL_IDLE, MS, OUTPUT
from tests.notebook.test_terminal_browser import (
    RUN,
    TOP,
    WAIT_MS,
    at_prompt,
    chromium_page,
    detach_then_run,
    jupyter_server,
    screen_has,
    status,
    type_line,
)
from tunnelnb.notebook.widgets.terminal import STATIC

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not (STATIC / "terminal.js").is_file(), reason="the front end is not built: run `make js`"),
]

SCREENSHOT = OUTPUT / "terminal-notebook7.png"
NAME = "terminal.ipynb"
# Thrown by Notebook 7's own shortcuts extension (notebook_core.js: its settings registry's pluginChanged handler
# reads ``plugins[id].schema`` of a plugin it does not have) as the page loads, before any cell runs and
# with no widget in the notebook: not the terminal's.
NOTEBOOK_OWN_ERRORS = ("page error: Cannot read properties of undefined (reading 'schema')",)
JUPYTER = str(Path(sys.executable).parent / "jupyter")  # the venv's, with Notebook 7 (the `test` extra)


def notebook() -> dict[str, Any]:
    """Connect; the terminal; a %%tunnel cell on the same device."""
    sources = [
        "%load_ext tunnelnb",
        "%tunnel connect --embedded --devices 2 --seed 1 -o fleet",
        "%tunnel shell device-01",
        "%%tunnel device-01\necho after",
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


def notebook_argv(root: Path, port: int) -> list[str]:
    """Notebook 7 on loopback, its application object exposed to the page, nothing popping up over it."""
    argv = [
        JUPYTER, "notebook",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.log_level=WARN",
        "--JupyterNotebookApp.expose_app_in_browser=True",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--ServerApp.allow_root=True")  # containers and CI run as root
    return argv


@contextlib.contextmanager
def notebook7(tmp_path: Path, root: Path) -> Iterator[str]:
    """Notebook 7 serving ``root`` with a temporary configuration; yields the notebook's URL."""
    with jupyter_server(tmp_path, root, lambda port: notebook_argv(root, port), "Notebook 7") as (base_url, token):
        yield f"{base_url}/notebooks/{NAME}?token={token}"


def test_the_terminal_widget_runs_echo_and_top_in_notebook_7(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's chromium (apt-get install chromium); CI does")

    root = tmp_path / "work"
    root.mkdir()
    (root / NAME).write_text(json.dumps(notebook()))
    with (
        notebook7(tmp_path, root) as url,
        sync_playwright() as playwright,
        chromium_page(playwright, "terminal-notebook7-failure.png") as (page, console),
    ):
        page.goto(url)
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook")
        # Notebook 7's shell, not JupyterLab's: the one document is its current widget.
        assert page.evaluate("() => window.jupyterapp.name") == "Jupyter Notebook"
        page.wait_for_function(KERNEL_IDLE, timeout=90 * MS)
        page.evaluate(RUN, [3, "notebook:run-all-above"])  # connect, the terminal
        page.wait_for_selector(".tunnelnb-xterm[data-phase='attached'] .xterm-screen", timeout=WAIT_MS)
        assert status(page).startswith("attached to device-01 ("), status(page)
        at_prompt(page)
        page.locator(".tunnelnb-xterm .xterm-screen").click()  # focus xterm.js (its hidden textarea)

        type_line(page, "echo hi")
        screen_has(page, "^hi$")
        at_prompt(page)

        type_line(page, TOP)
        screen_has(page, "load average", "i")
        page.keyboard.press("q")
        at_prompt(page)

        detach_then_run(page, 3)

        OUTPUT.mkdir(exist_ok=True)
        page.locator(".jp-CodeCell", has=page.locator(".tunnelnb-xterm")).scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOT))
        errors = [line for line in console if line.startswith(("error:", "page error:"))]
        assert not [e for e in errors if e not in NOTEBOOK_OWN_ERRORS], "\n".join(errors)

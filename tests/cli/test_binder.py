"""binder/start: a platform and a simulated fleet in the background, then the quickstart notebook against them."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs under binder/start: executes a copy of the quickstart with nbclient and reports what it saw.
EXECUTE = """
import json, os, sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
texts = []
for cell in nb.cells:
    for out in cell.get("outputs", []):
        texts.append(out.get("text") or out.get("data", {}).get("text/html") or "")
print(json.dumps({"url": os.environ["TUNNELNB_URL"], "outputs": texts}))
"""


@pytest.mark.timeout(300)
def test_binder_start_runs_the_quickstart_against_its_platform(tmp_path):
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELNB_")}
    token, password = "binder-token-" + secrets.token_hex(8), "binder-pass-" + secrets.token_hex(8)
    env |= {
        "TUNNELNB_LOG_DIR": str(tmp_path / "logs"),
        "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
        "TUNNELNB_API_TOKEN": token,
        "TUNNELNB_LOGIN_PASSWORD": password,
    }
    proc = subprocess.Popen(
        [
            "bash",
            str(ROOT / "binder" / "start"),
            sys.executable,
            "-c",
            EXECUTE,
            str(ROOT / "notebooks" / "01-quickstart.ipynb"),
            str(ROOT / "notebooks"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the platform and the sim stay in this process group, so they can be stopped
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the platform and the sim, left running by design
        _wait_group_gone(proc.pid)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    outputs = "\n".join(report["outputs"])
    assert report["url"].startswith("http://127.0.0.1:")
    assert f"connected to {report['url']}" in outputs  # the notebook used binder's platform, not an embedded one
    assert "connected to embedded" not in outputs
    assert "auth_failed" in outputs and "device-04" in outputs  # the seeded fleet, same as the embedded one
    assert "platform http://127.0.0.1:" in err
    # The platform's and the devices' secrets are never printed, logged, or shown in the notebook.
    logs = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    for secret in (token, password):
        assert secret not in out + err + logs


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Wait (bounded) until no process of the group is left; SIGKILL what remains after that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def test_binder_pins_every_dependency_of_the_package():
    """postBuild installs tunnelnb with --no-deps: each of its dependencies must be pinned in requirements.txt."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower().replace("_", "-") for dep in project["dependencies"]}
    pinned = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert sorted(wanted - pinned) == []

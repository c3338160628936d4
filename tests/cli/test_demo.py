"""``tunnelnb demo`` (``make demo``) as a newcomer runs it: a real platform, fleet and JupyterLab.

The demo runs as a subprocess in a session of its own, with its output in files and
Jupyter's config, data, runtime and settings directories (and $HOME) under
``tmp_path``, so the user's Jupyter set-up is neither read nor touched.  Its children
are found, and checked gone at the end, through /proc.  :func:`running_demo` is also
what the browser test uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import Proc

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/01-quickstart.ipynb"
TUNNELNB = str(Path(sys.executable).parent / "tunnelnb")  # the installed console script
URL_LINE = re.compile(r"^\s*(http://127\.0\.0\.1:\d+)/lab/tree/(\S+)\?token=(\w+)\s*$", re.MULTILINE)
READY = 120.0  # platform + fleet + JupyterLab take about 5 s here; a loaded CI machine may take much longer
STOPPED = 45.0  # the demo's own bounds: 15 s JupyterLab + 10 s fleet + 5 s platform, plus leftovers

pytestmark = pytest.mark.timeout(240)

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


# ---------------------------------------------------------------------------
# processes, from /proc


def proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def children_of(pid: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [child for child in pids if (stat := proc_stat(child)) is not None and stat[0] == pid]


def family_of(pid: int) -> dict[int, int]:
    """Every descendant of ``pid`` as {pid: start time}."""
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if (stat := proc_stat(child)) is not None:
                found[child] = stat[2]
                todo.append(child)
    return found


def still_running(family: dict[int, int]) -> list[str]:
    """The members of ``family`` that exist and are not zombies, with their command lines."""
    alive = []
    for pid, start in family.items():
        stat = proc_stat(pid)
        if stat is not None and stat[2] == start and stat[1] != "Z":
            alive.append(f"{pid}: {cmdline(pid)}")
    return alive


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)


# ---------------------------------------------------------------------------
# the demo


def isolated_env(tmp_path: Path, lab_settings: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """This environment without TUNNELNB_* or a display, with every Jupyter directory under ``tmp_path``.

    ``lab_settings`` maps a JupyterLab plugin id (``@jupyterlab/docmanager-extension:plugin``)
    to user settings written to the temporary settings directory.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNNELNB_", "JUPYTER", "IPYTHON"))}
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        env.pop(name, None)
    dirs = {
        "HOME": "home",
        "JUPYTER_CONFIG_DIR": "jupyter-config",
        "JUPYTER_DATA_DIR": "jupyter-data",
        "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
        "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
        "IPYTHONDIR": "ipython",
    }
    for var, name in dirs.items():
        (tmp_path / name).mkdir(exist_ok=True)
        env[var] = str(tmp_path / name)
    for plugin, values in (lab_settings or {}).items():
        package, _, name = plugin.partition(":")
        path = tmp_path / "lab-settings" / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return env


@dataclass
class Demo(Proc):
    """The demo process (its output in two files, as test_cli's processes) and where JupyterLab serves."""

    base_url: str = ""  # http://127.0.0.1:PORT
    notebook_path: str = ""  # relative to JupyterLab's root, as in the printed URL
    token: str = ""  # JupyterLab's

    @property
    def notebook_url(self) -> str:
        return f"{self.base_url}/lab/tree/{self.notebook_path}?token={self.token}"

    def children(self) -> dict[str, int]:
        """Its child processes by role: platform, sim, jupyterlab."""
        roles = {}
        for pid in children_of(self.popen.pid):
            line = cmdline(pid)
            role = next((r for r in ("platform", "sim", "jupyterlab") if f" {r} " in f" {line} "), line)
            roles[role] = pid
        return roles

    def api(self, path: str, *, token: bool = True, timeout: float = 10) -> tuple[int, bytes]:
        headers = {"Authorization": f"token {self.token}"} if token else {}
        request = urllib.request.Request(f"{self.base_url}{path}", headers=headers)
        try:
            with OPENER.open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo was still running {timeout:g} s after the signal: {self.describe()}")


@contextlib.contextmanager
def running_demo(tmp_path: Path, lab_settings: dict[str, dict[str, Any]] | None = None) -> Iterator[Demo]:
    """``tunnelnb demo --no-browser --port 0`` until it prints its URL; killed with all it started if still up."""
    argv = [TUNNELNB, "demo", "--no-browser", "--port", "0"]
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=isolated_env(tmp_path, lab_settings),
            cwd=tmp_path,  # the demo finds the notebook from its package, not from the working directory
            start_new_session=True,  # its own process group, as in a terminal: Ctrl-C goes to the group
        )
    demo = Demo("tunnelnb demo", popen, out_path, err_path)
    family: dict[int, int] = {}
    try:
        deadline = time.monotonic() + READY
        while not (m := URL_LINE.search(demo.stdout)):
            if popen.poll() is not None:
                pytest.fail(f"the demo exited before printing its URL: {demo.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no URL from the demo within {READY:g} s: {demo.describe()}")
            time.sleep(0.1)
        demo.base_url, demo.notebook_path, demo.token = m.groups()
        family = family_of(popen.pid)
        yield demo
    finally:
        if popen.poll() is None:  # the test failed before stopping it: leave nothing behind
            family.update(family_of(popen.pid))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(STOPPED)
            if popen.poll() is None:
                popen.kill()
                popen.wait(5)
        for pid in family:
            if still_running({pid: family[pid]}):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def wait_gone(family: dict[int, int], timeout: float = 10) -> list[str]:
    """What of ``family`` is still running after ``timeout`` (re-parented processes are reaped a bit later)."""
    deadline = time.monotonic() + timeout
    while (alive := still_running(family)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


# ---------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize(
    "stop",
    ["ctrl-c", "sigterm"],
    ids=["ctrl-c-to-the-group", "sigterm-to-the-demo"],
)
def test_demo_serves_the_quickstart_on_its_platform_and_stops_everything(tmp_path: Path, stop: str) -> None:
    t0 = time.monotonic()
    with running_demo(tmp_path) as demo:
        ready_s = time.monotonic() - t0
        roles = demo.children()
        assert set(roles) == {"platform", "sim", "jupyterlab"}, (roles, demo.describe())

        # The secrets were made up for this run and handed over in the environment only.
        plat_env, sim_env, lab_env = (environ(roles[r]) for r in ("platform", "sim", "jupyterlab"))
        api_token, password = plat_env["TUNNELNB_API_TOKEN"], sim_env["TUNNELNB_LOGIN_PASSWORD"]
        assert len(api_token) >= 16 and len(password) >= 16
        assert sim_env["TUNNELNB_API_TOKEN"] == api_token
        assert "TUNNELNB_LOGIN_PASSWORD" not in plat_env
        assert lab_env["TUNNELNB_API_TOKEN"] == api_token and lab_env["TUNNELNB_LOGIN_PASSWORD"] == password
        assert lab_env["TUNNELNB_LOGIN_USER"] == "ops"
        platform_url = lab_env["TUNNELNB_URL"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", platform_url), platform_url
        assert f"--platform {platform_url} " in cmdline(roles["sim"])
        for pid in roles.values():
            assert api_token not in cmdline(pid) and password not in cmdline(pid)

        # JupyterLab: loopback, token required, serving the quickstart notebook.
        assert demo.notebook_path == NOTEBOOK
        status, body = demo.api("/api/status")
        assert status == 200, body
        assert demo.api("/api/status", token=False)[0] == 403
        status, body = demo.api(f"/api/contents/{NOTEBOOK}?content=0")
        assert status == 200, body
        assert json.loads(body)["type"] == "notebook"
        status, body = demo.api(f"/lab/tree/{NOTEBOOK}")
        assert status == 200 and b"JupyterLab" in body, (status, body[:500])
        status, body = demo.api("/api/kernelspecs")
        assert status == 200 and "python3" in json.loads(body)["kernelspecs"], body

        # What the notebook gets in its environment reaches the fleet: the same seeded fleet as the quickstart.
        run = subprocess.run(
            [TUNNELNB, "run", "--platform", platform_url, "--format", "json", "device-0[1-4]", "--", "hostname"],
            env={k: v for k, v in lab_env.items() if k.startswith("TUNNELNB_") or k in ("PATH", "HOME")},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        rows = {r["device_id"]: r for r in json.loads(run.stdout)}
        assert {d: r["status"] for d, r in rows.items()} == {
            "device-01": "ok",
            "device-02": "auth_failed",
            "device-03": "ok",
            "device-04": "ok",
        }, run
        assert rows["device-03"]["stdout"] == "device-03\n"

        family = family_of(demo.popen.pid)
        assert set(roles.values()) <= set(family)
        t1 = time.monotonic()
        if stop == "ctrl-c":
            os.killpg(demo.popen.pid, signal.SIGINT)  # what the terminal does: the demo's group, not its children's
        else:
            demo.popen.send_signal(signal.SIGTERM)
        assert demo.wait_exit(STOPPED) == 0, demo.describe()
        stop_s = time.monotonic() - t1

    left = wait_gone(family)
    assert not left, f"still running after the demo stopped: {left}\n{demo.describe()}"
    output = demo.stdout + demo.stderr
    assert api_token not in output and password not in output, "a secret was printed"
    assert "Traceback" not in output, demo.describe()
    assert "left behind" not in output, demo.describe()  # every child stopped its own children
    assert "stopped JupyterLab, simulated fleet, platform" in demo.stdout, demo.describe()
    print(f"ready in {ready_s:.1f} s, stopped in {stop_s:.1f} s")


def test_demo_with_a_taken_port_says_so_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [TUNNELNB, "demo", "--no-browser", "--port", str(port)],
            env=isolated_env(tmp_path),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 1, proc
    assert f"tunnelnb: port {port} is in use" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "platform" not in proc.stdout, proc


def test_a_child_that_ignores_sigterm_is_killed_with_what_it_left_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tunnelnb.cli.demo import start_child, stop_child

    # A shell that ignores SIGTERM, with a child in a session of its own (as kernels and device shells are).
    script = "trap '' TERM; setsid sleep 300 & echo started; wait"
    child = start_child("stubborn", ["/bin/sh", "-c", script], dict(os.environ), stdout_dir=tmp_path, stop_timeout=1)
    deadline = time.monotonic() + 10
    while "started" not in child.lines() or not children_of(child.popen.pid):
        assert time.monotonic() < deadline, "the shell did not start its child"
        time.sleep(0.05)
    family = family_of(child.popen.pid)
    t0 = time.monotonic()
    stop_child(child)
    assert time.monotonic() - t0 < 10
    assert child.popen.returncode == -signal.SIGKILL
    assert not wait_gone(family), family
    err = capsys.readouterr().err
    assert "stubborn did not stop in 1 s; killing it" in err and "killed 1 process(es) stubborn left behind" in err


def test_demo_jupyterlab_says_nothing_it_need_not(tmp_path: Path) -> None:
    """Issue 15: opening the notebook and starting its kernel prints no "not trusted" and no TCP-encryption warning."""
    with running_demo(tmp_path) as demo:
        status, body = demo.api(f"/api/contents/{demo.notebook_path}?content=1")  # the trust check
        assert status == 200, body
        request = urllib.request.Request(
            f"{demo.base_url}/api/kernels",
            data=b'{"name": "python3"}',
            headers={"Authorization": f"token {demo.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with OPENER.open(request, timeout=60) as response:
            assert response.status == 201
        # The kernel warns as it binds its sockets, before it answers anything; no client connects
        # here, so its state stays "starting": give it time instead.
        time.sleep(5.0)
        os.killpg(demo.popen.pid, signal.SIGINT)
        assert demo.wait_exit(STOPPED) == 0, demo.describe()
    output = demo.stdout + demo.stderr
    assert "not trusted" not in output, demo.describe()
    assert "without encryption" not in output, demo.describe()


def test_any_free_lab_port_is_below_the_ephemeral_range() -> None:
    """The SSH servers of the simulated fleet bind port 0 after the check: they never get JupyterLab's port."""
    from tunnelnb.cli.demo import _ephemeral_low, lab_port

    low = _ephemeral_low()
    ports = {lab_port(0) for _ in range(5)}
    assert all(max(1024, low - 8000) <= p < low for p in ports), (ports, low)

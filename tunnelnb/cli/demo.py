"""``tunnelnb demo``: a local platform, a simulated fleet and JupyterLab on the quickstart notebook.

The newcomer's demo (``make demo``) runs three child processes, each the command an
operator would run by hand:

1. ``tunnelnb platform`` on a free loopback port,
2. ``tunnelnb sim`` with 8 devices drawn from seed 1 (the quickstart's fleet),
3. JupyterLab on 127.0.0.1, opened on ``notebooks/01-quickstart.ipynb``, with
   ``$TUNNELNB_URL``, ``$TUNNELNB_API_TOKEN``, ``$TUNNELNB_LOGIN_USER`` and
   ``$TUNNELNB_LOGIN_PASSWORD`` in its environment, so the notebook's
   ``%tunnel connect`` (and every kernel) uses that platform and that fleet.

The API token and the login password are made up for each run and travel only in
the children's environments: never on a command line (``ps`` shows those), never
printed, never logged.  JupyterLab's own token is printed in the URL: it is how the
browser gets in, as with ``jupyter lab`` itself.

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches only
this process, which then stops the children in order — JupyterLab (and with it the
kernels), the fleet, the platform — each with SIGTERM, a bounded wait, and SIGKILL
as a last resort.  Processes the children started (kernels, device shells) are
noted just before, and any of them still alive afterwards is killed: no orphans.

``tunnelnb demo --text`` is the older demo without JupyterLab: a platform, a device
and a few commands, all in this process (:func:`text_demo`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from ..errors import DemoError

NOTEBOOK = "notebooks/01-quickstart.ipynb"  # relative to the project root, and to the demo's .demo/ copy
LOGIN_USER = "ops"  # the simulated fleet's login user
TUNNELNB = [sys.executable, "-m", "tunnelnb"]  # the children: this interpreter, this tunnelnb
READY_TIMEOUT = 90.0  # seconds for each child to become ready (JupyterLab takes a few)
LEFTOVER_GRACE = 3.0  # seconds for a child's own children to finish once it is gone
POLL = 0.1


# ---------------------------------------------------------------------------
# Signals: they only set a flag, so a Ctrl-C can never land between starting a
# child and remembering it; the waiting loops look at the flag.


class StopRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived: stop everything, exit 0."""


class _StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
            # os.write, not print: the main thread may be in the middle of a print to the same stream.
            os.write(2, f"\ntunnelnb demo: {signal.Signals(signum).name} received, stopping…\n".encode())

    def check(self) -> None:
        if self.signal is not None:
            raise StopRequested


@contextlib.contextmanager
def _stop_signals() -> Iterator[_StopFlag]:
    """Route SIGINT, SIGTERM and SIGHUP (terminal closed) to a flag; restore the old handlers after."""
    flag = _StopFlag()
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {sig: signal.signal(sig, flag) for sig in sigs}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------
# Children


@dataclass
class Child:
    """A child process in a session of its own; its stdout goes to a file (no pipe to fill up)."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path | None
    stop_timeout: float  # seconds between SIGTERM and SIGKILL

    def lines(self) -> list[str]:
        """The complete lines it has printed so far."""
        if self.stdout_path is None:
            return []
        return self.stdout_path.read_bytes().decode("utf-8", "replace").split("\n")[:-1]


def start_child(
    name: str, argv: Sequence[str], env: dict[str, str], *, stdout_dir: Path | None, stop_timeout: float
) -> Child:
    """Start ``argv`` with stdin closed and stderr on the terminal.

    A new session keeps the terminal's Ctrl-C away from it: the demo decides the
    order things stop in.  With ``stdout_dir`` its stdout goes to a file there, read
    for its ready line; otherwise it shares the demo's stdout.
    """
    stdout_path = stdout_dir / f"{name}.out" if stdout_dir else None
    with open(stdout_path, "wb") if stdout_path else contextlib.nullcontext() as out:
        popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, env=env, start_new_session=True)
    return Child(name, popen, stdout_path, stop_timeout)


def wait_for(what: str, ready: Callable[[], str | None], children: Sequence[Child], flag: _StopFlag) -> str:
    """Poll ``ready`` until it returns a value; fail when a child exits or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        flag.check()
        if (found := ready()) is not None:
            return found
        for child in children:
            if (rc := child.popen.poll()) is not None:
                raise DemoError(f"{child.name} exited (status {rc}) before {what}; see its messages above")
        if time.monotonic() > deadline:
            raise DemoError(f"no {what} within {READY_TIMEOUT:g} s")
        time.sleep(POLL)


def first_line(child: Child, pattern: str) -> Callable[[], str | None]:
    """A ``ready`` check for :func:`wait_for`: the first line of ``child``'s stdout that matches."""

    def check() -> str | None:
        return next((line.strip() for line in child.lines() if re.search(pattern, line)), None)

    return check


def stop_child(child: Child) -> None:
    """SIGTERM, a bounded wait, SIGKILL to its process group; then the children it left behind.

    SIGTERM is what every child stops cleanly on (JupyterLab asks no question then,
    and shuts its kernels down).  Its descendants are noted first, because kernels
    and device shells run in sessions of their own, out of reach of a group kill.
    """
    family = descendants(child.popen.pid)
    if child.popen.poll() is None:
        child.popen.send_signal(signal.SIGTERM)
        try:
            child.popen.wait(child.stop_timeout)
        except subprocess.TimeoutExpired:
            print(f"tunnelnb demo: {child.name} did not stop in {child.stop_timeout:g} s; killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.popen.pid, signal.SIGKILL)
            child.popen.wait()
    kill_leftovers(child.name, family)


# ---------------------------------------------------------------------------
# Descendants, from /proc (Linux; elsewhere there is nothing to sweep)


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every process below ``pid``, as (pid, start time) so a reused pid is never mistaken for it."""
    parents: dict[int, list[tuple[int, int]]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                parents.setdefault(stat[0], []).append((int(entry.name), stat[2]))
    found: list[tuple[int, int]] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _alive(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == start and stat[1] != "Z"


def kill_leftovers(name: str, family: list[tuple[int, int]]) -> None:
    """Give ``family`` a moment to finish on its own, then SIGKILL whoever is still there."""
    deadline = time.monotonic() + LEFTOVER_GRACE
    while (left := [(p, s) for p, s in family if _alive(p, s)]) and time.monotonic() < deadline:
        time.sleep(POLL)
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        print(f"tunnelnb demo: killed {len(left)} process(es) {name} left behind", file=sys.stderr)


# ---------------------------------------------------------------------------
# Set-up


def project_root() -> Path:
    """The directory JupyterLab serves: the checkout holding the quickstart notebook."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / NOTEBOOK).is_file():
            return root
    raise DemoError(f"cannot find {NOTEBOOK}: run the demo in a tunnelnb checkout (make demo), or tunnelnb demo --text")


def demo_workspace(root: Path) -> Path:
    """``.demo/`` in the checkout: the notebooks JupyterLab serves, copies of ``notebooks/``.

    JupyterLab autosaves what it opens; the tested notebooks in ``notebooks/`` must
    not pick up the demo's outputs, so the demo works on copies.  A copy is made
    when missing or when its original is newer (an update); edits survive otherwise.
    Delete ``.demo/`` to start afresh.
    """
    workspace = root / ".demo"
    source = root / "notebooks"
    for path in source.rglob("*"):
        target = workspace / "notebooks" / path.relative_to(source)
        if not path.is_file() or ".ipynb_checkpoints" in path.parts:
            continue
        if not target.exists() or path.stat().st_mtime > target.stat().st_mtime:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return workspace


def lab_port(port: int) -> int:
    """``port`` if it is free on 127.0.0.1 (any free one for 0): checked before anything starts.

    For 0 the port comes from below the kernel's ephemeral range: the simulated
    fleet's SSH servers bind port 0 after this check, and a port taken from that
    range could be handed to one of them before JupyterLab binds it.
    """
    if port == 0:
        low = _ephemeral_low()
        for candidate in secrets.SystemRandom().sample(range(max(1024, low - 8000), low), 50):
            with contextlib.suppress(DemoError):
                return _free(candidate)
    return _free(port)


def _free(port: int) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as JupyterLab binds: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(f"port {port} is in use: pick another --port, or 0 for any free one") from None
            raise
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768, its default, elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def has_display() -> bool:
    """Whether a browser can open here (X11, Wayland, or a Mac); else the user opens the URL."""
    return sys.platform == "darwin" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def base_env() -> dict[str, str]:
    """This environment without any TUNNELNB_* variable: a stale $TUNNELNB_URL must not leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TUNNELNB_")}


def lab_argv(root: Path, port: int, open_browser: bool) -> list[str]:
    """JupyterLab on loopback, opened on the notebook, with nothing that pops up over it."""
    argv = [
        sys.executable, "-m", "jupyterlab",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",  # that port or none: the printed URL must be right
        f"--ServerApp.root_dir={root}",
        f"--LabApp.default_url=/lab/tree/{NOTEBOOK}",
        f"--ServerApp.open_browser={open_browser}",
        "--ServerApp.log_level=WARN",  # quiet: the URL line the demo prints is what the user needs
        "--LabApp.log_level=WARN",
        "--LabApp.news_url=None",  # no "receive official Jupyter news?" notification
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        # ipykernel warns "Kernel is running over TCP without encryption" unless the kernel manager
        # hands it CurveZMQ keys; "auto" does for kernelspecs that declare support (ipykernel's do).
        # (IPC transport would avoid it too, but its socket paths outgrow the 107-byte limit
        # under a long JUPYTER_RUNTIME_DIR.)
        *(["--KernelManager.transport_encryption=auto"] if _curve_available() else []),
        # Not silenced: "WebSocket ping timeout" means a browser tab stopped answering (the
        # machine slept, the tab was closed uncleanly); hiding it would take every warning
        # of the server with it, and the tab reconnects by itself.
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--ServerApp.allow_root=True")  # containers and CI run as root
    return argv


def _curve_available() -> bool:
    """Can this jupyter_client provision CurveZMQ keys (a recent one, pyzmq built with libsodium)?"""
    try:
        import zmq
        from jupyter_client.manager import KernelManager
    except ImportError:
        return False
    return zmq.has("curve") and KernelManager.class_traits().get("transport_encryption") is not None


def trust_notebooks(workspace: Path) -> None:
    """Sign the demo's copies of the notebooks, so JupyterLab does not log "Notebook … is not trusted".

    They are copies of the project's own notebooks (or the user's edits of them, in
    their own workspace): trusting them only lets their saved outputs (HTML,
    widgets) show.  Signed with the same notary, in the same Jupyter data
    directory, that JupyterLab checks.
    """
    try:
        import nbformat
        from nbformat.sign import NotebookNotary
    except ImportError:  # no Jupyter: nothing will check
        return
    notary = NotebookNotary()
    try:
        for path in sorted(workspace.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in path.parts:
                continue
            try:
                notebook = nbformat.read(path, as_version=4)
            except (OSError, ValueError):
                continue  # JupyterLab will say what is wrong with it
            if not notary.check_signature(notebook):
                notary.sign(notebook)
    finally:
        notary.store.close()


def lab_answers(base_url: str, token: str) -> Callable[[], str | None]:
    """A ``ready`` check: JupyterLab's REST API answers ``/api/status`` with our token."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy

    def check() -> str | None:
        request = urllib.request.Request(f"{base_url}/api/status", headers={"Authorization": f"token {token}"})
        try:
            with opener.open(request, timeout=2) as response:
                return base_url if response.status == 200 else None
        except (OSError, urllib.error.URLError):
            return None

    return check


# ---------------------------------------------------------------------------
# The demo


@dataclass
class Credentials:
    """Made up for each run; they travel only in the children's environments."""

    api_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    login_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    lab_token: str = field(default_factory=lambda: secrets.token_hex(24))  # printed: it is the way in


def start_platform(creds: Credentials, workdir: Path) -> Child:
    argv = [*TUNNELNB, "platform", "--host", "127.0.0.1", "--port", "0", "--mqtt-port", "0", "--log-level", "error"]
    env = {**base_env(), "TUNNELNB_API_TOKEN": creds.api_token}
    return start_child("platform", argv, env, stdout_dir=workdir, stop_timeout=5.0)


def start_sim(url: str, devices: int, seed: int, creds: Credentials, workdir: Path) -> Child:
    argv = [*TUNNELNB, "sim", "--platform", url, "--devices", str(devices), "--seed", str(seed)]
    argv += ["--log-level", "error"]  # not the warnings device-02's refused logins cause on purpose
    env = {**base_env(), "TUNNELNB_API_TOKEN": creds.api_token, "TUNNELNB_LOGIN_PASSWORD": creds.login_password}
    return start_child("simulated fleet", argv, env, stdout_dir=workdir, stop_timeout=10.0)


def start_lab(url: str, port: int, open_browser: bool, creds: Credentials) -> Child:
    """JupyterLab, with what ``%tunnel connect`` and ``tunnelnb.connect()`` read in its (and its kernels') env."""
    env = {
        **base_env(),
        "TUNNELNB_URL": url,
        "TUNNELNB_API_TOKEN": creds.api_token,
        "TUNNELNB_LOGIN_USER": LOGIN_USER,
        "TUNNELNB_LOGIN_PASSWORD": creds.login_password,
        "JUPYTER_TOKEN": creds.lab_token,  # in the environment: a command line is visible to every user
    }
    workspace = demo_workspace(project_root())
    trust_notebooks(workspace)
    argv = lab_argv(workspace, port, open_browser)
    return start_child("JupyterLab", argv, env, stdout_dir=None, stop_timeout=15.0)  # room to stop the kernels


def lab_demo(*, port: int = 8888, devices: int = 8, seed: int = 1, open_browser: bool | None = None) -> int:
    """Platform, fleet and JupyterLab until Ctrl-C (or JupyterLab's File → Shut Down); 0 when stopped so.

    ``open_browser=None`` opens one only where there is a display.
    """
    if importlib.util.find_spec("jupyterlab") is None:
        raise DemoError("JupyterLab is not installed: pip install 'tunnelnb[notebooks]', or run tunnelnb demo --text")
    project_root()  # fail before starting anything
    port = lab_port(port)
    open_browser = has_display() if open_browser is None else open_browser
    creds = Credentials()
    children: list[Child] = []
    with _stop_signals() as flag, tempfile.TemporaryDirectory(prefix="tunnelnb-demo-") as tmp:
        try:
            print(f"tunnelnb demo: starting a local platform, {devices} simulated devices and JupyterLab…", flush=True)
            children.append(platform := start_platform(creds, Path(tmp)))
            url = wait_for("the platform's URL", first_line(platform, r"^http://\S+$"), children, flag)
            children.append(sim := start_sim(url, devices, seed, creds, Path(tmp)))
            wait_for("the simulated devices", first_line(sim, rf"\b{devices} simulated devices\b"), children, flag)
            children.append(start_lab(url, port, open_browser, creds))
            lab_url = f"http://127.0.0.1:{port}"
            wait_for("JupyterLab", lab_answers(lab_url, creds.lab_token), children, flag)
            print_ready(url, sim, f"{lab_url}/lab/tree/{NOTEBOOK}?token={creds.lab_token}", open_browser)
            return watch(children, flag)
        except StopRequested:
            return 0
        finally:
            # A second Ctrl-C only sets the flag again: it cannot cut the clean-up short.
            for child in reversed(children):
                stop_child(child)
            if children:
                print("tunnelnb demo: stopped " + ", ".join(c.name for c in reversed(children)), flush=True)


def print_ready(platform_url: str, sim: Child, notebook_url: str, open_browser: bool) -> None:
    """What runs where, and the one line that matters: the notebook's URL."""
    print(f"platform: {platform_url}")
    for line in sim.lines():
        if "simulated devices" in line or "misbehaving" in line:
            print(line.strip())
    browser = " (your browser should open it)" if open_browser else ""
    print(f"\nJupyterLab is ready{browser}. Open the quickstart notebook at:\n\n    {notebook_url}\n")
    print("(The demo works on copies of the notebooks in .demo/notebooks; delete .demo to start afresh.)")
    print("Press Ctrl-C to stop JupyterLab, the simulated devices and the platform.", flush=True)


def watch(children: Sequence[Child], flag: _StopFlag) -> int:
    """Wait for a stop signal, or for a child to exit (JupyterLab's File → Shut Down exits 0)."""
    while True:
        flag.check()
        for child in children:
            if (rc := child.popen.poll()) is not None:
                if child.name == "JupyterLab" and rc == 0:
                    return 0
                print(f"tunnelnb demo: {child.name} exited (status {rc}); stopping the rest", file=sys.stderr)
                return 1
        time.sleep(POLL)


# ---------------------------------------------------------------------------
# tunnelnb demo --text: everything in this process, no JupyterLab

COMMANDS = [
    "uname -a",
    'echo "hello from $(hostname) — $(date -u +%Y-%m-%dT%H:%M:%SZ)"',
    "cd /tmp && pwd",
    "pwd  # the shell persists between commands",
    "ls /nonexistent",
    "(exit 3)",
]


async def run_text_demo() -> int:
    """A platform, an agent and an SSH server on loopback, and a few commands through the tunnel."""
    from ..client.api import PlatformAPI
    from ..client.session import DeviceSession
    from ..server.agent import Agent
    from ..server.platform import Platform
    from ..server.sshserver import ShellServer

    user, password = "ops", secrets.token_urlsafe(12)
    secret = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="tunnelnb-demo-") as home:
        async with (
            Platform() as platform,
            ShellServer(users={user: password}, cwd=home) as sshd,
        ):
            print(f"local platform: {platform.base_url} (project {platform.project_id})")
            platform.add_device("device-01", secret, fw_version="2.1", tags={"site": "lab"})
            async with Agent(platform.base_url, "device-01", secret, ssh_port=sshd.port) as agent:
                await agent.wait_online(10)
                print(f"device-01 online; its agent bridges tunnels to the SSH server on 127.0.0.1:{sshd.port}\n")
                async with (
                    PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=platform.api_token) as api,
                    DeviceSession(api, "device-01", delete_tunnel=True) as device,
                ):
                    await device.login(user, password)
                    for command in COMMANDS:
                        r = await device.run(command, timeout=10)
                        print(f"$ {command}")
                        if r.stdout:
                            print(r.stdout, end="" if r.stdout.endswith("\n") else "\n")
                        print(f"  → {r.status}, exit code {r.exit_code}, {r.duration_s * 1000:.0f} ms\n")
    print("demo finished: platform, agent and SSH server stopped cleanly")
    return 0


def text_demo() -> int:
    """``tunnelnb demo --text``: where JupyterLab is not wanted (a server, CI, a quick check)."""
    return asyncio.run(run_text_demo())

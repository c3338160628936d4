"""Background runs: a :meth:`Fleet.run` that goes on while the notebook (or the script) does other things.

ipyparallel's ``%%px --noblock`` returns an AsyncResult and frees the kernel;
:func:`submit` (``fleet.submit``, ``%%tunnel TARGETS --bg``) returns a
:class:`Job`, a task on the fleet's event loop running ``fleet.run``.  Its rows
are rows like any run's: they go to :attr:`Fleet.history`, a device that fails
is a row, and only a bug in tunnelnb surfaces, on :meth:`Job.result`.

Event loops (:mod:`tunnelnb.fleet.runner`): in a Jupyter kernel the fleet's
loop is the kernel's, so a job makes progress whenever the kernel is idle
between cells and while another cell runs the loop (a magic, ``await``);
:meth:`Job.wait` from a cell runs the loop itself (re-entered, as the magics
do).  In terminal IPython and scripts the loop runs in a thread of its own and
:meth:`Job.wait` waits for it thread-safely.

A background job leaves :attr:`Fleet.last_results` to the foreground: that is
what an interrupted cell or ``SyncFleet.run`` reports as its own rows, so a job
ending meanwhile must not replace it.

A device busy with another run (a job, a cell) finishes that command first: a
device's session runs one command at a time, so the second run waits for the
device there, and its other devices go ahead at once.  Its timeout counts
from when its command starts on the device; its row's ``duration_s`` includes
the wait.  :func:`busy_devices` says which devices a job holds, so front ends
can tell the user before they wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import inspect
import itertools
import logging
import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..client.result import CommandResult
from ..errors import JobStillRunning, TunnelnbError
from .devicerun import RECORDED
from .exitcodes import check_ok_codes
from .results import Results
from .runner import KernelLoopRunner
from .text import one_line

if TYPE_CHECKING:
    from .fleet import Fleet

__all__ = ["Job", "JobProgress", "JobStillRunning", "busy_devices", "jobs_of", "jobs_table", "stop_jobs", "submit"]

log = logging.getLogger(__name__)

#: How often a thread waiting for a job checks that the fleet's loop still runs.
_POLL_S = 0.5

RUNNING, FINISHED, CANCELLED, FAILED = "running", "finished", "cancelled", "failed"


@dataclass(frozen=True)
class JobProgress:
    """A job's rows so far: ``done`` of ``total``, and how many of each status."""

    done: int
    total: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def failed(self) -> int:
        return self.done - self.ok

    def __str__(self) -> str:
        """``7/12 done (6 ok, 1 error)``."""
        counts = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        return f"{self.done}/{self.total} done" + (f" ({counts})" if counts else "")


class _FleetJobs:
    """A fleet's jobs and their numbering."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.jobs: list[Job] = []


_JOBS: weakref.WeakKeyDictionary[Fleet, _FleetJobs] = weakref.WeakKeyDictionary()


def jobs_of(fleet: Fleet) -> list[Job]:
    """Every job submitted on ``fleet``, oldest first."""
    entry = _JOBS.get(fleet)
    return list(entry.jobs) if entry is not None else []


def busy_devices(fleet: Fleet, device_ids: Iterable[str] | None = None) -> dict[str, Job]:
    """The devices (of ``device_ids``, default all) a running job has not finished yet, and the job holding each.

    When several jobs wait for a device, the oldest holds it: they run there in turn.
    """
    wanted = None if device_ids is None else set(device_ids)
    busy: dict[str, Job] = {}
    for job in jobs_of(fleet):  # oldest first
        if not job.done():
            for device_id in job.pending_devices:
                if wanted is None or device_id in wanted:
                    busy.setdefault(device_id, job)
    return busy


async def stop_jobs(fleet: Fleet) -> None:
    """Cancel the fleet's running jobs and wait for their rows: :meth:`Fleet.close` does it before closing sessions."""
    running = [job for job in jobs_of(fleet) if not job.done()]
    for job in running:
        job.cancel()  # one not started yet cancels itself as it starts, once its devices have rows
    await asyncio.gather(*(asyncio.wrap_future(job._future) for job in running), return_exceptions=True)


def jobs_table(fleet: Fleet) -> pd.DataFrame:
    """One row per job: its id, state, command, devices, rows done by status, start and end (UTC)."""
    rows = []
    for job in jobs_of(fleet):
        progress = job.progress
        rows.append(
            {
                "job": job.id,
                "state": job.state,
                "command": one_line(job.command, 60),
                "devices": progress.total,
                "done": progress.done,
                "ok": progress.ok,
                "failed": progress.failed,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
            }
        )
    columns = ["job", "state", "command", "devices", "done", "ok", "failed", "started_at", "finished_at"]
    df = pd.DataFrame(rows, columns=columns)
    for name in ("started_at", "finished_at"):
        df[name] = pd.to_datetime(df[name], utc=True)
    return df


def submit(fleet: Fleet, command: str, targets: str | Iterable[str] = "*", **run_kwargs: Any) -> Job:
    """Start ``fleet.run(command, targets, **run_kwargs)`` in the background and return its :class:`Job` at once.

    ``run_kwargs`` are :meth:`Fleet.run`'s (``timeout``, ``ok_codes``, ``verify``,
    ``on_result``, ``on_output`` …); a name it does not take, or unknown targets,
    are an error now rather than on :meth:`Job.result`.  Call it from code on the
    fleet's loop (a notebook cell, a coroutine) or from any thread when the loop
    runs in a thread of its own (``connect_sync``, terminal IPython).
    """
    ids = fleet.select(targets)
    if not ids:
        raise TunnelnbError(f"no device matches {targets!r}: fleet.devices() lists them")
    try:
        inspect.signature(fleet.run).bind(command, ids, **run_kwargs)
    except TypeError as exc:
        raise TypeError(f"fleet.submit: {exc} (it takes what fleet.run takes)") from None
    if "ok_codes" in run_kwargs:
        check_ok_codes(run_kwargs["ok_codes"])
    loop = _fleet_loop(fleet)
    entry = _JOBS.setdefault(fleet, _FleetJobs())
    job = Job(fleet, next(entry.ids), command, ids, run_kwargs, loop)
    entry.jobs.append(job)
    _call_on_loop(loop, job._start)
    return job


class Job:
    """A run going on in the background on the fleet's event loop; made by :func:`submit`.

    ``job.done()``, ``job.wait(timeout)``, ``job.result(timeout)`` (or ``await
    job``) for the :class:`Results`; ``job.cancel()`` interrupts its devices as
    Ctrl-C does (the rows not done are ``cancelled``); ``job.progress`` and
    ``job.results_so_far()`` while it runs.  Every method works from any thread.
    """

    def __init__(
        self,
        fleet: Fleet,
        job_id: int,
        command: str,
        targets: list[str],
        run_kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.id = job_id
        self.command = command
        self.targets = list(targets)
        self.started_at = datetime.now(UTC)
        self.finished_at: datetime | None = None
        self._fleet = weakref.ref(fleet)  # a finished job does not keep a closed fleet alive
        self._loop = loop
        self._user_on_result = run_kwargs.pop("on_result", None)
        self._user_on_output = run_kwargs.pop("on_output", None)
        self._kwargs = run_kwargs
        self._rows: dict[str, CommandResult] = {}
        self._order = {device_id: i for i, device_id in enumerate(self.targets)}
        self._final: Results | None = None
        self._task: asyncio.Task[Results] | None = None
        self._started = False
        self._cancel_requested = False
        self._cancelling = False
        self._was_cancelled = False  # its rows came from a cancelled fleet.run
        self._watchers: list[Callable[[Job], None]] = []
        # The cross-thread handle: set when the task ends; running, so nobody can cancel it but cancel().
        self._future: concurrent.futures.Future[Results] = concurrent.futures.Future()
        self._future.set_running_or_notify_cancel()

    # -- what it is and how far it got ------------------------------------------

    @property
    def fleet(self) -> Fleet:
        fleet = self._fleet()
        if fleet is None:
            raise TunnelnbError(f"job {self.id}'s fleet is gone (closed and collected)")
        return fleet

    @property
    def state(self) -> str:
        """``running``, ``finished``, ``cancelled`` (by :meth:`cancel`) or ``failed`` (a bug: see :meth:`result`)."""
        if not self._future.done():
            return RUNNING
        if self._future.exception() is not None:
            return FAILED
        return CANCELLED if self._was_cancelled else FINISHED

    def done(self) -> bool:
        """Has the job ended (finished, cancelled or failed)?"""
        return self._future.done()

    @property
    def progress(self) -> JobProgress:
        """Rows done so far out of the targets, with counts by status."""
        results = self._final if self._final is not None else self.results_so_far()
        return JobProgress(len(results), len(self.targets), results.counts())

    def results_so_far(self) -> Results:
        """The rows of the devices done so far, in target order (all of them once the job has ended)."""
        if self._final is not None:
            return self._final
        rows = sorted(list(self._rows.values()), key=lambda row: self._order.get(row.device_id, 0))
        return Results(rows)

    @property
    def pending_devices(self) -> list[str]:
        """The targets without a row yet."""
        if self._final is not None:
            return []
        done = set(self._rows)
        return [d for d in self.targets if d not in done]

    def watch(self, callback: Callable[[Job], None]) -> Callable[[], None]:
        """Call ``callback(job)`` on the fleet's loop after each row and once when the job ends.

        Returns a function that stops the calls; an exception in a callback is logged, not raised.
        """
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    # -- waiting and the result --------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends or ``timeout`` seconds pass; whether it has ended.

        On the thread that owns the fleet's loop (a notebook cell) this runs the
        loop meanwhile, so the job and everything else on it go on; Ctrl-C stops
        the waiting (KeyboardInterrupt), not the job.  That needs a re-entrant
        loop, as ``%tunnel connect`` makes the kernel's; on any other running
        loop it is an error: ``await job`` there.  From another thread it waits
        for the loop's thread.
        """
        if self._future.done():
            return True
        if _on_loop_thread(self._loop):
            if self._task is not None and asyncio.current_task(self._loop) is self._task:
                raise TunnelnbError(f"job {self.id} cannot wait for itself (job.wait() in its own callback)")
            if not _reentrant(self._loop):
                raise TunnelnbError(
                    f"job {self.id} runs on this thread's event loop, which blocking here would stop: "
                    "res = await job (in a coroutine or a notebook cell)"
                )
            KernelLoopRunner(self._loop).run(self._wait_here(timeout))
            return self._future.done()
        left = timeout
        while left is None or left > 0:
            step = _POLL_S if left is None else min(left, _POLL_S)
            done, _ = concurrent.futures.wait([self._future], timeout=step)
            if done:
                return True
            if self._loop.is_closed() or not self._loop.is_running():
                raise TunnelnbError(
                    f"job {self.id} cannot finish: the fleet's event loop has stopped (the connection was closed)"
                )
            if left is not None:
                left -= step
        return self._future.done()

    async def _wait_here(self, timeout: float | None) -> None:
        await asyncio.wait([asyncio.wrap_future(self._future)], timeout=timeout)

    def result(self, timeout: float | None = None) -> Results:
        """The job's :class:`Results`, once it has ended (waiting up to ``timeout`` seconds, forever if None).

        A cancelled job's rows are ``cancelled`` where the devices had not
        finished.  Raises :class:`JobStillRunning` when the time runs out, and
        whatever broke the job if tunnelnb failed (devices' failures are rows).
        """
        if not self.wait(timeout):
            raise JobStillRunning(self._still_running())
        return self._future.result()

    def __await__(self) -> Generator[Any, None, Results]:
        """``await job`` from any event loop: the :class:`Results`; cancelling the await leaves the job running."""
        return asyncio.wrap_future(self._future).__await__()

    def _still_running(self) -> str:
        return f"job {self.id} ({self._what()}) is still running: job.wait() or job.result(timeout=...)"

    def _what(self) -> str:
        n = len(self.targets)
        return f"{one_line(self.command, 40)} on {n} device{'' if n == 1 else 's'}"

    # -- cancelling ---------------------------------------------------------

    def cancel(self) -> bool:
        """Interrupt the job's devices as Ctrl-C does; whether it was still running.

        The devices still running get Ctrl-C and ``cancelled`` rows (with what
        they printed), the rows already done stay, and the sessions stay usable.
        It returns at once: :meth:`result` waits for the rows.
        """
        if self._future.done():
            return False
        self._cancel_requested = True
        _call_on_loop(self._loop, self._cancel_task)
        return True

    def _cancel_task(self) -> None:
        # Once only: a second cancel during fleet.run's clean-up would lose its rows.
        if self._started and not self._cancelling and self._task is not None and not self._task.done():
            self._cancelling = True
            self._task.cancel()

    # -- on the loop ------------------------------------------------------

    def _start(self) -> None:
        try:
            self._task = self._loop.create_task(self._main(), name=f"tunnelnb-job-{self.id}")
        except BaseException as exc:  # the loop is closing
            self._future.set_exception(TunnelnbError(f"job {self.id} could not start: {exc}"))
            raise
        self._task.add_done_callback(self._ended)

    async def _main(self) -> Results:
        self._started = True
        fleet = self.fleet
        recorded: list[Results] = []
        RECORDED.set(recorded)  # this task's context only: the foreground keeps last_results
        if self._cancel_requested:  # cancelled before it started: once fleet.run has its devices, so they get rows
            asyncio.get_running_loop().call_soon(self._cancel_task)
        try:
            return await fleet.run(
                self.command, self.targets, on_result=self._on_result, on_output=self._user_on_output, **self._kwargs
            )
        except asyncio.CancelledError:
            if not self._cancel_requested or not recorded:
                raise  # cancelled from outside (the loop shutting down)
            self._was_cancelled = True
            return recorded[-1]

    def _on_result(self, row: CommandResult) -> None:
        self._rows[row.device_id] = row
        if self._user_on_result is not None:
            self._user_on_result(row)
        self._notify()

    def _ended(self, task: asyncio.Task[Results]) -> None:
        self.finished_at = datetime.now(UTC)
        if task.cancelled():
            self._future.set_exception(
                TunnelnbError(f"job {self.id} ({self._what()}) was stopped: its event loop shut down")
            )
        elif (exc := task.exception()) is not None:
            log.error("job %s (%s) failed", self.id, self._what(), exc_info=exc)
            self._future.set_exception(exc)
        else:
            self._final = task.result()
            self._future.set_result(self._final)
        self._notify()

    def _notify(self) -> None:
        for watcher in list(self._watchers):
            try:
                watcher(self)
            except Exception:
                log.exception("job watcher failed")

    # -- display ------------------------------------------------------------

    def summary(self) -> str:
        """``job 3 running: 7/12 done (6 ok, 1 error) · uptime``: one line for people."""
        text = f"job {self.id} {self.state}: {self.progress} · {one_line(self.command, 60)}"
        if self.state == FAILED:
            exc = self._future.exception()
            text += f" · {type(exc).__name__}: {exc} (job.result() raises it)"
        return text

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state}: {self.progress} {one_line(self.command, 40)!r}>"

    def _repr_html_(self) -> str:
        hint = "job.result() has its rows" if self.done() else "job.wait() or job.result() waits for it"
        return (
            f'<div class="tunnelnb-job"><b>job {self.id}</b> {html.escape(self.state)}: '
            f"{html.escape(str(self.progress))} · <code>{html.escape(one_line(self.command, 60))}</code> "
            f'<span style="color:#6c757d">({hint})</span></div>'
        )


def _fleet_loop(fleet: Fleet) -> asyncio.AbstractEventLoop:
    """The running loop a job of ``fleet`` goes on; a clear error when there is none."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    loop = fleet.loop or running
    if loop is None:
        raise TunnelnbError("the fleet has no event loop yet: read its inventory first (await fleet.refresh())")
    if loop.is_closed() or not loop.is_running():
        raise TunnelnbError(
            "the fleet's event loop is not running, so a job could not go on: submit from code on it "
            "(a coroutine, a notebook cell) or connect with tunnelnb.connect_sync()"
        )
    return loop


def _reentrant(loop: asyncio.AbstractEventLoop) -> bool:
    """Has nest-asyncio2 made ``loop`` re-entrant (the magics' :class:`KernelLoopRunner` does, at connect)?

    Patching a loop in the middle of one of its iterations, as a first ``wait`` here
    would, can break that iteration, so only a loop patched before is re-entered.
    """
    return bool(getattr(loop, "_nest_patched", False))


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _call_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """``fn()`` now when this is the loop's thread, else soon on it."""
    if _on_loop_thread(loop):
        fn()
    else:
        loop.call_soon_threadsafe(fn)

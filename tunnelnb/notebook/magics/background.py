"""``%%tunnel TARGETS --bg``: a run handed to the background, and how a job shows in a notebook.

:func:`start` submits the run as a :class:`~tunnelnb.fleet.jobs.Job` and returns
it at once, as ipyparallel's ``%%px --noblock`` returns its AsyncResult (and
stores it in ``-o VAR`` too).  In a notebook a job displays as one live line, a
progress bar with its counts, updated from the kernel's loop while the kernel is
idle or runs other cells, and replaced by a one-line summary when the job ends
(plain HTML: a saved notebook keeps no widget state).  In terminal IPython a
job is one line now and nothing later, so no output lands where the user types.
"""

from __future__ import annotations

import argparse
import html
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ...fleet.jobs import Job, busy_devices, submit
from ...fleet.text import one_line
from .parsing import plural

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["JobLine", "show_jobs_live", "start"]

#: A burst of rows (a job on 1,000 devices) becomes one re-render of its line after this long.
COALESCE_S = 0.2


def start(magics: TunnelMagics, args: argparse.Namespace, command: str, ids: list[str], options: dict[str, Any]) -> Job:
    """Run ``command`` on ``ids`` in the background with ``fleet.run``'s ``options``; the job, at once."""
    fleet = magics.need_fleet()
    if args.parse:
        raise UsageError(f"--parse applies once the rows are there: job.result().parse({args.parse!r}) (not with --bg)")
    busy = busy_devices(fleet, ids)
    job = submit(fleet, command, ids, **{name: value for name, value in options.items() if value is not None})
    name = args.out
    if name:
        magics.user_ns[name] = job
    limit = magics.display_limit
    job.watch(lambda j: _limit_rows(j, limit))
    if magics.in_kernel():
        show_jobs_live(magics)
        if busy:
            print(_waits_for(busy))
    else:
        wait = f"{name}.result()" if name else f"%tunnel jobs {job.id} --wait"
        waits = f"; {_waits_for(busy)}" if busy else ""
        print(f"job {job.id} runs in the background on {plural(len(ids), 'device')}: {wait} waits for its rows{waits}")
    return job


def _limit_rows(job: Job, limit: int) -> None:
    """A finished job's table shows as many rows as a cell's (``TunnelMagics.display_limit``)."""
    if job.done() and job.state != "failed":
        job.results_so_far().html_max_rows = limit


def _waits_for(busy: dict[str, Job]) -> str:
    """``device-03 is busy with job 2 ('apt-get upgrade'): the command runs there after it``."""
    holders: dict[int, tuple[Job, list[str]]] = {}
    for device_id, job in busy.items():
        holders.setdefault(job.id, (job, []))[1].append(device_id)
    parts = []
    for job, devices in holders.values():
        shown = ", ".join(devices[:3]) + (f" and {len(devices) - 3} more" if len(devices) > 3 else "")
        verb = "is" if len(devices) == 1 else "are"
        parts.append(f"{shown} {verb} busy with job {job.id} ({one_line(job.command, 40)!r})")
    return "; ".join(parts) + ": the command runs there once that is done (job.cancel() stops a job)"


# -- display in a notebook ---------------------------------------------------


def show_jobs_live(magics: TunnelMagics) -> None:
    """Have jobs display as their live line in this notebook (the returned job of ``--bg``, ``job`` in a cell)."""
    formatter = magics.shell.display_formatter.ipython_display_formatter  # type: ignore[union-attr]
    formatter.for_type(Job, lambda job: JobLine.show(job, magics.event_loop()))


class JobLine:
    """A job's line in a notebook: a progress bar and its counts while it runs, its summary once it ends.

    Follows :meth:`Job.watch` on the fleet's loop (bursts coalesced into one
    re-render per :data:`COALESCE_S`); when the job ends, the widgets are closed
    and the output becomes the summary as plain HTML.
    """

    def __init__(self, job: Job, loop: Any) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        from ..widgets.loop import Coalescer

        self.job = job
        progress = job.progress
        self.bar = widgets.IntProgress(value=progress.done, min=0, max=max(progress.total, 1), bar_style="info")
        self.label = widgets.HTML(self._running_html())
        self.box = widgets.HBox([self.bar, self.label])
        self._render = Coalescer(loop, COALESCE_S, self._update)
        self.handle = display(self.box, display_id=True)
        self._unwatch = job.watch(self._on_change)

    @classmethod
    def show(cls, job: Job, loop: Any) -> JobLine | None:
        """Display ``job``: live while it runs (the line), its summary when it has ended (None)."""
        if job.done():
            from IPython.display import display

            display(_final_bundle(job), raw=True)
            return None
        return cls(job, loop)

    def _on_change(self, job: Job) -> None:
        if job.done():
            self._finish()
        else:
            self._render.request()

    def _update(self) -> None:
        progress = self.job.progress
        self.bar.value = progress.done
        if progress.failed:
            self.bar.bar_style = "warning"
        self.label.value = self._running_html()

    def _running_html(self) -> str:
        job = self.job
        return (
            f"job {job.id} · {html.escape(str(job.progress))} · <code>{html.escape(one_line(job.command, 60))}</code>"
        )

    def _finish(self) -> None:
        self._render.close()
        self._unwatch()
        self.handle.update(_final_bundle(self.job), raw=True)
        for widget in (self.box, self.bar, self.label):
            widget.close()


def _final_bundle(job: Job) -> dict[str, str]:
    """A finished job's summary line, as HTML and text."""
    took = ""
    if job.finished_at is not None:
        took = f" in {(job.finished_at - job.started_at).total_seconds():.1f} s"
    hint = "job.result() raises what broke it" if job.state == "failed" else "job.result() has the rows"
    text = f"{job.summary()}{took} ({hint})"
    colour = {"finished": "#155724", "cancelled": "#383d41"}.get(job.state, "#721c24")
    if job.state == "finished" and job.progress.failed:
        colour = "#856404"
    return {
        "text/plain": text,
        "text/html": f'<div class="tunnelnb-job" style="color:{colour}">{html.escape(text)}</div>',
    }

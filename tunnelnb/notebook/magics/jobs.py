"""``%tunnel jobs``: the background jobs (``--bg``) of this connection, one of them, waiting for or cancelling them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...fleet.jobs import Job, jobs_of, jobs_table
from .background import show_jobs_live
from .parsing import parse, plural, subcommand

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["jobs"]


@subcommand("jobs")
@argument("job", nargs="?", type=int, help="a job's number: that job")
@argument("--wait", action="store_true", help="wait for the job and show its rows")
@argument("--cancel", action="store_true", help="cancel the job (every running job when no number is given)")
def jobs(magics: TunnelMagics, rest: str) -> Any:
    """The background jobs: a table, or one job (``--wait`` for its rows, ``--cancel`` to stop it)."""
    args = parse(rest, jobs.parser)
    fleet = magics.need_fleet()
    if magics.in_kernel():
        show_jobs_live(magics)
    if args.job is None:
        if args.wait:
            raise UsageError("which job? %tunnel jobs N --wait")
        if args.cancel:
            running = [job for job in jobs_of(fleet) if job.cancel()]
            print(f"cancelled {plural(len(running), 'job')}" + (f": {_ids(running)}" if running else ""))
            return None
        if not jobs_of(fleet):
            print("no background jobs: %%tunnel TARGETS --bg -o job starts one")
            return None
        return jobs_table(fleet)
    job = next((j for j in jobs_of(fleet) if j.id == args.job), None)
    if job is None:
        known = _ids(jobs_of(fleet)) or "none yet"
        raise UsageError(f"no job {args.job} (jobs: {known}): %tunnel jobs lists them")
    if args.cancel:
        job.cancel()
    if args.wait:
        results = job.result()
        results.html_max_rows = magics.display_limit
        return results
    return job


def _ids(jobs: list[Job]) -> str:
    return ", ".join(str(job.id) for job in jobs)

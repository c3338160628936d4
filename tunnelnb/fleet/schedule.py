"""Which device starts when in a fan-out: the concurrency's slots, a rolling run's waves, tunnels opened ahead.

:func:`start_devices` is the loop of every :class:`~tunnelnb.fleet.fleet.Fleet` run:
at most ``width`` devices at once (a semaphore of slots), in the waves the
:class:`~tunnelnb.fleet.rollout.Rollout` plan allows (one wave without rolling
options), each device's row from :func:`~tunnelnb.fleet.devicerun.run_device`.
With ``ahead``, a device waiting for a slot has the pool open its tunnel
meanwhile (:meth:`~tunnelnb.fleet.pool.SessionPool.open_ahead`), up to ``width``
of them, so its login starts at ``connect`` when a slot frees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..client.result import CommandResult
from .devicerun import DeviceJob, FleetParts, run_device
from .rollout import Rollout

__all__ = ["start_devices"]


async def start_devices(
    parts: FleetParts,
    job: DeviceJob,
    plan: Rollout,
    width: int,
    rows: dict[str, CommandResult],
    *,
    ahead: bool,
    on_result: Callable[[CommandResult], None] | None,
) -> None:
    """Run ``job`` on every device ``plan`` lets start, ``width`` at a time, putting each row in ``rows``.

    ``rows`` fills as devices finish, so a caller that is cancelled (or hit by a
    strict replay leaving its cassette) still has the rows so far: every device
    task is cancelled and awaited before the exception goes on.  Tunnels opened
    ahead that no device took over are cancelled or closed on every way out.
    """
    limit = asyncio.Semaphore(width)
    queue = asyncio.Semaphore(2 * width)  # with `ahead`: `width` at work, `width` waiting with tunnels opening
    pool = parts.pool

    async def one(device_id: str) -> None:
        async with limit:
            if not plan.may_start(device_id):  # the budget ran out while it waited
                return
            plan.start(device_id)
            rows[device_id] = row = await run_device(parts, job, device_id)
            plan.finish(device_id, row.status)
        if on_result is not None:
            on_result(row)

    async def one_ahead(device_id: str) -> None:
        async with queue:
            pool.open_ahead(device_id, job.timeout, most=min(width, pool.max_sessions))
            await one(device_id)

    start = one_ahead if ahead else one
    tasks: list[asyncio.Task[None]] = []
    try:
        for _ in range(len(plan.batches) + 1):  # each wave ends a batch, or the run
            wave = plan.ready()
            if not wave:
                break
            tasks = [asyncio.create_task(start(d), name=f"tunnelnb-run-{d}") for d in wave]
            await asyncio.gather(*tasks)
    except BaseException:  # stop every device, then let the caller record what there is
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        if ahead:
            await pool.drop_ahead(plan.targets)  # opened for a device that never got its turn

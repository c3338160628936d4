"""Many devices, one table: fan a command out over device sessions.

:class:`Fleet` keeps one :class:`~tunnelnb.client.session.DeviceSession` per device
(tunnel opened and login done once, reused across runs), at most
``max_sessions`` of them at a time (IoTDA lets 100 devices be logged in at once
per instance; the least recently used idle session makes room for the next),
and runs commands on up to ``concurrency`` devices at once.  Every device gets
a row whatever happens: failures are rows, never exceptions.  :meth:`Fleet.each`
is the same fan-out for any per-device work (:mod:`.devicerun` makes each row),
and every fan-out can roll out in batches under an error budget (:mod:`.rollout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import getpass
import itertools
import logging
import os
import warnings
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from ..client.backend import PASSWORD_PLACEHOLDER, PlatformBackend
from ..client.result import CommandResult, ResultStatus
from ..client.session import DeviceSession
from ..errors import FleetSizeWarning, TunnelnbError
from . import files, jobs
from .devicerun import (
    RECORDED,
    RUNNING_COMMAND,
    DeviceJob,
    DeviceWork,
    FleetParts,
    OutputCallback,
    command_work,
)
from .exitcodes import DEFAULT_OK_CODES, check_ok_codes
from .logins import Logins
from .partial import Partial, partial_row
from .pool import SessionPool
from .results import Results
from .rollout import Rollout
from .schedule import start_devices
from .tables import inventory_table, status_table
from .targets import select_targets
from .transfers import TransferResults

__all__ = ["DEFAULT_MAX_SESSIONS", "RUNNING_COMMAND", "DeviceWork", "Fleet", "OutputCallback", "ResultCallback"]

log = logging.getLogger(__name__)

#: IoTDA allows at most 100 devices logged in at once per instance.
DEFAULT_MAX_SESSIONS = 100

#: ``on_result(row)``: each device's row as soon as it is done.
ResultCallback = Callable[[CommandResult], None]


class Fleet:
    """The devices of one platform project, ready for commands.

    ``login`` is the default ``(user, password)`` for devices that have not been
    logged in explicitly (the embedded simulated fleet sets it).  Credentials are
    kept in memory only, never in results or history.  ``embedded`` holds the
    in-process servers the fleet was started with (``connect(embedded=True)``:
    the platform and the simulated fleet), ``cleanup`` what :meth:`close` calls
    at the end.
    """

    def __init__(
        self,
        api: PlatformBackend,
        *,
        login: tuple[str, str] | None = None,
        concurrency: int = 100,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        join_timeout: float = 15.0,
        cleanup: Iterable[Callable[[], Awaitable[Any]]] = (),
        embedded: tuple[Any, Any] | None = None,
    ) -> None:
        if concurrency < 1 or max_sessions < 1:
            raise ValueError("concurrency and max_sessions must be at least 1")
        self._api = api
        self.embedded = embedded
        #: The event loop the fleet's sessions live on (known once it has read its inventory), for widgets.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.concurrency = concurrency
        self.join_timeout = join_timeout
        self._logins = Logins(login)
        self._pool = SessionPool(max_sessions, self._new_session)
        self._inventory: list[dict[str, Any]] = []
        self._entries: dict[str, list[dict[str, Any]]] = {}  # device id → its inventory records (for _set_online)
        self._runs: list[tuple[int, Results]] = []
        self._run_ids = itertools.count(1)
        self._cleanup = list(cleanup)
        self.last_results: Results | None = None
        self._running: dict[str, str] = {}
        self._last: dict[str, CommandResult] = {}
        self._watchers: list[Callable[[str | None], None]] = []

    def __repr__(self) -> str:
        return f"<Fleet {self.api.base_url} project={self.api.project_id} devices={len(self._inventory)}>"

    async def __aenter__(self) -> Fleet:
        if not self._inventory:
            await self.refresh()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- inventory --------------------------------------------------------

    async def refresh(self) -> pd.DataFrame:
        """Read the inventory from the platform again."""
        self.loop = asyncio.get_running_loop()
        self._inventory = await self.api.list_devices()
        self._entries = {}
        for record in self._inventory:
            self._entries.setdefault(str(record.get("device_id")), []).append(record)
        self._changed(None)
        return self.devices()

    def devices(self) -> pd.DataFrame:
        """The inventory as a table: one row per device, tags as a dict."""
        return inventory_table(self._inventory)

    def select(self, targets: str | Iterable[str] = "*") -> list[str]:
        """Device ids for ``targets`` (ids, globs, ranges, ``@tag``, lists); unknown ones are an error."""
        return select_targets(targets, self._inventory)

    # -- live state (dashboards) ---------------------------------------------

    def status(self) -> pd.DataFrame:
        """One row per device: online, tunnel, logged in, running command, last result."""
        return status_table(self._inventory, self._pool.sessions, self._running, self._last)

    def watch(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Call ``callback(device_id)`` whenever a device's state changes (``None``: all may have).

        Returns a function that stops the calls.  Callbacks run on the fleet's event
        loop and must not block; an exception in one is logged, not raised.
        """
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _changed(self, device_id: str | None) -> None:
        for watcher in list(self._watchers):
            try:
                watcher(device_id)
            except Exception:
                log.exception("fleet watcher failed")

    # -- credentials --------------------------------------------------------

    def set_login(self, targets: str | Iterable[str], user: str, password: str) -> list[str]:
        """Remember the login for some devices without logging in yet."""
        ids = self.select(targets)
        self._logins.set(ids, user, password)
        return ids

    def has_login(self, targets: str | Iterable[str] = "*") -> bool:
        """Does the fleet know a login for every one of ``targets``?"""
        return all(self._logins.get(d) is not None for d in self.select(targets))

    async def login(
        self,
        targets: str | Iterable[str] = "*",
        *,
        user: str | None = None,
        password: str | None = None,
        password_env: str | None = None,
        timeout: float = 30.0,
        concurrency: int | None = None,
    ) -> Results:
        """Log in to devices; each gets a row (``ok``, ``auth_failed``, ``offline``…).

        The password comes from ``password``, else the environment variable
        ``password_env``, else a prompt (getpass).  At most ``concurrency`` logins
        run at once (default: the fleet's ``concurrency``, capped at ``max_sessions``,
        since more would only evict each other).
        """
        if self._inventory == []:
            await self.refresh()
        ids = self.select(targets)
        if user is not None or password is not None or password_env is not None:
            user = user or getpass.getuser()
            replaying = self.api.replaying  # a replay sends no password anywhere
            if password is None and password_env:
                password = os.environ.get(password_env)
                if password is None and not replaying:
                    raise TunnelnbError(f"environment variable {password_env} is not set: export it, or omit it")
            if password is None:
                password = (
                    PASSWORD_PLACEHOLDER
                    if replaying
                    else getpass.getpass(f"password for {user} on {len(ids)} device(s): ")
                )
            self._logins.set(ids, user, password)
        if concurrency is None:
            concurrency = min(self.concurrency, self.max_sessions)
        return await self._each("<login>", ids, None, timeout, concurrency, None, {})

    # -- runs ----------------------------------------------------------------

    async def run(
        self,
        command: str,
        targets: str | Iterable[str] = "*",
        *,
        timeout: float = 30.0,
        concurrency: int | None = None,
        on_output: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
        ok_codes: Iterable[int] = DEFAULT_OK_CODES,
        verify: bool = False,
        batch: int | str | None = None,
        max_errors: int | str | None = None,
        canary: int | None = None,
    ) -> Results:
        """Run ``command`` on every target; one row per device, whatever happens.

        ``ok_codes`` lists the exit statuses that make a row ``ok`` (its ``exit_code``
        is kept): ``(0, 1)`` for ``grep``, which exits 1 when it finds nothing; any
        other status is ``error``.  ``verify=True`` gets exact output from devices that damage it
        (:meth:`DeviceSession.run`; no live output) or says ``output damaged in transit``.

        A rolling run (:mod:`tunnelnb.fleet.rollout`): ``batch`` (N or ``"P%"``) runs the
        targets in batches, each finishing before the next starts; ``max_errors`` (N or
        ``"P%"``) starts no new device once more rows than that have failed; ``canary=N``
        runs the first N targets first and stops if any fails.  Devices never started
        are ``skipped`` rows saying why.

        ``on_output(device_id, text)`` sees output as it arrives, ``on_result(row)``
        each device's row as soon as it is done (for progress displays; ``skipped`` rows
        when the run stops).  Cancelling interrupts every command in flight (Ctrl-C on the
        devices), records the rows as ``cancelled`` in :attr:`history` and
        :attr:`last_results`, and re-raises; the sessions stay usable.
        """
        codes = check_ok_codes(ok_codes)
        progress: dict[str, Partial] = {}
        work = command_work(command, timeout, on_output, codes, verify, progress)
        return await self._each(
            command,
            targets,
            work,
            timeout,
            concurrency,
            on_result,
            progress,
            batch=batch,
            max_errors=max_errors,
            canary=canary,
        )

    async def get(
        self,
        remote_path: str,
        targets: str | Iterable[str] = "*",
        local_dir: str | os.PathLike[str] = ".",
        **options: Any,
    ) -> TransferResults:
        """Copy ``remote_path`` from every target to ``local_dir/DEVICE_ID/NAME`` (:func:`tunnelnb.fleet.files.get`)."""
        return await files.get(self, remote_path, targets, local_dir, **options)

    async def put(
        self, local_path: str | os.PathLike[str], remote_path: str, targets: str | Iterable[str] = "*", **options: Any
    ) -> TransferResults:
        """Write ``local_path`` to ``remote_path`` on every target, atomically (:func:`tunnelnb.fleet.files.put`)."""
        return await files.put(self, local_path, remote_path, targets, **options)

    def submit(self, command: str, targets: str | Iterable[str] = "*", **run_kwargs: Any) -> jobs.Job:
        """Start :meth:`run` in the background; returns its :class:`~tunnelnb.fleet.jobs.Job` at once."""
        return jobs.submit(self, command, targets, **run_kwargs)

    async def each(
        self,
        label: str,
        targets: str | Iterable[str],
        work: DeviceWork,
        *,
        timeout: float = 30.0,
        concurrency: int | None = None,
        on_result: ResultCallback | None = None,
        batch: int | str | None = None,
        max_errors: int | str | None = None,
        canary: int | None = None,
    ) -> Results:
        """Await ``work(session)`` on every target, each session logged in as :meth:`run` does it.

        The seam for operations other than a command (file transfers): ``work`` returns
        the device's :class:`CommandResult` (its ``command`` becomes ``label``, its
        ``started_at`` and ``duration_s`` the device's whole part: session and login
        included).  Everything else is :meth:`run`'s: a device that is offline, refuses
        the login or drops is a row; a ``TunnelnbError`` from ``work`` makes the row
        ``disconnected``, any other exception too (and closes that session: a bug costs
        one row); cancelling makes ``cancelled`` rows; the rows go to :attr:`history`;
        ``batch``, ``max_errors`` and ``canary`` roll the work out as :meth:`run` does.
        ``timeout`` bounds getting the session and the login; ``work`` bounds its own
        steps (``session.run(..., timeout=...)``), as a command's row says ``timeout``.
        """
        return await self._each(
            label, targets, work, timeout, concurrency, on_result, {}, batch=batch, max_errors=max_errors, canary=canary
        )

    async def _each(
        self,
        label: str,
        targets: str | Iterable[str],
        work: DeviceWork | None,
        timeout: float,
        concurrency: int | None,
        on_result: ResultCallback | None,
        progress: dict[str, Partial],
        *,
        batch: int | str | None = None,
        max_errors: int | str | None = None,
        canary: int | None = None,
    ) -> Results:
        if not self._inventory:
            await self.refresh()
        ids = self.select(targets)
        job = DeviceJob(label, work, timeout, progress)
        return await self._fan_out(
            job, ids, concurrency=concurrency, on_result=on_result, batch=batch, max_errors=max_errors, canary=canary
        )

    async def _fan_out(
        self,
        job: DeviceJob,
        ids: list[str],
        *,
        concurrency: int | None = None,
        on_result: ResultCallback | None = None,
        batch: int | str | None = None,
        max_errors: int | str | None = None,
        canary: int | None = None,
    ) -> Results:
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        width = self.concurrency if concurrency is None else concurrency
        plain = batch is None and max_errors is None and canary is None
        if plain:
            # Devices already logged in go first, so a run larger than the session pool
            # uses their sessions before newcomers evict them.  A rolling run keeps the
            # targets' order: its canaries and batches are the ones the user listed.
            ready = {d for d in ids if (s := self._pool.get(d)) is not None and s.logged_in}
            order = [d for d in ids if d in ready] + [d for d in ids if d not in ready]
        else:
            order = ids
        plan = Rollout(order, batch=batch, max_errors=max_errors, canary=canary)
        rows: dict[str, CommandResult] = {}
        started_at = datetime.now(UTC)
        if len(ids) > self.max_sessions:
            warnings.warn(
                f"{len(ids)} targets but at most {self.max_sessions} sessions at once: devices beyond that "
                "log in again on every run; raise Fleet.max_sessions if your instance allows more",
                FleetSizeWarning,
                stacklevel=4,
            )
        parts = FleetParts(
            lambda: self.api,
            self._pool,
            self._logins,
            self._running,
            self._last,
            self._changed,
            self._set_online,
            self.close,
        )
        # More devices than slots: the next ones open their tunnels while earlier ones work (pool.py's
        # "opened ahead").  Not in a rolling run: a device it may skip must not be contacted.
        ahead = plain and len(ids) > width
        try:
            await start_devices(parts, job, plan, width, rows, ahead=ahead, on_result=on_result)
        except BaseException:  # cancelled, or a strict replay that left its cassette: the rows so far
            self._record(job, ids, rows, started_at)
            raise
        for device_id in plan.not_started():
            rows[device_id] = skipped = partial_row(
                device_id, job.label, ResultStatus.SKIPPED, plan.skip_reason, None, started_at
            )
            if on_result is not None:
                on_result(skipped)
        return self._record(job, ids, rows, started_at)

    def _record(self, job: DeviceJob, ids: list[str], rows: dict[str, CommandResult], started_at: datetime) -> Results:
        def cancelled(device_id: str) -> CommandResult:
            cancel = "the run was cancelled"
            partial = job.progress.get(device_id)
            return partial_row(device_id, job.label, ResultStatus.CANCELLED, cancel, partial, started_at)

        results = Results([rows.get(d) or cancelled(d) for d in ids])
        self._runs.append((next(self._run_ids), results))
        sink = RECORDED.get()
        if sink is None:
            self.last_results = results
        else:
            sink.append(results)
        return results

    def _set_online(self, device_id: str, online: bool) -> None:
        """What a run learnt about a device, until the next :meth:`refresh` (by index: a scan per row was O(N²))."""
        for record in self._entries.get(device_id, ()):
            record["status"] = "ONLINE" if online else "OFFLINE"

    # -- the session pool -------------------------------------------------

    @property
    def max_sessions(self) -> int:
        """How many devices stay logged in at once (IoTDA: 100 per instance); raise it if yours allows more."""
        return self._pool.max_sessions

    @max_sessions.setter
    def max_sessions(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_sessions must be at least 1")
        self._pool.max_sessions = value

    def _new_session(self, device_id: str) -> DeviceSession:
        return DeviceSession(self.api, device_id, join_timeout=self.join_timeout, delete_tunnel=True)

    def session(self, device_id: str) -> DeviceSession | None:
        """The open session of a device, if any (for terminals and dashboards)."""
        return self._pool.get(device_id)

    # -- the backend and what the fleet knows (the cassette layer's seam) ------

    @property
    def api(self) -> PlatformBackend:
        """The platform backend the fleet's sessions use."""
        return self._api

    @property
    def busy(self) -> bool:
        """Is a run or login in progress on some device?"""
        return self._pool.busy

    @property
    def inventory(self) -> list[dict[str, Any]]:
        """The devices as the platform listed them (a copy), as :meth:`devices` shows them."""
        return copy.deepcopy(self._inventory)

    def use_backend(self, api: PlatformBackend, *, close_sessions: bool = True) -> asyncio.Future[Any] | None:
        """Make ``api`` the fleet's backend, between runs; returns the closing of the old sessions.

        A cassette recording or replay puts its backend in this way.  With
        ``close_sessions`` (the default) the sessions open until now are closed,
        so each device's next session starts on the new backend: the returned
        future finishes when they are (None when there were none, or no loop
        runs: their tunnels are then replaced when the devices are next used).
        Without it, they keep the backend they were made with.
        """
        if close_sessions and self._pool.busy:
            raise TunnelnbError("a run is in progress: change the fleet's backend between runs")
        self._api = api
        old = self._pool.detach() if close_sessions else []
        self._changed(None)
        if not old:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        return asyncio.ensure_future(asyncio.gather(*(s.close() for s in old), return_exceptions=True))

    @property
    def default_login_user(self) -> str | None:
        """The user of the default login, if the fleet has one."""
        return self._logins.default[0] if self._logins.default else None

    def login_users(self) -> dict[str, str]:
        """The user of each device given a login of its own (passwords stay private)."""
        return self._logins.users()

    def secret_values(self) -> list[tuple[str, str]]:
        """``(password, "<password>")`` for every password the fleet holds, for a recording to mask."""
        return self._logins.secret_values()

    # -- history and shutdown ----------------------------------------------

    @property
    def history(self) -> pd.DataFrame:
        """Every run so far, one row per device and run, with a leading ``run`` column."""
        frames = [results.df.assign(run=run_id) for run_id, results in self._runs]
        if not frames:
            return pd.DataFrame(columns=["run", *Results([]).df.columns])
        df = pd.concat(frames, ignore_index=True)
        return df[["run", *[c for c in df.columns if c != "run"]]]

    async def close(self, targets: str | Iterable[str] | None = None) -> None:
        """Close sessions (all of them, and whatever the fleet started, when ``targets`` is None)."""
        if targets is None:
            await jobs.stop_jobs(self)  # their devices' rows say cancelled, not disconnected
        chosen = None if targets is None else self.select(targets)
        await self._pool.drop_ahead(chosen)
        sessions = self._pool.detach(chosen)
        limit = asyncio.Semaphore(min(self.concurrency, DEFAULT_MAX_SESSIONS))

        async def close_one(session: DeviceSession) -> None:
            async with limit:  # a thousand closes at once starve the platform and devices
                await session.close()

        await asyncio.gather(*(close_one(s) for s in sessions), return_exceptions=True)
        self._changed(None)
        if targets is None:
            await self.api.close()
            for closer in reversed(self._cleanup):
                with contextlib.suppress(Exception):
                    await closer()
            self._cleanup.clear()

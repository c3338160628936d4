"""Blocking twins of the async API, for scripts.

The fleet's sessions live on an event loop that runs in a background thread,
so they survive between calls; each call waits for its coroutine there.
Ctrl-C (KeyboardInterrupt) during :meth:`SyncFleet.run` cancels the run on the
devices and returns its rows, marked ``cancelled``, instead of losing them.

    fleet = tunnelnb.connect_sync("http://127.0.0.1:8765", project_id="demo", api_token=token)
    print(fleet.run("uptime", "device-*").df)
    fleet.close()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

import pandas as pd

from .fleet import Fleet, OutputCallback, ResultCallback
from .results import Results

__all__ = ["SyncFleet", "connect_sync"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tunnelnb-loop", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class SyncFleet:
    """A :class:`~tunnelnb.fleet.Fleet` whose methods block."""

    def __init__(self, fleet: Fleet, runner: _LoopThread) -> None:
        self.fleet = fleet
        self._runner = runner

    def __repr__(self) -> str:
        return f"<SyncFleet {self.fleet!r}>"

    def __enter__(self) -> SyncFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def devices(self) -> pd.DataFrame:
        return self.fleet.devices()

    def refresh(self) -> pd.DataFrame:
        return self._runner.call(self.fleet.refresh())

    def select(self, targets: str | Iterable[str] = "*") -> list[str]:
        return self.fleet.select(targets)

    def login(self, targets: str | Iterable[str] = "*", **kwargs: Any) -> Results:
        return self._runner.call(self.fleet.login(targets, **kwargs))

    def run(
        self,
        command: str,
        targets: str | Iterable[str] = "*",
        *,
        timeout: float = 30.0,
        concurrency: int | None = None,
        on_output: OutputCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> Results:
        """Like :meth:`Fleet.run`; Ctrl-C cancels the run and returns its rows (``cancelled``)."""
        finished = threading.Event()
        tasks: list[asyncio.Task[Any]] = []

        async def run() -> Results:
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                return await self.fleet.run(
                    command, targets, timeout=timeout, concurrency=concurrency, on_output=on_output, on_result=on_result
                )
            finally:
                finished.set()

        future = self._runner.submit(run())
        try:
            return future.result()
        except KeyboardInterrupt:
            # Cancel the task on the loop (Ctrl-C reaches every device) and wait until
            # the fleet has recorded the rows, then hand them back.
            for task in tasks:
                self._runner.loop.call_soon_threadsafe(task.cancel)
            finished.wait(30)
            if self.fleet.last_results is None:
                raise
            return self.fleet.last_results

    @property
    def history(self) -> pd.DataFrame:
        return self.fleet.history

    @property
    def last_results(self) -> Results | None:
        return self.fleet.last_results

    def close(self) -> None:
        """Close every session and whatever the fleet started, then the loop thread."""
        try:
            self._runner.call(self.fleet.close())
        finally:
            self._runner.stop()


def connect_sync(url: str | None = None, **kwargs: Any) -> SyncFleet:
    """:func:`tunnelnb.connect`, blocking: returns a :class:`SyncFleet`."""
    from . import connect

    runner = _LoopThread()
    try:
        fleet = runner.call(connect(url, **kwargs))
    except BaseException:
        runner.stop()
        raise
    return SyncFleet(fleet, runner)

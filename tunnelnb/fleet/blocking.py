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

import os
from collections.abc import Iterable
from typing import Any

import pandas as pd

from .exitcodes import DEFAULT_OK_CODES
from .fleet import Fleet, OutputCallback, ResultCallback
from .jobs import Job
from .results import Results
from .runner import ThreadLoopRunner
from .transfers import TransferResults

__all__ = ["SyncFleet"]


class SyncFleet:
    """A :class:`~tunnelnb.fleet.fleet.Fleet` whose methods block."""

    def __init__(self, fleet: Fleet, runner: ThreadLoopRunner) -> None:
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
        return self._runner.run(self.fleet.refresh())

    def select(self, targets: str | Iterable[str] = "*") -> list[str]:
        return self.fleet.select(targets)

    def login(self, targets: str | Iterable[str] = "*", **kwargs: Any) -> Results:
        return self._runner.run(self.fleet.login(targets, **kwargs))

    def run(
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
        """Like :meth:`Fleet.run` (every option, the rolling ones too: ``batch``, ``max_errors``, ``canary``).

        Ctrl-C cancels the run and returns its rows (``cancelled``).
        """
        run = self.fleet.run(
            command,
            targets,
            timeout=timeout,
            concurrency=concurrency,
            on_output=on_output,
            on_result=on_result,
            ok_codes=ok_codes,
            verify=verify,
            batch=batch,
            max_errors=max_errors,
            canary=canary,
        )
        try:
            return self._runner.run(run)
        except KeyboardInterrupt:
            if self.fleet.last_results is None:
                raise
            return self.fleet.last_results

    def get(
        self,
        remote_path: str,
        targets: str | Iterable[str] = "*",
        local_dir: str | os.PathLike[str] = ".",
        **options: Any,
    ) -> TransferResults:
        """Like :meth:`Fleet.get`: ``local_dir/DEVICE_ID/NAME`` from every target."""
        return self._runner.run(self.fleet.get(remote_path, targets, local_dir, **options))

    def put(
        self, local_path: str | os.PathLike[str], remote_path: str, targets: str | Iterable[str] = "*", **options: Any
    ) -> TransferResults:
        """Like :meth:`Fleet.put`: ``local_path`` to ``remote_path`` on every target."""
        return self._runner.run(self.fleet.put(local_path, remote_path, targets, **options))

    def submit(self, command: str, targets: str | Iterable[str] = "*", **run_kwargs: Any) -> Job:
        """Like :meth:`Fleet.submit`: the run goes on in the loop's thread; ``job.wait()`` blocks."""
        return self.fleet.submit(command, targets, **run_kwargs)

    @property
    def history(self) -> pd.DataFrame:
        return self.fleet.history

    @property
    def last_results(self) -> Results | None:
        return self.fleet.last_results

    def close(self) -> None:
        """Close every session and whatever the fleet started, then the loop thread."""
        try:
            self._runner.run(self.fleet.close())
        finally:
            self._runner.close()

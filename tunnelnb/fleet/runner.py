"""Run the async API from blocking front ends (magics, scripts) on one long-lived loop.

The fleet's sessions belong to the event loop they were opened on and must keep
being served between calls (heartbeats, output, devices that vanish), so a
front end needs one loop that lives as long as the fleet:

* in a Jupyter kernel, the kernel's own loop, which runs between cells; a magic
  re-enters it with nest-asyncio2 (ipykernel 7 depends on it), and ``await
  fleet.run(...)`` in a cell works on the very same sessions;
* anywhere else (terminal IPython, scripts), a loop in a daemon thread.

Both turn Ctrl-C (SIGINT, and Jupyter's Kernel → Interrupt) into a cancellation
of the running coroutine, wait until it has finished cancelling (so the fleet
records its ``cancelled`` rows and interrupts the devices), then raise
``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["KernelLoopRunner", "LoopRunner", "ThreadLoopRunner", "runner_for_this_thread"]

T = TypeVar("T")

#: How long a cancelled coroutine gets to wind down (Ctrl-C to devices, rows recorded).
CANCEL_GRACE_S = 30.0


class LoopRunner:
    """Runs coroutines to completion on :attr:`loop`, from blocking code."""

    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        raise NotImplementedError

    def close(self) -> None:
        """Release the loop, if this runner owns it."""


class KernelLoopRunner(LoopRunner):
    """The loop already running in this thread (ipykernel's), re-entered with nest-asyncio2."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import nest_asyncio2

        nest_asyncio2.apply(loop)
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        task = self.loop.create_task(coro)
        interrupted = threading.Event()
        with _sigint_cancels(task, self.loop, interrupted):
            try:
                return self.loop.run_until_complete(task)
            except asyncio.CancelledError:
                if interrupted.is_set():
                    raise KeyboardInterrupt from None
                raise


class ThreadLoopRunner(LoopRunner):
    """A loop of its own, running in a daemon thread for as long as the runner lives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tunnelnb-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self.loop.is_running():
            coro.close()
            raise RuntimeError("this runner's loop has been closed")
        finished = threading.Event()

        async def tracked() -> T:
            try:
                return await coro
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            # Ctrl-C lands here, in the waiting thread: cancel the coroutine on its loop
            # and give it time to finish cancelling before giving up.
            future.cancel()
            finished.wait(CANCEL_GRACE_S)
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


def runner_for_this_thread() -> LoopRunner:
    """The kernel's loop when one is running in this thread, else a loop thread of our own."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return ThreadLoopRunner()
    return KernelLoopRunner(loop)


@contextlib.contextmanager
def _sigint_cancels(
    task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop, interrupted: threading.Event
) -> Iterator[None]:
    """While inside, the first SIGINT cancels ``task``; a second one raises KeyboardInterrupt at once.

    Cancelling (rather than letting KeyboardInterrupt fly through the loop) lets the
    coroutine interrupt the devices and record its rows.  Only the main thread gets
    signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: object) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        loop.call_soon_threadsafe(task.cancel)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

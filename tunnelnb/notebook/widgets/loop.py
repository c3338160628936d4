"""What every widget needs: calls onto the fleet's event loop from any thread, coalesced re-renders, clean closing.

A widget's callbacks come from the browser (the kernel's thread) and from the
fleet (its loop, which may run in another thread); these helpers let both reach
the loop safely, and keep a burst of changes from becoming a burst of renders.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

if TYPE_CHECKING:
    from ...fleet.fleet import Fleet

__all__ = ["Coalescer", "call_on_loop", "close_all", "fleet_loop", "on_loop_thread", "shorten"]

log = logging.getLogger(__name__)


def on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    """Is ``loop`` the loop running in this thread?"""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def fleet_loop(loop: asyncio.AbstractEventLoop | None, fleet: Fleet | None = None) -> asyncio.AbstractEventLoop:
    """The loop a widget hands work to: ``loop`` when given, else the fleet's, else this thread's running one.

    A fleet knows its loop once it has read its inventory (``tunnelnb.connect``
    does that), whether it is the kernel's own loop or a loop thread of its own
    (``connect_sync``, terminal IPython).  Raises TypeError, as a missing
    argument would, with what to pass, when none is known.
    """
    if loop is not None:
        return loop
    if fleet is not None and fleet.loop is not None and not fleet.loop.is_closed():
        return fleet.loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise TypeError(
            "no event loop is running in this thread: pass loop=, the loop the fleet's sessions run on "
            "(a notebook cell has it; a fleet from connect_sync runs on a loop thread of its own)"
        ) from None


def call_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """Run ``fn(*args)`` on the loop's thread: now if this is it, else soon.  False when the loop is closed."""
    if on_loop_thread(loop):
        fn(*args)
        return True
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: there is nothing left to update
        return False
    return True


class Coalescer:
    """Calls ``fn`` on the loop at most once per ``delay`` seconds, however often it is asked.

    A run on many devices changes state hundreds of times a second; the browser
    needs to see the result a few times a second, not every step.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, fn: Callable[[], None]) -> None:
        self._loop = loop
        self._delay = delay
        self._fn = fn
        self._handle: asyncio.TimerHandle | None = None
        self._closed = False

    def request(self) -> None:
        """Ask for a call; from any thread."""
        call_on_loop(self._loop, self._request)

    def now(self) -> None:
        """Call at once (on the loop's thread), dropping a pending call."""
        self._cancel()
        self._call()

    def close(self) -> None:
        """No more calls; from any thread."""
        self._closed = True
        call_on_loop(self._loop, self._cancel)

    def _request(self) -> None:
        if self._handle is None and not self._closed:
            self._handle = self._loop.call_later(self._delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._call()

    def _call(self) -> None:
        if self._closed:
            return
        try:
            self._fn()
        except Exception:  # a display must not break the loop it runs on
            log.exception("widget update failed")

    def _cancel(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()


def close_all(box: widgets.Box) -> None:
    """Close a box's widgets, nested boxes included (``Box.close`` leaves its children open)."""
    for child in box.children:
        if isinstance(child, widgets.Box):
            close_all(child)
        child.close()


def shorten(text: str, limit: int) -> str:
    """The first line of ``text``, cut to ``limit`` characters, with … when anything was left out."""
    first, _, rest = text.strip().partition("\n")
    if len(first) > limit:
        return first[: limit - 1] + "…"
    return first + " …" if rest else first

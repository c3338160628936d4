"""Rate-limited logging: one line per identical message per window, then how many were held back.

Under abuse the same line repeats thousands of times a second ("socket.accept() out
of system resource", "refusing a connection from …"): the log then hides everything
else and costs more than the abuse.  :class:`RepeatFilter` lets the first of each
identical record (same logger, level and text) through, drops the repeats for
``window`` seconds, and appends "(N more like this in the last 10 s)" to the next one
that passes.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["THROTTLED_LOGGERS", "RepeatFilter", "install"]

#: The loggers a platform throttles: its own, and those of the libraries it serves with.
THROTTLED_LOGGERS = ("tunnelnb.server.platform", "asyncio", "aiohttp.server", "aiohttp.web", "aiohttp.websocket")

_MAX_KEYS = 2048  # distinct messages remembered; the oldest is forgotten first


class RepeatFilter(logging.Filter):
    """Drop repeats of an identical record within ``window`` seconds; count them into the next one."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, str], tuple[float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string: let logging report it as usual
            return True
        key = (record.name, record.levelno, text)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.msg, record.args = f"{text} ({seen[1]} more like this in the last {self.window:g} s)", None
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > _MAX_KEYS:
            self._seen.popitem(last=False)
        return True


_FILTER = RepeatFilter()


def install(names: Iterable[str] = THROTTLED_LOGGERS) -> RepeatFilter:
    """Add the shared :class:`RepeatFilter` to the loggers ``names`` and their existing children; idempotent.

    A logger's filters see only records logged on that very logger, so the children
    that exist (the platform's modules, imported by now) get it too.
    """
    wanted = tuple(names)
    for name in list(logging.root.manager.loggerDict):
        if any(name == w or name.startswith(w + ".") for w in wanted):
            logging.getLogger(name).addFilter(_FILTER)
    for name in wanted:
        logging.getLogger(name).addFilter(_FILTER)
    return _FILTER

"""Process limits that large fleets need, with nothing but the standard library.

Kept free of the package's heavier imports so that a benchmark's baseline client,
running under another interpreter, can use it too.
"""

from __future__ import annotations

import contextlib
import resource

__all__ = ["raise_open_files_limit"]


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to the hard limit; the new soft limit.

    Every device session holds a socket or two: a thousand of them pass the usual
    soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft

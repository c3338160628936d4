"""Which exit statuses count as success: a command's own convention, not always 0.

``grep -c ERROR log`` exits 1 when it finds nothing, which is the healthy
answer; ``diff`` exits 1 when files differ.  A run's ``ok_codes`` says which
exit statuses make a row ``ok`` (its ``exit_code`` is kept, so nothing is
hidden), and any other status makes it ``error``.  The fleet applies this where
it receives a session's result, so every front end (magics, CLI, API, the
dashboard's last status) sees the same rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ..client.result import CommandResult, ResultStatus

__all__ = ["DEFAULT_OK_CODES", "apply_ok_codes", "check_ok_codes"]

#: The shell's own convention: only 0 is success.
DEFAULT_OK_CODES: tuple[int, ...] = (0,)


def check_ok_codes(ok_codes: Iterable[int] | int) -> tuple[int, ...]:
    """``ok_codes`` as a tuple of exit statuses (0-255), or :class:`ValueError` saying what is wrong.

    A single int is taken as a one-element list (``ok_codes=1`` is a common slip
    for ``(0, 1)``, so it is allowed but means exactly ``(1,)``).
    """
    codes = (ok_codes,) if isinstance(ok_codes, int) else tuple(ok_codes)
    if not codes:
        raise ValueError("ok_codes must list at least one exit status, e.g. (0,) or (0, 1)")
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
            raise ValueError(f"ok_codes: {code!r} is not an exit status (a whole number from 0 to 255)")
    return tuple(dict.fromkeys(codes))


def _note_after(error: str, prefix: str) -> str:
    """What ``error`` says besides ``prefix`` (a session appends notes like "the shell is new" after "; ")."""
    if error == prefix:
        return ""
    if error.startswith(prefix + "; "):
        return error[len(prefix) + 2 :]
    return error


def apply_ok_codes(result: CommandResult, ok_codes: tuple[int, ...]) -> CommandResult:
    """``result`` with its status decided by ``ok_codes``: only rows whose command finished with a status change.

    Rows that did not finish (timeout, offline, …) or finished without a readable
    exit status are returned as they are.  The ``error`` keeps any note the
    session added (a recovered session says its shell is new).
    """
    code = result.exit_code
    if code is None or result.status not in (ResultStatus.OK, ResultStatus.ERROR):
        return result
    if code in ok_codes:
        if result.status == ResultStatus.OK:
            return result
        return dataclasses.replace(
            result, status=ResultStatus.OK, error=_note_after(result.error, f"exit status {code}")
        )
    if result.status == ResultStatus.ERROR:
        return result
    allowed = ", ".join(str(c) for c in ok_codes)
    error = f"exit status {code} (ok_codes: {allowed})"
    return dataclasses.replace(
        result, status=ResultStatus.ERROR, error=f"{error}; {result.error}" if result.error else error
    )

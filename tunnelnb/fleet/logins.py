"""The logins a fleet holds: a default one and per-device ones, in memory only.

Passwords never reach results, history, logs or recordings (a recording asks
:meth:`Logins.secret_values` for what to mask).  A device whose login changed
since its session logged in is logged in again before its next command.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..client.backend import PASSWORD_PLACEHOLDER
from ..client.session import DeviceSession
from ..errors import AuthFailed, TunnelnbError

__all__ = ["Logins", "keep_working_login"]


class Logins:
    """``(user, password)`` per device, with a default for devices without one of their own."""

    def __init__(self, default: tuple[str, str] | None = None) -> None:
        self.default = default
        self._per_device: dict[str, tuple[str, str]] = {}
        self._changed: set[str] = set()  # devices whose login changed since their session logged in
        self._working: dict[str, tuple[str, str]] = {}  # the login each device's session last logged in with

    def set(self, ids: Iterable[str], user: str, password: str) -> None:
        ids = list(ids)
        for device_id in ids:
            self._per_device[device_id] = (user, password)
        self._changed.update(ids)

    def get(self, device_id: str) -> tuple[str, str] | None:
        return self._per_device.get(device_id) or self.default

    def worked(self, device_id: str, login: tuple[str, str]) -> None:
        """``login`` logged the device in: it is the one to go back to if a new one is refused."""
        self._working[device_id] = login

    def restore(self, device_id: str) -> tuple[str, str] | None:
        """Go back to the device's last working login (a new one was refused); it, or None."""
        working = self._working.get(device_id)
        if working is not None:
            self._per_device[device_id] = working
        return working

    def take_changed(self, device_id: str) -> bool:
        """Did the device's login change since its session logged in?  (Asking clears it.)"""
        changed = device_id in self._changed
        self._changed.discard(device_id)
        return changed

    def users(self) -> dict[str, str]:
        """The user of each device given a login of its own."""
        return {device_id: user for device_id, (user, _) in sorted(self._per_device.items())}

    def secret_values(self) -> list[tuple[str, str]]:
        """``(password, "<password>")`` for every password held, for a recording to mask."""
        logins = [self.default, *self._per_device.values(), *self._working.values()]
        return [(login[1], PASSWORD_PLACEHOLDER) for login in logins if login]


async def keep_working_login(logins: Logins, session: DeviceSession, refused: AuthFailed) -> str:
    """A new login was refused on a device that had a working one: log in with that again.

    (The device ends its shell on every ``connect``, so the new login could not be
    tried beside the working one.)  Returns the row's error.
    """
    working = logins.restore(session.device_id)
    if working is None:
        return str(refused)
    try:
        await session.login(*working)
    except TunnelnbError as exc:
        return f"{refused}; logging in again with the previous login failed too: {exc}"
    return f"{refused}; the previous login works and stays in use (its shell is new: cd and variables were reset)"

"""The logins a fleet holds: a default one and per-device ones, in memory only.

Passwords never reach results, history, logs or recordings (a recording asks
:meth:`Logins.secret_values` for what to mask).  A device whose login changed
since its session logged in is logged in again before its next command.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..client.backend import PASSWORD_PLACEHOLDER

__all__ = ["Logins"]


class Logins:
    """``(user, password)`` per device, with a default for devices without one of their own."""

    def __init__(self, default: tuple[str, str] | None = None) -> None:
        self.default = default
        self._per_device: dict[str, tuple[str, str]] = {}
        self._changed: set[str] = set()  # devices whose login changed since their session logged in

    def set(self, ids: Iterable[str], user: str, password: str) -> None:
        ids = list(ids)
        for device_id in ids:
            self._per_device[device_id] = (user, password)
        self._changed.update(ids)

    def get(self, device_id: str) -> tuple[str, str] | None:
        return self._per_device.get(device_id) or self.default

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
        logins = [self.default, *self._per_device.values()]
        return [(login[1], PASSWORD_PLACEHOLDER) for login in logins if login]

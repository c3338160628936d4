"""Exceptions of tunnelnb: each carries one sentence saying what went wrong and what to do."""

from __future__ import annotations


class TunnelnbError(Exception):
    """Base class of every error tunnelnb raises on purpose."""


class PlatformError(TunnelnbError):
    """The platform's REST API refused a request (IoTDA-style ``error_code`` / ``error_msg``)."""

    def __init__(self, status: int, error_code: str, error_msg: str, *, hint: str = "") -> None:
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.hint = hint
        text = f"{error_msg} (HTTP {status}, {error_code})"
        super().__init__(f"{text}: {hint}" if hint else text)


class PlatformUnreachable(TunnelnbError):
    """No answer from the platform's address."""


class TunnelError(TunnelnbError):
    """The tunnel's WebSocket could not be opened or was lost."""


class TunnelAuthError(TunnelError):
    """The platform rejected the tunnel token (wrong or expired)."""


class DeviceDisconnected(TunnelError):
    """The device side left the tunnel, or the tunnel was closed."""

    def __init__(self, message: str, status_code: str | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class LoginError(TunnelError):
    """The device could not log in to its SSH server."""

    def __init__(self, message: str, status_code: str | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class AuthFailed(LoginError):
    """The device's SSH server refused the user name or password."""

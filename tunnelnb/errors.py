"""Every exception and warning tunnelnb raises on purpose, in one hierarchy.

Each error carries one sentence saying what went wrong and what to do.  Every
layer may import this module; it imports nothing of tunnelnb.  Where callers
rely on a builtin base (``ValueError`` for bad input, ``LookupError``,
``ImportError``), the class keeps it beside :class:`TunnelnbError`.

    TunnelnbError
    ├── PlatformError                 the REST API refused a request
    ├── PlatformUnreachable
    ├── TunnelError
    │   ├── TunnelAuthError           the tunnel token was refused
    │   ├── TunnelClosed              the WebSocket closed (``code``, ``final``)
    │   ├── TunnelGone                the platform no longer has the tunnel (404)
    │   ├── DeviceOffline
    │   ├── DeviceDisconnected
    │   ├── LoginError
    │   │   └── AuthFailed            the device's SSH server refused the login
    │   └── TerminalError             an interactive terminal could not open, or ended
    ├── SessionStateError             a session event its state does not allow (a bug)
    ├── JobStillRunning (TimeoutError) a background job's result asked for too soon
    ├── CassetteError
    │   └── CassetteMismatch          a strict replay was asked for what its cassette lacks
    ├── ProtocolError (ValueError)    a frame or payload that cannot be understood
    ├── SignatureError (ValueError)   an AK/SK signature that does not verify
    ├── TLSConfigError (ValueError)
    ├── TargetError (ValueError)
    │   └── UnknownTargets (LookupError)
    ├── ParseError (ValueError)
    ├── HuaweiCloudSDKMissing (ImportError)
    ├── DeviceAuthError               the platform refused a device's link
    ├── BrokerAuthError               the MQTT broker refused a login
    └── DemoError
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

__all__ = [
    "AuthFailed",
    "BrokerAuthError",
    "CassetteError",
    "CassetteMismatch",
    "DemoError",
    "DeviceAuthError",
    "DeviceDisconnected",
    "DeviceOffline",
    "FleetSizeWarning",
    "HuaweiCloudSDKMissing",
    "InsecureTLSWarning",
    "JobStillRunning",
    "LoginError",
    "ParseError",
    "PlatformError",
    "PlatformUnreachable",
    "ProtocolError",
    "SessionStateError",
    "SignatureError",
    "TLSConfigError",
    "TargetError",
    "TerminalError",
    "TunnelAuthError",
    "TunnelClosed",
    "TunnelError",
    "TunnelGone",
    "TunnelnbError",
    "UnknownTargets",
]


class TunnelnbError(Exception):
    """Base class of every error tunnelnb raises on purpose."""


# -- the platform's control plane ----------------------------------------------


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


class HuaweiCloudSDKMissing(TunnelnbError, ImportError):
    """The optional Huawei Cloud SDK packages are not installed."""


# -- one device's tunnel ----------------------------------------------------------


class TunnelError(TunnelnbError):
    """The tunnel's WebSocket could not be opened or was lost."""


class TunnelAuthError(TunnelError):
    """The platform rejected the tunnel token (wrong or expired)."""


class TunnelClosed(TunnelError):
    """The WebSocket closed; ``final`` says that reconnecting makes no sense (close 1000, 1002, 4000)."""

    def __init__(self, code: int | None, reason: str, message: str, *, final: bool) -> None:
        self.code = code
        self.reason = reason
        self.final = final
        super().__init__(message)


class TunnelGone(TunnelError):
    """The platform no longer has the tunnel (HTTP 404 on connecting): it was deleted, or the platform restarted."""


class DeviceOffline(TunnelError):
    """The device is not connected to the platform, or did not join its tunnel in time."""


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


class TerminalError(TunnelError):
    """An interactive terminal (``%tunnel shell``, ``tunnelnb shell``) could not open; ``status`` is the row's."""

    def __init__(self, message: str, status: str = "disconnected") -> None:
        super().__init__(message)
        self.status = status


class SessionStateError(TunnelnbError):
    """An event a device session's transition table does not allow in its current state (a bug)."""


# -- runs and cassettes -------------------------------------------------------------


class JobStillRunning(TunnelnbError, TimeoutError):
    """``job.result(timeout)`` ran out of time; the background job goes on."""


class CassetteError(TunnelnbError):
    """A cassette that cannot be read or used: missing, not a cassette, an unknown format version."""


class CassetteMismatch(CassetteError):
    """A strict replay was asked for something its cassette does not have.

    Like any device failure it is that device's row (``disconnected``, naming the
    command); the other devices' rows replay as recorded.
    """

    def __init__(self, device_id: str | None, message: str) -> None:
        self.device_id = device_id
        super().__init__(message)


# -- bad input -------------------------------------------------------------------------


class ProtocolError(TunnelnbError, ValueError):
    """A frame or payload that cannot be understood; the message names the problem."""


class SignatureError(TunnelnbError, ValueError):
    """A request's AK/SK signature is missing, malformed, stale or wrong.

    ``detail`` is API Gateway-style wording of the cause (the platform prefixes it
    with "Incorrect IAM authentication information: "); it never holds a secret key.
    """

    def __init__(self, reason: enum.Enum, detail: str, *, access_key: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.access_key = access_key
        super().__init__(detail)


class TLSConfigError(TunnelnbError, ValueError):
    """A certificate, key or CA bundle that cannot be loaded."""


class TargetError(TunnelnbError, ValueError):
    """A target spec that cannot be read (empty, unbalanced bracket, bad range)."""


class UnknownTargets(TargetError, LookupError):
    """Some terms of a target spec match no device in the inventory."""

    def __init__(self, terms: Sequence[str], suggestions: Mapping[str, Sequence[str]], inventory_size: int) -> None:
        self.terms = list(terms)
        self.suggestions = {term: list(suggestions.get(term, ())) for term in self.terms}
        parts = []
        for term in self.terms:
            hint = self.suggestions[term]
            parts.append(f"{term!r} (did you mean {_or_list(hint)}?)" if hint else repr(term))
        message = "no device matches " + ", ".join(parts)
        if inventory_size == 0:
            message += " (the inventory is empty)"
        super().__init__(message)


def _or_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


class ParseError(TunnelnbError, ValueError):
    """Output that does not read as the format asked for, or a bad format or option."""


# -- the servers ------------------------------------------------------------------------


class DeviceAuthError(TunnelnbError):
    """The platform refused the device link: unknown device or wrong device secret."""


class BrokerAuthError(TunnelnbError):
    """The MQTT broker refused the user name or password."""


class DemoError(TunnelnbError):
    """The demo could not start; one sentence for the terminal (``tunnelnb: ...``)."""


# -- warnings ---------------------------------------------------------------------------


class FleetSizeWarning(UserWarning):
    """A run targets more devices than can stay logged in at once."""


class InsecureTLSWarning(UserWarning):
    """Certificates are not being checked: anyone in between can read the tunnel."""

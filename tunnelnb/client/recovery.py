"""How a device session gets out of a failure by itself, and what its rows then say.

Every failure is a state with a way out (docs/architecture.md, "A device
session's states"):

- **The tunnel is gone** (HTTP 404 on connecting: the platform restarted, or
  another application took the device's one tunnel and deleted ours; or the
  token expired): the session drops its grant, makes a new tunnel, logs in
  again and runs, once per run.  The row says so (:data:`NOTE_NEW_TUNNEL`),
  because the new shell has lost ``cd`` and variables.
- **The device leaves during the login** (the official C SDK reconnects its
  WebSocket on every ``tunnel_notify`` it gets): the session waits for the next
  ``connect_tunnel`` and sends ``connect`` again, at most
  :data:`LOGIN_ATTEMPTS` times within the login's time.
- **The device's shell is lost** (any ``disconnect``, the device left, the
  WebSocket dropped): the next run logs in again (:data:`NOTE_NEW_SHELL`).  A
  session whose device left asks the platform first: a device listed OFFLINE is
  answered ``offline`` at once, and a device still in the tunnel (it sent
  ``disconnect`` but kept its WebSocket) is found by reconnecting, to which the
  platform answers ``connect_tunnel``; no join wait exceeds the run's timeout.
- **The shell does not come back after Ctrl-C** (``vi``, ``top``, a program
  reading the terminal): the next run re-syncs, then types
  :data:`ESCAPE_KEYS`, then sends ``connect`` again for a new shell
  (:data:`NOTE_SHELL_RESTARTED`), each within a share of its timeout.
"""

from __future__ import annotations

from ..errors import AuthFailed, DeviceDisconnected, LoginError, TunnelnbError
from ..protocol.frames import C_SDK_SSH_FAILED, Status

__all__ = [
    "ESCAPE_KEYS",
    "LOGIN_ATTEMPTS",
    "LOGIN_SYNC_S",
    "NOTE_NEW_SHELL",
    "NOTE_NEW_TUNNEL",
    "NOTE_SHELL_RESTARTED",
    "RESYNC_MAX_S",
    "RESYNC_SHARES",
    "disconnect_error",
]

#: How many times one login sends ``connect`` when the device leaves and rejoins meanwhile.
LOGIN_ATTEMPTS = 3

#: How long a login waits for the device's shell to answer before it sends ``connect`` again.
#: The official C SDK writes to its libssh session from one thread while another spins
#: reading it; a write that races the read can corrupt the SSH stream (sshd logs "Bad packet
#: length"), and the SDK then fails every later write silently (src/tunnel/ssh_client.c).
#: A new ``connect`` makes it open a new SSH session.
LOGIN_SYNC_S = 10.0

#: Keys that leave common full-screen programs: Ctrl-C, Esc and ``:q!`` + Enter (vi),
#: ``q`` (less, man, top), then Ctrl-C again, which also discards the ``q`` at a shell prompt.
ESCAPE_KEYS = "\x03\x1b:q!\r" + "q" + "\x03"

#: Shares of a run's timeout for re-syncing the shell, first as it is, then after
#: :data:`ESCAPE_KEYS`; the rest goes to logging in again for a new shell.
RESYNC_SHARES = (0.3, 0.3)
#: ... and at most this many seconds for each of those two tries.
RESYNC_MAX_S = 3.0

_RESET = "the shell is new (cd and variables were reset)"
NOTE_NEW_TUNNEL = f"the tunnel was gone, so tunnelnb made a new one and logged in again: {_RESET}"
NOTE_NEW_SHELL = f"the device's shell was lost, so tunnelnb logged in again: {_RESET}"
NOTE_SHELL_RESTARTED = (
    f"the shell did not come back after Ctrl-C (a full-screen program?), so tunnelnb logged in again: {_RESET}"
)


def disconnect_error(device_id: str, code: str, msg: str, *, logging_in: bool) -> TunnelnbError:
    """What a ``disconnect`` frame (``code``, ``msg``) means for whatever waits on the device."""
    left = code in (Status.PEER_GONE, Status.TUNNEL_CLOSED)
    if code == Status.AUTH_FAILED:
        return AuthFailed(f"{device_id}: {msg}", code)
    if logging_in and left:
        return DeviceDisconnected(f"{device_id} left the tunnel during the login: {msg}", code)
    if logging_in and code == Status.CHANNEL_FAILED and C_SDK_SSH_FAILED in msg:
        # The C SDK's one answer to every SSH failure (wss_client.c); most often a wrong password.
        return AuthFailed(
            f"{device_id}: the device could not open an SSH session ({code} {msg}): "
            "wrong user or password, or its SSH server is down",
            code,
        )
    if logging_in:
        return LoginError(
            f"{device_id}: the device could not open an SSH session ({code} {msg}): "
            "check the user, the password and its SSH server",
            code,
        )
    return DeviceDisconnected(f"{device_id} disconnected: {msg}", code)

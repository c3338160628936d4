"""Run a command as another account: what ``sshd`` does for a login, before it execs the shell.

Usage: ``python -I -S switchuser.py NAME UID GID HOME -- ARGV...``.  The agent's
``--local-shell``, started as root, puts this in front of the shell (see
:func:`tunnelnb.server.agent.shells.local_shell_argv`): the PTY child, already the
session leader on its terminal, gives the terminal to the account (owner, group
``tty``, mode 0620, as ``sshd`` does), takes the account's groups, group and user
(``initgroups``, ``setresgid``, ``setresuid``), checks that root cannot be regained,
goes to its home directory and execs the shell with the environment it was given,
which the agent has already cleared of everything but an allow-list.  A root shell for
the login user would read the device secret and the login password out of the agent's
``/proc/PID/environ``.  It runs isolated and without ``site``, so it imports the
standard library only.
"""

from __future__ import annotations

import grp
import os
import sys


def _fail(message: str) -> None:
    sys.stderr.write(f"tunnelnb agent: cannot start the shell: {message}\r\n")
    sys.exit(126)


def switch(name: str, uid: int, gid: int) -> None:
    """Become ``name`` (``uid``/``gid`` and its supplementary groups), for good."""
    try:
        tty_gid = grp.getgrnam("tty").gr_gid
    except KeyError:
        tty_gid = gid
    for fd in (0, 1, 2):  # the PTY: the user's, as under sshd (mesg, tty, reopening /dev/pts/N)
        if os.isatty(fd):
            try:
                os.fchown(fd, uid, tty_gid)
                os.fchmod(fd, 0o620)
            except OSError:
                pass
            break
    os.initgroups(name, gid)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError(f"still running as uid {os.getresuid()}, gid {os.getresgid()}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise OSError("root could be regained after switching user")


def main(args: list[str]) -> None:
    if len(args) < 6 or args[4] != "--":
        _fail("usage: switchuser.py NAME UID GID HOME -- ARGV...")
    name, home, argv = args[0], args[3], args[5:]
    try:
        switch(name, int(args[1]), int(args[2]))
    except (OSError, ValueError) as exc:
        _fail(f"cannot switch to user {name!r}: {exc}")
    try:
        os.chdir(home)
    except OSError:
        os.chdir("/")
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        _fail(f"{argv[0]}: {os.strerror(exc.errno) if exc.errno else exc}")


if __name__ == "__main__":
    main(sys.argv[1:])

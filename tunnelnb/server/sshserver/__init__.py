"""An embedded SSH server whose sessions run a real shell on a real pseudo-terminal.

The simulated fleet runs hundreds of these in one process, so everything is
driven by the event loop: :mod:`.fdio` pumps file descriptors without threads,
:mod:`.process` runs children on a PTY (:class:`PtyProcess`, also the device
agent's ``--local-shell`` backend) or on pipes (:class:`PipeProcess`) and ends
them with their whole session, and :mod:`.server` is the asyncssh server
(:class:`ShellServer`) whose sessions behave like ``sshd``'s.
"""

from .process import PipeProcess, PtyProcess
from .server import ShellServer, default_host_key

__all__ = ["PipeProcess", "PtyProcess", "ShellServer", "default_host_key"]

"""``%tunnel login``: log in to devices, with a password from an environment variable or a hidden prompt.

A password is never accepted on the magic line; when replaying a cassette
none is needed (the cassette's placeholder is sent).
"""

from __future__ import annotations

import getpass
import os
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...client.backend import PASSWORD_PLACEHOLDER
from ...fleet.results import Results
from .parsing import parse, plural, prompt, subcommand

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["login"]


@subcommand("login")
@argument("targets", nargs="*", help="devices (default: all)")
@argument("--user", help="login user (default: the one already known, else your user name)")
@argument("--password-env", metavar="VAR", help="variable holding the password (else a hidden prompt)")
def login(magics: TunnelMagics, rest: str) -> Results:
    """Log in to devices (the password is never echoed or stored outside memory)."""
    args = parse(rest, login.parser)
    fleet = magics.need_fleet()
    targets = " ".join(args.targets) or "*"
    ids = fleet.select(targets)
    kwargs: dict[str, Any] = {"timeout": magics.timeout}
    if args.user is not None or args.password_env is not None or not fleet.has_login(ids):
        replaying = fleet.api.replaying  # a replay needs no password: it sends none
        kwargs["user"] = args.user or getpass.getuser()
        if args.password_env:
            if args.password_env not in os.environ and not replaying:
                raise UsageError(f"environment variable {args.password_env} is not set: export it, or omit it")
            kwargs["password_env"] = args.password_env
        elif replaying:
            kwargs["password"] = PASSWORD_PLACEHOLDER
        else:
            kwargs["password"] = prompt(f"password for {kwargs['user']} on {plural(len(ids), 'device')}: ")
    results = magics.call(fleet.login(ids, **kwargs))
    results.html_max_rows = magics.display_limit
    return results

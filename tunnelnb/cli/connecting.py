"""What ``tunnelnb run``, ``get``, ``put`` and ``shell`` share: where to connect, and the login password.

Their connection options are defined once too (:func:`.options.add_connection`,
:func:`.options.add_cloud`); these read them back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
import warnings
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import FleetSizeWarning, TunnelnbError

if TYPE_CHECKING:
    from ..fleet.fleet import Fleet
    from ..fleet.progress import TextProgress

__all__ = ["fleet_with_progress", "login_password", "where"]


def where(args: argparse.Namespace) -> dict[str, Any]:
    """What :func:`tunnelnb.connect` needs, from the connection options."""
    if args.huaweicloud:
        if not (args.region or args.endpoint):
            raise TunnelnbError("--huaweicloud needs --region R (or --endpoint URL of your instance)")
        return {
            "huaweicloud": args.region or True,
            "endpoint": args.endpoint,
            "instance_id": args.instance_id,
            # "demo" is the local platform's default project, never a cloud one: let the SDK's variable decide.
            "project_id": None if args.project_id == "demo" else args.project_id,
        }
    if not args.platform:
        raise TunnelnbError("no platform URL: pass --platform URL or set $TUNNELNB_URL")
    api_token = args.api_token or os.environ.get("TUNNELNB_API_TOKEN")
    if not api_token:
        raise TunnelnbError("no API token: set $TUNNELNB_API_TOKEN (or pass --api-token)")
    return {
        "url": args.platform,
        "project_id": args.project_id,
        "api_token": api_token,
        "ca_bundle": args.ca_bundle,
        "insecure": args.insecure,
    }


def login_password(args: argparse.Namespace) -> str:
    """The login password: ``$VAR`` of ``--password-env``, else a hidden prompt on a terminal."""
    password = os.environ.get(args.password_env)
    if password:
        return password
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    raise TunnelnbError(f"no login password: set ${args.password_env} (or run in a terminal to be asked)")


@contextlib.asynccontextmanager
async def fleet_with_progress(
    target: dict[str, Any], targets: Iterable[str], user: str, password: str
) -> AsyncIterator[tuple[Fleet, list[str], TextProgress]]:
    """The fleet at ``target``, the ids of ``targets`` logged in as ``user``, a progress line on stderr.

    The fleet is closed and the line cleared however the block ends.
    """
    from ..connection import connect
    from ..fleet.progress import TextProgress

    fleet = await connect(**target)
    try:
        ids = fleet.select(targets)
        fleet.set_login(ids, user, password)
        progress = TextProgress(len(ids), sys.stderr)
        shower = asyncio.create_task(progress.show())
        try:
            # One command logs every device in once anyway: the pool-size warning is for repeated runs.
            warnings.simplefilter("ignore", FleetSizeWarning)
            yield fleet, ids, progress
        finally:
            shower.cancel()
            progress.close()
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await fleet.close()

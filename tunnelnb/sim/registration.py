"""Registering simulated devices on a platform, and the secrets and passwords they use.

Kept apart from :mod:`tunnelnb.sim.fleet` because a fleet run in worker processes
(:mod:`tunnelnb.sim.workers`) registers every device once, in its parent, and its
workers only compute the same secrets.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

from ..client.api import PlatformAPI
from ..errors import PlatformError
from .profiles import DeviceProfile

__all__ = ["all_or_nothing", "device_secret", "random_password", "register_devices"]

log = logging.getLogger(__name__)

#: Registrations in flight at once (AddDevice is cheap; more only queue on the platform).
REGISTER_CONCURRENCY = 32


async def register_devices(
    platform_url: str,
    *,
    api_token: str,
    project_id: str,
    profiles: Sequence[DeviceProfile],
    ssl: Any = True,
    concurrency: int = REGISTER_CONCURRENCY,
) -> None:
    """AddDevice for each profile, with its tags and versions; a device registered already is reused."""
    sem = asyncio.Semaphore(max(1, concurrency))
    async with PlatformAPI(platform_url, project_id=project_id, api_token=api_token, ssl=ssl) as api:

        async def register(p: DeviceProfile) -> None:
            async with sem:
                try:
                    await api.add_device(
                        p.device_id,
                        device_secret(api_token, project_id, p.device_id),
                        device_id=p.device_id,
                        device_name=p.device_id,
                        product_id=p.product_id,
                        fw_version=p.fw_version,
                        sw_version=p.sw_version,
                        tags=p.tags,
                    )
                except PlatformError as exc:
                    if exc.status != 409:
                        raise
                    log.info("device %s is registered already: reusing it", p.device_id)

        await all_or_nothing(register(p) for p in profiles)


async def all_or_nothing(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently; at the first failure cancel the others, wait for them, raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:  # cancelled ourselves
        pending = set(tasks)
        raise
    finally:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    errors = [exc for t in tasks if not t.cancelled() and (exc := t.exception()) is not None]
    if errors:  # every exception retrieved, the first raised
        raise errors[0]


def random_password() -> str:
    """A random login password."""
    return secrets.token_urlsafe(12)


def device_secret(api_token: str, project_id: str, device_id: str) -> str:
    """A device secret known only to holders of the API token, and stable across restarts.

    A restarted ``tunnelnb sim`` finds its devices registered already; with the same
    secret their agents link again instead of failing authentication.
    """
    return hmac.new(api_token.encode(), f"tunnelnb-sim:{project_id}:{device_id}".encode(), hashlib.sha256).hexdigest()

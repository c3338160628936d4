"""TLS for the platform (``https``/``wss``) and for whoever connects to it.

Clients verify certificates by default, against the system's CAs or a given CA
bundle; turning verification off is an explicit ``insecure=True`` that warns
every time, because a tunnel carries SSH passwords.
"""

from __future__ import annotations

import logging
import ssl
import warnings

from .errors import InsecureTLSWarning, TLSConfigError

__all__ = ["client_ssl", "server_ssl"]

log = logging.getLogger(__name__)


def server_ssl(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """A server context for ``cert_file`` (PEM, with the chain) and its key (in ``cert_file`` if not given)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the TLS certificate {cert_file}: {exc}") from None
    return context


def client_ssl(ca_bundle: str | None = None, *, insecure: bool = False) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` takes: a verifying context (with ``ca_bundle`` if given), or False.

    ``insecure=True`` switches verification off and says so, as a warning and in the log.
    """
    if insecure:
        message = "TLS certificate verification is off (--insecure): the tunnel, passwords included, can be read"
        warnings.warn(message, InsecureTLSWarning, stacklevel=2)
        log.warning("%s", message)
        return False
    if ca_bundle is None:
        return True  # aiohttp's default: the system's CAs, host names checked
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the CA bundle {ca_bundle}: {exc}") from None

"""Huawei Cloud AK/SK request signing, sans I/O: canonical requests, signatures, verification.

The official Python SDK (``huaweicloudsdkcore.signer``) signs every API request it
sends with an access key (AK) and secret key (SK).  This module reproduces that
scheme for both ends: :func:`sign` computes the headers a client adds, and
:func:`verify` checks a received request, as the local platform does.  Nothing
here touches a socket; the tests drive it with plain values and compare it with
the SDK's own signer.

The scheme (``SDK-HMAC-SHA256``)::

    CanonicalRequest = METHOD "\\n" CanonicalURI "\\n" CanonicalQuery "\\n"
                       CanonicalHeaders "\\n" SignedHeaders "\\n" HexSHA256(body)
    StringToSign     = "SDK-HMAC-SHA256" "\\n" X-Sdk-Date "\\n" HexSHA256(CanonicalRequest)
    Signature        = Hex(HMAC-SHA256(SK, StringToSign))
    Authorization: SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;x-sdk-date;..., Signature=...

* CanonicalURI: the path percent-decoded, split at ``/``, each segment encoded again
  (everything but letters, digits and ``_.-~``), rejoined, with a trailing ``/``.
* CanonicalQuery: the ``(name, value)`` pairs sorted, both encoded the same way,
  joined as ``name=value`` with ``&``.
* CanonicalHeaders: one ``name:value`` line per signed header, the name lower case
  and the value stripped, in the order of SignedHeaders (the SDK signs every header
  it sets whose name has no ``_``, sorted: typically ``content-type``, ``host``,
  ``instance-id``, ``user-agent``, ``x-project-id``, ``x-sdk-date``), each line
  ending in ``\\n``.
* The body's hash is that of the empty string for an empty body; a non-empty body
  sent with ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` (the SDK's choice for
  non-JSON bodies) hashes as that literal value.
* ``X-Sdk-Date`` is UTC time as ``YYYYMMDDTHHMMSSZ``; a request is accepted within
  15 minutes of the server's clock, as API Gateway does.

The derived variant (``V11-HMAC-SHA256``), which the SDK uses for IoTDA's
standard and enterprise instance endpoints (``BasicCredentials(...)
.with_derived_predicate(...)``), differs in three places: the Authorization
header names ``Credential=AK/YYYYMMDD/region/service`` instead of ``Access=AK``;
that scope (``YYYYMMDD/region/service``) is a line of the string to sign, after the
date; and the HMAC key is the hex form of HKDF-SHA256(salt=AK, key=SK,
info=scope, 32 bytes) instead of the SK.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from ..errors import SignatureError

__all__ = [
    "ALGORITHM",
    "AUTHORIZATION_HEADER",
    "CONTENT_SHA256_HEADER",
    "DATE_HEADER",
    "DEFAULT_MAX_SKEW",
    "DERIVED_ALGORITHM",
    "EMPTY_SHA256",
    "IOTDA_SERVICE",
    "UNSIGNED_PAYLOAD",
    "Authorization",
    "Reason",
    "Verified",
    "canonical_headers",
    "canonical_query_string",
    "canonical_request",
    "canonical_uri",
    "derived_signing_key",
    "format_date",
    "parse_authorization",
    "parse_date",
    "parse_query",
    "payload_hash",
    "sign",
    "signature",
    "string_to_sign",
    "verify",
]

ALGORITHM = "SDK-HMAC-SHA256"
DERIVED_ALGORITHM = "V11-HMAC-SHA256"
AUTHORIZATION_HEADER = "Authorization"
DATE_HEADER = "X-Sdk-Date"
CONTENT_SHA256_HEADER = "X-Sdk-Content-Sha256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Seconds a signature's X-Sdk-Date may differ from the server's clock (API Gateway: 15 minutes).
DEFAULT_MAX_SKEW = 15 * 60
#: IoTDA's service name in derived-signature scopes (``huaweicloudsdkiotda``: ``_with_derived_auth_service_name``).
IOTDA_SERVICE = "iotdm"
#: Headers every signature must cover: without them a signature could be replayed elsewhere or later.
REQUIRED_SIGNED_HEADERS = ("host", DATE_HEADER.lower())

_DATE_RE = re.compile(r"\d{8}T\d{6}Z")
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class Reason(enum.Enum):
    """Why a signature was refused (every one is HTTP 401 on the platform)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    UNSUPPORTED_ALGORITHM = "unsupported algorithm"
    UNSIGNED_HEADER = "unsigned header"
    MISSING_HEADER = "missing header"
    BAD_DATE = "bad date"
    STALE = "stale"
    BAD_SCOPE = "bad scope"
    UNKNOWN_KEY = "unknown key"
    BAD_SIGNATURE = "bad signature"


@dataclass(frozen=True)
class Authorization:
    """A parsed ``Authorization`` header of an AK/SK-signed request."""

    algorithm: str
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str
    #: ``YYYYMMDD/region/service`` for the derived algorithm, else None.
    scope: str | None = None

    def header_value(self) -> str:
        names = ";".join(self.signed_headers)
        if self.algorithm == DERIVED_ALGORITHM:
            credential = f"Credential={self.access_key}/{self.scope}"
        else:
            credential = f"Access={self.access_key}"
        return f"{self.algorithm} {credential}, SignedHeaders={names}, Signature={self.signature}"


@dataclass(frozen=True)
class Verified:
    """A request whose signature checked out."""

    access_key: str
    algorithm: str
    signed_headers: tuple[str, ...]
    date: datetime
    scope: str | None = None


# ---------------------------------------------------------------------------
# Small helpers


def mask(access_key: str) -> str:
    """An access key as messages may show it: the first four characters at most."""
    return (access_key[:4] if len(access_key) >= 12 else "") + "****"


def _pairs(headers: Headers) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), str(value)) for name, value in items]


def _header(headers: Headers, name: str) -> str | None:
    """The value of header ``name`` (any case), stripped; several values are joined with commas."""
    wanted = name.lower()
    values = [value.strip() for key, value in _pairs(headers) if key.lower() == wanted]
    return ",".join(values) if values else None


def _encode(text: str) -> str:
    """Percent-encode everything but unreserved characters (the SDK's ``quote(s, safe='~')``)."""
    return quote(text, safe="~")


def format_date(when: datetime | float) -> str:
    """``when`` (a datetime, naive meaning UTC, or seconds since the epoch) as an X-Sdk-Date value."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, UTC)
    elif when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime(DATE_FORMAT)


def parse_date(value: str | None) -> datetime:
    """An X-Sdk-Date value as an aware UTC datetime; :class:`SignatureError` (BAD_DATE) if it is not one."""
    text = (value or "").strip()
    if _DATE_RE.fullmatch(text):
        try:
            return datetime.strptime(text, DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            pass
    raise SignatureError(Reason.BAD_DATE, f"the {DATE_HEADER} header is missing or not UTC time as YYYYMMDDTHHMMSSZ")


# ---------------------------------------------------------------------------
# Canonical request


def canonical_uri(path: str) -> str:
    """The path as signed: decoded, each segment re-encoded, with a trailing slash."""
    encoded = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def parse_query(query: str) -> list[tuple[str, str]]:
    """A raw query string's ``(name, value)`` pairs, percent-decoded (``+`` stays a plus)."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_query_string(query: str | Iterable[tuple[str, str]]) -> str:
    """The query as signed: pairs sorted by name then value, encoded, joined with ``&``."""
    pairs = parse_query(query) if isinstance(query, str) else [(str(k), str(v)) for k, v in query]
    return "&".join(f"{_encode(name)}={_encode(value)}" for name, value in sorted(pairs))


def canonical_headers(headers: Headers, signed_headers: Iterable[str]) -> str:
    """``name:value`` lines for the signed headers, each ending in a newline."""
    lines = []
    for name in signed_headers:
        value = _header(headers, name)
        if value is None:
            raise SignatureError(Reason.MISSING_HEADER, f"signed header {name} is not in the request")
        lines.append(f"{name}:{value}\n")
    return "".join(lines)


def payload_hash(body: bytes, headers: Headers) -> str:
    """The body's hex SHA-256, or the declared X-Sdk-Content-Sha256 for a non-empty body."""
    if not body:
        return EMPTY_SHA256
    declared = _header(headers, CONTENT_SHA256_HEADER)
    if declared:
        return declared
    return hashlib.sha256(body).hexdigest()


def _split_target(target: str) -> tuple[str, str]:
    path, _, query = target.partition("?")
    return path, query


def canonical_request(
    method: str, target: str, headers: Headers, signed_headers: Iterable[str], body: bytes = b""
) -> str:
    """The canonical request of ``METHOD target`` (the request-target: ``/path?query`` as sent).

    Header names are used as given (the SDK gives them in lower case) and looked up in any case.
    """
    names = list(signed_headers)
    path, query = _split_target(target)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query_string(query),
            canonical_headers(headers, names),
            ";".join(names),
            payload_hash(body, headers),
        ]
    )


def string_to_sign(algorithm: str, sdk_date: str, canonical: str, scope: str | None = None) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    if algorithm == DERIVED_ALGORITHM:
        return f"{algorithm}\n{sdk_date}\n{scope}\n{digest}"
    return f"{algorithm}\n{sdk_date}\n{digest}"


def derived_signing_key(access_key: str, secret_key: str, scope: str) -> bytes:
    """The derived algorithm's HMAC key: hex(HKDF-SHA256(salt=AK, key=SK, info=scope, length 32))."""
    prk = hmac.new(access_key.encode("utf-8"), secret_key.encode("utf-8"), hashlib.sha256).digest()
    okm = hmac.new(prk, scope.encode("utf-8") + b"\x01", hashlib.sha256).digest()
    return okm.hex().encode("ascii")


def signature(algorithm: str, access_key: str, secret_key: str, text: str, scope: str | None = None) -> str:
    """The hex signature of a string to sign."""
    if algorithm == DERIVED_ALGORITHM:
        if not scope:
            raise ValueError("the derived algorithm needs a scope (YYYYMMDD/region/service)")
        key = derived_signing_key(access_key, secret_key, scope)
    else:
        key = secret_key.encode("utf-8")
    return hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------
# Authorization header


def parse_authorization(value: str | None) -> Authorization:
    """Parse ``SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…`` (or the V11 form)."""
    text = (value or "").strip()
    if not text:
        raise SignatureError(Reason.MISSING, f"the request has no {AUTHORIZATION_HEADER} header")
    algorithm, _, rest = text.partition(" ")
    if algorithm not in (ALGORITHM, DERIVED_ALGORITHM):
        shown = algorithm if _TOKEN_RE.fullmatch(algorithm) and len(algorithm) <= 40 else "?"
        raise SignatureError(
            Reason.UNSUPPORTED_ALGORITHM,
            f"unsupported signing algorithm {shown}; this platform verifies {ALGORITHM} and {DERIVED_ALGORITHM}",
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, field_value = part.strip().partition("=")
        if not eq or not name or name in fields:
            raise _malformed(algorithm)
        fields[name] = field_value.strip()
    credential_field = "Credential" if algorithm == DERIVED_ALGORITHM else "Access"
    if set(fields) != {credential_field, "SignedHeaders", "Signature"}:
        raise _malformed(algorithm)
    names = tuple(fields["SignedHeaders"].split(";"))
    if not all(_TOKEN_RE.fullmatch(name) for name in names):
        raise _malformed(algorithm)
    sig = fields["Signature"]
    if not _HEX64_RE.fullmatch(sig):
        raise _malformed(algorithm)
    scope = None
    access_key = fields[credential_field]
    if algorithm == DERIVED_ALGORITHM:
        access_key, _, scope = access_key.partition("/")
        if len(scope.split("/")) != 3 or not all(scope.split("/")):
            raise _malformed(algorithm)
    if not access_key or any(c.isspace() for c in access_key):
        raise _malformed(algorithm)
    return Authorization(algorithm, access_key, names, sig.lower(), scope)


def _malformed(algorithm: str) -> SignatureError:
    credential = "Credential=AK/YYYYMMDD/region/service" if algorithm == DERIVED_ALGORITHM else "Access=AK"
    return SignatureError(
        Reason.MALFORMED,
        f"malformed {AUTHORIZATION_HEADER} header; expected "
        f"'{algorithm} {credential}, SignedHeaders=host;x-sdk-date;..., Signature=<64 hex digits>'",
    )


# ---------------------------------------------------------------------------
# The two ends


def sign(
    method: str,
    target: str,
    headers: Headers,
    body: bytes = b"",
    *,
    access_key: str,
    secret_key: str,
    when: datetime | float,
    region: str | None = None,
    service: str = IOTDA_SERVICE,
) -> dict[str, str]:
    """The headers (X-Sdk-Date, Authorization) that sign ``METHOD target`` as the SDK would.

    ``headers`` must hold the Host header the request will carry.  Like the SDK,
    every given header whose name has no ``_`` is signed.  With ``region``, the
    derived algorithm is used (scope ``YYYYMMDD/region/service``).
    """
    if not access_key or not secret_key:
        raise ValueError("access_key and secret_key must not be empty")
    pairs = [(name, value) for name, value in _pairs(headers) if name.lower() not in ("x-sdk-date", "authorization")]
    if _header(pairs, "host") is None:
        raise ValueError("a signed request needs its Host header")
    sdk_date = format_date(when)
    pairs.append((DATE_HEADER, sdk_date))
    names = tuple(sorted({name.lower() for name, _ in pairs if "_" not in name}))
    algorithm = DERIVED_ALGORITHM if region else ALGORITHM
    scope = f"{sdk_date[:8]}/{region}/{service}" if region else None
    canonical = canonical_request(method, target, pairs, names, body)
    sig = signature(algorithm, access_key, secret_key, string_to_sign(algorithm, sdk_date, canonical, scope), scope)
    auth = Authorization(algorithm, access_key, names, sig, scope)
    return {DATE_HEADER: sdk_date, AUTHORIZATION_HEADER: auth.header_value()}


def verify(
    method: str,
    target: str,
    headers: Headers,
    body: bytes = b"",
    *,
    secret_for: Callable[[str], str | None],
    now: float,
    max_skew: float = DEFAULT_MAX_SKEW,
    services: Iterable[str] = (IOTDA_SERVICE,),
) -> Verified:
    """Check an AK/SK-signed request; :class:`SignatureError` says why it is refused.

    ``target`` is the request-target as received (``/path?query``, still
    percent-encoded); ``secret_for`` maps an access key to its secret key (None
    when unknown); ``now`` is the server's clock in seconds since the epoch.
    """
    auth = parse_authorization(_header(headers, AUTHORIZATION_HEADER))
    signed = {name.lower() for name in auth.signed_headers}
    if not all(name in signed for name in REQUIRED_SIGNED_HEADERS):
        raise SignatureError(
            Reason.UNSIGNED_HEADER,
            "the signature must cover the host and x-sdk-date headers (SignedHeaders)",
            access_key=auth.access_key,
        )
    sdk_date = (_header(headers, DATE_HEADER) or "").strip()
    when = parse_date(sdk_date)
    if abs(now - when.timestamp()) > max_skew:
        raise SignatureError(
            Reason.STALE,
            f"signature expired, signature time:{sdk_date}, server time:{format_date(now)} "
            f"(more than {max_skew:g} seconds apart: check the client's clock)",
            access_key=auth.access_key,
        )
    if auth.scope is not None:
        day, _, service = auth.scope.split("/")
        if day != sdk_date[:8] or service not in set(services):
            raise SignatureError(
                Reason.BAD_SCOPE,
                f"credential scope {auth.scope} does not match the {DATE_HEADER} day {sdk_date[:8]} "
                f"and the service ({', '.join(sorted(set(services)))})",
                access_key=auth.access_key,
            )
    secret = secret_for(auth.access_key)
    if not secret:
        raise SignatureError(
            Reason.UNKNOWN_KEY,
            f"Get secretKey failed, ak:{mask(auth.access_key)}, err:ak not exist",
            access_key=auth.access_key,
        )
    try:
        canonical = canonical_request(method, target, headers, auth.signed_headers, body)
    except SignatureError as exc:
        exc.access_key = auth.access_key
        raise
    expected = signature(
        auth.algorithm,
        auth.access_key,
        secret,
        string_to_sign(auth.algorithm, sdk_date, canonical, auth.scope),
        auth.scope,
    )
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError(Reason.BAD_SIGNATURE, "verify aksk signature fail", access_key=auth.access_key)
    return Verified(auth.access_key, auth.algorithm, auth.signed_headers, when, auth.scope)

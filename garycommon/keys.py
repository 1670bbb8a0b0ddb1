"""Who is calling: user API keys, the services' shared SERVICE_KEY, the operator's ADMIN_KEY, signed gateway callbacks
and the callback URLs the gateway may POST to. One module so every service draws the same lines (docs/security.md).

* A user key (API_KEYS) is a musician's or a friend's; per-key queue limits count it.
* The service key (SERVICE_KEY) is what gary, jerry and terry present to the gateway (and gary to terry). No user limit
  counts it; a service forwards the end client's identity as the fairness key instead (`key_identity`).
* The admin key (ADMIN_KEY) changes the gateway's GPUs; without one those routes answer loopback callers only.
* Gateway -> gary callbacks carry an HMAC of their body made with the service key, so nobody else can forge `ready`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from pydantic import SecretStr

from .errors import ErrorCode, GaryError

SIGNATURE_HEADER = "X-Gary-Signature"
SIGNATURE_MAX_AGE_S = 300.0  # a captured callback can't be replayed later (the notification id dedups within it)
KEY_PREFIX = "/k/"  # base-URL form: http://host:8000/k/<key>/... for clients that can only be given a base URL
KEY_HINT = ("send it as X-API-Key or Authorization: Bearer, an api_key query parameter, the Socket.IO auth "
            "payload {api_key}, or a base URL ending in /k/<key>")


def secret(value: SecretStr | str | None) -> str | None:
    """The plain value of an optional secret setting ('' counts as unset)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value or None


def same(given: str | None, expected: str | None) -> bool:
    """Constant-time equality; never true for a missing value."""
    return bool(given) and bool(expected) and hmac.compare_digest(str(given).encode(), str(expected).encode())


def one_of(given: str | None, keys: list[str]) -> bool:
    found = False
    for key in keys:  # no early exit: the time taken does not say which key was close
        found = same(given, key) or found
    return found


def key_identity(api_key: str) -> str:
    """The stored, hashed name of a user key: the gateway's per-key identity. A service that forwards a user's
    requests passes this as `client_key`, so the user counts as the same key as when calling the gateway directly."""
    return "k" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def presented_key(headers: Mapping[str, str], query: str = "") -> str:
    """The key a request carries: X-API-Key, Authorization: Bearer, or an `api_key` query parameter ('' if none)."""
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization") or ""
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given and query and "api_key=" in query:
        given = (parse_qs(query).get("api_key") or [""])[0]
    return given.strip()


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class Who:
    """An authenticated caller: its key (None when keys are off and it sent none) and whether it is a service."""

    key: str | None
    service: bool = False


def caller(request: Request, api_keys: list[str], service_key: SecretStr | str | None, *,
           admin_key: SecretStr | str | None = None) -> Who:
    """Accept a user key (or the admin key), or the service key; refuse (401) anything else while keys are on.

    With API_KEYS empty anyone may call, and a service key, when presented and right, still marks a service."""
    given = presented_key(request.headers)
    svc = secret(service_key)
    if svc and same(given, svc):
        return Who(given, service=True)
    if not api_keys:
        return Who(None)
    if one_of(given, api_keys) or same(given, secret(admin_key)):
        return Who(given)
    raise GaryError(ErrorCode.UNAUTHORIZED, ("wrong API key" if given else "this server needs an API key")
                    + " (send X-API-Key or Authorization: Bearer)")


def require_admin(request: Request, admin_key: SecretStr | str | None) -> None:
    """ADMIN_KEY when one is set; without one only callers on this machine (loopback) may change the GPUs."""
    admin = secret(admin_key)
    if admin:
        if not same(presented_key(request.headers), admin):
            raise GaryError(ErrorCode.UNAUTHORIZED, "this admin route needs ADMIN_KEY (X-API-Key or Authorization: "
                            "Bearer); user keys are not enough")
        return
    host = request.client.host if request.client else None
    if not is_loopback(host):
        raise GaryError(ErrorCode.UNAUTHORIZED, "admin routes answer only on this machine (loopback) unless the "
                        "server sets ADMIN_KEY", http_status=403)


# --- signed gateway callbacks -------------------------------------------------------------------------------------
def _mac(key: str, stamp: str, notification_id: str, body: bytes) -> str:
    msg = stamp.encode() + b"." + notification_id.encode() + b"." + body
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def sign(key: str, notification_id: str, body: bytes, now: float | None = None) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.id.body">`: what the gateway puts in X-Gary-Signature."""
    stamp = str(int(time.time() if now is None else now))
    return f"t={stamp},v1={_mac(key, stamp, notification_id, body)}"


def signature_problem(key: str, notification_id: str, body: bytes, header: str | None,
                      now: float | None = None) -> str | None:
    """Why a callback's signature is not acceptable, or None when it is right and fresh."""
    if not header:
        return f"unsigned notification (the gateway signs every callback with SERVICE_KEY in {SIGNATURE_HEADER})"
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    stamp, mac = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isdigit() or not mac:
        return f"malformed {SIGNATURE_HEADER}"
    if abs((time.time() if now is None else now) - int(stamp)) > SIGNATURE_MAX_AGE_S:
        return "stale notification signature"
    if not hmac.compare_digest(mac, _mac(key, stamp, notification_id, body)):
        return "bad notification signature"
    return None


# --- callback URLs ------------------------------------------------------------------------------------------------
def callback_base(url: str) -> str | None:
    """`scheme://host:port/path` (lower-case scheme and host, explicit port, no trailing '/'), or None when the URL
    carries anything a base must not: user info, a query, a fragment, or no host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port is None:
        return None
    if parts.username or parts.password or parts.query or parts.fragment or "\\" in url:
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}:{port}{parts.path.rstrip('/')}"


def allowed_callback_bases(gary_url: str, extra: list[str]) -> set[str]:
    """GARY_URL, plus each QUEUE_CALLBACK_HOSTS entry: a full base URL, or a bare host standing for GARY_URL's
    scheme, port and path on that host (compose lists `gary,<worker address>`)."""
    out: set[str] = set()
    gary = urlsplit(gary_url) if gary_url else None
    for entry in ([gary_url] if gary_url else []) + list(extra):
        if "://" not in entry:
            if gary is None:
                continue
            port = f":{gary.port}" if gary.port else ""
            entry = f"{gary.scheme}://{entry}{port}{gary.path}"
        base = callback_base(entry)
        if base:
            out.add(base)
    return out

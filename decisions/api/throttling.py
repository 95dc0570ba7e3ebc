"""Per-token rate limits counted in Redis, so every gunicorn worker (and host) shares one count.

A view opts in by naming a ``throttle_scope`` (``predict``, ``train``); the rate of a scope is ``settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"][scope]`` in DRF's
``"N/s|m|h|d"`` form. Counting is a fixed window per (scope, caller), atomic in Redis (a pipelined INCRBY and EXPIRE),
so concurrent workers can never both take the last slot. A process takes slots in leases: one
INCRBY reserves up to ``RLV3_THROTTLE_LEASE`` slots (never more than 1 % of the limit, so a limit
under 200 is counted one request at a time) and it serves them from memory until they run out or
the window ends. Nobody ever gets more than the limit; a lease a process does not use up stays
counted, so with W processes up to (W - 1) leases of the limit can go unserved in a window. At
50,000/min a prediction then costs a Redis round trip once in 100 requests instead of every time.
A refused request is answered 429 with ``Retry-After`` (seconds to the window's end) by DRF.

The caller is the API token (a hash of it: keys in Redis never hold a secret), else the session
user, else the client address. If Redis is unreachable the request is allowed: throttling protects
the service, it must not take trading decisions down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time

import redis
from django.conf import settings
from rest_framework.throttling import BaseThrottle

log = logging.getLogger(__name__)

KEY_PREFIX = "rlv3:throttle"
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_client: redis.Redis | None = None
_client_url: str | None = None


def parse_rate(rate: str) -> tuple[int, int]:
    """``"100/min"`` -> (100 requests, 60 seconds). The period's first letter counts (s, m, h, d)."""
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.strip()[0].lower()]


def _redis() -> redis.Redis:
    global _client, _client_url
    if _client is None or _client_url != settings.REDIS_URL:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        _client_url = settings.REDIS_URL
    return _client


def token_identity(key: str) -> str:
    """The throttle identity of an API token: a hash of it (keys in Redis never hold a secret)."""
    return "t:" + hashlib.sha256(key.encode()).hexdigest()[:24]


def caller_identity(request) -> str:
    """A stable, secret-free name of who is calling: token hash, user id or address."""
    token = getattr(request, "auth", None)
    key = getattr(token, "key", None)
    if key:
        return token_identity(key)
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return f"u:{user.pk}"
    return "a:" + (request.META.get("REMOTE_ADDR") or "unknown")


class RedisRateThrottle(BaseThrottle):
    """Fixed-window limit per (view scope, caller), shared through Redis."""

    def __init__(self):
        self._wait: float | None = None

    def allow_request(self, request, view) -> bool:
        scope = getattr(view, "throttle_scope", None)
        self._wait = consume(scope, caller_identity(request)) if scope else None
        return self._wait is None

    def wait(self) -> float | None:
        """Seconds until the caller's window ends (sent as Retry-After)."""
        return self._wait


def lease_size(limit: int) -> int:
    """Slots one Redis call reserves for a limit: 1 % of it, at most RLV3_THROTTLE_LEASE, at least 1."""
    return max(1, min(settings.RLV3_THROTTLE_LEASE, limit // 100))


# (scope, identity) -> (window, slots left of this process's lease in that window)
_leases: dict[tuple[str, str], tuple[int, int]] = {}
_leases_lock = threading.Lock()
_MAX_LEASES = 10_000


def consume(scope: str, identity: str) -> float | None:
    """Count one request of ``identity`` in ``scope``'s current window: None if it is allowed,
    else the seconds until the window ends (Retry-After). A scope without a rate is unlimited."""
    rate = settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}).get(scope)
    if not rate:
        return None
    limit, period = parse_rate(rate)
    now = time.time()
    window = int(now // period)
    lease_key = (scope, identity)
    with _leases_lock:
        held = _leases.get(lease_key)
        if held is not None and held[0] == window and held[1] > 0:
            _leases[lease_key] = (window, held[1] - 1)
            return None
    size = lease_size(limit)
    key = f"{KEY_PREFIX}:{scope}:{identity}:{window}"
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.incrby(key, size)
        # The window number is in the key, so refreshing the expiry cannot extend a window
        # (and EXPIRE ... NX needs Redis 7; the embedded server is 6.2).
        pipe.expire(key, period + 1)
        count = pipe.execute()[0]
    except redis.RedisError as exc:
        log.warning("throttle store unavailable, allowing the request: %s", exc.__class__.__name__)
        return None
    granted = min(size, limit - (count - size))  # this lease's slots (count - size, count] within the limit
    if granted >= 1:
        with _leases_lock:
            if len(_leases) >= _MAX_LEASES:
                _leases.clear()  # many callers: start over (their unused slots stay counted)
            _leases[lease_key] = (window, granted - 1)
        return None
    return max(1.0, math.ceil((window + 1) * period - now))


def leases_clear() -> None:
    """Forget this process's leases (tests; their slots stay counted in Redis)."""
    with _leases_lock:
        _leases.clear()

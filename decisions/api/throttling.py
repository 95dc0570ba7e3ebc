"""Per-token rate limits counted in Redis, so every gunicorn worker (and host) shares one count.

A view opts in by naming a ``throttle_scope`` (``predict``, ``train``); the rate of a scope is ``settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"][scope]`` in DRF's
``"N/s|m|h|d"`` form. Counting is a fixed window per (scope, caller): one pipelined INCR and
EXPIRE per request, atomic in Redis, so concurrent workers can never both take the last slot.
A refused request is answered 429 with ``Retry-After`` (seconds to the window's end) by DRF.

The caller is the API token (a hash of it: keys in Redis never hold a secret), else the session
user, else the client address. If Redis is unreachable the request is allowed: throttling protects
the service, it must not take trading decisions down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
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


def caller_identity(request) -> str:
    """A stable, secret-free name of who is calling: token hash, user id or address."""
    token = getattr(request, "auth", None)
    key = getattr(token, "key", None)
    if key:
        return "t:" + hashlib.sha256(key.encode()).hexdigest()[:24]
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
        rate = settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}).get(scope) if scope else None
        if not rate:
            return True
        limit, period = parse_rate(rate)
        now = time.time()
        window = int(now // period)
        key = f"{KEY_PREFIX}:{scope}:{caller_identity(request)}:{window}"
        try:
            pipe = _redis().pipeline(transaction=False)
            pipe.incr(key)
            # The window number is in the key, so refreshing the expiry cannot extend a window
            # (and EXPIRE ... NX needs Redis 7; the embedded server is 6.2).
            pipe.expire(key, period + 1)
            count = pipe.execute()[0]
        except redis.RedisError as exc:
            log.warning("throttle store unavailable, allowing the request: %s", exc.__class__.__name__)
            return True
        if count <= limit:
            return True
        self._wait = max(1.0, math.ceil((window + 1) * period - now))
        return False

    def wait(self) -> float | None:
        """Seconds until the caller's window ends (sent as Retry-After)."""
        return self._wait

"""DRF token authentication that remembers a token's user for a few seconds per process.

Looking the token up costs a query on every request, the largest share of a prediction after the
insert of its Decision. A token (or user) that is revoked or deactivated stops working within
``RLV3_TOKEN_CACHE_SECONDS`` (default 5; 0 turns the cache off) in every process.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings
from rest_framework.authentication import TokenAuthentication

_MAX_ENTRIES = 10_000
_cache: dict[str, tuple[float, object, object]] = {}
_lock = threading.Lock()


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str):
        ttl = settings.RLV3_TOKEN_CACHE_SECONDS
        now = time.monotonic()
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1], hit[2]
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed as before
        if ttl > 0:
            with _lock:
                if len(_cache) >= _MAX_ENTRIES:
                    _cache.clear()  # many distinct tokens: start over rather than grow without bound
                _cache[key] = (now, user, token)
        return user, token


def token_cache_clear() -> None:
    """Forget every remembered token (tests; an operator revoking tokens in this process)."""
    with _lock:
        _cache.clear()

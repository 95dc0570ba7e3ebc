"""Failed logins: django-axes locks a (username, client address) pair out of the admin login after
``RLV3_LOGIN_FAILURE_LIMIT`` failures, for ``RLV3_LOGIN_COOLOFF_MINUTES`` after the last of them.
Attempts are rows in PostgreSQL (django-axes's database handler), so every worker and host shares
them, and operators see them in the admin and clear them with ``manage.py axes_reset``.

A pair, not a username alone: locking the username would let anyone lock the operators out of
their own admin by failing on purpose. A successful login clears the pair's failures.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: ``REMOTE_ADDR``, or behind ``RLV3_TRUSTED_PROXIES`` proxies (nginx.conf
    is one) the address the outermost of them saw. Each proxy appends the address it was called
    from to X-Forwarded-For, so that one is the entry ``RLV3_TRUSTED_PROXIES`` from the right;
    entries further left come from the client and are never trusted."""
    proxies = settings.RLV3_TRUSTED_PROXIES
    if proxies:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR")


def lockout_response(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """429 with Retry-After: a failure during the lockout starts the cool-off again, so the wait
    is the whole cool-off."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    response = HttpResponse(
        f"Too many failed logins for this username from this address. Try again in {seconds // 60} minutes.\n",
        status=429, content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(seconds)
    return response

"""Liveness and readiness: ``/healthz?live`` and ``/healthz``.

``/healthz?live`` answers 200 as long as the process serves requests (restart it when it does not).

``/healthz`` checks, in order, and names each failed one in ``failed``:

- ``database``   — PostgreSQL (or SQLite) answers ``SELECT 1``;
- ``redis``      — Redis answers PING;
- ``model``      — the champion alias exists and this process serves exactly that version;
- ``subscriber`` — the newest subscriber heartbeat is at most RLV3_SUBSCRIBER_MAX_AGE_SECONDS old.

Status codes: the datastores gate readiness (503 ``unavailable``: no request can be served without
them). A missing champion or a dead subscriber leaves the web process able to answer, so it stays
in the load balancer with 200 ``degraded`` and the failed check named; monitoring that wants any
failure to page uses ``/healthz?strict``, which answers 503 for every failed check.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from . import selectors
from .serving import policy_server

GATING_CHECKS = ("database", "redis")


def _timed(check: Callable[[], tuple[bool, str]]) -> dict:
    start = time.perf_counter()
    try:
        ok, detail = check()
    except Exception as exc:  # a probe reports failures, it never raises them
        ok, detail = False, exc.__class__.__name__
    return {"ok": ok, "detail": detail, "ms": round((time.perf_counter() - start) * 1000, 2)}


def check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True, connection.vendor
    except Exception as exc:
        # A broken connection must not be reused by the next request: drop it now.
        connection.close_if_unusable_or_obsolete()
        return False, f"{exc.__class__.__name__}: database unreachable"


def check_redis() -> tuple[bool, str]:
    try:
        selectors.redis_client().ping()
        return True, "PONG"
    except Exception as exc:
        return False, f"{exc.__class__.__name__}: redis unreachable"


def check_model() -> tuple[bool, str]:
    from training.selectors import alias_versions

    served = policy_server().describe()
    champion = alias_versions().get("champion")
    if champion is None:
        return False, f"no champion yet: serving {served['served_version']}"
    if not served["model_loaded"] or served["served_version"] != str(champion):
        why = served["refused_versions"].get(str(champion)) or served["load_error"] or "not loaded"
        return False, f"champion is v{champion} but this process serves {served['served_version']}: {why}"[:300]
    return True, f"serving champion v{champion}"


def check_subscriber() -> tuple[bool, str]:
    health = selectors.subscriber_health()
    if health.get("error"):
        return False, health["error"]
    age = health.get("heartbeat_age_seconds")
    limit = settings.RLV3_SUBSCRIBER_MAX_AGE_SECONDS
    if age is None:
        return False, "no subscriber heartbeat"
    detail = f"newest heartbeat {age:.1f}s old (limit {limit:g}s), lag {health.get('lag')}"
    return age <= limit, detail


def readiness() -> dict:
    """Run every check; {"status": ok|degraded|unavailable, "failed": [...], "checks": {...}}."""
    checks = {"database": _timed(check_database), "redis": _timed(check_redis)}
    # Without the registry the model check has nothing to compare; without Redis no heartbeat.
    checks["model"] = _timed(check_model) if checks["database"]["ok"] else {"ok": False, "detail": "database unreachable", "ms": 0.0}
    checks["subscriber"] = _timed(check_subscriber) if checks["redis"]["ok"] else {"ok": False, "detail": "redis unreachable", "ms": 0.0}
    failed = [name for name, check in checks.items() if not check["ok"]]
    if any(name in GATING_CHECKS for name in failed):
        status = "unavailable"
    else:
        status = "degraded" if failed else "ok"
    return {"status": status, "failed": failed, "checks": checks}


@require_GET
def healthz(request):
    """``?live``: liveness. Otherwise readiness (503 when a datastore fails; ``?strict``: any check)."""
    if "live" in request.GET:
        return JsonResponse({"status": "ok"})
    body = readiness()
    strict = "strict" in request.GET
    healthy = body["status"] == "ok" or (body["status"] == "degraded" and not strict)
    return JsonResponse(body, status=200 if healthy else 503)

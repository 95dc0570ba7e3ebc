"""Liveness and readiness: /healthz checks PostgreSQL, Redis, the champion and the subscriber."""

from __future__ import annotations

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from . import selectors
from .serving import policy_server


def _check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True, "ok"
    except Exception as exc:
        connection.close_if_unusable_or_obsolete()
        return False, f"{exc.__class__.__name__}"


def _check_redis() -> tuple[bool, str]:
    try:
        selectors.redis_client().ping()
        return True, "ok"
    except Exception as exc:
        return False, f"{exc.__class__.__name__}"


@require_GET
def healthz(request):
    """Liveness with ?live (process answers); readiness by default (dependencies answer)."""
    if "live" in request.GET:
        return JsonResponse({"status": "ok"})
    checks: dict[str, dict] = {}
    ok, detail = _check_database()
    checks["database"] = {"ok": ok, "detail": detail}
    ok, detail = _check_redis()
    checks["redis"] = {"ok": ok, "detail": detail}
    if checks["database"]["ok"]:
        served = policy_server().describe()
        checks["model"] = {"ok": served["model_loaded"], "detail": f"serving {served['served_version']}"}
    else:
        checks["model"] = {"ok": False, "detail": "registry unavailable"}
    sub = selectors.subscriber_health() if checks["redis"]["ok"] else {"alive": False, "heartbeat_age_seconds": None}
    checks["subscriber"] = {"ok": sub["alive"], "detail": f"heartbeat age {sub.get('heartbeat_age_seconds')}s"}
    # The model and subscriber are reported but only the datastores gate readiness: a fresh
    # deployment serving the untrained fallback still answers requests correctly.
    ready = checks["database"]["ok"] and checks["redis"]["ok"]
    failed = [name for name, c in checks.items() if not c["ok"]]
    return JsonResponse({"status": "ok" if ready else "unavailable", "failed": failed, "checks": checks}, status=200 if ready else 503)

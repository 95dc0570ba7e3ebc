"""JSON errors everywhere: {"error": message, "field": name-or-null, "detail": ...}."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

log = logging.getLogger(__name__)


def _first_field_error(detail, prefix: str = "") -> tuple[str | None, str]:
    """Walk DRF's nested error detail to the first (field path, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # ListField item errors are keyed by index
                name = f"{prefix}[{key}]"
            elif key in ("non_field_errors", "__root__") and prefix:
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors" and not prefix:
                name = None
            field, message = _first_field_error(value, name or "")
            return field or name, message
    if isinstance(detail, list):
        for index, item in enumerate(detail):
            if isinstance(item, (dict, list)) and item:
                if isinstance(item, dict):
                    return _first_field_error(item, f"{prefix}[{index}]" if prefix else f"[{index}]")
                return _first_field_error(item, prefix)
            if item:
                return (prefix or None), str(item)
    return (prefix or None), str(detail)


# Retry-After of a 503 while the database is unreachable (seconds).
DATABASE_RETRY_AFTER = 5


def database_unavailable(exc: Exception) -> JsonResponse:
    """The answer while the database is unreachable (connection refused or lost): the client
    should retry, and the answer must say so in JSON, not as an HTML 500."""
    log.warning("database unavailable: %s", exc.__class__.__name__)
    response = JsonResponse({"error": "the database is unavailable; retry shortly", "field": None}, status=503)
    response["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


def exception_handler(exc, context):
    if isinstance(exc, (OperationalError, InterfaceError)):  # other database errors stay 500s
        return database_unavailable(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_field_error(exc.detail)
        response.data = {"error": message, "field": field, "detail": exc.detail}
    elif isinstance(response.data, dict) and "detail" in response.data:
        body = {"error": str(response.data["detail"])}
        body.update({k: v for k, v in response.data.items() if k != "detail"})
        response.data = body
    if response.status_code == status.HTTP_429_TOO_MANY_REQUESTS and "Retry-After" not in response:
        response["Retry-After"] = "1"
    return response


def error_response(message: str, *, status_code: int, field: str | None = None, **extra) -> Response:
    body = {"error": message, "field": field}
    body.update(extra)
    return Response(body, status=status_code)

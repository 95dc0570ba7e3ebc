"""Request id: every request gets one, every log line of the request carries it, the response echoes it."""

from __future__ import annotations

import re
import uuid

import structlog
from django.core.signals import request_finished

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept when it is a plausible id (a proxy's or the client's); anything else —
# too long, or characters that could forge log lines — is replaced by a fresh one.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def request_id_from(header_value: str | None) -> str:
    """The incoming X-Request-ID when it is valid, else a new uuid4 hex (32 characters)."""
    if header_value and _VALID_REQUEST_ID.match(header_value):
        return header_value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Bind ``request_id`` in structlog's context for the request; set ``request.request_id`` and the
    X-Request-ID response header. First in MIDDLEWARE so every later line of the request has it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id
        # A worker thread serves many requests: start from an empty context every time.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def clear_request_context(**_kwargs) -> None:
    structlog.contextvars.clear_contextvars()


# Cleared when the response is closed, not when the middleware returns: Django logs a 4xx/5xx
# response ("Unauthorized: /path") after the middleware chain, and that line needs the id too.
request_finished.connect(clear_request_context, dispatch_uid="rlv3-clear-request-context")

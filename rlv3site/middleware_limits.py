"""Refuse oversized request bodies before anything reads them: 413 with a JSON message.

Django enforces ``DATA_UPLOAD_MAX_MEMORY_SIZE`` only when ``request.body`` or a form is read, but
DRF's parsers read the raw stream, so without this a multi-gigabyte JSON body would be read into
memory and parsed. The declared Content-Length is checked up front; a body that reaches Django's
own limit anyway (``RequestDataTooBig``) gets the same answer instead of a generic 400.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse

log = logging.getLogger(__name__)


def too_large(limit: int, size: int | None = None) -> JsonResponse:
    """The 413 answer: {"error": message, "field": null, "limit_bytes": limit}."""
    got = f"{size} bytes" if size is not None else "larger than that"
    message = f"request body too large: the limit is {limit} bytes (RLV3_MAX_BODY_BYTES), this one is {got}"
    return JsonResponse({"error": message, "field": None, "limit_bytes": limit}, status=413)


class BodySizeLimitMiddleware:
    """413 for a body whose Content-Length exceeds settings.DATA_UPLOAD_MAX_MEMORY_SIZE (bytes)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = request.META.get("CONTENT_LENGTH") or ""
        if limit is not None and raw:
            try:
                size = int(raw)
            except ValueError:
                return JsonResponse({"error": "Content-Length must be a whole number of bytes", "field": None}, status=400)
            if size > limit:
                log.warning("refused a %d-byte body to %s (limit %d)", size, request.path, limit)
                return too_large(limit, size)
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, RequestDataTooBig):
            return too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        return None

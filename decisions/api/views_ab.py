"""GET ab-report: champion vs challenger on the same stream signals (decisions.ab)."""

from __future__ import annotations

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from decisions.ab import ab_report
from decisions.api.errors import error_response
from decisions.api.filters import as_utc


class ABReportView(APIView):
    @extend_schema(
        summary="Champion vs challenger on the same signals (agreement, action mix, realised outcomes)",
        parameters=[OpenApiParameter("since", OpenApiTypes.DATETIME, description="Only challenger decisions at or after this time (ISO-8601; naive means UTC).")],
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="`since` and one comparison per (champion, challenger) version pair."),
            400: OpenApiResponse(OpenApiTypes.OBJECT, description="`since` is not an ISO-8601 time; `field` names it."),
        },
    )
    def get(self, request):
        since = None
        raw = request.query_params.get("since")
        if raw is not None:  # present but empty is an error, not "since the beginning"
            try:
                since = parse_datetime(raw.replace(" ", "+"))  # a literal '+' in a query string arrives as ' '
            except ValueError:
                since = None
            if since is None:
                return error_response(f"since must be an ISO-8601 time, got {raw[:40]!r}", status_code=400, field="since")
            try:
                since = as_utc(since)
            except ValueError as exc:
                return error_response(f"since {exc}", status_code=400, field="since")
        return Response(ab_report(since=since))

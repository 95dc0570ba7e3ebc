"""The hot path of ``POST predict``: a well-formed call, authenticated by API token, answered
without DRF's request machinery.

DRF's dispatch (request wrapping, content negotiation, authenticator, permission and throttle
objects, the renderer) costs about a quarter of a prediction's CPU. This path does the same
checks with the same code: the token is checked by `CachedTokenAuthentication` (an inactive
user or unknown token is refused there), the permission is `IsAuthenticated`, the body is parsed
as `StrictJSONParser` parses it, each observation goes through `validate_observation`, and the
request is counted by the same Redis throttle. It answers only when every check passes. Anything
else (no token, another content type, a parse or validation error, a throttled caller) returns
None and the view runs DRF's full dispatch, which produces the usual error answer; a throttled
request is then counted twice, in a window it has already exceeded.
"""

from __future__ import annotations

import json

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import IsAuthenticated

from decisions import metrics, services
from decisions.api import throttling
from decisions.api.authentication import CachedTokenAuthentication
from decisions.api.errors import database_unavailable
from decisions.api.serializers import PredictionSerializer
from training.rl.features import ObservationError, validate_observation

_authentication = CachedTokenAuthentication()
_JSON = "application/json"


def _observations(data) -> list[dict] | None:
    """The validated observations of a parsed body, or None if anything is wrong with it."""
    if not isinstance(data, dict):
        return None
    try:
        if "observations" not in data:
            return [validate_observation(data)]
        items = data["observations"]
        if not isinstance(items, list) or not 1 <= len(items) <= settings.RLV3_MAX_BATCH:
            return None
        return [validate_observation(item) for item in items]
    except ObservationError:
        return None


def _json_response(body) -> HttpResponse:
    response = HttpResponse(orjson.dumps(body), content_type=_JSON)
    # What DRF's finalize_response adds to the same answer.
    response["Allow"] = "POST, OPTIONS"
    response["Vary"] = "Accept"
    return response


def fast_predict(view, request) -> HttpResponse | None:
    """The predict answer for a well-formed, token-authenticated, unthrottled JSON call, else None."""
    if request.method != "POST" or view.permission_classes != [IsAuthenticated]:
        return None
    if request.META.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != _JSON:
        return None
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) != 2 or parts[0].lower() != "token":
        return None
    try:
        user, token = _authentication.authenticate_credentials(parts[1])
    except AuthenticationFailed:
        return None
    if not user.is_authenticated:
        return None
    try:
        raw = request.body
        data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except Exception:  # noqa: BLE001 - any parse problem: DRF's parser gives the error answer
        return None
    observations = _observations(data)
    if observations is None or throttling.consume(view.throttle_scope, throttling.token_identity(token.key)) is not None:
        return None
    return _predict(observations, single="observations" not in data)


@metrics.predict_timed("api")
def _predict(observations: list[dict], *, single: bool) -> HttpResponse:
    try:
        decisions = services.decisions_predict(observations=observations)
    except (OperationalError, InterfaceError) as exc:
        return database_unavailable(exc)
    answers = [PredictionSerializer.from_decision(d) for d in decisions]
    return _json_response(answers[0] if single else answers)

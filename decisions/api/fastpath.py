"""The hot path of ``POST predict``: a well-formed call, authenticated by API token, answered
without Django's and DRF's request machinery.

Two entry points share one answer (`predict_answer`):

- `PredictWSGI` wraps the WSGI application (``rlv3site.wsgi``): a predict call is answered before
  Django runs its middleware and URL resolution. Django's request handling and DRF's dispatch
  cost about two fifths of a prediction's CPU. What the skipped layers do for this call is done
  here with their own code or settings: the host and HTTPS checks (a call Django would refuse or
  redirect is left to Django, as is a body over the size limit, which it answers 413), the request
  id, the request signals' work (database connection upkeep, `_RequestUpkeep`), the security
  headers (computed once by running SecurityMiddleware and XFrameOptionsMiddleware) and
  django-prometheus's request metrics.
- `fast_predict` is called by PredictView.dispatch, for calls that reach Django (the test client,
  ASGI): it skips DRF's dispatch only.

The checks are DRF's own: the token is checked by `CachedTokenAuthentication` (an inactive user or
unknown token is refused there), the body is parsed as `StrictJSONParser` parses it, each
observation goes through `validate_observation`, and the call is counted by the same Redis
throttle. It answers only when every check passes. Anything else (no token, another content type,
a parse or validation error, a throttled caller) goes on to DRF's full dispatch, which gives the
usual error answer; a throttled request is then counted twice, in a window it has already exceeded.
"""

from __future__ import annotations

import functools
import io

import orjson
import structlog
from django.conf import settings
from django.core import signals
from django.core.cache import caches, close_caches
from django.core.cache.backends.base import BaseCache
from django.core.exceptions import DisallowedHost
from django.core.handlers.base import reset_urlconf
from django.core.handlers.exception import response_for_exception
from django.core.handlers.wsgi import WSGIRequest
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, close_old_connections, connections, reset_queries
from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import resolve, reverse
from django_prometheus.middleware import Metrics
from django_prometheus.utils import Time, TimeSince
from rest_framework.exceptions import AuthenticationFailed, ParseError
from rest_framework.permissions import IsAuthenticated

from decisions import metrics, services
from decisions.api import throttling
from decisions.api.authentication import CachedTokenAuthentication
from decisions.api.errors import database_unavailable
from decisions.api.parsers import StrictJSONParser, parse_json
from rlv3site.middleware import REQUEST_ID_HEADER, clear_request_context, request_id_from
from training.rl.features import ObservationBatch, ObservationError, validate_observation, validate_observations

_authentication = CachedTokenAuthentication()
_JSON = StrictJSONParser.media_type
PREDICT_SCOPE = "predict"  # PredictView.throttle_scope


def _observations(data) -> ObservationBatch | list[dict] | None:
    """The validated observations of a parsed body, or None if anything is wrong with it."""
    if not isinstance(data, dict):
        return None
    try:
        if "observations" not in data:
            return [validate_observation(data)]
        items = data["observations"]
        if not isinstance(items, list) or not 1 <= len(items) <= settings.RLV3_MAX_BATCH:
            return None
        return validate_observations(items)
    except ObservationError:
        return None


def _json_response(body) -> HttpResponse:
    response = HttpResponse(orjson.dumps(body), content_type=_JSON)
    # What DRF's finalize_response adds to the same answer.
    response["Allow"] = "POST, OPTIONS"
    response["Vary"] = "Accept"
    return response


def predict_answer(*, content_type: str, authorization: str, body: bytes, scope: str = PREDICT_SCOPE) -> HttpResponse | None:
    """The predict answer for a well-formed, token-authenticated, unthrottled JSON call, else None."""
    if content_type.partition(";")[0].strip().lower() != _JSON:
        return None
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "token":
        return None
    try:
        user, token = _authentication.authenticate_credentials(parts[1])
    except AuthenticationFailed:
        return None
    if not user.is_authenticated:
        return None
    try:
        data = parse_json(body, "JSON parse error")
    except ParseError:  # DRF's parser gives the error answer
        return None
    observations = _observations(data)
    if observations is None or throttling.consume(scope, throttling.token_identity(token.key)) is not None:
        return None
    return _predict(observations, single="observations" not in data)


def fast_predict(view, request) -> HttpResponse | None:
    """PredictView's shortcut past DRF's dispatch (see the module's docstring), else None."""
    if request.method != "POST" or view.permission_classes != [IsAuthenticated]:
        return None
    return predict_answer(
        content_type=request.META.get("CONTENT_TYPE", ""), authorization=request.META.get("HTTP_AUTHORIZATION", ""),
        body=request.body, scope=view.throttle_scope,
    )


@metrics.predict_timed("api")
def _predict(observations: ObservationBatch | list[dict], *, single: bool) -> HttpResponse:
    try:
        predictions = services.decisions_predict(observations=observations)
    except (OperationalError, InterfaceError) as exc:
        return database_unavailable(exc)
    return _json_response(predictions.answers[0] if single else predictions.answers)


# --- the WSGI entry -----------------------------------------------------------------------------


class PredictWSGI:
    """WSGI middleware: ``POST predict`` answered by `predict_answer` when it can, everything else
    (and any predict call it does not answer) by ``app``, Django's WSGI handler."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != _route().path:
            return self.app(environ, start_response)
        started = Time()  # django-prometheus's clock: its histograms are observed in its units
        secure, host_allowed = _scheme_and_host(environ)
        if (settings.SECURE_SSL_REDIRECT and not secure) or not host_allowed:
            return self.app(environ, start_response)  # Django redirects, or refuses the host
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return self.app(environ, start_response)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if length <= 0 or (limit is not None and length > limit):
            return self.app(environ, start_response)  # Django's 413 (or its answer to an empty body)
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)  # Django can still read it if the call falls through
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        upkeep, bound = _upkeep(), None
        upkeep.started(environ)
        try:
            structlog.contextvars.clear_contextvars()
            bound = structlog.contextvars.bind_contextvars(request_id=request_id)
            response = predict_answer(
                content_type=environ.get("CONTENT_TYPE", ""), authorization=environ.get("HTTP_AUTHORIZATION", ""), body=body,
            )
        except Exception as exc:  # noqa: BLE001 - answered and logged as Django answers an uncaught error
            response = response_for_exception(WSGIRequest(environ), exc)
        finally:
            upkeep.finished(bound)
        if response is None:
            return self.app(environ, start_response)
        content = response.content
        _route().count(secure=secure, request_bytes=length, status=response.status_code,
                       charset=response.charset, response_bytes=len(content), started=started)
        headers = [*response.items(), ("Content-Length", str(len(content))), *_static_headers(secure),
                   (REQUEST_ID_HEADER, request_id)]
        start_response(f"{response.status_code} {response.reason_phrase}", headers)
        return [content]


class _Route:
    """The predict path and django-prometheus's request metrics for it, labelled once."""

    def __init__(self):
        self.path = reverse("rlv3:predict")
        self.view = resolve(self.path).view_name or "<unnamed view>"
        self._metrics = Metrics.get_instance()

    @functools.cache
    def _children(self, transport: str, status: int, charset: str):
        m = self._metrics
        return (
            m.requests_total, m.responses_total, m.requests_latency_before, m.requests_by_method.labels(method="POST"),
            m.requests_by_transport.labels(transport=transport), m.requests_body_bytes,
            m.requests_by_view_transport_method.labels(view=self.view, transport=transport, method="POST"),
            m.responses_by_status.labels(status=str(status)),
            m.responses_by_status_view_method.labels(status=str(status), view=self.view, method="POST"),
            m.responses_by_charset.labels(charset=charset), m.responses_body_bytes,
            m.requests_latency_by_view_method.labels(view=self.view, method="POST"),
        )

    def count(self, *, secure: bool, request_bytes: int, status: int, charset: str, response_bytes: int, started: float) -> None:
        """What PrometheusBeforeMiddleware and PrometheusAfterMiddleware record for the call."""
        (requests, responses, latency_before, by_method, by_transport, body_bytes, by_view, by_status,
         by_status_view, by_charset, response_body, latency_by_view) = self._children("https" if secure else "http", status, charset)
        for counter in (requests, responses, by_method, by_transport, by_view, by_status, by_status_view, by_charset):
            counter.inc()
        body_bytes.observe(request_bytes)
        response_body.observe(response_bytes)
        elapsed = TimeSince(started)
        latency_before.observe(elapsed)
        latency_by_view.observe(elapsed)


@functools.cache
def _route() -> _Route:
    return _Route()


class _RequestUpkeep:
    """What the receivers of Django's request_started and request_finished do around a request,
    by exact cheaper equivalents, without the signals' dispatch (sent, they cost 45-60 µs of the
    520 µs a single prediction takes in the worker's process, most of it looking up every database
    connection and cache in thread-local storage):

    - reset_queries and close_old_connections: the same on the one database (settings.DATABASES
      has only ``default``, which the call is about to use);
    - close_caches: nothing while every configured cache's ``close`` is BaseCache's, which does nothing;
    - reset_urlconf: nothing; nothing on this path sets a URLconf, and Django resets the one a
      request of its own set when that request finishes;
    - clear_request_context: the request id this path bound is unbound (the context was cleared
      when the call began).

    With any other receiver connected (or a second database, a cache that closes, a Django whose
    signals this does not know), the signals are sent as usual. The plan is made again whenever a
    receiver is connected or disconnected.
    """

    def __init__(self):
        self._counts: tuple[int, int] | None = None
        self._plan: tuple[list, list] | None = None

    def _make_plan(self) -> tuple[list, list] | None:
        equivalents = {reset_urlconf: None, clear_request_context: None}
        if list(settings.DATABASES) == [DEFAULT_DB_ALIAS]:
            equivalents[reset_queries] = lambda db: db.queries_log.clear()
            equivalents[close_old_connections] = lambda db: db.close_if_unusable_or_obsolete()
        if all(type(caches[alias]).close is BaseCache.close for alias in settings.CACHES):
            equivalents[close_caches] = None
        plan = []
        for signal in (signals.request_started, signals.request_finished):
            try:
                sync, asynchronous = signal._live_receivers(PredictWSGI)
            except (AttributeError, TypeError, ValueError):
                return None
            if asynchronous or any(receiver not in equivalents for receiver in sync):
                return None
            plan.append([equivalents[receiver] for receiver in sync if equivalents[receiver] is not None])
        return plan[0], plan[1]

    def _current(self) -> tuple[list, list] | None:
        counts = (len(signals.request_started.receivers), len(signals.request_finished.receivers))
        if counts != self._counts:
            self._plan, self._counts = self._make_plan(), counts
        return self._plan

    def started(self, environ: dict) -> None:
        plan = self._current()
        if plan is None:
            signals.request_started.send(sender=PredictWSGI, environ=environ)
            return
        db = connections[DEFAULT_DB_ALIAS]
        for step in plan[0]:
            step(db)

    def finished(self, bound: dict | None) -> None:
        plan = self._current()
        if plan is None:
            signals.request_finished.send(sender=PredictWSGI)
            return
        if bound:
            structlog.contextvars.reset_contextvars(**bound)
        db = connections[DEFAULT_DB_ALIAS]
        for step in plan[1]:
            step(db)


@functools.cache
def _upkeep() -> _RequestUpkeep:
    return _RequestUpkeep()


# What Django's request reads to tell the scheme (is_secure) and the host (get_host).
_SCHEME_AND_HOST_KEYS = ("wsgi.url_scheme", "HTTP_HOST", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT", "SERVER_NAME", "SERVER_PORT")


def _scheme_and_host(environ: dict) -> tuple[bool, bool]:
    """Whether Django would see the call as HTTPS (``is_secure``), and whether it would accept its
    host (ALLOWED_HOSTS; it refuses the call otherwise): Django's own answers, remembered for the
    few combinations of those headers and settings a deployment sees (a WSGIRequest and its host
    check cost about 45 µs a call)."""
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    return _scheme_and_host_of(
        tuple(environ.get(k) for k in _SCHEME_AND_HOST_KEYS), environ.get(proxy_header[0]) if proxy_header else None,
        (proxy_header, tuple(settings.ALLOWED_HOSTS), settings.USE_X_FORWARDED_HOST, settings.USE_X_FORWARDED_PORT, settings.DEBUG),
    )


@functools.lru_cache(maxsize=64)  # bounded: the headers are the caller's to choose
def _scheme_and_host_of(values: tuple, proxy_value: str | None, _settings: tuple) -> tuple[bool, bool]:
    environ = {k: v for k, v in zip(_SCHEME_AND_HOST_KEYS, values, strict=True) if v is not None}
    environ.update(REQUEST_METHOD="POST", PATH_INFO="/", **{"wsgi.input": io.BytesIO()})
    if proxy_value is not None:
        environ[settings.SECURE_PROXY_SSL_HEADER[0]] = proxy_value
    request = WSGIRequest(environ)
    try:
        request.get_host()
    except DisallowedHost:
        return request.is_secure(), False
    return request.is_secure(), True


@functools.cache
def _static_headers(secure: bool) -> tuple[tuple[str, str], ...]:
    """The headers SecurityMiddleware and XFrameOptionsMiddleware add to a JSON answer (HSTS only
    over HTTPS), found by running them once."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": _route().path, "wsgi.input": io.BytesIO(),
               "wsgi.url_scheme": "https" if secure else "http", "SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    if settings.SECURE_PROXY_SSL_HEADER:
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        environ[header] = secure_value if secure else "http"
    request = WSGIRequest(environ)
    before = HttpResponse(b"", content_type=_JSON)
    response = SecurityMiddleware(lambda r: before).process_response(request, before)
    response = XFrameOptionsMiddleware(lambda r: response).process_response(request, response)
    return tuple((k, v) for k, v in response.items() if k.lower() not in {"content-type", "content-length"})

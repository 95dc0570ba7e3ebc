"""The WSGI entry of the predict hot path (decisions.api.fastpath.PredictWSGI), called as gunicorn
calls it: a well-formed call is answered without Django's request handling, with the same answer
and headers; everything else reaches Django unchanged."""

from __future__ import annotations

import io
import json

import pytest
from django.core import signals
from django.db import close_old_connections
from prometheus_client import REGISTRY

from decisions.models import Decision

PATH = "/api/v1/rl/v3/predict"
BODY = b'{"price_change_1m": 0.001, "volatility": 0.02, "rsi": 55, "symbol": "BTCUSDT"}'

# Outside the test client Django would close the test's transaction's connection at the end of
# each request (close_old_connections); the client disconnects it too.
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def token(reader):
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=reader)[0].key


def environ(body: bytes = BODY, *, token: str | None, content_type: str = "application/json", host: str = "testserver", **extra) -> dict:
    env = {
        "REQUEST_METHOD": "POST", "PATH_INFO": PATH, "SCRIPT_NAME": "", "QUERY_STRING": "", "SERVER_NAME": "testserver",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.version": (1, 0), "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": host,
    }
    if token:
        env["HTTP_AUTHORIZATION"] = f"Token {token}"
    env.update(extra)
    return env


def call(app, env) -> tuple[int, dict[str, str], bytes]:
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = int(status.split()[0]), headers

    chunks = app(env, start_response)
    try:
        body = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return seen["status"], {k.lower(): v for k, v in seen["headers"]}, body


@pytest.fixture
def apps(monkeypatch):
    """(the wrapped application, the list of calls that reached Django's handler)."""
    from rlv3site import wsgi

    reached = []

    def django_app(env, start_response):
        reached.append(env["CONTENT_TYPE"])
        return wsgi.django_application(env, start_response)

    monkeypatch.setattr(wsgi.application, "app", django_app)
    return wsgi.application, reached


def test_a_well_formed_call_is_answered_without_django_and_like_django(apps, token):
    app, reached = apps
    fast_status, fast_headers, fast_body = call(app, environ(token=token, HTTP_X_REQUEST_ID="req-1"))
    assert reached == [], "the call reached Django's handler"
    from rlv3site import wsgi

    full_status, full_headers, full_body = call(wsgi.django_application, environ(token=token, HTTP_X_REQUEST_ID="req-2"))
    assert fast_status == full_status == 200
    assert fast_headers.pop("x-request-id") == "req-1" and full_headers.pop("x-request-id") == "req-2"
    assert fast_headers.pop("content-length") == str(len(fast_body))
    full_headers.pop("content-length", None)
    assert fast_headers == full_headers  # Content-Type, Allow, Vary and the security headers
    assert fast_headers["x-content-type-options"] == "nosniff" and fast_headers["x-frame-options"] == "DENY"
    a, b = json.loads(fast_body), json.loads(full_body)
    assert a.pop("decision_id") != b.pop("decision_id")
    assert a == b and a["symbol"] == "BTCUSDT"
    assert Decision.objects.filter(symbol="BTCUSDT").count() == 2


def test_a_batch_is_answered_without_django_and_stored(apps, token):
    app, reached = apps
    body = json.dumps({"observations": [{"rsi": 10, "symbol": "A"}, {"rsi": 50}, {"rsi": 90, "symbol": "C"}]}).encode()
    status, _, answer = call(app, environ(body, token=token))
    assert status == 200 and reached == []
    answers = json.loads(answer)
    assert [a["symbol"] for a in answers] == ["A", "", "C"]
    stored = {str(d.decision_id): d for d in Decision.objects.all()}
    assert set(stored) == {a["decision_id"] for a in answers}
    for a in answers:
        d = stored[a["decision_id"]]
        assert (d.action, d.confidence, d.value) == (a["action_code"], a["confidence"], a["value"])
        assert d.probabilities == list(a["probabilities"].values()) and len(d.features) == 64


@pytest.mark.parametrize(
    "case, env_kwargs, status",
    [
        ("no token", {"token": None}, 401),
        ("unknown token", {"token": "0" * 40}, 401),
        ("form content type (curl)", {"content_type": "application/x-www-form-urlencoded"}, 200),
        ("bad field", {"body": b'{"rsi": "high"}'}, 400),
        ("not JSON", {"body": b'{"rsi": '}, 400),
        ("host not allowed", {"host": "evil.example"}, 400),
    ],
)
def test_anything_else_reaches_django_for_its_usual_answer(apps, token, case, env_kwargs, status):
    app, reached = apps
    kwargs = {"token": token, **env_kwargs}
    got, headers, body = call(app, environ(kwargs.pop("body", BODY), **kwargs))
    assert got == status, (case, body)
    assert len(reached) == 1, case
    if case == "bad field":
        assert json.loads(body)["field"] == "rsi"
    elif case == "not JSON":
        assert json.loads(body)["error"].startswith("JSON parse error")


def test_an_oversized_body_gets_django_413_and_is_not_read(apps, token, settings):
    app, reached = apps
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    body = json.dumps({"observations": [{"rsi": 50}] * 20}).encode()
    status, _, answer = call(app, environ(body, token=token))
    assert status == 413 and "too large" in json.loads(answer)["error"] and len(reached) == 1


@pytest.fixture
def https_settings(settings):
    """Production's HTTPS settings; the security headers are worked out again for them."""
    from decisions.api.fastpath import _static_headers

    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    _static_headers.cache_clear()
    yield settings
    _static_headers.cache_clear()


def test_plain_http_is_left_to_django_when_it_redirects_to_https(token, https_settings):
    from django.core.handlers.wsgi import WSGIHandler

    from decisions.api.fastpath import PredictWSGI

    django_app, reached = WSGIHandler(), []  # its SecurityMiddleware reads the settings now

    def spy(env, start_response):
        reached.append(env["PATH_INFO"])
        return django_app(env, start_response)

    app = PredictWSGI(spy)
    status, headers, _ = call(app, environ(token=token))
    assert status == 301 and headers["location"].startswith("https://") and len(reached) == 1
    status, headers, _ = call(app, environ(token=token, HTTP_X_FORWARDED_PROTO="https"))
    assert status == 200 and len(reached) == 1  # answered by the fast path, with HSTS
    assert headers["strict-transport-security"].startswith("max-age=3600")


def test_the_request_metrics_count_a_fast_call(apps, token):
    app, _ = apps
    labels = {"status": "200", "view": "rlv3:predict", "method": "POST"}
    name = "django_http_responses_total_by_status_view_method_total"
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    assert call(app, environ(token=token))[0] == 200
    assert REGISTRY.get_sample_value(name, labels) == before + 1


def test_an_unexpected_error_is_answered_and_logged_as_django_does(apps, token, monkeypatch, caplog):
    from decisions import services

    def broken(**_kwargs):
        raise RuntimeError("the policy broke")

    monkeypatch.setattr(services, "decisions_predict", broken)
    app, reached = apps
    status, headers, _ = call(app, environ(token=token, HTTP_X_REQUEST_ID="req-500"))
    assert status == 500 and reached == [] and headers["x-request-id"] == "req-500"
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert record.getMessage() == f"Internal Server Error: {PATH}" and record.exc_info[0] is RuntimeError
    assert Decision.objects.count() == 0


def test_a_fast_call_runs_the_request_signals_receivers(apps, token):
    """With a receiver of its own connected to request_started and request_finished, the fast path
    sends the signals (each receiver called once, as the signals call it); without, it does Django's
    receivers' work directly and sends nothing."""
    from decisions.api.fastpath import PredictWSGI, _upkeep

    app, _ = apps
    seen = []

    def on_started(signal, sender, environ, **kwargs):
        seen.append(("started", sender, environ["HTTP_X_REQUEST_ID"]))

    def on_finished(signal, sender, **kwargs):
        seen.append(("finished", sender, kwargs))

    signals.request_started.connect(on_started)
    signals.request_finished.connect(on_finished)
    try:
        assert call(app, environ(token=token, HTTP_X_REQUEST_ID="req-signals"))[0] == 200
        assert _upkeep()._current() is None  # sent
    finally:
        signals.request_started.disconnect(on_started)
        signals.request_finished.disconnect(on_finished)
    assert seen == [("started", PredictWSGI, "req-signals"), ("finished", PredictWSGI, {})]
    assert call(app, environ(token=token))[0] == 200
    assert len(seen) == 2 and _upkeep()._current() is not None  # done directly


def test_the_request_id_is_not_left_in_the_logging_context(apps, token):
    import structlog

    app, _ = apps
    assert call(app, environ(token=token, HTTP_X_REQUEST_ID="req-ctx"))[0] == 200
    assert "request_id" not in structlog.contextvars.get_contextvars()


@pytest.mark.django_db(transaction=True)
def test_an_obsolete_connection_is_replaced_as_django_replaces_it(apps, token):
    """CONN_MAX_AGE: a connection past its age is closed when the next call starts, and the call
    is served on a new one (close_old_connections, connected again for this test)."""
    import time

    from django.db import connection

    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)
    app, reached = apps
    assert call(app, environ(token=token))[0] == 200
    connection.ensure_connection()
    first = connection.connection  # held: a new connection cannot reuse its address
    connection.close_at = time.monotonic() - 1
    assert call(app, environ(token=token))[0] == 200 and reached == []
    connection.ensure_connection()
    assert connection.connection is not first
    assert Decision.objects.count() == 2


def test_the_host_check_follows_the_settings(apps, token, settings):
    """The remembered scheme and host answers are per settings: a host accepted a moment ago is
    refused (by Django, 400) once ALLOWED_HOSTS no longer names it, and accepted again after."""
    app, reached = apps
    assert call(app, environ(token=token))[0] == 200 and reached == []
    settings.ALLOWED_HOSTS = ["api.example"]
    assert call(app, environ(token=token))[0] == 400 and len(reached) == 1
    assert call(app, environ(token=token, host="api.example"))[0] == 200 and len(reached) == 1
    settings.ALLOWED_HOSTS = ["testserver"]
    assert call(app, environ(token=token))[0] == 200 and len(reached) == 1

"""Structured logs: JSON in production, request ids, stream and training context, no secrets."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from django.test import Client

from decisions.streams import codec
from rlv3site.logging import formatter, log_format, redact_secrets, redact_text
from tests.conftest import token_client
from tests.decisions.stream_helpers import drain, publish, signal_payload
from training.models import TrainingRun

BASE_DIR = Path(__file__).resolve().parents[2]
API = "/api/v1/rl/v3/"


@pytest.fixture
def log_lines():
    """The JSON lines the service's formatter renders while the test runs (a list, read on call)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    root = logging.getLogger()
    root.addHandler(handler)
    structlog.contextvars.clear_contextvars()
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    root.removeHandler(handler)
    structlog.contextvars.clear_contextvars()


def test_json_lines_carry_bound_context_and_positional_arguments(log_lines):
    structlog.contextvars.bind_contextvars(request_id="req-1")
    logging.getLogger("rlv3.test").warning("scored %d signals for %s", 3, "BTCUSDT", extra={"run_id": 7, "request": object()})
    structlog.get_logger("rlv3.test").info("native", batch=5)
    first, second = log_lines()
    assert first["event"] == "scored 3 signals for BTCUSDT"
    assert (first["level"], first["logger"], first["request_id"], first["run_id"]) == ("warning", "rlv3.test", "req-1", 7)
    assert "request" not in first  # objects passed as extra are not data
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", first["timestamp"])
    assert (second["event"], second["batch"], second["request_id"]) == ("native", 5, "req-1")


def test_console_lines_are_readable():
    record = logging.LogRecord("rlv3.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    text = formatter("console").format(record)
    assert "hello world" in text and "[info" in text and not text.startswith("{")


def test_format_is_json_in_production_console_in_development():
    assert log_format(debug=False) == "json"
    assert log_format(debug=True) == "console"
    assert log_format(debug=True, override="JSON") == "json"
    with pytest.raises(ValueError, match="RLV3_LOG_FORMAT"):
        log_format(debug=False, override="xml")


def test_production_settings_log_json_to_stderr():
    env = {**os.environ, "DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "a-real-secret-" + "x" * 40, "RLV3_LOG_FORMAT": ""}
    code = "import django, logging; django.setup(); logging.getLogger('rlv3.probe').info('probe %s', 1)"
    out = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env={**env, "DJANGO_SETTINGS_MODULE": "rlv3site.settings"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stderr.strip().splitlines()[-1])
    assert line["event"] == "probe 1" and line["level"] == "info" and line["logger"] == "rlv3.probe"


# --- request ids ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_request_id_is_echoed_generated_or_replaced():
    client = Client()
    assert client.get("/healthz?live", HTTP_X_REQUEST_ID="lb-7f3a.42").headers["X-Request-ID"] == "lb-7f3a.42"
    generated = client.get("/healthz?live").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert client.get("/healthz?live").headers["X-Request-ID"] != generated
    for forged in ("a" * 129, "id\nlevel=critical", "two words"):
        replaced = client.get("/healthz?live", HTTP_X_REQUEST_ID=forged).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", replaced)


@pytest.mark.django_db
def test_lines_logged_during_a_request_carry_its_id_and_no_token(operator, log_lines):
    api = token_client(operator)
    response = api.post(API + "shadow_mode", {"enabled": False, "reason": "maintenance"}, format="json", HTTP_X_REQUEST_ID="req-shadow-1")
    assert response.status_code == 200
    lines = [line for line in log_lines() if "shadow mode" in line["event"]]
    assert len(lines) == 1 and lines[0]["request_id"] == "req-shadow-1"
    assert "request_id" not in structlog.contextvars.get_contextvars()  # nothing leaks to the next request

    token = api._credentials["HTTP_AUTHORIZATION"].split()[1]
    bad = Client().get(API + "status", HTTP_AUTHORIZATION=f"Token {token[:-4]}beef", HTTP_X_REQUEST_ID="req-401")
    assert bad.status_code == 401
    text = json.dumps(log_lines())
    assert token not in text and token[:-4] not in text
    assert any(line.get("request_id") == "req-401" and line.get("status_code") == 401 for line in log_lines())


# --- stream and training context -----------------------------------------------------------------


@pytest.mark.django_db
def test_stream_lines_carry_the_entrys_correlation_and_trace_ids(redis_client, stream_prefix, log_lines):
    publish(redis_client, codec.SIGNAL_GENERATED, signal_payload(rsi=500.0), correlation_id="corr-1", trace_id="trace-1")
    raw = {"event_type": codec.SIGNAL_GENERATED, "payload": "[1, 2", "correlation_id": "corr-2", "trace_id": "trace-2"}
    publish(redis_client, codec.SIGNAL_GENERATED, None, raw=raw)
    publish(redis_client, codec.SIGNAL_GENERATED, signal_payload(rsi=-1.0))  # no ids at all
    drain("log1")
    dead = [line for line in log_lines() if line["event"].startswith("dead letter")]
    assert len(dead) == 3
    by_error = {("rsi" if "rsi" in line["event"] else "json" if "JSON" in line["event"] else "?"): line for line in dead}
    ids = [(line.get("correlation_id"), line.get("trace_id")) for line in dead]
    assert ("corr-1", "trace-1") in ids and ("corr-2", "trace-2") in ids and (None, None) in ids
    for line in dead:
        assert line["stream"] == f"{stream_prefix}{codec.SIGNAL_GENERATED}" and line["consumer"] == "log1"
        assert line["entry_id"] in line["event"]
    assert by_error["json"]["correlation_id"] == "corr-2"


@pytest.mark.django_db
def test_training_lines_carry_the_run_id(log_lines):
    from training.services import training_run_execute

    run = TrainingRun.objects.create(dataset="no-such-dataset", timesteps=1000)
    result = training_run_execute(run_id=run.pk, worker="tests")
    assert result["status"] == "failed"
    lines = [line for line in log_lines() if line["event"].startswith(f"training run {run.pk}")]
    events = [line["event"] for line in lines]
    assert any(" started on tests" in e for e in events) and any(" failed: DatasetError" in e for e in events)
    assert all(line["run_id"] == run.pk for line in lines)


# --- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, secret",
    [
        ("auth header Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("connecting to postgres://rlv3:hunter22@db:5432/rlv3 failed", "hunter22"),
        ("redis://:redispass@cache:6379/0 refused", "redispass"),
        ("login with password=correcthorse&next=/", "correcthorse"),
        ("DJANGO_SECRET_KEY secret: s3cr3t-value", "s3cr3t-value"),
    ],
)
def test_secrets_inside_text_are_masked(text, secret):
    masked = redact_text(text)
    assert secret not in masked and "[redacted]" in masked


def test_secret_keys_are_masked_whatever_their_value():
    event = redact_secrets(None, "info", {"event": "x", "api_token": "abc", "Authorization": "Token z", "password": 123, "symbol": "BTCUSDT"})
    assert event == {"event": "x", "api_token": "[redacted]", "Authorization": "[redacted]", "password": "[redacted]", "symbol": "BTCUSDT"}


def test_secrets_in_exception_traces_are_masked(log_lines):
    try:
        raise ConnectionError("could not connect to postgres://rlv3:topsecretpw@db/rlv3")
    except ConnectionError:
        logging.getLogger("rlv3.test").exception("database unavailable")
    (line,) = log_lines()
    assert "ConnectionError" in line["exception"] and "topsecretpw" not in json.dumps(line)

"""/metrics after real traffic: API predictions, a subscriber batch with dead letters, training runs."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from decisions import metrics
from decisions.streams import codec
from tests.decisions.ops_fixtures import private_heartbeats  # noqa: F401 (fixture)
from tests.decisions.stream_helpers import consumer, drain, publish, register_model, signal_payload
from training.models import RunKind, RunStatus, TrainingRun

API = "/api/v1/rl/v3/"
BASE_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def scrape(client: Client | None = None, **headers) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one GET /metrics."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def delta(after: dict, before: dict, name: str, **labels) -> float:
    return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)


def test_each_series_is_exposed_after_traffic(reader_api, redis_client, stream_prefix, private_heartbeats):
    register_model(seed=1, alias="champion")
    register_model(seed=2, alias="challenger")
    before = scrape()

    # API traffic: two single predictions and a batch of three, on two symbols
    actions = []
    for obs in ({"symbol": "BTCUSDT", "rsi": 20}, {"symbol": "ETHUSDT", "rsi": 80}):
        actions.append((obs["symbol"], reader_api.post(API + "predict", obs, format="json").json()["action"]))
    batch = [{"symbol": "BTCUSDT", "rsi": r} for r in (10, 50, 90)]
    actions += [("BTCUSDT", d["action"]) for d in reader_api.post(API + "predict", {"observations": batch}, format="json").json()]

    # Stream traffic: three signals, a poison entry, a close with nothing to pair
    for i in range(3):
        publish(redis_client, codec.SIGNAL_GENERATED, signal_payload("SOLUSDT", rsi=30.0 + i), correlation_id=f"m-{i}")
    publish(redis_client, codec.SIGNAL_GENERATED, None, raw={"event_type": codec.SIGNAL_GENERATED, "payload": "{not json"})
    publish(redis_client, codec.POSITION_CLOSED, {"symbol": "XRPUSDT", "pnl": 1.0, "roi": 0.5})
    stats = drain("m1")
    assert stats.dead_lettered == 2
    consumer("m1").heartbeat()  # a live subscriber's heartbeat
    # two signals arrive after the subscriber stopped: they are the lag
    for i in range(2):
        publish(redis_client, codec.SIGNAL_GENERATED, signal_payload("SOLUSDT"), correlation_id=f"late-{i}")

    started = timezone.now() - dt.timedelta(minutes=10)
    TrainingRun.objects.create(dataset="eurusd_1h", timesteps=1000, status=RunStatus.SUCCEEDED, started_at=started, finished_at=started + dt.timedelta(seconds=90))
    TrainingRun.objects.create(dataset="googl_1d", timesteps=1000, status=RunStatus.FAILED, started_at=started, finished_at=started + dt.timedelta(seconds=5))
    TrainingRun.objects.create(dataset="recorded:BTCUSDT", timesteps=1000, status=RunStatus.RUNNING, kind=RunKind.NIGHTLY, started_at=started)

    after = scrape()
    # decisions by action and symbol: exactly the API's five plus the stream's three champion decisions
    expected: dict[tuple[str, str], int] = {}
    for symbol, action in actions:
        expected[(symbol, action)] = expected.get((symbol, action), 0) + 1
    for (symbol, action), n in expected.items():
        assert delta(after, before, "rlv3_decisions_total", action=action, symbol=symbol, source="api", role="champion") == n
    stream_total = sum(
        delta(after, before, "rlv3_decisions_total", action=a, symbol="SOLUSDT", source="stream", role="champion")
        for a in ("HOLD", "LONG", "SHORT", "REDUCE", "CLOSE", "EMERGENCY_FLATTEN")
    )
    assert stream_total == 3
    # predict latency: one observation per API request, one per stream batch of signals
    assert delta(after, before, "rlv3_predict_latency_seconds_count", source="api") == 3
    assert delta(after, before, "rlv3_predict_latency_seconds_count", source="stream") >= 1
    assert delta(after, before, "rlv3_predict_latency_seconds_sum", source="api") > 0
    # dead letters by stream and reason, and the backlog
    assert value(after, "rlv3_dead_letters_total", stream=codec.SIGNAL_GENERATED, reason="invalid:payload") == 1
    assert value(after, "rlv3_dead_letters_total", stream=codec.POSITION_CLOSED, reason="pairing") == 1
    assert value(after, "rlv3_dead_letter_backlog") == 2
    # stream lag and pending entries per stream
    assert value(after, "rlv3_stream_lag", stream=codec.SIGNAL_GENERATED) == 2
    assert value(after, "rlv3_stream_pending", stream=codec.SIGNAL_GENERATED) == 0
    assert value(after, "rlv3_stream_lag", stream=codec.POSITION_CLOSED) == 0
    assert 0 <= value(after, "rlv3_subscriber_heartbeat_age_seconds", consumer="m1") < 60
    assert value(after, "rlv3_subscribers_alive") == 1
    # training runs by status and their durations
    assert value(after, "rlv3_training_runs", status="succeeded", kind="train") == 1
    assert value(after, "rlv3_training_runs", status="failed", kind="train") == 1
    assert value(after, "rlv3_training_runs", status="running", kind="nightly") == 1
    assert value(after, "rlv3_training_run_duration_seconds_count", status="succeeded") == 1
    assert value(after, "rlv3_training_run_duration_seconds_sum", status="succeeded") == pytest.approx(90.0)
    assert value(after, "rlv3_training_run_duration_seconds_bucket", status="succeeded", le="60.0") == 0
    assert value(after, "rlv3_training_run_duration_seconds_bucket", status="succeeded", le="120.0") == 1
    assert value(after, "rlv3_training_run_duration_seconds_bucket", status="failed", le="30.0") == 1
    # the served model as a labelled gauge, shadow mode, both stores up
    assert value(after, "rlv3_served_model", role="champion", version="1") == 1
    assert value(after, "rlv3_served_model", role="challenger", version="2") == 1
    assert value(after, "rlv3_model_loaded") == 1
    assert value(after, "rlv3_shadow_mode") == 1
    assert value(after, "rlv3_metrics_source_up", source="redis") == 1
    assert value(after, "rlv3_metrics_source_up", source="database") == 1
    # django-prometheus's own request metrics are served alongside
    assert any(name == "django_http_requests_total_by_method_total" for name, _ in after)


def test_a_redis_outage_drops_its_series_but_the_scrape_answers(settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens on the discard port
    samples = scrape()
    assert value(samples, "rlv3_metrics_source_up", source="redis") == 0
    assert value(samples, "rlv3_metrics_source_up", source="database") == 1
    assert not any(name == "rlv3_stream_lag" for name, _ in samples)
    assert value(samples, "rlv3_shadow_mode") == 1


def test_metrics_token_when_configured(settings):
    settings.RLV3_METRICS_TOKEN = "s3cret-scrape-token"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert value(scrape(HTTP_AUTHORIZATION="Bearer s3cret-scrape-token"), "rlv3_shadow_mode") == 1


@pytest.mark.parametrize(
    "error, reason",
    [
        ("payload: is not valid JSON (Expecting value)", "invalid:payload"),
        ("rsi: must be between 0 and 100, got 140", "invalid:rsi"),
        ("event_type: unknown event type 'x' on s", "invalid:event_type"),
        ("no decision to pair", "pairing"),
        ("decision 1f0c is already paired", "pairing"),
        ("decision_id 7 is a BTCUSDT decision, not ETHUSDT", "pairing"),
        ("delivered 6 times (more than RLV3_MAX_DELIVERIES=5); last error: x", "max_deliveries"),
        ("processing failed: ValueError: boom", "processing_failed"),
        ("something else entirely", "other"),
        ("", "other"),
    ],
)
def test_dead_letter_reasons_are_few_and_named(error, reason):
    assert metrics.dead_letter_reason(error) == reason


def test_symbol_labels_are_capped(monkeypatch):
    monkeypatch.setattr(metrics, "_symbols", {f"S{i}" for i in range(metrics.MAX_SYMBOL_LABELS)})
    assert metrics.symbol_label("S1") == "S1"
    assert metrics.symbol_label("NEWSYMBOL") == metrics.OTHER_SYMBOL
    assert metrics.symbol_label("") == metrics.OTHER_SYMBOL


def test_multiprocess_mode_sums_the_counters_of_every_process(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR (docs/operations.md): two processes count, a third serves the sum."""
    env = {
        **os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "rlv3site.settings",
        # no store answers: the counters do not need one, and the scrape must still work
        "DATABASE_URL": "postgres://postgres@127.0.0.1:9/none", "REDIS_URL": "redis://127.0.0.1:9/0",
    }
    count = (
        "import django; django.setup(); from types import SimpleNamespace as D; from decisions import metrics; "
        "metrics.decisions_count([D(action=1, symbol='BTCUSDT', source='api', role='champion')] * {n})"
    )
    for n in (2, 3):
        subprocess.run([sys.executable, "-c", count.format(n=n)], cwd=BASE_DIR, env=env, check=True, timeout=120)
    serve = "import django; django.setup(); from django.test import Client; print(Client().get('/metrics').content.decode())"
    out = subprocess.run([sys.executable, "-c", serve], cwd=BASE_DIR, env=env, check=True, timeout=120, capture_output=True, text=True)
    samples = parse(out.stdout)
    assert value(samples, "rlv3_decisions_total", action="LONG", symbol="BTCUSDT", source="api", role="champion") == 5
    assert value(samples, "rlv3_metrics_source_up", source="database") == 0

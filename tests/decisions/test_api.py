"""The REST API with the seed's exact requests, on the real database."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from decisions.models import Decision, DecisionSource, Experience, ShadowModeChange
from training.models import RunStatus, TrainingRun
from training.rl.actions import ACTION_NAMES

API = "/api/v1/rl/v3/"
SEED_BODY = '{"price_change_1m": 0.001, "volatility": 0.02, "rsi": 55}'

pytestmark = pytest.mark.django_db


def test_predict_seed_body_sent_like_curl(reader_api):
    """curl -X POST .../predict -d '{...}' sends JSON labelled as a form; it must work unchanged."""
    response = reader_api.generic("POST", API + "predict", SEED_BODY, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["action"] in ACTION_NAMES
    assert body["action_code"] == ACTION_NAMES.index(body["action"])
    assert len(body["probabilities"]) == 6
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # confidence is the probability of the chosen action, and the greedy action is the most likely one
    assert body["confidence"] == pytest.approx(body["probabilities"][body["action"]])
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    assert body["model_version"] == "untrained"
    assert body["shadow_mode"] is True
    stored = Decision.objects.get(decision_id=body["decision_id"])
    assert str(stored.decision_id) == body["decision_id"] and stored.decision_id.version == 7
    assert stored.source == DecisionSource.API
    assert stored.observation["rsi"] == 55 and stored.observation["volatility"] == 0.02
    assert stored.observation["regime"] == "TREND"  # seed default filled in
    assert len(stored.features) == 64


def test_predict_batch_returns_a_list_in_order(reader_api):
    observations = [{"rsi": 10, "symbol": "BTCUSDT"}, {"rsi": 50}, {"rsi": 90, "symbol": "ETHUSDT", "regime": "RANGE"}]
    response = reader_api.post(API + "predict", {"observations": observations}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert isinstance(body, list) and len(body) == 3
    assert [b["symbol"] for b in body] == ["BTCUSDT", "", "ETHUSDT"]
    assert Decision.objects.count() == 3


def test_a_batch_stores_exactly_what_it_answered(reader_api):
    """Every column of a batch's rows (one binary COPY laid out by numpy) holds what the answer
    said and the policy saw, to the bit; one observation (a prepared INSERT) stores the same."""
    import uuid

    import numpy as np

    from training.rl.features import observations_to_matrix, validate_observation

    observations = [
        {"rsi": 12.5, "symbol": "BTCUSDT", "macd": -0.25, "regime": "breakout", "time_of_day": 0.1},
        {"rsi": 50, "volatility": 1e-9, "price_change_1m": -0.999999, "position_side": -1, "position_size": 1.5},
        {"symbol": "ETH/USDT:PERP-2", "regime": "MEAN_REVERSION", "balance": 1e15, "equity": 123456.789},
        {"symbol": "X", "spread": 0.0, "volume_ratio": 1000, "bollinger_position": -100},
    ] * 3
    before = timezone.now()
    batch = reader_api.post(API + "predict", {"observations": observations}, format="json").json()
    one = reader_api.post(API + "predict", observations[0], format="json").json()
    rows = {str(d.decision_id): d for d in Decision.objects.all()}
    assert len(rows) == len(observations) + 1
    clean = [validate_observation(o) for o in observations]
    features = observations_to_matrix(clean)
    for answer, obs, vector in [*zip(batch, clean, features), (one, clean[0], features[0])]:
        d = rows[answer["decision_id"]]
        assert uuid.UUID(answer["decision_id"]).version == 7
        assert d.symbol == answer["symbol"] == obs.get("symbol", "")
        assert d.observation == {k: v for k, v in obs.items() if k != "symbol"}
        assert np.array_equal(np.asarray(d.features, dtype=np.float32).view(np.uint32), vector.view(np.uint32))
        assert (d.action, ACTION_NAMES[d.action]) == (answer["action_code"], answer["action"])
        assert d.probabilities == list(answer["probabilities"].values())  # float8: exactly the answer's numbers
        assert (d.confidence, d.value, d.model_version, d.shadow_mode) == (
            answer["confidence"], answer["value"], answer["model_version"], answer["shadow_mode"])
        assert (d.role, d.source, d.feature_spec_version) == ("champion", DecisionSource.API, "rlv3-features-1")
        assert (d.stream_entry_id, d.correlation_id, d.trace_id) == (None, None, None)
        assert before <= d.created_at <= timezone.now()
    assert len({rows[a["decision_id"]].created_at for a in batch}) == 1  # one batch, one time
    # The same observation alone: the same decision (float32 sums in another order may differ in the last bits).
    assert (one["action"], one["symbol"], one["model_version"]) == (batch[0]["action"], batch[0]["symbol"], batch[0]["model_version"])
    assert (one["value"], one["confidence"]) == (pytest.approx(batch[0]["value"], rel=1e-5), pytest.approx(batch[0]["confidence"], rel=1e-5))


def test_predict_is_deterministic_for_the_same_observation(reader_api):
    first = reader_api.post(API + "predict", {"rsi": 70, "macd": 0.5}, format="json").json()
    second = reader_api.post(API + "predict", {"rsi": 70, "macd": 0.5}, format="json").json()
    assert first["action"] == second["action"] and first["probabilities"] == second["probabilities"]


def test_fast_path_answers_like_drf_dispatch(reader_api, monkeypatch):
    """A token-authenticated JSON call is answered by decisions.api.fastpath without DRF's dispatch;
    the same body sent as curl's form content type goes through DRF. Both answer alike, and both
    store their decision."""
    from rest_framework.views import APIView

    through_drf = []
    full_dispatch = APIView.dispatch

    def counting_dispatch(self, request, *args, **kwargs):
        through_drf.append(request.META.get("CONTENT_TYPE"))
        return full_dispatch(self, request, *args, **kwargs)

    monkeypatch.setattr(APIView, "dispatch", counting_dispatch)
    fast = reader_api.generic("POST", API + "predict", SEED_BODY, content_type="application/json")
    full = reader_api.generic("POST", API + "predict", SEED_BODY, content_type="application/x-www-form-urlencoded")
    assert through_drf == ["application/x-www-form-urlencoded"]
    assert fast.status_code == full.status_code == 200
    assert fast["Content-Type"] == full["Content-Type"] == "application/json"
    assert fast["Allow"] == full["Allow"] and fast["Vary"] == full["Vary"]
    a, b = fast.json(), full.json()
    assert a.keys() == b.keys() and a["decision_id"] != b["decision_id"]
    assert {k: a[k] for k in a if k != "decision_id"} == {k: b[k] for k in b if k != "decision_id"}
    stored = {str(d.decision_id): d for d in Decision.objects.all()}
    assert set(stored) == {a["decision_id"], b["decision_id"]}
    assert stored[a["decision_id"]].features == stored[b["decision_id"]].features
    assert stored[a["decision_id"]].probabilities == pytest.approx(list(a["probabilities"].values()))

    # Batches take it too; anything malformed falls through to DRF for its error answer.
    batch = reader_api.post(API + "predict", {"observations": [{"rsi": 10}, {"rsi": 90}]}, format="json")
    assert batch.status_code == 200 and len(batch.json()) == 2 and len(through_drf) == 1
    bad = reader_api.post(API + "predict", {"observations": [{"rsi": 10}, {"rsi": "high"}]}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "observations[1].rsi" and len(through_drf) == 2
    assert Decision.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_fast_path_answers_503_when_the_database_is_unreachable(reader_api):
    """With PostgreSQL unreachable the prediction is a JSON 503 with Retry-After, not a 500."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (the port is pointed at a closed one)")
    assert reader_api.post(API + "predict", {"rsi": 50}, format="json").status_code == 200  # token cached
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"  # nothing listens there
    try:
        response = reader_api.post(API + "predict", {"rsi": 50}, format="json")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert response.status_code == 503, response.content
    assert response.json() == {"error": "the database is unavailable; retry shortly", "field": None}
    assert response["Retry-After"] == "5"
    assert Decision.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_inserts_go_on_after_a_failed_statement_and_a_new_connection(reader_api):
    """API inserts keep one psycopg cursor per connection: a statement that failed on it, and a
    connection Django replaced, leave later single and batch predictions stored."""
    from django.db import DatabaseError, connection

    from decisions import services

    if connection.vendor != "postgresql":
        pytest.skip("the insert path's own cursor is PostgreSQL's")

    def predict_single_and_batch():
        assert reader_api.post(API + "predict", {"rsi": 50}, format="json").status_code == 200
        batch = reader_api.post(API + "predict", {"observations": [{"rsi": 40}] * 30}, format="json")
        assert batch.status_code == 200, batch.content

    predict_single_and_batch()
    first = services._thread.cursor
    with pytest.raises(DatabaseError):
        services._execute_prepared("SELECT no_such_column FROM decisions_decision", [])
    predict_single_and_batch()
    assert services._thread.cursor is first  # kept across the error
    connection.close()
    predict_single_and_batch()
    assert services._thread.cursor is not first and services._thread.cursor.connection is connection.connection
    assert Decision.objects.count() == 3 * 31


@pytest.mark.django_db(transaction=True)
def test_the_insert_statements_are_prepared_once_a_connection_and_django_s_queries_are_not(reader_api):
    """A single prediction's INSERT is a server-side prepared statement: PostgreSQL parses and
    plans it once a connection, not once a call. Django's own queries stay unprepared."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    for rsi in (40, 50, 60):
        assert reader_api.post(API + "predict", {"rsi": rsi}, format="json").status_code == 200
    for _ in range(10):
        list(Decision.objects.filter(symbol="X")[:1])
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        prepared = [row[0] for row in cursor.fetchall()]
    inserts = [text for text in prepared if text.startswith("INSERT INTO") and "decisions_decision" in text]
    assert len(inserts) == 1, prepared
    assert not any(text.lstrip().upper().startswith("SELECT") for text in prepared), prepared
    assert Decision.objects.count() == 3


def test_status_has_seed_and_service_fields(reader_api):
    body = reader_api.get(API + "status").json()
    for key in ("active", "shadow_mode", "model_loaded", "experiences_collected", "model_path",
                "champion_version", "challenger_version", "last_training_run", "subscriber"):
        assert key in body, key
    assert body["model_loaded"] is False and body["champion_version"] is None
    assert body["experiences_collected"] == 0


@pytest.mark.django_db(transaction=True)
def test_status_counts_a_large_table_from_statistics_not_by_scanning_it(reader_api):
    """Above 10,000 rows status reads PostgreSQL's live-row count instead of COUNT(*)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from decisions.selectors import EXACT_COUNT_MAX

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL statistics")
    rows = EXACT_COUNT_MAX + 2_345
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO decisions_decision (decision_id, symbol, observation, features, feature_spec_version, action,"
            " probabilities, confidence, value, model_version, role, shadow_mode, source, created_at)"
            " SELECT gen_random_uuid(), 'BTCUSDT', array_fill(0.5::float8, ARRAY[37]), '', '', 0, '{1, 0, 0, 0, 0, 0}', 1, 0,"
            " 'untrained',"
            " 'champion', true, 'api', now() FROM generate_series(1, %s)",
            [rows],
        )
        cursor.execute("SELECT pg_stat_force_next_flush()")  # report this commit's counts now
    with CaptureQueriesContext(connection) as queries:
        body = reader_api.get(API + "status").json()
    assert body["decisions_total"] == rows
    assert body["experiences_collected"] == 0  # a small table: counted exactly
    counted = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counted and not any("decisions_decision" in sql for sql in counted), counted


def test_shadow_mode_seed_query_is_persisted_and_audited(operator_api, operator):
    response = operator_api.post(API + "shadow_mode?enabled=false&reason=going+live")
    assert response.status_code == 200, response.content
    assert response.json()["shadow_mode"] is False and response.json()["previous"] is True
    change = ShadowModeChange.objects.get()
    assert (change.changed_by, change.old_value, change.new_value, change.reason) == (operator, True, False, "going live")
    # A restart: a new process reads the persisted state, not the RLV3_SHADOW_MODE default.
    from decisions import services
    assert services.shadow_mode_state().enabled is False
    response = operator_api.post(API + "shadow_mode", {"enabled": True, "reason": "rollback"}, format="json")
    assert response.json()["shadow_mode"] is True
    assert ShadowModeChange.objects.count() == 2
    assert operator_api.get(API + "status").json()["shadow_mode"] is True


def test_shadow_mode_off_is_reflected_in_decisions(operator_api):
    operator_api.post(API + "shadow_mode?enabled=false")
    body = operator_api.post(API + "predict", {"rsi": 40}, format="json").json()
    assert body["shadow_mode"] is False


def test_train_seed_query_queues_a_run_and_conflicts_while_active(operator_api):
    response = operator_api.post(API + "train?num_episodes=100")
    assert response.status_code == 202, response.content
    body = response.json()
    run = TrainingRun.objects.get(pk=body["id"])
    assert run.timesteps == 100 * 512 and run.status in (RunStatus.QUEUED, RunStatus.RUNNING)
    assert body["url"].endswith(f"/training-runs/{run.pk}")
    second = operator_api.post(API + "train", {"timesteps": 5000}, format="json")
    assert second.status_code == 409
    assert second.json()["run_id"] == run.pk
    detail = operator_api.get(body["url"])
    assert detail.status_code == 200 and detail.json()["id"] == run.pk
    TrainingRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)
    assert operator_api.post(API + "train", {"timesteps": 5000, "dataset": "googl_1d"}, format="json").status_code == 202


def _decision(symbol="BTCUSDT", action=1, **kw):
    defaults = dict(symbol=symbol, observation={"rsi": 50, "symbol": symbol}, features=[0.0] * 64, action=action,
                    probabilities=[0.1, 0.5, 0.1, 0.1, 0.1, 0.1], confidence=0.5, value=0.0, model_version="1",
                    shadow_mode=True, source=DecisionSource.STREAM)
    defaults.update(kw)
    return Decision.objects.create(**defaults)


def _experience(decision, pnl=10.0, closed_at=None):
    return Experience.objects.create(
        decision=decision, symbol=decision.symbol, observation=decision.observation, action=decision.action,
        behaviour_probabilities=decision.probabilities, model_version=decision.model_version, reward=pnl / 100,
        pnl=pnl, roi=pnl / 10, closed_at=closed_at or timezone.now(),
    )


def test_experiences_are_filtered_and_paginated(reader_api):
    now = timezone.now()
    for i in range(7):
        _experience(_decision("BTCUSDT", action=1 + i % 2), pnl=i, closed_at=now - dt.timedelta(hours=i))
    _experience(_decision("ETHUSDT", action=4), pnl=-3)
    body = reader_api.get(API + "experiences", {"symbol": "BTCUSDT", "page_size": 3}).json()
    assert len(body["results"]) == 3 and body["next"]
    assert {r["symbol"] for r in body["results"]} == {"BTCUSDT"}
    first = body["results"][0]
    assert set(first) >= {"observation", "action", "reward", "pnl", "roi", "decision"}
    seen = [r["id"] for r in body["results"]]
    while body["next"]:
        body = reader_api.get(body["next"]).json()
        seen += [r["id"] for r in body["results"]]
    assert len(seen) == len(set(seen)) == 7
    assert len(reader_api.get(API + "experiences", {"action": "SHORT"}).json()["results"]) == 3
    assert len(reader_api.get(API + "experiences", {"action": "4"}).json()["results"]) == 1
    since = (now - dt.timedelta(hours=2, minutes=30)).isoformat()
    assert len(reader_api.get(API + "experiences", {"symbol": "BTCUSDT", "since": since}).json()["results"]) == 3
    until = (now - dt.timedelta(hours=4, minutes=30)).isoformat()
    assert len(reader_api.get(API + "experiences", {"symbol": "BTCUSDT", "until": until}).json()["results"]) == 2
    assert reader_api.get(API + "status").json()["experiences_collected"] == 8


def test_decisions_list_filters(reader_api):
    _decision("BTCUSDT", action=2)
    _decision("ETHUSDT", action=0, shadow_mode=False)
    results = reader_api.get(API + "decisions").json()["results"]
    assert len(results) == 2
    # The stored observation is an object of every field (defaults filled in), the probabilities a list.
    assert results[0]["observation"]["rsi"] == 50.0 and results[0]["observation"]["regime"] == "TREND"
    assert len(results[0]["observation"]) == 37 and results[0]["probabilities"] == [0.1, 0.5, 0.1, 0.1, 0.1, 0.1]
    assert [d["symbol"] for d in reader_api.get(API + "decisions", {"shadow_mode": "false"}).json()["results"]] == ["ETHUSDT"]
    assert reader_api.get(API + "decisions", {"action": "SHORT"}).json()["results"][0]["action"] == "SHORT"


def test_models_list_and_promote_unknown_version(operator_api):
    assert operator_api.get(API + "models").json() == []
    response = operator_api.post(API + "models/99/promote", {"reason": "x"}, format="json")
    assert response.status_code == 404 and response.json()["field"] == "version"


def test_training_run_not_found_is_json(reader_api):
    response = reader_api.get(API + "training-runs/12345")
    assert response.status_code == 404 and "error" in response.json()


def test_one_decision_per_stream_entry_is_enforced_by_the_database():
    _decision(stream_entry_id="1700000000000-0", correlation_id="c-1")
    with pytest.raises(IntegrityError), transaction.atomic():
        _decision(stream_entry_id="1700000000000-0")
    with pytest.raises(IntegrityError), transaction.atomic():
        _decision(stream_entry_id="1700000000001-0", correlation_id="c-1")
    # a challenger's shadow decision for the same entry is a different row, allowed once
    _decision(stream_entry_id="1700000000000-0", role="challenger")
    # API decisions have no entry id and may repeat freely
    _decision()
    _decision()
    assert Decision.objects.count() == 4


def test_one_experience_per_decision():
    decision = _decision()
    _experience(decision)
    with pytest.raises(IntegrityError), transaction.atomic():
        _experience(decision)


def test_migrations_are_complete():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_schema_and_docs(admin_api, reader_api, anon_api):
    schema = admin_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    for suffix in ("predict", "train", "status", "experiences", "shadow_mode", "decisions", "models",
                   "models/{version}/promote", "training-runs/{id}"):
        assert API + suffix in paths, suffix
    assert anon_api.get("/api/schema/").status_code == 401
    admin_api.force_authenticate(None)

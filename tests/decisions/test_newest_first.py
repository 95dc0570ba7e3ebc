"""Filtered lists shown newest first (`decisions.selectors.newest_first_filter`): the same rows as
the plain filter, and on PostgreSQL a first page read from the filter's own index even when the
value's rows all lie far back in time."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from decisions.models import Decision, DecisionSource, Experience
from decisions.selectors import newest_first_filter

pytestmark = pytest.mark.django_db
API = "/api/v1/rl/v3/"


def _decision(i: int, *, symbol: str, action: int, version: str, at) -> Decision:
    return Decision.objects.create(
        symbol=symbol, observation={"rsi": 50.0}, features=[0.0] * 64, action=action,
        probabilities=[0.5, 0.1, 0.1, 0.1, 0.1, 0.1], confidence=0.5, value=0.0, model_version=version,
        shadow_mode=True, source=DecisionSource.STREAM, stream_entry_id=f"1-{i}", created_at=at,
    )


@pytest.fixture
def spread():
    """Versions 1-3 one after another in time; symbols and actions interleaved; experiences for half."""
    now = timezone.now()
    made = []
    for i in range(30):
        d = _decision(i, symbol=("BTCUSDT", "ETHUSDT", "SOLUSDT")[i % 3], action=i % 4, version=str(1 + i // 10),
                      at=now - dt.timedelta(minutes=30 - i))
        if i % 2:
            Experience.objects.create(decision=d, symbol=d.symbol, observation={}, action=d.action, behaviour_probabilities=[],
                                      model_version=d.model_version, reward=0.0, pnl=0.0, roi=0.0, closed_at=d.created_at)
        made.append(d)
    return made


@pytest.mark.parametrize("model", [Decision, Experience])
@pytest.mark.parametrize("equal", [
    {"model_version": "1"}, {"model_version": "3"}, {"model_version": "9"}, {"symbol": "ETHUSDT"}, {"symbol": "NOPE"},
    {"action": 3}, {"action": 5},
])
def test_the_same_rows_as_the_plain_filter(spread, model, equal):
    plain = list(model.objects.filter(**equal))
    assert list(newest_first_filter(model.objects.all(), **equal)) == plain
    assert (len(plain) > 0) == (equal not in ({"model_version": "9"}, {"symbol": "NOPE"}, {"action": 5}))


def test_combined_filters_through_the_api_and_the_admin(spread, reader_api, admin_client):
    body = reader_api.get(API + "decisions", {"model_version": "2", "action": "1", "page_size": 50}).json()
    expected = [d for d in reversed(spread) if d.model_version == "2" and d.action == 1]
    assert [r["decision_id"] for r in body["results"]] == [str(d.decision_id) for d in expected] and expected
    body = reader_api.get(API + "experiences", {"symbol": "ETHUSDT", "model_version": "1"}).json()
    assert {r["symbol"] for r in body["results"]} == {"ETHUSDT"} and len(body["results"]) == 2
    page = admin_client.get("/admin/decisions/decision/", {"action__exact": "3", "model_version": "1"}).content.decode()
    assert "3 decisions" in page
    assert "0 decisions" in admin_client.get("/admin/decisions/decision/", {"action__exact": "7"}).content.decode()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner")
def test_the_oldest_version_is_read_from_its_own_index(reader_api):
    """200,000 decisions, version 1 the oldest fifth: the first page for it reads a few rows, not
    the 160,000 newer ones (which the planner did through the time index before the bound)."""
    with connection.cursor() as cur:
        cur.execute("""
            INSERT INTO decisions_decision (decision_id, symbol, observation, features, feature_spec_version, action,
                probabilities, confidence, value, model_version, role, shadow_mode, source, created_at)
            SELECT md5(g::text)::uuid, (ARRAY['BTCUSDT','ETHUSDT'])[1 + g % 2], array_fill(0::float8, ARRAY[37]),
                decode(repeat('00', 256), 'hex'), 'f', g % 6,
                '{0.1,0.5,0.1,0.1,0.1,0.1}', 0.5, 0.0, (1 + (g - 1) / 40000)::text, 'champion', true, 'api',
                now() - ((200000 - g) || ' seconds')::interval
            FROM generate_series(1, 200000) g
        """)
        cur.execute("ANALYZE decisions_decision")
    with CaptureQueriesContext(connection) as queries:
        body = reader_api.get(API + "decisions", {"model_version": "1"}).json()
    assert len(body["results"]) == 50 and {r["model_version"] for r in body["results"]} == {"1"}
    (listing,) = [q["sql"] for q in queries.captured_queries if 'FROM "decisions_decision"' in q["sql"]]
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + listing)
        plan = cur.fetchone()[0]
    removed = []

    def walk(node):
        removed.append(node.get("Rows Removed by Filter", 0))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    assert sum(removed) < 1000, plan

"""Champion vs challenger on the same signals: the A/B report and its endpoint."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from decisions.ab import ab_report
from decisions.models import Decision, Experience, ModelRole
from decisions.streams import codec
from training.rl.actions import ACTION_NAMES, Action

from .stream_helpers import drain, publish, register_model, signal_payload

pytestmark = pytest.mark.django_db


@pytest.fixture
def scored(redis_client, stream_prefix):
    """40 varied signals scored by champion v1 and challenger v2, with 10 positions closed."""
    champion, challenger = register_model(seed=21, alias="champion"), register_model(seed=22, alias="challenger")
    for i in range(40):
        publish(redis_client, codec.SIGNAL_GENERATED, signal_payload(
            "BTCUSDT", rsi=float(2 * i + 10), price_change_1m=0.004 * ((i % 9) - 4), position_side=(i % 3) - 1,
            position_size=0.5 * (i % 3 != 1), regime=("TREND", "RANGE", "BREAKOUT", "MEAN_REVERSION")[i % 4],
        ))
    drain()
    champions = list(Decision.objects.filter(role=ModelRole.CHAMPION).order_by("created_at", "pk"))
    for i, d in enumerate(champions[:10]):
        publish(redis_client, codec.POSITION_CLOSED, {"symbol": "BTCUSDT", "pnl": float(i - 4), "roi": float(i - 4) / 10, "decision_id": str(d.decision_id)})
    drain()
    return champion, challenger


def _expected(pairs):
    agree = sum(1 for c, ch in pairs if c.action == ch.action)
    return agree / len(pairs)


def test_report_compares_the_two_versions_on_the_same_signals(scored):
    champion, challenger = scored
    report = ab_report()
    (cmp,) = report["comparisons"]
    assert (cmp["champion_version"], cmp["challenger_version"]) == (str(champion.version), str(challenger.version))
    champ = {d.stream_entry_id: d for d in Decision.objects.filter(role=ModelRole.CHAMPION)}
    chall = {d.stream_entry_id: d for d in Decision.objects.filter(role=ModelRole.CHALLENGER)}
    pairs = [(champ[k], chall[k]) for k in champ]
    assert cmp["signals"] == 40
    assert 0 < cmp["agreement_rate"] < 1  # the seeds give both agreements and disagreements
    assert cmp["agreement_rate"] == pytest.approx(_expected(pairs), abs=1e-6)
    assert cmp["champion_actions"] == {n: Counter(ACTION_NAMES[c.action] for c, _ in pairs)[n] for n in ACTION_NAMES}
    assert cmp["challenger_actions"] == {n: Counter(ACTION_NAMES[ch.action] for _, ch in pairs)[n] for n in ACTION_NAMES}
    confusion = Counter((ACTION_NAMES[c.action], ACTION_NAMES[ch.action]) for c, ch in pairs)
    assert {(a, b): n for a, row in cmp["confusion"].items() for b, n in row.items()} == dict(confusion)

    experiences = list(Experience.objects.select_related("decision"))
    outcomes = cmp["outcomes"]
    assert outcomes["champion"]["closed"] == 10
    assert outcomes["champion"]["total_pnl"] == pytest.approx(sum(e.pnl for e in experiences))
    assert outcomes["champion"]["mean_reward"] == pytest.approx(sum(e.reward for e in experiences) / 10)
    assert outcomes["champion"]["win_rate"] == pytest.approx(sum(e.pnl > 0 for e in experiences) / 10)
    agreed = [e for e in experiences if chall[e.decision.stream_entry_id].action == e.action]
    assert outcomes["when_agreed"]["closed"] == len(agreed)
    assert outcomes["when_agreed"]["closed"] + outcomes["when_disagreed"]["closed"] == 10
    assert outcomes["when_agreed"]["total_pnl"] == pytest.approx(sum(e.pnl for e in agreed))
    direction = {Action.LONG: 1, Action.SHORT: -1}
    estimate = [
        direction[e.action] * direction.get(chall[e.decision.stream_entry_id].action, 0) * e.pnl
        for e in experiences if e.action in direction
    ]
    assert outcomes["challenger_estimate"]["closed"] == len(estimate)
    assert outcomes["challenger_estimate"]["total_pnl"] == pytest.approx(sum(estimate))


def test_report_since_excludes_older_decisions(scored):
    assert ab_report(since=datetime.now(UTC) + timedelta(minutes=1))["comparisons"] == []
    assert ab_report(since=datetime.now(UTC) - timedelta(hours=1))["comparisons"][0]["signals"] == 40


def test_ab_report_endpoint(scored, reader_api, anon_api):
    body = reader_api.get("/api/v1/rl/v3/ab-report").json()
    assert body == ab_report() | {"since": None}
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    response = reader_api.get("/api/v1/rl/v3/ab-report", {"since": future})
    assert response.status_code == 200 and response.json()["comparisons"] == []
    response = reader_api.get("/api/v1/rl/v3/ab-report", {"since": "last tuesday"})
    assert response.status_code == 400 and response.json()["field"] == "since"
    assert anon_api.get("/api/v1/rl/v3/ab-report").status_code in (401, 403)


def test_report_is_empty_without_a_challenger(redis_client, stream_prefix):
    publish(redis_client, codec.SIGNAL_GENERATED, signal_payload())
    drain()
    assert ab_report() == {"since": None, "comparisons": []}

"""position.closed: pairing with the decision it realises (never across symbols) and the Experience."""

from __future__ import annotations

import pytest

from decisions.models import Decision, Experience
from decisions.services import experience_reward
from decisions.streams import codec

from .stream_helpers import dead_letters, drain, publish, replay_all, signal_payload

pytestmark = pytest.mark.django_db

SIGNAL, CLOSED = codec.SIGNAL_GENERATED, codec.POSITION_CLOSED


def _decide(client, *specs) -> list[Decision]:
    """Publish signals (symbol, correlation id) and process them; the decisions in that order."""
    ids = [publish(client, SIGNAL, signal_payload(symbol), correlation_id=corr) for symbol, corr in specs]
    drain()
    by_entry = {d.stream_entry_id: d for d in Decision.objects.all()}
    return [by_entry[i] for i in ids]


def test_pairs_by_decision_id_and_stores_the_behaviour_policy(redis_client, stream_prefix):
    first, second = _decide(redis_client, ("BTCUSDT", None), ("BTCUSDT", None))
    entry = publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 42.5, "roi": 3.0, "position_id": "p-1", "decision_id": str(first.decision_id)})
    drain()
    exp = Experience.objects.get()
    assert exp.decision_id == first.pk  # the named one, not the latest (second)
    assert (exp.symbol, exp.observation, exp.action, exp.behaviour_probabilities, exp.model_version) == (
        "BTCUSDT", first.observation, first.action, first.probabilities, first.model_version)
    assert (exp.pnl, exp.roi, exp.reward, exp.position_id, exp.stream_entry_id) == (42.5, 3.0, 0.03, "p-1", entry)
    assert second.pk != first.pk


def test_pairs_by_correlation_id_then_by_the_latest_unpaired_decision_of_the_symbol(redis_client, stream_prefix):
    a, b, c, eth = _decide(redis_client, ("BTCUSDT", "flow-a"), ("BTCUSDT", None), ("BTCUSDT", None), ("ETHUSDT", None))
    publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl_usdt": -5.0, "roi_percent": -1.0}, correlation_id="flow-a")
    publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 7.0, "roi": 0.5})  # -> c, the latest unpaired
    publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 8.0, "roi": 0.6})  # -> b
    drain()
    paired = dict(Experience.objects.values_list("decision_id", "pnl"))
    assert paired == {a.pk: -5.0, c.pk: 7.0, b.pk: 8.0}
    assert not Experience.objects.filter(decision=eth).exists()


def test_pairing_never_crosses_symbols(redis_client, stream_prefix):
    (btc,) = _decide(redis_client, ("BTCUSDT", "flow-1"))
    by_id = publish(redis_client, CLOSED, {"symbol": "ETHUSDT", "pnl": 1.0, "roi": 0.1, "decision_id": str(btc.decision_id)})
    by_corr = publish(redis_client, CLOSED, {"symbol": "ETHUSDT", "pnl": 1.0, "roi": 0.1}, correlation_id="flow-1")
    latest = publish(redis_client, CLOSED, {"symbol": "ETHUSDT", "pnl": 1.0, "roi": 0.1})
    drain()
    assert Experience.objects.count() == 0
    errors = {letter.entry_id: letter.error for letter in dead_letters(redis_client)}
    assert errors[by_id] == f"decision_id {btc.decision_id} is a BTCUSDT decision, not ETHUSDT"
    assert errors[by_corr] == "correlation_id flow-1 is a BTCUSDT decision, not ETHUSDT"
    assert errors[latest] == "no decision to pair"


def test_a_close_with_nothing_to_pair_is_dead_lettered(redis_client, stream_prefix):
    entry = publish(redis_client, CLOSED, {"symbol": "XRPUSDT", "pnl": 1.0, "roi": 0.1})
    stats = drain()
    (letter,) = dead_letters(redis_client)
    assert (letter.entry_id, letter.error, stats.dead_lettered) == (entry, "no decision to pair", 1)


def test_replaying_closes_creates_no_second_experience(redis_client, stream_prefix):
    _decide(redis_client, ("BTCUSDT", None), ("BTCUSDT", None))
    for pnl in (1.0, 2.0):
        publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": pnl, "roi": pnl})
    drain()
    before = dict(Experience.objects.values_list("stream_entry_id", "decision_id"))
    replay_all(redis_client, CLOSED)
    drain()
    assert dict(Experience.objects.values_list("stream_entry_id", "decision_id")) == before
    assert len(before) == 2 and not dead_letters(redis_client)


def test_a_decision_is_paired_at_most_once(redis_client, stream_prefix):
    (d,) = _decide(redis_client, ("BTCUSDT", None))
    publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 1.0, "roi": 0.1, "decision_id": str(d.decision_id)})
    again = publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 2.0, "roi": 0.2, "decision_id": str(d.decision_id)})
    drain()
    assert Experience.objects.get().pnl == 1.0
    (letter,) = dead_letters(redis_client)
    assert letter.entry_id == again and letter.error == f"decision {d.decision_id} (decision_id) is already paired"


@pytest.mark.parametrize(("roi", "reward"), [(0.0, 0.0), (2.5, 0.025), (-40.0, -0.4), (250.0, 1.0), (-180.0, -1.0)])
def test_reward_is_roi_as_a_fraction_clipped_to_one(roi, reward):
    assert experience_reward(roi_percent=roi) == pytest.approx(reward)

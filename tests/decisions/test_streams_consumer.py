"""The subscriber against the real Redis and database: decisions, events, exactly-once, poison entries."""

from __future__ import annotations

import json

import pytest

from decisions import services
from decisions.models import Decision, ModelRole
from decisions.selectors import SUBSCRIBER_HEARTBEATS_KEY, subscriber_health
from decisions.streams import codec
from decisions.streams.handlers import BatchHandlers, Entry
from training.rl.actions import ACTION_NAMES

from .stream_helpers import (
    consumer, dead_letters, drain, pending_count, publish, published_decisions, register_model, replay_all,
    signal_payload,
)

pytestmark = pytest.mark.django_db

SIGNAL = codec.SIGNAL_GENERATED


def test_wire_format_signals_become_stored_decisions_and_decision_events(redis_client, stream_prefix):
    ids = [
        publish(redis_client, SIGNAL, signal_payload(rsi=20.0 + 10 * i), trace_id=f"trace-{i}", correlation_id=f"corr-{i}")
        for i in range(5)
    ]
    stats = drain()

    assert stats.processed == 5 and stats.published == 5 and stats.dead_lettered == 0
    stored = {d.stream_entry_id: d for d in Decision.objects.all()}
    assert set(stored) == set(ids)
    events = published_decisions(redis_client)
    assert [e.signal_event_id for _, e in events] == ids  # published in stream order
    for i, (envelope, event) in enumerate(events):
        d = stored[event.signal_event_id]
        assert (d.role, d.source, d.symbol, d.observation["rsi"]) == (ModelRole.CHAMPION, "stream", "BTCUSDT", 20.0 + 10 * i)
        assert (d.trace_id, d.correlation_id) == (f"trace-{i}", f"corr-{i}")
        assert (envelope.trace_id, envelope.correlation_id) == (f"trace-{i}", f"corr-{i}")
        assert envelope.source == "rl_v3_ppo"
        payload = envelope.payload
        assert payload["symbol"] == "BTCUSDT" and payload["source"] == "rl_v3_ppo"
        assert payload["action"] == ACTION_NAMES[d.action] and payload["action_code"] == d.action
        assert payload["confidence"] == d.confidence == pytest.approx(d.probabilities[d.action])
        assert payload["value"] == d.value
        assert payload["probabilities"] == dict(zip(ACTION_NAMES, d.probabilities))
        assert payload["shadow_mode"] is True and d.shadow_mode is True
        assert payload["model_version"] == d.model_version == "untrained"
        assert payload["decision_id"] == str(d.decision_id)
        assert payload["signal_event_id"] == d.stream_entry_id
    assert pending_count(redis_client, SIGNAL) == 0


def test_shadow_mode_is_read_from_the_persisted_state(redis_client, stream_prefix):
    services.shadow_mode_set(enabled=False, reason="tests")
    publish(redis_client, SIGNAL, signal_payload())
    drain()
    ((_, event),) = published_decisions(redis_client)
    assert event.shadow_mode is False
    assert Decision.objects.get().shadow_mode is False


def test_replaying_the_same_entries_republishes_the_same_decisions(redis_client, stream_prefix):
    ids = [publish(redis_client, SIGNAL, signal_payload(rsi=float(i))) for i in range(20)]
    drain()
    first = {e.signal_event_id: e.decision_id for _, e in published_decisions(redis_client)}

    replay_all(redis_client, SIGNAL)
    stats = drain()

    assert stats.processed == 20
    assert Decision.objects.count() == 20
    events = published_decisions(redis_client)
    assert len(events) == 40
    for _, event in events:
        assert first[event.signal_event_id] == event.decision_id
    assert set(first) == set(ids)


def test_a_batch_persisted_but_never_published_or_acked_is_published_once_recovered(redis_client, stream_prefix, settings):
    """A crash between the database commit and the Redis MULTI: the restarted consumer (same name)
    re-reads its pending entries and publishes the decisions that were stored, not new ones."""
    ids = [publish(redis_client, SIGNAL, signal_payload(rsi=float(i))) for i in range(7)]
    key = codec.stream_key(SIGNAL, settings.RLV3_STREAM_PREFIX)
    consumer("crashy")._ensure_groups()
    (_, raw), = redis_client.xreadgroup(codec.group_name(SIGNAL, settings.RLV3_GROUP_PREFIX), "crashy", {key: ">"}, count=100)
    BatchHandlers(consumer="crashy", stream_prefix=settings.RLV3_STREAM_PREFIX, bar_seconds=60).signals(
        [Entry(entry_id=i, fields=f) for i, f in raw]
    )
    stored = dict(Decision.objects.values_list("stream_entry_id", "decision_id"))
    assert pending_count(redis_client, SIGNAL) == 7 and not published_decisions(redis_client)

    drain("crashy")

    assert Decision.objects.count() == 7
    events = published_decisions(redis_client)
    assert sorted(e.signal_event_id for _, e in events) == sorted(ids)
    assert all(str(stored[e.signal_event_id]) == e.decision_id for _, e in events)
    assert pending_count(redis_client, SIGNAL) == 0


def test_entries_of_a_dead_consumer_are_claimed_after_the_idle_time(redis_client, stream_prefix, settings):
    ids = [publish(redis_client, SIGNAL, signal_payload()) for _ in range(4)]
    key = codec.stream_key(SIGNAL, settings.RLV3_STREAM_PREFIX)
    consumer("dead")._ensure_groups()
    redis_client.xreadgroup(codec.group_name(SIGNAL, settings.RLV3_GROUP_PREFIX), "dead", {key: ">"}, count=100)

    drain("alive", claim_idle_ms=60_000)  # not idle long enough: left to their owner
    assert Decision.objects.count() == 0 and pending_count(redis_client, SIGNAL) == 4

    drain("alive", claim_idle_ms=0)
    assert sorted(Decision.objects.values_list("stream_entry_id", flat=True)) == sorted(ids)
    assert pending_count(redis_client, SIGNAL) == 0


def test_a_second_signal_with_a_decided_correlation_id_gets_the_same_decision(redis_client, stream_prefix):
    """A producer retry (same correlation id, new entry) must not create a second decision."""
    a = publish(redis_client, SIGNAL, signal_payload(), correlation_id="order-flow-1")
    b = publish(redis_client, SIGNAL, signal_payload(), correlation_id="order-flow-1")
    drain()
    decision = Decision.objects.get()
    assert decision.stream_entry_id == a
    events = published_decisions(redis_client)
    assert [e.decision_id for _, e in events] == [str(decision.decision_id)] * 2
    assert pending_count(redis_client, SIGNAL) == 0 and b


POISON = [
    ({"event_type": SIGNAL, "payload": "{not json"}, "payload: is not valid JSON"),
    ({"event_type": SIGNAL, "payload": "[1, 2, 3]"}, "payload: must be a JSON object, got an array"),
    ({"event_type": SIGNAL, "payload": json.dumps({"rsi": 40})}, "symbol: is missing"),
    ({"event_type": SIGNAL, "payload": '{"symbol": "BTCUSDT", "rsi": NaN}'}, "payload: is not valid JSON"),
    ({"event_type": SIGNAL, "payload": json.dumps({"symbol": "BTCUSDT", "rsi": "40"})}, "rsi: must be a number, got str"),
    ({"event_type": SIGNAL, "payload": '{"symbol": "BTCUSDT", "volatility": 1e999}'}, "payload: is not valid JSON (number is infinity"),
    ({"event_type": "order.placed", "payload": json.dumps({"symbol": "BTCUSDT"})}, "event_type: unknown event type 'order.placed'"),
    ({"event_type": SIGNAL}, "payload: is missing"),
    ({"payload": json.dumps({"symbol": "BTCUSDT"})}, "event_type: is missing"),
    ({"event_type": SIGNAL, "payload": b'{"symbol": "\xff"}'}, "payload: is not valid UTF-8"),
]


def test_poison_entries_are_dead_lettered_with_reasons_while_valid_ones_around_them_are_processed(redis_client, stream_prefix, settings):
    valid, poison = [], {}
    for fields, reason in POISON:
        valid.append(publish(redis_client, SIGNAL, signal_payload()))
        poison[publish(redis_client, SIGNAL, None, raw=fields)] = (fields, reason)
    valid.append(publish(redis_client, SIGNAL, signal_payload()))

    stats = drain()

    assert sorted(Decision.objects.values_list("stream_entry_id", flat=True)) == sorted(valid)
    assert stats.dead_lettered == len(POISON) and stats.processed == len(valid)
    letters = {letter.entry_id: letter for letter in dead_letters(redis_client)}
    assert set(letters) == set(poison)
    for entry_id, (fields, reason) in poison.items():
        letter = letters[entry_id]
        assert letter.error.startswith(reason), letter.error
        assert letter.stream == codec.stream_key(SIGNAL, settings.RLV3_STREAM_PREFIX)
        assert letter.deliveries == 1 and letter.consumer == "c1"
        expected = {k: (v.decode(errors="replace") if isinstance(v, bytes) else v) for k, v in fields.items()}
        assert letter.original == expected
    assert pending_count(redis_client, SIGNAL) == 0


def test_an_entry_delivered_more_than_max_deliveries_is_dead_lettered(redis_client, stream_prefix, settings):
    entry_id = publish(redis_client, SIGNAL, signal_payload())
    key, group = codec.stream_key(SIGNAL, settings.RLV3_STREAM_PREFIX), codec.group_name(SIGNAL, settings.RLV3_GROUP_PREFIX)
    consumer("c1")._ensure_groups()
    redis_client.xreadgroup(group, "c1", {key: ">"})  # delivery 1 (say the process crashed on it)
    redis_client.xreadgroup(group, "c1", {key: "0"})  # delivery 2 (and again)

    stats = drain("c1", max_deliveries=2)  # its re-read is delivery 3

    assert Decision.objects.count() == 0
    (letter,) = dead_letters(redis_client)
    assert letter.entry_id == entry_id and letter.deliveries == 3
    assert "delivered 3 times (more than RLV3_MAX_DELIVERIES=2)" in letter.error
    assert stats.dead_lettered == 1 and pending_count(redis_client, SIGNAL) == 0


def test_an_entry_that_breaks_processing_is_isolated_and_dead_lettered(redis_client, stream_prefix, monkeypatch):
    real = services.decisions_prepare

    def failing_on_boom(*, observations, contexts):
        if any(o["symbol"] == "BOOM" for o in observations):
            raise ValueError("cannot decide for BOOM")
        return real(observations=observations, contexts=contexts)

    monkeypatch.setattr(services, "decisions_prepare", failing_on_boom)
    ok = [publish(redis_client, SIGNAL, signal_payload("BTCUSDT")), None, publish(redis_client, SIGNAL, signal_payload("ETHUSDT"))]
    ok[1] = publish(redis_client, SIGNAL, signal_payload("BOOM"))

    stats = drain()

    assert sorted(Decision.objects.values_list("symbol", flat=True)) == ["BTCUSDT", "ETHUSDT"]
    (letter,) = dead_letters(redis_client)
    assert letter.entry_id == ok[1] and letter.error == "processing failed: ValueError: cannot decide for BOOM"
    assert stats.processed == 2 and pending_count(redis_client, SIGNAL) == 0


def test_challenger_scores_every_signal_but_only_the_champion_is_published(redis_client, stream_prefix):
    champion = register_model(seed=11, alias="champion")
    challenger = register_model(seed=12, alias="challenger")
    ids = [publish(redis_client, SIGNAL, signal_payload(rsi=float(5 * i))) for i in range(10)]

    drain()

    rows = Decision.objects.all()
    assert rows.filter(role=ModelRole.CHAMPION, model_version=str(champion.version)).count() == 10
    assert rows.filter(role=ModelRole.CHALLENGER, model_version=str(challenger.version), shadow_mode=True).count() == 10
    assert set(rows.filter(role=ModelRole.CHALLENGER).values_list("stream_entry_id", flat=True)) == set(ids)
    events = published_decisions(redis_client)
    assert len(events) == 10 and {e.model_version for _, e in events} == {str(champion.version)}
    assert {e.decision_id for _, e in events} == {str(x) for x in rows.filter(role=ModelRole.CHAMPION).values_list("decision_id", flat=True)}


def test_heartbeat_reports_lag_and_pending_for_the_status_endpoint(redis_client, stream_prefix, reader_api):
    subscriber = consumer("beat-1")
    subscriber._ensure_groups()
    for _ in range(3):
        publish(redis_client, SIGNAL, signal_payload())
    try:
        beat = subscriber.heartbeat()
        stored = json.loads(redis_client.hget(SUBSCRIBER_HEARTBEATS_KEY, "beat-1"))
        assert stored["lag"] == beat["lag"] == 3 and stored["pending"] == 0
        assert stored["streams"][SIGNAL]["lag"] == 3
        assert {"ts", "processed", "dead_lettered", "streams"} <= set(stored)
        health = subscriber_health()
        assert health["alive"] and any(c["consumer"] == "beat-1" for c in health["consumers"])
        status = reader_api.get("/api/v1/rl/v3/status").json()
        assert status["subscriber"]["alive"] is True

        subscriber.run(once=True)
        beat = subscriber.heartbeat()
        assert beat["lag"] == 0 and beat["processed"] == 3
        subscriber.heartbeat(final=True)  # a clean stop removes the consumer's entry
        assert redis_client.hget(SUBSCRIBER_HEARTBEATS_KEY, "beat-1") is None
    finally:
        redis_client.hdel(SUBSCRIBER_HEARTBEATS_KEY, "beat-1")


@pytest.mark.django_db(transaction=True)
def test_a_commit_failing_on_the_pipeline_thread_is_redone_isolating_the_entry(redis_client, stream_prefix, monkeypatch):
    real = services.decisions_store

    def failing_on_boom(*, prepared):
        if any(d.symbol == "BOOM" for d in prepared.champions):
            raise ValueError("cannot store BOOM")
        return real(prepared=prepared)

    monkeypatch.setattr(services, "decisions_store", failing_on_boom)
    first = publish(redis_client, SIGNAL, signal_payload("BTCUSDT"))
    boom = publish(redis_client, SIGNAL, signal_payload("BOOM"))
    last = publish(redis_client, SIGNAL, signal_payload("ETHUSDT"))

    stats = drain(pipeline=True)

    assert sorted(Decision.objects.values_list("stream_entry_id", flat=True)) == sorted([first, last])
    (letter,) = dead_letters(redis_client)
    assert letter.entry_id == boom and letter.error == "processing failed: ValueError: cannot store BOOM"
    assert sorted(e.signal_event_id for _, e in published_decisions(redis_client)) == sorted([first, last])
    assert stats.processed == 2 and pending_count(redis_client, SIGNAL) == 0

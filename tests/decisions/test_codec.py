"""The wire codec (CONTRACTS section 6): round trips and the exact errors for bad entries."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decisions.streams import codec
from training.rl.actions import ACTION_NAMES, N_ACTIONS

symbols = st.from_regex(r"[A-Za-z0-9._:/-]{1,32}", fullmatch=True)
ids = st.one_of(st.none(), st.text(min_size=1, max_size=40))
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), finite, st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(
    event_type=st.sampled_from([codec.SIGNAL_GENERATED, codec.MARKET_DATA_UPDATED, codec.POSITION_CLOSED, "other.type"]),
    payload=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    trace_id=ids, correlation_id=ids, timestamp=moments, source=st.text(max_size=20),
)
def test_entry_round_trip(event_type, payload, trace_id, correlation_id, timestamp, source):
    envelope = codec.Envelope(event_type, payload, trace_id, correlation_id, timestamp, source)
    fields = codec.encode_entry(envelope)
    assert set(fields) == set(codec.ENTRY_FIELDS)
    assert all(isinstance(v, str) for v in fields.values())
    # As redis-py returns it without decode_responses: bytes keys and values.
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    assert codec.decode_entry(raw) == envelope
    assert codec.decode_entry(fields) == envelope


@given(
    symbol=symbols, code=st.integers(0, N_ACTIONS - 1), confidence=st.floats(0, 1),
    value=finite, probabilities=st.lists(st.floats(0, 1), min_size=N_ACTIONS, max_size=N_ACTIONS),
    shadow=st.booleans(), version=st.one_of(st.just("untrained"), st.integers(1, 10_000).map(str)),
    signal_id=st.from_regex(r"[0-9]{13}-[0-9]{1,3}", fullmatch=True), trace_id=ids, correlation_id=ids,
)
def test_decision_event_round_trip(symbol, code, confidence, value, probabilities, shadow, version, signal_id, trace_id, correlation_id):
    event = codec.DecisionEvent(
        symbol=symbol, action_code=code, confidence=confidence, value=value, probabilities=tuple(probabilities),
        shadow_mode=shadow, model_version=version, decision_id=str(uuid.uuid4()), signal_event_id=signal_id,
    )
    fields = codec.decision_entry(event, trace_id=trace_id, correlation_id=correlation_id)
    envelope = codec.decode_entry(fields)
    assert envelope.event_type == codec.DECISION
    assert (envelope.trace_id, envelope.correlation_id, envelope.source) == (trace_id, correlation_id, "rl_v3_ppo")
    payload = envelope.payload
    assert set(payload) == {
        "symbol", "action", "action_code", "confidence", "value", "probabilities", "shadow_mode", "source",
        "model_version", "decision_id", "signal_event_id",
    }
    assert payload["action"] == ACTION_NAMES[code] and list(payload["probabilities"]) == list(ACTION_NAMES)
    assert codec.decode_decision(payload) == event


@given(
    symbol=symbols, price=st.floats(1e-6, 1e9), volume=st.one_of(st.none(), st.floats(0, 1e12)),
    close=st.one_of(st.none(), st.floats(1e-6, 1e9)), timestamp=st.one_of(st.none(), moments),
)
def test_market_tick_round_trip(symbol, price, volume, close, timestamp):
    tick = codec.MarketTick(symbol=symbol, price=price, close=close, volume=volume, timestamp=timestamp)
    payload = json.loads(json.dumps(codec.market_tick_payload(tick)))
    assert codec.decode_market_tick(payload) == tick


@given(
    symbol=symbols, pnl=finite, roi=finite, position_id=st.one_of(st.none(), st.text(min_size=1, max_size=30)),
    decision_id=st.one_of(st.none(), st.uuids().map(str)),
)
def test_position_close_round_trip(symbol, pnl, roi, position_id, decision_id):
    close = codec.PositionClose(symbol=symbol, pnl=pnl, roi=roi, position_id=position_id, decision_id=decision_id)
    payload = json.loads(json.dumps(codec.position_close_payload(close)))
    assert codec.decode_position_close(payload) == close


@settings(max_examples=50)
@given(original=st.dictionaries(st.binary(min_size=1, max_size=10), st.binary(max_size=30), min_size=1, max_size=4), error=st.text(min_size=1, max_size=60))
def test_dead_letter_keeps_the_original_entry(original, error):
    letter = codec.DeadLetter(stream="s", entry_id="1-0", error=error, original=original, deliveries=3, consumer="c1")
    fields = codec.dead_letter_entry(letter, trace_id="t", correlation_id=None)
    assert fields["error"] == error
    back = codec.decode_dead_letter({k.encode(): v.encode() for k, v in fields.items()})
    assert (back.stream, back.entry_id, back.error, back.deliveries, back.consumer) == ("s", "1-0", error, 3, "c1")
    # Undecodable bytes are replaced, never dropped: every original field is there.
    assert back.original == {k.decode(errors="replace"): v.decode(errors="replace") for k, v in original.items()}


def test_close_aliases_pnl_usdt_and_roi_percent():
    close = codec.decode_position_close({"symbol": "BTCUSDT", "pnl_usdt": 12, "roi_percent": -3.5, "position_id": 77})
    assert (close.pnl, close.roi, close.position_id) == (12.0, -3.5, "77")


def test_signal_requires_a_symbol_and_validates_with_the_observation_rules():
    obs = codec.decode_signal({"symbol": "ETHUSDT", "rsi": 61, "regime": "range", "strategy": "ignored"})
    assert obs["symbol"] == "ETHUSDT" and obs["rsi"] == 61.0 and obs["regime"] == "RANGE"
    assert "strategy" not in obs


def test_timestamps_naive_means_utc_and_z_is_accepted():
    assert codec.parse_timestamp("2025-01-02T03:04:05") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert codec.parse_timestamp("2025-01-02T03:04:05Z") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert codec.parse_timestamp("2025-01-02T05:04:05+02:00") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _fields(body, **overrides) -> dict:
    fields = {"event_type": codec.SIGNAL_GENERATED, "payload": body if isinstance(body, str) else json.dumps(body),
              "trace_id": "t", "correlation_id": "c", "timestamp": "2025-01-01T00:00:00+00:00", "source": "x"}
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        (_fields("{not json"), "payload", "is not valid JSON"),
        (_fields("[1, 2]"), "payload", "must be a JSON object, got an array"),
        (_fields('"text"'), "payload", "must be a JSON object, got a string"),
        (_fields('{"symbol": "BTCUSDT", "rsi": NaN}'), "payload", "is not valid JSON"),
        (_fields('{"symbol": "BTCUSDT", "rsi": Infinity}'), "payload", "is not valid JSON"),
        (_fields('{"symbol": "BTCUSDT", "rsi": 1e999}'), "payload", "is not valid JSON (number is infinity"),
        (_fields({}, payload=None), "payload", "is missing"),
        (_fields({}, event_type=None), "event_type", "is missing"),
        (_fields({}, timestamp="yesterday"), "timestamp", "must be an ISO-8601 time"),
        ({b"event_type": b"signal.generated", b"payload": b"{\xff}"}, "payload", "is not valid UTF-8"),
        (_fields('{"x": "' + "y" * codec.MAX_PAYLOAD_BYTES + '"}'), "payload", "is larger than"),
    ],
)
def test_undecodable_entries_name_the_field(fields, field, reason):
    with pytest.raises(codec.WireError) as err:
        codec.decode_entry(fields)
    assert err.value.field == field and reason in err.value.reason


@pytest.mark.parametrize(
    ("decode", "payload", "field", "reason"),
    [
        (codec.decode_signal, {"rsi": 50}, "symbol", "is missing"),
        (codec.decode_signal, {"symbol": 42}, "symbol", "must be 1-32 characters"),
        (codec.decode_signal, {"symbol": "BTC USDT"}, "symbol", "must be 1-32 characters"),
        (codec.decode_signal, {"symbol": "BTCUSDT", "rsi": "high"}, "rsi", "must be a number, got str"),
        (codec.decode_signal, {"symbol": "BTCUSDT", "rsi": True}, "rsi", "must be a number, got bool"),
        (codec.decode_signal, {"symbol": "BTCUSDT", "rsi": 1e999}, "rsi", "must be a finite number"),
        (codec.decode_signal, {"symbol": "BTCUSDT", "rsi": 140}, "rsi", "between 0 and 100"),
        (codec.decode_signal, {"symbol": "BTCUSDT", "regime": "SIDEWAYS"}, "regime", "must be one of"),
        (codec.decode_market_tick, {"symbol": "BTCUSDT"}, "price", "is missing"),
        (codec.decode_market_tick, {"symbol": "BTCUSDT", "price": "100"}, "price", "must be a number, got a string"),
        (codec.decode_market_tick, {"symbol": "BTCUSDT", "price": 0}, "price", "must be greater than 0"),
        (codec.decode_market_tick, {"symbol": "BTCUSDT", "price": 1e999}, "price", "must be a finite number"),
        (codec.decode_market_tick, {"symbol": "BTCUSDT", "price": 5, "volume": -1}, "volume", "must be at least 0"),
        (codec.decode_market_tick, {"symbol": "BTCUSDT", "price": 5, "high": 4, "low": 6}, "high", "must be at least low"),
        (codec.decode_market_tick, {"symbol": "BTCUSDT", "price": 5, "timestamp": "soon"}, "timestamp", "ISO-8601"),
        (codec.decode_position_close, {"symbol": "BTCUSDT", "roi": 1}, "pnl", "is missing"),
        (codec.decode_position_close, {"symbol": "BTCUSDT", "pnl": 1}, "roi", "is missing"),
        (codec.decode_position_close, {"symbol": "BTCUSDT", "pnl": [1], "roi": 1}, "pnl", "must be a number, got an array"),
        (codec.decode_position_close, {"symbol": "BTCUSDT", "pnl": 1, "roi": 1, "decision_id": "nope"}, "decision_id", "must be a UUID"),
        (codec.decode_position_close, {"pnl": 1, "roi": 1}, "symbol", "is missing"),
    ],
)
def test_bad_payloads_name_the_field(decode, payload, field, reason):
    with pytest.raises(codec.WireError) as err:
        decode(payload)
    assert err.value.field == field and reason in err.value.reason, str(err.value)


def test_epoch_timestamps_in_seconds_or_milliseconds():
    a = codec.decode_market_tick({"symbol": "X", "price": 1, "timestamp": 1_700_000_000})
    b = codec.decode_market_tick({"symbol": "X", "price": 1, "timestamp": 1_700_000_000_000})
    assert a.timestamp == b.timestamp == datetime.fromtimestamp(1_700_000_000, UTC)


def test_non_finite_payloads_cannot_be_encoded():
    with pytest.raises(ValueError):
        codec.encode_entry(codec.Envelope(codec.SIGNAL_GENERATED, {"rsi": math.nan}))


def test_stream_and_group_names():
    assert codec.stream_key("signal.generated", "quantum:stream:") == "quantum:stream:signal.generated"
    assert codec.group_name("signal.generated", "quantum:group:") == "quantum:group:rl_v3:signal.generated"

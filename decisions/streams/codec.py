"""The Redis Streams wire codec (CONTRACTS section 6): the one place that knows what an entry looks like.

An entry is a flat map of strings, as Quantum Trader's ``RedisStreamBus`` writes it::

    event_type      "signal.generated"
    payload         '{"symbol": "BTCUSDT", "rsi": 61.2, ...}'   (a JSON object as text)
    trace_id        "..."            (may be empty)
    correlation_id  "..."            (may be empty)
    timestamp       "2025-01-01T12:00:00.123456+00:00"   (ISO-8601, UTC; naive means UTC)
    source          "strategy-engine"

Decoding is strict: anything a producer could get wrong raises :class:`WireError` naming the field,
and the consumer dead-letters the entry with that message. Numbers must be JSON numbers (not strings,
not booleans) and finite; ``NaN``/``Infinity`` literals in the JSON text are rejected too.

The payloads of the three consumed event types and the two published ones are decoded and encoded
here as well, so tests, the bench and the consumer all speak through the same functions.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from training.rl.actions import ACTION_NAMES, N_ACTIONS, Action
from training.rl.features import ObservationError, validate_observation

SIGNAL_GENERATED = "signal.generated"
MARKET_DATA_UPDATED = "market.data_updated"
POSITION_CLOSED = "position.closed"
DECISION = "rl_v3.decision"
DEAD_LETTER = "rl_v3.dead_letter"
# The consumed types, in the order a batch is processed: market data first (it completes the
# signals' observations), then signals (their decisions must exist before closes pair with them).
CONSUMED_EVENT_TYPES: tuple[str, ...] = (MARKET_DATA_UPDATED, SIGNAL_GENERATED, POSITION_CLOSED)
DECISION_SOURCE = "rl_v3_ppo"
SERVICE_SOURCE = "rl_v3"
ENTRY_FIELDS: tuple[str, ...] = ("event_type", "payload", "trace_id", "correlation_id", "timestamp", "source")
# A payload larger than this is not a trading event; refusing it bounds the consumer's memory.
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_ID_CHARS = 128  # trace and correlation ids (the Decision columns' width)


class WireError(ValueError):
    """An entry that cannot be decoded: ``field`` names the offending entry or payload field."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def stream_key(event_type: str, prefix: str) -> str:
    """``{RLV3_STREAM_PREFIX}{event_type}``, e.g. ``quantum:stream:signal.generated``."""
    return f"{prefix}{event_type}"


def group_name(event_type: str, prefix: str) -> str:
    """``{RLV3_GROUP_PREFIX}rl_v3:{event_type}``: this service's consumer group on that stream."""
    return f"{prefix}rl_v3:{event_type}"


def utc_now() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=64)  # a batch's decisions share one creation time
def format_timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with an explicit offset (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def parse_timestamp(text: str, *, field_name: str = "timestamp") -> datetime:
    """ISO-8601 text (``Z`` or an offset; naive means UTC) -> an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise WireError(field_name, f"must be an ISO-8601 time, got {text[:40]!r}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# --- the entry envelope ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded stream entry. Empty ids and a missing timestamp decode to None."""

    event_type: str
    payload: dict[str, Any]
    trace_id: str | None = None
    correlation_id: str | None = None
    timestamp: datetime | None = None
    source: str = ""


def encode_entry(envelope: Envelope) -> dict[str, str]:
    """The entry's fields, all strings (a missing timestamp is stamped now)."""
    return {
        "event_type": envelope.event_type,
        "payload": json.dumps(envelope.payload, allow_nan=False, separators=(",", ":")),
        "trace_id": envelope.trace_id or "",
        "correlation_id": envelope.correlation_id or "",
        "timestamp": format_timestamp(envelope.timestamp or utc_now()),
        "source": envelope.source,
    }


_FIELD_KEYS = {name: name.encode() for name in ENTRY_FIELDS}


def _text(fields: Mapping, name: str) -> str | None:
    """A field as str (redis returns bytes unless decoding is on); None when absent."""
    value = fields.get(_FIELD_KEYS.get(name) or name.encode())
    if value is None:
        value = fields.get(name)
    if value is None or isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(name, "is not valid UTF-8") from None


def decode_entry(fields: Mapping[Any, Any]) -> Envelope:
    """Decode an entry's fields (bytes or str keys and values) into an Envelope, or raise WireError.

    ``event_type`` and ``payload`` are required; ``trace_id``, ``correlation_id``, ``timestamp`` and
    ``source`` may be missing or empty. The payload must be a JSON object of at most 64 KiB, in
    strict JSON: ``NaN``, ``Infinity`` and numbers too large for a double are refused.
    """
    event_type = _text(fields, "event_type")
    if not event_type:
        raise WireError("event_type", "is missing")
    raw = fields.get(b"payload")
    if raw is None:
        raw = fields.get("payload")
    if raw is None:
        raise WireError("payload", "is missing")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise WireError("payload", f"is larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        # orjson: strict (no NaN/Infinity, UTF-8 checked) and an order of magnitude faster than json.
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if "UTF-8" in message:
            raise WireError("payload", "is not valid UTF-8") from None
        raise WireError("payload", f"is not valid JSON ({message[:80]})") from None
    if not isinstance(payload, dict):
        raise WireError("payload", f"must be a JSON object, got {_json_kind(payload)}")
    ids = {}
    for name in ("trace_id", "correlation_id"):
        value = _text(fields, name) or None
        if value is not None and len(value) > MAX_ID_CHARS:
            raise WireError(name, f"is longer than {MAX_ID_CHARS} characters")
        ids[name] = value
    stamp = _text(fields, "timestamp")
    return Envelope(
        event_type=event_type,
        payload=payload,
        trace_id=ids["trace_id"],
        correlation_id=ids["correlation_id"],
        timestamp=parse_timestamp(stamp) if stamp else None,
        source=_text(fields, "source") or "",
    )


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", list: "an array", str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


# --- payload fields ---------------------------------------------------------------------------------


def _number(payload: Mapping, name: str, *, positive: bool = False, minimum: float | None = None) -> float:
    value = payload[name]
    if type(value) is bool or not isinstance(value, (int, float)):
        raise WireError(name, f"must be a number, got {_json_kind(value)}")
    x = float(value)
    if not math.isfinite(x):
        raise WireError(name, f"must be a finite number, got {value}")
    if positive and x <= 0:
        raise WireError(name, f"must be greater than 0, got {x:g}")
    if minimum is not None and x < minimum:
        raise WireError(name, f"must be at least {minimum:g}, got {x:g}")
    return x


def _optional_number(payload: Mapping, *names: str, **checks) -> float | None:
    for name in names:
        if payload.get(name) is not None:
            return _number(payload, name, **checks)
    return None


def _symbol(payload: Mapping) -> str:
    if payload.get("symbol") is None:
        raise WireError("symbol", "is missing")
    try:
        # The observation validator owns the symbol rule; only the symbol is checked here.
        return validate_observation({"symbol": payload["symbol"]})["symbol"]
    except ObservationError as exc:
        raise WireError("symbol", exc.reason) from None


def _optional_id(payload: Mapping, name: str) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise WireError(name, f"must be a string, got {_json_kind(value)}")
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        raise WireError(name, f"is longer than {MAX_ID_CHARS} characters")
    return text


def _moment(value: Any, name: str) -> datetime:
    """ISO-8601 text, or epoch seconds / milliseconds as a number."""
    if isinstance(value, str):
        return parse_timestamp(value, field_name=name)
    seconds = _number({name: value}, name, minimum=0.0)
    if seconds > 1e11:  # milliseconds since the epoch (1e11 s is the year 5138)
        seconds /= 1000.0
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise WireError(name, f"is out of range, got {value}") from None


def decode_signal(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A signal.generated payload -> the clean observation dict (features.validate_observation).

    A symbol is required on the stream (decisions are paired by symbol); other fields are optional.
    """
    if payload.get("symbol") is None:
        raise WireError("symbol", "is missing")
    try:
        return validate_observation(payload)  # checks the symbol too
    except ObservationError as exc:
        raise WireError(exc.field, exc.reason) from None


@dataclass(frozen=True)
class MarketTick:
    """A market.data_updated payload. Prices in quote currency; ``timestamp`` None when not given."""

    symbol: str
    price: float
    open: float | None = None
    high: float | None = None
    low: float | None = None
    close: float | None = None
    volume: float | None = None
    timestamp: datetime | None = None


def decode_market_tick(payload: Mapping[str, Any]) -> MarketTick:
    """Validate a market.data_updated payload: positive finite prices, volume >= 0, high >= low."""
    symbol = _symbol(payload)
    if payload.get("price") is None:
        raise WireError("price", "is missing")
    tick = MarketTick(
        symbol=symbol,
        price=_number(payload, "price", positive=True),
        open=_optional_number(payload, "open", positive=True),
        high=_optional_number(payload, "high", positive=True),
        low=_optional_number(payload, "low", positive=True),
        close=_optional_number(payload, "close", positive=True),
        volume=_optional_number(payload, "volume", minimum=0.0),
        timestamp=_moment(payload["timestamp"], "timestamp") if payload.get("timestamp") is not None else None,
    )
    if tick.high is not None and tick.low is not None and tick.high < tick.low:
        raise WireError("high", f"must be at least low ({tick.low:g}), got {tick.high:g}")
    return tick


def market_tick_payload(tick: MarketTick) -> dict[str, Any]:
    """The JSON payload of a market.data_updated event (for producers, tests and the bench)."""
    out: dict[str, Any] = {"symbol": tick.symbol, "price": tick.price}
    for name in ("open", "high", "low", "close", "volume"):
        if getattr(tick, name) is not None:
            out[name] = getattr(tick, name)
    if tick.timestamp is not None:
        out["timestamp"] = format_timestamp(tick.timestamp)
    return out


@dataclass(frozen=True)
class PositionClose:
    """A position.closed payload: realised ``pnl`` in quote currency (USDT), ``roi`` in percent."""

    symbol: str
    pnl: float
    roi: float
    position_id: str | None = None
    decision_id: str | None = None


def decode_position_close(payload: Mapping[str, Any]) -> PositionClose:
    """Validate a position.closed payload. ``pnl_usdt`` and ``roi_percent`` are accepted aliases."""
    symbol = _symbol(payload)
    pnl = _optional_number(payload, "pnl", "pnl_usdt")
    if pnl is None:
        raise WireError("pnl", "is missing (pnl or pnl_usdt)")
    roi = _optional_number(payload, "roi", "roi_percent")
    if roi is None:
        raise WireError("roi", "is missing (roi or roi_percent)")
    decision_id = _optional_id(payload, "decision_id")
    if decision_id is not None:
        try:
            decision_id = str(uuid.UUID(decision_id))
        except ValueError:
            raise WireError("decision_id", f"must be a UUID, got {decision_id[:40]!r}") from None
    return PositionClose(symbol=symbol, pnl=pnl, roi=roi, position_id=_optional_id(payload, "position_id"), decision_id=decision_id)


def position_close_payload(close: PositionClose) -> dict[str, Any]:
    """The JSON payload of a position.closed event (for producers, tests and the bench)."""
    out: dict[str, Any] = {"symbol": close.symbol, "pnl": close.pnl, "roi": close.roi}
    if close.position_id is not None:
        out["position_id"] = close.position_id
    if close.decision_id is not None:
        out["decision_id"] = close.decision_id
    return out


# --- published events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """The payload of an rl_v3.decision event. ``probabilities`` in action-code order (6)."""

    symbol: str
    action_code: int
    confidence: float
    value: float
    probabilities: tuple[float, ...]
    shadow_mode: bool
    model_version: str
    decision_id: str
    signal_event_id: str
    source: str = DECISION_SOURCE

    @property
    def action(self) -> str:
        return ACTION_NAMES[self.action_code]


def decision_payload(event: DecisionEvent) -> dict[str, Any]:
    """The rl_v3.decision payload: probabilities keyed by action name, as the REST API returns them."""
    return {
        "symbol": event.symbol,
        "action": event.action,
        "action_code": event.action_code,
        "confidence": event.confidence,
        "value": event.value,
        "probabilities": dict(zip(ACTION_NAMES, event.probabilities)),
        "shadow_mode": event.shadow_mode,
        "source": event.source,
        "model_version": event.model_version,
        "decision_id": event.decision_id,
        "signal_event_id": event.signal_event_id,
    }


def decode_decision(payload: Mapping[str, Any]) -> DecisionEvent:
    """Parse an rl_v3.decision payload (what a downstream consumer of our events does)."""
    try:
        probs = payload["probabilities"]
        if not isinstance(probs, Mapping) or list(probs) != list(ACTION_NAMES):
            raise WireError("probabilities", f"must map {', '.join(ACTION_NAMES)} to numbers")
        code = payload["action_code"]
        if type(code) is not int or not 0 <= code < N_ACTIONS or Action(code).name != payload["action"]:
            raise WireError("action", f"action {payload['action']!r} and action_code {code!r} disagree")
        if not isinstance(payload["shadow_mode"], bool):
            raise WireError("shadow_mode", "must be true or false")
        return DecisionEvent(
            symbol=_symbol(payload),
            action_code=code,
            confidence=_number(payload, "confidence", minimum=0.0),
            value=_number(payload, "value"),
            probabilities=tuple(_number(probs, name, minimum=0.0) for name in ACTION_NAMES),
            shadow_mode=payload["shadow_mode"],
            model_version=str(payload["model_version"]),
            decision_id=str(payload["decision_id"]),
            signal_event_id=str(payload["signal_event_id"]),
            source=str(payload["source"]),
        )
    except KeyError as exc:
        raise WireError(str(exc.args[0]), "is missing") from None


def decision_entry(event: DecisionEvent, *, trace_id: str | None, correlation_id: str | None, timestamp: datetime | None = None) -> dict[str, str]:
    """The stream entry of an rl_v3.decision event; trace and correlation ids copied from the signal.

    The same fields as :func:`encode_entry` writes, built directly: this runs once per signal.
    """
    if not all(math.isfinite(x) for x in (event.confidence, event.value, *event.probabilities)):
        raise ValueError(f"decision {event.decision_id} has a non-finite number")  # orjson would write null
    return {
        "event_type": DECISION,
        "payload": orjson.dumps(decision_payload(event)).decode(),
        "trace_id": trace_id or "",
        "correlation_id": correlation_id or "",
        "timestamp": format_timestamp(timestamp or utc_now()),
        "source": DECISION_SOURCE,
    }


@dataclass(frozen=True)
class DeadLetter:
    """Why an entry was set aside: the original fields, where it came from, and the error."""

    stream: str
    entry_id: str
    error: str
    original: dict[str, str] = field(default_factory=dict)
    deliveries: int | None = None
    consumer: str = ""


def _field_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def dead_letter_entry(letter: DeadLetter, *, trace_id: str | None = None, correlation_id: str | None = None) -> dict[str, str]:
    """The rl_v3.dead_letter entry: a wire-format event whose payload holds the original entry.

    ``error`` is also a top-level field so an operator can read it with ``XRANGE`` at a glance.
    Undecodable bytes in the original are replaced (U+FFFD) rather than lost.
    """
    original = {_field_text(k): _field_text(v) for k, v in letter.original.items()}
    entry = encode_entry(Envelope(
        event_type=DEAD_LETTER,
        payload={
            "stream": letter.stream, "entry_id": letter.entry_id, "error": letter.error,
            "original": original, "deliveries": letter.deliveries, "consumer": letter.consumer,
        },
        trace_id=trace_id, correlation_id=correlation_id, source=SERVICE_SOURCE,
    ))
    entry["error"] = letter.error
    return entry


def decode_dead_letter(fields: Mapping[Any, Any]) -> DeadLetter:
    """Parse an rl_v3.dead_letter entry back (operators' tooling and tests)."""
    envelope = decode_entry(fields)
    if envelope.event_type != DEAD_LETTER:
        raise WireError("event_type", f"expected {DEAD_LETTER}, got {envelope.event_type!r}")
    p = envelope.payload
    return DeadLetter(
        stream=p["stream"], entry_id=p["entry_id"], error=p["error"], original=dict(p["original"]),
        deliveries=p.get("deliveries"), consumer=p.get("consumer", ""),
    )

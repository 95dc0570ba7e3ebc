"""What the subscriber does with a batch of one stream's entries (the database side).

Each handler decodes its entries through the wire codec, sets poison entries aside as dead letters,
writes the valid ones through decisions.services, and returns an :class:`Outcome`: the decision
events to publish, the dead letters and the entry ids to acknowledge. The consumer applies an
Outcome to Redis in one MULTI/EXEC only after the handler returned, i.e. after the database commit:
persist, then publish, then ack.

Signals come in two steps so the consumer can overlap them across batches: ``signals_prepare``
(decode, complete, score: CPU) and ``signals_commit`` (insert, then build the events: I/O).

Handlers raise on failure and never acknowledge anything themselves; the consumer decides whether
the failure is transient (retry later) or belongs to one entry (isolate it and dead-letter it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from decisions import services
from decisions.models import MarketBar, ModelRole
from rlv3site.logging import bind_stream_entry

from . import codec
from .history import HISTORY_BARS, MarketHistory, complete_observation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One stream entry as read: ``fields`` is empty when the entry was trimmed while pending."""

    entry_id: str
    fields: dict | None
    deliveries: int = 1


@dataclass
class Outcome:
    """Redis effects of a handled batch: publish ``decisions``, add ``dead``, then ack ``ack``."""

    ack: list[str] = field(default_factory=list)
    decisions: list[dict[str, str]] = field(default_factory=list)
    dead: list[tuple[codec.DeadLetter, dict[str, str]]] = field(default_factory=list)

    def dead_letter(self, entry: Entry, *, stream: str, error: str, consumer: str, envelope: codec.Envelope | None = None) -> None:
        letter = codec.DeadLetter(
            stream=stream, entry_id=entry.entry_id, error=error, original=dict(entry.fields or {}),
            deliveries=entry.deliveries, consumer=consumer,
        )
        entry_fields = codec.dead_letter_entry(
            letter, trace_id=envelope.trace_id if envelope else None, correlation_id=envelope.correlation_id if envelope else None,
        )
        self.dead.append((letter, entry_fields))
        self.ack.append(entry.entry_id)

    def merge(self, other: Outcome) -> None:
        self.ack += other.ack
        self.decisions += other.decisions
        self.dead += other.dead


@dataclass
class PreparedSignals:
    """A scored signal batch waiting to be stored: ``outcome`` already holds its dead letters."""

    outcome: Outcome
    entry_ids: list[str]
    decisions: services.PreparedDecisions


def entry_time(entry_id: str) -> float:
    """Epoch seconds of a stream entry id (``<ms>-<seq>``): when Redis added it."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


class BatchHandlers:
    """The three consumed event types' batch handlers, sharing the subscriber's market history."""

    def __init__(self, *, consumer: str, stream_prefix: str, bar_seconds: int, history: MarketHistory | None = None):
        self.consumer = consumer
        self.stream_prefix = stream_prefix
        self.bar_seconds = bar_seconds
        self.history = history or MarketHistory(bar_seconds=bar_seconds)

    def handler(self, event_type: str) -> Callable[[Sequence[Entry]], Outcome]:
        return {
            codec.MARKET_DATA_UPDATED: self.market_data,
            codec.SIGNAL_GENERATED: self.signals,
            codec.POSITION_CLOSED: self.closes,
        }[event_type]

    def _envelopes(self, entries: Sequence[Entry], event_type: str, outcome: Outcome) -> list[tuple[Entry, codec.Envelope]]:
        """Decoded envelopes of the entries of ``event_type``; undecodable ones become dead letters."""
        stream = codec.stream_key(event_type, self.stream_prefix)
        valid = []
        for entry in entries:
            if not entry.fields:  # trimmed from the stream while pending (read back empty): nothing to process
                log.warning("entry %s of %s no longer exists; acknowledging it", entry.entry_id, stream)
                outcome.ack.append(entry.entry_id)
                continue
            try:
                envelope = codec.decode_entry(entry.fields)
            except codec.WireError as exc:
                outcome.dead_letter(entry, stream=stream, error=str(exc), consumer=self.consumer)
                continue
            if envelope.event_type != event_type:
                error = f"event_type: unknown event type {envelope.event_type[:60]!r} on {stream}"
                outcome.dead_letter(entry, stream=stream, error=error, consumer=self.consumer, envelope=envelope)
                continue
            valid.append((entry, envelope))
        return valid

    def _payloads(self, valid, event_type: str, outcome: Outcome, decode_payload: Callable) -> list[tuple[Entry, codec.Envelope, object]]:
        """(entry, envelope, decoded payload) of the entries whose payload decodes; the rest are dead letters."""
        stream = codec.stream_key(event_type, self.stream_prefix)
        out = []
        for entry, envelope in valid:
            bind_stream_entry(entry_id=entry.entry_id, envelope=envelope)
            try:
                out.append((entry, envelope, decode_payload(entry, envelope)))
            except codec.WireError as exc:
                outcome.dead_letter(entry, stream=stream, error=str(exc), consumer=self.consumer, envelope=envelope)
        return out

    # --- market.data_updated --------------------------------------------------------------------
    def market_data(self, entries: Sequence[Entry]) -> Outcome:
        """Record ticks as MarketBar rows (one upsert) and feed the in-memory history."""
        outcome = Outcome()

        def decode(entry: Entry, envelope: codec.Envelope):
            tick = codec.decode_market_tick(envelope.payload)
            # The tick's own time, else the producer's timestamp, else when Redis received it.
            moment = tick.timestamp or envelope.timestamp or datetime.fromtimestamp(entry_time(entry.entry_id), UTC)
            return tick, moment

        envelopes = self._envelopes(entries, codec.MARKET_DATA_UPDATED, outcome)
        valid = self._payloads(envelopes, codec.MARKET_DATA_UPDATED, outcome, decode)
        ticks = [decoded for _, _, decoded in valid]
        services.market_bars_record(ticks=ticks, interval_seconds=self.bar_seconds)
        for tick, moment in ticks:  # after the commit: history only ever holds recorded prices
            self.history.add(tick.symbol, moment.timestamp(), tick.close if tick.close is not None else tick.price)
        outcome.ack += [entry.entry_id for entry, _, _ in valid]
        return outcome

    # --- signal.generated ---------------------------------------------------------------------------
    def _warm_history(self, symbols: list[str]) -> None:
        """Load recorded closes of symbols this process has not seen yet (once per symbol)."""
        for symbol in self.history.symbols_to_warm(symbols):
            rows = (
                MarketBar.objects.filter(symbol=symbol, interval_seconds=self.bar_seconds)
                .order_by("-time").values_list("time", "close")[:HISTORY_BARS]
            )
            self.history.warm(symbol, [(t.timestamp(), c) for t, c in reversed(list(rows))])

    def _observation(self, envelope: codec.Envelope, now: float) -> dict:
        payload = envelope.payload
        symbol = payload.get("symbol")
        filled = self.history.fields(symbol, now) if isinstance(symbol, str) else {}
        filled = {k: v for k, v in filled.items() if k not in payload}
        try:
            return codec.decode_signal(complete_observation(payload, filled))
        except codec.WireError as exc:
            if exc.field not in filled:
                raise
            # A derived value out of the validator's range must not poison a valid signal.
            log.warning("history value for %s of %s rejected (%s); using the signal alone", exc.field, symbol, exc.reason)
            return codec.decode_signal(payload)

    def signals_prepare(self, entries: Sequence[Entry]) -> PreparedSignals:
        """Decode, complete and score a signal batch (one policy batch); nothing is stored yet."""
        outcome = Outcome()
        envelopes = self._envelopes(entries, codec.SIGNAL_GENERATED, outcome)
        self._warm_history([env.payload["symbol"] for _, env in envelopes if isinstance(env.payload.get("symbol"), str)])
        now = time.time()
        valid = self._payloads(envelopes, codec.SIGNAL_GENERATED, outcome, lambda entry, env: self._observation(env, now))
        contexts = [
            services.SignalContext(stream_entry_id=entry.entry_id, correlation_id=env.correlation_id, trace_id=env.trace_id)
            for entry, env, _ in valid
        ]
        decisions = services.decisions_prepare(observations=[obs for _, _, obs in valid], contexts=contexts)
        return PreparedSignals(outcome=outcome, entry_ids=[entry.entry_id for entry, _, _ in valid], decisions=decisions)

    def signals_commit(self, prepared: PreparedSignals) -> Outcome:
        """Store a prepared batch (one insert) and add its decision events and acks to its outcome."""
        outcome = prepared.outcome
        for entry_id, decision in zip(prepared.entry_ids, services.decisions_store(prepared=prepared.decisions), strict=True):
            outcome.decisions.append(decision_event_entry(decision))
            outcome.ack.append(entry_id)
        return outcome

    def signals(self, entries: Sequence[Entry]) -> Outcome:
        """Decide for valid signals (one policy batch, one insert) and prepare their events."""
        return self.signals_commit(self.signals_prepare(entries))

    # --- position.closed ------------------------------------------------------------------------------
    def closes(self, entries: Sequence[Entry]) -> Outcome:
        """Pair each close with its decision and store the Experience (one transaction per close)."""
        outcome = Outcome()
        stream = codec.stream_key(codec.POSITION_CLOSED, self.stream_prefix)
        envelopes = self._envelopes(entries, codec.POSITION_CLOSED, outcome)
        valid = self._payloads(envelopes, codec.POSITION_CLOSED, outcome, lambda entry, env: codec.decode_position_close(env.payload))
        for entry, envelope, close in valid:
            try:
                services.experience_record(
                    close=close, stream_entry_id=entry.entry_id, correlation_id=envelope.correlation_id,
                    closed_at=envelope.timestamp,
                )
            except services.PairingError as exc:
                outcome.dead_letter(entry, stream=stream, error=str(exc), consumer=self.consumer, envelope=envelope)
                continue
            outcome.ack.append(entry.entry_id)
        return outcome


def decision_event_entry(decision) -> dict[str, str]:
    """The rl_v3.decision entry of a stored champion Decision (role champion, from a stream signal)."""
    assert decision.role == ModelRole.CHAMPION
    event = codec.DecisionEvent(
        symbol=decision.symbol,
        action_code=int(decision.action),
        confidence=float(decision.confidence),
        value=float(decision.value),
        probabilities=tuple(float(p) for p in decision.probabilities),
        shadow_mode=bool(decision.shadow_mode),
        model_version=str(decision.model_version),
        decision_id=str(decision.decision_id),
        signal_event_id=decision.stream_entry_id or "",
    )
    return codec.decision_entry(event, trace_id=decision.trace_id, correlation_id=decision.correlation_id, timestamp=decision.created_at)

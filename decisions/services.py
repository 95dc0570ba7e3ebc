"""Writes on the live side: decisions, experiences, market bars, shadow mode."""

from __future__ import annotations

import functools
import logging
import math
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

import orjson
import psycopg
from psycopg.types.json import Jsonb
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import Q
from django.utils import timezone

from training.rl.actions import ACTION_NAMES
from training.rl.features import (
    FEATURE_SPEC_VERSION,
    ObservationBatch,
    observation_values,
    observations_pack,
    observations_to_matrix,
    values_to_matrix,
)

from . import metrics
from . import pgcopy
from .fields import FLOAT32_BE, float_array_literal
from .ids import uuid7, uuid7_bytes, uuid7_list, uuid_strings
from .models import Decision, DecisionSource, Experience, MarketBar, ModelRole, ShadowModeChange, ShadowModeState
from .serving import ServedPolicy, policy_server
from .streams.codec import MarketTick, PositionClose

log = logging.getLogger(__name__)


# --- shadow mode --------------------------------------------------------------------------------


def shadow_mode_state() -> ShadowModeState:
    """The persisted switch; created from RLV3_SHADOW_MODE the first time it is read."""
    state, _ = ShadowModeState.objects.get_or_create(pk=1, defaults={"enabled": settings.RLV3_SHADOW_MODE})
    return state


def shadow_mode_set(*, enabled: bool, user=None, reason: str = "", via: str = "api") -> ShadowModeChange:
    """Change shadow mode, recording who, when, old -> new and why; returns that audit row.
    A no-op change is still audited."""
    with transaction.atomic():
        shadow_mode_state()
        state = ShadowModeState.objects.select_for_update().get(pk=1)
        old = state.enabled
        state.enabled = enabled
        state.updated_at = timezone.now()
        state.save(update_fields=["enabled", "updated_at"])
        change = ShadowModeChange.objects.create(
            changed_by=user if getattr(user, "is_authenticated", False) else None,
            old_value=old, new_value=enabled, reason=reason, via=via,
        )
    log.info("shadow mode %s -> %s by %s: %s", old, enabled, getattr(user, "username", None), reason)
    policy_server().shadow_mode_note(enabled)
    return change


# --- decisions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalContext:
    """Where a decision request came from (stream metadata is empty for API calls)."""

    stream_entry_id: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None


# Decision(*values) in field order skips Django's per-keyword handling of the model constructor:
# two thirds of the cost of building a row, and the stream path builds one per signal.
_DECISION_FIELDS = tuple((f.attname, f) for f in Decision._meta.concrete_fields)


def _new_decision(**values) -> Decision:
    """An unsaved Decision from field values (a missing field gets its default, as with kwargs)."""
    return Decision(*[values[name] if name in values else f.get_default() for name, f in _DECISION_FIELDS])


def _decisions_build(
    *, policy: ServedPolicy, observations: Sequence[dict], role: str, shadow: bool, source: str,
    contexts: Sequence[SignalContext] | None = None,
) -> list[Decision]:
    vectors = observations_to_matrix(observations)
    batch = policy.runtime.predict_batch(vectors)
    now = timezone.now()
    contexts = contexts or [SignalContext()] * len(observations)
    ids = uuid7_list(len(observations))
    built = []
    # tolist() converts whole arrays to Python numbers at once (the same values as float() per item).
    all_probs, actions, values, features = (
        batch.probabilities.tolist(), batch.actions.tolist(), batch.values.tolist(), vectors.astype(FLOAT32_BE),
    )
    for i, (obs, ctx) in enumerate(zip(observations, contexts)):
        probs = all_probs[i]
        action = actions[i]
        built.append(
            _new_decision(
                decision_id=ids[i],
                symbol=obs.get("symbol") or "",
                observation=obs,
                features=features[i].tobytes(),  # the column's bytes (Float32VectorField)
                feature_spec_version=FEATURE_SPEC_VERSION,
                action=action,
                probabilities=probs,
                confidence=min(1.0, max(0.0, probs[action])),
                value=values[i],
                model_version=policy.version,
                role=role,
                shadow_mode=shadow,
                source=source,
                stream_entry_id=ctx.stream_entry_id,
                correlation_id=ctx.correlation_id,
                trace_id=ctx.trace_id,
                created_at=now,
            )
        )
    return built


# The six action names one by one: an answer's probabilities are a dict display of them, 1.2 us
# against dict(zip())'s 1.9 (and this fails at import if the actions ever stop being six).
_A0, _A1, _A2, _A3, _A4, _A5 = ACTION_NAMES


@dataclass(frozen=True)
class Predictions:
    """The API decisions one `decisions_predict` call stored: the answer each gets (the predict
    endpoint's body items, in order), and what `metrics.decisions_count` counts them by."""

    answers: list[dict]
    actions: list[int]
    symbols: list[str]
    source: str
    role: str

    @classmethod
    def of(cls, *, decision_ids, symbols, actions, probabilities, confidences, values, model_version, shadow_mode,
           source, role) -> Predictions:
        names, version, shadow = ACTION_NAMES, model_version, shadow_mode
        answers = [
            {"decision_id": d, "symbol": s, "action": names[a], "action_code": a, "confidence": c,
             "probabilities": {_A0: p0, _A1: p1, _A2: p2, _A3: p3, _A4: p4, _A5: p5}, "value": v,
             "model_version": version, "shadow_mode": shadow}
            for d, s, a, c, (p0, p1, p2, p3, p4, p5), v in zip(decision_ids, symbols, actions, confidences, probabilities, values)
        ]
        return cls(answers, actions, symbols, source, role)

    def label_counts(self) -> Counter:
        """How many decisions each (action, symbol, source, role) has."""
        return Counter((action, symbol, self.source, self.role) for action, symbol in zip(self.actions, self.symbols))


@metrics.counts_decisions
def decisions_predict(*, observations: ObservationBatch | Sequence[dict], source: str = DecisionSource.API) -> Predictions:
    """Score validated observations (a batch from `validate_observations`, or `validate_observation`
    dicts) with the champion and store one Decision each.

    API decisions have no stream entry or correlation id, so nothing can conflict: on PostgreSQL one
    observation is one prepared INSERT and a batch is one binary COPY laid out by numpy
    (`decisions.pgcopy`; no per-row model objects). The batch's answers are built while PostgreSQL
    stores the rows: after the COPY's data is sent, before its end is confirmed.
    """
    server = policy_server()
    policy = server.champion()
    shadow = server.shadow_mode()  # cached for about a second: the hot path makes no query for it
    if not isinstance(observations, ObservationBatch):
        observations = observations_pack(observations)
    values, symbols = observations
    vectors = values_to_matrix(values)
    batch = policy.runtime.predict_batch(vectors)
    n = len(values)
    if not (np.isfinite(batch.values).all() and np.isfinite(batch.probabilities).all()):
        raise ValueError("the policy returned a non-finite value or probability")
    confidences = np.clip(batch.probabilities[np.arange(n), batch.actions], 0.0, 1.0)
    created_at = timezone.now()

    def predictions(decision_ids: list[str]) -> Predictions:
        return Predictions.of(
            decision_ids=decision_ids, symbols=symbols, actions=batch.actions.tolist(),
            probabilities=batch.probabilities.tolist(), confidences=confidences.tolist(), values=batch.values.tolist(),
            model_version=policy.version, shadow_mode=shadow, source=source, role=ModelRole.CHAMPION,
        )

    postgresql = connection.vendor == "postgresql"
    if postgresql and n == 1:
        key = uuid7()  # one id: the uuid module's, without numpy's fixed cost
        _execute_prepared(_api_sql()[0], [
            key, symbols[0], float_array_literal(values[0].tolist()),
            vectors[0].astype(FLOAT32_BE).tobytes(), FEATURE_SPEC_VERSION, int(batch.actions[0]),
            float_array_literal(batch.probabilities[0].tolist()), float(confidences[0]),
            float(batch.values[0]), policy.version, ModelRole.CHAMPION, shadow, source, created_at,
        ])
        return predictions([str(key)])
    ids = uuid7_bytes(n)
    if not postgresql:
        _api_create(ids, observations, vectors, batch, confidences, policy.version, shadow, source, created_at)
        return predictions(uuid_strings(ids))
    payload = pgcopy.copy_payload(
        ids=ids, observations=values, features=vectors, actions=batch.actions,
        probabilities=batch.probabilities, confidences=confidences, values=batch.values, shadow_mode=shadow,
        created_at=created_at, symbols=symbols, constants={
            "feature_spec_version": FEATURE_SPEC_VERSION, "model_version": policy.version,
            "role": ModelRole.CHAMPION, "source": source,
        },
    )
    with _raw_cursor() as raw, raw.copy(_api_sql()[1]) as copy:
        copy.write(payload)
        # PostgreSQL has the rows and stores them meanwhile; leaving the block ends the COPY
        # and waits for its result (an error there raises, and these answers are dropped).
        result = predictions(uuid_strings(ids))
    return result


def _api_create(ids, observations: ObservationBatch, vectors, batch, confidences, version, shadow, source, created_at) -> None:
    """Store API decisions through the ORM (databases other than PostgreSQL)."""
    Decision.objects.bulk_create([
        _new_decision(
            decision_id=uuid.UUID(bytes=raw.tobytes()), symbol=symbol, observation=values,
            features=vector.astype(FLOAT32_BE).tobytes(), feature_spec_version=FEATURE_SPEC_VERSION, action=action,
            probabilities=probs, confidence=confidence, value=value, model_version=version, role=ModelRole.CHAMPION,
            shadow_mode=shadow, source=source, created_at=created_at,
        )
        for raw, values, symbol, vector, action, probs, confidence, value in zip(
            ids, observations.values.tolist(), observations.symbols, vectors, batch.actions.tolist(),
            batch.probabilities.tolist(), confidences.tolist(), batch.values.tolist(),
        )
    ])


# The columns of the one-row INSERT of an API decision (the others are NULL: no stream entry,
# correlation or trace id).
_API_COLUMNS = (
    "decision_id", "symbol", "observation", "features", "feature_spec_version", "action", "probabilities",
    "confidence", "value", "model_version", "role", "shadow_mode", "source", "created_at",
)


@functools.cache
def _api_sql() -> tuple[str, str]:
    """The one-row INSERT and the batch COPY of API decisions."""
    quote = connection.ops.quote_name
    table = quote(Decision._meta.db_table)

    def columns(names):
        return ", ".join(quote(Decision._meta.get_field(name).column) for name in names)

    placeholders = ", ".join(["%s"] * len(_API_COLUMNS))
    return (
        f"INSERT INTO {table} ({columns(_API_COLUMNS)}) VALUES ({placeholders})",
        f"COPY {table} ({columns(pgcopy.COLUMNS)}) FROM STDIN (FORMAT BINARY)",
    )


# --- stream side --------------------------------------------------------------------------------
# Writes of the Redis Streams consumer (decisions.streams). Each is idempotent per stream entry:
# database constraints (one decision per entry and role, one experience per decision and per entry)
# make a redelivered entry find the row it created the first time instead of adding a second.

# Reward of an experience: the realised return on the position, as a fraction, clipped so one
# outsized close cannot dominate a fine-tuning batch. roi is in percent: +2.5 % -> reward 0.025.
EXPERIENCE_REWARD_CLIP = 1.0


def experience_reward(*, roi_percent: float) -> float:
    """Reward of a realised close: ``clip(roi_percent / 100, -1, 1)`` (dimensionless)."""
    return max(-EXPERIENCE_REWARD_CLIP, min(EXPERIENCE_REWARD_CLIP, roi_percent / 100.0))


_PUBLISHED_FIELDS = (
    "decision_id", "symbol", "action", "probabilities", "confidence", "value", "model_version",
    "role", "shadow_mode", "stream_entry_id", "correlation_id", "trace_id", "created_at",
)


@dataclass(frozen=True)
class PreparedDecisions:
    """A signal batch scored but not stored yet: ``champions`` in input order, ``rows`` to insert
    (the champion's, then the challenger's)."""

    champions: list[Decision]
    rows: list[Decision]


@metrics.predict_timed("stream")
def decisions_prepare(*, observations: Sequence[dict], contexts: Sequence[SignalContext]) -> PreparedDecisions:
    """Score a batch of stream signals with the champion (and the challenger, when one is served).

    ``observations`` are validated observation dicts, ``contexts`` their stream entry ids (required)
    and correlation/trace ids, in the same order. Reads the shadow-mode switch; writes nothing.
    The challenger's decisions get role ``challenger`` and are always shadow (never published).
    """
    if len(observations) != len(contexts):
        raise ValueError("observations and contexts must have the same length")
    if any(not ctx.stream_entry_id for ctx in contexts):
        raise ValueError("every stream signal needs its stream_entry_id")
    if not observations:
        return PreparedDecisions(champions=[], rows=[])
    shadow = shadow_mode_state().enabled
    server = policy_server()
    champion = server.champion()
    challenger = server.challenger()
    built = _decisions_build(
        policy=champion, observations=observations, role=ModelRole.CHAMPION, shadow=shadow,
        source=DecisionSource.STREAM, contexts=contexts,
    )
    rows = list(built)
    if challenger is not None and challenger.version != champion.version:
        rows += _decisions_build(
            policy=challenger, observations=observations, role=ModelRole.CHALLENGER, shadow=True,
            source=DecisionSource.STREAM, contexts=contexts,
        )
    return PreparedDecisions(champions=built, rows=rows)


@metrics.counts_decisions
def decisions_store(*, prepared: PreparedDecisions) -> list[Decision]:
    """Store a prepared batch with one insert; returns the persisted champion decision per signal.

    A redelivered entry (same entry id), or a second signal with a correlation id already decided,
    gets back the row stored the first time (not a new one), so publishing it again republishes the
    same decision.
    """
    if not prepared.rows:
        return []
    inserted = _decisions_insert(prepared.rows)
    return _champion_decisions_persisted(prepared.champions, inserted)


def decisions_from_signals(*, observations: Sequence[dict], contexts: Sequence[SignalContext]) -> list[Decision]:
    """Decide for a batch of stream signals and store the decisions (decisions_prepare, then
    decisions_store); the persisted champion decision of each signal, in input order."""
    return decisions_store(prepared=decisions_prepare(observations=observations, contexts=contexts))


def _decisions_insert(rows: list[Decision]) -> set[uuid.UUID] | None:
    """Insert rows, skipping any that conflict (ON CONFLICT DO NOTHING); one statement.

    On PostgreSQL the batch travels as one JSON document expanded server-side by
    jsonb_populate_recordset, which costs a fraction of per-value parameters, and the statement
    returns the decision_ids it inserted. Its text is the same for any batch, so it is prepared
    once per connection (server-side binding; Django's own cursor binds client-side and PostgreSQL
    would plan it again every time). Elsewhere: bulk_create, and None (not known which).
    """
    if connection.vendor != "postgresql":
        Decision.objects.bulk_create(rows, ignore_conflicts=True)
        return None
    sql, pairs, one_row_sql, json_columns = _decisions_insert_sql()
    for row in rows:  # orjson writes NaN as null: refuse it here rather than store it
        if not (math.isfinite(row.value) and all(map(math.isfinite, row.probabilities))):
            raise ValueError(f"the policy returned a non-finite value or probability for {row.stream_entry_id}")
    if len(rows) == 1:
        # One row (a batch of one signal): plain typed parameters cost PostgreSQL less than a document.
        values = vars(rows[0])
        params = [_one_row_value(column, values[name], json_columns) for column, name in pairs]
        sql = one_row_sql
    else:
        # orjson writes UUIDs and aware datetimes (RFC 3339) itself; PostgreSQL parses both.
        params = [orjson.dumps([_row_values(vars(row), pairs) for row in rows]).decode()]
    return {row[0] for row in _execute_prepared(sql, params)}


# The psycopg cursor of this thread's connection (Django's connections are per thread), kept
# until the connection changes: a cursor keeps the adapters it has looked up for the parameters'
# types, which a new cursor per statement looked up again each time.
_thread = threading.local()


@contextmanager
def _raw_cursor() -> Iterator[psycopg.Cursor]:
    """A psycopg cursor on Django's connection (server-side binding, COPY), after the checks
    Django's own cursor makes before a query; database errors are raised as Django's."""
    db = connections[DEFAULT_DB_ALIAS]  # `connection` resolves the alias on every attribute
    with db.wrap_database_errors:
        db.validate_thread_sharing()
        db.validate_no_broken_transaction()
        db.ensure_connection()
        raw = db.connection
        cursor = getattr(_thread, "cursor", None)
        if cursor is None or cursor.connection is not raw or cursor.closed:
            cursor = _thread.cursor = psycopg.Cursor(raw)
        yield cursor


def _execute_prepared(sql: str, params: list) -> list[tuple]:
    """Run ``sql`` as a server-side prepared statement (prepared once per connection) on Django's
    connection; the rows it returns (none for a plain INSERT)."""
    with _raw_cursor() as prepared:
        prepared.execute(sql, params, prepare=True)
        return prepared.fetchall() if prepared.description else []


@functools.cache
def _decisions_insert_sql() -> tuple[str, list[tuple[str, str]], str, frozenset[str]]:
    """The statements of `_decisions_insert` (a batch as one JSON document; one row as parameters),
    the (column, attribute) pairs and the JSON columns."""
    fields = list(Decision._meta.concrete_fields)  # the key too: decision_id is made here (UUIDv7)
    quote = connection.ops.quote_name
    table = quote(Decision._meta.db_table)
    columns = ", ".join(quote(f.column) for f in fields)
    sql = (
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) "
        f"ON CONFLICT DO NOTHING RETURNING decision_id"
    )
    json_columns = frozenset(f.column for f in fields if f.get_internal_type() == "JSONField")
    placeholders = ", ".join(["%s"] * len(fields))
    one_row_sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) ON CONFLICT DO NOTHING RETURNING decision_id"
    return sql, [(f.column, f.attname) for f in fields], one_row_sql, json_columns


def _orjson_text(value) -> str:
    return orjson.dumps(value).decode()


def _one_row_value(column: str, value, json_columns: frozenset[str]):
    if column in json_columns:
        return Jsonb(value, dumps=_orjson_text)
    if column == "observation":
        return float_array_literal(observation_values(value))
    return float_array_literal(value) if column == "probabilities" else value


def _row_values(values: dict, pairs: list[tuple[str, str]]) -> dict:
    row = {column: values[name] for column, name in pairs}
    row["features"] = "\\x" + row["features"].hex()  # bytea's text form in the JSON document
    row["observation"] = observation_values(row["observation"])  # a JSON array for float8[]
    return row


def _champion_decisions_persisted(built: list[Decision], inserted: set[uuid.UUID] | None) -> list[Decision]:
    """The stored champion row for each built decision: itself when its insert won, else the older row."""
    if inserted is not None:
        conflicted = [d for d in built if d.decision_id not in inserted]
        if not conflicted:
            return built
    else:
        conflicted = built
    entry_ids = [d.stream_entry_id for d in conflicted]
    correlation_ids = [d.correlation_id for d in conflicted if d.correlation_id]
    stored = Decision.objects.filter(role=ModelRole.CHAMPION).filter(
        Q(stream_entry_id__in=entry_ids) | Q(correlation_id__in=correlation_ids)
    ).values_list("stream_entry_id", "correlation_id", "decision_id")
    by_entry, by_correlation = {}, {}
    for entry_id, correlation_id, decision_id in stored:
        if entry_id is not None:
            by_entry[entry_id] = decision_id
        if correlation_id is not None:
            by_correlation[correlation_id] = decision_id
    resolved: list[Decision | uuid.UUID] = []
    older: set[uuid.UUID] = set()
    for d in built:
        if inserted is not None and d.decision_id in inserted:
            resolved.append(d)
            continue
        decision_id = by_entry.get(d.stream_entry_id) or by_correlation.get(d.correlation_id)
        if decision_id is None:
            # Only possible if the row vanished between insert and read; the caller retries the batch.
            raise DecisionNotStored(f"decision for stream entry {d.stream_entry_id} was not stored")
        if decision_id == d.decision_id:
            resolved.append(d)
        else:
            resolved.append(decision_id)
            older.add(decision_id)
    if older:
        rows = {r.decision_id: r for r in Decision.objects.filter(decision_id__in=older).only(*_PUBLISHED_FIELDS)}
        resolved = [rows[x] if isinstance(x, uuid.UUID) else x for x in resolved]
    return resolved


class DecisionNotStored(RuntimeError):
    """A batch's decision could not be read back after the insert (retry the batch)."""


class PairingError(Exception):
    """A position.closed that cannot be paired with a decision (the message says why)."""


def _pairing_candidate(*, close: PositionClose, correlation_id: str | None) -> Decision:
    """The champion decision a close realises: by decision_id, else correlation id, else the latest
    unpaired decision of the same symbol. Never one of another symbol."""
    champions = Decision.objects.filter(role=ModelRole.CHAMPION)
    for key, value in (("decision_id", close.decision_id), ("correlation_id", correlation_id)):
        if value is None:
            continue
        decision = champions.filter(**{key: value}).first()
        if decision is None:
            continue  # unknown here (another system's id): fall back to the next rule
        if decision.symbol != close.symbol:
            raise PairingError(f"{key} {value} is a {decision.symbol or 'symbol-less'} decision, not {close.symbol}")
        if Experience.objects.filter(decision=decision).exists():
            raise PairingError(f"decision {decision.decision_id} ({key}) is already paired")
        return decision
    decision = (
        champions.filter(symbol=close.symbol, experience__isnull=True)
        .order_by("-created_at", "-pk")
        # Two consumers pairing closes of one symbol at once must not both take the same decision.
        .select_for_update(skip_locked=True, of=("self",))
        .first()
    )
    if decision is None:
        raise PairingError("no decision to pair")
    return decision


def experience_record(
    *, close: PositionClose, stream_entry_id: str | None, correlation_id: str | None, closed_at=None,
) -> tuple[Experience, bool]:
    """Pair a realised close with its decision and store the Experience; returns (row, created).

    The experience carries the decision's observation, action, behaviour probabilities and model
    version, the realised ``pnl`` (quote currency) and ``roi`` (percent), and
    ``reward = experience_reward(roi_percent=roi)``. Replaying the same stream entry returns the
    stored row (created False). Raises PairingError when there is nothing to pair.
    """
    for attempt in range(3):
        try:
            with transaction.atomic():
                if stream_entry_id is not None:
                    existing = Experience.objects.filter(stream_entry_id=stream_entry_id).first()
                    if existing is not None:
                        return existing, False
                decision = _pairing_candidate(close=close, correlation_id=correlation_id)
                experience = Experience.objects.create(
                    decision=decision,
                    symbol=close.symbol,
                    observation=decision.observation,
                    action=decision.action,
                    behaviour_probabilities=decision.probabilities,
                    model_version=decision.model_version,
                    reward=experience_reward(roi_percent=close.roi),
                    pnl=close.pnl,
                    roi=close.roi,
                    position_id=close.position_id,
                    stream_entry_id=stream_entry_id,
                    correlation_id=correlation_id,
                    closed_at=closed_at or timezone.now(),
                )
                return experience, True
        except IntegrityError:
            # A concurrent consumer paired the same decision (or stored this entry) first: look again.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class BarUpdate:
    """One bar's aggregate of the ticks in a batch (prices in quote currency)."""

    symbol: str
    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    ticks: int


def market_bars_aggregate(*, ticks: Sequence[tuple[MarketTick, datetime]], interval_seconds: int) -> list[BarUpdate]:
    """Fold (tick, tick time) pairs into one update per (symbol, bar open time), in tick order.

    A tick's own open/high/low/close, when given, widen its range; ``close`` (else ``price``) is the
    bar's last price; volume is summed (missing counts as 0).
    """
    bars: dict[tuple[str, int], list] = {}
    for tick, moment in ticks:
        start = int(moment.timestamp()) // interval_seconds * interval_seconds
        prices = [p for p in (tick.price, tick.open, tick.high, tick.low, tick.close) if p is not None]
        last = tick.close if tick.close is not None else tick.price
        key = (tick.symbol, start)
        bar = bars.get(key)
        if bar is None:
            first = tick.open if tick.open is not None else tick.price
            bars[key] = [first, max(prices), min(prices), last, tick.volume or 0.0, 1]
        else:
            bar[1] = max(bar[1], *prices)
            bar[2] = min(bar[2], *prices)
            bar[3] = last
            bar[4] += tick.volume or 0.0
            bar[5] += 1
    return [
        BarUpdate(symbol=s, time=datetime.fromtimestamp(t, UTC), open=b[0], high=b[1], low=b[2], close=b[3], volume=b[4], ticks=b[5])
        for (s, t), b in sorted(bars.items())  # sorted: concurrent upserts lock rows in one order
    ]


def market_bars_record(*, ticks: Sequence[tuple[MarketTick, datetime]], interval_seconds: int) -> list[BarUpdate]:
    """Upsert market bars of ``interval_seconds`` from ticks with one statement.

    An existing bar keeps its open and widens: high = max, low = min, close = the newest tick's,
    volume and tick count add up. Returns the batch's per-bar aggregates.

    Replaying the same ticks leaves open, high, low and close as they were; only a tick redelivered
    after a crash between this commit and its XACK would add its volume and count a second time
    (bars carry no per-entry record; a window of one batch, milliseconds wide).
    """
    updates = market_bars_aggregate(ticks=ticks, interval_seconds=interval_seconds)
    if not updates:
        return updates
    table = connection.ops.quote_name(MarketBar._meta.db_table)
    greatest, least = ("GREATEST", "LEAST") if connection.vendor == "postgresql" else ("MAX", "MIN")
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    values, params = [], []
    for u in updates:
        values.append("(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
        params += [u.symbol, connection.ops.adapt_datetimefield_value(u.time), interval_seconds, u.open, u.high, u.low, u.close, u.volume, u.ticks, now]
    sql = (
        f"INSERT INTO {table} (symbol, time, interval_seconds, open, high, low, close, volume, ticks, updated_at) "
        f"VALUES {', '.join(values)} ON CONFLICT (symbol, time) DO UPDATE SET "
        f"high = {greatest}({table}.high, excluded.high), low = {least}({table}.low, excluded.low), "
        f"close = excluded.close, volume = {table}.volume + excluded.volume, "
        f"ticks = {table}.ticks + excluded.ticks, updated_at = excluded.updated_at"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
    return updates

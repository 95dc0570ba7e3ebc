"""The stream path only ever inserts decisions and experiences: never an UPDATE, never a DELETE.

The tables get triggers that refuse any UPDATE or DELETE (PostgreSQL and SQLite alike), then the
subscriber runs through what it meets in production: signals with and without correlation ids,
closes paired by decision id, by correlation id and by the latest unpaired decision, a second
close for a paired decision, a close with nothing to pair, poison entries, and every stream
delivered again. An update in place anywhere on that path would be refused by the database and
show as a dead letter or an error; rows are also compared column by column before and after.
This is what lets the retention archive (decisions.retention) treat an archived row as final.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from django.db import DatabaseError, connection, transaction

from decisions.models import Decision, Experience
from decisions.streams import codec

from .stream_helpers import dead_letters, drain, publish, replay_all, signal_payload

SIGNAL, CLOSED = codec.SIGNAL_GENERATED, codec.POSITION_CLOSED
TABLES = (Decision._meta.db_table, Experience._meta.db_table)


def _guard_sql() -> tuple[list[str], list[str]]:
    """(create, drop) statements for triggers refusing UPDATE and DELETE on both tables."""
    if connection.vendor == "postgresql":
        create = ["CREATE FUNCTION rlv3_test_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "RAISE EXCEPTION 'append-only: % on %', TG_OP, TG_TABLE_NAME; END $$"]
        create += [f"CREATE TRIGGER rlv3_test_append_only BEFORE UPDATE OR DELETE ON {t} "
                   "FOR EACH ROW EXECUTE FUNCTION rlv3_test_refuse_change()" for t in TABLES]
        drop = [f"DROP TRIGGER IF EXISTS rlv3_test_append_only ON {t}" for t in TABLES]
        return create, drop + ["DROP FUNCTION IF EXISTS rlv3_test_refuse_change()"]
    assert connection.vendor == "sqlite"
    create, drop = [], []
    for t in TABLES:
        for op in ("UPDATE", "DELETE"):
            name = f"rlv3_test_append_only_{op.lower()}_{t}"
            create.append(f"CREATE TRIGGER {name} BEFORE {op} ON {t} BEGIN SELECT RAISE(ABORT, 'append-only: {op} on {t}'); END")
            drop.append(f"DROP TRIGGER IF EXISTS {name}")
    return create, drop


@contextmanager
def updates_refused():
    create, drop = _guard_sql()
    with connection.cursor() as cursor:
        for sql in create:
            cursor.execute(sql)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for sql in drop:
                cursor.execute(sql)


def _rows(model) -> dict:
    """Every column of every row, by primary key."""
    names = [f.attname for f in model._meta.concrete_fields]
    return {row[0]: row for row in model.objects.order_by("pk").values_list(*names)}


def _run_the_stream_path(redis_client, **drain_options) -> None:
    signals = [("BTCUSDT", None), ("BTCUSDT", "flow-a"), ("ETHUSDT", None), ("BTCUSDT", None),
               ("ETHUSDT", "flow-b"), ("SOLUSDT", None), ("BTCUSDT", None), ("ETHUSDT", None)]
    for i, (symbol, corr) in enumerate(signals):
        publish(redis_client, SIGNAL, signal_payload(symbol, rsi=30.0 + 5 * i), correlation_id=corr)
    bad = {publish(redis_client, SIGNAL, None, raw={"event_type": SIGNAL, "payload": "{not json"})}
    drain(**drain_options)
    decisions = _rows(Decision)
    assert len(decisions) == len(signals)

    by_symbol = {}
    for d in Decision.objects.order_by("created_at", "pk"):
        by_symbol.setdefault(d.symbol, []).append(d)
    first_btc, first_eth = by_symbol["BTCUSDT"][0], by_symbol["ETHUSDT"][0]
    publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 4.0, "roi": 0.4, "decision_id": str(first_btc.decision_id)})
    publish(redis_client, CLOSED, {"symbol": "ETHUSDT", "pnl": -2.0, "roi": -0.2, "decision_id": str(first_eth.decision_id)})
    publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 1.0, "roi": 0.1}, correlation_id="flow-a")
    publish(redis_client, CLOSED, {"symbol": "ETHUSDT", "pnl": 3.0, "roi": 0.3}, correlation_id="flow-b")
    publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 0.5, "roi": 0.05})  # the latest unpaired BTCUSDT
    publish(redis_client, CLOSED, {"symbol": "SOLUSDT", "pnl": -1.0, "roi": -0.1})
    bad.add(publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": 9.0, "roi": 0.9, "decision_id": str(first_btc.decision_id)}))
    bad.add(publish(redis_client, CLOSED, {"symbol": "XRPUSDT", "pnl": 1.0, "roi": 0.1}))  # nothing to pair
    bad.add(publish(redis_client, CLOSED, {"symbol": "BTCUSDT", "pnl": "lots", "roi": 0.1}))
    drain(**drain_options)
    experiences = _rows(Experience)
    assert len(experiences) == 6
    assert _rows(Decision) == decisions

    for stream in (SIGNAL, CLOSED):
        replay_all(redis_client, stream)
    drain(**drain_options)

    assert _rows(Decision) == decisions
    assert _rows(Experience) == experiences
    letters = dead_letters(redis_client)
    assert {letter.entry_id for letter in letters} == bad, [letter.error for letter in letters]
    assert not any("append-only" in letter.error for letter in letters)


def _assert_the_guard_holds() -> None:
    """The triggers are live: an update or a delete of either table is refused."""
    decision, experience = Decision.objects.first(), Experience.objects.first()
    for attempt in (
        lambda: Decision.objects.filter(pk=decision.pk).update(symbol=decision.symbol),
        lambda: Experience.objects.filter(pk=experience.pk).update(pnl=experience.pnl),
        lambda: Experience.objects.filter(pk=experience.pk).delete(),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()


@pytest.mark.django_db
def test_the_stream_path_never_updates_or_deletes_decisions_or_experiences(redis_client, stream_prefix):
    with updates_refused():
        _run_the_stream_path(redis_client)
        _assert_the_guard_holds()


@pytest.mark.django_db(transaction=True)
def test_the_same_with_committed_transactions_and_the_commit_thread(redis_client, stream_prefix):
    """As production runs it: each batch commits, and signal batches commit on the pipeline thread
    (its own connection, which sees the committed triggers)."""
    with updates_refused():
        _run_the_stream_path(redis_client, pipeline=True)
        _assert_the_guard_holds()

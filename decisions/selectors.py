"""Reads on the live side: status, decisions, experiences, subscriber health."""

from __future__ import annotations

import json
import logging
import time

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet, Subquery

from .models import Decision, Experience

log = logging.getLogger(__name__)

# The subscriber writes one JSON heartbeat per consumer into this Redis hash (see decisions.streams).
SUBSCRIBER_HEARTBEATS_KEY = "rlv3:subscriber:heartbeats"


def decision_list() -> QuerySet[Decision]:
    return Decision.objects.all()


def experience_list() -> QuerySet[Experience]:
    return Experience.objects.select_related("decision")


def newest_first_filter(queryset: QuerySet, **equal) -> QuerySet:
    """``queryset.filter(**equal)`` for a list shown newest first (the model's first ordering
    field, a time), bounded above in time by the newest row of each value: the same rows.

    PostgreSQL's planner takes a value's rows to be spread evenly in time. For a value whose rows
    all lie far back (the oldest model version) it read the time index backwards from the newest
    row and filtered: 552-684 ms through 1.6 million newer decisions for a first page, and it
    found the value's newest row the same way when asked for it plainly. So that row is found by
    an order only the value's (column, time) index gives, where it comes first: on an index of
    (column, time), the first row at or below the value by column and time descending; on
    (column, time descending), the first at or above it by column ascending and time descending.
    If that row has another value, the value has no rows and the bound is NULL (no rows either).
    Fourteen filters of two million decisions, first pages through the ORM: 1.0-2.0 ms each, where
    the plain filters took 0.4-1.1 ms but 552 and 684 ms for the two on the oldest version. A
    column without such an index is filtered plainly.
    """
    model = queryset.model
    time_field = model._meta.ordering[0].lstrip("-")
    manager = model._default_manager
    for field, value in equal.items():
        queryset = queryset.filter(**{field: value})
        index = next((ix.fields for ix in model._meta.indexes if [f.lstrip("-") for f in ix.fields] == [field, time_field]), None)
        if index is None:
            continue
        if index[1].startswith("-"):  # (column, time descending): the value's newest row is its first
            first = manager.filter(**{f"{field}__gte": value}).order_by(field, f"-{time_field}")
        else:  # (column, time): read backwards, the value's newest row is the first at or below it
            first = manager.filter(**{f"{field}__lte": value}).order_by(f"-{field}", f"-{time_field}")
        newest = manager.filter(pk__in=first.values("pk")[:1], **{field: value}).order_by().values(time_field)
        queryset = queryset.filter(**{f"{time_field}__lte": Subquery(newest)})
    return queryset


# Below this many rows `table_count` counts exactly; above it PostgreSQL's statistics answer.
EXACT_COUNT_MAX = 10_000


def table_count(model) -> int:
    """Rows of ``model``'s table: exact while it has at most EXACT_COUNT_MAX rows. Beyond that, on
    PostgreSQL, the live-row count its statistics keep (``n_live_tup``: inserts minus deletes,
    reported at each commit within about a second, re-estimated by ANALYZE), so that ``status``
    stays cheap on a large table under write load instead of scanning it."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = %s::regclass", [model._meta.db_table])
            row = cursor.fetchone()
        if row and row[0] is not None and row[0] > EXACT_COUNT_MAX:
            return int(row[0])
    return model.objects.count()


def redis_client():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def subscriber_health(client=None) -> dict:
    """Heartbeat age and lag of every subscriber consumer, newest first."""
    try:
        client = client or redis_client()
        raw = client.hgetall(SUBSCRIBER_HEARTBEATS_KEY)
    except Exception as exc:  # Redis down: status must say so, not fail
        return {"alive": False, "error": f"redis unavailable: {exc.__class__.__name__}", "consumers": []}
    now = time.time()
    consumers = []
    for name, text in raw.items():
        try:
            beat = json.loads(text)
        except ValueError:
            continue
        beat["consumer"] = name
        beat["age_seconds"] = round(now - float(beat.get("ts", 0)), 3)
        consumers.append(beat)
    consumers.sort(key=lambda b: b["age_seconds"])
    fresh = [c for c in consumers if c["age_seconds"] <= settings.RLV3_SUBSCRIBER_MAX_AGE_SECONDS]
    lag = max((c.get("lag", 0) or 0 for c in fresh), default=None)
    return {
        "alive": bool(fresh),
        "heartbeat_age_seconds": consumers[0]["age_seconds"] if consumers else None,
        "lag": lag,
        "consumers": consumers[:20],
    }


# Redis < 7 (the embedded server is 6.2) has no "lag" in XINFO GROUPS: count the undelivered
# entries instead, up to this cap (a lag above it is reported as the cap).
LAG_COUNT_CAP = 10_000


def stream_group_lag(client, stream_key: str, group_info: dict) -> int | None:
    """Entries of `stream_key` not yet delivered to the group described by `group_info` (XINFO GROUPS)."""
    lag = group_info.get("lag")
    if lag is not None:
        return int(lag)
    if not group_info:
        return None
    last = group_info.get("last-delivered-id")
    last = last.decode() if isinstance(last, bytes) else (last or "0-0")
    return len(client.xrange(stream_key, min=f"({last}", max="+", count=LAG_COUNT_CAP))

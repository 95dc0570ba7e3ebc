"""The service's Prometheus metrics, served with django-prometheus's at ``/metrics``.

Two kinds of series:

- **Counted in the process** that does the work (prometheus_client): decisions by action, symbol,
  source and role (``decisions.services``), the predict latency histogram (the API view and the
  stream batch). Under gunicorn's several workers, plus the subscriber, these are per process
  unless ``PROMETHEUS_MULTIPROC_DIR`` points every process of a host at one shared, emptied-at-start
  directory: then ``/metrics`` sums them (docs/operations.md, "Metrics").
- **Read at scrape time** from the shared stores, so every process reports the same truth whatever
  it served itself (:class:`ServiceCollector`): stream lag and pending entries per consumed stream
  (XINFO GROUPS), dead letters by stream and reason (a Redis hash the subscriber increments in the
  same MULTI that adds the dead letter), the dead-letter backlog, subscriber heartbeat ages,
  training runs by status and kind and their durations (the database), shadow mode, and the model
  version this process serves as a labelled gauge.

A store that does not answer drops its series from that scrape and sets
``rlv3_metrics_source_up{source=...}`` to 0; the scrape itself never fails.
"""

from __future__ import annotations

import functools
import hmac
import json
import operator
import os
import re
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from training.rl.actions import ACTION_NAMES

# Redis hash "<original stream>|<reason>" -> count of dead letters ever added (a purge does not
# decrease it), kept beside the dead-letter stream: "{RLV3_STREAM_PREFIX}rl_v3.dead_letter.counts".
DEAD_LETTER_COUNTS_SUFFIX = "rl_v3.dead_letter.counts"
# Distinct symbol labels one process reports before folding the rest into "other": symbols come
# from callers, and each label value is a time series Prometheus keeps.
MAX_SYMBOL_LABELS = 500
OTHER_SYMBOL = "other"
TRAINING_DURATION_BUCKETS = (30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, float("inf"))

DECISIONS = Counter(
    "rlv3_decisions", "Decisions made and stored, by action, symbol, source (api|stream) and role.",
    ["action", "symbol", "source", "role"],
)
PREDICT_LATENCY = Histogram(
    "rlv3_predict_latency_seconds",
    "Time to decide and store: one API predict request (source=api) or one stream batch of signals (source=stream).",
    ["source"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)

_symbols: set[str] = set()
_symbols_lock = threading.Lock()


def symbol_label(symbol: str) -> str:
    """The label value for a symbol: itself for the first MAX_SYMBOL_LABELS seen, else "other"."""
    symbol = symbol or "-"
    if symbol in _symbols:
        return symbol
    with _symbols_lock:
        if len(_symbols) < MAX_SYMBOL_LABELS:
            _symbols.add(symbol)
            return symbol
    return OTHER_SYMBOL


_decision_labels = operator.attrgetter("action", "symbol", "source", "role")


def decisions_count(decisions: Iterable) -> None:
    """Add stored Decisions (any objects with action, symbol, source, role, or a batch with its own
    ``label_counts()``) to rlv3_decisions_total."""
    # attrgetter and the labels' str() afterwards: once per label set, not once per decision.
    label_counts = getattr(decisions, "label_counts", None)
    tally = label_counts() if label_counts is not None else Tally(map(_decision_labels, decisions))
    for (action, symbol, source, role), n in tally.items():
        DECISIONS.labels(ACTION_NAMES[action], symbol_label(symbol), str(source), str(role)).inc(n)


def counts_decisions(func: Callable[..., Sequence]) -> Callable[..., Sequence]:
    """Decorator for a service that returns the Decisions it stored: counts them."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        decisions = func(*args, **kwargs)
        decisions_count(decisions)
        return decisions

    return wrapper


def predict_timed(source: str) -> Callable:
    """Decorator: observe the wrapped call's wall time in rlv3_predict_latency_seconds{source}."""
    histogram = PREDICT_LATENCY.labels(source)

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - start)

        return wrapper

    return decorate


# --- dead letters ---------------------------------------------------------------------------------

_FIELD_ERROR = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]{0,39}): ")


def dead_letter_reason(error: str) -> str:
    """A low-cardinality reason for a dead letter's free-text error (a metric label, a filter).

    ``max_deliveries`` (poison entry redelivered too often), ``processing_failed`` (the entry
    raised), ``pairing`` (a close with no decision to pair), ``invalid:<field>`` (the codec's
    field-named errors, e.g. ``invalid:payload``, ``invalid:rsi``), else ``other``.
    """
    text = error or ""
    if text.startswith("delivered ") and "RLV3_MAX_DELIVERIES" in text:
        return "max_deliveries"
    if text.startswith("processing failed"):
        return "processing_failed"
    if "to pair" in text or "already paired" in text or " decision, not " in text:
        return "pairing"
    match = _FIELD_ERROR.match(text)
    if match:
        return f"invalid:{match.group(1)}"
    return "other"


def dead_letter_counts_key(stream_prefix: str | None = None) -> str:
    """The Redis hash of dead-letter counts for a stream prefix (default RLV3_STREAM_PREFIX)."""
    return f"{settings.RLV3_STREAM_PREFIX if stream_prefix is None else stream_prefix}{DEAD_LETTER_COUNTS_SUFFIX}"


def dead_letter_count(pipe, letter) -> None:
    """Queue the HINCRBY of a dead letter's (stream, reason) on ``pipe`` (the MULTI that adds it)."""
    pipe.hincrby(dead_letter_counts_key(), f"{letter.stream}|{dead_letter_reason(letter.error)}", 1)


# --- read at scrape time ----------------------------------------------------------------------------


class ServiceCollector:
    """Series read from Redis and the database when Prometheus scrapes (see the module docstring)."""

    def collect(self):
        up = GaugeMetricFamily("rlv3_metrics_source_up", "1 when the store answered this scrape.", labels=["source"])
        for source, produce in (("redis", self._redis_series), ("database", self._database_series)):
            try:
                families = list(produce())
            except Exception:  # a store is down: its series are absent, the scrape still answers
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up
        yield from self._served_series()

    # Redis: streams, dead letters, heartbeats
    def _redis_series(self):
        from decisions.selectors import SUBSCRIBER_HEARTBEATS_KEY, redis_client, stream_group_lag
        from decisions.streams import codec

        client = redis_client()
        prefix, group_prefix = settings.RLV3_STREAM_PREFIX, settings.RLV3_GROUP_PREFIX
        pipe = client.pipeline(transaction=False)
        for event_type in codec.CONSUMED_EVENT_TYPES:
            pipe.xinfo_groups(codec.stream_key(event_type, prefix))
        pipe.xlen(codec.stream_key(codec.DEAD_LETTER, prefix))
        pipe.hgetall(dead_letter_counts_key(prefix))
        pipe.hgetall(SUBSCRIBER_HEARTBEATS_KEY)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies[len(codec.CONSUMED_EVENT_TYPES):]:
            if isinstance(reply, Exception):
                raise reply
        lag = GaugeMetricFamily("rlv3_stream_lag", "Entries in the stream not yet delivered to this service's consumer group.", labels=["stream"])
        pending = GaugeMetricFamily("rlv3_stream_pending", "Entries delivered to the group but not acknowledged yet.", labels=["stream"])
        for event_type, reply in zip(codec.CONSUMED_EVENT_TYPES, replies):
            group = codec.group_name(event_type, group_prefix)
            info = {} if isinstance(reply, Exception) else next((g for g in reply if g.get("name") == group), {})
            if info:  # no group yet (the subscriber never ran): nothing to report
                group_lag = stream_group_lag(client, codec.stream_key(event_type, prefix), info)
                if group_lag is not None:
                    lag.add_metric([event_type], float(group_lag))
                pending.add_metric([event_type], float(info.get("pending") or 0))
        yield lag
        yield pending
        yield GaugeMetricFamily("rlv3_dead_letter_backlog", "Entries in the dead-letter stream now (replay or purge to clear).", value=float(replies[-3]))
        counts = CounterMetricFamily("rlv3_dead_letters", "Dead letters added, by original stream (event type) and reason.", labels=["stream", "reason"])
        for key, value in sorted(replies[-2].items()):
            stream, _, reason = key.rpartition("|")
            counts.add_metric([stream.removeprefix(prefix), reason], float(value))
        yield counts
        ages = GaugeMetricFamily("rlv3_subscriber_heartbeat_age_seconds", "Seconds since each subscriber consumer's last heartbeat.", labels=["consumer"])
        now, alive = time.time(), 0
        for consumer, text in sorted(replies[-1].items()):
            try:
                age = now - float(json.loads(text).get("ts", 0))
            except (ValueError, TypeError, AttributeError):
                continue
            ages.add_metric([consumer], round(age, 3))
            alive += age <= settings.RLV3_SUBSCRIBER_MAX_AGE_SECONDS
        yield ages
        yield GaugeMetricFamily("rlv3_subscribers_alive", "Subscriber consumers with a fresh heartbeat.", value=alive)

    # Database: training runs, shadow mode
    def _database_series(self):
        from django.db.models import Count, F

        from decisions.models import ShadowModeState
        from training.models import RunStatus, TrainingRun

        runs = GaugeMetricFamily("rlv3_training_runs", "Training runs by status and kind (top-level and fan-out children).", labels=["status", "kind"])
        for row in TrainingRun.objects.values("status", "kind").annotate(n=Count("id")).order_by("status", "kind"):
            runs.add_metric([row["status"], row["kind"]], row["n"])
        yield runs
        durations = HistogramMetricFamily(
            "rlv3_training_run_duration_seconds", "Wall time of finished training runs, from start to finish.", labels=["status"],
        )
        finished = (
            TrainingRun.objects.filter(status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED], started_at__isnull=False, finished_at__isnull=False)
            .annotate(took=F("finished_at") - F("started_at")).values_list("status", "took")
        )
        by_status: dict[str, list[float]] = {}
        for status, took in finished:
            by_status.setdefault(status, []).append(max(0.0, took.total_seconds()))
        for status, values in sorted(by_status.items()):
            durations.add_metric([status], _cumulative_buckets(values, TRAINING_DURATION_BUCKETS), sum_value=sum(values))
        yield durations
        state = ShadowModeState.objects.filter(pk=1).values_list("enabled", flat=True).first()
        shadow = settings.RLV3_SHADOW_MODE if state is None else state
        yield GaugeMetricFamily("rlv3_shadow_mode", "1 while shadow mode is on (decisions are not acted on).", value=float(shadow))

    # This process: the served model
    def _served_series(self):
        from decisions.serving import policy_server

        served = GaugeMetricFamily("rlv3_served_model", "1 for the model version this process serves, per role.", labels=["role", "version"])
        loaded = GaugeMetricFamily("rlv3_model_loaded", "1 when a trained champion is loaded (0: untrained fallback).")
        try:
            described = policy_server().describe()
        except Exception:  # the registry is unreachable: the database source already says so
            return
        served.add_metric(["champion", described["served_version"]], 1)
        if described.get("challenger_version"):
            served.add_metric(["challenger", described["challenger_version"]], 1)
        loaded.add_metric([], float(described["model_loaded"]))
        yield served
        yield loaded


def _cumulative_buckets(values: Sequence[float], bounds: Sequence[float]) -> list[tuple[str, float]]:
    out = []
    for bound in bounds:
        out.append((floatToGoString(bound), float(sum(1 for v in values if v <= bound))))
    return out


SERVICE_COLLECTOR = ServiceCollector()


def metrics_registry() -> CollectorRegistry:
    """The registry a scrape reads: this process's (or, in multiprocess mode, every process's
    aggregated) series plus the scrape-time ServiceCollector."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)  # a registry is a collector of its own series
    registry.register(SERVICE_COLLECTOR)
    return registry


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics in Prometheus text format; with RLV3_METRICS_TOKEN set, only for ``Bearer <it>``."""
    token = settings.RLV3_METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return HttpResponse("metrics token required\n", status=401, content_type="text/plain")
    return HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)

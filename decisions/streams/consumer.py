"""The subscriber loop: consumer groups on the consumed streams, exactly-once effects, resilience.

Per batch of one stream: decode (poison entries become dead letters), write to the database, then
in ONE Redis MULTI/EXEC publish the decision events, add the dead letters and XACK the batch. So an
entry is acknowledged only after its effects are committed; a crash before the ack redelivers it,
and the database constraints turn the redelivery into a republish of the same decision (at-least-
once publishing, exactly-once decisions; consumers of rl_v3.decision dedupe by decision_id).

Signal batches are pipelined: while one batch is stored and published on a second thread
(pipeline.py), the next one is decoded and scored; every other batch waits for that thread to be
idle first, so a close is only ever paired with decisions already stored.

Start-up (and after every failure): re-read this consumer's own pending entries (XREADGROUP id 0),
then take over entries idle longer than RLV3_CLAIM_IDLE_MS from consumers that died (XAUTOCLAIM,
also repeated every RLV3_CLAIM_IDLE_MS while running). An entry already delivered more than
RLV3_MAX_DELIVERIES times is dead-lettered instead of processed, so a poison entry that crashes
the process cannot crash-loop it.

Transient failures (the database or Redis unreachable) are never acknowledged: the loop backs off
exponentially, reconnects, waits until both stores answer (so an outage does not use up delivery
attempts), then re-reads its pending entries. Any other error in a batch is isolated by
re-processing the entries one by one; an entry that fails alone is dead-lettered with the error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection, reset_queries

from decisions import metrics
from decisions.selectors import SUBSCRIBER_HEARTBEATS_KEY, stream_group_lag
from rlv3site.logging import bind_stream_batch, bind_stream_entry

from . import codec
from .handlers import BatchHandlers, Entry, Outcome
from .pipeline import CommitPipeline

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, redis.RedisError)


def default_consumer_name() -> str:
    """``<host>-<pid>``: unique per process, stable enough to read in the status report."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ConsumerConfig:
    """How a subscriber runs; :meth:`from_settings` reads the RLV3_* settings."""

    consumer: str
    redis_url: str
    stream_prefix: str
    group_prefix: str
    batch: int = 256
    block_ms: int = 2000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    decision_maxlen: int = 100_000
    bar_seconds: int = 60
    heartbeat_seconds: float = 5.0
    backoff_initial_seconds: float = 0.2
    backoff_max_seconds: float = 10.0
    # Commit signal batches on a second thread while the next one is prepared (see pipeline.py).
    # In-process tests turn it off: a second thread would not share their test transaction.
    pipeline: bool = True

    @classmethod
    def from_settings(cls, **overrides) -> ConsumerConfig:
        values = dict(
            consumer=default_consumer_name(),
            redis_url=settings.REDIS_URL,
            stream_prefix=settings.RLV3_STREAM_PREFIX,
            group_prefix=settings.RLV3_GROUP_PREFIX,
            claim_idle_ms=settings.RLV3_CLAIM_IDLE_MS,
            max_deliveries=settings.RLV3_MAX_DELIVERIES,
            decision_maxlen=settings.RLV3_DECISION_STREAM_MAXLEN,
            bar_seconds=settings.RLV3_BAR_SECONDS,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class ConsumerStats:
    """Counters since the subscriber started (reported in the heartbeat)."""

    processed: int = 0  # entries acknowledged after their effects were stored
    published: int = 0  # rl_v3.decision events added
    dead_lettered: int = 0
    retries: int = 0  # transient failures backed off from
    batches: int = 0


@dataclass
class _Stream:
    event_type: str
    key: str
    group: str
    stats: dict = field(default_factory=dict)


class StreamConsumer:
    """One subscriber process: ``run()`` until ``stop()`` (or, with ``once``, until drained)."""

    def __init__(self, config: ConsumerConfig, handlers: BatchHandlers | None = None):
        self.config = config
        self.handlers = handlers or BatchHandlers(
            consumer=config.consumer, stream_prefix=config.stream_prefix, bar_seconds=config.bar_seconds,
        )
        self.streams = [
            _Stream(event_type=t, key=codec.stream_key(t, config.stream_prefix), group=codec.group_name(t, config.group_prefix))
            for t in codec.CONSUMED_EVENT_TYPES
        ]
        self._by_key = {s.key: s for s in self.streams}
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._redis: redis.Redis | None = None
        self._state = "starting"
        self._last_error = ""
        self._last_heartbeat = float("-inf")
        self._last_claim = float("-inf")
        self._commits: CommitPipeline | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def stop(self, *_args) -> None:
        """Ask the loop to finish the current batch and return (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)

    def run(self, *, once: bool = False) -> ConsumerStats:
        """Consume until stopped; with ``once``, drain what is there (pending included) and return."""
        backoff = self.config.backoff_initial_seconds
        recovered = False
        if self.config.pipeline:
            self._commits = CommitPipeline(depth=1, transient=TRANSIENT_ERRORS)
        while not self.stopping:
            try:
                read = 0
                if not recovered:
                    self._ensure_groups()
                    read += self._recover() + self._claim_idle()
                    recovered = True
                    self._state = "running"
                read += self._read_and_process(block_ms=None if once else self.config.block_ms)
                if self._due(self._last_claim, self.config.claim_idle_ms / 1000.0):
                    read += self._claim_idle()
                self._heartbeat_maybe()
                backoff = self.config.backoff_initial_seconds
                if once and not read:
                    self._drain_commits()
                    break
            except TRANSIENT_ERRORS as exc:
                self.stats.retries += 1
                self._state, self._last_error = "backing off", f"{exc.__class__.__name__}: {exc}"[:300]
                log.warning("transient failure, nothing acknowledged; retrying in %.1fs: %s", backoff, self._last_error)
                if self._commits is not None:
                    self._commits.drain()  # their entries stay pending unless their commit succeeded
                self._reset_connections()
                self._sleep(backoff)
                backoff = min(backoff * 2, self.config.backoff_max_seconds)
                self._wait_until_healthy(backoff)
                recovered = False
        self._close_commits()
        self._heartbeat_maybe(force=True, final=True)
        return self.stats

    def _close_commits(self) -> None:
        """Finish the batch in flight (stored, published, acked) before returning."""
        if self._commits is None:
            return
        try:
            self._settle(self._commits.close())
        except TRANSIENT_ERRORS as exc:  # its entries stay pending: the next start re-reads them
            log.warning("stopping with a batch not committed (%s); it stays pending", exc)
        finally:
            self._commits = None

    # --- connections ----------------------------------------------------------------------------
    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            # The read blocks for block_ms server-side: the socket must wait longer than that.
            self._redis = redis.Redis.from_url(
                self.config.redis_url, decode_responses=False, socket_connect_timeout=3,
                socket_timeout=self.config.block_ms / 1000.0 + 5.0, health_check_interval=30,
            )
        return self._redis

    def _reset_connections(self) -> None:
        if self._redis is not None:
            try:
                self._redis.close()
            except Exception:  # already broken: dropping it is all that matters
                pass
            self._redis = None
        try:
            connection.close()
        except Exception:
            pass

    def _wait_until_healthy(self, backoff: float) -> None:
        """Block (backing off) until Redis and the database both answer, or stop is requested."""
        while not self.stopping:
            try:
                self.redis.ping()
                close_old_connections()
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                return
            except TRANSIENT_ERRORS as exc:
                self._last_error = f"{exc.__class__.__name__}: {exc}"[:300]
                log.info("waiting for the datastores: %s", self._last_error)
                self._heartbeat_maybe()
                self._reset_connections()
                self._sleep(backoff)
                backoff = min(backoff * 2, self.config.backoff_max_seconds)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    @staticmethod
    def _due(last: float, every: float) -> bool:
        return time.monotonic() - last >= every

    def _ensure_groups(self) -> None:
        """Create each group at id 0 (MKSTREAM): entries added before the group exist are consumed."""
        for s in self.streams:
            try:
                self.redis.xgroup_create(s.key, s.group, id="0", mkstream=True)
                log.info("created consumer group %s on %s", s.group, s.key)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # --- reading ----------------------------------------------------------------------------------
    def _read_and_process(self, *, block_ms: int | None) -> int:
        """Read new entries (XREADGROUP >) of every stream and process them; returns how many."""
        try:
            response = self._read_new(block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis restarted empty, or a stream was deleted: recreate the groups and read again.
            log.warning("consumer group missing (%s); recreating", exc)
            self._ensure_groups()
            return 1
        return self._process_response(response)

    def _sweep(self, streams: Sequence[_Stream]) -> list:
        pipe = self.redis.pipeline(transaction=False)
        for s in streams:
            pipe.xreadgroup(s.group, self.config.consumer, {s.key: ">"}, count=self.config.batch)
        return [item for response in pipe.execute() for item in (response or [])]

    def _read_new(self, block_ms: int | None) -> list:
        """[(stream key, [(id, fields), ...]), ...] of new entries.

        Each stream has its own group and XREADGROUP takes one group, so the streams are swept
        without blocking in one pipeline; when all are empty, the read blocks on the signal stream
        (the latency-critical one) and, once woken, sweeps the others so that market data that came
        meanwhile is recorded before the signals are completed from it.
        """
        response = self._sweep(self.streams)
        if response or block_ms is None:
            return response
        signals = self._stream(codec.SIGNAL_GENERATED)
        woken = self.redis.xreadgroup(signals.group, self.config.consumer, {signals.key: ">"}, count=self.config.batch, block=block_ms)
        if not woken:
            return []
        return self._sweep([s for s in self.streams if s is not signals]) + list(woken)

    def _stream(self, event_type: str) -> _Stream:
        return next(s for s in self.streams if s.event_type == event_type)

    def _recover(self) -> int:
        """Process this consumer's own pending entries (delivered before a crash or failure)."""
        total = 0
        for s in self.streams:
            start = "0"
            while not self.stopping:
                response = self.redis.xreadgroup(s.group, self.config.consumer, {s.key: start}, count=self.config.batch)
                entries = response[0][1] if response else []
                if not entries:
                    break
                total += self._process(s, entries, from_pending=True)
                start = _text(entries[-1][0])
        if total:
            log.info("re-processed %d pending entries of %s", total, self.config.consumer)
        return total

    def _claim_idle(self) -> int:
        """Take over entries idle longer than claim_idle_ms (their consumer died) and process them."""
        self._last_claim = time.monotonic()
        total = 0
        for s in self.streams:
            cursor = "0-0"
            while not self.stopping:
                reply = self.redis.xautoclaim(
                    s.key, s.group, self.config.consumer, min_idle_time=self.config.claim_idle_ms,
                    start_id=cursor, count=self.config.batch,
                )
                cursor, entries = _text(reply[0]), reply[1]
                if entries:
                    log.info("claimed %d idle entries of %s", len(entries), s.key)
                    total += self._process(s, entries, from_pending=True)
                if cursor == "0-0":
                    break
        return total

    # --- processing -------------------------------------------------------------------------------
    def _process_response(self, response) -> int:
        by_key = {_text(key): entries for key, entries in response}
        total = 0
        for s in self.streams:  # CONSUMED_EVENT_TYPES order: market data, signals, closes
            entries = by_key.get(s.key)
            if entries:
                total += self._process(s, entries, from_pending=False)
        return total

    def _process(self, s: _Stream, raw_entries: list, *, from_pending: bool) -> int:
        """Handle one stream's batch and apply its outcome to Redis; returns the entries handled.

        New signal batches are prepared here and committed on the pipeline thread; everything else
        first waits for the pipeline to be empty, so closes are paired only with stored decisions.
        """
        bind_stream_batch(stream=s.key, consumer=self.config.consumer)
        entries = [Entry(entry_id=_text(entry_id), fields=fields) for entry_id, fields in raw_entries]
        if self._commits is not None and not from_pending and s.event_type == codec.SIGNAL_GENERATED:
            if self._submit_signals(s, entries):
                return len(raw_entries)
        self._drain_commits()
        outcome = Outcome()
        if from_pending:
            entries = self._with_deliveries(s, entries)
            fresh = []
            for entry in entries:
                if entry.deliveries > self.config.max_deliveries:
                    error = f"delivered {entry.deliveries} times (more than RLV3_MAX_DELIVERIES={self.config.max_deliveries}); last error: {self._last_error or 'unknown'}"
                    outcome.dead_letter(entry, stream=s.key, error=error, consumer=self.config.consumer)
                else:
                    fresh.append(entry)
            entries = fresh
        if entries:
            outcome.merge(self._handle(s, entries))
        self._apply(s, outcome)
        self.stats.batches += 1
        # As after a web request: with DEBUG on, Django keeps every statement (here a batch's JSON
        # document of about 1 MB) in connection.queries, which would grow without bound.
        reset_queries()
        return len(raw_entries)

    def _submit_signals(self, s: _Stream, entries: list[Entry]) -> bool:
        """Prepare a signal batch and queue its commit; False if preparing failed (the caller
        then processes the batch synchronously, isolating the entry at fault)."""
        try:
            prepared = self.handlers.signals_prepare(entries)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            log.warning("preparing a batch of %d from %s failed (%s)", len(entries), s.key, exc)
            return False

        def commit() -> None:
            try:
                self._apply(s, self.handlers.signals_commit(prepared))
                self.stats.batches += 1
            finally:
                reset_queries()

        self._settle(self._commits.submit(commit, tag=(s, entries)))
        return True

    def _drain_commits(self) -> None:
        if self._commits is not None and self._commits.busy:
            self._settle(self._commits.drain())

    def _settle(self, failures: list) -> None:
        """Deal with failed commits: a transient failure is raised (its entries stay pending and are
        re-read after the back-off); any other is redone here, isolating the entry at fault."""
        for _, error in failures:
            if isinstance(error, TRANSIENT_ERRORS):
                raise error
        for (s, entries), error in failures:
            log.warning("committing a batch of %d from %s failed (%s); redoing it here", len(entries), s.key, error)
            self._apply(s, self._handle(s, entries))

    def _with_deliveries(self, s: _Stream, entries: list[Entry]) -> list[Entry]:
        """The entries with their delivery counts (XPENDING), which this read has just incremented."""
        counts: dict[str, int] = {}
        ids = [e.entry_id for e in entries]
        rows = self.redis.xpending_range(
            s.key, s.group, min=ids[0], max=ids[-1], count=max(4 * len(ids), 100), consumername=self.config.consumer,
        )
        for row in rows:
            counts[_text(row["message_id"])] = int(row["times_delivered"])
        return [Entry(entry_id=e.entry_id, fields=e.fields, deliveries=counts.get(e.entry_id, 1)) for e in entries]

    def _handle(self, s: _Stream, entries: list[Entry]) -> Outcome:
        """Run the handler; a non-transient failure is narrowed down to the entry that causes it."""
        handler = self.handlers.handler(s.event_type)
        try:
            return handler(entries)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            if len(entries) > 1:
                log.warning("batch of %d from %s failed (%s); isolating entries one by one", len(entries), s.key, exc)
                outcome = Outcome()
                for entry in entries:
                    outcome.merge(self._handle(s, [entry]))
                return outcome
            log.exception("entry %s of %s failed; dead-lettering it", entries[0].entry_id, s.key)
            outcome = Outcome()
            outcome.dead_letter(entries[0], stream=s.key, error=f"processing failed: {exc.__class__.__name__}: {exc}"[:500], consumer=self.config.consumer)
            return outcome

    def _apply(self, s: _Stream, outcome: Outcome) -> None:
        """Publish decisions, add dead letters and XACK, all in one MULTI/EXEC (all or nothing)."""
        if not (outcome.ack or outcome.decisions or outcome.dead):
            return
        pipe = self.redis.pipeline(transaction=True)
        decision_stream = codec.stream_key(codec.DECISION, self.config.stream_prefix)
        for fields in outcome.decisions:
            pipe.xadd(decision_stream, fields, maxlen=self.config.decision_maxlen, approximate=True)
        dead_stream = codec.stream_key(codec.DEAD_LETTER, self.config.stream_prefix)
        for letter, fields in outcome.dead:
            pipe.xadd(dead_stream, fields, maxlen=self.config.decision_maxlen, approximate=True)
            metrics.dead_letter_count(pipe, letter)
            bind_stream_entry(entry_id=letter.entry_id, fields=letter.original)
            log.warning("dead letter %s %s: %s", letter.stream, letter.entry_id, letter.error)
        if outcome.ack:
            pipe.xack(s.key, s.group, *outcome.ack)
        pipe.execute()
        self.stats.published += len(outcome.decisions)
        self.stats.dead_lettered += len(outcome.dead)
        self.stats.processed += len(outcome.ack) - len(outcome.dead)

    # --- heartbeat --------------------------------------------------------------------------------
    def _heartbeat_maybe(self, *, force: bool = False, final: bool = False) -> None:
        if not force and not self._due(self._last_heartbeat, self.config.heartbeat_seconds):
            return
        self._last_heartbeat = time.monotonic()
        try:
            self.heartbeat(final=final)
        except redis.RedisError as exc:  # the heartbeat must never take the loop down
            log.debug("heartbeat not written: %s", exc)

    def heartbeat(self, *, final: bool = False) -> dict:
        """Write this consumer's heartbeat (JSON) into the SUBSCRIBER_HEARTBEATS_KEY hash.

        ``lag``: entries not yet delivered to the group, the maximum over the streams (XINFO GROUPS
        on Redis >= 7, counted with XRANGE on older servers); ``pending``: delivered but unacknowledged entries, summed over the streams.
        A consumer that stops cleanly removes its field.
        """
        pipe = self.redis.pipeline(transaction=False)
        for s in self.streams:
            pipe.xinfo_groups(s.key)
        replies = pipe.execute(raise_on_error=False)
        streams, lags, pending = {}, [], 0
        for s, reply in zip(self.streams, replies):
            info = {}
            if not isinstance(reply, Exception):
                info = next((g for g in reply if _text(g.get("name")) == s.group), {})
            lag = stream_group_lag(self.redis, s.key, info)
            streams[s.event_type] = {
                "lag": lag, "pending": int(info.get("pending") or 0),
                "last_delivered_id": _text(info.get("last-delivered-id") or b"") or None,
            }
            if lag is not None:
                lags.append(int(lag))
            pending += int(info.get("pending") or 0)
        beat = {
            "ts": time.time(), "lag": max(lags) if lags else None, "pending": pending,
            "state": "stopped" if final else self._state, "last_error": self._last_error,
            "pid": os.getpid(), "streams": streams, **asdict(self.stats),
        }
        if final:
            self.redis.hdel(SUBSCRIBER_HEARTBEATS_KEY, self.config.consumer)
        else:
            self.redis.hset(SUBSCRIBER_HEARTBEATS_KEY, self.config.consumer, json.dumps(beat))
        return beat


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

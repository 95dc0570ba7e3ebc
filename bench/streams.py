"""End-to-end benchmark of the stream subscriber: signal entry added -> decision persisted and published.

Starts ``manage.py rlv3_subscribe`` as a subprocess against a private stream prefix and the
database of DATABASE_URL (default postgres://postgres@127.0.0.1:5432/rlv3_bench, created and
migrated if missing), then:

1. throughput: publishes N signals in the wire format as fast as possible and measures
   N / (time the last rl_v3.decision entry was added - time the first signal was added);
2. lag at a fixed rate: publishes signals at --rate per second for --seconds and measures, per
   signal, the decision entry's time minus the signal entry's time (both Redis stream ids, so one
   clock, millisecond resolution), reporting p50 and p99;
3. the subscriber's peak RSS (VmHWM of the process) over both phases.

It checks that every signal got exactly one stored decision. Prints a table, then one JSON object
as the last line with --json: signals_per_s, lag_p50_ms, lag_p99_ms, peak_rss_mb (and details).
Targets on the 2-core reference machine: >= 5,000 signals/s, p99 <= 50 ms at 1,000/s, <= 150 MB.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlv3_bench .venv/bin/python bench/streams.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# Run as a script, this folder is first on sys.path, where a bench module named like a standard one
# (http.py) would shadow it: import from the project root instead.
if sys.path and Path(sys.path[0] or ".").resolve() == BASE_DIR / "bench":
    sys.path[0] = str(BASE_DIR)
else:
    sys.path.insert(0, str(BASE_DIR))

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/rlv3_bench"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT")
REGIMES = ("TREND", "RANGE", "BREAKOUT", "MEAN_REVERSION")


def _signal_payload(rng: random.Random) -> dict:
    """A realistic signal: a symbol and the seed's observation fields."""
    return {
        "symbol": rng.choice(SYMBOLS),
        "price_change_1m": rng.gauss(0, 0.002), "price_change_5m": rng.gauss(0, 0.005),
        "price_change_15m": rng.gauss(0, 0.01), "volatility": abs(rng.gauss(0.02, 0.005)),
        "rsi": rng.uniform(5, 95), "macd": rng.gauss(0, 0.002), "position_size": 0.0, "position_side": 0,
        "balance": 10_000.0, "equity": 10_000.0, "regime": rng.choice(REGIMES), "trend_strength": rng.random(),
        "volume_ratio": rng.uniform(0.3, 3), "spread": 0.0005, "time_of_day": rng.random(),
        "strategy": "bench", "confidence": rng.random(),  # extra fields a producer sends; ignored
    }


def _entries(n: int, seed: int) -> list[dict[str, str]]:
    from decisions.streams import codec

    rng = random.Random(seed)
    return [
        codec.encode_entry(codec.Envelope(
            event_type=codec.SIGNAL_GENERATED, payload=_signal_payload(rng), trace_id=uuid.uuid4().hex,
            correlation_id=uuid.uuid4().hex, source="bench",
        ))
        for _ in range(n)
    ]


def _ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _database_ready(url: str) -> None:
    """Create the bench database if missing and migrate it."""
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    if "postgresql" in cfg["ENGINE"]:
        admin = psycopg.connect(host=cfg["HOST"] or "127.0.0.1", port=cfg["PORT"] or 5432, user=cfg["USER"] or "postgres",
                                password=cfg["PASSWORD"] or None, dbname="postgres", autocommit=True)
        with admin:
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cfg["NAME"]]).fetchone():
                admin.execute(f'CREATE DATABASE "{cfg["NAME"]}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=BASE_DIR, check=True,
                   env={**os.environ, "DATABASE_URL": url})


class Subscriber:
    """One subscriber subprocess (consumer ``name`` of the group), its CPU time and peak RSS."""

    def __init__(self, env: dict, batch: int, log_path: Path, name: str):
        self.name = name
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "rlv3_subscribe", "--consumer", name, "--batch", str(batch), "--block-ms", "1000"],
            cwd=BASE_DIR, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.log.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _database_backends() -> list[int]:
    """Pids of the PostgreSQL backends serving other connections to this database (the subscriber's)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return [row[0] for row in cursor.fetchall()]


def _wait_heartbeat(client, consumer: str, timeout: float = 60.0) -> None:
    from decisions.selectors import SUBSCRIBER_HEARTBEATS_KEY

    deadline = time.monotonic() + timeout
    while not client.hget(SUBSCRIBER_HEARTBEATS_KEY, consumer):
        if time.monotonic() > deadline:
            raise SystemExit("subscriber did not start (no heartbeat)")
        time.sleep(0.05)


def _publish_all(client, stream: str, entries: list[dict[str, str]], chunk: int = 500) -> list[bytes]:
    ids = []
    for start in range(0, len(entries), chunk):
        pipe = client.pipeline(transaction=False)
        for fields in entries[start:start + chunk]:
            pipe.xadd(stream, fields)
        ids += pipe.execute()
    return ids


def _collect_decisions(client, stream: str, want: set[str], last_id: str, timeout: float) -> tuple[dict[str, int], str]:
    """signal_event_id -> decision entry time (ms), reading the decision stream until all arrived."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(want) and time.monotonic() < deadline:
        reply = client.xread({stream: last_id}, count=5000, block=500)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id.decode()
                payload = json.loads(fields[b"payload"])
                sid = payload["signal_event_id"]
                if sid in want and sid not in seen:
                    seen[sid] = _ms(entry_id)
    return seen, last_id


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return float(ordered[index])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=20_000, help="signals for the throughput phase")
    parser.add_argument("--rate", type=int, default=1_000, help="signals per second in the lag phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag phase")
    parser.add_argument("--batch", type=int, default=500, help="subscriber --batch")
    parser.add_argument("--consumers", type=int, default=1, help="subscriber processes sharing the consumer group")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlv3site.settings")
    _database_ready(database_url)
    import django

    django.setup()
    import redis
    from bench._common import finish, machine
    from django.conf import settings

    from decisions.models import Decision
    from decisions.streams import codec

    tag = uuid.uuid4().hex[:8]
    prefix, group_prefix = f"bench:{tag}:stream:", f"bench:{tag}:group:"
    signal_stream = codec.stream_key(codec.SIGNAL_GENERATED, prefix)
    decision_stream = codec.stream_key(codec.DECISION, prefix)
    client = redis.Redis.from_url(settings.REDIS_URL)
    env = {**os.environ, "RLV3_STREAM_PREFIX": prefix, "RLV3_GROUP_PREFIX": group_prefix, "PYTHONUNBUFFERED": "1",
           "LOG_LEVEL": "WARNING"}
    log_path = BASE_DIR / "bench" / "results" / "streams-subscriber-1.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    # Build the payloads before timing anything: the bench measures the subscriber, not json.dumps.
    throughput_entries = _entries(args.signals, seed=1)
    lag_total = int(args.rate * args.seconds)
    lag_entries = _entries(lag_total, seed=2)
    subscribers = [
        Subscriber(env, args.batch, log_path.with_name(f"streams-subscriber-{i}.log"), f"bench-{i}")
        for i in range(1, args.consumers + 1)
    ]
    try:
        for subscriber in subscribers:
            _wait_heartbeat(client, subscriber.name)
        # Warm-up: the first batch pays for imports, the policy load and connection set-up.
        warm_ids = _publish_all(client, signal_stream, _entries(200, seed=0))
        _, last_seen = _collect_decisions(client, decision_stream, {i.decode() for i in warm_ids}, "0", 60)

        # 1. Throughput. CPU time is read too: on a shared machine the wall clock also measures
        # the neighbours, the CPU seconds per signal only this service.
        backends = _database_backends()
        cpu_before = sum(x.cpu_seconds() for x in subscribers), sum(_cpu_seconds(p) for p in backends)
        ids = _publish_all(client, signal_stream, throughput_entries)
        published_at = {i.decode(): _ms(i) for i in ids}
        seen, last_seen = _collect_decisions(client, decision_stream, set(published_at), last_seen, 300)
        if len(seen) < len(published_at):
            raise SystemExit(f"only {len(seen)} of {len(published_at)} decisions arrived")
        elapsed_ms = max(seen.values()) - min(published_at.values())
        signals_per_s = len(ids) / max(elapsed_ms / 1000.0, 1e-3)
        subscriber_cpu_us = (sum(x.cpu_seconds() for x in subscribers) - cpu_before[0]) * 1e6 / len(ids)
        database_cpu_us = (sum(_cpu_seconds(p) for p in backends) - cpu_before[1]) * 1e6 / len(ids)
        load_average = os.getloadavg()[0]

        # 2. Lag at a fixed rate: small bursts every 10 ms keep the rate steady.
        tick, per_tick = 0.01, max(1, round(args.rate * 0.01))
        lag_ids: list[bytes] = []
        start = time.perf_counter()
        for i in range(0, lag_total, per_tick):
            target = start + (i // per_tick) * tick
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            lag_ids += _publish_all(client, signal_stream, lag_entries[i:i + per_tick])
        achieved_rate = len(lag_ids) / (time.perf_counter() - start)
        lag_published = {i.decode(): _ms(i) for i in lag_ids}
        lag_seen, _ = _collect_decisions(client, decision_stream, set(lag_published), last_seen, 120)
        lags = [lag_seen[k] - lag_published[k] for k in lag_seen]
        missing_lag = len(lag_published) - len(lag_seen)

        peak_rss_mb = max(x.peak_rss_mb() for x in subscribers)
        all_ids = [i.decode() for i in warm_ids + ids + lag_ids]
        stored = Decision.objects.filter(stream_entry_id__in=all_ids, role="champion").count()
    finally:
        exit_code = max(x.stop() for x in subscribers)
        for key in client.scan_iter(match=f"bench:{tag}:*"):
            client.delete(key)

    result = {
        "bench": "streams",
        "signals_per_s": round(signals_per_s, 1),
        "lag_p50_ms": _percentile(lags, 50) if lags else None,
        "lag_p99_ms": _percentile(lags, 99) if lags else None,
        "lag_max_ms": max(lags) if lags else None,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "subscriber_cpu_us_per_signal": round(subscriber_cpu_us, 1),
        "database_cpu_us_per_signal": round(database_cpu_us, 1),
        "load_average_1m": round(load_average, 2),
        "throughput_signals": len(ids),
        "throughput_seconds": round(elapsed_ms / 1000.0, 3),
        "lag_rate_per_s": round(achieved_rate, 1),
        "lag_signals": len(lag_ids),
        "lag_missing": missing_lag,
        "decisions_stored": stored,
        "signals_published": len(all_ids),
        "exactly_once": stored == len(all_ids),
        "subscriber_exit_code": exit_code,
        "batch": args.batch,
        "consumers": args.consumers,
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "targets": {"signals_per_s": 5000, "lag_p99_ms": 50, "peak_rss_mb": 150},
        "machine": machine(),
    }
    rows = [
        ("subscriber processes in the group", f"{args.consumers}", ""),
        ("throughput (entry added -> decision published)", f"{result['signals_per_s']:,.0f} signals/s", ">= 5,000"),
        (f"lag p50 at {result['lag_rate_per_s']:,.0f}/s", f"{result['lag_p50_ms']} ms", ""),
        (f"lag p99 at {result['lag_rate_per_s']:,.0f}/s", f"{result['lag_p99_ms']} ms", "<= 50 ms"),
        ("subscriber peak RSS (largest process)", f"{result['peak_rss_mb']} MB", "<= 150 MB"),
        ("CPU per signal: subscriber / its database backends",
         f"{result['subscriber_cpu_us_per_signal']} / {result['database_cpu_us_per_signal']} us", ""),
        ("machine load average (1 min) during the run", f"{result['load_average_1m']}", f"{os.cpu_count()} cores"),
        ("decisions stored / signals", f"{stored} / {len(all_ids)}", "equal"),
    ]
    finish("streams", "Stream subscriber, end to end (Redis Streams -> PostgreSQL -> Redis Streams)", rows, result, args.json)
    return 0 if result["exactly_once"] and exit_code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Retention at scale: `rlv3_retention`'s archive and batched deletes against one plain DELETE.

Fills a private PostgreSQL database (default `rlv3_bench_retention`) with N decisions older than
the retention period, half of them paired with an experience, and N/10 recent ones that must stay.
While each contender runs, a writer on its own connection stores a decision every 10 ms (as the
API and the subscriber go on doing), and a sampler reads pg_stat_activity every 20 ms for the
longest-open transaction of any other session. The contenders, one after the other on the same
fill:

- ours: ``decisions.retention.retention_run`` (CSV + sha256 archive, verified, then deletes of
  ``--batch`` decisions per transaction);
- plain: what a hand-written cleanup does, both DELETEs in one transaction, no archive.

Reported: wall time, the longest transaction (what holds back VACUUM and replicas, and what a lock
would be held for), the writer's p99 and worst commit latency, rows left, and this process's peak
RSS. Checks that each leaves exactly the recent rows, and that ours archived every old row.

    python bench/retention.py --rows 200000 --json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import secrets
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, machine, print_table, record  # noqa: E402
from bench._services import django_on_database  # noqa: E402

DAYS = 365

FILL = """
INSERT INTO decisions_decision (decision_id, symbol, observation, features, feature_spec_version, action,
    probabilities, confidence, value, model_version, role, shadow_mode, source, created_at)
SELECT md5(g::text)::uuid, (ARRAY['BTCUSDT', 'ETHUSDT', 'SOLUSDT', 'XRPUSDT'])[1 + g % 4],
    array_fill(0.25::float8, ARRAY[37]), decode(repeat('3f', 256), 'hex'), 'rlv3-features-1', g % 6,
    '{{0.1,0.5,0.1,0.1,0.1,0.1}}', 0.5, 0.0, '1', 'champion', true, 'stream',
    CASE WHEN g <= {old} THEN now() - interval '{older} days' + (g || ' seconds')::interval
         ELSE now() - ((g - {old}) || ' seconds')::interval END
FROM generate_series(1, {total}) g;
INSERT INTO decisions_experience (decision_id, symbol, observation, action, behaviour_probabilities,
    model_version, reward, pnl, roi, stream_entry_id, closed_at, created_at)
SELECT decision_id, symbol, '{{"rsi": 50.0}}'::jsonb, action, '[0.1,0.5,0.1,0.1,0.1,0.1]'::jsonb, model_version,
    0.01, 1.0, 1.0, 'e-' || decision_id::text, created_at + interval '1 hour', created_at + interval '1 hour'
FROM decisions_decision WHERE hashtext(decision_id::text) % 2 = 0
    AND created_at < now() - interval '{keep} days' - interval '2 hours';
"""

WRITE = """
INSERT INTO decisions_decision (decision_id, symbol, observation, features, feature_spec_version, action,
    probabilities, confidence, value, model_version, role, shadow_mode, source, created_at)
VALUES (gen_random_uuid(), 'BTCUSDT', array_fill(0.25::float8, ARRAY[37]), decode(repeat('3f', 256), 'hex'),
    'rlv3-features-1', 0, '{0.1,0.5,0.1,0.1,0.1,0.1}', 0.5, 0.0, '1', 'champion', true, 'api', now())
"""

PLAIN = """
DELETE FROM decisions_experience WHERE closed_at < %(cutoff)s
    AND decision_id IN (SELECT decision_id FROM decisions_decision WHERE created_at < %(cutoff)s);
DELETE FROM decisions_decision d WHERE created_at < %(cutoff)s
    AND NOT EXISTS (SELECT 1 FROM decisions_experience e WHERE e.decision_id = d.decision_id);
"""


def _observe(url: str, stop, out) -> None:
    """In its own process (so the contender's Python work cannot delay it): a writer storing a
    decision every 10 ms and timing each commit, and a sampler of the longest-open transaction of
    any other session. Sends (latencies in ms, longest transaction in s) when ``stop`` is set."""
    import psycopg

    writer = psycopg.connect(url, autocommit=True)
    sampler = psycopg.connect(url, autocommit=True)
    skip = [writer.info.backend_pid, sampler.info.backend_pid]
    latencies: list[float] = []
    longest = [0.0]

    def write() -> None:
        while not stop.wait(0.01):
            started = time.perf_counter()
            writer.execute(WRITE)
            latencies.append((time.perf_counter() - started) * 1000)

    def sample() -> None:
        query = ("SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND state <> 'idle' AND NOT pid = ANY(%s)")
        while not stop.wait(0.02):
            (age,) = sampler.execute(query, (skip,)).fetchone()
            longest[0] = max(longest[0], float(age))

    threads = [threading.Thread(target=write), threading.Thread(target=sample)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.send((latencies, longest[0]))


class Observers:
    """Runs :func:`_observe` in a child process for the length of a ``with`` block."""

    def __init__(self, url: str):
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_observe, args=(url, self._stop, send), daemon=True)
        self.latencies_ms: list[float] = []
        self.longest_s = 0.0

    def __enter__(self) -> Observers:
        self._process.start()
        time.sleep(0.5)  # connected and writing before the contender starts
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.latencies_ms, self.longest_s = self._receive.recv()
        self._process.join()

    def figures(self) -> dict:
        ordered = sorted(self.latencies_ms)
        return {
            "writes": len(ordered),
            "write_p50_ms": round(statistics.median(ordered), 2) if ordered else None,
            "write_p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 1) if ordered else None,
            "write_max_ms": round(ordered[-1], 1) if ordered else None,
            "longest_transaction_s": round(self.longest_s, 2),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="Decisions older than the retention period.")
    parser.add_argument("--batch", type=int, default=1_000, help="Decisions deleted per transaction (ours).")
    parser.add_argument("--round", type=int, default=None, help="Decisions per round (ours; default the command's).")
    parser.add_argument("--database", default="rlv3_bench_retention")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    # As the command runs in production: DEBUG off (with it on, Django keeps the last 9,000 queries,
    # each a list of a thousand ids here, and that, not the command, would set the memory).
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    url = django_on_database(args.database, fresh=True)
    from django.db import connection
    from django.utils import timezone

    from decisions.models import Decision, Experience
    from decisions.retention import ROUND_ROWS, retention_run

    recent = args.rows // 10

    def fill() -> tuple[int, int]:
        with connection.cursor() as cur:
            cur.execute("TRUNCATE decisions_decision CASCADE")
            for statement in FILL.format(old=args.rows, total=args.rows + recent, older=DAYS + 30, keep=DAYS).split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute("VACUUM ANALYZE decisions_decision")
            cur.execute("VACUUM ANALYZE decisions_experience")
        return Decision.objects.count(), Experience.objects.count()

    args.round = args.round or ROUND_ROWS
    results: dict[str, dict] = {}
    for name in ("ours", "plain"):
        print(f"{name}: filling {args.rows:,} old and {recent:,} recent decisions ...", flush=True)
        decisions, experiences = fill()
        cutoff = timezone.now() - timedelta(days=DAYS)
        old_experiences = Experience.objects.filter(closed_at__lt=cutoff).count()
        with tempfile.TemporaryDirectory(prefix="rlv3-retention-") as out, Observers(url) as observers:
            started = time.perf_counter()
            if name == "ours":
                outcome = retention_run(cutoff=cutoff, out_dir=Path(out), stamp="bench", batch=args.batch, round_rows=args.round)
                rounds = outcome.rounds
                archived = (outcome.decisions_archived, outcome.experiences_archived)
                archive_mb = sum(Path(f.path).stat().st_size for f in outcome.files) / 1e6
            else:
                with connection.cursor() as cur:
                    cur.execute("BEGIN")
                    cur.execute(PLAIN, {"cutoff": cutoff})
                    cur.execute("COMMIT")
                archived, archive_mb, rounds = (0, 0), 0.0, None
            seconds = time.perf_counter() - started
        figures = observers.figures()
        left_old = Decision.objects.filter(created_at__lt=cutoff).count()
        left = Decision.objects.filter(source="stream").count()
        if left_old or left != recent:
            print(f"{name}: {left_old} old decisions left, {left} of the {recent} recent ones", file=sys.stderr)
            return 1
        if name == "ours" and archived != (args.rows, old_experiences):
            print(f"ours archived {archived}, expected ({args.rows}, {old_experiences})", file=sys.stderr)
            return 1
        results[name] = {
            "seconds": round(seconds, 1),
            "decisions_removed": decisions - left,
            "experiences_removed": experiences - Experience.objects.count(),
            "archive_mb": round(archive_mb, 1),
            "rounds": rounds,
            **figures,
        }
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    ours, plain = results["ours"], results["plain"]
    print_table(
        f"\nRetention of {args.rows:,} decisions (about half paired), a writer storing a decision every 10 ms",
        [
            ["wall time s", f"{ours['seconds']} ({ours['rounds']} rounds)", plain["seconds"]],
            ["rows per s", round((ours["decisions_removed"] + ours["experiences_removed"]) / ours["seconds"]),
             round((plain["decisions_removed"] + plain["experiences_removed"]) / plain["seconds"])],
            ["longest transaction s", ours["longest_transaction_s"], plain["longest_transaction_s"]],
            ["writer commit p50 / p99 / max ms", f"{ours['write_p50_ms']} / {ours['write_p99_ms']} / {ours['write_max_ms']}",
             f"{plain['write_p50_ms']} / {plain['write_p99_ms']} / {plain['write_max_ms']}"],
            ["archive MB (CSV)", ours["archive_mb"], "none"],
            ["peak RSS MB (this process, both runs)", round(rss_mb, 1), ""],
        ],
        headers=("measure", f"rlv3_retention (batch {args.batch:,}, round {args.round:,})", "one plain DELETE"),
    )
    result = {
        "rows": args.rows,
        "batch": args.batch,
        "round": args.round,
        "ours": ours,
        "plain": plain,
        "longest_transaction_s": ours["longest_transaction_s"],
        "plain_longest_transaction_s": plain["longest_transaction_s"],
        "peak_rss_mb": round(rss_mb, 1),
        "machine": machine(),
    }
    record("retention", result)
    if args.json:
        emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Filtered decision lists at millions of rows: bounded (`newest_first_filter`) against plain filters.

Fills a private PostgreSQL database (default `rlv3_bench_filters`) with N decisions (generate_series,
then VACUUM ANALYZE) laid out as a service accumulates them: five model versions one after another
in time, four common symbols interleaved, one symbol only in the oldest 1 %, one only in the newest
1 % (every third row there), one in every 10,000th row, and actions 60/30/9/0.45/0.05 % (one
never). Then times the first page (51 rows, newest first) of each filter, plainly
(``Decision.objects.filter(...)``) and bounded, the median of three each, and checks the two give
the same rows.

    python bench/filters.py --rows 2000000 --json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this folder is first on sys.path, where bench/http.py would shadow the standard
# library's http: take the folder off and import the helpers as bench.*.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, machine, print_table, record  # noqa: E402
from bench._services import django_on_database  # noqa: E402

CASES = {
    "symbol, common": {"symbol": "BTCUSDT"},
    "symbol, 1 in 10,000": {"symbol": "RAREUSDT"},
    "symbol, oldest 1 %": {"symbol": "OLDUSDT"},
    "symbol, newest 1 %": {"symbol": "NEWUSDT"},
    "symbol, absent": {"symbol": "NOPEUSDT"},
    "action, 60 %": {"action": 0},
    "action, 0.05 %": {"action": 4},
    "action, never": {"action": 5},
    "model version, newest": {"model_version": "5"},
    "model version, oldest": {"model_version": "1"},
    "model version, absent": {"model_version": "9"},
    "symbol and action": {"symbol": "ETHUSDT", "action": 3},
    "rare symbol and version": {"symbol": "RAREUSDT", "model_version": "2"},
    "oldest version and action": {"model_version": "1", "action": 2},
}

FILL = """
INSERT INTO decisions_decision (decision_id, symbol, observation, features, feature_spec_version, action,
    probabilities, confidence, value, model_version, role, shadow_mode, source, created_at)
SELECT md5(g::text)::uuid,
    CASE WHEN g % 10000 = 0 THEN 'RAREUSDT' WHEN g <= {n} / 100 THEN 'OLDUSDT'
         WHEN g > {n} - {n} / 100 AND g % 3 = 0 THEN 'NEWUSDT'
         ELSE (ARRAY['BTCUSDT', 'ETHUSDT', 'SOLUSDT', 'XRPUSDT'])[1 + abs(hashint4(g)) % 4] END,
    array_fill(0::float8, ARRAY[37]), decode(repeat('00', 256), 'hex'), 'rlv3-features-1',
    CASE WHEN abs(hashint4(g + 1)) % 100 < 60 THEN 0 WHEN abs(hashint4(g + 1)) % 100 < 90 THEN 1
         WHEN abs(hashint4(g + 1)) % 100 < 99 THEN 2 WHEN abs(hashint4(g + 1)) % 1000 < 995 THEN 3 ELSE 4 END,
    '{{0.1,0.5,0.1,0.1,0.1,0.1}}', 0.5, 0.0, (1 + (g - 1) * 5 / {n})::text, 'champion', true, 'api',
    now() - (({n} - g) || ' seconds')::interval
FROM generate_series(1, {n}) g
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--database", default="rlv3_bench_filters")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    django_on_database(args.database)
    from django.db import connection

    from decisions.models import Decision
    from decisions.selectors import newest_first_filter

    if Decision.objects.count() != args.rows:
        print(f"filling {args.rows:,} decisions ...", flush=True)
        started = time.perf_counter()
        with connection.cursor() as cur:
            cur.execute("TRUNCATE decisions_decision CASCADE")
            cur.execute(FILL.format(n=args.rows))
            cur.execute("VACUUM ANALYZE decisions_decision")
        print(f"filled in {time.perf_counter() - started:.1f} s", flush=True)

    def first_page(queryset) -> tuple[float, list]:
        samples, rows = [], []
        for _ in range(3):
            started = time.perf_counter()
            rows = list(queryset.order_by("-created_at", "-decision_id").values_list("decision_id", flat=True)[:51])
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples), rows

    plain_ms, bounded_ms = {}, {}
    for name, equal in CASES.items():
        plain_ms[name], plain_rows = first_page(Decision.objects.filter(**equal))
        bounded_ms[name], bounded_rows = first_page(newest_first_filter(Decision.objects.all(), **equal))
        if plain_rows != bounded_rows:
            print(f"{name}: the bounded filter gave other rows", file=sys.stderr)
            return 1

    print_table(
        f"\nFirst pages of filtered decision lists, {args.rows:,} decisions (median of 3, ms)",
        [[name, round(plain_ms[name], 1), round(bounded_ms[name], 1)] for name in CASES],
        headers=("filter", "plain", "bounded"),
    )
    result = {
        "rows": args.rows,
        "plain_ms": {k: round(v, 1) for k, v in plain_ms.items()},
        "bounded_ms": {k: round(v, 1) for k, v in bounded_ms.items()},
        "plain_worst_ms": round(max(plain_ms.values()), 1),
        "bounded_worst_ms": round(max(bounded_ms.values()), 1),
        "machine": machine(),
    }
    record("filters", result)
    if args.json:
        emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

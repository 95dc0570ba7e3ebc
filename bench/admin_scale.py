"""Admin changelists with a million experiences: ours vs Django's default admin, side by side.

Fills a private PostgreSQL database (default `rlv3_bench_admin`) with N decisions and N experiences
(generate_series, seconds), then times the Experience and Decision changelists, unfiltered and with
each filter, twice each: with this project's admin (estimated counts, no full-result count) and with
the same ModelAdmin switched to Django's defaults (exact COUNT(*) per page, full-result count).

    python bench/admin_scale.py --rows 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder is first on sys.path, where bench/http.py would shadow the standard
# library's http: take the folder off and import the helpers as bench.*.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, record  # noqa: E402
from bench._services import django_on_database  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", default="rlv3_bench_admin")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    django_on_database(args.database)
    from django.contrib.admin.views.main import ChangeList  # noqa: F401  (ensures admin loaded)
    from django.contrib.auth import get_user_model
    from django.core.paginator import Paginator
    from django.db import connection
    from django.test import Client

    from decisions.admin import DecisionAdmin, ExperienceAdmin
    from decisions.fields import float_array_literal
    from decisions.models import Experience
    from training.rl.features import observation_values

    have = Experience.objects.count()
    if have < args.rows:
        print(f"filling {args.rows - have} decisions and experiences ...", flush=True)
        started = time.perf_counter()
        with connection.cursor() as cur:
            cur.execute(
                """
                INSERT INTO decisions_decision (decision_id, symbol, observation, features, feature_spec_version,
                    action, probabilities, confidence, value, model_version, role, shadow_mode, source, created_at)
                SELECT md5(g::text || 'd')::uuid, (ARRAY['BTCUSDT','ETHUSDT','SOLUSDT','XRPUSDT'])[1 + abs(hashint4(g)) %% 4],
                    %s, decode(repeat('00', 256), 'hex'), 'rlv3-features-1', abs(hashint4(g + 1)) %% 6,
                    '{0.1,0.5,0.1,0.1,0.1,0.1}', 0.5, 0.0, (1 + g %% 3)::text, 'champion', g %% 2 = 0,
                    'stream', now() - (g || ' seconds')::interval
                FROM generate_series(%s, %s) g
                """,
                [float_array_literal(observation_values({"rsi": 50.0})), have + 1, args.rows],
            )
            cur.execute(
                """
                INSERT INTO decisions_experience (decision_id, symbol, observation, action, behaviour_probabilities,
                    model_version, reward, pnl, roi, closed_at, created_at)
                SELECT d.decision_id, d.symbol, '{"rsi": 50}'::jsonb, d.action, to_jsonb(d.probabilities), d.model_version, 0.01, 1.0, 0.1,
                    d.created_at, d.created_at
                FROM decisions_decision d LEFT JOIN decisions_experience e ON e.decision_id = d.decision_id
                WHERE e.id IS NULL
                """
            )
            cur.execute("ANALYZE decisions_decision; ANALYZE decisions_experience;")
        print(f"filled in {time.perf_counter() - started:.1f} s", flush=True)

    User = get_user_model()
    user = User.objects.filter(username="bench-admin").first() or User.objects.create_superuser("bench-admin", "", "pw-bench-123456")
    client = Client()
    client.force_login(user)

    pages = {
        "experience list": "/admin/decisions/experience/",
        "experience symbol+action": "/admin/decisions/experience/?action__exact=1&q=BTCUSDT",
        "experience model_version": "/admin/decisions/experience/?model_version=2",
        "experience page 200": "/admin/decisions/experience/?p=200",
        "decision list": "/admin/decisions/decision/",
        "decision shadow filter": "/admin/decisions/decision/?shadow_mode__exact=1",
    }

    def timed(url: str) -> float:
        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        return statistics.median(samples)

    ours = {name: timed(url) for name, url in pages.items()}
    saved = {}
    for admin_cls in (ExperienceAdmin, DecisionAdmin):
        saved[admin_cls] = (admin_cls.paginator, admin_cls.show_full_result_count)
        admin_cls.paginator, admin_cls.show_full_result_count = Paginator, True
    try:
        peer = {name: timed(url) for name, url in pages.items()}
    finally:
        for admin_cls, (pag, full) in saved.items():
            admin_cls.paginator, admin_cls.show_full_result_count = pag, full

    print(f"\nAdmin changelists, {args.rows:,} experiences (median of {args.repeat}, ms)")
    print(f"{'page':28} {'ours':>9} {'django default':>15} {'speed-up':>9}")
    for name in pages:
        print(f"{name:28} {ours[name]:9.1f} {peer[name]:15.1f} {peer[name] / ours[name]:8.1f}x")
    result = {
        "rows": args.rows,
        "admin_ms": {k: round(v, 1) for k, v in ours.items()},
        "admin_default_ms": {k: round(v, 1) for k, v in peer.items()},
        "admin_worst_ms": round(max(ours.values()), 1),
        "machine": machine(),
    }
    record("admin_scale", result)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: run every benchmark in turn, then print one summary table.

Each benchmark runs in its own process with --json; its last output line (one JSON object) is the
result, also merged by the benchmark itself into bench/results/latest.json. A benchmark that fails
is reported and the others still run. PostgreSQL-backed benchmarks use DATABASE_URL when set, else
their own defaults on 127.0.0.1:5432.

    python bench/run_all.py [--only env,inference] [--skip chaos]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, this folder is first on sys.path, where bench/http.py would shadow the standard
# library's http: take the folder off and import the helpers as bench.*.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import LATEST, print_table  # noqa: E402

# (name, script, extra args, the figures worth a line in the summary)
BENCHMARKS = [
    ("env", "env.py", [], ["scalar_steps_per_s", "vector_steps_per_s"]),
    ("inference", "inference.py", [], ["p50_us", "p99_us", "batch_obs_per_s", "sb3_predict_p50_us"]),
    ("ppo_throughput", "ppo_throughput.py", [], ["ours_sps", "sb3_sps", "ratio", "ours_eval_return", "sb3_eval_return"]),
    # Two subscriber processes in one consumer group: how the subscriber scales (one alone: ~4,000/s).
    ("streams", "streams.py", ["--consumers", "2"], ["signals_per_s", "lag_p50_ms", "lag_p99_ms", "peak_rss_mb"]),
    ("http", "http.py", [], ["predict_rps", "predict_p50_ms", "predict_p99_ms", "errors", "batch_obs_per_s", "worker_peak_rss_mb"]),
    ("admin_scale", "admin_scale.py", ["--rows", "1000000", "--repeat", "3"], ["admin_worst_ms"]),
    ("filters", "filters.py", ["--rows", "2000000"], ["plain_worst_ms", "bounded_worst_ms"]),
    ("retention", "retention.py", ["--rows", "200000"], ["longest_transaction_s", "plain_longest_transaction_s", "peak_rss_mb"]),
]


def run(script: str, args: list[str]) -> tuple[dict | None, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / script), "--json", *args], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr[-4000:])
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    took = f"{time.perf_counter() - started:.0f} s"
    if proc.returncode != 0 or not lines:
        return None, f"failed (exit {proc.returncode}) after {took}"
    try:
        return json.loads(lines[-1]), took
    except ValueError:
        return None, f"no JSON last line after {took}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names")
    opts = parser.parse_args()
    only = {n for n in opts.only.split(",") if n}
    skip = {n for n in opts.skip.split(",") if n}
    rows, failed = [], 0
    for name, script, args, keys in BENCHMARKS:
        if (only and name not in only) or name in skip:
            continue
        print(f"\n=== {name} ===", flush=True)
        result, took = run(script, args)
        if result is None:
            failed += 1
            rows.append([name, took, ""])
            continue
        for key in keys:
            rows.append([name, key, result.get(key)])
        rows.append([name, "wall time", took])
    print()
    print_table("make bench summary", rows, headers=("benchmark", "figure", "value"))
    print(f"\nall results: {LATEST}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

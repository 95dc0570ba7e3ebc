"""Trading-environment speed: env-steps/s of the scalar and the vectorised environment, features included.

- ``scalar_steps_per_s``: ``TradingEnv.step`` (gymnasium API, one account) with random actions,
  resetting when an episode ends; each step builds the 64-dim observation.
- ``vector_steps_per_s``: ``TradingVecEnv`` with ``--n-envs`` (16) accounts, counted as accounts x
  steps per second, autoresets included. Target: >= 100,000.
- ``feature_p50_us``: ``validate_observation`` + ``observation_to_vector`` on the seed's 15 fields
  (what the API and the stream consumer do per observation); ``feature_all_fields_p50_us`` with all
  37 fields given. Budget about 20 us.
- ``market_table_s``: one-off precomputation of the market features of the dataset's train split.

Each speed is the median of ``--rounds`` timed rounds, by the wall clock (the keys above) and by
this process's CPU time (``*_per_cpu_s``: what an unloaded machine would show; on a shared machine
the wall clock also counts the time other processes held the CPU). The 1-minute load is recorded
next to the figures. Prints a table and, with ``--json``, one JSON object as the last line.

    .venv/bin/python bench/env.py --json
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

import numpy as np  # noqa: E402

from bench._common import emit_json, machine, percentile_us, print_table, record  # noqa: E402
from training.rl import features  # noqa: E402
from training.rl.actions import N_ACTIONS  # noqa: E402
from training.rl.data import load_dataset  # noqa: E402
from training.rl.env import TradingEnv, market_table  # noqa: E402
from training.rl.vec_env import TradingVecEnv  # noqa: E402

def scalar_steps_per_s(data, steps: int, rng: np.random.Generator) -> tuple[float, float]:
    """(env-steps per wall-clock second, per CPU second) of the scalar environment."""
    env = TradingEnv(data, "train")
    env.reset(seed=0)
    actions = rng.integers(0, N_ACTIONS, steps).tolist()
    wall, cpu = time.perf_counter(), time.process_time()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def vector_steps_per_s(data, n_envs: int, steps: int, rng: np.random.Generator) -> tuple[float, float]:
    """(env-steps per wall-clock second, per CPU second) of the vectorised environment."""
    env = TradingVecEnv(data, n_envs, "train")
    env.reset(seed=0)
    actions = rng.integers(0, N_ACTIONS, (steps, n_envs))
    wall, cpu = time.perf_counter(), time.process_time()
    for row in actions:
        env.step(row)
    return steps * n_envs / (time.perf_counter() - wall), steps * n_envs / (time.process_time() - cpu)


def feature_p50_us(raw: dict, samples: int) -> float:
    validate, to_vector, clock = features.validate_observation, features.observation_to_vector, time.perf_counter_ns
    timings = []
    for _ in range(samples):
        t0 = clock()
        to_vector(validate(raw))
        timings.append(clock() - t0)
    return percentile_us(timings, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="eurusd_1h")
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000, help="vector steps per round (scalar: x n_envs / 4)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    data = load_dataset(args.dataset)
    t0 = time.perf_counter()
    table = market_table(data.split("train"))
    table_s = time.perf_counter() - t0
    # A real bar's fields, as a signal would carry them: the seed's 15, or every field.
    all_fields = {**features.OBSERVATION_DEFAULTS, **table.fields_at(len(table.data) - 1)}
    all_fields.update(position_side=1.0, position_size=0.5, unrealized_pnl=0.01, time_in_position=12.0, symbol="EURUSD")
    seed_fields = {k: all_fields[k] for k in (*features.SEED_FIELDS, "symbol")}
    rng = np.random.default_rng(0)
    scalar = [scalar_steps_per_s(data, args.steps * args.n_envs // 4, rng) for _ in range(args.rounds)]
    vector = [vector_steps_per_s(data, args.n_envs, args.steps, rng) for _ in range(args.rounds)]
    feature_us = feature_p50_us(seed_fields, 20_000)
    feature_all_us = feature_p50_us(all_fields, 20_000)

    result = {
        "dataset": args.dataset,
        "n_envs": args.n_envs,
        "scalar_steps_per_s": round(statistics.median(w for w, _ in scalar)),
        "scalar_steps_per_cpu_s": round(statistics.median(c for _, c in scalar)),
        "vector_steps_per_s": round(statistics.median(w for w, _ in vector)),
        "vector_steps_per_cpu_s": round(statistics.median(c for _, c in vector)),
        "vector_steps_per_s_best": round(max(w for w, _ in vector)),
        "feature_p50_us": round(feature_us, 2),
        "feature_all_fields_p50_us": round(feature_all_us, 2),
        "market_table_s": round(table_s, 3),
        "machine": machine(),
    }
    print_table(
        f"trading environment ({args.dataset}, train split; median of {args.rounds} rounds; "
        f"load {result['machine']['load_avg_1m']})",
        [
            ("scalar env-steps/s", result["scalar_steps_per_s"], ""),
            ("  per CPU second", result["scalar_steps_per_cpu_s"], ""),
            (f"vector env-steps/s ({args.n_envs} envs)", result["vector_steps_per_s"], ">= 100,000"),
            ("  per CPU second", result["vector_steps_per_cpu_s"], ""),
            ("  best round", result["vector_steps_per_s_best"], ""),
            ("fields -> vector p50 us (15 seed fields)", feature_us, "<= ~20"),
            ("fields -> vector p50 us (all 37 fields)", feature_all_us, ""),
            ("market features precompute, s", table_s, ""),
        ],
    )
    record("env", result)
    if args.json:
        emit_json(result)


if __name__ == "__main__":
    main()

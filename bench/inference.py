"""Inference latency and throughput of the torch-free runtime, with SB3's predict for reference.

- ``p50_us`` / ``p99_us``: one observation, fields dict -> decision, i.e. validation, the
  64-dim feature function and the network (`PolicyRuntime.predict`), one call at a time.
- ``vector_p50_us``: the same from a ready feature vector (`predict_vector`).
- ``batch_obs_per_s``: `predict_batch` on batches of ``--batch`` feature vectors (median of
  the repeats), probabilities and values included, with the runtime's default threads
  (two where the machine has them); ``batch_1thread_obs_per_s`` the same on one thread.
  The machine is shared: ``machine.load_avg_1m`` says how busy it was.
- ``sb3_predict_p50_us``: Stable-Baselines3's ``ActorCriticPolicy.predict(vector,
  deterministic=True)`` with the same architecture, from a ready vector, in this same run.

The network is a checkpoint saved and loaded through the real path (``--model PATH.npz`` to
time a specific one). Prints a table and, with ``--json``, one JSON object as the last line.

    .venv/bin/python bench/inference.py --json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# As a script this folder is first on sys.path, where bench/http.py would shadow the standard
# module: import from the project root instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
else:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._common import finish, machine, percentile_us  # noqa: E402
from training.rl import features  # noqa: E402
from training.rl.inference import PolicyRuntime  # noqa: E402

FIELDS = {
    "symbol": "BTCUSDT", "price_change_1m": 0.0012, "price_change_5m": -0.003, "price_change_15m": 0.008,
    "volatility": 0.018, "rsi": 61.5, "macd": 0.0004, "position_size": 0.5, "position_side": 1,
    "balance": 9_500.0, "equity": 10_120.0, "regime": "trend", "trend_strength": 0.7, "volume_ratio": 1.3,
    "spread": 0.0004, "time_of_day": 0.42,
}


def _runtime(model: str | None) -> PolicyRuntime:
    if model:
        return PolicyRuntime.load(model)
    import torch

    from training.rl.checkpoint import save_checkpoint
    from training.rl.config import PPOConfig
    from training.rl.networks import ActorCritic

    net = ActorCritic(features.FEATURE_DIM, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in net.parameters():  # weights of a trained network's scale, not the near-zero head init
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.2)
    path = Path(tempfile.mkdtemp()) / "bench.pt"
    art = save_checkpoint(path, net, config=PPOConfig(), metrics={}, feature_spec_version=features.FEATURE_SPEC_VERSION)
    return PolicyRuntime.load(art.runtime_path, art.runtime_sha256)


def _latencies_ns(fn, n: int, warmup: int = 2000) -> list[int]:
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        start = clock()
        fn()
        out.append(clock() - start)
    return out


def _batch_seconds(runtime: PolicyRuntime, batch: np.ndarray, repeats: int) -> list[float]:
    """Wall seconds of each of ``repeats`` timed `predict_batch` calls (after one warm-up)."""
    runtime.predict_batch(batch)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.predict_batch(batch)
        out.append(time.perf_counter() - start)
    return out


def _sb3_policy():
    import gymnasium as gym
    import torch
    from stable_baselines3.common.policies import ActorCriticPolicy

    policy = ActorCriticPolicy(
        gym.spaces.Box(-np.inf, np.inf, (features.FEATURE_DIM,), np.float32), gym.spaces.Discrete(6), lambda _: 3e-4,
        net_arch={"pi": [64, 64], "vf": [64, 64]}, activation_fn=torch.nn.Tanh,
    )
    policy.set_training_mode(False)
    return policy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a runtime .npz to time (default: a freshly saved network)")
    parser.add_argument("--n", type=int, default=20_000, help="single-observation calls to time")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=30, help="batches to time")
    parser.add_argument("--sb3-threads", type=int, default=1, help="torch threads for SB3's predict")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    runtime = _runtime(args.model)
    fields_ns = _latencies_ns(lambda: runtime.predict(FIELDS), args.n)
    vector = features.observation_to_vector(features.validate_observation(FIELDS))
    vector_ns = _latencies_ns(lambda: runtime.predict_vector(vector), args.n)
    feature_ns = _latencies_ns(lambda: features.observation_to_vector(features.validate_observation(FIELDS)), args.n)

    batch = np.random.default_rng(0).normal(0, 1, (args.batch, features.FEATURE_DIM)).astype(np.float32)
    per_batch = _batch_seconds(runtime, batch, args.repeats)
    batch_obs_per_s = args.batch / statistics.median(per_batch)
    best_obs_per_s = args.batch / min(per_batch)
    default_threads, runtime.batch_threads = runtime.batch_threads, 1
    one_thread_obs_per_s = args.batch / statistics.median(_batch_seconds(runtime, batch, args.repeats))
    runtime.batch_threads = default_threads

    import torch

    torch.set_num_threads(args.sb3_threads)
    sb3 = _sb3_policy()
    sb3_ns = _latencies_ns(lambda: sb3.predict(vector, deterministic=True), max(2000, args.n // 4), warmup=500)

    result = {
        "p50_us": round(percentile_us(fields_ns, 50), 2),
        "p99_us": round(percentile_us(fields_ns, 99), 2),
        "vector_p50_us": round(percentile_us(vector_ns, 50), 2),
        "features_p50_us": round(percentile_us(feature_ns, 50), 2),
        "batch_obs_per_s": round(batch_obs_per_s),
        "batch_best_obs_per_s": round(best_obs_per_s),
        "batch_1thread_obs_per_s": round(one_thread_obs_per_s),
        "batch_size": args.batch,
        "batch_threads": default_threads,
        "sb3_predict_p50_us": round(percentile_us(sb3_ns, 50), 2),
        "sb3_predict_p99_us": round(percentile_us(sb3_ns, 99), 2),
        "machine": machine(),
    }
    return finish(
        "inference",
        "Inference runtime (numpy, no torch)",
        [
            ("fields -> decision p50 (us)", result["p50_us"], "<= 50"),
            ("fields -> decision p99 (us)", result["p99_us"], ""),
            ("  of which features p50 (us)", result["features_p50_us"], ""),
            ("vector -> decision p50 (us)", result["vector_p50_us"], ""),
            (f"batched obs/s (batch {args.batch}, median)", result["batch_obs_per_s"], ">= 2,000,000"),
            ("batched obs/s (best batch)", result["batch_best_obs_per_s"], ""),
            ("batched obs/s (one thread, median)", result["batch_1thread_obs_per_s"], ""),
            ("SB3 predict p50 from a vector (us)", result["sb3_predict_p50_us"], "reference"),
            ("machine load average (1 min)", result["machine"]["load_avg_1m"], f"{result['machine']['cpus']} cpus"),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())

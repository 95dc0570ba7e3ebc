"""Grid over trading-environment and PPO settings, selected on the VALIDATION split only.

Each grid point trains PPO on the train split of ``--dataset`` (seed ``--seed``, ``--timesteps``
env steps, one torch thread) and backtests the greedy policy on the validation split next to
buy-and-hold and random (training.rl.evaluate). The test split is never read here.

    .venv/bin/python bench/tune_trading.py --dataset googl_1d --timesteps 200000 \
        --point "drawdown_penalty=0" --point "drawdown_penalty=0.1,gamma=0.995" --json

A point is comma-separated KEY=VALUE pairs; keys of EnvConfig go to the environment, the rest to
PPOConfig (through training.rl.config.config_for_trading, the preset rlv3_train uses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

# bench/http.py would shadow the standard module torch imports (Python puts this folder first on
# sys.path): take the folder off and import from the project root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, print_table  # noqa: E402
from training.rl.config import config_for_trading  # noqa: E402
from training.rl.data import load_dataset  # noqa: E402
from training.rl.env import EnvConfig  # noqa: E402
from training.rl.evaluate import run_with_baselines  # noqa: E402
from training.rl.gym_vec import greedy_actions  # noqa: E402
from training.rl.ppo import train  # noqa: E402
from training.rl.vec_env import TradingVecEnv  # noqa: E402

ENV_KEYS = {f.name for f in dataclasses.fields(EnvConfig)}


def parse_point(text: str) -> tuple[dict, dict]:
    """``"drawdown_penalty=0,gamma=0.995"`` -> (env overrides, ppo overrides)."""
    env, ppo = {}, {}
    for pair in filter(None, text.split(",")):
        key, _, raw = pair.partition("=")
        value = json.loads(raw)
        (env if key.strip() in ENV_KEYS else ppo)[key.strip()] = value
    return env, ppo


def run_point(dataset: str, text: str, timesteps: int, seed: int) -> dict:
    """Train one grid point and return its validation metrics (policy and baselines)."""
    data = load_dataset(dataset)
    env_over, ppo_over = parse_point(text)
    env_config = EnvConfig(**env_over)
    config = config_for_trading(timesteps, **ppo_over)
    started = time.perf_counter()
    result = train(TradingVecEnv(data, num_envs=config.n_envs, split="train", config=env_config),
                   config, timesteps, seed, device="cpu")
    act = greedy_actions(result.policy)
    results = run_with_baselines(lambda obs: int(act(obs[None, :])[0]), data, "validation", seed, env_config)
    policy = results["policy"]
    return {
        "dataset": dataset, "point": text or "defaults", "timesteps": result.timesteps, "seed": seed,
        "wall_s": round(time.perf_counter() - started, 1),
        "val_return": policy.total_return, "val_sharpe": policy.sharpe, "val_max_dd": policy.max_drawdown,
        "val_trades": policy.n_trades, "actions": policy.action_counts,
        "bh_return": results["buy_and_hold"].total_return, "bh_sharpe": results["buy_and_hold"].sharpe,
        "random_sharpe": results["random"].sharpe,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="googl_1d")
    parser.add_argument("--timesteps", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--point", action="append", default=[], help="KEY=VALUE,... (repeatable; none: defaults)")
    parser.add_argument("--log", help="append each point's JSON result to this file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows, results = [], []
    for text in args.point or [""]:
        out = run_point(args.dataset, text, args.timesteps, args.seed)
        results.append(out)
        print(json.dumps(out), flush=True)
        if args.log:
            with open(args.log, "a") as fh:
                fh.write(json.dumps(out) + "\n")
        rows.append([out["point"], f"{out['val_return']:.4f}", f"{out['val_sharpe']:.3f}", out["val_trades"],
                     f"{out['bh_sharpe']:.3f}", f"{out['random_sharpe']:.3f}", out["wall_s"]])
    headers = ("point", "val return", "val Sharpe", "trades", "B&H Sharpe", "random Sharpe", "wall s")
    print_table(f"{args.dataset}, validation split, seed {args.seed} (the test split is never read)", rows, headers)
    if args.json:
        emit_json({"points": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

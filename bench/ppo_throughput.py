"""Training throughput and return: this PPO engine vs Stable-Baselines3's PPO, same trading env.

Both train on the vectorised trading environment (training split of ``--dataset``) with the
seed hyperparameters (lr 3e-4, gamma 0.99, lambda 0.95, clip 0.2, batch 64, 10 epochs,
entropy 0.01, value 0.5, max-grad-norm 0.5), the same number of environments, a rollout of
``2048 / n_envs`` steps per environment (the seed's 2048-transition buffer), the same seed
and the same torch thread count. SB3 sees the very same environment through a thin adapter
(its VecEnv API; truncation reported as ``TimeLimit.truncated`` with the terminal
observation, so it bootstraps exactly as we do). Environment steps per second cover the
whole ``learn`` / ``train`` call: rollouts and updates.

Each trained policy is then evaluated greedily (argmax) on the validation split: the mean
episode return (the environment's reward) over ``--eval-episodes`` episodes with the same
seeds for both. Prints a table and, with ``--json``, one JSON object as the last line:
``ours_sps, sb3_sps, ratio, ours_eval_return, sb3_eval_return`` (and details).

    .venv/bin/python bench/ppo_throughput.py --json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As a script this folder is first on sys.path, where bench/http.py would shadow the standard
# module: import from the project root instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
else:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import finish, machine  # noqa: E402
from training.rl.config import PPOConfig  # noqa: E402
from training.rl.data import load_dataset  # noqa: E402
from training.rl.gym_vec import evaluate_vec_env, greedy_actions  # noqa: E402
from training.rl.ppo import train  # noqa: E402
from training.rl.vec_env import TradingVecEnv  # noqa: E402


def sb3_adapter(envs: Any):
    """Expose a same-step-autoreset gymnasium VectorEnv through SB3's VecEnv interface."""
    from stable_baselines3.common.vec_env import VecEnv

    class GymnasiumVecToSB3(VecEnv):
        def __init__(self) -> None:
            super().__init__(envs.num_envs, envs.single_observation_space, envs.single_action_space)
            self._actions: np.ndarray | None = None
            self._seed: int | None = None

        def reset(self) -> np.ndarray:
            obs, _ = envs.reset(seed=self._seed)
            self._seed = None
            return obs

        def seed(self, seed: int | None = None) -> list[int | None]:
            self._seed = seed
            return [None if seed is None else seed + i for i in range(self.num_envs)]

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = np.asarray(actions, dtype=np.int64).reshape(-1)

        def step_wait(self):
            obs, rewards, terminated, truncated, infos = envs.step(self._actions)
            dones = np.logical_or(terminated, truncated)
            out = [{} for _ in range(self.num_envs)]
            for i in np.flatnonzero(dones):
                out[i]["terminal_observation"] = infos["final_obs"][i]
                out[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            return obs, np.asarray(rewards, dtype=np.float32), dones, out

        def close(self) -> None:
            envs.close()

        def get_attr(self, attr_name, indices=None):
            return [getattr(envs, attr_name)] * self.num_envs

        def set_attr(self, attr_name, value, indices=None) -> None:
            raise NotImplementedError

        def env_method(self, method_name, *args, indices=None, **kwargs):
            raise NotImplementedError

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * self.num_envs

    return GymnasiumVecToSB3()


def train_sb3(data, config: PPOConfig, timesteps: int, seed: int) -> tuple[Any, float, int]:
    from stable_baselines3 import PPO

    venv = sb3_adapter(TradingVecEnv(data, num_envs=config.n_envs, split="train"))
    model = PPO(
        "MlpPolicy", venv, learning_rate=config.learning_rate, n_steps=config.n_steps, batch_size=config.batch_size,
        n_epochs=config.n_epochs, gamma=config.gamma, gae_lambda=config.gae_lambda, clip_range=config.clip_range,
        ent_coef=config.ent_coef, vf_coef=config.vf_coef, max_grad_norm=config.max_grad_norm,
        policy_kwargs={"net_arch": {"pi": list(config.hidden_sizes), "vf": list(config.hidden_sizes)},
                       "activation_fn": torch.nn.Tanh},
        seed=seed, device="cpu", verbose=0,
    )
    started = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    elapsed = time.perf_counter() - started
    venv.close()
    return model, model.num_timesteps / elapsed, model.num_timesteps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="eurusd_1h")
    parser.add_argument("--timesteps", type=int, default=65_536)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both engines")
    parser.add_argument("--eval-episodes", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    data = load_dataset(args.dataset)
    config = PPOConfig(n_envs=args.n_envs, n_steps=max(1, 2048 // args.n_envs), torch_threads=args.threads)
    torch.set_num_threads(args.threads)

    ours = train(TradingVecEnv(data, num_envs=args.n_envs, split="train"), config, args.timesteps, args.seed, device="cpu")
    sb3_model, sb3_sps, sb3_steps = train_sb3(data, config, args.timesteps, args.seed)

    def evaluate(act) -> float:
        envs = TradingVecEnv(data, num_envs=min(args.n_envs, args.eval_episodes), split="validation")
        return evaluate_vec_env(act, envs, args.eval_episodes, seed=10_000 + args.seed)

    ours_return = evaluate(greedy_actions(ours.policy))
    sb3_return = evaluate(lambda obs: sb3_model.predict(obs, deterministic=True)[0])

    result = {
        "ours_sps": round(ours.sps, 1),
        "sb3_sps": round(sb3_sps, 1),
        "ratio": round(ours.sps / sb3_sps, 3),
        "ours_eval_return": round(ours_return, 4),
        "sb3_eval_return": round(sb3_return, 4),
        "timesteps": {"ours": ours.timesteps, "sb3": sb3_steps},
        "dataset": args.dataset, "n_envs": args.n_envs, "n_steps": config.n_steps, "batch_size": config.batch_size,
        "n_epochs": config.n_epochs, "torch_threads": args.threads, "seed": args.seed,
        "eval": {"split": "validation", "episodes": args.eval_episodes},
        "machine": machine(),
    }
    return finish(
        "ppo_throughput",
        f"PPO training on {args.dataset} ({args.n_envs} envs, {args.timesteps:,} steps, seed config)",
        [
            ("ours env-steps/s", result["ours_sps"], ""),
            ("SB3 env-steps/s", result["sb3_sps"], ""),
            ("ratio ours / SB3", result["ratio"], ">= 1.5"),
            ("ours eval return (validation)", result["ours_eval_return"], ">= SB3's"),
            ("SB3 eval return (validation)", result["sb3_eval_return"], ""),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())

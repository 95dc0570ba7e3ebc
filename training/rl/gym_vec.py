"""Gymnasium adapters: vectorise any registered id, check its spaces, evaluate a policy on it.

The PPO engine needs a ``gymnasium.vector.VectorEnv`` in *same-step* autoreset mode: when a
sub-environment's episode ends, `step` already returns the first observation of the next
episode and puts the last one in ``infos["final_obs"]`` (masked by ``infos["_final_obs"]``),
which is what truncation bootstrapping reads.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv


class EnvSpecError(ValueError):
    """The environment's spaces or autoreset mode are not what PPO here supports."""


def check_spaces(observation_space: gym.Space, action_space: gym.Space, *, name: str = "environment") -> tuple[int, int]:
    """Return ``(obs_dim, n_actions)`` or raise `EnvSpecError` saying what is unsupported."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise EnvSpecError(f"{name}: action space must be Discrete, got {action_space}")
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise EnvSpecError(f"{name}: observation space must be a 1-D Box, got {observation_space}")
    if int(action_space.start) != 0:
        raise EnvSpecError(f"{name}: Discrete action space must start at 0, got start={action_space.start}")
    return int(observation_space.shape[0]), int(action_space.n)


def make_gym_vec_env(env_id: str, n_envs: int, **make_kwargs: Any) -> SyncVectorEnv:
    """``n_envs`` copies of gymnasium id ``env_id`` in one same-step-autoreset `SyncVectorEnv`.

    Raises `EnvSpecError` for an unknown id or unsupported spaces (checked before anything
    is built in quantity).
    """
    try:
        probe = gym.make(env_id, **make_kwargs)
    except gym.error.Error as exc:
        raise EnvSpecError(f"cannot make gymnasium environment {env_id!r}: {exc}") from exc
    try:
        check_spaces(probe.observation_space, probe.action_space, name=env_id)
    finally:
        probe.close()
    return SyncVectorEnv(
        [lambda: gym.make(env_id, **make_kwargs) for _ in range(n_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )


def check_vec_env(envs: Any) -> tuple[int, int]:
    """Check a vector env for PPO: spaces and same-step autoreset; returns (obs_dim, n_actions)."""
    dims = check_spaces(envs.single_observation_space, envs.single_action_space, name=type(envs).__name__)
    mode = (getattr(envs, "metadata", None) or {}).get("autoreset_mode")
    if mode is not None and mode not in (AutoresetMode.SAME_STEP, AutoresetMode.SAME_STEP.value):
        raise EnvSpecError(
            f"{type(envs).__name__}: autoreset mode must be SAME_STEP (final observation in "
            f"infos['final_obs']), got {mode}"
        )
    return dims


def evaluate_gym(policy: Any, env_id: str, episodes: int = 10, seed: int = 0, **make_kwargs: Any) -> float:
    """Mean undiscounted return of ``policy`` over ``episodes`` episodes of ``env_id``.

    Actions are the argmax of the policy (deterministic). Episode i is reset with seed
    ``seed + i``, so the figure is reproducible. ``policy`` is an `ActorCritic` or anything
    with ``predict_batch(obs (N, obs_dim)) -> object with .actions``.
    """
    act = greedy_actions(policy)
    env = gym.make(env_id, **make_kwargs)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(int(act(np.asarray(obs, dtype=np.float32)[None, :])[0]))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return float(np.mean(returns))


def evaluate_vec_env(act: Callable[[np.ndarray], np.ndarray], envs: Any, episodes: int, seed: int = 0) -> float:
    """Mean undiscounted return of the first ``ceil(episodes / N)`` episodes of each of the N
    sub-envs of a same-step-autoreset vector env, acting with ``act(obs (N, d)) -> actions (N,)``.

    Counting a fixed number of episodes per sub-env (rather than the first ``episodes`` to
    finish) keeps short episodes from being over-represented.
    """
    n = int(envs.num_envs)
    quota = max(1, -(-episodes // n))
    returns: list[list[float]] = [[] for _ in range(n)]
    running = np.zeros(n, dtype=np.float64)
    obs, _ = envs.reset(seed=seed)
    while any(len(r) < quota for r in returns):
        obs, rewards, terminated, truncated, _ = envs.step(np.asarray(act(np.asarray(obs, dtype=np.float32))))
        running += rewards
        for i in np.flatnonzero(np.logical_or(terminated, truncated)):
            if len(returns[i]) < quota:
                returns[i].append(float(running[i]))
            running[i] = 0.0
    return float(np.mean([r for env_returns in returns for r in env_returns]))


def greedy_actions(policy: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``obs (N, d) -> argmax actions (N,)`` for an `ActorCritic` or a runtime with predict_batch.

    A torch network is evaluated through its numpy export: single observations cost a few
    microseconds there, and no torch thread pool is woken per step.
    """
    if not hasattr(policy, "predict_batch"):
        from training.rl.inference import PolicyRuntime

        policy = PolicyRuntime(policy.export_arrays(), {"feature_spec_version": None})
    return lambda obs: policy.predict_batch(obs).actions

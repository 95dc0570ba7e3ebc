"""N trading environments stepped together as numpy arrays (a ``gymnasium.vector.VectorEnv``).

The accounting is the scalar environment's own (:class:`training.rl.env.AccountBook` on N accounts),
the observations come from the precomputed market dims plus the same position arithmetic on arrays,
so sub-environment i behaves exactly like ``TradingEnv`` reset with ``seed + i``.

Autoreset: gymnasium 1.x ``AutoresetMode.SAME_STEP`` (``metadata["autoreset_mode"]``). When a
sub-environment terminates or is truncated, ``step`` resets it at once and returns the new episode's
first observation in ``obs``; the observation the episode ended on is in ``infos["final_obs"][i]``
(object array; ``infos["_final_obs"]`` masks the sub-environments that ended) and its accounting in
``infos["final_info"]``, which also has ``episode`` = {``r``: return, ``l``: length}. For truncation
bootstrapping, evaluate the value of ``final_obs`` where ``truncated`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from training.rl import features
from training.rl.actions import N_ACTIONS
from training.rl.data import MarketData
from training.rl.env import AccountBook, EnvConfig, Universe, observation_space


class TradingVecEnv(VectorEnv):
    """``num_envs`` trading accounts; observations (N, 64) float32, rewards (N,) float64."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        data: MarketData | Sequence[MarketData],
        num_envs: int = 16,
        split: str = "train",
        config: EnvConfig | None = None,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.config = config or EnvConfig()
        self.universe = Universe(data, split)
        self.book = AccountBook(self.universe, self.config, num_envs)
        self.single_observation_space = observation_space()
        self.single_action_space = gym.spaces.Discrete(N_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._masks = {f"_{key}": np.ones(num_envs, dtype=bool) for key in AccountBook.INFO_KEYS}

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every sub-environment; an int seed seeds sub-environment i with ``seed + i``."""
        seeds = [None if seed is None else seed + i for i in range(self.num_envs)] if not isinstance(seed, Sequence) else list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seeds[0])
        self.book.unshare()
        for i, s in enumerate(seeds):
            if s is not None:
                self._rngs[i] = seeding.np_random(s)[0]
            self._reset_one(i, options)
        return self._observe(), self._infos()

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu" or actions.min() < 0 or actions.max() >= N_ACTIONS:
            raise ValueError(f"actions must be {self.num_envs} integers in 0-{N_ACTIONS - 1}, got {actions!r}")
        rewards, terminated, truncated = self.book.step(actions)
        obs = self._observe()  # a fresh array each step: callers may keep it
        infos = self._infos()
        done = terminated | truncated
        if done.any():
            ended = np.flatnonzero(done)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in ended:
                final_obs[i] = obs[i].copy()  # the row is overwritten by the new episode below
            final_info = infos
            final_info["episode"] = {"r": self.book.episode_return, "l": self.book.steps, "_r": done, "_l": done}
            final_info["_episode"] = done
            self.book.unshare()  # final_info keeps the ended episodes' values
            for i in ended:
                self._reset_one(int(i), None)
            obs[ended] = self.book.observe(np.empty((len(ended), features.FEATURE_DIM), np.float32), ended)
            infos = self._infos()  # the new episodes' start, as gymnasium's SAME_STEP mode reports it
            infos["final_obs"], infos["_final_obs"] = final_obs, done
            infos["final_info"], infos["_final_info"] = final_info, done
        return obs, rewards, terminated, truncated, infos

    def observation_fields(self, i: int) -> dict[str, Any]:
        """Sub-environment i's current observation as fields (what serving would receive)."""
        return self.book.observation_fields(i)

    def _observe(self) -> np.ndarray:
        return self.book.observe(np.empty((self.num_envs, features.FEATURE_DIM), dtype=np.float32))

    def _reset_one(self, i: int, options: dict[str, Any] | None) -> None:
        asset, start = self.universe.draw_start(self._rngs[i], options)
        self.book.reset_account(i, asset, start)

    def _infos(self) -> dict[str, Any]:
        infos: dict[str, Any] = self.book.info_arrays()
        infos.update(self._masks)
        return infos

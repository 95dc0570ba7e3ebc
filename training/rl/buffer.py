"""Rollout storage and generalised advantage estimation (GAE).

Arrays are preallocated numpy of shape (n_steps, n_envs, ...) and filled in place, so the
rollout loop allocates nothing per step. Episode ends are stored as two flags because they
mean different things for the value target:

- ``terminated``: the episode really ended (e.g. ruin); the next state's value is 0.
- ``truncated``: it was cut off (time limit, end of data); the episode would have gone on, so
  the target bootstraps from the value of the *final* observation, ``final_values``.

Either way the GAE trace stops at the boundary, since the next row of the buffer belongs to
a new episode.
"""

from __future__ import annotations

import numpy as np


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    final_values: np.ndarray,
    last_values: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns, both (T, N) float32, for a rollout of T steps in N envs.

    rewards, values, final_values: (T, N) floats (``final_values[t]`` is V(final obs) and only
    read where ``truncated[t]`` and not ``terminated[t]``); terminated, truncated: (T, N) bools;
    last_values: (N,) value of the observation after the last step (bootstraps unfinished
    episodes). Returns = advantages + values (the TD(lambda) value target).
    """
    n_steps = rewards.shape[0]
    rewards = rewards.astype(np.float64, copy=False)
    values = values.astype(np.float64, copy=False)
    ended = np.logical_or(terminated, truncated)
    # Value of the state after step t: 0 after termination, V(final obs) after truncation,
    # else the next row's value (or last_values after the final row).
    next_values = np.empty_like(values)
    next_values[:-1] = values[1:]
    next_values[-1] = last_values
    next_values = np.where(truncated, final_values, next_values)
    next_values = np.where(terminated, 0.0, next_values)
    deltas = rewards + gamma * next_values - values
    continues = gamma * gae_lambda * (~ended)
    advantages = np.empty_like(values)
    running = np.zeros(values.shape[1], dtype=np.float64)
    for t in range(n_steps - 1, -1, -1):
        running = deltas[t] + continues[t] * running
        advantages[t] = running
    returns = advantages + values
    return advantages.astype(np.float32), returns.astype(np.float32)


class RolloutBuffer:
    """One rollout of ``n_steps`` transitions in each of ``n_envs`` environments.

    After filling every row with `add` (and `set_final_values` where episodes were
    truncated), call `finish` with the value of the next observation; `advantages` and
    `returns` are then ready and `flat` gives (n_steps * n_envs, ...) views for the update.
    """

    def __init__(self, n_steps: int, n_envs: int, obs_dim: int) -> None:
        self.n_steps, self.n_envs, self.obs_dim = n_steps, n_envs, obs_dim
        shape = (n_steps, n_envs)
        self.observations = np.zeros((*shape, obs_dim), dtype=np.float32)
        self.actions = np.zeros(shape, dtype=np.int64)
        self.log_probs = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.final_values = np.zeros(shape, dtype=np.float32)
        self.advantages = np.zeros(shape, dtype=np.float32)
        self.returns = np.zeros(shape, dtype=np.float32)
        self.pos = 0

    def reset(self) -> None:
        """Start a new rollout (rows are overwritten, so nothing is cleared but the flags)."""
        self.pos = 0
        self.final_values.fill(0.0)

    @property
    def full(self) -> bool:
        return self.pos == self.n_steps

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        log_probs: np.ndarray,
        values: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> int:
        """Store one vectorised step (each argument has leading dim n_envs); returns its row."""
        if self.pos >= self.n_steps:
            raise IndexError("rollout buffer is full; call reset() first")
        row = self.pos
        self.observations[row] = obs
        self.actions[row] = actions
        self.log_probs[row] = log_probs
        self.values[row] = values
        self.rewards[row] = rewards
        self.terminated[row] = terminated
        self.truncated[row] = truncated
        self.pos += 1
        return row

    def set_final_values(self, row: int, env_indices: np.ndarray, values: np.ndarray) -> None:
        """Record V(final observation) for envs whose episode was truncated at ``row``."""
        self.final_values[row, env_indices] = values

    def finish(self, last_values: np.ndarray, gamma: float, gae_lambda: float) -> None:
        """Compute advantages and returns; ``last_values`` (n_envs,) = V(next observation)."""
        if not self.full:
            raise RuntimeError(f"rollout buffer has {self.pos} of {self.n_steps} rows")
        self.advantages[:], self.returns[:] = compute_gae(
            self.rewards, self.values, self.terminated, self.truncated,
            self.final_values, last_values, gamma, gae_lambda,
        )

    def flat(self) -> dict[str, np.ndarray]:
        """Views flattened over (step, env): obs (B, obs_dim), the rest (B,)."""
        size = self.n_steps * self.n_envs
        return {
            "observations": self.observations.reshape(size, self.obs_dim),
            "actions": self.actions.reshape(size),
            "log_probs": self.log_probs.reshape(size),
            "values": self.values.reshape(size),
            "advantages": self.advantages.reshape(size),
            "returns": self.returns.reshape(size),
        }

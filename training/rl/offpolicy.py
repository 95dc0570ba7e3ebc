"""Fine-tuning a policy from logged decisions: importance-weighted, clipped PPO objective.

Each logged experience is one decision and the reward the market gave it: observation s, action a,
the behaviour policy's probabilities mu(.|s) (stored with the decision) and reward r. Decisions are
one-step outcomes here (the reward is the realised PnL of that decision), so the advantage of a
sample is its reward minus a baseline: the batch mean reward, scaled by the batch standard
deviation. The critic is left alone (its scale belongs to the environment's returns).

The objective, per sample, maximised:

    w       = min(pi_0(a|s) / mu(a|s), max_weight)           truncated importance weight (V-trace's rho-bar):
                                                             corrects for the data being collected by mu,
                                                             not by the starting policy pi_0
    ratio   = pi_theta(a|s) / pi_0(a|s)                      PPO's ratio, against the starting policy
    L       = w * min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)  + ent_coef * entropy

Clipping against pi_0 (not against mu) keeps PPO's trust region around the policy being improved;
when mu is pi_0 (the champion logged its own decisions) w is 1 and this is exactly PPO's clipped
surrogate on a one-step problem. Training also stops early when the approximate KL divergence from
pi_0 exceeds 1.5 * target_kl. Serving acts greedily (argmax), so mu is the policy's softmax, not the
point mass the decision was drawn from; the truncation bounds the error that introduces.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch

from training.rl.networks import ActorCritic, FlatAdam

PROB_FLOOR = 1e-6  # behaviour probabilities below this are treated as this (no division by ~0)


@dataclasses.dataclass(frozen=True)
class OffPolicyBatch:
    """Logged experiences as arrays: observations (N, obs_dim) float32, actions (N,) int64,
    behaviour_probs (N, n_actions) float64 (each row sums to ~1), rewards (N,) float64."""

    observations: np.ndarray
    actions: np.ndarray
    behaviour_probs: np.ndarray
    rewards: np.ndarray

    def __post_init__(self) -> None:
        obs = np.asarray(self.observations, dtype=np.float32)
        actions = np.asarray(self.actions, dtype=np.int64)
        probs = np.asarray(self.behaviour_probs, dtype=np.float64)
        rewards = np.asarray(self.rewards, dtype=np.float64)
        n = len(obs)
        if obs.ndim != 2 or actions.shape != (n,) or rewards.shape != (n,) or probs.ndim != 2 or len(probs) != n:
            raise ValueError(
                f"batch shapes disagree: observations {obs.shape}, actions {actions.shape}, "
                f"behaviour_probs {probs.shape}, rewards {rewards.shape}"
            )
        if n == 0:
            raise ValueError("an off-policy batch needs at least one experience")
        if actions.min() < 0 or actions.max() >= probs.shape[1]:
            raise ValueError(f"actions must be in 0..{probs.shape[1] - 1}")
        if not (np.isfinite(obs).all() and np.isfinite(probs).all() and np.isfinite(rewards).all()):
            raise ValueError("observations, behaviour probabilities and rewards must be finite")
        if (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
            raise ValueError("each row of behaviour probabilities must be a distribution (>= 0, sums to 1)")
        for name, value in (("observations", obs), ("actions", actions), ("behaviour_probs", probs), ("rewards", rewards)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.actions)


@dataclasses.dataclass(frozen=True)
class OffPolicyConfig:
    """Hyperparameters of a fine-tuning pass (lr small: this nudges a trained champion)."""

    learning_rate: float = 1e-4
    epochs: int = 4
    batch_size: int = 256
    clip_range: float = 0.2
    max_weight: float = 2.0  # truncation of pi_0 / mu
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    target_kl: float | None = 0.02

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not (self.learning_rate > 0 and self.clip_range > 0 and self.max_weight > 0):
            raise ValueError("learning_rate, clip_range and max_weight must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class OffPolicyResult:
    """The fine-tuned policy (a copy; the input is untouched) and one diagnostics dict per epoch."""

    policy: ActorCritic
    history: list[dict[str, float]]
    samples: int
    stopped_early: bool


def importance_weights(start_probs: np.ndarray, behaviour_probs: np.ndarray, actions: np.ndarray,
                       max_weight: float) -> np.ndarray:
    """min(pi_0(a|s) / mu(a|s), max_weight) for each sample; shapes (N, A), (N, A), (N,) -> (N,)."""
    rows = np.arange(len(actions))
    mu = np.maximum(behaviour_probs[rows, actions], PROB_FLOOR)
    return np.minimum(start_probs[rows, actions] / mu, max_weight)


def advantages_from_rewards(rewards: np.ndarray) -> np.ndarray:
    """(r - mean r) / std r, the one-step advantage with the batch mean as baseline; zeros when
    every reward is the same (nothing to prefer)."""
    std = float(rewards.std())
    # Relative test: equal large rewards have a rounding-noise std that must not be blown up to 1.
    if std <= 1e-9 * max(1.0, float(np.abs(rewards).max())):
        return np.zeros_like(rewards)
    return (rewards - rewards.mean()) / std


def clipped_objective(log_probs: torch.Tensor, start_log_probs: torch.Tensor, advantages: torch.Tensor,
                      weights: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Mean over samples of w * min(ratio A, clip(ratio) A), ratio = pi_theta / pi_0 (to maximise)."""
    ratio = torch.exp(log_probs - start_log_probs)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages)
    return (weights * surrogate).mean()


def finetune(policy: ActorCritic, batch: OffPolicyBatch, config: OffPolicyConfig | None = None, *, seed: int = 0,
             on_epoch: Callable[[dict[str, float]], bool | None] | None = None) -> OffPolicyResult:
    """Improve a copy of `policy` on logged experiences with the objective in the module docstring.

    `on_epoch(diagnostics)` is called after each epoch (objective, approx_kl from pi_0, clip
    fraction, mean weight, entropy); returning False stops. Seeded minibatch order.
    """
    config = config or OffPolicyConfig()
    if policy.obs_dim != batch.observations.shape[1] or policy.n_actions != batch.behaviour_probs.shape[1]:
        raise ValueError(f"the policy takes {policy.obs_dim} inputs and {policy.n_actions} actions; the batch has "
                         f"{batch.observations.shape[1]} and {batch.behaviour_probs.shape[1]}")
    device = next(policy.parameters()).device
    tuned = ActorCritic(policy.obs_dim, policy.n_actions, policy.hidden_sizes, device=device)
    tuned.load_state_dict(policy.state_dict())
    obs = torch.as_tensor(batch.observations, device=device)
    actions = torch.as_tensor(batch.actions, device=device)
    with torch.no_grad():
        start_log_probs_all = torch.log_softmax(tuned(obs)[0], dim=-1)
    start_log_probs = start_log_probs_all.gather(1, actions.unsqueeze(1)).squeeze(1)
    weights_np = importance_weights(start_log_probs_all.exp().cpu().numpy().astype(np.float64),
                                    batch.behaviour_probs, batch.actions, config.max_weight)
    weights = torch.as_tensor(weights_np, dtype=torch.float32, device=device)
    advantages = torch.as_tensor(advantages_from_rewards(batch.rewards), dtype=torch.float32, device=device)

    optimizer = FlatAdam(tuned, config.learning_rate, eps=1e-5)
    rng = np.random.default_rng(seed)
    n, history, stopped = len(batch), [], False
    for epoch in range(1, config.epochs + 1):
        order = torch.as_tensor(rng.permutation(n), device=device)
        for start in range(0, n, config.batch_size):
            mb = order[start:start + config.batch_size]
            log_probs_all = torch.log_softmax(tuned(obs[mb])[0], dim=-1)
            log_probs = log_probs_all.gather(1, actions[mb].unsqueeze(1)).squeeze(1)
            objective = clipped_objective(log_probs, start_log_probs[mb], advantages[mb], weights[mb], config.clip_range)
            entropy = -(log_probs_all.exp() * log_probs_all).sum(-1).mean()
            loss = -(objective + config.ent_coef * entropy)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step(config.max_grad_norm)
        stats = _diagnostics(tuned, obs, actions, start_log_probs, start_log_probs_all, advantages, weights, config)
        stats["epoch"] = epoch
        history.append(stats)
        answer = on_epoch(stats) if on_epoch else None
        if answer is False or (config.target_kl is not None and stats["approx_kl"] > 1.5 * config.target_kl):
            stopped = epoch < config.epochs
            break
    tuned.eval()
    return OffPolicyResult(policy=tuned, history=history, samples=n, stopped_early=stopped)


@torch.no_grad()
def _diagnostics(policy: ActorCritic, obs: torch.Tensor, actions: torch.Tensor, start_log_probs: torch.Tensor,
                 start_log_probs_all: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                 config: OffPolicyConfig) -> dict[str, float]:
    log_probs_all = torch.log_softmax(policy(obs)[0], dim=-1)
    log_probs = log_probs_all.gather(1, actions.unsqueeze(1)).squeeze(1)
    ratio = torch.exp(log_probs - start_log_probs)
    # KL(pi_0 || pi_theta) over all actions, exact for a categorical policy.
    kl = (start_log_probs_all.exp() * (start_log_probs_all - log_probs_all)).sum(-1).mean()
    return {
        "objective": float(clipped_objective(log_probs, start_log_probs, advantages, weights, config.clip_range)),
        "approx_kl": float(kl),
        "clip_fraction": float(((ratio - 1).abs() > config.clip_range).float().mean()),
        "mean_weight": float(weights.mean()),
        "entropy": float(-(log_probs_all.exp() * log_probs_all).sum(-1).mean()),
    }

"""Proximal Policy Optimisation (clipped surrogate), for Discrete actions and Box observations.

Three separate pieces, as in SB3 but without its class hierarchy:

- `collect_rollout` steps the vector env ``n_steps`` times with the current policy and fills
  the `RolloutBuffer` (with the values needed to bootstrap truncated episodes);
- the buffer computes GAE advantages and returns;
- `ppo_update` runs ``n_epochs`` passes of minibatch gradient steps on the PPO loss, whose
  terms (ratio, clipped surrogate, value loss, entropy, grad-norm clip, KL) are all in one
  short loop, as in CleanRL's ``ppo.py``.

`train` ties them together. Everything is seeded: the network init, the action sampling
(a torch Generator), the minibatch shuffles (a numpy Generator) and the environments, so two
runs with the same seed on the CPU give identical curves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import deque
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from training.rl.buffer import RolloutBuffer
from training.rl.callbacks import TrainingCallback
from training.rl.config import PPOConfig
from training.rl.device import resolve_device
from training.rl.gym_vec import check_vec_env, make_gym_vec_env
from training.rl.networks import ActorCritic, FlatAdam

# Keys of every per-update metrics dict (the training curve), in logging order.
UPDATE_METRICS = (
    "update", "timesteps", "progress", "learning_rate", "clip_range",
    "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance",
    "epochs", "episode_return_mean", "episode_length_mean", "episodes",
    "env_steps_per_s", "rollout_seconds", "update_seconds",
)
# Metrics that measure the machine, not the learning; excluded when comparing curves.
TIMING_METRICS = ("env_steps_per_s", "rollout_seconds", "update_seconds")


@dataclasses.dataclass
class TrainResult:
    """What `train` returns. ``sps`` is environment steps per second over the whole run
    (rollouts and updates), ``curve`` one metrics dict per update (keys `UPDATE_METRICS`)."""

    policy: ActorCritic
    curve: list[dict[str, Any]]
    timesteps: int
    sps: float
    wall_seconds: float
    config: PPOConfig
    seed: int
    stopped_early: bool = False


class EpisodeTracker:
    """Running returns and lengths per sub-env; keeps the last ``window`` finished episodes."""

    def __init__(self, n_envs: int, window: int = 100) -> None:
        self.returns = np.zeros(n_envs, dtype=np.float64)
        self.lengths = np.zeros(n_envs, dtype=np.int64)
        self.finished_returns: deque[float] = deque(maxlen=window)
        self.finished_lengths: deque[int] = deque(maxlen=window)
        self.finished = 0

    def step(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self.returns += rewards
        self.lengths += 1
        if done.any():
            for i in np.flatnonzero(done):
                self.finished_returns.append(float(self.returns[i]))
                self.finished_lengths.append(int(self.lengths[i]))
            self.finished += int(done.sum())
            self.returns[done] = 0.0
            self.lengths[done] = 0

    def summary(self) -> tuple[float | None, float | None]:
        if not self.finished_returns:
            return None, None
        return float(np.mean(self.finished_returns)), float(np.mean(self.finished_lengths))


class Sampler:
    """Draws actions from the policy's categorical distribution with a seeded generator."""

    def __init__(self, policy: ActorCritic, seed: int, device: torch.device) -> None:
        self.policy = policy
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actions (N,) int64, their log-probabilities (N,) and values (N,) for obs (N, obs_dim)."""
        logits, values = self.policy(torch.as_tensor(obs, device=self.device))
        log_probs = torch.log_softmax(logits, dim=-1)
        # Gumbel-max: argmax(log p + Gumbel noise) is an exact categorical sample, and cheaper
        # than torch.distributions.Categorical on small batches.
        uniform = torch.rand(log_probs.shape, generator=self.generator, device=self.device)
        actions = torch.argmax(log_probs - torch.log(-torch.log(uniform)), dim=-1)
        chosen = log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)
        return actions.cpu().numpy(), chosen.cpu().numpy(), values.cpu().numpy()

    @torch.inference_mode()
    def values(self, obs: np.ndarray) -> np.ndarray:
        """State values (N,) for obs (N, obs_dim)."""
        return self.policy(torch.as_tensor(obs, device=self.device))[1].cpu().numpy()


def collect_rollout(envs: Any, sampler: Sampler, buffer: RolloutBuffer, obs: np.ndarray,
                    episodes: EpisodeTracker) -> np.ndarray:
    """Fill ``buffer`` with ``buffer.n_steps`` vectorised steps starting from ``obs``.

    Returns the observation after the last step (for bootstrapping and the next rollout).
    The env must autoreset in same-step mode (see `training.rl.gym_vec`).
    """
    buffer.reset()
    for _ in range(buffer.n_steps):
        actions, log_probs, values = sampler.act(obs)
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        row = buffer.add(obs, actions, log_probs, values, rewards, terminated, truncated)
        cut = truncated & ~terminated
        if cut.any():
            # Time limit, not a real end: the value target bootstraps from the final observation.
            idx = np.flatnonzero(cut)
            final = np.stack([np.asarray(infos["final_obs"][i], dtype=np.float32) for i in idx])
            buffer.set_final_values(row, idx, sampler.values(final))
        episodes.step(np.asarray(rewards, dtype=np.float64), terminated | truncated)
        obs = np.asarray(next_obs, dtype=np.float32)
    return obs


def _minibatch_normalise(adv: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Normalise advantages within each consecutive minibatch of ``batch_size`` (SB3/CleanRL
    semantics), computed for all minibatches of the epoch at once. A last minibatch of one
    sample is left as is, as SB3 does."""
    n = adv.shape[0]
    n_full = n // batch_size
    out = torch.empty_like(adv)
    if n_full:
        full = adv[: n_full * batch_size].view(n_full, batch_size)
        std, mean = torch.std_mean(full, dim=1, keepdim=True)
        out[: n_full * batch_size] = ((full - mean) / (std + 1e-8)).view(-1)
    rest = adv[n_full * batch_size :]
    if rest.numel() > 1:
        std, mean = torch.std_mean(rest)
        out[n_full * batch_size :] = (rest - mean) / (std + 1e-8)
    elif rest.numel() == 1:
        out[-1:] = rest
    return out


def clipped_surrogate_loss(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped surrogate, negated for minimising: mean of
    ``max(-A * r, -A * clip(r, 1 - eps, 1 + eps))``. Its gradient is zero wherever the clip is
    the binding term (r moved beyond the range in the direction the advantage favours)."""
    return torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()


def ppo_update(policy: ActorCritic, optimizer: FlatAdam, buffer: RolloutBuffer, config: PPOConfig,
               clip_range: float, rng: np.random.Generator, device: torch.device) -> dict[str, float]:
    """``n_epochs`` passes of minibatch PPO over a finished buffer; returns loss diagnostics."""
    data = {k: torch.as_tensor(v, device=device) for k, v in buffer.flat().items()}
    n, bs = buffer.n_steps * buffer.n_envs, config.batch_size
    ratios = torch.empty(n, device=device)  # this epoch's probability ratios, for KL/clip stats
    losses: list[torch.Tensor] = []
    approx_kl = clip_fraction = 0.0
    epochs_run = 0
    stop = False
    for _epoch in range(config.n_epochs):
        # Shuffle once per epoch so every minibatch is a contiguous slice (no per-batch gathers).
        perm = torch.from_numpy(rng.permutation(n)).to(device)
        obs, actions, old_log_probs, old_values, returns = (
            data[k][perm] for k in ("observations", "actions", "log_probs", "values", "returns")
        )
        advantages = data["advantages"][perm]
        if config.normalize_advantage:
            advantages = _minibatch_normalise(advantages, bs)
        for start in range(0, n, bs):
            mb = slice(start, start + bs)
            logits, values = policy(obs[mb])
            log_probs_all = torch.log_softmax(logits, dim=-1)
            log_probs = log_probs_all.gather(1, actions[mb].unsqueeze(1)).squeeze(1)

            # Probability ratio pi_new(a|s) / pi_old(a|s).
            log_ratio = log_probs - old_log_probs[mb]
            ratio = torch.exp(log_ratio)
            if config.target_kl is not None:
                with torch.no_grad():
                    kl = ((ratio - 1) - log_ratio).mean().item()
                if kl > 1.5 * config.target_kl:
                    stop = True
                    break

            # Clipped surrogate objective.
            policy_loss = clipped_surrogate_loss(ratio, advantages[mb], clip_range)

            # Value loss against the GAE returns, optionally clipped around the old values.
            if config.clip_range_vf is None:
                value_loss = F.mse_loss(values, returns[mb])
            else:
                clipped = old_values[mb] + torch.clamp(values - old_values[mb], -config.clip_range_vf, config.clip_range_vf)
                value_loss = F.mse_loss(clipped, returns[mb])

            # Entropy bonus keeps the policy exploring.
            entropy = -(log_probs_all.exp() * log_probs_all).sum(-1).mean()

            loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            optimizer.step(config.max_grad_norm)  # includes global grad-norm clipping

            ratios[mb] = ratio.detach()
            losses.append(torch.stack((policy_loss.detach(), value_loss.detach(), entropy.detach())))
        if stop and start == 0:
            break  # no minibatch ran in this epoch; keep the previous epoch's statistics
        # Diagnostics over the minibatches this epoch ran (Schulman's low-variance KL estimator).
        seen = ratios[:start] if stop else ratios
        approx_kl = float(((seen - 1) - torch.log(seen)).mean())
        clip_fraction = float(((seen - 1).abs() > clip_range).float().mean())
        epochs_run += 1
        if stop:
            break
    policy_loss_mean, value_loss_mean, entropy_mean = (
        torch.stack(losses).mean(0).tolist() if losses else (math.nan, math.nan, math.nan)
    )
    return {
        "policy_loss": policy_loss_mean,
        "value_loss": value_loss_mean,
        "entropy": entropy_mean,
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
        "explained_variance": explained_variance(buffer.values, buffer.returns),
        "epochs": epochs_run,
    }


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 - Var(target - predicted) / Var(target); NaN when the target is constant."""
    var = float(np.var(target))
    return math.nan if var == 0 else 1.0 - float(np.var(target - predicted)) / var


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


EnvSource = Any  # a gymnasium id, a VectorEnv, or a zero-argument callable returning one


def _open_envs(env: EnvSource, n_envs: int) -> tuple[Any, bool]:
    """(vector env, whether train() owns it and must close it)."""
    if isinstance(env, str):
        return make_gym_vec_env(env, n_envs), True
    if hasattr(env, "step") and hasattr(env, "single_action_space"):
        return env, False
    if callable(env):
        return env(), True
    raise TypeError(f"expected a gymnasium id, a VectorEnv or a factory returning one, got {type(env).__name__}")


def train(
    env: EnvSource,
    config: PPOConfig | None = None,
    total_timesteps: int = 100_000,
    seed: int = 0,
    callbacks: Iterable[TrainingCallback] = (),
    device: "str | torch.device | None" = None,
    policy: ActorCritic | None = None,
) -> TrainResult:
    """Train a PPO policy for at least ``total_timesteps`` environment steps.

    ``env`` is a gymnasium id (vectorised into ``config.n_envs`` copies), a same-step
    autoreset ``VectorEnv`` (its own number of envs is used), or a factory returning one.
    Training stops after ``ceil(total_timesteps / (n_steps * n_envs))`` updates, or earlier
    if a callback's ``on_update`` returns False. ``device``: None reads ``RLV3_DEVICE``.
    ``policy`` continues training an existing network instead of a fresh seeded one.
    """
    config = config or PPOConfig()
    if total_timesteps < 1:
        raise ValueError(f"total_timesteps must be >= 1, got {total_timesteps}")
    device = resolve_device(device)
    callbacks = list(callbacks)
    envs, owns_envs = _open_envs(env, config.n_envs)
    try:
        obs_dim, n_actions = check_vec_env(envs)
        n_envs = int(envs.num_envs)
        if n_envs != config.n_envs:
            config = config.replace(n_envs=n_envs)
        with torch_threads(config.torch_threads):
            return _train(envs, config, total_timesteps, seed, callbacks, device, obs_dim, n_actions, policy)
    finally:
        if owns_envs:
            envs.close()


def _train(envs: Any, config: PPOConfig, total_timesteps: int, seed: int, callbacks: list[TrainingCallback],
           device: torch.device, obs_dim: int, n_actions: int, policy: ActorCritic | None) -> TrainResult:
    if policy is None:
        init_generator = torch.Generator().manual_seed(seed)
        policy = ActorCritic(obs_dim, n_actions, config.hidden_sizes, generator=init_generator, device=device)
    elif (policy.obs_dim, policy.n_actions) != (obs_dim, n_actions):
        raise ValueError(f"policy is for obs_dim={policy.obs_dim}, n_actions={policy.n_actions}; "
                         f"the env has {obs_dim}, {n_actions}")
    optimizer = FlatAdam(policy, config.learning_rate, eps=config.adam_eps)
    sampler = Sampler(policy, seed, device)
    rng = np.random.default_rng(seed)
    buffer = RolloutBuffer(config.n_steps, config.n_envs, obs_dim)
    episodes = EpisodeTracker(config.n_envs)
    n_updates = math.ceil(total_timesteps / config.buffer_size)
    for cb in callbacks:
        cb.on_training_start(total_timesteps=total_timesteps, config=config)

    curve: list[dict[str, Any]] = []
    obs, _ = envs.reset(seed=seed)
    obs = np.asarray(obs, dtype=np.float32)
    timesteps = 0
    stopped = False
    started = time.perf_counter()
    for update in range(1, n_updates + 1):
        t0 = time.perf_counter()
        obs = collect_rollout(envs, sampler, buffer, obs, episodes)
        buffer.finish(sampler.values(obs), config.gamma, config.gae_lambda)
        timesteps += config.buffer_size
        # As SB3: schedules are evaluated at the progress reached after this rollout.
        progress = min(1.0, timesteps / total_timesteps)
        optimizer.lr = config.learning_rate_at(progress)
        clip_range = config.clip_range_at(progress)
        t1 = time.perf_counter()
        stats = ppo_update(policy, optimizer, buffer, config, clip_range, rng, device)
        t2 = time.perf_counter()
        ep_return, ep_length = episodes.summary()
        metrics = {
            "update": update, "timesteps": timesteps, "progress": progress,
            "learning_rate": optimizer.lr, "clip_range": clip_range, **stats,
            "episode_return_mean": ep_return, "episode_length_mean": ep_length, "episodes": episodes.finished,
            "env_steps_per_s": timesteps / (t2 - started), "rollout_seconds": t1 - t0, "update_seconds": t2 - t1,
        }
        curve.append(metrics)
        answers = [cb.on_update(metrics) for cb in callbacks]  # every callback sees every update
        if any(answer is False for answer in answers):
            stopped = update < n_updates
            break
    wall = time.perf_counter() - started
    result = TrainResult(policy=policy, curve=curve, timesteps=timesteps, sps=timesteps / wall,
                         wall_seconds=wall, config=config, seed=seed, stopped_early=stopped)
    for cb in callbacks:
        cb.on_training_end(result)
    return result


def train_gym(env_id: str, total_timesteps: int, seed: int = 0, *, config: PPOConfig | None = None,
              callbacks: Iterable[TrainingCallback] = (), device: "str | torch.device | None" = None,
              **overrides: Any) -> TrainResult:
    """Train on gymnasium id ``env_id`` with its preset (`config.config_for_gym`) unless
    ``config`` is given; ``overrides`` change single hyperparameters."""
    from training.rl.config import config_for_gym

    config = config.replace(**overrides) if config is not None else config_for_gym(env_id, **overrides)
    return train(env_id, config, total_timesteps, seed, callbacks, device)


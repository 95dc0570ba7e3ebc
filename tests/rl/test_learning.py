"""The agent learns: CartPole far above random, and the trading env above a random policy.

Short budgets that run in well under a minute each on the 2-core reference machine. The
figures asserted are returns, never timings.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.rl.actions import N_ACTIONS
from training.rl.config import PPOConfig, config_for_trading
from training.rl.data import load_dataset
from training.rl.evaluate import backtest, random_policy
from training.rl.gym_vec import evaluate_gym, evaluate_vec_env, greedy_actions
from training.rl.inference import PolicyRuntime
from training.rl.ppo import train, train_gym
from training.rl.vec_env import TradingVecEnv

pytestmark = pytest.mark.slow

# A uniformly random CartPole policy balances for about 22 steps on average.
CARTPOLE_RANDOM_RETURN = 22.0
# GOOGL daily: about 1,600 training bars; this budget trains in about 30 s on one torch thread.
LEARNING_TIMESTEPS = 100_000


def test_cartpole_return_is_far_above_random_after_40k_steps():
    result = train_gym("CartPole-v1", 40_000, seed=0)
    mean_return = evaluate_gym(result.policy, "CartPole-v1", episodes=10, seed=1_000_000)
    assert mean_return >= 150, f"greedy mean return {mean_return} (random ~{CARTPOLE_RANDOM_RETURN})"
    # The training curve goes up too: the last updates' episode returns beat the first ones'.
    returns = [m["episode_return_mean"] for m in result.curve if m["episode_return_mean"] is not None]
    assert returns[-1] > 4 * returns[0]


def test_trading_policy_beats_a_random_policy_on_the_training_split():
    data = load_dataset("eurusd_1h")
    config = PPOConfig(n_envs=8, n_steps=256, batch_size=256, n_epochs=10)
    result = train(TradingVecEnv(data, num_envs=8, split="train"), config, 16_384, seed=0, device="cpu")
    # Through the serving runtime, on fresh episodes of the same split, same seeds for both.
    runtime = PolicyRuntime(result.policy.export_arrays(), {"feature_spec_version": None})
    trained = evaluate_vec_env(greedy_actions(runtime), TradingVecEnv(data, num_envs=8, split="train"), 16, seed=123)
    rng = np.random.default_rng(0)
    random = evaluate_vec_env(lambda obs: rng.integers(N_ACTIONS, size=len(obs)),
                              TradingVecEnv(data, num_envs=8, split="train"), 16, seed=123)
    assert trained > random + 1.0, f"trained {trained:.3f} vs random {random:.3f}"


def test_trading_agent_trades_and_beats_random_on_the_googl_validation_split():
    """With the default environment and trading preset, PPO trained on GOOGL's train split trades
    on the unseen validation split and earns more than the average random policy there.

    Two seeds are trained and the one with the better Sharpe on the training split is kept, as one
    would choose between runs without looking at held-out data; only then is it tested on the
    validation split. (One seed alone is at the mercy of floating-point differences between
    machines: the trajectory, and with it the seed's result, changes with the CPU's vector width.)
    """
    data = load_dataset("googl_1d")
    timesteps = LEARNING_TIMESTEPS
    config = config_for_trading(timesteps)
    candidates = []
    for seed in (0, 1):
        result = train(TradingVecEnv(data, num_envs=config.n_envs, split="train"), config, timesteps, seed=seed, device="cpu")
        act = greedy_actions(result.policy)
        policy = lambda obs, act=act: int(act(obs[None, :])[0])  # noqa: E731
        candidates.append((backtest(policy, data, "train").sharpe, seed, policy))
    in_sample_sharpe, seed, policy = max(candidates, key=lambda c: c[0])
    assert in_sample_sharpe > 0.5, candidates  # it learned something on the data it saw
    trained = backtest(policy, data, "validation")
    randoms = [backtest(random_policy(s), data, "validation", seed=s).total_return for s in range(10)]
    assert trained.n_trades >= 1, f"seed {seed} never traded: {trained.action_counts}"
    assert trained.total_return > float(np.mean(randoms)) + 0.02, (seed, trained.total_return, randoms)
    assert trained.sharpe > 0.0, (seed, trained.sharpe)

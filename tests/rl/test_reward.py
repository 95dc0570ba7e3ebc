"""The reward formula: each term, no constant bonus, and that the environment pays exactly it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.rl.conftest import synthetic_market
from training.rl import reward as R
from training.rl.actions import N_ACTIONS, Action
from training.rl.env import EnvConfig, TradingEnv
from training.rl.features import WARMUP_BARS

WEIGHTS = {"initial_balance": 10_000.0, "reward_scale": 100.0, "drawdown_penalty": 0.5}


def test_equity_term_is_the_change_over_the_initial_balance():
    assert R.equity_term(10_000.0, 10_150.0, 10_000.0) == pytest.approx(0.015)
    assert R.equity_term(10_000.0, 9_900.0, 10_000.0) == pytest.approx(-0.01)
    assert R.equity_term(12_000.0, 12_000.0, 10_000.0) == 0.0
    assert np.allclose(R.equity_term(np.array([1.0, 2.0]), np.array([2.0, 1.0]), 4.0), [0.25, -0.25])


def test_drawdown_term_charges_only_a_deepening():
    assert R.drawdown_term(0.0, 0.1) == pytest.approx(0.1)
    assert R.drawdown_term(0.1, 0.25) == pytest.approx(0.15)
    assert R.drawdown_term(0.25, 0.1) == 0.0  # recovering is not charged (nor paid)
    assert R.drawdown_term(0.0, 0.0) == 0.0
    assert np.array_equal(R.drawdown_term(np.array([0.0, 0.2]), np.array([0.1, 0.1])), [0.1, 0.0])


def test_step_reward_combines_the_terms():
    # Equity falls 100 from a peak of 10,000: -1 % of the balance and a 1 % deeper drawdown.
    r = R.step_reward(10_000.0, 9_900.0, 0.0, 0.01, **WEIGHTS)
    assert r == pytest.approx(100.0 * (-0.01 - 0.5 * 0.01))
    # A gain below the peak pays the equity term only.
    r = R.step_reward(9_900.0, 9_950.0, 0.01, 0.005, **WEIGHTS)
    assert r == pytest.approx(100.0 * 0.005)


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 1e7), st.floats(0.0, 0.99), st.floats(0.01, 1000.0), st.floats(0.0, 10.0))
def test_no_constant_bonus_nothing_changes_nothing_is_paid(equity, drawdown, scale, penalty):
    r = R.step_reward(equity, equity, drawdown, drawdown, initial_balance=10_000.0, reward_scale=scale, drawdown_penalty=penalty)
    assert r == 0.0


def test_never_trading_earns_exactly_zero_on_every_step():
    closes = 100.0 * np.cumprod(1.0 + np.random.default_rng(3).normal(0.0, 0.02, 200))
    env = TradingEnv(synthetic_market(closes), "all", EnvConfig(episode_length=10_000))
    env.reset(seed=0, options={"start": WARMUP_BARS})
    rewards = [env.step(Action.HOLD)[1] for _ in range(150)]
    assert rewards == [0.0] * 150


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, N_ACTIONS - 1), min_size=5, max_size=30), st.integers(0, 2**16))
def test_the_environment_pays_exactly_the_formula(actions, seed):
    closes = 50.0 * np.cumprod(1.0 + np.random.default_rng(seed).normal(0.0, 0.03, 40))
    config = EnvConfig(episode_length=10_000, ruin_fraction=0.0, reward_scale=10.0, drawdown_penalty=2.0)
    env = TradingEnv(synthetic_market(closes), "all", config)
    _, info = env.reset(options={"start": WARMUP_BARS})
    peak, total = info["equity"], 0.0
    for action in actions:
        before = info
        _, r, _, _, info = env.step(action)
        peak = max(peak, info["equity"])
        assert info["drawdown"] == pytest.approx(1.0 - info["equity"] / peak, abs=1e-12)
        expected = R.step_reward(
            before["equity"], info["equity"], before["drawdown"], info["drawdown"],
            initial_balance=config.initial_balance, reward_scale=10.0, drawdown_penalty=2.0,
        )
        assert r == expected
        total += r
    # Over an episode the equity terms add up to the total return (scaled): nothing else is paid
    # except the drawdown charges, which only ever subtract.
    assert total <= 10.0 * (info["equity"] / config.initial_balance - 1.0) + 1e-9

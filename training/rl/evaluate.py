"""Backtests: any policy (observation -> action) walked over a whole split, next to two baselines.

A backtest starts flat at the split's first tradable bar and steps the trading environment bar by
bar to the last one, with the environment's fees and slippage. Ruin does not stop it early (only an
account marked below zero ends it): the metrics describe the whole split.

Metrics (per bar returns r = E[t] / E[t-1] - 1 of the equity curve E, A = bars per year measured
from the data, see ``MarketData.bars_per_year``):

- ``total_return``: E[end] / E[0] - 1
- ``sharpe``: mean(r) / std(r) * sqrt(A) (sample std; 0.0 for a flat curve)
- ``sortino``: mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(A) (0.0 for a flat curve; None when there
  is no losing bar to measure downside with)
- ``max_drawdown``: the largest fall from a running peak, a positive fraction
- ``n_trades`` (orders that changed the position), ``fees_paid`` (account currency), ``bars`` (steps)

Baselines: buy-and-hold (LONG on the first bar, then nothing: one order) and a seeded uniformly
random policy.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from training.rl.actions import N_ACTIONS, Action
from training.rl.data import MarketData
from training.rl.env import EnvConfig, TradingEnv

Policy = Callable[[np.ndarray], int]
METRIC_KEYS = ("bars", "total_return", "sharpe", "sortino", "max_drawdown", "n_trades", "fees_paid")


@dataclasses.dataclass(frozen=True)
class BacktestResult:
    """One policy's walk over one split; ``equity_curve`` has bars + 1 values (account currency)."""

    dataset: str
    split: str
    bars: int
    total_return: float
    sharpe: float
    sortino: float | None
    max_drawdown: float
    n_trades: int
    fees_paid: float
    equity_curve: np.ndarray
    action_counts: dict[str, int]

    def metrics(self) -> dict[str, Any]:
        """The JSON-ready metrics (METRIC_KEYS)."""
        return {key: getattr(self, key) for key in METRIC_KEYS}


def backtest(
    policy: Policy, data: MarketData, split: str, config: EnvConfig | None = None, seed: int = 0
) -> BacktestResult:
    """Walk ``policy`` over every bar of ``split`` of ``data`` (deterministic for a deterministic policy)."""
    cfg = dataclasses.replace(config or EnvConfig(), episode_length=len(data), ruin_fraction=0.0)
    env = TradingEnv(data, split, cfg)
    split_data = env.universe.datasets[0]
    obs, info = env.reset(seed=seed, options={"start": split_data.first_bar})
    equity = [info["equity"]]
    counts = np.zeros(N_ACTIONS, dtype=np.int64)
    done = False
    while not done:
        action = int(policy(obs))
        counts[action] += 1
        obs, _, terminated, truncated, info = env.step(action)
        equity.append(info["equity"])
        done = terminated or truncated
    curve = np.array(equity)
    return BacktestResult(
        dataset=data.name,
        split=split,
        bars=len(curve) - 1,
        total_return=float(curve[-1] / curve[0] - 1.0),
        sharpe=sharpe_ratio(curve, split_data.bars_per_year),
        sortino=sortino_ratio(curve, split_data.bars_per_year),
        max_drawdown=max_drawdown(curve),
        n_trades=int(info["n_trades"]),
        fees_paid=float(info["fees"]),
        equity_curve=curve,
        action_counts={a.name: int(counts[a]) for a in Action},
    )


def _returns(curve: np.ndarray) -> np.ndarray:
    return curve[1:] / curve[:-1] - 1.0


def sharpe_ratio(curve: np.ndarray, bars_per_year: float) -> float:
    """Annualised Sharpe ratio of an equity curve (risk-free rate 0)."""
    r = _returns(curve)
    if len(r) < 2 or np.std(r) == 0.0:
        return 0.0
    return float(np.mean(r) / np.std(r, ddof=1) * math.sqrt(bars_per_year))


def sortino_ratio(curve: np.ndarray, bars_per_year: float) -> float | None:
    """Annualised Sortino ratio (target 0); None when no bar lost money but the curve rose."""
    r = _returns(curve)
    if len(r) == 0:
        return 0.0
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    mean = float(np.mean(r))
    if downside == 0.0:
        return 0.0 if mean <= 0.0 else None
    return mean / downside * math.sqrt(bars_per_year)


def max_drawdown(curve: np.ndarray) -> float:
    """Largest fall from a running peak, as a positive fraction of the peak."""
    return float(np.max(1.0 - curve / np.maximum.accumulate(curve)))


def buy_and_hold(data: MarketData, split: str, config: EnvConfig | None = None) -> BacktestResult:
    """LONG on the first bar (a full position), HOLD on every other: one order."""
    actions = itertools.chain([Action.LONG], itertools.repeat(Action.HOLD))
    return backtest(lambda obs: next(actions), data, split, config)


def random_policy(seed: int) -> Policy:
    """A uniformly random policy, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return lambda obs: int(rng.integers(N_ACTIONS))


def run_with_baselines(
    policy: Policy, data: MarketData, split: str, seed: int = 0, config: EnvConfig | None = None
) -> dict[str, BacktestResult]:
    """Backtests of ``policy``, buy-and-hold and ``random_policy(seed)``: keys policy, buy_and_hold, random."""
    return {
        "policy": backtest(policy, data, split, config, seed),
        "buy_and_hold": buy_and_hold(data, split, config),
        "random": backtest(random_policy(seed), data, split, config, seed),
    }


def report(results: dict[str, BacktestResult], model_version: str | None = None) -> dict[str, Any]:
    """The ``rlv3_evaluate --json`` object (CONTRACTS section 7) from run_with_baselines' results."""
    main = results["policy"]
    return {
        "dataset": main.dataset,
        "split": main.split,
        **main.metrics(),
        "model_version": model_version,
        "baselines": {name: results[name].metrics() for name in ("buy_and_hold", "random")},
    }


def evaluate_with_baselines(
    policy: Policy,
    data: MarketData,
    split: str,
    seed: int = 0,
    config: EnvConfig | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Backtest ``policy`` and the baselines; the dict of ``rlv3_evaluate --json``."""
    return report(run_with_baselines(policy, data, split, seed, config), model_version)

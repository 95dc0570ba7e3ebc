"""The reward: the one formula the environment (scalar and vectorised) uses.

For a step from bar t to bar t+1, with E the equity (cash + position marked at the close, so every
fee and slippage already paid is in it), E0 the episode's initial balance and D = 1 - E / peak(E)
the drawdown from the episode's equity peak:

    reward = reward_scale * ( (E[t+1] - E[t]) / E0  -  drawdown_penalty * max(D[t+1] - D[t], 0) )

- The equity term is the step's profit or loss net of fees and slippage, as a fraction of the initial
  balance (reward_scale 100 makes 1 % of the initial balance worth 1.0).
- The drawdown term charges each new deepening of the drawdown once more, so losses below a peak weigh
  more than gains; recovering earns the equity term only. Over an episode the charges add up to at
  least the maximum drawdown.
- ``drawdown_penalty`` defaults to 0.1 (EnvConfig): large enough that deepening losses cost extra,
  small enough that holding a position through ordinary noise still pays. At 0.5 PPO learnt never to
  trade on both bundled datasets; 0.1 was selected on the validation split (bench/tune_trading.py).
- There is no constant per-step term: a policy that never trades (HOLD from flat) keeps E constant and
  D at 0, and earns exactly 0.0 every step.

Only + - * / and max, so the formula gives identical results on Python floats and numpy arrays.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

Number = TypeVar("Number", float, np.ndarray)


def equity_term(equity_before: Number, equity_after: Number, initial_balance: float) -> Number:
    """Change in equity over the step (net of the fees and slippage paid in it) / initial balance."""
    return (equity_after - equity_before) / initial_balance


def drawdown_term(drawdown_before: Number, drawdown_after: Number) -> Number:
    """How much the drawdown (fraction below the equity peak) deepened over the step, else 0."""
    return np.fmax(drawdown_after - drawdown_before, 0.0)


def step_reward(
    equity_before: Number,
    equity_after: Number,
    drawdown_before: Number,
    drawdown_after: Number,
    *,
    initial_balance: float,
    reward_scale: float,
    drawdown_penalty: float,
) -> Number:
    """The step reward (see the module docstring); scalars or arrays of shape (n_envs,)."""
    return reward_scale * (
        equity_term(equity_before, equity_after, initial_balance)
        - drawdown_penalty * drawdown_term(drawdown_before, drawdown_after)
    )

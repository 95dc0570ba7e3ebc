"""The trading environment on real prices: accounting, actions, episodes.

One bar per step. At bar t the agent sees the observation built from the bar's market fields and its
account (:mod:`training.rl.features`), chooses an action (CONTRACTS section 3), the order fills at
bar t's close with slippage (buys above, sells below; EMERGENCY_FLATTEN pays ``emergency_slippage``
on top) and a fee of ``fee_rate`` times the traded notional, then the account is marked at bar t+1's
close and the reward is paid (:mod:`training.rl.reward`).

Accounting (average cost): ``cash``, ``position`` (signed units), ``entry`` (average fill price of the
open position), ``equity = cash + position * price``. ``realised_pnl`` is the price PnL of closed units
at their fill prices (gross of fees), ``fees`` the fees paid, ``slippage`` what the worse fills cost
against the close. At every step ``equity - initial_balance == realised_pnl + unrealised_pnl - fees``
and ``== sum of position * price change - fees - slippage``.

Actions:

- LONG: when flat or long, buy up to ``position_fraction`` of equity (fees included) and skip top-ups
  smaller than ``min_trade_fraction`` of that size; when short, close the short first and go long with
  the equity left. SHORT is the mirror. Both are ignored (HOLD) during a cool-down.
- REDUCE halves the position, realising PnL on the closed half; CLOSE closes it.
- EMERGENCY_FLATTEN closes everything at the worse fill and blocks LONG/SHORT for ``cooldown_bars``;
  from flat there is nothing to close and it blocks nothing (it acts as HOLD).

Episodes start flat at a random tradable bar of the split (seeded by ``reset(seed=...)``; with several
symbols, a random symbol too); they terminate on ruin (equity below ``ruin_fraction`` of the initial
balance) and are truncated after ``episode_length`` steps or at the last bar of the data.

The accounting is written once, on arrays (:class:`AccountBook`): the scalar :class:`TradingEnv` is a
book of one account, the vectorised environment (:mod:`training.rl.vec_env`) a book of N.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from training.rl import features, reward
from training.rl.actions import N_ACTIONS, Action
from training.rl.data import MarketData

# Long and short sizes are shrunk by this relative margin so rounding can never leave cash below 0.
_SIZE_MARGIN = 1.0 - 1e-9
_LONG, _SHORT, _REDUCE, _CLOSE, _FLATTEN = (
    int(Action.LONG),
    int(Action.SHORT),
    int(Action.REDUCE),
    int(Action.CLOSE),
    int(Action.EMERGENCY_FLATTEN),
)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Environment settings; money in account currency, rates as fractions (0.001 = 0.1 %)."""

    episode_length: int = 512  # steps (bars) before truncation
    initial_balance: float = 10_000.0
    position_fraction: float = 1.0  # of equity per full position, fees included; at most 1 (no leverage)
    fee_rate: float = 0.001  # of traded notional
    slippage: float = 0.0001  # fills this fraction worse than the close
    emergency_slippage: float = 0.001  # extra for EMERGENCY_FLATTEN
    cooldown_bars: int = 10  # bars without new entries after EMERGENCY_FLATTEN
    ruin_fraction: float = 0.5  # terminate when equity < this fraction of the initial balance
    min_trade_fraction: float = 0.01  # LONG/SHORT top-ups smaller than this fraction of a full size are skipped
    reward_scale: float = 100.0  # see training.rl.reward
    # Selected on the validation split (bench/tune_trading.py): at 0.5 the penalty outweighs
    # GOOGL's drift (always-LONG earns -41.8 per training episode) and PPO learns never to trade;
    # at 0.1 it trades and earns a positive validation Sharpe on seeds 0, 1 and 2.
    drawdown_penalty: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            "episode_length": self.episode_length >= 1,
            "initial_balance": 0 < self.initial_balance <= 1e9,
            "position_fraction": 0 < self.position_fraction <= 1,
            "fee_rate": 0 <= self.fee_rate < 0.1,
            "slippage": 0 <= self.slippage < 0.1,
            "emergency_slippage": 0 <= self.emergency_slippage < 0.1,
            "cooldown_bars": self.cooldown_bars >= 0,
            "ruin_fraction": 0 <= self.ruin_fraction < 1,
            "min_trade_fraction": 0 <= self.min_trade_fraction < 1,
            "reward_scale": self.reward_scale > 0,
            "drawdown_penalty": self.drawdown_penalty >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid EnvConfig value for {', '.join(bad)}: {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class MarketTable:
    """A split's market part, precomputed once: fields per bar and dims 0-43 (float64, (bars, 44))."""

    data: MarketData
    fields: dict[str, list]  # field name -> per-bar values (Python floats / regime strings)
    matrix: np.ndarray  # (bars, MARKET_DIM) float64; rows before data.first_bar are unused zeros
    sigma: np.ndarray  # (bars,) max(volatility, SIGMA_FLOOR)

    def fields_at(self, bar: int) -> dict[str, Any]:
        """The market observation fields of one bar (a valid input of validate_observation)."""
        return {name: values[bar] for name, values in self.fields.items()}


_TABLES: weakref.WeakKeyDictionary[MarketData, MarketTable] = weakref.WeakKeyDictionary()


def market_table(data: MarketData) -> MarketTable:
    """The precomputed market part of ``data`` (cached per MarketData object)."""
    table = _TABLES.get(data)
    if table is None:
        arrays = features.market_fields(data.times, data.open, data.high, data.low, data.close, data.volume)
        fields = {name: arrays[name].tolist() for name in features.MARKET_FIELDS}
        matrix = np.zeros((len(data), features.MARKET_DIM))
        for bar in range(data.first_bar, len(data)):
            # The same scalar function serving uses, so the two can never disagree.
            matrix[bar] = features.market_block({name: values[bar] for name, values in fields.items()})
        sigma = np.maximum(np.nan_to_num(arrays["volatility"]), features.SIGMA_FLOOR)
        table = MarketTable(data=data, fields=fields, matrix=matrix, sigma=sigma)
        _TABLES[data] = table
    return table


def _as_split(data: MarketData, split: str) -> MarketData:
    if data.split_name == split:
        return data
    return data.split(split)


class Universe:
    """One or more symbols' split data, concatenated so N accounts index one set of arrays."""

    def __init__(self, data: MarketData | Sequence[MarketData], split: str):
        items = [data] if isinstance(data, MarketData) else list(data)
        if not items:
            raise ValueError("no market data given")
        self.split = split
        self.datasets = [_as_split(d, split) for d in items]
        self.tables = [market_table(d) for d in self.datasets]
        sizes = np.array([len(d) for d in self.datasets])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.first = self.offsets + np.array([d.first_bar for d in self.datasets])
        self.last = self.offsets + sizes - 1  # the last bar can be marked, not traded from
        self.close = np.concatenate([d.close for d in self.datasets])
        self.matrix = np.concatenate([t.matrix for t in self.tables])
        self.sigma = np.concatenate([t.sigma for t in self.tables])

    @property
    def n_assets(self) -> int:
        return len(self.datasets)

    def draw_start(self, rng: np.random.Generator, options: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """(asset, global start bar): a random symbol and tradable bar, or ``options`` asset / start.

        ``options["start"]`` is a bar index of the symbol's split data (>= its first_bar).
        """
        options = options or {}
        asset = int(options["asset"]) if "asset" in options else int(rng.integers(self.n_assets)) if self.n_assets > 1 else 0
        if not 0 <= asset < self.n_assets:
            raise ValueError(f"asset must be 0-{self.n_assets - 1}, got {asset}")
        if "start" in options:
            start = int(self.offsets[asset] + options["start"])
            if not self.first[asset] <= start < self.last[asset]:
                raise ValueError(f"start must be a tradable bar of the split, got {options['start']}")
        else:
            start = int(rng.integers(self.first[asset], self.last[asset]))
        return asset, start


def _action_table(values: Mapping[Action, Any], default: Any, dtype: Any) -> np.ndarray:
    """A lookup array indexed by action code, so per-action choices cost one ``take``."""
    return np.array([values.get(a, default) for a in Action], dtype=dtype)


class AccountBook:
    """N trading accounts stepped together as float64 arrays: the environment's accounting.

    Written for speed at N = 16: each numpy call costs about a microsecond whatever its size, so
    choices are made by masks and lookup tables, not branches, and the count of calls is kept low.
    """

    INFO_KEYS = ("equity", "cash", "position", "realised_pnl", "unrealised_pnl", "fees", "slippage", "n_trades", "drawdown", "price")

    def __init__(self, universe: Universe, config: EnvConfig, n: int):
        self.universe = universe
        self.config = config
        self.n = n
        z = lambda: np.zeros(n)  # noqa: E731
        self.cash, self.position, self.entry, self.price = z(), z(), z(), z()
        self.realised, self.fees, self.slippage_paid = z(), z(), z()
        self.trades = np.zeros(n, dtype=np.int64)
        self.time_in_position, self.cooldown = z(), z()
        self.equity, self.peak, self.drawdown, self.episode_return = z(), z(), z(), z()
        self.bar = np.zeros(n, dtype=np.int64)
        self.start_bar = np.zeros(n, dtype=np.int64)
        self.end_bar = np.zeros(n, dtype=np.int64)  # truncation: episode length reached or last bar
        self.asset = np.zeros(n, dtype=np.int64)
        cfg = config
        s, f, frac = cfg.slippage, cfg.fee_rate, cfg.position_fraction * _SIZE_MARGIN
        # Per-action lookup tables. An entry (LONG +1, SHORT -1) first closes the other side, which
        # costs (1 + s)(1 + f) - 1 per unit of a short's value beyond the close, 1 - (1 - s)(1 - f)
        # of a long's; a full size is position_fraction of the equity left, fees included.
        self._entry_side = _action_table({Action.LONG: 1.0, Action.SHORT: -1.0}, 0.0, np.float64)
        self._close_cost = _action_table(
            {Action.LONG: (1.0 + s) * (1.0 + f) - 1.0, Action.SHORT: 1.0 - (1.0 - s) * (1.0 - f)}, 0.0, np.float64
        )
        self._units = _action_table(
            {Action.LONG: frac / ((1.0 + s) * (1.0 + f)), Action.SHORT: frac / ((1.0 - s) * (1.0 + f))}, 0.0, np.float64
        )
        # What is kept of the position: REDUCE half, CLOSE and EMERGENCY_FLATTEN none.
        self._kept = _action_table({Action.REDUCE: 0.5, Action.CLOSE: 0.0, Action.EMERGENCY_FLATTEN: 0.0}, 1.0, np.float64)
        self._cooldown_set = _action_table({Action.EMERGENCY_FLATTEN: float(cfg.cooldown_bars)}, 0.0, np.float64)
        self._slip = _action_table({Action.EMERGENCY_FLATTEN: s + cfg.emergency_slippage}, s, np.float64)
        f64 = np.float64
        self._keep = f64(1.0 - cfg.min_trade_fraction)
        self._fee_rate = f64(f)
        self._ruin = f64(cfg.ruin_fraction * cfg.initial_balance)
        self._zero, self._one = f64(0.0), f64(1.0)

    _STATE = ("cash", "position", "entry", "price", "realised", "fees", "slippage_paid", "trades", "time_in_position",
              "cooldown", "equity", "peak", "drawdown", "episode_return", "bar", "start_bar", "end_bar", "asset")

    def unshare(self) -> None:
        """Give the book fresh copies of its state arrays before reset_account writes into them, so
        arrays handed out earlier (info_arrays) keep their values."""
        for name in self._STATE:
            setattr(self, name, getattr(self, name).copy())

    def reset_account(self, i: int, asset: int, start: int) -> None:
        """Start account i flat at global bar ``start`` of ``asset`` (writes into the state arrays)."""
        balance = self.config.initial_balance
        for arr in (self.position, self.entry, self.realised, self.fees, self.slippage_paid, self.trades,
                    self.time_in_position, self.cooldown, self.drawdown, self.episode_return):
            arr[i] = 0.0
        self.cash[i] = self.equity[i] = self.peak[i] = balance
        self.asset[i], self.bar[i], self.start_bar[i] = asset, start, start
        self.end_bar[i] = min(start + self.config.episode_length, self.universe.last[asset])
        self.price[i] = self.universe.close[start]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Execute one action per account at the bar's close, advance one bar: (reward, terminated, truncated)."""
        cfg = self.config
        zero, one = self._zero, self._one
        price, pos, cash, entry = self.price, self.position, self.cash, self.entry

        # Target position (units) per action. Entries: the side asked for (0 when not an entry
        # or in a cool-down), sized from the equity left after closing the other side.
        want = self._entry_side.take(actions) * (self.cooldown <= zero)
        opposite = np.fmax(-want * (pos * price), zero)  # value of the other side's position
        size = np.fmax(self.equity - opposite * self._close_cost.take(actions), zero) * self._units.take(actions) / price
        # Enter or flip; top up only by more than min_trade_fraction of a full size.
        target = np.where(size * self._keep > want * pos, want * size, pos)
        target = target * self._kept.take(actions) + zero  # + 0 turns -0.0 into 0.0

        # Fill at the close, slippage against us, fee on the traded notional.
        delta = target - pos
        slip = self._slip.take(actions)
        fill = price * (one + np.sign(delta) * slip)
        traded = np.abs(delta)
        fee = traded * fill * self._fee_rate
        side = np.sign(pos)
        same_side = side * np.sign(target) > zero
        held = np.abs(pos)
        closed = np.fmin(traded, held) * (pos * delta < zero)  # units of the old position closed
        opened = traded - closed
        self.realised = self.realised + closed * side * (fill - entry)
        # Average entry price when adding; the fill for a new position; kept when reducing
        # (meaningless when flat: the unrealised PnL of no position is 0 whatever it is).
        added = (held * entry + opened * fill) / (held + opened + 1e-300)
        self.entry = np.where(same_side, np.where(opened > zero, added, entry), fill)
        self.cash = cash - delta * fill - fee
        self.position = target
        # Rebound, not updated in place: info arrays handed out earlier never change under the caller.
        self.fees = self.fees + fee
        self.slippage_paid = self.slippage_paid + traded * price * slip
        self.trades = self.trades + (delta != zero)
        self.time_in_position *= same_side
        # Count down; EMERGENCY_FLATTEN of a position (re)starts the cool-down (cooldown_bars > anything
        # counted down). From flat it closes nothing and blocks nothing: were it to block entries, a
        # policy could learn to call it every bar and never trade (it did, on GOOGL, for some seeds).
        self.cooldown = np.fmax(self.cooldown - one, self._cooldown_set.take(actions) * (pos != zero))

        # Advance one bar and mark to market.
        self.bar += 1
        self.price = self.universe.close.take(self.bar)
        equity_before, drawdown_before = self.equity, self.drawdown
        self.equity = self.cash + target * self.price
        self.peak = np.fmax(self.peak, self.equity)
        self.drawdown = one - self.equity / self.peak
        self.time_in_position += target != zero
        r = reward.step_reward(
            equity_before,
            self.equity,
            drawdown_before,
            self.drawdown,
            initial_balance=cfg.initial_balance,
            reward_scale=cfg.reward_scale,
            drawdown_penalty=cfg.drawdown_penalty,
        )
        self.episode_return = self.episode_return + r
        terminated = self.equity < self._ruin
        truncated = (self.bar >= self.end_bar) & ~terminated
        return r, terminated, truncated

    @property
    def steps(self) -> np.ndarray:
        """Steps taken in the current episodes, (n,)."""
        return self.bar - self.start_bar

    def account_state(self, rows: np.ndarray | slice | int = slice(None)) -> dict[str, Any]:
        """The account state of ``rows``: the keyword arguments of features.position_fields."""
        return {
            "price": self.price[rows],
            "position": self.position[rows],
            "cash": self.cash[rows],
            "entry_price": self.entry[rows],
            "time_in_position": self.time_in_position[rows],
            "peak_equity": self.peak[rows],
            "cooldown": self.cooldown[rows],
        }

    def position_fields(self, rows: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
        """The position observation fields of the accounts (arrays), same formula as serving."""
        return features.position_fields(**self.account_state(rows), ops=features.ARRAY_OPS)

    def observe(self, out: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Write the (len(rows), 64) float32 observations of ``rows`` into ``out``."""
        bars = self.bar[rows]
        market = self.universe.matrix.take(bars, axis=0)
        fields = self.position_fields(rows)
        block = features.position_block(fields, self.universe.sigma.take(bars), features.ARRAY_OPS)
        m, p = features.MARKET_DIM, features.MARKET_DIM + len(block)
        out[:, :m] = market
        out[:, m:p] = np.array(block).T
        out[:, p:] = fields["position_side"][:, None] * market.take(features.CROSS_DIMS, axis=1)
        return out

    def info_arrays(self) -> dict[str, np.ndarray]:
        """Per-account accounting: equity, cash, position (units), realised / unrealised PnL, fees,
        slippage, n_trades, drawdown, price. Read-only views of the current state: step() rebinds
        these arrays rather than changing them, only reset_account() writes into the current ones."""
        return {
            "equity": self.equity,
            "cash": self.cash,
            "position": self.position,
            "realised_pnl": self.realised,
            "unrealised_pnl": self.position * (self.price - self.entry),
            "fees": self.fees,
            "slippage": self.slippage_paid,
            "n_trades": self.trades,
            "drawdown": self.drawdown,
            "price": self.price,
        }

    def observation_fields(self, i: int) -> dict[str, Any]:
        """Account i's full observation fields, computed the serving way (Python floats)."""
        asset = int(self.asset[i])
        table = self.universe.tables[asset]
        local_bar = int(self.bar[i] - self.universe.offsets[asset])
        account = {key: float(value) for key, value in self.account_state(i).items()}
        return features.state_to_observation(table.fields_at(local_bar), **account)


def observation_space() -> gym.spaces.Box:
    bound = features.FEATURE_BOUND
    return gym.spaces.Box(low=-bound, high=bound, shape=(features.FEATURE_DIM,), dtype=np.float32)


class TradingEnv(gym.Env):
    """Gymnasium environment trading one account on real prices (see the module docstring).

    ``data``: one MarketData or a list (multi-asset: each reset draws a symbol); ``split``: which
    chronological split to trade. ``reset(options={"asset": i, "start": bar})`` pins the episode start.
    """

    metadata = {"render_modes": []}

    def __init__(self, data: MarketData | Sequence[MarketData], split: str = "train", config: EnvConfig | None = None):
        self.config = config or EnvConfig()
        self.universe = Universe(data, split)
        self.book = AccountBook(self.universe, self.config, 1)
        self.observation_space = observation_space()
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._obs = np.zeros((1, features.FEATURE_DIM), dtype=np.float32)
        self._action = np.zeros(1, dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        asset, start = self.universe.draw_start(self.np_random, options)
        self.book.reset_account(0, asset, start)
        return self._observation(), self._info()

    def step(self, action: int):
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < N_ACTIONS:
            raise ValueError(f"invalid action {action!r}; expected an integer 0-{N_ACTIONS - 1}")
        self._action[0] = action
        r, terminated, truncated = self.book.step(self._action)
        return self._observation(), float(r[0]), bool(terminated[0]), bool(truncated[0]), self._info()

    def observation_fields(self) -> dict[str, Any]:
        """The current observation as fields (what serving would receive for this state)."""
        return self.book.observation_fields(0)

    def _observation(self) -> np.ndarray:
        return self.book.observe(self._obs)[0].copy()

    def _info(self) -> dict[str, Any]:
        info = {key: value[0].item() for key, value in self.book.info_arrays().items()}
        info["symbol"] = self.universe.datasets[int(self.book.asset[0])].symbol
        info["bar"] = int(self.book.bar[0] - self.universe.offsets[self.book.asset[0]])
        info["time"] = self.universe.datasets[int(self.book.asset[0])].times[info["bar"]]
        return info

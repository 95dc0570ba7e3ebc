"""The trading environment: accounting identities (hypothesis), action semantics, episodes, features."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rl.conftest import synthetic_market
from training.rl import features as F
from training.rl.actions import N_ACTIONS, Action
from training.rl.env import EnvConfig, TradingEnv
from training.rl.features import WARMUP_BARS

E0 = 10_000.0


def _pinned_env(closes, config=None):
    """An environment on a synthetic path whose episode starts flat at the first of ``closes``."""
    env = TradingEnv(synthetic_market(closes), split="all", config=config or EnvConfig(episode_length=10_000))
    obs, info = env.reset(seed=0, options={"start": WARMUP_BARS})
    assert info["price"] == closes[0]
    return env, obs, info


configs = st.builds(
    EnvConfig,
    episode_length=st.just(10_000),
    position_fraction=st.floats(0.05, 1.0),
    fee_rate=st.sampled_from([0.0, 0.001, 0.0075]),
    slippage=st.sampled_from([0.0, 0.0001, 0.002]),
    emergency_slippage=st.sampled_from([0.0, 0.001, 0.01]),
    cooldown_bars=st.integers(0, 4),
    ruin_fraction=st.just(0.0),
    min_trade_fraction=st.sampled_from([0.0, 0.01, 0.2]),
)


@st.composite
def paths_and_actions(draw):
    returns = draw(st.lists(st.floats(-0.15, 0.15), min_size=1, max_size=40))
    closes = 100.0 * np.cumprod(np.concatenate([[1.0], 1.0 + np.array(returns)]))
    actions = draw(st.lists(st.integers(0, N_ACTIONS - 1), min_size=len(returns), max_size=len(returns)))
    return closes, actions


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths_and_actions(), configs)
def test_accounting_identities_hold_for_any_actions_and_prices(path_actions, config):
    closes, actions = path_actions
    env, _, info = _pinned_env(closes, config)
    s, fee_rate = config.slippage, config.fee_rate
    mark_to_market = 0.0  # sum of position * price change
    cooldown = 0
    for action in actions:
        before = info
        p = before["price"]
        _, reward, terminated, truncated, info = env.step(action)
        pos0, pos1 = before["position"], info["position"]
        scale = E0 + abs(pos0) * p + abs(pos1) * info["price"]
        tol = 1e-9 * scale

        # equity = cash + position value, at every step.
        assert info["equity"] == pytest.approx(info["cash"] + pos1 * info["price"], abs=tol)
        # Nothing is created or destroyed beyond PnL and costs, counted two independent ways.
        assert info["equity"] - E0 == pytest.approx(info["realised_pnl"] + info["unrealised_pnl"] - info["fees"], abs=tol)
        mark_to_market += pos1 * (info["price"] - p)
        assert info["equity"] - E0 == pytest.approx(mark_to_market - info["fees"] - info["slippage"], abs=tol)
        assert info["cash"] >= 0.0  # no borrowing: a full long spends at most the equity, fees included

        # Costs of this step's order.
        traded = abs(pos1 - pos0)
        extra = config.emergency_slippage if action == Action.EMERGENCY_FLATTEN else 0.0
        fill = p * (1.0 + np.sign(pos1 - pos0) * (s + extra))
        assert info["fees"] - before["fees"] == pytest.approx(fee_rate * traded * fill, abs=tol)
        assert info["slippage"] - before["slippage"] == pytest.approx(traded * p * (s + extra), abs=tol)
        assert info["n_trades"] - before["n_trades"] == (pos1 != pos0)

        # Action semantics (CONTRACTS section 3).
        if action == Action.HOLD:
            assert pos1 == pos0 and info["cash"] == before["cash"]
        elif action in (Action.CLOSE, Action.EMERGENCY_FLATTEN):
            assert pos1 == 0.0 and info["unrealised_pnl"] == 0.0
        elif action == Action.REDUCE:
            assert pos1 == pos0 / 2
            # Half the position's PnL at the fill price is realised: half of the PnL at the close
            # minus the slippage on the half that was sold (or bought back).
            half_pnl = 0.5 * before["unrealised_pnl"] - 0.5 * abs(pos0) * p * s
            assert info["realised_pnl"] - before["realised_pnl"] == pytest.approx(half_pnl, abs=tol)
        elif cooldown > 0:
            assert pos1 == pos0  # entries blocked after EMERGENCY_FLATTEN
        elif action in (Action.LONG, Action.SHORT):
            sign = 1.0 if action == Action.LONG else -1.0
            if sign * pos0 < 0:
                assert sign * pos1 >= 0  # the other side is closed first
            # Equity available for the new side: after closing the other side, costs included.
            close_cost = (1 + s) * (1 + fee_rate) - 1 if sign > 0 else 1 - (1 - s) * (1 - fee_rate)
            available = before["equity"] - max(-sign * pos0, 0.0) * p * close_cost
            if pos1 != pos0 and available > 0:
                # Sized to position_fraction of it, fees included.
                cost = abs(pos1) * fill * (1 + fee_rate)
                assert cost == pytest.approx(config.position_fraction * available, rel=1e-6)
            elif pos1 == pos0:
                assert sign * pos0 > 0 or available <= 0  # already at size: a top-up only when it is worth it

        flattened = action == Action.EMERGENCY_FLATTEN and pos0 != 0.0
        cooldown = config.cooldown_bars if flattened else max(cooldown - 1, 0)
        if terminated or truncated:
            break


@pytest.mark.parametrize("opening", [Action.LONG, Action.SHORT])
@pytest.mark.parametrize("closing", [Action.CLOSE, Action.EMERGENCY_FLATTEN])
def test_round_trip_at_an_unchanged_price_loses_exactly_fees_and_slippage(opening, closing):
    config = EnvConfig(fee_rate=0.001, slippage=0.0002, emergency_slippage=0.003)
    p = 100.0
    env, _, _ = _pinned_env([p] * 5, config)
    _, r1, *_, opened = env.step(opening)
    _, r2, *_, info = env.step(closing)
    sign = 1.0 if opening == Action.LONG else -1.0
    s_in = config.slippage
    s_out = config.slippage + (config.emergency_slippage if closing == Action.EMERGENCY_FLATTEN else 0.0)
    q = abs(opened["position"])
    fill_in, fill_out = p * (1 + sign * s_in), p * (1 - sign * s_out)
    fees = config.fee_rate * q * (fill_in + fill_out)
    slippage = q * p * (s_in + s_out)
    assert info["position"] == 0.0
    assert info["fees"] == pytest.approx(fees, rel=1e-12)
    assert info["slippage"] == pytest.approx(slippage, rel=1e-12)
    assert E0 - info["equity"] == pytest.approx(fees + slippage, rel=1e-12)
    assert info["realised_pnl"] == pytest.approx(-slippage, rel=1e-12)
    # The full position was about all the equity.
    assert q * fill_in * (1 + config.fee_rate) == pytest.approx(E0, rel=1e-8)


def test_reduce_realises_half_and_keeps_the_entry():
    config = EnvConfig(fee_rate=0.0, slippage=0.0)
    env, *_ = _pinned_env([100.0, 110.0, 120.0, 120.0], config)
    _, _, _, _, info = env.step(Action.LONG)  # buys at 100, marked at 110
    q = info["position"]
    assert info["unrealised_pnl"] == pytest.approx(10.0 * q)
    _, _, _, _, info = env.step(Action.REDUCE)  # sells half at 110, marked at 120
    assert info["position"] == q / 2
    assert info["realised_pnl"] == pytest.approx(5.0 * q)
    assert info["unrealised_pnl"] == pytest.approx(10.0 * q)  # the other half, entry still 100
    _, _, _, _, info = env.step(Action.CLOSE)  # the rest at 120
    assert info["realised_pnl"] == pytest.approx(5.0 * q + 10.0 * q)
    assert info["equity"] == pytest.approx(E0 + 15.0 * q)


def test_long_while_short_closes_the_short_first_then_goes_long():
    config = EnvConfig(fee_rate=0.0, slippage=0.0)
    env, *_ = _pinned_env([100.0, 90.0, 90.0, 90.0], config)
    _, _, _, _, info = env.step(Action.SHORT)  # short at 100, marked at 90
    q = -info["position"]
    assert q * 100.0 == pytest.approx(E0 * (1 - 1e-9))
    _, _, _, _, info = env.step(Action.LONG)  # buy back at 90, then long with all the equity
    assert info["realised_pnl"] == pytest.approx(10.0 * q)
    assert info["position"] * 90.0 == pytest.approx(info["equity"], rel=1e-8)
    assert info["n_trades"] == 2  # one order each: the short, then the flip


def test_long_when_already_long_only_tops_up_to_the_configured_size():
    config = EnvConfig(fee_rate=0.0, slippage=0.0, position_fraction=0.5)
    env, *_ = _pinned_env([100.0, 100.0, 100.0, 50.0, 50.0], config)
    _, _, _, _, info = env.step(Action.LONG)
    q = info["position"]
    _, _, _, _, info = env.step(Action.LONG)  # already at size: nothing
    assert info["position"] == q and info["n_trades"] == 1
    _, _, _, _, info = env.step(Action.REDUCE)
    _, _, _, _, info = env.step(Action.LONG)  # back up to half the equity at the new price
    assert info["position"] * 50.0 == pytest.approx(0.5 * info["equity"], rel=1e-8)


def test_emergency_flatten_blocks_entries_for_the_cooldown():
    config = EnvConfig(cooldown_bars=3)
    env, *_ = _pinned_env([100.0] * 10, config)
    env.step(Action.LONG)
    _, _, _, _, info = env.step(Action.EMERGENCY_FLATTEN)
    assert info["position"] == 0.0
    for action in (Action.LONG, Action.SHORT, Action.LONG):  # three bars of cool-down
        obs, _, _, _, info = env.step(action)
        assert info["position"] == 0.0
    assert env.observation_fields()["cooldown_remaining"] == 0.0
    _, _, _, _, info = env.step(Action.SHORT)
    assert info["position"] < 0.0


def test_emergency_flatten_from_flat_acts_as_hold_and_blocks_nothing():
    config = EnvConfig(cooldown_bars=3)
    env, *_ = _pinned_env([100.0] * 10, config)
    _, reward, _, _, info = env.step(Action.EMERGENCY_FLATTEN)
    assert info["position"] == 0.0 and info["fees"] == 0.0 and info["n_trades"] == 0 and reward == 0.0
    assert env.observation_fields()["cooldown_remaining"] == 0.0
    _, _, _, _, info = env.step(Action.LONG)  # the next bar: entries are open
    assert info["position"] > 0.0


def test_never_trading_earns_exactly_zero_every_step(googl):
    env = TradingEnv(googl, "train")
    env.reset(seed=11)
    for _ in range(600):
        _, reward, terminated, truncated, info = env.step(Action.HOLD)
        assert reward == 0.0 and info["equity"] == E0
        if terminated or truncated:
            break
    assert truncated and not terminated


def test_losing_half_the_equity_terminates_the_episode():
    env, *_ = _pinned_env([100.0, 80.0, 60.0, 40.0, 30.0, 30.0])
    terminated = False
    steps = 0
    while not terminated:
        _, _, terminated, truncated, info = env.step(Action.LONG)
        steps += 1
        assert not truncated
    assert steps == 3 and info["equity"] < 0.5 * E0


def test_episodes_truncate_at_the_episode_length_and_at_the_end_of_data(googl):
    env = TradingEnv(googl, "test", EnvConfig(episode_length=7))
    env.reset(seed=0)
    results = [env.step(Action.HOLD)[3] for _ in range(7)]
    assert results == [False] * 6 + [True]
    last_start = len(googl.split("test")) - 3
    env.reset(options={"start": last_start})
    assert [env.step(Action.HOLD)[3] for _ in range(2)] == [False, True]


def test_starts_are_random_but_seeded_and_within_the_split(googl):
    env = TradingEnv(googl, "validation")
    starts = [env.reset(seed=seed)[1]["bar"] for seed in range(30)]
    assert starts == [env.reset(seed=seed)[1]["bar"] for seed in range(30)]
    assert len(set(starts)) > 20
    split = googl.split("validation")
    assert all(split.first_bar <= b < len(split) - 1 for b in starts)
    with pytest.raises(ValueError, match="tradable bar"):
        env.reset(options={"start": 0})  # warm-up history is never traded


def test_multi_asset_episodes_draw_every_symbol(eurusd, googl):
    env = TradingEnv([eurusd, googl], "train")
    symbols = [env.reset(seed=seed)[1]["symbol"] for seed in range(20)]
    assert set(symbols) == {"EURUSD", "GOOGL"}
    _, info = env.reset(options={"asset": 1, "start": WARMUP_BARS})
    assert info["symbol"] == "GOOGL" and info["price"] == googl.close[WARMUP_BARS]


def test_check_env_passes_without_warnings(googl):
    env = TradingEnv(googl, "train")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert [str(w.message) for w in caught] == []
    assert env.action_space.n == N_ACTIONS == 6
    assert env.observation_space.shape == (64,) and env.observation_space.dtype == np.float32
    for bad in (6, -1, 1.5, True, "LONG"):
        with pytest.raises(ValueError, match="invalid action"):
            env.step(bad)


def test_info_carries_the_accounting(googl):
    env = TradingEnv(googl, "train")
    _, info = env.reset(seed=1)
    for key in ("equity", "cash", "position", "realised_pnl", "unrealised_pnl", "fees", "slippage", "n_trades", "drawdown", "price", "symbol", "bar", "time"):
        assert key in info
    assert (info["equity"], info["cash"], info["position"], info["n_trades"]) == (E0, E0, 0.0, 0)


def _random_rollout(data, seed):
    """Walk the whole dataset with a random policy; check every observation against the fields path."""
    env = TradingEnv(data, "all", EnvConfig(episode_length=len(data), ruin_fraction=0.0))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed, options={"start": data.first_bar})
    seen = [obs]
    done = False
    while not done:
        fields = F.validate_observation(env.observation_fields())
        assert np.array_equal(F.observation_to_vector(fields), obs), env.observation_fields()
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(N_ACTIONS)))
        seen.append(obs)
        done = terminated or truncated
    return np.array(seen)


def test_env_observations_equal_the_serving_vector_and_no_dim_is_constant(bundled):
    """Acceptance: the vector from an env state equals, exactly, the vector from its fields; every dim
    varies over the dataset (market dims) and over a random-policy rollout (position dims)."""
    seen = _random_rollout(bundled, seed=5)
    assert len(seen) == bundled.tradable_bars
    constant = set(np.flatnonzero(seen.std(axis=0) == 0.0).tolist())
    if bundled.bar_seconds >= 86400:
        # Daily bars all close at the same time of day: dims 31-32 (sin / cos of time_of_day) carry
        # information only for intraday data, and are the only constant ones here.
        assert constant == {31, 32}
    else:
        assert constant == set()

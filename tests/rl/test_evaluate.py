"""Backtests and baselines: metrics on known paths, the rlv3_evaluate JSON shape, the PNG."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.rl.conftest import synthetic_market
from training.rl import evaluate as E
from training.rl.actions import Action
from training.rl.env import EnvConfig
from training.rl.plotting import plot_equity_curves

FREE = EnvConfig(fee_rate=0.0, slippage=0.0)


def test_buy_and_hold_on_a_known_path():
    closes = [100.0, 120.0, 90.0, 130.0, 117.0]
    data = synthetic_market(closes)
    result = E.buy_and_hold(data, "all", FREE)
    assert result.n_trades == 1 and result.fees_paid == 0.0
    assert result.bars == data.tradable_bars - 1 == len(result.equity_curve) - 1
    assert result.equity_curve[:5] == pytest.approx([10_000.0, 12_000.0, 9_000.0, 13_000.0, 11_700.0], rel=1e-8)
    assert result.total_return == pytest.approx(0.17, rel=1e-7)  # the path is padded flat at 117
    assert result.max_drawdown == pytest.approx(0.25, rel=1e-7)  # 120 -> 90
    assert result.action_counts["LONG"] == 1 and result.action_counts["HOLD"] == result.bars - 1


def test_buy_and_hold_pays_one_fee():
    data = synthetic_market([100.0] * 30)
    config = EnvConfig(fee_rate=0.001, slippage=0.0)
    result = E.buy_and_hold(data, "all", config)
    assert result.n_trades == 1
    assert result.fees_paid == pytest.approx(10_000.0 * 0.001 / 1.001, rel=1e-6)
    assert result.total_return == pytest.approx(-result.fees_paid / 10_000.0, rel=1e-9)


def test_a_policy_that_never_trades_has_flat_metrics(googl):
    result = E.backtest(lambda obs: Action.HOLD, googl, "test")
    assert result.total_return == 0.0 and result.sharpe == 0.0 and result.sortino == 0.0
    assert result.max_drawdown == 0.0 and result.n_trades == 0 and result.fees_paid == 0.0
    assert result.bars == googl.split("test").tradable_bars - 1
    assert np.all(result.equity_curve == 10_000.0)


def test_sharpe_and_sortino_annualise_with_the_bar_frequency():
    curve = 100.0 * np.cumprod([1.0, 1.02, 0.99, 1.01, 0.98, 1.03, 1.0])
    r = curve[1:] / curve[:-1] - 1.0
    per_year = 252.0
    assert E.sharpe_ratio(curve, per_year) == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252.0))
    downside = math.sqrt(np.mean(np.minimum(r, 0.0) ** 2))
    assert E.sortino_ratio(curve, per_year) == pytest.approx(r.mean() / downside * math.sqrt(252.0))
    # Hourly bars at ~6,200 a year scale the same per-bar ratio by sqrt(6200 / 252).
    assert E.sharpe_ratio(curve, 6200.0) == pytest.approx(E.sharpe_ratio(curve, 252.0) * math.sqrt(6200.0 / 252.0))
    assert E.sortino_ratio(np.array([1.0, 1.1, 1.2]), 252.0) is None  # no losing bar: undefined
    assert E.max_drawdown(np.array([1.0, 2.0, 1.0, 3.0, 1.5])) == pytest.approx(0.5)


def test_backtest_annualises_with_the_data_s_bars_per_year(googl):
    result = E.buy_and_hold(googl, "test")
    r = np.diff(result.equity_curve) / result.equity_curve[:-1]
    expected = r.mean() / r.std(ddof=1) * math.sqrt(googl.split("test").bars_per_year)
    assert result.sharpe == pytest.approx(expected)


def test_random_baseline_is_reproducible_from_its_seed(googl):
    a = E.backtest(E.random_policy(7), googl, "validation")
    b = E.backtest(E.random_policy(7), googl, "validation")
    c = E.backtest(E.random_policy(8), googl, "validation")
    assert np.array_equal(a.equity_curve, b.equity_curve) and a.action_counts == b.action_counts
    assert not np.array_equal(a.equity_curve, c.equity_curve)
    assert a.n_trades > 5


def test_evaluate_with_baselines_has_the_rlv3_evaluate_json_keys(googl):
    result = E.evaluate_with_baselines(lambda obs: Action.HOLD, googl, "test", seed=3, model_version="7")
    keys = {"dataset", "split", "bars", "total_return", "sharpe", "sortino", "max_drawdown", "n_trades", "fees_paid"}
    assert set(result) == keys | {"model_version", "baselines"}
    assert (result["dataset"], result["split"], result["model_version"]) == ("googl_1d", "test", "7")
    assert set(result["baselines"]) == {"buy_and_hold", "random"}
    for baseline in result["baselines"].values():
        assert set(baseline) == keys - {"dataset", "split"}
    assert result["baselines"]["buy_and_hold"]["n_trades"] == 1
    assert result["baselines"]["buy_and_hold"]["total_return"] == pytest.approx(
        googl.close[-1] / googl.split("test").close[googl.split("test").first_bar] - 1.0, abs=0.003
    )
    json.loads(json.dumps(result))  # plain JSON


def test_equity_curves_are_drawn_to_a_png(tmp_path):
    path = plot_equity_curves(
        {"policy": np.linspace(1e4, 1.1e4, 50), "buy_and_hold": np.linspace(1e4, 0.9e4, 50)},
        tmp_path / "curve.png",
        "googl_1d test",
    )
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

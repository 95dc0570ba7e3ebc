"""Fixtures for the trading-environment tests: the bundled datasets and synthetic price paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.rl.data import MIN_BARS, MarketData, load_dataset
from training.rl.features import WARMUP_BARS

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def eurusd() -> MarketData:
    return load_dataset("eurusd_1h")


@pytest.fixture(scope="session")
def googl() -> MarketData:
    return load_dataset("googl_1d")


@pytest.fixture(scope="session", params=["eurusd_1h", "googl_1d"])
def bundled(request) -> MarketData:
    return load_dataset(request.param)


def synthetic_market(closes, *, spread: float = 0.001, symbol: str = "SYN") -> MarketData:
    """Hourly bars with the given closes after WARMUP_BARS bars of gentle history.

    Open = previous close, high / low a ``spread`` fraction around the bar. The first close of
    ``closes`` is the price at ``first_bar``, where episodes pinned with start=first_bar begin; short
    paths are padded with the last close up to the minimum dataset length.
    """
    closes = np.asarray(closes, dtype=np.float64)
    history = closes[0] * (1.0 + 0.001 * np.sin(np.arange(WARMUP_BARS) / 3.0))
    padding = np.full(max(MIN_BARS - WARMUP_BARS - len(closes), 0), closes[-1])
    close = np.concatenate([history, closes, padding])
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1.0 + spread)
    low = np.minimum(open_, close) * (1.0 - spread)
    times = np.datetime64("2024-01-01T00:00") + np.arange(len(close)) * np.timedelta64(1, "h")
    volume = np.full(len(close), 100.0)
    return MarketData.from_arrays(symbol, times, open_, high, low, close, volume)

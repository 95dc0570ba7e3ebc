"""market.data_updated: bars recorded and aggregated, and signals completed from recorded prices."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from decisions.models import Decision, MarketBar
from decisions.streams import codec
from decisions.streams.history import FILLED_FIELDS, MarketHistory
from training.rl.features import market_fields

from .stream_helpers import dead_letters, drain, publish

MARKET = codec.MARKET_DATA_UPDATED


def _tick(client, symbol, price, at: datetime, **extra):
    return publish(client, MARKET, {"symbol": symbol, "price": price, "timestamp": at.isoformat(), **extra})


@pytest.mark.django_db
def test_ticks_are_aggregated_into_bars_and_upserted_across_batches(redis_client, stream_prefix, settings):
    settings.RLV3_BAR_SECONDS = 60
    t0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    _tick(redis_client, "BTCUSDT", 100.0, t0 + timedelta(seconds=1), volume=1.5)
    _tick(redis_client, "BTCUSDT", 104.0, t0 + timedelta(seconds=20), volume=2.0)
    _tick(redis_client, "BTCUSDT", 99.0, t0 + timedelta(seconds=40))  # no volume: counts as 0
    _tick(redis_client, "BTCUSDT", 101.0, t0 + timedelta(seconds=61), volume=1.0)
    _tick(redis_client, "ETHUSDT", 3000.0, t0 + timedelta(seconds=5), high=3010.0, low=2990.0, volume=4.0)
    drain()

    first = MarketBar.objects.get(symbol="BTCUSDT", time=t0)
    assert (first.open, first.high, first.low, first.close, first.volume, first.ticks) == (100.0, 104.0, 99.0, 99.0, 3.5, 3)
    second = MarketBar.objects.get(symbol="BTCUSDT", time=t0 + timedelta(minutes=1))
    assert (second.open, second.close, second.ticks, second.interval_seconds) == (101.0, 101.0, 1, 60)
    eth = MarketBar.objects.get(symbol="ETHUSDT")
    assert (eth.high, eth.low, eth.close) == (3010.0, 2990.0, 3000.0)

    # A later batch with a late tick of the first bar widens it instead of adding a second row.
    _tick(redis_client, "BTCUSDT", 106.0, t0 + timedelta(seconds=50), volume=0.5)
    drain()
    first.refresh_from_db()
    assert (first.open, first.high, first.low, first.close, first.volume, first.ticks) == (100.0, 106.0, 99.0, 106.0, 4.0, 4)
    assert MarketBar.objects.filter(symbol="BTCUSDT").count() == 2


@pytest.mark.django_db
def test_bad_market_data_is_dead_lettered(redis_client, stream_prefix):
    good = publish(redis_client, MARKET, {"symbol": "BTCUSDT", "price": 100.0})
    bad = publish(redis_client, MARKET, {"symbol": "BTCUSDT", "price": -1})
    drain()
    assert MarketBar.objects.get().close == 100.0
    (letter,) = dead_letters(redis_client)
    assert letter.entry_id == bad and letter.error == "price: must be greater than 0, got -1" and good


@pytest.mark.django_db
def test_signals_missing_market_fields_are_completed_from_recorded_prices(redis_client, stream_prefix, settings):
    settings.RLV3_BAR_SECONDS = 60
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    closes = [100.0 * (1 + 0.001 * ((i * 7) % 5 - 2)) for i in range(30)]
    for i, close in enumerate(closes):  # one tick per minute, the last one in the current minute
        _tick(redis_client, "BTCUSDT", close, now - timedelta(minutes=29 - i) + timedelta(seconds=1))
    plain = publish(redis_client, codec.SIGNAL_GENERATED, {"symbol": "BTCUSDT", "rsi": 50})
    explicit = publish(redis_client, codec.SIGNAL_GENERATED, {"symbol": "BTCUSDT", "price_change_1m": 0.05, "volatility": 0.3})
    other = publish(redis_client, codec.SIGNAL_GENERATED, {"symbol": "ETHUSDT"})
    drain()

    obs = {d.stream_entry_id: d.observation for d in Decision.objects.all()}
    returns = np.diff(closes[-21:]) / np.array(closes[-21:-1])
    assert obs[plain]["price_change_1m"] == pytest.approx(closes[-1] / closes[-2] - 1, rel=1e-12)
    assert obs[plain]["price_change_5m"] == pytest.approx(closes[-1] / closes[-6] - 1, rel=1e-12)
    assert obs[plain]["price_change_15m"] == pytest.approx(closes[-1] / closes[-16] - 1, rel=1e-12)
    assert obs[plain]["volatility"] == pytest.approx(float(np.std(returns, ddof=1)), rel=1e-9)
    assert obs[plain]["price_change_1h"] == 0.0  # 30 minutes of history: not derivable, default kept
    # Explicit fields win; the others are still completed.
    assert (obs[explicit]["price_change_1m"], obs[explicit]["volatility"]) == (0.05, 0.3)
    assert obs[explicit]["price_change_5m"] == obs[plain]["price_change_5m"]
    # No market data for the symbol: defaults, nothing borrowed from another symbol.
    assert (obs[other]["price_change_1m"], obs[other]["volatility"]) == (0.0, 0.02)


@pytest.mark.django_db
def test_a_fresh_subscriber_completes_signals_from_recorded_bars(redis_client, stream_prefix, settings):
    settings.RLV3_BAR_SECONDS = 60
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for i in range(6):
        MarketBar.objects.create(symbol="SOLUSDT", time=now - timedelta(minutes=5 - i), interval_seconds=60,
                                 open=10.0, high=20.0, low=5.0, close=10.0 + i)
    entry = publish(redis_client, codec.SIGNAL_GENERATED, {"symbol": "SOLUSDT"})
    drain()
    assert Decision.objects.get(stream_entry_id=entry).observation["price_change_5m"] == pytest.approx(15.0 / 10.0 - 1)


def test_stale_history_is_not_used():
    history = MarketHistory(bar_seconds=60, max_age_seconds=300)
    start = time.time() - 3600
    for i in range(30):
        history.add("BTCUSDT", start + 60 * i, 100.0 + i)
    assert history.fields("BTCUSDT", start + 60 * 29 + 10)["price_change_1m"] == pytest.approx(129 / 128 - 1)
    assert history.fields("BTCUSDT", start + 60 * 29 + 301) == {}


def test_history_fields_match_the_feature_function_on_one_minute_bars():
    """The subscriber's derived fields are exactly features.market_fields' definitions."""
    rng = np.random.default_rng(3)
    n = 400
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    times = np.datetime64("2025-01-01T00:00") + np.arange(n) * np.timedelta64(60, "s")
    expected = market_fields(times, close, close * 1.001, close * 0.999, close, np.ones(n))
    history = MarketHistory(bar_seconds=60)
    epoch = times.astype("datetime64[s]").astype(np.int64)
    for t, c in zip(epoch, close):
        history.add("X", float(t), float(c))
    got = history.fields("X", float(epoch[-1]))
    assert set(got) == set(FILLED_FIELDS)
    for name in FILLED_FIELDS:
        assert got[name] == pytest.approx(float(expected[name][-1]), rel=1e-9, abs=1e-15), name


def test_gaps_carry_the_close_forward():
    history = MarketHistory(bar_seconds=60)
    history.add("X", 0.0, 100.0)
    history.add("X", 600.0, 110.0)  # nine bars without ticks in between
    fields = history.fields("X", 600.0)
    assert fields["price_change_1m"] == pytest.approx(0.1) and fields["price_change_5m"] == pytest.approx(0.1)
    history.add("X", 30.0, 50.0)  # a late tick of an old bar does not rewrite history
    assert history.fields("X", 600.0) == fields

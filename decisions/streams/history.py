"""Recent prices per symbol, kept by the subscriber to complete signals that lack market fields.

The subscriber sees every ``market.data_updated`` tick; it keeps the close of each bar of
RLV3_BAR_SECONDS (the last tick's price for the bar in progress) for the last 241 bars per symbol,
warmed from the recorded MarketBar rows the first time a symbol's signal arrives. From these it
fills, when a signal does not carry them (explicit fields always win):

- ``price_change_1m``, ``_5m``, ``_15m``, ``_30m``, ``_1h``, ``_4h``: last price / close N minutes
  (N * 60 / bar seconds bars) earlier - 1, as fractions;
- ``volatility``: sample std of the last 20 one-bar returns; ``volatility_long``: of the last 100.

These are the definitions of ``training.rl.features.market_fields`` on one-minute bars (a test checks
parity); with the default 60 s bars they mean exactly what the model was trained on. A bar without
ticks carries the previous close forward. Nothing is filled from history older than
``max_age_seconds`` before the signal, or when too few bars are known for a field.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from training.rl.features import HORIZONS, VOL_LONG_WINDOW, VOL_WINDOW

# Enough closes for the longest horizon (4 h of one-minute bars) plus the bar it is measured from.
HISTORY_BARS = max(HORIZONS.values()) + 1
FILLED_FIELDS: tuple[str, ...] = (*HORIZONS, "volatility", "volatility_long")


@dataclass
class _Series:
    last_bar: int  # bar index (epoch seconds // bar seconds) of the newest close
    last_time: float  # epoch seconds of the newest tick
    closes: deque = field(default_factory=lambda: deque(maxlen=HISTORY_BARS))


class MarketHistory:
    """Per-symbol closes of the most recent bars (in memory; one subscriber process)."""

    def __init__(self, *, bar_seconds: int, max_age_seconds: float = 300.0):
        self.bar_seconds = bar_seconds
        self.max_age_seconds = max_age_seconds
        self._series: dict[str, _Series] = {}
        self._warmed: set[str] = set()

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._series

    def symbols_to_warm(self, symbols: Iterable[str]) -> list[str]:
        """Symbols not yet seen nor loaded from the database (each is loaded once per process)."""
        return [s for s in dict.fromkeys(symbols) if s not in self._warmed and s not in self._series]

    def warm(self, symbol: str, bars: Iterable[tuple[float, float]]) -> None:
        """Seed a symbol from recorded (bar open epoch seconds, close) pairs, oldest first."""
        self._warmed.add(symbol)
        for start, close in bars:
            self.add(symbol, start, close)

    def add(self, symbol: str, epoch_seconds: float, price: float) -> None:
        """Record a price at a time; an older bar than the newest is ignored (late tick)."""
        bar = int(epoch_seconds // self.bar_seconds)
        series = self._series.get(symbol)
        if series is None:
            series = self._series[symbol] = _Series(last_bar=bar, last_time=epoch_seconds)
            series.closes.append(price)
            return
        if bar < series.last_bar:
            return
        if bar == series.last_bar:
            series.closes[-1] = price
        else:
            gap = min(bar - series.last_bar - 1, HISTORY_BARS)
            series.closes.extend([series.closes[-1]] * gap)  # no ticks: the close carries forward
            series.closes.append(price)
            series.last_bar = bar
        series.last_time = max(series.last_time, epoch_seconds)

    def fields(self, symbol: str, now_epoch: float) -> dict[str, float]:
        """Observation fields derivable from the symbol's history at ``now_epoch`` ({} if stale)."""
        series = self._series.get(symbol)
        if series is None or now_epoch - series.last_time > self.max_age_seconds:
            return {}
        closes = series.closes
        n = len(closes)
        last = closes[-1]
        out: dict[str, float] = {}
        for name, minutes in HORIZONS.items():
            bars, remainder = divmod(minutes * 60, self.bar_seconds)
            if remainder == 0 and 0 < bars < n:
                out[name] = last / closes[-1 - bars] - 1.0
        for name, window in (("volatility", VOL_WINDOW), ("volatility_long", VOL_LONG_WINDOW)):
            if n > window:
                out[name] = _return_std(closes, window)
        return out


def _return_std(closes: deque, window: int) -> float:
    """Sample standard deviation (ddof 1) of the last ``window`` one-bar simple returns."""
    tail = list(closes)[-window - 1 :]
    returns = [b / a - 1.0 for a, b in zip(tail, tail[1:])]
    mean = math.fsum(returns) / window
    return math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / (window - 1))


def complete_observation(raw: Mapping, history_fields: Mapping[str, float]) -> dict:
    """The signal's fields with history-derived ones added where the signal has none."""
    if not history_fields:
        return dict(raw)
    merged = dict(history_fields)
    merged.update(raw)
    return merged

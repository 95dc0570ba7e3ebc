"""The one feature function: observation fields (or an environment state) -> the 64-dim model input.

Training and serving share every line here: the REST API and the stream consumer call
:func:`validate_observation` then :func:`observation_to_vector`; the environment builds the same fields
from its state with :func:`market_fields` (per bar, at load) and :func:`state_to_observation`, and its
vectorised form runs the same position arithmetic on arrays (:func:`position_fields`,
:func:`position_block`), so a vector from an environment state equals, bit for bit, the vector from
the equivalent fields. The batch form, :func:`observations_to_matrix`, runs the same operations
vectorised over the observations and gives the same float32 bits as one observation_to_vector per row.

Observation fields
==================

Every field is optional; a missing field takes its default. The first 15 are the seed's
(CONTRACTS section 4); the rest add what the 64 dimensions need. In the environment one bar stands
for one minute of a live feed: ``price_change_Nm`` is the relative change of the close over N bars.
"Fraction" means a plain ratio (0.01 = 1 %). Numbers must be finite; bool, str and null are rejected.

====================  ============  ==============  =========================================================
field                 default       valid range     meaning and unit
====================  ============  ==============  =========================================================
price_change_1m       0.0           > -1, <= 10     close change over 1 bar, fraction
price_change_5m       0.0           > -1, <= 10     close change over 5 bars, fraction
price_change_15m      0.0           > -1, <= 10     close change over 15 bars, fraction
volatility            0.02          0 .. 5          std of 1-bar returns over 20 bars, fraction
rsi                   50.0          0 .. 100        Wilder RSI over 14 bars
macd                  0.0           -5 .. 5         EMA12 - EMA26 of the close, as a fraction of the close
position_size         0.0           0 .. 100        |position value| / equity (1.0 = a full position)
position_side         0             -1, 0, 1        short, flat, long
balance               10000.0       0 .. 1e15       cash, account currency
equity                10000.0       0 .. 1e15       cash + position value, account currency
regime                TREND         see REGIMES     TREND, RANGE, BREAKOUT or MEAN_REVERSION (any case)
trend_strength        0.5           0 .. 1          efficiency ratio over 20 bars: |net move| / path length
volume_ratio          1.0           0 .. 1000       volume / mean volume over 20 bars
spread                0.001         0 .. 1          bid-ask spread, fraction of price (environment: the
                                                    Abdi-Ranaldo close-high-low estimate over 20 bars)
time_of_day           0.5           0 .. 1          UTC time of day / 24 h
price_change_30m      0.0           > -1, <= 10     close change over 30 bars, fraction
price_change_1h       0.0           > -1, <= 10     close change over 60 bars, fraction
price_change_4h       0.0           > -1, <= 10     close change over 240 bars, fraction
volatility_long       0.02          0 .. 5          std of 1-bar returns over 100 bars, fraction
macd_signal           0.0           -5 .. 5         EMA9 of ``macd``, fraction of the close
bollinger_position    0.0           -100 .. 100     (close - SMA20) / (2 std20): -1 / +1 at the bands
bollinger_width       0.02          0 .. 10         4 std20 / SMA20, fraction
atr                   0.02          0 .. 5          Wilder average true range over 14 bars / close, fraction
trend_slope           0.0           -1 .. 1         least-squares slope of ln(close) over 20 bars, per bar
trend_slope_long      0.0           -1 .. 1         the same over 60 bars, per bar
ema_distance          0.0           -1 .. 100       close / EMA50 - 1, fraction
rsi_fast              50.0          0 .. 100        Wilder RSI over 7 bars
stochastic_k          50.0          0 .. 100        where the close sits in the 14-bar low-high range, percent
close_location        0.5           0 .. 1          where the close sits in this bar's low-high range
bar_range             0.02          0 .. 5          (high - low) / close of this bar, fraction
high_distance         -0.02         -1 .. 0         close / highest high of 20 bars - 1, fraction
low_distance          0.02          0 .. 100        close / lowest low of 20 bars - 1, fraction
time_of_week          0.5           0 .. 1          UTC time since Monday 00:00 / 7 days
unrealized_pnl        0.0           -100 .. 100     open position's PnL at the current price / equity
time_in_position      0.0           0 .. 1e9        bars since the position was opened (0 when flat)
drawdown              0.0           0 .. 1          1 - equity / peak equity (of the episode or session)
cooldown_remaining    0.0           0 .. 1e6        bars until new entries are allowed after EMERGENCY_FLATTEN
symbol                (none)        1-32 chars      optional, [A-Za-z0-9._:/-]; not part of the vector
====================  ============  ==============  =========================================================

The 64 dimensions
=================

Dims 0-43 depend on the market fields only (computed once per bar in the environment); dims 44-63
on the position (plus a few market dims they multiply with), using + - * / min max only, so the
numpy version is bit-identical. Every dim is bounded, most within [-1, 1], all within [-3, 3].
With ``sigma = max(volatility, 1e-6)`` and horizons h = 1, 5, 15, 30, 60, 240 bars:

- 0-5: volatility-scaled returns ``clip(r_h / (2 sigma sqrt h), -2, 2)``
- 6-11: raw returns ``tanh(40 r_h / sqrt h)``
- 12: ``clip((ln sigma + 6) / 2, -3, 3)``; 13: ``clip(ln(sigma / volatility_long), -3, 3)``
- 14: ``(rsi - 50) / 50``; 15-17: ``clip(x / sigma / 3, -3, 3)`` for macd, macd_signal, macd - macd_signal
- 18: ``clip(bollinger_position, -3, 3)``; 19: ``clip((ln bollinger_width + 4) / 1.5, -3, 3)``
- 20: ``clip((ln atr + 5.5) / 2, -3, 3)``; 21: ``clip(ln(atr / sigma), -3, 3)``
- 22: ``clip(4 trend_slope / sigma, -3, 3)``; 23: ``2 trend_strength - 1``; 24-27: regime one-hot
- 28: ``clip(ln max(volume_ratio, 0.05), -3, 3)``; 29: ``clip((ln max(spread, 1e-5) + 8) / 2, -3, 3)``;
  30: ``clip(spread / sigma, 0, 3)``
- 31-32: sin, cos of 2 pi time_of_day (constant on daily bars, which all close at the same time);
  33-34: sin, cos of 2 pi time_of_week
- 35: ``2 close_location - 1``; 36: ``clip(bar_range / atr - 1, -1, 3)``
- 37: ``clip(high_distance / sigma / 5 + 1, -1, 1)``; 38: ``clip(low_distance / sigma / 5 - 1, -1, 1)``
- 39: ``clip((ln volatility_long + 6) / 2, -3, 3)``; 40: ``clip(6 trend_slope_long / sigma, -3, 3)``
- 41: ``clip(ema_distance / sigma / 4, -3, 3)``; 42: ``(rsi_fast - 50) / 50``; 43: ``(stochastic_k - 50) / 50``
- 44: side; 45-47: long, short, flat indicators ``max(side, 0)``, ``max(-side, 0)``, ``1 - |side|``
- 48: ``min(position_size, 2)``; 49: side * dim 48
- 50: ``min(balance / equity, 3) - 1``; 51: ``clip(10 unrealized_pnl, -3, 3)``
- 52: ``clip(unrealized_pnl / position_size / sigma / 3, -3, 3)`` (the position's move in sigmas)
- 53: ``t / (t + 24)``, 54: ``min(t, 240) / 240`` for t = time_in_position; 55: ``2 drawdown``
- 56: ``c / (c + 5)``, 57: ``1 - min(c, 1)`` for c = cooldown_remaining
- 58-63: side times dims 0, 2, 17, 18, 22, 14 (is the position with or against the signal)

Change FEATURE_SPEC_VERSION whenever any of this changes: checkpoints record it and refuse to load
under a different one.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

FEATURE_DIM = 64
FEATURE_SPEC_VERSION = "rlv3-features-1"
REGIMES = ("TREND", "RANGE", "BREAKOUT", "MEAN_REVERSION")
MARKET_DIM = 44
POSITION_DIM = FEATURE_DIM - MARKET_DIM
# Every dim is clipped inside this bound (the observation space of the environment).
FEATURE_BOUND = 3.0

HORIZONS: dict[str, int] = {
    "price_change_1m": 1,
    "price_change_5m": 5,
    "price_change_15m": 15,
    "price_change_30m": 30,
    "price_change_1h": 60,
    "price_change_4h": 240,
}
# Bars of history every indicator needs: the longest horizon. Bars before it are never traded.
WARMUP_BARS = max(HORIZONS.values())
VOL_WINDOW, VOL_LONG_WINDOW = 20, 100
SIGMA_FLOOR = 1e-6
EQUITY_FLOOR = 1e-9

_CHANGE = (-1.0, 10.0)  # price changes: the lower bound is exclusive (a price cannot reach 0)
# name -> (default, low, high); every bound inclusive except the price changes' low.
_NUMERIC: dict[str, tuple[float, float, float]] = {
    "price_change_1m": (0.0, *_CHANGE),
    "price_change_5m": (0.0, *_CHANGE),
    "price_change_15m": (0.0, *_CHANGE),
    "volatility": (0.02, 0.0, 5.0),
    "rsi": (50.0, 0.0, 100.0),
    "macd": (0.0, -5.0, 5.0),
    "position_size": (0.0, 0.0, 100.0),
    "position_side": (0.0, -1.0, 1.0),
    "balance": (10000.0, 0.0, 1e15),
    "equity": (10000.0, 0.0, 1e15),
    "trend_strength": (0.5, 0.0, 1.0),
    "volume_ratio": (1.0, 0.0, 1000.0),
    "spread": (0.001, 0.0, 1.0),
    "time_of_day": (0.5, 0.0, 1.0),
    "price_change_30m": (0.0, *_CHANGE),
    "price_change_1h": (0.0, *_CHANGE),
    "price_change_4h": (0.0, *_CHANGE),
    "volatility_long": (0.02, 0.0, 5.0),
    "macd_signal": (0.0, -5.0, 5.0),
    "bollinger_position": (0.0, -100.0, 100.0),
    "bollinger_width": (0.02, 0.0, 10.0),
    "atr": (0.02, 0.0, 5.0),
    "trend_slope": (0.0, -1.0, 1.0),
    "trend_slope_long": (0.0, -1.0, 1.0),
    "ema_distance": (0.0, -1.0, 100.0),
    "rsi_fast": (50.0, 0.0, 100.0),
    "stochastic_k": (50.0, 0.0, 100.0),
    "close_location": (0.5, 0.0, 1.0),
    "bar_range": (0.02, 0.0, 5.0),
    "high_distance": (-0.02, -1.0, 0.0),
    "low_distance": (0.02, 0.0, 100.0),
    "time_of_week": (0.5, 0.0, 1.0),
    "unrealized_pnl": (0.0, -100.0, 100.0),
    "time_in_position": (0.0, 0.0, 1e9),
    "drawdown": (0.0, 0.0, 1.0),
    "cooldown_remaining": (0.0, 0.0, 1e6),
}
OBSERVATION_DEFAULTS: dict[str, float | str] = {name: spec[0] for name, spec in _NUMERIC.items()}
OBSERVATION_DEFAULTS["regime"] = "TREND"
# The seed's fields (CONTRACTS section 4); the others are this service's additions.
SEED_FIELDS = (
    "price_change_1m", "price_change_5m", "price_change_15m", "volatility", "rsi", "macd", "position_size",
    "position_side", "balance", "equity", "regime", "trend_strength", "volume_ratio", "spread", "time_of_day",
)
POSITION_FIELDS = (
    "position_size",
    "position_side",
    "balance",
    "equity",
    "unrealized_pnl",
    "time_in_position",
    "drawdown",
    "cooldown_remaining",
)
MARKET_FIELDS = tuple(k for k in OBSERVATION_DEFAULTS if k not in POSITION_FIELDS)

_BOUNDS = {name: (lo, hi) for name, (_, lo, hi) in _NUMERIC.items()}
# Public: the API schema documents these ranges (exclusive low for HORIZONS, inclusive otherwise).
OBSERVATION_BOUNDS: dict[str, tuple[float, float]] = _BOUNDS
_SIDES = (-1.0, 0.0, 1.0)
_REGIME_ONE_HOT = {r: tuple(1.0 if r == q else 0.0 for q in REGIMES) for r in REGIMES}
_REGIME_ALIASES = {r.replace("_", ""): r for r in REGIMES}
_SYMBOL = re.compile(r"[A-Za-z0-9._:/-]{1,32}")
_SQRT_H = tuple(math.sqrt(h) for h in HORIZONS.values())
_RET_KEYS = tuple(HORIZONS)


class ObservationError(ValueError):
    """A rejected observation field: ``field`` names it (``__root__`` for the whole input)."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        self.index: int | None = None  # the observation's position, from validate_observations
        super().__init__(f"{field}: {reason}")


def _fmt(x: float) -> str:
    return f"{x:g}"


def _bad_number(name: str, value: Any) -> ObservationError:
    if isinstance(value, float) or isinstance(value, np.floating):
        if math.isnan(value) or math.isinf(value):
            return ObservationError(name, f"must be a finite number, got {value}")
        lo, hi = _BOUNDS[name]
        if name in HORIZONS:
            return ObservationError(name, f"must be greater than -1 and at most {_fmt(hi)}, got {_fmt(value)}")
        if name == "position_side":
            return ObservationError(name, f"must be -1, 0 or 1, got {_fmt(value)}")
        return ObservationError(name, f"must be between {_fmt(lo)} and {_fmt(hi)}, got {_fmt(value)}")
    if value is None:
        return ObservationError(name, "must be a number, got null")
    kind = "bool" if isinstance(value, (bool, np.bool_)) else type(value).__name__
    shown = f" {value!r}" if isinstance(value, str) and len(value) <= 40 else ""
    return ObservationError(name, f"must be a number, got {kind}{shown}")


def _as_float(name: str, value: Any) -> float:
    """A number that is not a Python float or int: numpy scalars pass, anything else is rejected."""
    if isinstance(value, (np.floating, np.integer)):
        return float(value)
    raise _bad_number(name, value)


def validate_observation(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check observation fields and return a complete, clean dict (the fields table above).

    Missing fields take their defaults; numbers become float; ``regime`` is upper-cased canonical;
    ``symbol`` is kept when given. Unknown keys are ignored (streams send extra fields).
    Raises ObservationError naming the first bad field.
    """
    if not isinstance(raw, Mapping):
        raise ObservationError("__root__", f"must be an object of observation fields, got {type(raw).__name__}")
    out: dict[str, Any] = OBSERVATION_DEFAULTS.copy()
    bounds = _BOUNDS
    for name, value in raw.items():
        b = bounds.get(name)
        if b is None:
            if name == "regime":
                out["regime"] = _regime(value)
            elif name == "symbol":
                out["symbol"] = _symbol(value)
            continue
        t = type(value)
        if t is float:
            x = value
        elif t is int:
            x = float(value) if -1e300 < value < 1e300 else (1e300 if value > 0 else -1e300)
        else:
            x = _as_float(name, value)
        # NaN fails both comparisons; inf fails one of them.
        if not (b[0] <= x <= b[1]):
            raise _bad_number(name, x)
        out[name] = x
    for name in HORIZONS:
        if out[name] == -1.0:
            raise _bad_number(name, -1.0)
    if out["position_side"] not in _SIDES:
        raise _bad_number("position_side", out["position_side"])
    return out


def _regime(value: Any) -> str:
    if not isinstance(value, str):
        raise ObservationError("regime", f"must be one of {', '.join(REGIMES)}, got {type(value).__name__}")
    key = value.strip().upper().replace("-", "_").replace(" ", "_")
    if key in _REGIME_ONE_HOT:
        return key
    alias = _REGIME_ALIASES.get(key.replace("_", ""))
    if alias is None:
        raise ObservationError("regime", f"must be one of {', '.join(REGIMES)}, got {value[:40]!r}")
    return alias


def _symbol(value: Any) -> str:
    if not isinstance(value, str) or not _SYMBOL.fullmatch(value):
        shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
        raise ObservationError("symbol", f"must be 1-32 characters of A-Z a-z 0-9 . _ : / -, got {shown}")
    return value


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _log_level(x: float, floor: float, shift: float, scale: float) -> float:
    """clip((ln max(x, floor) + shift) / scale, -3, 3): a log-scale level centred near 0."""
    return _clip((math.log(x if x > floor else floor) + shift) / scale, -3.0, 3.0)


def market_block(o: Mapping[str, Any]) -> list[float]:
    """Dims 0-43 as Python floats from validated fields; the environment calls this once per bar.

    Pure Python with the math module: a numpy call per dim would cost more than the arithmetic.
    """
    log, tanh = math.log, math.tanh
    vol = o["volatility"]
    sig = vol if vol > SIGMA_FLOOR else SIGMA_FLOOR
    rets = [o[k] for k in _RET_KEYS]
    dims = [_clip(0.5 * r / (sig * s), -2.0, 2.0) for r, s in zip(rets, _SQRT_H)]
    dims += [tanh(40.0 * r / s) for r, s in zip(rets, _SQRT_H)]
    vol_long = o["volatility_long"]
    sig_long = vol_long if vol_long > SIGMA_FLOOR else SIGMA_FLOOR
    macd, signal = o["macd"], o["macd_signal"]
    atr = o["atr"]
    atr_floor = atr if atr > SIGMA_FLOOR else SIGMA_FLOOR
    spread = o["spread"]
    tod, tow = 2.0 * math.pi * o["time_of_day"], 2.0 * math.pi * o["time_of_week"]
    dims += [
        _clip((log(sig) + 6.0) * 0.5, -3.0, 3.0),
        _clip(log(sig / sig_long), -3.0, 3.0),
        (o["rsi"] - 50.0) / 50.0,
        _clip(macd / sig / 3.0, -3.0, 3.0),
        _clip(signal / sig / 3.0, -3.0, 3.0),
        _clip((macd - signal) / sig / 3.0, -3.0, 3.0),
        _clip(o["bollinger_position"], -3.0, 3.0),
        _log_level(o["bollinger_width"], SIGMA_FLOOR, 4.0, 1.5),
        _clip((log(atr_floor) + 5.5) * 0.5, -3.0, 3.0),
        _clip(log(atr_floor / sig), -3.0, 3.0),
        _clip(4.0 * o["trend_slope"] / sig, -3.0, 3.0),
        2.0 * o["trend_strength"] - 1.0,
        *_REGIME_ONE_HOT[o["regime"]],
        _log_level(o["volume_ratio"], 0.05, 0.0, 1.0),
        _log_level(spread, 1e-5, 8.0, 2.0),
        _clip(spread / sig, 0.0, 3.0),
        math.sin(tod),
        math.cos(tod),
        math.sin(tow),
        math.cos(tow),
        2.0 * o["close_location"] - 1.0,
        _clip(o["bar_range"] / atr_floor - 1.0, -1.0, 3.0),
        _clip(o["high_distance"] / sig / 5.0 + 1.0, -1.0, 1.0),
        _clip(o["low_distance"] / sig / 5.0 - 1.0, -1.0, 1.0),
        _clip((log(sig_long) + 6.0) * 0.5, -3.0, 3.0),
        _clip(6.0 * o["trend_slope_long"] / sig, -3.0, 3.0),
        _clip(o["ema_distance"] / sig / 4.0, -3.0, 3.0),
        (o["rsi_fast"] - 50.0) / 50.0,
        (o["stochastic_k"] - 50.0) / 50.0,
    ]
    return dims


# Market dims the position block multiplies with the side (dims 58-63).
CROSS_DIMS = (0, 2, 17, 18, 22, 14)
_cross = operator.itemgetter(*CROSS_DIMS)


class _Ops(NamedTuple):
    """min / max / sign for Python floats or for numpy arrays: one formula serves both."""

    min: Any
    max: Any
    sign: Any


def _sign(x: float) -> float:
    return 1.0 if x > 0 else -1.0 if x < 0 else 0.0


def _min(a: float, b: float) -> float:
    return a if a < b else b  # builtin min() is several times slower for two floats


def _max(a: float, b: float) -> float:
    return a if a > b else b


SCALAR_OPS = _Ops(_min, _max, _sign)
ARRAY_OPS = _Ops(np.fmin, np.fmax, np.sign)  # fmin/fmax: faster, and no NaN ever reaches them


def position_block(o: Mapping[str, Any], sigma: Any, ops: _Ops = SCALAR_OPS) -> list:
    """Dims 44-57 from the position fields (floats, or equal-length arrays with ARRAY_OPS).

    ``sigma`` is max(volatility, SIGMA_FLOOR). Only + - * / min max, evaluated in the same order for
    floats and arrays, so both agree bit for bit. Dims 58-63 are ``position_side * market[CROSS_DIMS]``.
    """
    mn, mx = ops.min, ops.max
    side, size, upnl = o["position_side"], o["position_size"], o["unrealized_pnl"]
    t, c = o["time_in_position"], o["cooldown_remaining"]
    z = mn(size, 2.0)
    return [
        side,
        mx(side, 0.0),
        mx(-side, 0.0),
        1.0 - abs(side),
        z,
        side * z,
        mn(o["balance"] / mx(o["equity"], EQUITY_FLOOR), 3.0) - 1.0,
        mn(mx(upnl * 10.0, -3.0), 3.0),
        mn(mx(upnl / mx(size, EQUITY_FLOOR) / sigma / 3.0, -3.0), 3.0),
        t / (t + 24.0),
        mn(t, 240.0) / 240.0,
        o["drawdown"] * 2.0,
        c / (c + 5.0),
        1.0 - mn(c, 1.0),
    ]


def observation_to_vector(obs: Mapping[str, Any]) -> np.ndarray:
    """The 64-dim float32 model input, shape (64,), from a validated observation dict."""
    dims = market_block(obs)
    vol = obs["volatility"]
    sigma = vol if vol > SIGMA_FLOOR else SIGMA_FLOOR
    side = obs["position_side"]
    cross = [side * m for m in _cross(dims)]
    dims += position_block(obs, sigma)
    dims += cross
    # One conversion at the end; float64 -> float32 rounds exactly as the environment's astype.
    return np.array(dims, dtype=np.float32)


# The batch form (observations_to_matrix): observation_to_vector's operations on columns of N
# observations, in the same order and association (numpy rounds + - * / as Python does), with the math
# module's log, tanh, sin and cos per element (numpy's own SIMD versions may differ in the last bit).
# Dims that get the same operations are computed together, as a block of rows.
# The numeric fields in the order they are packed: the fields of a block are adjacent.
_BATCH_FIELDS = (
    *_RET_KEYS,
    "volatility", "volatility_long", "atr", "bollinger_width", "volume_ratio", "spread",
    "rsi", "rsi_fast", "stochastic_k",
    "trend_strength", "close_location",
    "time_of_day", "time_of_week",
    "trend_slope", "trend_slope_long",
    "high_distance", "low_distance",
    "macd", "macd_signal", "ema_distance", "bollinger_position", "bar_range",
    *POSITION_FIELDS,
)
assert sorted(_BATCH_FIELDS) == sorted(_NUMERIC)


def _rows(*names: str) -> slice:
    """The rows of ``names`` in the packed columns (adjacent, in this order)."""
    first = _BATCH_FIELDS.index(names[0])
    assert _BATCH_FIELDS[first : first + len(names)] == names
    return slice(first, first + len(names))


def _column(*values: float) -> np.ndarray:
    """One value per row of a block."""
    return np.array(values)[:, None]


_RET_ROWS = _rows(*_RET_KEYS)
_FLOORED_ROWS = _rows("volatility", "volatility_long", "atr", "bollinger_width", "volume_ratio", "spread")
_FLOORS = _column(SIGMA_FLOOR, SIGMA_FLOOR, SIGMA_FLOOR, SIGMA_FLOOR, 0.05, 1e-5)
_CENTRED_ROWS = _rows("rsi", "rsi_fast", "stochastic_k")
_UNIT_ROWS = _rows("trend_strength", "close_location")
_TIME_ROWS = _rows("time_of_day", "time_of_week")
_SLOPE_ROWS = _rows("trend_slope", "trend_slope_long")
_DISTANCE_ROWS = _rows("high_distance", "low_distance")
_POSITION_ROWS = _rows(*POSITION_FIELDS)
_REGIME_INDEX = {r: i for i, r in enumerate(REGIMES)}
_REGIME_ONE_HOT_TABLE = np.array([_REGIME_ONE_HOT[r] for r in REGIMES])  # [regime index, dim]
_SQRT_H_COLUMN = _column(*_SQRT_H)
# The dims market_block clips to [-3, 3], in the order _market_columns stacks them.
_CLIPPED_DIMS = (12, 39, 20, 19, 28, 29, 13, 21, 15, 16, 17, 22, 40, 41, 18)
# Below this many observations the per-row loop is faster (numpy's per-call overhead dominates).
_BATCH_MIN_ROWS = 20


def _where_min(a: Any, b: Any) -> np.ndarray:
    return np.where(a < b, a, b)  # _min; np.fmin(-0.0, 0.0) is -0.0 where _min gives 0.0


def _where_max(a: Any, b: Any) -> np.ndarray:
    return np.where(a > b, a, b)  # _max; np.fmax(-0.0, 0.0) is -0.0 where _max gives 0.0


# SCALAR_OPS on arrays, bit for bit including the sign of zero (ARRAY_OPS is not, for zeros).
_WHERE_OPS = _Ops(_where_min, _where_max, np.sign)


def _clipped(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """_clip on a new array, in place, by its comparisons (np.clip may return the other zero)."""
    np.copyto(x, lo, where=x < lo)
    np.copyto(x, hi, where=x > hi)
    return x


def _per_element(*calls: tuple[Any, np.ndarray]) -> np.ndarray:
    """(math function, rows) pairs -> the function of every element of its rows, all rows stacked.

    A row whose elements are one value bit for bit (a field every observation of the batch leaves
    at its default, or sends alike) is one call, broadcast: the same bits. An API batch of a few
    fields each had 14 of its 18 rows so; its features took 2.10 µs an observation, 1.22 after.
    """
    n = calls[0][1].shape[-1]
    out = np.empty((sum(rows.size for _, rows in calls) // n, n))
    i = 0
    for fn, rows in calls:
        for row in np.ascontiguousarray(rows).reshape(-1, n):
            bits = row.view(np.int64)
            if (bits == bits[0]).all():
                out[i] = fn(float(row[0]))
            else:
                out[i] = np.fromiter(map(fn, memoryview(row)), np.float64, n)
            i += 1
    return out


def _market_columns(x: np.ndarray, regime: np.ndarray, floored: np.ndarray, out: np.ndarray) -> list[np.ndarray]:
    """:func:`market_block` on columns: dims 0-43 into ``out[:, :44]``; returns dims CROSS_DIMS (float64).

    ``x`` is the packed (field, N) columns, ``floored`` x[_FLOORED_ROWS] floored at _FLOORS.
    """
    f = dict(zip(_BATCH_FIELDS, x))
    sig, sig_long, atr_floor = floored[0], floored[1], floored[2]
    rets = x[_RET_ROWS]
    raw = 40.0 * rets
    raw /= _SQRT_H_COLUMN
    out[:, 6:12] = _per_element((math.tanh, raw)).T
    angles = (2.0 * math.pi) * x[_TIME_ROWS]
    cyclic = ((math.sin, angles[0]), (math.cos, angles[0]), (math.sin, angles[1]), (math.cos, angles[1]))
    out[:, 31:35] = _per_element(*cyclic).T
    # ln of the floored fields (sigma, sigma_long, atr, bollinger_width, volume_ratio, spread), then
    # of sigma / sigma_long and of atr / sigma.
    logs = _per_element((math.log, floored), (math.log, np.stack([sig / sig_long, atr_floor / sig])))
    # x / sigma for macd, macd_signal, macd - macd_signal, 4 trend_slope, 6 trend_slope_long,
    # high_distance, low_distance, ema_distance and spread.
    macd, signal = f["macd"], f["macd_signal"]
    slopes = x[_SLOPE_ROWS] * _column(4.0, 6.0)
    distances = x[_DISTANCE_ROWS]
    per_sig = np.stack([macd, signal, macd - signal, *slopes, *distances, f["ema_distance"], f["spread"]])
    per_sig /= sig
    clipped = _clipped(np.concatenate([
        (logs[0:3] + _column(6.0, 6.0, 5.5)) * 0.5,  # 12, 39, 20
        (logs[3:6] + _column(4.0, 0.0, 8.0)) / _column(1.5, 1.0, 2.0),  # 19, 28, 29 (_log_level)
        logs[6:8],  # 13, 21
        per_sig[0:3] / 3.0,  # 15-17
        per_sig[3:5],  # 22, 40
        per_sig[7:8] / 4.0,  # 41
        f["bollinger_position"][None],  # 18
    ]), -3.0, 3.0)
    out[:, _CLIPPED_DIMS] = clipped.T
    scaled = 0.5 * rets
    scaled /= sig * _SQRT_H_COLUMN
    out[:, 0:6] = _clipped(scaled, -2.0, 2.0).T
    centred = (x[_CENTRED_ROWS] - 50.0) / 50.0
    out[:, (14, 42, 43)] = centred.T
    out[:, (23, 35)] = (2.0 * x[_UNIT_ROWS] - 1.0).T
    out[:, 24:28] = _REGIME_ONE_HOT_TABLE[regime]
    out[:, 30] = _clipped(per_sig[8], 0.0, 3.0)
    out[:, 36] = _clipped(f["bar_range"] / atr_floor - 1.0, -1.0, 3.0)
    out[:, 37:39] = _clipped(per_sig[5:7] / 5.0 + _column(1.0, -1.0), -1.0, 1.0).T
    market = {0: scaled[0], 2: scaled[2], 14: centred[0], **dict(zip(_CLIPPED_DIMS, clipped))}
    return [market[d] for d in CROSS_DIMS]


def observations_to_matrix(obs_list: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Stack validated observations into an (N, 64) float32 matrix.

    Bit for bit the stack of :func:`observation_to_vector` of each; vectorised from _BATCH_MIN_ROWS
    observations on.
    """
    out = np.empty((len(obs_list), FEATURE_DIM), dtype=np.float32)
    if len(obs_list) < _BATCH_MIN_ROWS:
        for i, obs in enumerate(obs_list):
            out[i] = observation_to_vector(obs)
        return out
    return _values_into(observations_pack(obs_list).values, out)


def _values_into(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The vectors of observations given as their values (N, OBSERVATION_LENGTH) into ``out`` (N, 64),
    vectorised over the observations.

    Every dim is computed in float64 and converted once, when written into ``out``: float32 gives
    observation_to_vector's vectors, float64 their unrounded values (which the tests compare).
    """
    x = values[:, _BATCH_ORDER].T  # the numeric fields as (field, N) columns in _BATCH_FIELDS order
    regime = values[:, -1].astype(np.intp)
    floored = x[_FLOORED_ROWS]
    floored = np.where(floored > _FLOORS, floored, _FLOORS)  # v if v > floor else floor
    cross = _market_columns(x, regime, floored, out)
    position = dict(zip(POSITION_FIELDS, x[_POSITION_ROWS]))
    side = position["position_side"]
    block = position_block(position, floored[0], _WHERE_OPS)
    np.stack(block + [side * m for m in cross], axis=1, out=out[:, MARKET_DIM:])
    return out


# --- Observations as numbers: how decisions store them, and how a batch travels ------------------

# An observation's values in order: its numeric fields in OBSERVATION_DEFAULTS order, then the
# regime's index in REGIMES (the symbol is kept apart).
OBSERVATION_NUMBERS = tuple(name for name in OBSERVATION_DEFAULTS if name != "regime")
OBSERVATION_LENGTH = len(OBSERVATION_NUMBERS) + 1
_NUMBER_INDEX = {name: i for i, name in enumerate(OBSERVATION_NUMBERS)}
_DEFAULT_VALUES = np.array([*(OBSERVATION_DEFAULTS[k] for k in OBSERVATION_NUMBERS), _REGIME_INDEX["TREND"]], dtype=np.float64)
_LOW = np.array([_BOUNDS[k][0] for k in OBSERVATION_NUMBERS])
_HIGH = np.array([_BOUNDS[k][1] for k in OBSERVATION_NUMBERS])
_EXCLUSIVE_LOW = np.array([k in HORIZONS for k in OBSERVATION_NUMBERS])
_SIDE_INDEX = _NUMBER_INDEX["position_side"]
_numbers_of = operator.itemgetter(*OBSERVATION_NUMBERS)
_pack_numbers = struct.Struct(f"{len(OBSERVATION_NUMBERS)}d").pack
_BATCH_ORDER = np.array([_NUMBER_INDEX[name] for name in _BATCH_FIELDS])


class ObservationBatch(NamedTuple):
    """Validated observations as numbers: ``values`` (N, OBSERVATION_LENGTH) float64 in the order
    above, ``symbols`` each one's symbol ("" when it has none)."""

    values: np.ndarray
    symbols: list[str]


def observation_values(obs: Mapping[str, Any]) -> list[float]:
    """An observation's values (a missing field takes its default)."""
    regime = obs.get("regime", OBSERVATION_DEFAULTS["regime"])
    if regime not in _REGIME_INDEX:
        raise ObservationError("regime", f"must be one of {', '.join(REGIMES)}, got {str(regime)[:40]!r}")
    return [float(obs.get(name, OBSERVATION_DEFAULTS[name])) for name in OBSERVATION_NUMBERS] + [float(_REGIME_INDEX[regime])]


def observation_from_values(values: Sequence[float]) -> dict[str, Any]:
    """The observation fields (without a symbol) of an observation's values."""
    if len(values) != OBSERVATION_LENGTH:
        raise ValueError(f"expected {OBSERVATION_LENGTH} observation values, got {len(values)}")
    obs: dict[str, Any] = dict(zip(OBSERVATION_NUMBERS, values))
    obs["regime"] = REGIMES[int(values[-1])]
    return obs


def observations_pack(observations: Sequence[Mapping[str, Any]]) -> ObservationBatch:
    """The batch of observations that :func:`validate_observation` returned (every field present)."""
    n = len(observations)
    values = np.empty((n, OBSERVATION_LENGTH), dtype=np.float64)
    packed = b"".join(itertools.starmap(_pack_numbers, map(_numbers_of, observations)))
    values[:, :-1] = np.frombuffer(packed, dtype=np.float64).reshape(n, len(OBSERVATION_NUMBERS))
    values[:, -1] = [_REGIME_INDEX[obs["regime"]] for obs in observations]
    return ObservationBatch(values, [obs.get("symbol") or "" for obs in observations])


class _Rejected(Exception):
    """validate_observations' one pass found something to reject."""


def validate_observations(raws: Sequence[Any]) -> ObservationBatch:
    """:func:`validate_observation` of each of ``raws``, as one batch.

    One pass reads the fields given (numbers that are Python floats or ints); their ranges are
    checked as arrays. Anything else, or anything out of range, and the observations are validated
    one by one, which raises exactly what validate_observation raises (the first bad field of the
    first bad observation), with the observation's position as the error's ``index``.
    """
    n = len(raws)
    rows: list[int] = []
    columns: list[int] = []
    numbers: list[float] = []
    regimes: dict[int, int] = {}
    symbols = [""] * n
    index = _NUMBER_INDEX
    # A batch repeats a few regimes and symbols: each distinct text is checked once.
    regime_codes: dict[Any, int] = {}
    checked_symbols: set[str] = set()
    try:
        for i, raw in enumerate(raws):
            if type(raw) is not dict:
                raise _Rejected
            for name, value in raw.items():
                c = index.get(name)
                if c is None:
                    if name == "regime":
                        code = regime_codes.get(value) if type(value) is str else None
                        if code is None:
                            code = regime_codes[value] = _REGIME_INDEX[_regime(value)]
                        regimes[i] = code
                    elif name == "symbol":
                        if type(value) is not str or value not in checked_symbols:
                            checked_symbols.add(_symbol(value))
                        symbols[i] = value
                    continue
                t = type(value)
                if t is float:
                    numbers.append(value)
                elif t is int and -1e300 < value < 1e300:
                    numbers.append(float(value))
                else:
                    raise _Rejected
                rows.append(i)
                columns.append(c)
        given = np.array(numbers, dtype=np.float64)
        at = np.array(columns, dtype=np.intp)
        low = _LOW[at]
        in_range = (low <= given) & (given <= _HIGH[at]) & ~(_EXCLUSIVE_LOW[at] & (given == low))
        side = given[at == _SIDE_INDEX]
        if not (in_range.all() and ((side == -1.0) | (side == 0.0) | (side == 1.0)).all()):
            raise _Rejected
    except (_Rejected, ObservationError):
        clean = []
        for i, raw in enumerate(raws):
            try:
                clean.append(validate_observation(raw))
            except ObservationError as exc:
                exc.index = i
                raise
        return observations_pack(clean)  # valid after all (say, numpy numbers or a Mapping)
    values = np.tile(_DEFAULT_VALUES, (n, 1))
    values[rows, at] = given
    if regimes:
        values[list(regimes), -1] = list(regimes.values())
    return ObservationBatch(values, symbols)


def values_to_matrix(values: np.ndarray) -> np.ndarray:
    """:func:`observations_to_matrix` of observations given as their values (N, OBSERVATION_LENGTH)."""
    n = len(values)
    out = np.empty((n, FEATURE_DIM), dtype=np.float32)
    if n < _BATCH_MIN_ROWS:
        for i, row in enumerate(values.tolist()):
            out[i] = observation_to_vector(observation_from_values(row))
        return out
    return _values_into(values, out)


def position_fields(
    *,
    price: Any,
    position: Any,
    cash: Any,
    entry_price: Any,
    time_in_position: Any,
    peak_equity: Any,
    cooldown: Any,
    ops: _Ops = SCALAR_OPS,
) -> dict[str, Any]:
    """The position fields of an account state (floats, or arrays with ARRAY_OPS).

    ``position`` is signed units, prices per unit, cash and equity in account currency. Equity and
    cash are floored at 0 for the observation (a ruined short can mark below 0 before termination).
    """
    mn, mx = ops.min, ops.max
    value = position * price
    equity = cash + value
    denom = mx(equity, EQUITY_FLOOR)
    return {
        "position_size": mn(abs(value) / denom, 100.0),
        "position_side": ops.sign(position),
        "balance": mx(cash, 0.0),
        "equity": mx(equity, 0.0),
        "unrealized_pnl": mn(mx(position * (price - entry_price) / denom, -100.0), 100.0),
        "time_in_position": time_in_position,
        "drawdown": mn(mx(1.0 - equity / mx(peak_equity, EQUITY_FLOOR), 0.0), 1.0),
        "cooldown_remaining": cooldown,
    }


def state_to_observation(market: Mapping[str, Any], **account: float) -> dict[str, Any]:
    """Observation fields of an environment state: one bar's market fields plus the account.

    ``account`` is the keyword arguments of :func:`position_fields` (Python floats).
    """
    obs = dict(market)
    obs.update(position_fields(**account))
    return obs


# ---------------------------------------------------------------------------------------------
# Market fields from OHLCV bars (vectorised over bars; the environment precomputes them at load)


def _wilder(x: np.ndarray, period: int) -> np.ndarray:
    import pandas as pd

    return pd.Series(x).ewm(alpha=1.0 / period, adjust=False).mean().to_numpy()


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    import pandas as pd

    return pd.Series(x).ewm(span=span, adjust=False).mean().to_numpy()


def _rolling(x: np.ndarray, window: int):
    import pandas as pd

    return pd.Series(x).rolling(window, min_periods=window)


def _rsi(close: np.ndarray, period: int) -> np.ndarray:
    delta = np.diff(close, prepend=close[0])
    gain = _wilder(np.maximum(delta, 0.0), period)
    loss = _wilder(np.maximum(-delta, 0.0), period)
    total = gain + loss
    return np.where(total > 0, 100.0 * gain / np.where(total > 0, total, 1.0), 50.0)


def _ls_slope(y: np.ndarray, window: int) -> np.ndarray:
    """Least-squares slope of y over the last ``window`` values (per step); NaN before that."""
    x = np.arange(window, dtype=np.float64)
    w = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    out = np.full(len(y), np.nan)
    if len(y) >= window:
        out[window - 1 :] = np.convolve(y, w[::-1], mode="valid")
    return out


def _safe_div(num: np.ndarray, den: np.ndarray, default: float) -> np.ndarray:
    ok = den > 0
    return np.where(ok, num / np.where(ok, den, 1.0), default)


def _shift(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    out[n:] = x[:-n]
    return out


def market_fields(
    times: np.ndarray, open: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> dict[str, np.ndarray]:
    """Market observation fields for every bar: name -> float64 array (bars,); ``regime`` -> str array.

    Bar t uses bars up to and including t only (no look-ahead). Values before WARMUP_BARS are
    incomplete and never used. Every value is clipped into its valid range, so any bar's fields pass
    :func:`validate_observation`.
    """
    del open  # the open adds nothing the close of the previous bar does not
    c, h, lo = close, high, low
    n = len(c)
    prev = np.concatenate([[c[0]], c[:-1]])
    ret1 = c / prev - 1.0
    f: dict[str, np.ndarray] = {k: c / _shift(c, hz) - 1.0 if hz < n else np.full(n, np.nan) for k, hz in HORIZONS.items()}
    f["volatility"] = _rolling(ret1, VOL_WINDOW).std().to_numpy()
    f["volatility_long"] = _rolling(ret1, VOL_LONG_WINDOW).std().to_numpy()
    f["rsi"] = _rsi(c, 14)
    f["rsi_fast"] = _rsi(c, 7)
    f["macd"] = (_ema(c, 12) - _ema(c, 26)) / c
    f["macd_signal"] = _ema(f["macd"], 9)
    sma20 = _rolling(c, 20).mean().to_numpy()
    std20 = _rolling(c, 20).std(ddof=0).to_numpy()
    f["bollinger_position"] = _safe_div(c - sma20, 2.0 * std20, 0.0)
    f["bollinger_width"] = 4.0 * std20 / sma20
    true_range = np.maximum(h - lo, np.maximum(np.abs(h - prev), np.abs(lo - prev)))
    f["atr"] = _wilder(true_range, 14) / c
    log_c = np.log(c)
    f["trend_slope"] = _ls_slope(log_c, 20)
    f["trend_slope_long"] = _ls_slope(log_c, 60)
    path = _rolling(np.abs(c - prev), 20).sum().to_numpy()
    f["trend_strength"] = _safe_div(np.abs(c - _shift(c, 20)), path, 0.0)
    mean_volume = _rolling(volume, 20).mean().to_numpy()
    f["volume_ratio"] = _safe_div(volume, mean_volume, 1.0)
    # Abdi & Ranaldo (2017) spread estimate from close, high and low, using only past bars.
    mid = 0.5 * (np.log(h) + np.log(lo))
    prev_log_c, prev_mid = _shift(log_c, 1), _shift(mid, 1)
    s2 = 4.0 * (prev_log_c - prev_mid) * (prev_log_c - mid)
    f["spread"] = np.sqrt(np.maximum(_rolling(s2, 20).mean().to_numpy(), 0.0))
    seconds = times.astype("datetime64[s]").astype(np.int64)
    day_seconds = np.mod(seconds, 86400)
    f["time_of_day"] = day_seconds / 86400.0
    # 1970-01-01 was a Thursday (Monday = day 0 of the week).
    f["time_of_week"] = (np.mod(seconds // 86400 + 3, 7) * 86400 + day_seconds) / (7 * 86400.0)
    f["ema_distance"] = c / _ema(c, 50) - 1.0
    low14, high14 = _rolling(lo, 14).min().to_numpy(), _rolling(h, 14).max().to_numpy()
    f["stochastic_k"] = _safe_div(100.0 * (c - low14), high14 - low14, 50.0)
    f["close_location"] = _safe_div(c - lo, h - lo, 0.5)
    f["bar_range"] = (h - lo) / c
    f["high_distance"] = c / _rolling(h, 20).max().to_numpy() - 1.0
    f["low_distance"] = c / _rolling(lo, 20).min().to_numpy() - 1.0
    for name, arr in f.items():
        lo_b, hi_b = _BOUNDS[name]
        if name in HORIZONS:
            lo_b = np.nextafter(-1.0, 0.0)
        f[name] = np.clip(arr, lo_b, hi_b)
    f["regime"] = classify_regime(f)
    return f


def classify_regime(f: Mapping[str, np.ndarray]) -> np.ndarray:
    """Regime per bar from the market fields (str array), first rule that matches:

    BREAKOUT: the close is outside the 2-sigma Bollinger bands; MEAN_REVERSION: RSI(14) at or beyond
    70 / 30 (stretched, likely to revert); TREND: trend strength (efficiency ratio) >= 0.3; else RANGE.
    """
    regime = np.full(len(f["rsi"]), "RANGE", dtype=object)
    regime[f["trend_strength"] >= 0.3] = "TREND"
    regime[(f["rsi"] >= 70.0) | (f["rsi"] <= 30.0)] = "MEAN_REVERSION"
    regime[np.abs(f["bollinger_position"]) > 1.0] = "BREAKOUT"
    return regime

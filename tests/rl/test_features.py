"""Observation fields -> 64-dim vector: validation, defaults, bounds, scalar/array parity, no look-ahead."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.rl import features as F

SEED_DEFAULTS = {
    "price_change_1m": 0.0,
    "price_change_5m": 0.0,
    "price_change_15m": 0.0,
    "volatility": 0.02,
    "rsi": 50.0,
    "macd": 0.0,
    "position_size": 0.0,
    "position_side": 0.0,
    "balance": 10000.0,
    "equity": 10000.0,
    "regime": "TREND",
    "trend_strength": 0.5,
    "volume_ratio": 1.0,
    "spread": 0.001,
    "time_of_day": 0.5,
}


def test_seed_fields_keep_the_seed_defaults():
    clean = F.validate_observation({})
    assert F.SEED_FIELDS == tuple(SEED_DEFAULTS)
    assert {k: clean[k] for k in SEED_DEFAULTS} == SEED_DEFAULTS
    assert clean == F.OBSERVATION_DEFAULTS
    assert F.REGIMES == ("TREND", "RANGE", "BREAKOUT", "MEAN_REVERSION")
    assert "symbol" not in clean


def test_the_documented_field_table_matches_the_code():
    table = {}
    for line in F.__doc__.splitlines():
        parts = line.split()
        if parts and parts[0] in F.OBSERVATION_DEFAULTS:
            table[parts[0]] = parts[1]
    assert set(table) == set(F.OBSERVATION_DEFAULTS)
    for name, default in F.OBSERVATION_DEFAULTS.items():
        documented = table[name]
        assert (documented == default) if isinstance(default, str) else float(documented) == default, name


def test_feature_dimensions():
    assert F.FEATURE_DIM == 64 == F.MARKET_DIM + F.POSITION_DIM
    vec = F.observation_to_vector(F.validate_observation({}))
    assert vec.shape == (64,) and vec.dtype == np.float32


# A fixed vector per spec version: changing what the vector means must change FEATURE_SPEC_VERSION
# (checkpoints record it and refuse to load under another one).
GOLDEN = {"rlv3-features-1": "1815c35b60b08778"}


def test_feature_spec_version_changes_with_the_vector():
    observations = [
        {},
        {"price_change_1m": 0.003, "price_change_4h": -0.05, "volatility": 0.004, "rsi": 71.0, "macd": 0.002,
         "regime": "breakout", "position_side": -1, "position_size": 0.8, "unrealized_pnl": -0.02,
         "time_in_position": 7, "drawdown": 0.1, "cooldown_remaining": 3, "time_of_day": 0.25,
         "time_of_week": 0.6, "balance": 18000.0, "equity": 9800.0},
    ]
    vectors = F.observations_to_matrix([F.validate_observation(o) for o in observations])
    # Rounded, so last-bit differences between platforms' libm do not count as a change.
    digest = hashlib.sha256(np.round(vectors.astype(np.float64), 4).tobytes()).hexdigest()[:16]
    assert GOLDEN.get(F.FEATURE_SPEC_VERSION) == digest, (
        f"the feature vector changed ({digest}): bump FEATURE_SPEC_VERSION and record the new digest"
    )


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"rsi": 140}, "rsi", "rsi: must be between 0 and 100, got 140"),
        ({"rsi": -0.5}, "rsi", "rsi: must be between 0 and 100, got -0.5"),
        ({"rsi": float("nan")}, "rsi", "rsi: must be a finite number, got nan"),
        ({"volatility": float("inf")}, "volatility", "volatility: must be a finite number, got inf"),
        ({"macd": -float("inf")}, "macd", "macd: must be a finite number, got -inf"),
        ({"rsi": True}, "rsi", "rsi: must be a number, got bool"),
        ({"rsi": np.bool_(False)}, "rsi", "rsi: must be a number, got bool"),
        ({"rsi": "50"}, "rsi", "rsi: must be a number, got str '50'"),
        ({"rsi": None}, "rsi", "rsi: must be a number, got null"),
        ({"rsi": [50]}, "rsi", "rsi: must be a number, got list"),
        ({"rsi": {"v": 50}}, "rsi", "rsi: must be a number, got dict"),
        ({"price_change_1m": -1}, "price_change_1m", "must be greater than -1 and at most 10, got -1"),
        ({"price_change_5m": 11.0}, "price_change_5m", "must be greater than -1 and at most 10, got 11"),
        ({"time_of_day": 1.5}, "time_of_day", "must be between 0 and 1, got 1.5"),
        ({"position_side": 0.5}, "position_side", "must be -1, 0 or 1, got 0.5"),
        ({"position_side": 2}, "position_side", "must be -1, 0 or 1, got 2"),
        ({"volatility": -0.01}, "volatility", "must be between 0 and 5, got -0.01"),
        ({"spread": -1e-9}, "spread", "must be between 0 and 1"),
        ({"volume_ratio": -1}, "volume_ratio", "must be between 0 and 1000"),
        ({"balance": -5.0}, "balance", "must be between 0 and 1e+15, got -5"),
        ({"equity": 10**400}, "equity", "must be between 0 and 1e+15"),
        ({"position_size": -0.1}, "position_size", "must be between 0 and 100"),
        ({"regime": "sideways"}, "regime", "regime: must be one of TREND, RANGE, BREAKOUT, MEAN_REVERSION, got 'sideways'"),
        ({"regime": 3}, "regime", "must be one of TREND, RANGE, BREAKOUT, MEAN_REVERSION, got int"),
        ({"symbol": ""}, "symbol", "must be 1-32 characters"),
        ({"symbol": "BTC USDT"}, "symbol", "must be 1-32 characters"),
        ({"symbol": "X" * 33}, "symbol", "must be 1-32 characters"),
        ({"symbol": 42}, "symbol", "got int"),
    ],
)
def test_bad_fields_are_rejected_naming_the_field(raw, field, message):
    with pytest.raises(F.ObservationError) as info:
        F.validate_observation(raw)
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("raw", [None, [], "rsi=50", 42, [("rsi", 50)]])
def test_a_non_mapping_is_rejected_as_root(raw):
    with pytest.raises(F.ObservationError) as info:
        F.validate_observation(raw)
    assert info.value.field == "__root__"


@pytest.mark.parametrize("name", sorted(F._NUMERIC))
def test_every_numeric_bound_is_enforced(name):
    _, lo, hi = F._NUMERIC[name]
    F.validate_observation({name: hi})
    with pytest.raises(F.ObservationError, match=f"^{name}: "):
        F.validate_observation({name: hi + max(abs(hi), 1.0) * 1e-6})
    with pytest.raises(F.ObservationError, match=f"^{name}: "):
        F.validate_observation({name: lo - max(abs(lo), 1.0) * 1e-6})


def test_clean_output_types_and_tolerance_of_extra_keys():
    clean = F.validate_observation(
        {
            "rsi": 70,
            "volatility": np.float32(0.01),
            "position_side": np.int64(-1),
            "regime": " mean-reversion ",
            "symbol": "BTC/USDT:PERP",
            "strategy_id": "abc",  # streams send extra fields
            "confidence": None,
        }
    )
    assert clean["rsi"] == 70.0 and type(clean["rsi"]) is float
    assert type(clean["volatility"]) is float and type(clean["position_side"]) is float
    assert clean["position_side"] == -1.0
    assert clean["regime"] == "MEAN_REVERSION"
    assert clean["symbol"] == "BTC/USDT:PERP"
    assert "strategy_id" not in clean and "confidence" not in clean
    assert F.validate_observation({"regime": "MeanReversion"})["regime"] == "MEAN_REVERSION"


def _valid_value(name):
    _, lo, hi = F._NUMERIC[name]
    if name == "position_side":
        return st.sampled_from([-1.0, 0.0, 1.0])
    if name in F.HORIZONS:
        lo = -0.999
    # Mostly realistic magnitudes, sometimes the extremes of the valid range.
    hi_typ = min(hi, 2.0 if hi > 2.0 else hi)
    return st.one_of(st.floats(lo, hi_typ), st.sampled_from([lo, hi]), st.floats(lo, hi))


observations = st.fixed_dictionaries(
    {name: _valid_value(name) for name in F._NUMERIC} | {"regime": st.sampled_from(F.REGIMES)}
)


@settings(max_examples=200, deadline=None)
@given(observations)
def test_any_valid_observation_gives_a_bounded_finite_vector(raw):
    vec = F.observation_to_vector(F.validate_observation(raw))
    assert vec.shape == (64,) and vec.dtype == np.float32
    assert np.all(np.isfinite(vec))
    assert np.all(np.abs(vec) <= F.FEATURE_BOUND)


@settings(max_examples=25, deadline=None)
@given(st.lists(observations, min_size=1, max_size=4))
def test_matrix_is_the_stack_of_vectors(raws):
    clean = [F.validate_observation(r) for r in raws]
    assert np.array_equal(F.observations_to_matrix(clean), np.stack([F.observation_to_vector(c) for c in clean]))


accounts = st.fixed_dictionaries(
    {
        "price": st.floats(1e-3, 1e5),
        "position": st.one_of(st.just(0.0), st.floats(-1e4, 1e4)),
        "cash": st.floats(0.0, 1e7),
        "entry_price": st.floats(1e-3, 1e5),
        "time_in_position": st.integers(0, 10_000).map(float),
        "peak_equity": st.floats(1.0, 1e7),
        "cooldown": st.integers(0, 20).map(float),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(accounts, min_size=1, max_size=8), st.floats(0.0, 0.5), st.lists(st.floats(-3, 3), min_size=6, max_size=6))
def test_position_part_on_arrays_is_bit_identical_to_floats(states, volatility, cross):
    """The vectorised environment computes dims 44-63 on arrays; serving on floats."""
    sigma = max(volatility, F.SIGMA_FLOOR)
    scalar = []
    for s in states:
        fields = F.position_fields(**s)
        scalar.append(F.position_block(fields, sigma) + [fields["position_side"] * c for c in cross])
    arrays = {k: np.array([s[k] for s in states]) for k in states[0]}
    fields = F.position_fields(**arrays, ops=F.ARRAY_OPS)
    block = F.position_block(fields, np.full(len(states), sigma), F.ARRAY_OPS)
    vector = np.column_stack(block + [fields["position_side"] * c for c in cross])
    expected = np.array(scalar)
    assert np.array_equal(vector, expected)
    assert np.array_equal(vector.astype(np.float32), np.array(scalar, dtype=np.float32))


def test_every_dim_responds_to_some_field():
    """No padding: each of the 64 dims moves when some observation field moves."""
    base = F.validate_observation({"position_side": 1, "position_size": 0.5, "cooldown_remaining": 1, "time_in_position": 3})
    v0 = F.observation_to_vector(base)
    moved = np.zeros(64, dtype=bool)
    for name, (_, lo, hi) in F._NUMERIC.items():
        for value in (lo if name not in F.HORIZONS else -0.5, hi, (lo + hi) / 3):
            changed = dict(base, **{name: value})
            moved |= F.observation_to_vector(F.validate_observation(changed)) != v0
    for regime in F.REGIMES:
        moved |= F.observation_to_vector(dict(base, regime=regime)) != v0
    assert moved.all(), np.flatnonzero(~moved)


def test_market_fields_use_no_future_bars(googl):
    full = F.market_fields(googl.times, googl.open, googl.high, googl.low, googl.close, googl.volume)
    for cut in (F.WARMUP_BARS + 1, 1000, len(googl) - 1):
        head = F.market_fields(
            googl.times[:cut], googl.open[:cut], googl.high[:cut], googl.low[:cut], googl.close[:cut], googl.volume[:cut]
        )
        for name in F.MARKET_FIELDS:
            assert head[name][cut - 1] == full[name][cut - 1] or (
                isinstance(full[name][cut - 1], float) and math.isclose(head[name][cut - 1], full[name][cut - 1], rel_tol=1e-9, abs_tol=1e-12)
            ), name


def test_market_fields_of_every_bar_are_valid_observations(bundled):
    fields = F.market_fields(bundled.times, bundled.open, bundled.high, bundled.low, bundled.close, bundled.volume)
    lists = {k: v.tolist() for k, v in fields.items()}
    for bar in range(F.WARMUP_BARS, len(bundled)):
        F.validate_observation({k: values[bar] for k, values in lists.items()})
    regimes = set(fields["regime"][F.WARMUP_BARS:])
    assert regimes == set(F.REGIMES)  # every regime occurs on both datasets


def test_indicator_definitions_on_a_known_series():
    n = 300
    close = 100.0 * 1.001 ** np.arange(n)  # steady 0.1 % a bar rise
    high, low = close * 1.002, close * 0.998
    times = np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(1, "h")
    f = F.market_fields(times, close, high, low, close, np.full(n, 5.0))
    last = n - 1
    assert f["price_change_1m"][last] == pytest.approx(0.001)
    assert f["price_change_4h"][last] == pytest.approx(1.001**240 - 1)
    assert f["volatility"][last] == pytest.approx(0.0, abs=1e-12)
    assert f["rsi"][last] == 100.0  # only gains
    assert f["trend_strength"][last] == pytest.approx(1.0)  # a straight line
    assert f["trend_slope"][last] == pytest.approx(math.log(1.001))
    assert f["volume_ratio"][last] == 1.0
    assert f["time_of_day"][last] == pytest.approx((last % 24) / 24)
    assert f["time_of_week"][0] == 0.0  # 2024-01-01 was a Monday
    assert f["close_location"][last] == pytest.approx(0.5)
    assert f["high_distance"][last] == pytest.approx(1 / 1.002 - 1)

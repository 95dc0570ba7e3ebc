"""observations_to_matrix and values_to_matrix: the vectorised batch equals the stacked scalar
vectors, bit for bit; validate_observations is validate_observation on each observation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.rl import features as F
from training.rl.actions import N_ACTIONS
from training.rl.env import EnvConfig, TradingEnv


def _scalar_values(obs) -> np.ndarray:
    """observation_to_vector's 64 values before its float32 conversion (float64)."""
    dims = F.market_block(obs)
    vol = obs["volatility"]
    sigma = vol if vol > F.SIGMA_FLOOR else F.SIGMA_FLOOR
    side = obs["position_side"]
    cross = [side * dims[i] for i in F.CROSS_DIMS]
    return np.array(dims + F.position_block(obs, sigma) + cross, dtype=np.float64)


def _assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    bits = f"u{got.itemsize}"
    differ = np.argwhere(got.view(bits) != expected.view(bits))
    if len(differ):
        row, dim = differ[0]
        a, b = float(got[row, dim]), float(expected[row, dim])
        pytest.fail(f"{len(differ)} values differ; first: row {row} dim {dim}: {a!r} ({a.hex()}) != {b!r} ({b.hex()})")


def assert_batch_is_the_scalar_vectors(clean: list[dict]) -> None:
    """The vectorised path on ``clean`` equals the scalar functions bit for bit: the float32 vectors
    and, before that rounding (which hides most last-bit differences), the float64 values."""
    n = len(clean)
    vectors = np.stack([F.observation_to_vector(o) for o in clean])
    values = np.stack([_scalar_values(o) for o in clean])
    _assert_same_bits(values.astype(np.float32), vectors)  # the reference is observation_to_vector's
    packed = F.observations_pack(clean).values
    _assert_same_bits(F._values_into(packed, np.empty((n, F.FEATURE_DIM), dtype=np.float32)), vectors)
    _assert_same_bits(F._values_into(packed, np.empty((n, F.FEATURE_DIM), dtype=np.float64)), values)
    # The public function, on enough rows to take the vectorised path.
    batch = (clean * (F._BATCH_MIN_ROWS // n + 1))[: max(n, F._BATCH_MIN_ROWS)]
    matrix = F.observations_to_matrix(batch)
    assert matrix.flags.c_contiguous
    _assert_same_bits(matrix, np.concatenate([vectors] * (len(batch) // n + 1))[: len(batch)])
    # From the observations' values (how an API batch travels), vectorised and per row.
    _assert_same_bits(F.values_to_matrix(F.observations_pack(batch).values), matrix)
    _assert_same_bits(F.values_to_matrix(F.observations_pack(clean).values), vectors)


def _low(name: str) -> float:
    """The smallest valid value (a price change's low bound is exclusive)."""
    _, lo, _ = F._NUMERIC[name]
    return math.nextafter(-1.0, 0.0) if name in F.HORIZONS else lo


def _edges(name: str) -> list[float]:
    """Valid values at the edges: bounds, signed zeros, tiny and subnormal numbers, the floors and
    their neighbours, clip boundaries."""
    lo, hi = _low(name), F._NUMERIC[name][2]
    special = [0.0, -0.0, 5e-324, 1e-300, 2.2250738585072014e-308, 1e-20, 0.5, 1.0, 2.0, 3.0, 5.0, 50.0]
    special += [-v for v in special]
    for floor in (F.SIGMA_FLOOR, 0.05, 1e-5, F.EQUITY_FLOOR):
        special += [floor, math.nextafter(floor, 0.0), math.nextafter(floor, 1.0), floor / 2, floor * 2]
    return [lo, hi, math.nextafter(lo, hi), math.nextafter(hi, lo)] + [v for v in special if lo <= v <= hi]


def _valid_value(name: str):
    if name == "position_side":
        return st.sampled_from([-1.0, 0.0, -0.0, 1.0, -1, 0, 1])
    lo, hi = _low(name), F._NUMERIC[name][2]
    return st.one_of(st.sampled_from(_edges(name)), st.floats(lo, min(hi, 2.0)), st.floats(lo, hi))


# Any valid observation: each field missing (its default) or drawn from its valid range, edges included.
observations = st.fixed_dictionaries(
    {},
    optional={name: _valid_value(name) for name in F._NUMERIC} | {
        "regime": st.sampled_from([*F.REGIMES, "trend", "mean-reversion", "MeanReversion"]),
        "symbol": st.just("BTCUSDT"),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(observations, min_size=1, max_size=12))
def test_batch_of_any_valid_observations_is_bit_identical(raws):
    assert_batch_is_the_scalar_vectors([F.validate_observation(r) for r in raws])


def test_every_field_at_each_edge_is_bit_identical():
    """Each field at each of its edge values, on a flat, a long, a short and a signed-zero-side account."""
    accounts = [
        {},
        {"position_side": 1, "position_size": 0.5, "unrealized_pnl": 0.01, "time_in_position": 3},
        {"position_side": -1, "position_size": 2.5, "unrealized_pnl": -0.2, "cooldown_remaining": 2},
        {"position_side": -0.0, "volatility": 0.0, "atr": 0.0, "spread": -0.0},
    ]
    raws = [
        dict(account, **{name: value}, regime=F.REGIMES[i % len(F.REGIMES)])
        for account in accounts
        for name in F._NUMERIC
        for i, value in enumerate(_edges(name) if name != "position_side" else [-1.0, 0.0, -0.0, 1.0])
    ]
    assert_batch_is_the_scalar_vectors([F.validate_observation(r) for r in raws])


def _random_observation(rng: np.random.Generator) -> dict:
    raw = {name: rng.uniform(_low(name), min(hi, 2.0)) for name, (_, _, hi) in F._NUMERIC.items()}
    raw.update(position_side=int(rng.integers(-1, 2)), regime=F.REGIMES[int(rng.integers(len(F.REGIMES)))])
    return F.validate_observation(raw)


@pytest.mark.parametrize("n", [0, 1, F._BATCH_MIN_ROWS - 1, F._BATCH_MIN_ROWS, F._BATCH_MIN_ROWS + 1, 1024])
def test_matrix_of_any_length_is_the_stack_of_vectors(n):
    """Both sides of the switch from the per-row loop to the vectorised path, and the API's largest batch."""
    rng = np.random.default_rng(n)
    clean = [_random_observation(rng) for _ in range(n)]
    matrix = F.observations_to_matrix(clean)
    assert matrix.shape == (n, F.FEATURE_DIM) and matrix.dtype == np.float32 and matrix.flags.c_contiguous
    expected = np.array([F.observation_to_vector(o) for o in clean], dtype=np.float32).reshape(n, F.FEATURE_DIM)
    _assert_same_bits(matrix, expected)


def test_environment_observations_are_bit_identical(bundled):
    """Real market fields and the account states of a random-policy rollout, as serving receives them."""
    env = TradingEnv(bundled, "all", EnvConfig(episode_length=len(bundled), ruin_fraction=0.0))
    rng = np.random.default_rng(11)
    env.reset(seed=11, options={"start": bundled.first_bar})
    clean = []
    for _ in range(400):
        clean.append(F.validate_observation(env.observation_fields()))
        _, _, terminated, truncated, _ = env.step(int(rng.integers(N_ACTIONS)))
        if terminated or truncated:
            break
    assert len(clean) == 400 and len({o["position_side"] for o in clean}) == 3
    assert_batch_is_the_scalar_vectors(clean)


def test_every_bar_of_the_bundled_data_is_bit_identical(bundled):
    """market_fields of every tradable bar, each with an account state drawn from position_fields."""
    fields = F.market_fields(bundled.times, bundled.open, bundled.high, bundled.low, bundled.close, bundled.volume)
    rng = np.random.default_rng(5)
    clean = []
    for bar in range(bundled.first_bar, len(bundled)):
        price = float(bundled.close[bar])
        account = F.position_fields(
            price=price,
            position=float(rng.choice([0.0, 1.0, -1.0])) * float(rng.uniform(0.0, 2.0)) * 10_000.0 / price,
            cash=float(rng.uniform(0.0, 20_000.0)),
            entry_price=price * float(rng.uniform(0.9, 1.1)),
            time_in_position=float(rng.integers(0, 500)),
            peak_equity=float(rng.uniform(10_000.0, 30_000.0)),
            cooldown=float(rng.integers(0, 3)),
        )
        market = {name: (values[bar] if name == "regime" else float(values[bar])) for name, values in fields.items()}
        clean.append(F.validate_observation(market | account))
    assert_batch_is_the_scalar_vectors(clean)


# Anything a client may send as one observation: valid values, and each way a field can be wrong.
_bad_number = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e301, -1e301, 10**400, 101.0, -5.5, 0.5, 2])
_wrong_type = st.sampled_from([True, False, None, "1.0", [1.0], {"x": 1}])
raw_observations = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={name: st.one_of(_valid_value(name), _bad_number, _wrong_type) for name in F._NUMERIC} | {
            "regime": st.one_of(st.sampled_from([*F.REGIMES, "trend", "Mean Reversion", "SIDEWAYS", ""]), _wrong_type),
            "symbol": st.one_of(st.sampled_from(["BTCUSDT", "ETH/USDT:PERP", "", "bad symbol", "x" * 33]), _wrong_type),
            "unknown": st.just(1),
        },
    ),
    observations,
    st.sampled_from([[], "rsi", 5, None]),
)


def _one_by_one(raws):
    """validate_observation on each: the first error as (index, field, reason), else the clean dicts."""
    clean = []
    for i, raw in enumerate(raws):
        try:
            clean.append(F.validate_observation(raw))
        except F.ObservationError as exc:
            return (i, exc.field, exc.reason)
    return clean


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(observations, observations, raw_observations), min_size=1, max_size=30))
def test_validate_observations_is_validate_observation_on_each(raws):
    expected = _one_by_one(raws)
    try:
        batch = F.validate_observations(raws)
    except F.ObservationError as exc:
        assert (exc.index, exc.field, exc.reason) == expected
        return
    assert isinstance(expected, list), f"accepted what validate_observation rejects: {expected}"
    reference = F.observations_pack(expected)
    _assert_same_bits(batch.values, reference.values)
    assert batch.symbols == reference.symbols == [o.get("symbol", "") for o in expected]
    assert [F.observation_from_values(row) for row in batch.values.tolist()] == [
        {k: v for k, v in o.items() if k != "symbol"} for o in expected]


def test_validate_observations_reports_the_first_bad_field_of_the_first_bad_observation():
    raws = [{"rsi": 10}, {"rsi": 50, "macd": 9.0, "volatility": "high"}, {"rsi": 101}]
    with pytest.raises(F.ObservationError) as caught:
        F.validate_observations(raws)
    assert (caught.value.index, caught.value.field) == (1, "macd")
    assert caught.value.reason == "must be between -5 and 5, got 9"


def _bad_values(name: str) -> list:
    lo, hi = F._NUMERIC[name][1:]
    values = [math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf), math.nan, math.inf, -math.inf,
              10**400, -(10**400), True, None, "1", lo, hi]  # lo is bad for a price change (exclusive)
    return values + ([0.5, -0.5, 2] if name == "position_side" else [])


_TEXT_VALUES = ["", " ", "x" * 33, "bad symbol", "trend", "Mean Reversion", "SIDEWAYS", "BTCUSDT", 1, 1.5, None, True,
                [1.0], {"x": 1}, ["TREND"]]


@pytest.mark.parametrize("name", [*F._NUMERIC, "regime", "symbol"])
def test_each_field_alone_at_each_bad_value_is_judged_as_one_by_one(name):
    """One field of one observation in a valid batch: rejected exactly when validate_observation
    rejects it, with its message, else the same values."""
    for value in _bad_values(name) if name in F._NUMERIC else _TEXT_VALUES:
        raws = [{"rsi": 10, "symbol": "A"}, {"macd": 0.1, name: value}, {"regime": "range"}]
        expected = _one_by_one(raws)
        try:
            batch = F.validate_observations(raws)
        except F.ObservationError as exc:
            assert (exc.index, exc.field, exc.reason) == expected, value
            continue
        assert isinstance(expected, list), (value, expected)
        _assert_same_bits(batch.values, F.observations_pack(expected).values)


def test_fields_the_batch_leaves_alike_are_bit_identical():
    """Columns of one value (a default every observation leaves, or a value all send) take one call
    each in the vectorised path: still the scalar vectors, bit for bit, and a column of 0.0 and
    -0.0 (equal, not the same bits) is not taken for one value."""
    rng = np.random.default_rng(3)
    clean = []
    for i in range(64):
        clean.append(F.validate_observation({
            "symbol": "BTCUSDT", "rsi": float(rng.uniform(5, 95)), "volatility": 0.02, "time_of_day": 0.25,
            "price_change_1m": 0.0 if i % 2 else -0.0, "price_change_5m": float(rng.uniform(-0.01, 0.01)),
            "regime": "RANGE",
        }))
    assert_batch_is_the_scalar_vectors(clean)
    matrix = F.values_to_matrix(F.observations_pack(clean).values)
    assert np.signbit(matrix[:, 6]).tolist() == [i % 2 == 0 for i in range(64)]  # tanh(-0.0) is -0.0

"""Market data: the bundled real datasets, OHLCV CSVs in several layouts, splits, broken files."""

from __future__ import annotations

import numpy as np
import pytest

from tests.rl.conftest import FIXTURES
from training.rl.data import (
    MIN_BARS,
    DatasetError,
    MarketData,
    default_split,
    load_dataset,
)
from training.rl.features import WARMUP_BARS


def test_bundled_eurusd_is_the_real_2017_hourly_series(eurusd):
    assert (eurusd.symbol, eurusd.name, len(eurusd)) == ("EURUSD", "eurusd_1h", 6225)
    assert str(eurusd.times[0]) == "2017-01-01T22:00:00.000000000"  # day-first "01.01.2017 22:00:00.000"
    assert eurusd.close[0] == pytest.approx(1.05227)
    assert eurusd.bar_seconds == 3600.0
    # Weekends close the market: about 6,200 hourly bars a year, not 8,766.
    assert 6000 < eurusd.bars_per_year < 6400


def test_bundled_googl_is_the_real_daily_series(googl):
    assert (googl.symbol, len(googl)) == ("GOOGL", 2335)
    assert str(googl.times[0])[:10] == "2009-05-22"
    assert googl.close[0] == pytest.approx(196.946945)
    assert googl.bar_seconds == 86400.0
    assert 245 < googl.bars_per_year < 256  # trading days


def test_bundled_data_is_read_from_the_installed_package_not_the_repo():
    import importlib.resources
    import os

    packaged = importlib.resources.files("gym_anytrading.datasets").joinpath("data", "STOCKS_GOOGL.csv")
    assert packaged.is_file()
    repo = FIXTURES.parents[2]
    copies = []
    for root, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in {".venv", ".git", "node_modules"}]
        copies += [f for f in files if f in {"STOCKS_GOOGL.csv", "FOREX_EURUSD_1H_ASK.csv"}]
    assert copies == []


@pytest.mark.parametrize("name", ["eurusd_1h", "googl_1d"])
def test_splits_are_chronological_70_10_20_with_warmup_history(name):
    full = load_dataset(name)
    n = len(full)
    parts = {s: full.split(s) for s in ("train", "validation", "test")}
    bounds = [0, int(n * 0.7), int(n * 0.8), n]
    for (split, part), start, end in zip(parts.items(), bounds, bounds[1:]):
        assert part.split_name == split
        assert part.first_bar == WARMUP_BARS
        # The split's own bars are exactly [start, end) of the full data (train keeps its first
        # WARMUP_BARS as history), preceded by WARMUP_BARS bars of indicator history.
        own_start = max(start, WARMUP_BARS)
        assert np.array_equal(part.times[part.first_bar :], full.times[own_start:end])
        assert np.array_equal(part.close, full.close[own_start - WARMUP_BARS : end])
    assert parts["train"].times[-1] < parts["validation"].times[parts["validation"].first_bar]
    assert parts["validation"].times[-1] < parts["test"].times[parts["test"].first_bar]
    assert parts["test"].times[-1] == full.times[-1]  # the held-out last 20 %
    assert full.split("all") is full
    assert full.split("test") is full.split("test")  # shared, with its precomputed features


def test_fingerprint_is_stable_and_content_sensitive(googl):
    assert googl.fingerprint() == load_dataset("googl_1d").fingerprint()
    prints = {googl.split(s).fingerprint() for s in ("train", "validation", "test", "all")}
    assert len(prints) == 4
    changed = MarketData.from_arrays(
        "GOOGL", googl.times, googl.open, googl.high, googl.low, googl.close, googl.volume + 1.0
    )
    assert changed.fingerprint() != googl.fingerprint()


def test_default_split():
    assert default_split("eurusd_1h") == "test"
    assert default_split("googl_1d") == "test"
    assert default_split("/data/prices.csv") == "all"


def test_split_of_a_split_and_unknown_split_are_refused(googl):
    with pytest.raises(ValueError, match="unknown split"):
        googl.split("holdout")
    with pytest.raises(ValueError, match="already the 'test' split"):
        googl.split("test").split("train")


def test_day_first_csv_with_mixed_case_header():
    data = load_dataset(str(FIXTURES / "dayfirst.csv"))
    assert len(data) == 300 and data.symbol == "DAYFIRST"
    # "02.01.2017 00:00" is the 2nd of January, not the 1st of February.
    assert str(data.times[2]) == "2017-01-02T00:00:00.000000000"
    assert data.bar_seconds == 3600.0
    assert data.close[0] == pytest.approx(1.0502) and data.volume[0] == 762.0
    assert default_split(str(FIXTURES / "dayfirst.csv")) == "all"


def test_unnamed_index_csv_without_volume():
    data = load_dataset(str(FIXTURES / "unnamed_index.csv"))
    assert len(data) == 300
    assert str(data.times[0])[:10] == "2020-03-02" and data.bar_seconds == 86400.0
    assert np.all(data.volume == 0.0)
    assert data.open[0] == 250.0


def _write(tmp_path, name, header, rows):
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def _rows(n, time_of):
    return [f"{time_of(i)},{100 + i % 7},{102 + i % 7},{99 + i % 7},{101 + i % 7},{10 + i}" for i in range(n)]


def test_epoch_seconds_and_milliseconds_timestamps(tmp_path):
    seconds = _write(tmp_path, "s.csv", "timestamp,open,high,low,close,volume", _rows(MIN_BARS, lambda i: 1_700_000_000 + 60 * i))
    millis = _write(tmp_path, "ms.csv", "Timestamp,Open,High,Low,Close,Volume", _rows(MIN_BARS, lambda i: 1_700_000_000_000 + 60_000 * i))
    a, b = load_dataset(seconds), load_dataset(millis)
    assert str(a.times[0]) == "2023-11-14T22:13:20.000000000"
    assert np.array_equal(a.times, b.times) and a.bar_seconds == 60.0


def test_utc_offsets_are_converted_to_utc(tmp_path):
    path = _write(
        tmp_path, "tz.csv", "datetime,open,high,low,close,volume",
        _rows(MIN_BARS, lambda i: f"2024-01-01T{i // 60 % 24:02d}:{i % 60:02d}:00+02:00"),
    )
    assert str(load_dataset(path).times[0]) == "2023-12-31T22:00:00.000000000"


# file, line of the error (None: the whole file), words of the message. Each is a different problem.
BROKEN = [
    ("broken_empty.csv", None, "the file is empty"),
    ("broken_missing_column.csv", None, "missing column 'close'"),
    ("broken_no_time_column.csv", None, "no time column"),
    ("broken_bad_date.csv", 4, "cannot parse time '2020-02-30'"),
    ("broken_not_epoch.csv", 2, "not an epoch timestamp"),
    ("broken_non_positive_price.csv", 4, "low must be positive, got 0"),
    ("broken_nan_price.csv", 3, "close is not finite (nan)"),
    ("broken_infinite_price.csv", 3, "close is not finite (inf)"),
    ("broken_non_numeric_price.csv", 3, "close is not a number: 'n/a'"),
    ("broken_empty_cell.csv", 3, "close is empty"),
    ("broken_high_below_low.csv", 4, "high 0.5 is below low 2"),
    ("broken_close_outside_range.csv", 3, "close 2.5 is outside the bar's range"),
    ("broken_negative_volume.csv", 3, "volume must not be negative, got -3"),
    ("broken_unsorted.csv", 4, "not in ascending order: 2020-01-02 00:00:00 follows 2020-01-03 00:00:00"),
    ("broken_duplicate_time.csv", 4, "duplicate time 2020-01-02 00:00:00"),
    ("broken_too_few_bars.csv", None, f"too few bars: 3; at least {MIN_BARS} are needed"),
    ("broken_ragged_row.csv", 3, "not a well-formed CSV"),
]


@pytest.mark.parametrize(("filename", "line", "words"), BROKEN, ids=[b[0][7:-4] for b in BROKEN])
def test_broken_csv_names_file_line_and_problem(filename, line, words):
    path = str(FIXTURES / filename)
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    err = info.value
    assert err.source == path and err.row == line
    assert words in err.problem
    where = f"{path}, line {line}: " if line else f"{path}: "
    assert str(err).startswith(where)


def test_every_broken_csv_has_its_own_message():
    problems = set()
    for filename, _, _ in BROKEN:
        with pytest.raises(DatasetError) as info:
            load_dataset(str(FIXTURES / filename))
        problems.add(info.value.problem.split(":")[0].split(" is ")[0].split(" must ")[0])
    assert len(BROKEN) >= 12
    assert len(problems) >= 12, problems


def test_unknown_names_and_recorded_data():
    with pytest.raises(DatasetError, match="no such file, and not a bundled dataset"):
        load_dataset("btc_1m")
    with pytest.raises(DatasetError, match="through the training app"):
        load_dataset("recorded:BTCUSDT")


def test_from_arrays_builds_validated_data_and_names_the_bar(googl):
    data = MarketData.from_arrays("BTCUSDT", googl.times, googl.open, googl.high, googl.low, googl.close)
    assert data.symbol == "BTCUSDT" and np.all(data.volume == 0.0) and len(data) == len(googl)
    bad_close = googl.close.copy()
    bad_close[9] = -1.0
    with pytest.raises(DatasetError, match=r"^recorded:BTCUSDT, bar 10: close must be positive") as info:
        MarketData.from_arrays(
            "BTCUSDT", googl.times, googl.open, googl.high, googl.low, bad_close, name="recorded:BTCUSDT"
        )
    assert info.value.row == 10
    with pytest.raises(DatasetError, match="has 3 values for"):
        MarketData.from_arrays("X", googl.times, googl.open, googl.high, googl.low, googl.close[:3])


def test_a_split_too_short_to_trade_is_refused(tmp_path):
    path = _write(tmp_path, "short.csv", "date,open,high,low,close", [r.rsplit(",", 1)[0] for r in _rows(MIN_BARS, lambda i: f"2024-01-01 {i // 60 % 24:02d}:{i % 60:02d}")])
    data = load_dataset(path)
    assert data.split("all").tradable_bars == MIN_BARS - WARMUP_BARS
    with pytest.raises(DatasetError, match="the validation split has"):
        data.split("validation")

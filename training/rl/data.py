"""Market data: OHLCV bars from the bundled real datasets, any OHLCV CSV, or arrays.

Sources (CONTRACTS section 7):

- ``eurusd_1h``: EURUSD hourly ask prices, 2017 (about 6,200 bars) and ``googl_1d``: GOOGL daily,
  2009-2018 (about 2,300 bars). Both are real prices shipped inside the MIT-licensed ``gym-anytrading``
  package; they are read from the installed package and never copied into this repository.
- A path to any OHLCV CSV: the time column is named date, time, datetime or timestamp (any case) or is an
  unnamed first column; Open, High, Low, Close and an optional Volume in any letter case. ISO dates
  (``2009-05-22``), day-first dates (``01.01.2017 22:00:00.000``) and epoch numbers are understood.
  Times with a UTC offset are converted to UTC.
- ``recorded:SYMBOL`` (bars recorded from ``market.data_updated``) is resolved by a Django adapter outside
  this pure package, which builds the data with :meth:`MarketData.from_arrays`.

Every problem with a file raises :class:`DatasetError` naming the file, the line (1-based, the header
is line 1) and what is wrong.

Splits are chronological, never shuffled: train = first 70 %, validation = next 10 %, test = the
held-out last 20 %. Each split carries the :data:`~training.rl.features.WARMUP_BARS` bars before it as
indicator history; those bars are never traded (``first_bar`` marks the first tradable bar).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import os
import re
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from training.rl.features import WARMUP_BARS

BUNDLED_DATASETS: dict[str, tuple[str, str]] = {
    # name -> (file inside gym_anytrading/datasets/data, symbol)
    "eurusd_1h": ("FOREX_EURUSD_1H_ASK.csv", "EURUSD"),
    "googl_1d": ("STOCKS_GOOGL.csv", "GOOGL"),
}
SPLITS = ("train", "validation", "test", "all")
SPLIT_FRACTIONS = (0.7, 0.8)  # train ends at 70 %, validation at 80 %, test is the rest
MIN_TRADABLE_BARS = 20
# A dataset needs indicator history plus something to trade.
MIN_BARS = WARMUP_BARS + MIN_TRADABLE_BARS
TIME_COLUMNS = ("date", "time", "datetime", "timestamp")
PRICE_COLUMNS = ("open", "high", "low", "close")
_SECONDS_PER_YEAR = 365.25 * 86400.0
_ISO_DATE = re.compile(r"^\s*\d{4}-\d{1,2}-\d{1,2}")


class DatasetError(ValueError):
    """A dataset that cannot be used, with the file, the line and the problem.

    ``row`` is the 1-based line of the CSV (the header is line 1) or, for arrays, the 1-based bar
    number; ``None`` when the problem concerns the whole file.
    """

    def __init__(self, source: str, problem: str, row: int | None = None, *, unit: str = "line"):
        self.source = source
        self.problem = problem
        self.row = row
        where = f"{source}, {unit} {row}" if row is not None else source
        super().__init__(f"{where}: {problem}")


@dataclasses.dataclass(frozen=True, eq=False)
class MarketData:
    """OHLCV bars of one symbol, oldest first.

    Arrays have shape (bars,): ``times`` datetime64[ns] (UTC), prices and volume float64. Bars before
    ``first_bar`` are indicator history only and are never traded.
    """

    symbol: str
    name: str
    times: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    first_bar: int = WARMUP_BARS
    split_name: str = "all"

    def __len__(self) -> int:
        return len(self.close)

    @classmethod
    def from_arrays(
        cls,
        symbol: str,
        times: Sequence[Any] | np.ndarray,
        open: Sequence[float] | np.ndarray,  # noqa: A002 - the OHLCV column name
        high: Sequence[float] | np.ndarray,
        low: Sequence[float] | np.ndarray,
        close: Sequence[float] | np.ndarray,
        volume: Sequence[float] | np.ndarray | None = None,
        *,
        name: str | None = None,
    ) -> MarketData:
        """Build validated data from arrays (e.g. recorded market bars); errors name the bar (1-based)."""
        source = name or symbol
        try:
            t = np.asarray(times, dtype="datetime64[ns]")
        except (TypeError, ValueError) as exc:
            raise DatasetError(source, f"times are not datetimes ({exc})") from None
        cols = {}
        for col, values in (("open", open), ("high", high), ("low", low), ("close", close), ("volume", volume)):
            if values is None:
                cols[col] = np.zeros(len(t))
                continue
            try:
                cols[col] = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                raise DatasetError(source, f"{col} values are not numbers") from None
            if cols[col].shape != t.shape:
                raise DatasetError(source, f"{col} has {len(cols[col])} values for {len(t)} times")
        return _validated(source, symbol, t, cols, first_row=1, unit="bar")

    @cached_property
    def bar_seconds(self) -> float:
        """Median spacing of the bars in seconds (3600 for hourly data)."""
        return float(np.median(np.diff(self.times).astype("timedelta64[ns]").astype(np.int64))) / 1e9

    @cached_property
    def bars_per_year(self) -> float:
        """Bars per calendar year, measured from the data itself; the annualisation factor.

        The median spacing alone would overstate it: markets close at weekends and on holidays, so a
        stock has about 252 daily bars a year, not 365, and EURUSD about 6,200 hourly bars, not 8,766.
        """
        span = float((self.times[-1] - self.times[0]).astype("timedelta64[ns]").astype(np.int64)) / 1e9
        if span <= 0:
            return _SECONDS_PER_YEAR / max(self.bar_seconds, 1e-9)
        return (len(self) - 1) * _SECONDS_PER_YEAR / span

    def fingerprint(self) -> str:
        """sha256 (hex) of the bars' content and the tradable range, to pin a model to its data."""
        h = hashlib.sha256()
        h.update(f"{len(self)}:{self.first_bar}".encode())
        for arr in (self.times.astype("datetime64[ns]").view(np.int64), self.open, self.high, self.low, self.close, self.volume):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def split(self, name: str) -> MarketData:
        """The chronological split ``train`` | ``validation`` | ``test`` | ``all`` (70/10/20 %).

        The returned data starts WARMUP_BARS bars before the split (indicator history, ``first_bar``
        marks the first bar of the split itself) and ends where the split ends.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        if self.split_name != "all":
            raise ValueError(f"{self.name} is already the {self.split_name!r} split")
        if name == "all":
            return self
        # One object per split, so environments built on the same data share its precomputed features.
        cache = self.__dict__.setdefault("_splits", {})
        if name not in cache:
            cache[name] = self._make_split(name)
        return cache[name]

    def _make_split(self, name: str) -> MarketData:
        n = len(self)
        b1, b2 = (int(n * f) for f in SPLIT_FRACTIONS)
        start, end = {"train": (0, b1), "validation": (b1, b2), "test": (b2, n)}[name]
        lo = max(start - WARMUP_BARS, 0)
        first = max(start, WARMUP_BARS) - lo
        if end - lo - first < MIN_TRADABLE_BARS:
            raise DatasetError(
                self.name,
                f"the {name} split has {max(end - lo - first, 0)} tradable bars; at least {MIN_TRADABLE_BARS} "
                f"are needed (the dataset has {n} bars)",
            )
        sl = slice(lo, end)
        return dataclasses.replace(
            self,
            times=self.times[sl],
            open=self.open[sl],
            high=self.high[sl],
            low=self.low[sl],
            close=self.close[sl],
            volume=self.volume[sl],
            first_bar=first,
            split_name=name,
        )

    @property
    def tradable_bars(self) -> int:
        """Bars from ``first_bar`` to the end (the last bar can only be marked, not traded from)."""
        return len(self) - self.first_bar


def default_split(name_or_path: str) -> str:
    """``test`` (the held-out 20 %) for a bundled dataset, ``all`` for a CSV path or recorded data."""
    return "test" if name_or_path in BUNDLED_DATASETS else "all"


def load_dataset(name_or_path: str) -> MarketData:
    """Load a bundled dataset by name (``eurusd_1h``, ``googl_1d``) or an OHLCV CSV by path."""
    if name_or_path in BUNDLED_DATASETS:
        filename, symbol = BUNDLED_DATASETS[name_or_path]
        resource = importlib.resources.files("gym_anytrading.datasets").joinpath("data", filename)
        with importlib.resources.as_file(resource) as path:
            return read_csv(path, symbol=symbol, name=name_or_path)
    if name_or_path.startswith("recorded:"):
        raise DatasetError(
            name_or_path, "recorded market bars are loaded through the training app (it needs the database)"
        )
    if not os.path.exists(name_or_path):
        raise DatasetError(
            name_or_path,
            "no such file, and not a bundled dataset (expected "
            f"{', '.join(BUNDLED_DATASETS)}, recorded:SYMBOL or a path to an OHLCV .csv file)",
        )
    stem = os.path.splitext(os.path.basename(name_or_path))[0]
    return read_csv(name_or_path, symbol=stem.upper(), name=str(name_or_path))


def read_csv(path: str | os.PathLike[str], *, symbol: str, name: str | None = None) -> MarketData:
    """Parse an OHLCV CSV (see the module docstring for the accepted layouts)."""
    import pandas as pd  # heavy; only needed when reading files

    source = name or str(path)
    try:
        with open(path, "rb") as fh:
            if not fh.read(4096).strip():
                raise DatasetError(source, "the file is empty")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except DatasetError:
        raise
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        detail = " ".join(str(exc).split())
        raise DatasetError(source, f"not a well-formed CSV ({detail})", int(line.group(1)) if line else None) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(source, f"cannot read the file ({exc})") from None

    columns = {str(c).strip().lower(): c for c in reversed(frame.columns)}  # first of duplicates wins
    time_col = next((columns[c] for c in TIME_COLUMNS if c in columns), None)
    if time_col is None:
        first = str(frame.columns[0]).strip() if len(frame.columns) else ""
        if first == "" or first.startswith("Unnamed: 0"):
            time_col = frame.columns[0]
        else:
            raise DatasetError(
                source,
                "no time column: expected one named date, time, datetime or timestamp, or an unnamed "
                f"first column; found {', '.join(map(str, frame.columns))}",
            )
    for col in PRICE_COLUMNS:
        if col not in columns:
            raise DatasetError(
                source, f"missing column {col!r} (any letter case); found {', '.join(map(str, frame.columns))}"
            )

    first_line = 2  # line 1 is the header
    times = _parse_times(source, frame[time_col].to_numpy(dtype=object), first_line)
    cols = {col: _parse_numbers(source, col, frame[columns[col]].to_numpy(dtype=object), first_line) for col in PRICE_COLUMNS}
    if "volume" in columns:
        cols["volume"] = _parse_numbers(source, "volume", frame[columns["volume"]].to_numpy(dtype=object), first_line)
    else:
        cols["volume"] = np.zeros(len(times))
    return _validated(source, symbol, times, cols, first_row=first_line, unit="line")


def _parse_numbers(source: str, col: str, raw: np.ndarray, first_line: int) -> np.ndarray:
    out = np.empty(len(raw), dtype=np.float64)
    for i, text in enumerate(raw):
        try:
            out[i] = float(text)
        except (TypeError, ValueError):
            problem = f"{col} is empty" if str(text).strip() == "" else f"{col} is not a number: {text!r}"
            raise DatasetError(source, problem, i + first_line) from None
    return out


def _parse_times(source: str, raw: np.ndarray, first_line: int) -> np.ndarray:
    """Parse a time column to datetime64[ns] (UTC, naive); one format for the whole column."""
    import pandas as pd

    if len(raw) == 0:
        return np.array([], dtype="datetime64[ns]")
    text = pd.Series(raw, dtype=object).astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        return _epoch_times(source, numeric.to_numpy(np.float64), first_line)
    first = text.iloc[0]
    if _ISO_DATE.match(first):
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        hint = "ISO 8601"
    else:
        fmt = pd.tseries.api.guess_datetime_format(first, dayfirst=True)
        if fmt is None:
            raise DatasetError(source, f"cannot parse time {first!r}", first_line)
        parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
        hint = f"the first row's format {fmt}"
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DatasetError(source, f"cannot parse time {text.iloc[i]!r} (expected {hint})", i + first_line)
    return parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _epoch_times(source: str, values: np.ndarray, first_line: int) -> np.ndarray:
    """Epoch numbers: seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude."""
    bad = np.flatnonzero(~np.isfinite(values) | (values < 1e8))
    if len(bad):
        i = int(bad[0])
        raise DatasetError(source, f"cannot parse time {values[i]:g}: not an epoch timestamp", i + first_line)
    scale = next(s for limit, s in ((1e11, 1e9), (1e14, 1e6), (1e17, 1e3), (np.inf, 1.0)) if np.median(values) < limit)
    return (values * scale).astype(np.int64).astype("datetime64[ns]")


def _fmt_time(t: np.datetime64) -> str:
    return str(np.datetime_as_string(t, unit="s")).replace("T", " ")


def _validated(
    source: str, symbol: str, times: np.ndarray, cols: dict[str, np.ndarray], *, first_row: int, unit: str
) -> MarketData:
    """Check the bars (in file order, so the reported row is the first bad one) and build MarketData."""

    def fail(problem: str, index: int) -> DatasetError:
        return DatasetError(source, problem, int(index) + first_row, unit=unit)

    for col in (*PRICE_COLUMNS, "volume"):
        values = cols[col]
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise fail(f"{col} is not finite ({values[bad[0]]})", bad[0])
        if col == "volume":
            bad = np.flatnonzero(values < 0)
            if len(bad):
                raise fail(f"volume must not be negative, got {values[bad[0]]:g}", bad[0])
        else:
            bad = np.flatnonzero(values <= 0)
            if len(bad):
                raise fail(f"{col} must be positive, got {values[bad[0]]:g}", bad[0])
    o, h, lo, c = (cols[k] for k in PRICE_COLUMNS)
    bad = np.flatnonzero(h < lo)
    if len(bad):
        i = bad[0]
        raise fail(f"high {h[i]:g} is below low {lo[i]:g}", i)
    for col, values in (("open", o), ("close", c)):
        bad = np.flatnonzero((values > h) | (values < lo))
        if len(bad):
            i = bad[0]
            raise fail(f"{col} {values[i]:g} is outside the bar's range low {lo[i]:g} - high {h[i]:g}", i)
    if len(times) > 1:
        step = np.diff(times.astype(np.int64))
        bad = np.flatnonzero(step == 0)
        if len(bad):
            i = bad[0] + 1
            raise fail(f"duplicate time {_fmt_time(times[i])} (same as the previous {unit})", i)
        bad = np.flatnonzero(step < 0)
        if len(bad):
            i = bad[0] + 1
            raise fail(f"times are not in ascending order: {_fmt_time(times[i])} follows {_fmt_time(times[i - 1])}", i)
    if len(times) < MIN_BARS:
        raise DatasetError(
            source,
            f"too few bars: {len(times)}; at least {MIN_BARS} are needed "
            f"({WARMUP_BARS} of indicator history and {MIN_TRADABLE_BARS} to trade)",
        )
    return MarketData(
        symbol=symbol, name=source, times=times, open=o, high=h, low=lo, close=c, volume=cols["volume"]
    )

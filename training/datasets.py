"""Dataset names as users give them: bundled names, recorded:SYMBOL (market bars recorded from the
stream), or a CSV path. The recorded adapter lives here because it reads the database; the pure
loader is training.rl.data."""

from __future__ import annotations

from datetime import timezone

import numpy as np

from training.rl import data as rl_data

RECORDED_PREFIX = "recorded:"


def dataset_is_known(name: str, *, allow_paths: bool = False) -> bool:
    """True for a bundled dataset or a recorded:SYMBOL name (paths only when allowed: never from the API)."""
    if name in rl_data.BUNDLED_DATASETS:
        return True
    if name.startswith(RECORDED_PREFIX):
        symbol = name[len(RECORDED_PREFIX):]
        return 0 < len(symbol) <= 32 and all(c.isalnum() or c in "._:/-" for c in symbol)
    return allow_paths and name.lower().endswith(".csv")


def dataset_load(name: str, *, since=None) -> "rl_data.MarketData":
    """Load a dataset by name; recorded:SYMBOL reads MarketBar rows (optionally only those since a time)."""
    if not name.startswith(RECORDED_PREFIX):
        return rl_data.load_dataset(name)
    from decisions.models import MarketBar

    symbol = name[len(RECORDED_PREFIX):]
    bars = MarketBar.objects.filter(symbol=symbol).order_by("time")
    if since is not None:
        bars = bars.filter(time__gte=since)
    rows = list(bars.values_list("time", "open", "high", "low", "close", "volume"))
    if not rows:
        window = f" since {since:%Y-%m-%d %H:%M} UTC" if since is not None else ""
        raise rl_data.DatasetError(name, f"no recorded market bars for {symbol}{window}")
    # naive UTC datetimes: numpy's datetime64 has no time zone
    times = np.array([r[0].astimezone(timezone.utc).replace(tzinfo=None) for r in rows], dtype="datetime64[ns]")
    cols = np.array([r[1:] for r in rows], dtype=np.float64)
    return rl_data.MarketData.from_arrays(
        symbol, times, cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3], cols[:, 4], name=name
    )

"""Shared benchmark helpers: the human table, the JSON last line, bench/results/latest.json.

Every benchmark prints a table for people and, with ``--json``, one JSON object as the LAST
line of its output (so scripts can take ``tail -1``). `record` merges the benchmark's result
into ``bench/results/latest.json`` under its own key, leaving the other benchmarks' keys alone.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LATEST = RESULTS / "latest.json"

if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))


def machine() -> dict[str, Any]:
    """Where the figures were measured (they are meaningless without it)."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(title: str, rows: Iterable[Sequence[Any]], headers: Sequence[str] = ("measure", "value", "target")) -> None:
    """Print an aligned plain-text table."""
    rows = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    print(title)
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def emit_json(result: dict[str, Any]) -> None:
    """Print ``result`` as one JSON line; call it last."""
    print(json.dumps(result, sort_keys=True), flush=True)


def record(name: str, result: dict[str, Any], path: Path = LATEST) -> None:
    """Merge ``{name: result}`` into ``latest.json`` atomically (other keys are kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        current = json.loads(path.read_text())
        if not isinstance(current, dict):
            current = {}
    except (OSError, ValueError):
        current = {}
    current[name] = result
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".latest.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(current, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def finish(name: str, title: str, rows: Iterable[Sequence[Any]], result: dict[str, Any], as_json: bool) -> int:
    """The end of every benchmark: the table, ``latest.json`` under ``name``, the JSON last line."""
    print_table(title, rows)
    record(name, result)
    if as_json:
        emit_json(result)
    return 0


def percentile_us(samples_ns: Sequence[int], q: float) -> float:
    """The q-th percentile (0-100) of nanosecond samples, in microseconds."""
    ordered = sorted(samples_ns)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k] / 1000.0


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)

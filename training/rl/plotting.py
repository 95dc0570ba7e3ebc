"""Equity-curve charts (PNG) for backtests."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


def plot_equity_curves(curves: Mapping[str, np.ndarray], path: str | os.PathLike[str], title: str) -> str:
    """Draw one line per equity curve (account currency against bar number) into a PNG at ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot state), so it is safe in servers and threads.
    Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64)
        change = curve[-1] / curve[0] - 1.0 if len(curve) and curve[0] else 0.0
        ax.plot(np.arange(len(curve)), curve, label=f"{label} ({change:+.1%})", linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("bar")
    ax.set_ylabel("equity")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, format="png")
    return path

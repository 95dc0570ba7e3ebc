"""PNG charts of the admin dashboard, drawn server-side with matplotlib's Agg canvas.

Pure renderers: each takes plain data and returns PNG bytes (no database, no pyplot global state,
so they are safe in threaded gunicorn workers). The equity curve comes from
``training.rl.plotting.plot_equity_curves`` and the training curve from ``training.plots``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import datetime

from training.rl.actions import ACTION_NAMES

# One colour per action, the same on every chart (and in the dashboard's tables).
ACTION_COLORS: dict[str, str] = {
    "HOLD": "#9e9e9e",
    "LONG": "#2e7d32",
    "SHORT": "#c62828",
    "REDUCE": "#ef6c00",
    "CLOSE": "#1565c0",
    "EMERGENCY_FLATTEN": "#6a1b9a",
}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def decisions_per_minute_png(starts: Sequence[datetime], rates: Mapping[str, Sequence[float]], *, title: str) -> bytes:
    """Stacked bars of decisions per minute by action, one bar per time bucket.

    ``starts``: the buckets' start times (UTC, oldest first, equally spaced); ``rates``: action name
    -> decisions per minute in each bucket (same length). Returns PNG bytes (10 x 3.2 in, 100 dpi).
    """
    import matplotlib.dates as mdates

    fig = _figure(10, 3.2)
    ax = fig.add_subplot()
    if not starts or not any(any(r) for r in rates.values()):
        _empty(ax, "no decisions in the window")
    else:
        width = (starts[1] - starts[0]) if len(starts) > 1 else None
        x = [s + width / 2 for s in starts] if width else list(starts)
        bottom = [0.0] * len(starts)
        for name in ACTION_NAMES:
            values = rates.get(name) or [0.0] * len(starts)
            if any(values):
                ax.bar(x, values, width=width * 0.9 if width else 0.005, bottom=bottom, color=ACTION_COLORS[name], label=name)
                bottom = [a + b for a, b in zip(bottom, values)]
        ax.set_ylabel("decisions / minute")
        ax.set_xlim(starts[0], starts[-1] + (width or 0))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=starts[0].tzinfo))
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=6, frameon=False)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def action_mix_png(mix: Mapping[str, Mapping[str, int]], *, title: str) -> bytes:
    """Horizontal 100 % bars: the share of each action per symbol, the symbol's count at the right.

    ``mix``: symbol -> action name -> count (symbols in display order, top first).
    """
    fig = _figure(10, max(2.2, 0.42 * len(mix) + 1.2))
    ax = fig.add_subplot()
    if not mix:
        _empty(ax, "no decisions in the window")
    else:
        symbols = list(mix)
        totals = [sum(mix[s].values()) or 1 for s in symbols]
        left = [0.0] * len(symbols)
        for name in ACTION_NAMES:
            shares = [mix[s].get(name, 0) / t for s, t in zip(symbols, totals)]
            if any(shares):
                ax.barh(symbols, shares, left=left, color=ACTION_COLORS[name], label=name, height=0.7)
                left = [a + b for a, b in zip(left, shares)]
        for y, total in enumerate(totals):
            ax.text(1.01, y, f"{total:,}", va="center", fontsize=8)
        ax.set_xlim(0, 1.08)
        ax.invert_yaxis()
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0 %", "25 %", "50 %", "75 %", "100 %"])
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncol=6, frameon=False)
        ax.set_title(title, fontsize=10, pad=24)
    fig.tight_layout()
    return _png(fig)


def ab_actions_png(champion: Mapping[str, int], challenger: Mapping[str, int], *, title: str) -> bytes:
    """Grouped bars: how often the champion and the challenger chose each action on the same signals."""
    fig = _figure(10, 2.8)
    ax = fig.add_subplot()
    if not sum(champion.values()) and not sum(challenger.values()):
        _empty(ax, "no signals scored by both")
    else:
        xs = range(len(ACTION_NAMES))
        ax.bar([x - 0.2 for x in xs], [champion.get(n, 0) for n in ACTION_NAMES], width=0.4, label="champion", color="#37474f")
        ax.bar([x + 0.2 for x in xs], [challenger.get(n, 0) for n in ACTION_NAMES], width=0.4, label="challenger", color="#90a4ae")
        ax.set_xticks(list(xs), ACTION_NAMES, fontsize=8)
        ax.set_ylabel("signals")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)

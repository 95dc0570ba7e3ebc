"""The training-curve PNG of a run (matplotlib's Agg canvas: no display, safe in workers)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# (title, [(curve key, label), ...]) per panel, x axis = environment steps.
PANELS = (
    ("reward", [("reward_mean", "mean reward / step"), ("episode_return_mean", "mean episode return")]),
    ("losses", [("policy_loss", "policy loss"), ("value_loss", "value loss")]),
    ("policy", [("entropy", "entropy"), ("approx_kl", "approx KL"), ("clip_fraction", "clip fraction")]),
    ("critic and speed", [("explained_variance", "explained variance"), ("env_steps_per_s", "env steps/s (right)")]),
)


def _series(curve: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for point in curve:
        value = point.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(float(point.get("timesteps", len(xs))))
            ys.append(float(value))
    return xs, ys


def plot_training_curve(curve: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str = "") -> Path:
    """Write a 2x2 PNG of the per-update diagnostics in `curve` (dicts keyed as
    `training.rl.ppo.UPDATE_METRICS`, plus ``reward_mean``) to `path`, atomically. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    for ax, (panel, keys) in zip(axes, PANELS):
        for key, label in keys:
            xs, ys = _series(curve, key)
            if not xs:
                continue
            target = ax.twinx() if key == "env_steps_per_s" else ax
            target.plot(xs, ys, label=label, color="grey" if key == "env_steps_per_s" else None, linewidth=1.2)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("environment steps", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if not curve:
        fig.text(0.5, 0.5, "no updates recorded", ha="center")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path

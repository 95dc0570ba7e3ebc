"""Training callbacks: the progress bar and the TensorBoard writer plug in here.

`train` calls ``on_training_start`` once, ``on_update`` after every PPO update with that
update's metrics (see `training.rl.ppo.UPDATE_METRICS`), and ``on_training_end`` once. An
``on_update`` that returns ``False`` stops training after the current update.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

# Keys that are not training curves (bookkeeping) and are not sent to TensorBoard as scalars.
_NOT_SCALARS = {"update", "timesteps"}


class TrainingCallback:
    """Base class with no-op hooks; subclass and override what you need."""

    def on_training_start(self, *, total_timesteps: int, config: Any) -> None:
        """Called once before the first rollout."""

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        """Called after each update with its metrics; return False to stop training."""
        return None

    def on_training_end(self, result: Any) -> None:
        """Called once with the `TrainResult` (also after an early stop)."""


class FunctionCallback(TrainingCallback):
    """Wrap a plain ``fn(metrics) -> bool | None`` as a callback."""

    def __init__(self, fn: Callable[[Mapping[str, Any]], bool | None]) -> None:
        self.fn = fn

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        return self.fn(metrics)


class ProgressBarCallback(TrainingCallback):
    """A tqdm bar over environment steps showing steps/s and the mean episode return."""

    def __init__(self, *, desc: str = "training", file: Any = None, disable: bool = False) -> None:
        self.desc, self.file, self.disable = desc, file, disable
        self._bar: Any = None

    def on_training_start(self, *, total_timesteps: int, config: Any) -> None:
        from tqdm import tqdm  # imported here so a serving process never pays for it

        # Training runs whole rollouts, so it may overshoot the request by less than one.
        buffer = getattr(config, "buffer_size", 1)
        total = -(-total_timesteps // buffer) * buffer
        self._bar = tqdm(total=total, desc=self.desc, unit="step", file=self.file,
                         disable=self.disable, dynamic_ncols=True)

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        if self._bar is not None:
            self._bar.update(int(metrics["timesteps"]) - self._bar.n)
            ret = metrics.get("episode_return_mean")
            postfix = {"sps": f"{metrics['env_steps_per_s']:.0f}"}
            if ret is not None:
                postfix["return"] = f"{ret:.3g}"
            self._bar.set_postfix(postfix, refresh=False)
        return None

    def on_training_end(self, result: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TensorBoardCallback(TrainingCallback):
    """Write every numeric update metric as a scalar to ``log_dir`` (x axis: timesteps)."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self._writer: Any = None

    def on_training_start(self, *, total_timesteps: int, config: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=self.log_dir)
        if hasattr(config, "to_dict"):
            self._writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in config.to_dict().items()))

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        if self._writer is None:
            return None
        step = int(metrics["timesteps"])
        for key, value in metrics.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(f"ppo/{key}", value, step)
        return None

    def on_training_end(self, result: Any) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

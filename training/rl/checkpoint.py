"""Checkpoints: an atomic torch file for training plus a numpy twin for torch-free serving.

`save_checkpoint` writes two files, each atomically (temporary file in the same directory,
fsync, ``os.replace``, fsync of the directory), so a crash never leaves a half-written model
where the registry points:

- ``<path>`` (``.pt``): ``torch.save`` of a dict holding only tensors and primitives — the
  ``state_dict``, the architecture, the config dict, ``feature_spec_version``, the action enum
  (``ACTION_ENUM_SPEC``), metrics and extra metadata — so it loads with
  ``torch.load(weights_only=True)`` and no pickled code ever runs.
- ``<stem>.npz``: the same weights as float32 arrays plus the metadata as a JSON string array,
  loadable with ``allow_pickle=False`` (see `training.rl.inference.PolicyRuntime`).

`load_checkpoint` verifies the sha256 when given and refuses a checkpoint recorded under a
different feature spec or action enum, saying which. Policies trained on a gymnasium
environment are saved with ``feature_spec_version=None`` and no action enum: those checks do
not apply to them and are skipped (their observations are not trading features).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from training.rl.actions import ACTION_ENUM_SPEC
from training.rl.config import PPOConfig
from training.rl.inference import (
    METADATA_KEY,
    CheckpointError,
    check_compatibility,
    file_sha256,
    read_verified,
    runtime_metadata,
)
from training.rl.networks import ActorCritic

CHECKPOINT_FORMAT = "rlv3-ppo"
CHECKPOINT_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SavedArtifact:
    """Where a checkpoint was written and the sha256 of each file (hex)."""

    path: Path
    sha256: str
    runtime_path: Path
    runtime_sha256: str


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint: the network (eval mode) and everything recorded with it."""

    policy: ActorCritic
    config: dict[str, Any]
    metrics: dict[str, Any]
    feature_spec_version: str | None
    metadata: dict[str, Any]
    path: Path
    sha256: str

    def ppo_config(self) -> PPOConfig:
        """The recorded hyperparameters as a `PPOConfig`."""
        return PPOConfig.from_dict(self.config)


def runtime_path_for(path: "str | os.PathLike[str]") -> Path:
    """The numpy twin of a checkpoint: same directory and stem, ``.npz``."""
    return Path(path).with_suffix(".npz")


def save_checkpoint(
    path: "str | os.PathLike[str]",
    policy: ActorCritic,
    *,
    config: "PPOConfig | Mapping[str, Any]",
    metrics: Mapping[str, Any],
    feature_spec_version: str | None,
    extra: Mapping[str, Any] | None = None,
) -> SavedArtifact:
    """Write ``path`` (torch) and ``<stem>.npz`` (numpy) atomically; return their sha256s.

    ``feature_spec_version`` is `training.rl.features.FEATURE_SPEC_VERSION` for trading
    policies and None for gymnasium-env policies. ``metrics`` and ``extra`` must be
    JSON-like (numbers, strings, lists, dicts); NaN and infinities are stored as None.
    """
    path = Path(path)
    if path.suffix == ".npz":
        raise ValueError("the checkpoint path must not end in .npz (that name is the runtime file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    config_dict = config.to_dict() if isinstance(config, PPOConfig) else dict(config)
    metadata: dict[str, Any] = _json_clean({
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "architecture": policy.architecture(),
        "config": config_dict,
        "metrics": dict(metrics),
        "feature_spec_version": feature_spec_version,
        "action_enum": dict(ACTION_ENUM_SPEC) if feature_spec_version is not None else None,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "torch_version": torch.__version__,
        **({"extra": dict(extra)} if extra else {}),
    })
    if extra and "version" in extra:
        metadata["version"] = metadata["extra"]["version"]

    # The runtime file first: the torch checkpoint records its sha256, tying the two together.
    buf = io.BytesIO()
    runtime_meta = json.dumps(runtime_metadata(metadata), sort_keys=True)
    np.savez(buf, **policy.export_arrays(), **{METADATA_KEY: np.array(runtime_meta)})
    runtime_path = runtime_path_for(path)
    runtime_sha = _write_atomic(runtime_path, buf.getvalue())

    payload = {
        **metadata,
        "runtime_sha256": runtime_sha,
        # Cloned so each tensor owns its storage (training keeps them as views of one buffer).
        "state_dict": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    sha = _write_atomic(path, buf.getvalue())
    return SavedArtifact(path=path, sha256=sha, runtime_path=runtime_path, runtime_sha256=runtime_sha)


def load_checkpoint(
    path: "str | os.PathLike[str]",
    expected_sha256: str | None = None,
    *,
    feature_spec_version: str | None = None,
    device: "str | torch.device" = "cpu",
) -> LoadedCheckpoint:
    """Load and verify a checkpoint written by `save_checkpoint`.

    Raises `CheckpointError` when the file is unreadable, its sha256 differs from
    ``expected_sha256`` ("sha256 mismatch ..."), or it was recorded under another feature spec
    version (default: the code's) or action enum. Uses ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    data, digest = read_verified(path, expected_sha256, "checkpoint")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"{path} is not a loadable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an RL v3 PPO checkpoint")
    metadata = {k: v for k, v in payload.items() if k != "state_dict"}
    check_compatibility(metadata, feature_spec_version=feature_spec_version, source=str(path))
    arch = metadata["architecture"]
    policy = ActorCritic(arch["obs_dim"], arch["n_actions"], arch["hidden_sizes"], device=device)
    try:
        policy.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path} weights do not match its recorded architecture: {exc}") from exc
    policy.eval()
    return LoadedCheckpoint(
        policy=policy, config=dict(metadata.get("config") or {}), metrics=dict(metadata.get("metrics") or {}),
        feature_spec_version=metadata.get("feature_spec_version"), metadata=metadata, path=path, sha256=digest,
    )


def _write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return file_sha256(data)


def _json_clean(value: Any) -> Any:
    """Plain JSON types only (numpy scalars to Python, tuples to lists, non-finite floats to None)."""
    if isinstance(value, Mapping):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_clean(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return str(value)  # plain str: subclasses (e.g. torch.__version__) would need unpickling code
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint metadata")

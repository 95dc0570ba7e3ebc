"""Registry rows with known metrics, for tests that exercise the registry without training."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FakeArtifact:
    path: Path
    sha256: str
    runtime_path: Path
    runtime_sha256: str


def fake_artifact(directory: Path, tag: str) -> FakeArtifact:
    """Two small files standing in for a checkpoint and its numpy export."""
    directory.mkdir(parents=True, exist_ok=True)
    pt, npz = directory / f"{tag}.pt", directory / f"{tag}.npz"
    pt.write_bytes(f"checkpoint {tag}".encode())
    npz.write_bytes(f"runtime {tag}".encode())
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    return FakeArtifact(pt, digest(pt), npz, digest(npz))


def version_with(tmp_dir: Path, *, sharpe: float, max_drawdown: float = 0.05, dataset: str = "eurusd_1h", **extra):
    """Register a version whose validation metrics are the given ones (no alias moved)."""
    from training.services import model_version_register

    artifact = fake_artifact(tmp_dir, f"m{sharpe}-{max_drawdown}-{len(list(tmp_dir.glob('*.pt')))}")
    metrics = {"validation": {"sharpe": sharpe, "max_drawdown": max_drawdown, **extra}, "test": {"sharpe": 0.0}}
    return model_version_register(
        artifact=artifact, config={}, metrics=metrics, dataset=dataset, feature_spec_version="test-spec",
    )


def policy_version(tmp_dir: Path, *, seed: int, sharpe: float, max_drawdown: float = 0.01, dataset: str = "eurusd_1h"):
    """Register a real, loadable (untrained, seeded) policy saved the way training saves it, with
    known validation metrics; each seed decides differently."""
    import torch

    from training.rl.actions import N_ACTIONS
    from training.rl.checkpoint import save_checkpoint
    from training.rl.features import FEATURE_DIM, FEATURE_SPEC_VERSION
    from training.rl.networks import ActorCritic
    from training.services import model_version_register

    policy = ActorCritic(FEATURE_DIM, N_ACTIONS, (64, 64), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        policy.actor_bias.copy_(torch.linspace(-1, 1, N_ACTIONS) * (1 if seed % 2 else -1))
    artifact = save_checkpoint(tmp_dir / f"seed{seed}" / "policy.pt", policy, config={}, metrics={},
                               feature_spec_version=FEATURE_SPEC_VERSION)
    metrics = {"validation": {"sharpe": sharpe, "max_drawdown": max_drawdown}}
    return model_version_register(artifact=artifact, config={}, metrics=metrics, dataset=dataset)

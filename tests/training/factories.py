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

"""Writes to the model registry and training runs (keyword-only functions, <noun>_<verb>)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from .models import (
    ACTIVE_RUN_STATUSES,
    AliasChange,
    AliasName,
    ModelAlias,
    ModelVersion,
    RunKind,
    RunStatus,
    TrainingRun,
)
from .selectors import alias_version, training_run_active

log = logging.getLogger(__name__)


class TrainingRunActive(Exception):
    """A run for this dataset is already queued or running."""

    def __init__(self, run: TrainingRun):
        super().__init__(f"training run {run.pk} is already {run.status} for dataset {run.dataset}")
        self.run = run


def code_version() -> str:
    """The git commit of the running code, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- model registry -----------------------------------------------------------------------------


def model_version_register(
    *,
    artifact: Any,
    config: dict,
    metrics: dict,
    dataset: str,
    dataset_fingerprint: str = "",
    feature_spec_version: str = "",
    training_run: TrainingRun | None = None,
    tags: dict | None = None,
) -> ModelVersion:
    """Record a saved checkpoint as the next numbered version (no alias is moved here).

    `artifact` is a `training.rl.checkpoint.SavedArtifact` (path, sha256, runtime_path, runtime_sha256).
    """
    if not feature_spec_version:
        from training.rl.features import FEATURE_SPEC_VERSION

        feature_spec_version = FEATURE_SPEC_VERSION
    for attempt in range(5):
        try:
            with transaction.atomic():
                number = (ModelVersion.objects.aggregate(m=Max("version"))["m"] or 0) + 1
                return ModelVersion.objects.create(
                    version=number,
                    artifact_path=str(artifact.path),
                    sha256=artifact.sha256,
                    runtime_path=str(artifact.runtime_path),
                    runtime_sha256=artifact.runtime_sha256,
                    feature_spec_version=feature_spec_version,
                    config=config,
                    metrics=metrics,
                    dataset=dataset,
                    dataset_fingerprint=dataset_fingerprint,
                    code_version=code_version(),
                    tags=tags or {},
                    training_run=training_run,
                )
        except IntegrityError:
            # Two registrations raced for the same number; take the next one.
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def alias_set(*, name: str, version: ModelVersion | None, user=None, reason: str = "") -> None:
    """Point an alias at a version (None removes it), with an audit row."""
    with transaction.atomic():
        current = ModelAlias.objects.select_for_update().filter(name=name).first()
        old = current.model_version.version if current else None
        new = version.version if version else None
        if old == new:
            return
        if version is None:
            current.delete()
        elif current is None:
            ModelAlias.objects.create(name=name, model_version=version, updated_at=timezone.now())
        else:
            current.model_version = version
            current.updated_at = timezone.now()
            current.save(update_fields=["model_version", "updated_at"])
        AliasChange.objects.create(name=name, old_version=old, new_version=new, changed_by=user, reason=reason)
        if name == AliasName.CHAMPION and version is not None:
            transaction.on_commit(lambda: champion_link_update(version=version))
    log.info("alias %s moved v%s -> v%s (%s)", name, old, new, reason)


def champion_link_update(*, version: ModelVersion) -> None:
    """Keep data/rl_v3/ppo_model.pt (the seed's documented path) a copy of the champion."""
    target = Path(settings.RLV3_MODEL_DIR) / "ppo_model.pt"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".pt.tmp")
        shutil.copyfile(version.artifact_path, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        log.warning("could not update %s: %s", target, exc)


def model_version_promote(*, version: ModelVersion, user=None, reason: str = "") -> None:
    """Manual promotion (or rollback): make `version` the champion."""
    with transaction.atomic():
        challenger = alias_version(AliasName.CHALLENGER)
        alias_set(name=AliasName.CHAMPION, version=version, user=user, reason=reason or "manual promotion")
        if challenger is not None and challenger.pk == version.pk:
            alias_set(name=AliasName.CHALLENGER, version=None, user=user, reason=f"v{version.version} promoted")


def gate_compare(*, candidate: dict, champion: dict) -> tuple[bool, str]:
    """The promotion rule on validation metrics: beat the champion's Sharpe within the drawdown limit."""
    limit = settings.RLV3_GATE_MAX_DRAWDOWN
    margin = settings.RLV3_GATE_MIN_SHARPE_GAIN
    cand_sharpe = float(candidate.get("sharpe", float("-inf")))
    cand_dd = float(candidate.get("max_drawdown", 1.0))
    if cand_dd > limit:
        return False, f"max drawdown {cand_dd:.3f} exceeds limit {limit:.3f}"
    champ_sharpe = float(champion.get("sharpe", float("-inf")))
    if cand_sharpe > champ_sharpe + margin:
        return True, f"validation Sharpe {cand_sharpe:.3f} beats champion's {champ_sharpe:.3f} (+{margin})"
    return False, f"validation Sharpe {cand_sharpe:.3f} does not beat champion's {champ_sharpe:.3f} (+{margin})"


def model_version_gate(*, version: ModelVersion) -> bool:
    """Run the promotion gate for a newly registered version. Returns True when it became champion.

    First version: champion. Otherwise challenger, promoted only if its validation metrics beat the
    champion's on the same split; the reason is recorded on the version either way.
    """
    champion = alias_version(AliasName.CHAMPION)
    if champion is None:
        reason = "first model: no champion yet"
        promoted = True
    elif champion.pk == version.pk:
        return True
    else:
        ok, reason = gate_compare(
            candidate=(version.metrics or {}).get("validation", {}), champion=(champion.metrics or {}).get("validation", {})
        )
        promoted = ok
    version.gate_decision = ("promoted: " if promoted else "kept as challenger: ") + reason
    version.save(update_fields=["gate_decision"])
    if promoted:
        model_version_promote(version=version, reason=f"promotion gate: {reason}")
    else:
        alias_set(name=AliasName.CHALLENGER, version=version, reason=f"promotion gate: {reason}")
    return promoted


# --- training runs ------------------------------------------------------------------------------


def training_run_create(
    *, dataset: str, timesteps: int, seed: int = 0, user=None, kind: str = RunKind.TRAIN, config: dict | None = None,
    seeds: list[int] | None = None,
) -> TrainingRun:
    """Create a queued run, or raise TrainingRunActive when one is queued/running for the dataset."""
    try:
        with transaction.atomic():
            return TrainingRun.objects.create(
                dataset=dataset, timesteps=timesteps, seed=seed, requested_by=user, kind=kind, config=config or {},
                seeds=seeds or [],
            )
    except IntegrityError:
        active = training_run_active(dataset=dataset)
        if active is None:  # finished between the insert and the lookup: try once more
            return training_run_create(dataset=dataset, timesteps=timesteps, seed=seed, user=user, kind=kind, config=config, seeds=seeds)
        raise TrainingRunActive(active) from None


def training_run_fail(*, run: TrainingRun, error: str) -> None:
    TrainingRun.objects.filter(pk=run.pk, status__in=ACTIVE_RUN_STATUSES).update(
        status=RunStatus.FAILED, error=error[:10_000], finished_at=timezone.now()
    )


class QueueUnavailable(Exception):
    """The Celery broker could not take the task."""


def training_run_submit(*, dataset: str, timesteps: int, seed: int = 0, seeds: list[int] | None = None, user=None, kind: str = RunKind.TRAIN) -> TrainingRun:
    """Create a run and queue its Celery task (a fan-out over seeds when `seeds` has several)."""
    run = training_run_create(dataset=dataset, timesteps=timesteps, seed=seed, seeds=seeds, user=user, kind=kind)
    try:
        from training.tasks import train_policy

        result = train_policy.apply_async(args=[run.pk], retry=False)
    except Exception as exc:  # broker down: the run must not stay queued forever
        training_run_fail(run=run, error=f"could not queue the training task: {exc}")
        raise QueueUnavailable(f"task queue unavailable: {exc.__class__.__name__}") from None
    TrainingRun.objects.filter(pk=run.pk).update(celery_task_id=result.id or "")
    run.celery_task_id = result.id or ""
    return run


def training_run_execute(*, run_id: int) -> dict:
    raise NotImplementedError("training pipeline")

"""The model registry: numbered versions with their artifacts and metrics, the aliases that
point at them, and the promotion gate. Also where a run's files live."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from ..models import (
    AliasChange,
    AliasName,
    ModelAlias,
    ModelVersion,
    TrainingRun,
)
from ..selectors import alias_version

log = logging.getLogger(__name__)


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


def json_safe(value: Any) -> Any:
    """`value` with NaN and ±inf replaced by None (PostgreSQL's JSON has no such numbers), numpy
    scalars made Python numbers, tuples made lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- model directory layout ---------------------------------------------------------------------
# RLV3_MODEL_DIR/
#   ppo_model.pt                  copy of the champion's checkpoint (the seed's documented path)
#   versions/run<id>/             one published artifact per run: policy.pt + policy.npz
#   versions/.tmp-run<id>-<hex>/  staging while a run trains; renamed on success, removed on failure
#   runs/<id>/                    TensorBoard event files and curve.png (kept for failed runs too)

STAGING_RE = re.compile(r"^\.tmp-run(\d+)-[0-9a-f]+$")
PUBLISHED_RE = re.compile(r"^run(\d+)$")


def versions_dir() -> Path:
    return Path(settings.RLV3_MODEL_DIR) / "versions"


def run_log_dir(run_id: int) -> Path:
    """TensorBoard log directory and curve.png of a run."""
    return Path(settings.RLV3_MODEL_DIR) / "runs" / str(run_id)


def run_curve_path(run_id: int) -> Path:
    return run_log_dir(run_id) / "curve.png"


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
                    config=json_safe(config),
                    metrics=json_safe(metrics),
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
    cand_sharpe = _finite(candidate.get("sharpe"), float("-inf"))
    cand_dd = _finite(candidate.get("max_drawdown"), 1.0)
    if cand_dd > limit:
        return False, f"max drawdown {cand_dd:.3f} exceeds limit {limit:.3f}"
    champ_sharpe = _finite(champion.get("sharpe"), float("-inf"))
    if cand_sharpe > champ_sharpe + margin:
        return True, f"validation Sharpe {cand_sharpe:.3f} beats champion's {champ_sharpe:.3f} (+{margin})"
    return False, f"validation Sharpe {cand_sharpe:.3f} does not beat champion's {champ_sharpe:.3f} (+{margin})"


def _finite(value: Any, default: float) -> float:
    """A metric as float; missing or NaN counts as `default` (NaN would make every comparison False)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(number) else number


def model_version_gate(*, version: ModelVersion, champion_metrics: dict | None = None) -> bool:
    """Run the promotion gate for a newly registered version. Returns True when it became champion.

    First version: champion. Otherwise challenger, promoted only if its validation metrics beat the
    champion's on the same split; the reason is recorded on the version either way.
    `champion_metrics` is the champion re-evaluated on the candidate's validation split (with its
    ``version`` number); it is used only if that version is still the champion, else the champion's
    own recorded validation metrics are.
    """
    with transaction.atomic():
        # Serialise gates: two runs finishing together must not both compare against the old champion.
        list(ModelAlias.objects.select_for_update().filter(name=AliasName.CHAMPION))
        champion = alias_version(AliasName.CHAMPION)
        if champion is None:
            reason = "first model: no champion yet"
            promoted = True
        elif champion.pk == version.pk:
            return True
        else:
            reference = (champion.metrics or {}).get("validation", {})
            where = "its recorded validation metrics"
            if champion_metrics and champion_metrics.get("version") == champion.version:
                reference, where = champion_metrics, "the same validation split"
            ok, reason = gate_compare(candidate=(version.metrics or {}).get("validation", {}), champion=reference)
            reason = f"{reason} (champion v{champion.version} on {where})"
            promoted = ok
        version.gate_decision = ("promoted: " if promoted else "kept as challenger: ") + reason
        version.save(update_fields=["gate_decision"])
        if promoted:
            model_version_promote(version=version, reason=f"promotion gate: {reason}")
        else:
            alias_set(name=AliasName.CHALLENGER, version=version, reason=f"promotion gate: {reason}")
    return promoted

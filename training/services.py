"""Writes to the model registry and training runs (keyword-only functions, <noun>_<verb>).

The life of a training run:

1. ``training_run_submit`` creates a ``queued`` row (the partial unique constraint allows one active
   top-level run per dataset: a double click, a retry and the nightly job never train twice) and
   queues ``training.tasks.train_policy`` — or, for several seeds, a Celery chord of one child run per
   seed whose callback keeps the best.
2. ``training_run_execute`` claims the row atomically (``UPDATE … WHERE status='queued'``), so a
   redelivered message never trains twice; trains while a `RunMonitor` thread writes progress and a
   heartbeat; evaluates on the validation split (and reports the test split, never used for the gate);
   publishes the artifact (staging directory renamed into ``versions/`` in the same transaction that
   registers the `ModelVersion` and runs the gate). Any failure leaves the run ``failed``, no partial
   artifact and the champion untouched.
3. ``training_run_sweep`` (beat, every minute, and at worker start) fails ``running`` rows whose
   heartbeat went stale or whose worker node restarted, finishes orphaned fan-outs and removes stray
   staging directories.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Avg, Max, Q
from django.utils import timezone

from rlv3site.logging import bind_training_run

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


class QueueUnavailable(Exception):
    """The Celery broker could not take the task."""


class RunLost(RuntimeError):
    """The run's row stopped being ``running`` under us (swept as lost, or failed by an operator)."""


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


# --- creating and queueing runs -----------------------------------------------------------------


def training_run_create(
    *, dataset: str, timesteps: int, seed: int = 0, user=None, kind: str = RunKind.TRAIN, config: dict | None = None,
    seeds: list[int] | None = None, celery_task_id: str = "",
) -> TrainingRun:
    """Create a queued run, or raise TrainingRunActive when one is queued/running for the dataset."""
    try:
        with transaction.atomic():
            return TrainingRun.objects.create(
                dataset=dataset, timesteps=timesteps, seed=seed, requested_by=user, kind=kind, config=config or {},
                seeds=seeds or [], celery_task_id=celery_task_id,
            )
    except IntegrityError:
        active = training_run_active(dataset=dataset)
        if active is not None and _heartbeat_stale(active):
            # Its worker died and no sweeper has run yet (e.g. no worker is up): do not block on it.
            _run_lost(active, _no_heartbeat(active), only_if=_stale_q())
            active = None
        if active is None:  # finished between the insert and the lookup: try once more
            return training_run_create(
                dataset=dataset, timesteps=timesteps, seed=seed, user=user, kind=kind, config=config, seeds=seeds,
                celery_task_id=celery_task_id,
            )
        raise TrainingRunActive(active) from None


def training_run_fail(*, run: TrainingRun, error: str, only_if: Q | None = None) -> bool:
    """Mark an active run failed with `error` (if it still matches `only_if`, checked in the same
    UPDATE); False when it had already finished or no longer matches."""
    rows = TrainingRun.objects.filter(pk=run.pk, status__in=ACTIVE_RUN_STATUSES)
    if only_if is not None:
        rows = rows.filter(only_if)
    changed = rows.update(status=RunStatus.FAILED, error=error[:10_000], finished_at=timezone.now())
    return bool(changed)


def training_run_cancel(*, run: TrainingRun, user=None) -> bool:
    """Fail a queued or running run (and a fan-out's children) on an operator's request. A running
    run notices at its next heartbeat and stops without registering anything."""
    error = f"cancelled by {getattr(user, 'username', None) or 'an operator'}"
    cancelled = training_run_fail(run=run, error=error)
    for child in TrainingRun.objects.filter(parent=run, status__in=ACTIVE_RUN_STATUSES):
        training_run_fail(run=child, error=error)
    if cancelled:
        log.info("training run %s %s", run.pk, error)
    return cancelled


def training_run_submit(
    *, dataset: str, timesteps: int, seed: int = 0, seeds: list[int] | None = None, user=None,
    kind: str = RunKind.TRAIN, config: dict | None = None,
) -> TrainingRun:
    """Create a run and queue its Celery task.

    Several distinct `seeds` make a fan-out: a parent run (kind ``fanout``) with one child run per
    seed, queued as a Celery chord (one ``train_policy`` per child, on whichever workers are free)
    whose callback ``fanout_finish`` keeps the best child by validation Sharpe.
    """
    seeds = list(dict.fromkeys(int(s) for s in seeds or []))
    if len(seeds) == 1:
        seed, seeds = seeds[0], []
    fanout = len(seeds) > 1
    run = training_run_create(
        dataset=dataset, timesteps=timesteps, seed=seeds[0] if fanout else seed, seeds=seeds, user=user,
        kind=RunKind.FANOUT if fanout else kind, config=config,
    )
    try:
        from celery import chord

        from training.tasks import fanout_finish, train_policy

        if fanout:
            children = [
                TrainingRun.objects.create(
                    parent=run, dataset=dataset, timesteps=timesteps, seed=s, kind=kind, config=config or {},
                    requested_by=user,
                )
                for s in seeds
            ]
            result = chord([train_policy.si(c.pk) for c in children], fanout_finish.si(run.pk)).apply_async(retry=False)
        else:
            result = train_policy.apply_async(args=[run.pk], retry=False)
    except Exception as exc:  # broker down: the run must not stay queued forever
        TrainingRun.objects.filter(parent=run).update(status=RunStatus.FAILED, finished_at=timezone.now())
        training_run_fail(run=run, error=f"could not queue the training task: {exc}")
        raise QueueUnavailable(f"task queue unavailable: {exc.__class__.__name__}") from None
    TrainingRun.objects.filter(pk=run.pk).update(celery_task_id=result.id or "")
    run.celery_task_id = result.id or ""
    return run


def training_run_nightly(*, task_id: str = "", worker: str = "") -> dict:
    """The nightly retraining: the default bundled dataset plus market bars recorded since the last
    nightly run, then the gate. Runs inside the beat-triggered task; skipped while a run is active for
    the dataset. A redelivered task (same `task_id`) finds its run and does not train again."""
    dataset = settings.RLV3_DEFAULT_DATASET
    existing = TrainingRun.objects.filter(celery_task_id=task_id).first() if task_id else None
    if existing is None:
        try:
            existing = training_run_create(
                dataset=dataset, timesteps=settings.RLV3_DEFAULT_TIMESTEPS, kind=RunKind.NIGHTLY,
                config=nightly_config(), celery_task_id=task_id,
            )
        except TrainingRunActive as exc:
            log.info("nightly retraining skipped: %s", exc)
            return {"run_id": exc.run.pk, "status": "skipped", "reason": str(exc)}
    return training_run_execute(run_id=existing.pk, worker=worker)


def nightly_config() -> dict:
    """What tonight's run adds to the bundled data: every symbol with market bars recorded since the
    last successful nightly run started (all recorded bars before the first one)."""
    from decisions.models import MarketBar

    last = TrainingRun.objects.filter(kind=RunKind.NIGHTLY, status=RunStatus.SUCCEEDED).order_by("-started_at").first()
    since = last.started_at if last else None
    bars = MarketBar.objects.all() if since is None else MarketBar.objects.filter(time__gte=since)
    symbols = sorted(set(bars.values_list("symbol", flat=True)))
    return {"extra_datasets": [f"recorded:{s}" for s in symbols], "recorded_since": since.isoformat() if since else None}


def training_run_finetune(*, task_id: str = "", worker: str = "", limit: int = 50_000, epochs: int = 4) -> dict:
    """Fine-tune the champion from stored experiences (importance-weighted clipped objective), then
    the gate. The run's dataset is the champion's: its validation split judges the result, and the
    one-active-run-per-dataset rule keeps it from racing a retraining of the same data."""
    existing = TrainingRun.objects.filter(celery_task_id=task_id).first() if task_id else None
    if existing is None:
        champion = alias_version(AliasName.CHAMPION)
        if champion is None:
            return {"run_id": None, "status": "skipped", "reason": "no champion to fine-tune"}
        try:
            existing = training_run_create(
                dataset=champion.dataset or settings.RLV3_DEFAULT_DATASET, timesteps=max(1, int(limit)),
                kind=RunKind.FINETUNE, config={"limit": int(limit), "epochs": int(epochs)}, celery_task_id=task_id,
            )
        except TrainingRunActive as exc:
            log.info("fine-tuning skipped: %s", exc)
            return {"run_id": exc.run.pk, "status": "skipped", "reason": str(exc)}
    return training_run_execute(run_id=existing.pk, worker=worker)


# --- claiming, heartbeats and the sweeper --------------------------------------------------------


def worker_label(node: str = "") -> str:
    """What a run records as its worker: ``<celery node> pid=<pid>`` (the node is the match key)."""
    return f"{node or 'local@' + socket.gethostname()} pid={os.getpid()}"


def _worker_node(label: str) -> str:
    return label.split(" pid=", 1)[0]


def training_run_claim(*, run_id: int, worker: str) -> TrainingRun | None:
    """Move a queued run to running atomically; None when it is not queued (already claimed by an
    earlier delivery of the same message, finished, or gone)."""
    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).exclude(kind=RunKind.FANOUT).update(
        status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker[:200], error=""
    )
    if not claimed:
        return None
    run = TrainingRun.objects.get(pk=run_id)
    if run.parent_id:
        TrainingRun.objects.filter(pk=run.parent_id, status=RunStatus.QUEUED).update(
            status=RunStatus.RUNNING, started_at=now, heartbeat_at=now
        )
    return run


def _claim_refused(*, run_id: int, worker: str) -> dict:
    """A delivery that could not claim its run. If the run is `running` on this very node under a
    process that no longer exists, that process was killed (Celery redelivers the message after a
    lost worker): fail the run now instead of waiting for the heartbeat to go stale."""
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        return {"run_id": run_id, "status": "skipped", "reason": "no such run"}
    if run.kind == RunKind.FANOUT:
        return {"run_id": run_id, "status": "skipped", "reason": "a fan-out run is trained by its child runs"}
    if run.status == RunStatus.RUNNING and _worker_node(run.worker) == _worker_node(worker):
        pid = run.worker.rpartition(" pid=")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _run_lost(run, f"worker lost: process {pid} on {_worker_node(worker)} died while running")
            return {"run_id": run_id, "status": RunStatus.FAILED, "reason": "worker lost"}
    return {"run_id": run_id, "status": "skipped", "reason": f"run is {run.status}, not queued"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_lost(run: TrainingRun, error: str, only_if: Q | None = None) -> bool:
    """Fail a run whose worker is gone; a fan-out whose last child this was is finished."""
    if not training_run_fail(run=run, error=error, only_if=only_if):
        return False
    log.warning("training run %s failed: %s", run.pk, error)
    if run.parent_id and not TrainingRun.objects.filter(parent_id=run.parent_id, status__in=ACTIVE_RUN_STATUSES).exists():
        training_run_fanout_finish(parent_id=run.parent_id)
    return True


def _stale_q(stale_after: float | None = None) -> Q:
    """Running, not a fan-out parent, and no heartbeat for `stale_after` s (RLV3_RUN_STALE_SECONDS)."""
    stale_after = settings.RLV3_RUN_STALE_SECONDS if stale_after is None else stale_after
    cutoff = timezone.now() - timedelta(seconds=stale_after)
    return (Q(status=RunStatus.RUNNING) & ~Q(kind=RunKind.FANOUT)
            & (Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)))


def _heartbeat_stale(run: TrainingRun) -> bool:
    return TrainingRun.objects.filter(_stale_q(), pk=run.pk).exists()


def _no_heartbeat(run: TrainingRun) -> str:
    return f"worker lost: no heartbeat since {run.heartbeat_at or run.started_at:%Y-%m-%d %H:%M:%S} UTC"


def training_run_sweep(*, stale_after: float | None = None, lost_node: str = "", lost_before=None) -> list[int]:
    """Fail `running` runs whose worker is gone, finish orphaned fan-outs, remove stray files.

    A run is lost when its heartbeat is older than `stale_after` seconds (default
    RLV3_RUN_STALE_SECONDS) or, with `lost_node`, when it was running on that Celery node since before
    `lost_before` (called at worker start with the worker's start time: whatever the node was running
    before it restarted is dead; a run its new pool already took is not). Returns the ids failed.
    Each run is failed by an UPDATE that re-checks the condition, so a run that just beat is spared.
    """
    failed = []
    stale = _stale_q(stale_after)
    for run in TrainingRun.objects.filter(stale):
        if _run_lost(run, _no_heartbeat(run), only_if=stale):
            failed.append(run.pk)
    if lost_node:
        # Fan-out parents have no process of their own: they end when their children do.
        restarted = Q(status=RunStatus.RUNNING, worker__startswith=f"{lost_node} pid=") & ~Q(kind=RunKind.FANOUT)
        if lost_before is not None:
            restarted &= Q(started_at__lt=lost_before)
        for run in TrainingRun.objects.filter(restarted):
            if _run_lost(run, f"worker lost: {lost_node} restarted while the run was running", only_if=restarted):
                failed.append(run.pk)
    orphans = TrainingRun.objects.filter(kind=RunKind.FANOUT, status__in=ACTIVE_RUN_STATUSES).exclude(
        children__status__in=ACTIVE_RUN_STATUSES
    )
    for parent in orphans.filter(children__isnull=False).distinct():
        training_run_fanout_finish(parent_id=parent.pk)
    model_dir_sweep()
    return failed


def model_dir_sweep() -> list[Path]:
    """Remove staging directories and unregistered artifacts of runs that are no longer running
    (a worker killed mid-run, or between publishing and committing), and a stale champion-copy temp."""
    removed: list[Path] = []
    root = versions_dir()
    if root.is_dir():
        running = set(TrainingRun.objects.filter(status=RunStatus.RUNNING).values_list("pk", flat=True))
        referenced = {
            Path(p).resolve().parent
            for pair in ModelVersion.objects.values_list("artifact_path", "runtime_path")
            for p in pair
        }
        for entry in root.iterdir():
            match = STAGING_RE.match(entry.name) or PUBLISHED_RE.match(entry.name)
            if match is None or int(match.group(1)) in running or entry.resolve() in referenced:
                continue
            _remove(entry)
            removed.append(entry)
    link_tmp = Path(settings.RLV3_MODEL_DIR) / "ppo_model.pt.tmp"
    if link_tmp.exists() and time.time() - link_tmp.stat().st_mtime > 60:
        _remove(link_tmp)
        removed.append(link_tmp)
    if removed:
        log.warning("removed stray model files: %s", ", ".join(str(p) for p in removed))
    return removed


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class RunMonitor:
    """Writes a running run's heartbeat and latest progress every RLV3_HEARTBEAT_SECONDS from a side
    thread, so a slow update never delays the heartbeat and the training loop never waits on the
    database. If the row stops being ``running`` (swept as lost, or failed by an operator) `lost`
    becomes True and the training callback stops the run.
    """

    def __init__(self, run: TrainingRun, interval: float | None = None):
        self.run_id, self.parent_id, self.timesteps = run.pk, run.parent_id, max(1, run.timesteps)
        self.interval = settings.RLV3_HEARTBEAT_SECONDS if interval is None else interval
        self.timesteps_done = 0
        self.recent_mean_reward: float | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"run-{run.pk}-heartbeat", daemon=True)
        self._lock = threading.Lock()

    def record(self, *, timesteps_done: int, recent_mean_reward: float | None = None) -> bool:
        """Note progress (cheap, in memory). Returns False once the run is lost (stop training)."""
        self.timesteps_done = int(timesteps_done)
        if recent_mean_reward is not None and math.isfinite(recent_mean_reward):
            self.recent_mean_reward = float(recent_mean_reward)
        return not self.lost

    def flush(self) -> None:
        """One UPDATE of the heartbeat and progress (capped at 99 % until the run succeeds)."""
        with self._lock:
            done = min(self.timesteps_done, 2**31 - 1)
            progress = min(99.0, 100.0 * done / self.timesteps)
            updated = TrainingRun.objects.filter(pk=self.run_id, status=RunStatus.RUNNING).update(
                heartbeat_at=timezone.now(), timesteps_done=done, progress=progress,
                recent_mean_reward=self.recent_mean_reward,
            )
            if not updated:
                self.lost = True
            elif self.parent_id:
                agg = TrainingRun.objects.filter(parent_id=self.parent_id).aggregate(p=Avg("progress"), t=Avg("timesteps_done"))
                TrainingRun.objects.filter(pk=self.parent_id, status=RunStatus.RUNNING).update(
                    heartbeat_at=timezone.now(), progress=min(99.0, agg["p"] or 0.0), timesteps_done=int(agg["t"] or 0),
                )

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.flush()
                except Exception as exc:  # a database blip must not kill the heartbeat for good
                    log.warning("run %s heartbeat failed: %s", self.run_id, exc)
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> "RunMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if exc_info[0] is None:
            self.flush()


# --- executing a run ----------------------------------------------------------------------------


@dataclass
class Trained:
    """What the training (or fine-tuning) step hands to publication: a staged artifact and its record."""

    artifact: Any  # SavedArtifact in the staging directory
    config: dict
    metrics: dict  # {"validation": {...}, "test": {...}, "champion_validation": {...}, "training": {...}}
    dataset_fingerprint: str
    curve: list
    tags: dict


def training_run_execute(*, run_id: int, worker: str = "", progress_file: Any = None) -> dict:
    """Claim and execute one queued run (kinds train, nightly, finetune); the body of the Celery task.

    Returns ``{"run_id", "status", ...}``; never raises for a failed run (the row says why), so a
    fan-out chord always reaches its callback. `progress_file` (a text stream) shows a tqdm bar.
    """
    worker = worker or worker_label()
    run = training_run_claim(run_id=run_id, worker=worker)
    if run is None:
        return _claim_refused(run_id=run_id, worker=worker)
    bind_training_run(run.pk)  # every log line of this run carries run_id
    staging = versions_dir() / f".tmp-run{run.pk}-{uuid.uuid4().hex[:8]}"
    published: Path | None = None
    log.info("training run %s (%s, %s, %s steps) started on %s", run.pk, run.kind, run.dataset, run.timesteps, worker)
    try:
        staging.mkdir(parents=True)
        with RunMonitor(run) as monitor:
            if run.kind == RunKind.FINETUNE:
                trained = _finetune(run=run, monitor=monitor, staging=staging)
            else:
                trained = _train(run=run, monitor=monitor, staging=staging, progress_file=progress_file)
        published = versions_dir() / f"run{run.pk}"
        version = _publish(run=run, trained=trained, staging=staging, published=published)
    except BaseException as exc:  # noqa: BLE001 - includes SoftTimeLimitExceeded; re-raised below if fatal
        _remove(staging)
        if published is not None and not ModelVersion.objects.filter(training_run_id=run.pk).exists():
            _remove(published)
        error = _describe_error(exc)
        if not isinstance(exc, RunLost):
            training_run_fail(run=run, error=error)
        log.warning("training run %s failed: %s", run.pk, error)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return {"run_id": run.pk, "status": RunStatus.FAILED, "error": error}
    finally:
        _remove(staging)
    log.info("training run %s succeeded: v%s %s", run.pk, version.version, version.gate_decision)
    return {
        "run_id": run.pk, "status": RunStatus.SUCCEEDED, "version": version.version,
        "validation": trained.metrics.get("validation", {}), "gate": version.gate_decision,
    }


def _training_data(run: TrainingRun) -> tuple[Any, list, list[str]]:
    """(the run's own dataset, every dataset it trains on, notes on recorded data left out).

    A nightly run adds ``config["extra_datasets"]`` (recorded:SYMBOL bars since
    ``config["recorded_since"]``); a symbol with too few new bars is left out with a note. Validation
    and the gate always use the run's own dataset, so candidates and champion are judged alike.
    """
    from datetime import datetime

    from training.datasets import dataset_load
    from training.rl.data import DatasetError

    primary = dataset_load(run.dataset)
    datasets, notes = [primary], []
    since = run.config.get("recorded_since")
    since = datetime.fromisoformat(since) if since else None
    for name in run.config.get("extra_datasets", []):
        try:
            extra = dataset_load(name, since=since)
            extra.split("train")  # enough bars to trade after the indicator warm-up?
        except (DatasetError, ValueError) as exc:
            notes.append(f"{name} left out: {exc}")
            continue
        datasets.append(extra)
    return primary, datasets, notes


def ppo_config_for(*, timesteps: int, overrides: dict | None = None):
    """PPO hyperparameters for a trading run of `timesteps` env steps.

    The trading preset of training.rl.config.config_for_trading (8 parallel accounts, rollout
    length scaled to the run, the settings selected on the validation split); `overrides` (a run's
    ``config["ppo"]``) win.
    """
    from training.rl.config import config_for_trading

    return config_for_trading(timesteps, **(overrides or {}))


def _train(*, run: TrainingRun, monitor: RunMonitor, staging: Path, progress_file: Any = None) -> Trained:
    """PPO on the train split(s), then evaluation on validation (gate) and test (report only)."""
    from training.rl import ppo
    from training.rl.callbacks import FunctionCallback, ProgressBarCallback, TensorBoardCallback
    from training.rl.device import resolve_device
    from training.rl.env import EnvConfig
    from training.rl.features import FEATURE_SPEC_VERSION
    from training.rl.vec_env import TradingVecEnv

    primary, datasets, notes = _training_data(run)
    device = resolve_device(settings.RLV3_DEVICE)  # here, in the worker process, never at import
    config = ppo_config_for(timesteps=run.timesteps, overrides=run.config.get("ppo"))
    env_config = EnvConfig(**run.config.get("env", {}))
    envs = _RewardMeter(TradingVecEnv(datasets, num_envs=config.n_envs, split="train", config=env_config))
    log_dir = run_log_dir(run.pk)

    rewards: list[float | None] = []

    def report(metrics: dict) -> bool:
        rewards.append(envs.take_mean())
        return monitor.record(timesteps_done=metrics["timesteps"], recent_mean_reward=rewards[-1])

    callbacks = [FunctionCallback(report), TensorBoardCallback(str(log_dir))]
    if progress_file is not None:
        callbacks.append(ProgressBarCallback(desc=f"training run {run.pk}", file=progress_file))
    try:
        result = ppo.train(envs, config, run.timesteps, run.seed, callbacks=callbacks, device=device)
    except BaseException:
        for cb in callbacks:  # close the TensorBoard writer and the bar on the way out
            cb.on_training_end(None)
        raise
    finally:
        envs.close()
    if monitor.lost:
        raise RunLost("the run was marked finished while it was training")
    record = {"ppo": config.to_dict(), "env": env_config.to_dict(), "seed": run.seed, "device": str(device),
              "datasets": [d.name for d in datasets], "timesteps": run.timesteps}
    from training.rl.checkpoint import save_checkpoint

    artifact = save_checkpoint(
        staging / "policy.pt", result.policy, config=record, metrics={}, feature_spec_version=FEATURE_SPEC_VERSION,
    )
    metrics = _evaluate_candidate(artifact=artifact, data=primary, seed=run.seed, env_config=env_config)
    metrics["training"] = {
        "timesteps": result.timesteps, "wall_seconds": result.wall_seconds, "env_steps_per_s": result.sps,
        "updates": len(result.curve), "device": str(device), "notes": notes,
    }
    curve = [{**point, "reward_mean": reward} for point, reward in zip(result.curve, rewards)]
    _curve_plot(run=run, curve=curve)
    return Trained(
        artifact=artifact, config=record, metrics=metrics, curve=curve, tags=_run_tags(run),
        dataset_fingerprint=_fingerprint(datasets),
    )


def _evaluate_candidate(*, artifact: Any, data: Any, seed: int, env_config: Any = None) -> dict:
    """Backtest the staged runtime file (the very file serving will load) on the validation split
    (the gate's) and the test split (reported, never used to choose), next to buy-and-hold and
    random, and the current champion on the same splits so the gate compares like with like."""
    from training.rl.evaluate import backtest, report, run_with_baselines
    from training.rl.inference import PolicyRuntime

    runtime = PolicyRuntime.load(artifact.runtime_path, expected_sha256=artifact.runtime_sha256)
    metrics = {}
    for split in ("validation", "test"):
        results = run_with_baselines(_greedy(runtime), data, split, seed, env_config)
        metrics[split] = {**report(results), "action_counts": results["policy"].action_counts}
    champion = alias_version(AliasName.CHAMPION)
    if champion is not None:
        try:
            served = PolicyRuntime.load(champion.runtime_path, expected_sha256=champion.runtime_sha256)
        except Exception as exc:  # a champion that cannot be loaded is judged on its recorded metrics
            log.warning("champion v%s could not be re-evaluated: %s", champion.version, exc)
        else:
            for split in ("validation", "test"):
                result = backtest(_greedy(served), data, split, env_config, seed)
                metrics[f"champion_{split}"] = {
                    **result.metrics(), "split": split, "version": champion.version, "action_counts": result.action_counts,
                }
    return metrics


def _greedy(runtime: Any):
    """The deterministic policy serving uses: feature vector (64,) -> action code."""
    return lambda vector: runtime.predict_vector(vector).action_code


def _curve_plot(*, run: TrainingRun, curve: list) -> None:
    """runs/<id>/curve.png; a plotting problem is logged, never fails the run."""
    from training.plots import plot_training_curve

    try:
        plot_training_curve(curve, run_curve_path(run.pk), title=f"training run {run.pk} ({run.kind}, {run.dataset}, seed {run.seed})")
    except Exception as exc:
        log.warning("could not plot the curve of run %s: %s", run.pk, exc)


MIN_EXPERIENCES = 32


def _experience_batch(*, limit: int) -> tuple[Any, dict]:
    """The newest `limit` experiences as an OffPolicyBatch, through the one feature function.
    Rows whose stored observation no longer validates are skipped and counted."""
    import numpy as np

    from decisions.models import Experience
    from training.rl.features import ObservationError, observations_to_matrix, validate_observation
    from training.rl.offpolicy import OffPolicyBatch

    rows = Experience.objects.order_by("-closed_at", "-id").values_list(
        "observation", "action", "behaviour_probabilities", "reward", "model_version"
    )[:limit]
    observations, actions, probs, rewards, versions, skipped = [], [], [], [], set(), 0
    for observation, action, behaviour, reward, version in rows:
        try:
            clean = validate_observation(observation)
        except ObservationError:
            skipped += 1
            continue
        observations.append(clean)
        actions.append(action)
        probs.append(behaviour)
        rewards.append(reward)
        versions.add(version)
    if len(actions) < MIN_EXPERIENCES:
        raise ValueError(f"only {len(actions)} usable experiences; fine-tuning needs at least {MIN_EXPERIENCES}")
    batch = OffPolicyBatch(observations_to_matrix(observations), np.array(actions), np.array(probs, dtype=np.float64),
                           np.array(rewards, dtype=np.float64))
    return batch, {"experiences": len(actions), "skipped": skipped, "behaviour_versions": sorted(versions)}


def _finetune(*, run: TrainingRun, monitor: RunMonitor, staging: Path) -> Trained:
    """Fine-tune the champion's checkpoint on logged experiences, then evaluate like a new model."""
    from training.datasets import dataset_load
    from training.rl.callbacks import TensorBoardCallback
    from training.rl.checkpoint import load_checkpoint, save_checkpoint
    from training.rl.features import FEATURE_SPEC_VERSION
    from training.rl.offpolicy import OffPolicyConfig, finetune

    champion = alias_version(AliasName.CHAMPION)
    if champion is None:
        raise ValueError("there is no champion to fine-tune")
    base = load_checkpoint(champion.artifact_path, champion.sha256)
    data = dataset_load(run.dataset)
    batch, about = _experience_batch(limit=int(run.config.get("limit", 50_000)))
    config = OffPolicyConfig(**{"epochs": int(run.config.get("epochs", 4)), **run.config.get("offpolicy", {})})
    total = len(batch) * config.epochs
    TrainingRun.objects.filter(pk=run.pk).update(timesteps=total)
    monitor.timesteps = total
    board = TensorBoardCallback(str(run_log_dir(run.pk)))
    board.on_training_start(total_timesteps=total, config=config)
    curve: list[dict] = []

    def on_epoch(stats: dict) -> bool:
        point = {**stats, "timesteps": stats["epoch"] * len(batch)}
        curve.append(point)
        board.on_update(point)
        return monitor.record(timesteps_done=point["timesteps"])

    started = time.perf_counter()
    try:
        result = finetune(base.policy, batch, config, seed=run.seed, on_epoch=on_epoch)
    finally:
        board.on_training_end(None)
    if monitor.lost:
        raise RunLost("the run was marked finished while it was training")
    record = {**base.config, "finetune": config.to_dict(), "base_version": champion.version, "seed": run.seed}
    artifact = save_checkpoint(staging / "policy.pt", result.policy, config=record, metrics={},
                               feature_spec_version=FEATURE_SPEC_VERSION)
    metrics = _evaluate_candidate(artifact=artifact, data=data, seed=run.seed)
    metrics["training"] = {**about, "timesteps": total, "epochs": len(result.history),
                           "wall_seconds": time.perf_counter() - started, "stopped_early": result.stopped_early}
    _curve_plot(run=run, curve=curve)
    tags = {**_run_tags(run), "finetuned_from": champion.version, "experiences": len(batch)}
    return Trained(artifact=artifact, config=record, metrics=metrics, curve=curve, tags=tags,
                   dataset_fingerprint=data.fingerprint())


class _RewardMeter:
    """Vector-env pass-through that keeps the mean reward per step since it was last read (the
    run's "recent mean reward"; trading episodes are long, so episode returns come late)."""

    def __init__(self, envs: Any):
        self.envs = envs
        self.metadata = getattr(envs, "metadata", {})
        self._sum, self._count = 0.0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.envs, name)

    def step(self, actions):
        obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        self._sum += float(rewards.sum())
        self._count += len(rewards)
        return obs, rewards, terminated, truncated, infos

    def take_mean(self) -> float | None:
        mean = self._sum / self._count if self._count else None
        self._sum, self._count = 0.0, 0
        return mean


def _fingerprint(datasets: list) -> str:
    if len(datasets) == 1:
        return datasets[0].fingerprint()
    return hashlib.sha256("".join(d.fingerprint() for d in datasets).encode()).hexdigest()


def _run_tags(run: TrainingRun) -> dict:
    tags = {"run": run.pk, "kind": run.kind, "seed": run.seed}
    if run.parent_id:
        tags["fanout_run"] = run.parent_id
    return tags


def _describe_error(exc: BaseException) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded):
        return f"time limit exceeded: the run took longer than RLV3_TRAIN_TIME_LIMIT={settings.RLV3_TRAIN_TIME_LIMIT} s"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def _publish(*, run: TrainingRun, trained: Trained, staging: Path, published: Path) -> ModelVersion:
    """Make the staged artifact a registered version in one transaction with the run's success.

    The row lock fences a run that was swept as lost but kept going (it must not register); the
    directory rename is atomic, and if the transaction fails afterwards the caller removes it.
    """
    with transaction.atomic():
        row = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if row.status != RunStatus.RUNNING:
            raise RunLost(f"the run was marked {row.status} while it was training: {row.error}")
        os.rename(staging, published)
        artifact = trained.artifact
        final = type(artifact)(
            path=published / Path(artifact.path).name, sha256=artifact.sha256,
            runtime_path=published / Path(artifact.runtime_path).name, runtime_sha256=artifact.runtime_sha256,
        )
        version = model_version_register(
            artifact=final, config=trained.config, metrics=trained.metrics, dataset=run.dataset,
            dataset_fingerprint=trained.dataset_fingerprint, training_run=run, tags=trained.tags,
        )
        row.status, row.progress, row.finished_at = RunStatus.SUCCEEDED, 100.0, timezone.now()
        row.metrics = json_safe({**trained.metrics, "version": version.version})
        row.curve = json_safe(trained.curve)
        row.timesteps_done = int(trained.metrics.get("training", {}).get("timesteps", row.timesteps_done))
        row.save(update_fields=["status", "progress", "finished_at", "metrics", "curve", "timesteps_done"])
        if run.parent_id:
            version.gate_decision = "fan-out seed: gated only if it is the best seed"
            version.save(update_fields=["gate_decision"])
        else:
            model_version_gate(version=version, champion_metrics=trained.metrics.get("champion_validation"))
    return version


def training_run_fanout_finish(*, parent_id: int) -> dict:
    """Finish a fan-out: keep the best child by validation Sharpe and gate only its version.

    Every child registers its own version (so each seed's artifact stays inspectable); only the best
    goes through the promotion gate, the others record why they were not gated. Called by the chord
    callback and, when a child was lost, by the sweeper; idempotent. A child still active when the
    chord fires was lost (its redelivered task could not claim it), so it is failed here.
    """
    with transaction.atomic():
        parent = TrainingRun.objects.select_for_update().filter(pk=parent_id).first()
        if parent is None or parent.status not in ACTIVE_RUN_STATUSES:
            return {"run_id": parent_id, "status": parent.status if parent else "missing", "skipped": True}
        children = list(parent.children.order_by("seed", "pk"))
        for child in children:
            if child.status in ACTIVE_RUN_STATUSES:
                training_run_fail(run=child, error="worker lost: its task finished without completing the run")
                child.refresh_from_db()
        done = [c for c in children if c.status == RunStatus.SUCCEEDED and c.model_versions.exists()]
        summary = [
            {"run_id": c.pk, "seed": c.seed, "status": c.status,
             "validation_sharpe": (c.metrics or {}).get("validation", {}).get("sharpe"),
             "version": (c.metrics or {}).get("version"), "error": c.error[:500]}
            for c in children
        ]
        now = timezone.now()
        if not done:
            errors = "; ".join(f"seed {c.seed}: {c.error or c.status}" for c in children)
            parent.status, parent.error, parent.finished_at = RunStatus.FAILED, f"every seed failed: {errors}"[:10_000], now
            parent.metrics = {"children": summary}
            parent.save(update_fields=["status", "error", "finished_at", "metrics"])
            return {"run_id": parent_id, "status": RunStatus.FAILED}
        best = max(done, key=lambda c: _finite((c.metrics or {}).get("validation", {}).get("sharpe"), float("-inf")))
        best_version = best.model_versions.order_by("-version").first()
        for child in done:
            if child.pk != best.pk:
                child.model_versions.update(
                    gate_decision=f"not gated: seed {best.seed} (v{best_version.version}) had the best validation "
                    f"Sharpe of fan-out run {parent.pk}"
                )
        promoted = model_version_gate(version=best_version, champion_metrics=(best.metrics or {}).get("champion_validation"))
        parent.status, parent.progress, parent.finished_at = RunStatus.SUCCEEDED, 100.0, now
        parent.timesteps_done = best.timesteps_done
        parent.recent_mean_reward = best.recent_mean_reward
        parent.metrics = {
            **{k: v for k, v in (best.metrics or {}).items() if k in ("validation", "test", "champion_validation")},
            "version": best_version.version, "best_run": best.pk, "best_seed": best.seed, "promoted": promoted,
            "children": summary,
        }
        parent.curve = best.curve
        parent.save(update_fields=["status", "progress", "finished_at", "timesteps_done", "recent_mean_reward", "metrics", "curve"])
    try:  # the parent's admin page shows the kept seed's curve
        run_log_dir(parent_id).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_curve_path(best.pk), run_curve_path(parent_id))
    except OSError as exc:
        log.warning("no curve for fan-out run %s: %s", parent_id, exc)
    log.info("fan-out run %s kept seed %s (v%s)", parent_id, best.seed, best_version.version)
    return {"run_id": parent_id, "status": RunStatus.SUCCEEDED, "version": best_version.version, "seed": best.seed}


# --- periodic tasks (django-celery-beat rows, editable in the admin) -----------------------------

NIGHTLY_TASK_NAME = "rlv3: nightly retraining"
SWEEPER_TASK_NAME = "rlv3: training-run sweeper"
SWEEP_EVERY_SECONDS = 60


def cron_fields(expression: str) -> dict[str, str]:
    """``"0 2 * * *"`` → CrontabSchedule fields; raises ValueError unless there are five fields."""
    parts = expression.split()
    if len(parts) != 5:
        raise ValueError(f"RLV3_RETRAIN_CRON must have five fields (minute hour day month weekday), got {expression!r}")
    return dict(zip(("minute", "hour", "day_of_month", "month_of_year", "day_of_week"), parts))


def beat_schedule_ensure(*, apps=None) -> tuple[Any, Any]:
    """Create the nightly-retraining and sweeper periodic tasks if missing; never overwrite them.

    The cron comes from RLV3_RETRAIN_CRON only when the row is first created: afterwards the admin
    owns it. `apps` is a migration's app registry (historical models); None uses the real ones.
    Returns (nightly PeriodicTask, sweeper PeriodicTask).
    """
    if apps is None:
        from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
    else:
        CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
        IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
        PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    with transaction.atomic():
        nightly = PeriodicTask.objects.filter(name=NIGHTLY_TASK_NAME).first()
        if nightly is None:
            crontab, _ = CrontabSchedule.objects.get_or_create(**cron_fields(settings.RLV3_RETRAIN_CRON), timezone="UTC")
            nightly = PeriodicTask.objects.create(
                name=NIGHTLY_TASK_NAME, task="training.tasks.retrain_nightly", crontab=crontab,
                description="Retrain on the bundled data plus market bars recorded since the last run, then run "
                "the promotion gate. Initial schedule from RLV3_RETRAIN_CRON; edit it here.",
            )
        sweeper = PeriodicTask.objects.filter(name=SWEEPER_TASK_NAME).first()
        if sweeper is None:
            every, _ = IntervalSchedule.objects.get_or_create(every=SWEEP_EVERY_SECONDS, period="seconds")
            sweeper = PeriodicTask.objects.create(
                name=SWEEPER_TASK_NAME, task="training.tasks.sweep_training_runs", interval=every,
                # A sweep that waited a minute behind a training task is superseded by the next one.
                expire_seconds=SWEEP_EVERY_SECONDS,
                description="Fail running training runs whose worker is gone; remove stray artifact files.",
            )
    return nightly, sweeper


def nightly_schedule_ensure() -> str:
    """Idempotent: make sure the beat schedule exists; returns a one-line description of it."""
    from django_celery_beat.models import PeriodicTasks

    nightly, _ = beat_schedule_ensure()
    PeriodicTasks.update_changed()  # a running beat reloads its schedule
    cron = nightly.crontab
    when = f"{cron.minute} {cron.hour} {cron.day_of_month} {cron.month_of_year} {cron.day_of_week} ({cron.timezone})" if cron else "custom"
    state = "enabled" if nightly.enabled else "disabled"
    return f"{nightly.task} at {when}, {state} (edit in the admin: Periodic tasks → {nightly.name})"


# --- first champion (make run) ------------------------------------------------------------------


def champion_ensure(*, timesteps: int, stdout: Any = None) -> ModelVersion:
    """The champion; if there is none, train a short one on RLV3_DEFAULT_DATASET right here (with a
    progress bar on `stdout`), register it and gate it (the first version becomes champion).

    A run left queued for the dataset (e.g. by an earlier session) is claimed and trained here; one
    running on a live worker is waited for. Raises RuntimeError when training fails.
    """
    champion = alias_version(AliasName.CHAMPION)
    if champion is not None:
        return champion
    # A management command's OutputWrapper ends every write with a newline, which turns tqdm's
    # in-place redraws into one line per update: draw on the stream it wraps.
    stdout = getattr(stdout, "_out", stdout)
    training_run_sweep()
    worker = worker_label(f"setup@{socket.gethostname()}")
    for _attempt in range(3):
        try:
            run = training_run_create(dataset=settings.RLV3_DEFAULT_DATASET, timesteps=timesteps, config={"bootstrap": True})
        except TrainingRunActive as exc:
            run = exc.run
        result = training_run_execute(run_id=run.pk, worker=worker, progress_file=stdout)
        if result["status"] == "skipped":  # someone else is training it: wait for the outcome
            _run_wait(run_id=run.pk, stdout=stdout)
        champion = alias_version(AliasName.CHAMPION)
        if champion is not None:
            return champion
        if result["status"] == RunStatus.FAILED:
            raise RuntimeError(f"could not train a first champion (run {run.pk}): {result.get('error')}")
    raise RuntimeError("could not train a first champion: every attempt was taken over by other runs")


def _run_wait(*, run_id: int, stdout: Any = None, poll: float = 2.0) -> TrainingRun:
    """Block until a run (trained by some worker) finishes, showing its progress."""
    from tqdm import tqdm

    deadline = time.monotonic() + settings.RLV3_TRAIN_TIME_LIMIT + 600
    with tqdm(total=100, desc=f"waiting for training run {run_id}", unit="%", file=stdout) as bar:
        while True:
            run = TrainingRun.objects.get(pk=run_id)
            bar.update(max(0.0, run.progress - bar.n))
            if run.status not in ACTIVE_RUN_STATUSES or time.monotonic() > deadline:
                return run
            training_run_sweep()
            time.sleep(poll)

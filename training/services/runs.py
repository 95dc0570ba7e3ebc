"""Training runs as rows: created and queued, claimed by one worker, watched by a heartbeat, failed
or swept when their worker is lost, and fan-outs over seeds finished by keeping the best."""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Avg, Q
from django.utils import timezone

from ..models import (
    ACTIVE_RUN_STATUSES,
    ModelVersion,
    RunKind,
    RunStatus,
    TrainingRun,
)
from ..selectors import training_run_active
from .registry import (
    PUBLISHED_RE,
    STAGING_RE,
    _finite,
    model_version_gate,
    run_curve_path,
    run_log_dir,
    versions_dir,
)

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

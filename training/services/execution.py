"""Executing a claimed run: train (or fine-tune), evaluate, publish the artifact and gate it; and
the runs that execute at once in their task (nightly retraining, fine-tuning from experiences)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from rlv3site.logging import bind_training_run

from ..models import (
    AliasName,
    ModelVersion,
    RunKind,
    RunStatus,
    TrainingRun,
)
from ..selectors import alias_version
from .registry import (
    json_safe,
    model_version_gate,
    model_version_register,
    run_curve_path,
    run_log_dir,
    versions_dir,
)
from .runs import (
    RunLost,
    RunMonitor,
    TrainingRunActive,
    _claim_refused,
    _remove,
    training_run_claim,
    training_run_create,
    training_run_fail,
    worker_label,
)

log = logging.getLogger(__name__)


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
    from training.rl.callbacks import (
        FunctionCallback,
        ProgressBarCallback,
        TensorBoardCallback,
    )
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
    from training.rl.features import (
        ObservationError,
        observations_to_matrix,
        validate_observation,
    )
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




# --- runs executed in their own task ---------------------------------------------------------------


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

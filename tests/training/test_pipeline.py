"""End to end through real Celery workers: train over the API, crash safety, fan-out, nightly, fine-tuning.

Timesteps are tiny (2,048-8,192): these tests check the pipeline, not learning quality.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from tests.conftest import token_client
from tests.training.conftest import wait_for
from training.models import AliasName, ModelVersion, RunKind, RunStatus, TrainingRun
from training.selectors import alias_version
from training.services import file_sha256, run_curve_path, run_log_dir

API = "/api/v1/rl/v3/"
pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _migration_rows():
    """Rows data migrations create, which an earlier transactional test's flush removed."""
    from django.contrib.auth.models import Group

    Group.objects.get_or_create(name=settings.RLV3_OPERATORS_GROUP)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _registered_files(root: Path) -> set[str]:
    return {str(Path(p).relative_to(root)) for pair in ModelVersion.objects.values_list("artifact_path", "runtime_path") for p in pair}


@pytest.fixture
def champion(celery_worker):
    """A loadable champion with known validation metrics (how it was trained does not matter here)."""
    from tests.training.factories import policy_version
    from training.services import model_version_gate

    version = policy_version(Path(settings.RLV3_MODEL_DIR) / "versions" / "seeded", seed=1, sharpe=-10.0, max_drawdown=0.2)
    model_version_gate(version=version)
    return version


def test_post_train_runs_on_the_worker_with_progress_then_registers_and_gates(celery_worker, operator):
    api = token_client(operator)
    response = api.post(API + "train", {"timesteps": 8192, "dataset": "eurusd_1h", "seed": 3}, format="json")
    assert response.status_code == 202, response.content
    run_id = response.json()["id"]
    conflict = api.post(API + "train", {"timesteps": 2048, "dataset": "eurusd_1h"}, format="json")
    assert conflict.status_code == 409 and conflict.json()["run_id"] == run_id

    seen = []

    def finished():
        body = api.get(API + f"training-runs/{run_id}").json()
        seen.append((body["progress"], body["timesteps_done"]))
        return body if body["status"] in ("succeeded", "failed") else None

    body = wait_for(finished, timeout=120, interval=0.1, message=f"run {run_id}; worker log:\n{celery_worker.log_tail()}")
    assert body["status"] == "succeeded", body["error"]
    assert any(0 < progress < 100 for progress, _ in seen)  # progress was reported while training
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)  # never goes backwards
    assert body["progress"] == 100 and body["timesteps_done"] >= 8192
    assert body["recent_mean_reward"] is not None
    assert body["model_versions"] == [1]

    version = ModelVersion.objects.get(version=1)
    assert alias_version(AliasName.CHAMPION).pk == version.pk  # the first version becomes champion
    assert file_sha256(version.artifact_path) == version.sha256
    assert file_sha256(version.runtime_path) == version.runtime_sha256
    assert Path(version.artifact_path).parent == Path(settings.RLV3_MODEL_DIR) / "versions" / f"run{run_id}"
    assert version.dataset_fingerprint and version.code_version and version.config["seed"] == 3
    for split in ("validation", "test"):
        metrics = version.metrics[split]
        assert metrics["split"] == split and {"sharpe", "max_drawdown", "total_return", "baselines"} <= set(metrics)
    assert version.metrics["training"]["device"] == "cpu"
    assert any(p.name.startswith("events.out.tfevents") for p in run_log_dir(run_id).iterdir())
    assert run_curve_path(run_id).read_bytes().startswith(b"\x89PNG")
    assert (Path(settings.RLV3_MODEL_DIR) / "ppo_model.pt").read_bytes() == Path(version.artifact_path).read_bytes()
    assert not any(name.startswith("versions/.tmp") for name in _files(Path(settings.RLV3_MODEL_DIR)))


@pytest.mark.parametrize("kill", ["whole worker", "pool process"])
def test_killing_the_worker_mid_run_fails_the_run_and_leaves_no_trace(celery_worker, champion, kill):
    from training.services import training_run_submit

    root = Path(settings.RLV3_MODEL_DIR)
    before = _files(root)
    run = training_run_submit(dataset="eurusd_1h", timesteps=2_000_000)
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).timesteps_done > 0, timeout=60,
             message=f"training to start; worker log:\n{celery_worker.log_tail()}")
    if kill == "whole worker":
        celery_worker.kill()  # main process and pool: nothing is left to clean up or report
        assert TrainingRun.objects.get(pk=run.pk).status == RunStatus.RUNNING
        celery_worker.start()  # the restarted node fails what it was running
        expected = f"worker lost: {celery_worker.node} restarted while the run was running"
    else:
        (pid,) = celery_worker.pool_pids()
        os.kill(pid, signal.SIGKILL)  # Celery redelivers the message; the claim refuses to train again
        expected = f"worker lost: process {pid} on {celery_worker.node} died while running"
    failed = wait_for(lambda: TrainingRun.objects.filter(pk=run.pk, status=RunStatus.FAILED).first(), timeout=60,
                      message=f"the run to be failed; worker log:\n{celery_worker.log_tail()}")
    assert failed.error == expected
    assert alias_version(AliasName.CHAMPION).pk == champion.pk
    assert ModelVersion.objects.count() == 1
    # Only the champion's files and the killed run's TensorBoard events remain.
    after = _files(root) - before
    assert after and all(name.startswith(f"runs/{run.pk}/events.out.tfevents") for name in after), after
    assert _files(root / "versions") == {str(Path(p).relative_to(root / "versions")) for p in (champion.artifact_path, champion.runtime_path)}


def test_a_soft_time_limit_fails_the_run_cleanly(celery_worker, champion):
    from training.services import training_run_create
    from training.tasks import train_policy

    run = training_run_create(dataset="googl_1d", timesteps=2_000_000)
    train_policy.apply_async(args=[run.pk], soft_time_limit=5)
    failed = wait_for(lambda: TrainingRun.objects.filter(pk=run.pk, status=RunStatus.FAILED).first(), timeout=90,
                      message=f"the time limit; worker log:\n{celery_worker.log_tail()}")
    assert failed.error.startswith("time limit exceeded")
    assert alias_version(AliasName.CHAMPION).pk == champion.pk
    assert not list((Path(settings.RLV3_MODEL_DIR) / "versions").glob(f"*run{run.pk}*"))


def test_seeds_fan_out_across_two_workers_and_only_the_best_is_gated(celery_worker, second_worker, operator):
    api = token_client(operator)
    response = api.post(API + "train", {"timesteps": 2048, "dataset": "googl_1d", "seeds": [0, 1, 2]}, format="json")
    assert response.status_code == 202, response.content
    parent_id = response.json()["id"]
    parent = wait_for(lambda: TrainingRun.objects.filter(pk=parent_id).exclude(status__in=["queued", "running"]).first(),
                      timeout=150, message=f"the fan-out; logs:\n{celery_worker.log_tail()}\n{second_worker.log_tail()}")
    assert parent.status == RunStatus.SUCCEEDED, parent.error
    assert parent.kind == RunKind.FANOUT
    children = list(parent.children.order_by("seed"))
    assert [c.seed for c in children] == [0, 1, 2] and all(c.status == RunStatus.SUCCEEDED for c in children), [(c.seed, c.status, c.error[-800:]) for c in children]
    nodes = {c.worker.split(" pid=")[0] for c in children}
    assert nodes == {celery_worker.node, second_worker.node}  # both workers trained a seed

    sharpes = {c.seed: c.metrics["validation"]["sharpe"] for c in children}
    best = max(children, key=lambda c: sharpes[c.seed] if sharpes[c.seed] is not None else -np.inf)
    assert (parent.metrics["best_seed"], parent.metrics["best_run"]) == (best.seed, best.pk)
    best_version = best.model_versions.get()
    assert parent.metrics["version"] == best_version.version
    assert alias_version(AliasName.CHAMPION).pk == best_version.pk  # first model: the gate promotes it
    assert run_curve_path(parent.pk).read_bytes() == run_curve_path(best.pk).read_bytes()
    for child in children:
        if child.pk != best.pk:
            assert child.model_versions.get().gate_decision.startswith(f"not gated: seed {best.seed}")


def _record_bars(symbol: str, n: int, start: datetime, seed: int = 0) -> None:
    from decisions.models import MarketBar

    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    MarketBar.objects.bulk_create([
        MarketBar(symbol=symbol, time=start + timedelta(minutes=i), open=c, high=c * 1.001, low=c * 0.999, close=c, volume=1.0)
        for i, c in enumerate(close)
    ])


def test_nightly_retraining_uses_bars_recorded_since_the_last_run_then_gates(celery_worker, champion):
    from training.tasks import retrain_nightly

    now = datetime.now(dt_timezone.utc).replace(second=0, microsecond=0)
    _record_bars("BTCUSDT", 600, now - timedelta(minutes=600))
    _record_bars("ETHUSDT", 5, now - timedelta(minutes=5), seed=1)  # too few bars to trade: left out
    result = retrain_nightly.delay().get(timeout=150)
    assert result["status"] == "succeeded", result
    run = TrainingRun.objects.get(pk=result["run_id"])
    assert run.kind == RunKind.NIGHTLY and run.dataset == settings.RLV3_DEFAULT_DATASET
    assert run.config["extra_datasets"] == ["recorded:BTCUSDT", "recorded:ETHUSDT"]
    version = run.model_versions.get()
    assert version.config["datasets"] == [settings.RLV3_DEFAULT_DATASET, "recorded:BTCUSDT"]
    assert any(note.startswith("recorded:ETHUSDT left out") for note in version.metrics["training"]["notes"])
    assert version.gate_decision.startswith(("promoted: ", "kept as challenger: "))
    assert f"champion v{champion.version} on the same validation split" in version.gate_decision



def _replay_through_the_decision_path(bars: int = 160) -> int:
    """Decisions from the champion on observations built from environment states (validation split of
    the default dataset), each realised by the next bar: the environment's equity change is the PnL of
    a position.closed paired with the decision. Returns the number of experiences stored."""
    from decisions.services import decisions_predict, experience_record
    from decisions.streams.codec import PositionClose
    from training.datasets import dataset_load
    from training.rl.env import EnvConfig, TradingEnv

    env = TradingEnv(dataset_load(settings.RLV3_DEFAULT_DATASET), split="validation", config=EnvConfig(episode_length=bars))
    env.reset(seed=0, options={"start": env.universe.datasets[0].first_bar})
    stored, equity, done = 0, 10_000.0, False
    while not done:
        fields = {**env.observation_fields(), "symbol": "EURUSD"}
        (decision,) = decisions_predict(observations=[fields]).answers
        _, _, terminated, truncated, info = env.step(decision["action_code"])
        pnl = info["equity"] - equity
        close = PositionClose(symbol="EURUSD", pnl=pnl, roi=100 * pnl / equity, decision_id=decision["decision_id"])
        experience_record(close=close, stream_entry_id=None, correlation_id=None)
        equity, done, stored = info["equity"], terminated or truncated, stored + 1
    return stored


def test_finetuning_from_replayed_experiences_registers_and_gates(celery_worker, champion):
    from decisions.models import Experience
    from training.tasks import finetune_from_experiences

    stored = _replay_through_the_decision_path()
    assert Experience.objects.count() == stored == 160
    assert set(Experience.objects.values_list("model_version", flat=True)) == {str(champion.version)}
    result = finetune_from_experiences.delay(epochs=3).get(timeout=120)
    assert result["status"] == "succeeded", result
    run = TrainingRun.objects.get(pk=result["run_id"])
    assert run.kind == RunKind.FINETUNE and run.progress == 100
    version = run.model_versions.get()
    assert version.tags["finetuned_from"] == champion.version and version.tags["experiences"] == stored
    assert version.metrics["training"]["behaviour_versions"] == [str(champion.version)]
    assert version.config["base_version"] == champion.version
    assert version.gate_decision.startswith(("promoted: ", "kept as challenger: "))
    assert {"validation", "test", "champion_validation", "champion_test"} <= set(version.metrics)
    assert run_curve_path(run.pk).is_file()

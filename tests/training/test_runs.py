"""Run lifecycle without a worker: atomic claiming, heartbeats, the sweeper, stray-file cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.training.factories import fake_artifact, version_with
from training import services
from training.models import RunKind, RunStatus, TrainingRun
from training.services import (
    RunMonitor,
    TrainingRunActive,
    model_dir_sweep,
    training_run_claim,
    training_run_create,
    training_run_execute,
    training_run_sweep,
    versions_dir,
)


def _running(dataset="eurusd_1h", *, worker="w1@host pid=1", heartbeat_age=0.0, **fields) -> TrainingRun:
    beat = timezone.now() - timedelta(seconds=heartbeat_age)
    return TrainingRun.objects.create(
        dataset=dataset, timesteps=4096, status=RunStatus.RUNNING, worker=worker, started_at=beat, heartbeat_at=beat, **fields
    )


@pytest.mark.django_db
def test_a_run_is_claimed_once_so_a_redelivered_message_does_not_train_again():
    run = training_run_create(dataset="eurusd_1h", timesteps=4096)
    first = training_run_claim(run_id=run.pk, worker="w1@host pid=10")
    assert first is not None and first.status == RunStatus.RUNNING and first.started_at is not None
    assert training_run_claim(run_id=run.pk, worker="w2@host pid=20") is None
    run.refresh_from_db()
    assert run.worker == "w1@host pid=10"
    # The second delivery through the task body is a no-op that says why.
    result = training_run_execute(run_id=run.pk, worker="w2@host pid=20")
    assert result == {"run_id": run.pk, "status": "skipped", "reason": "run is running, not queued"}
    run.refresh_from_db()
    assert (run.status, run.worker) == (RunStatus.RUNNING, "w1@host pid=10")


@pytest.mark.django_db
def test_one_active_run_per_dataset_and_the_conflict_names_it():
    run = training_run_create(dataset="eurusd_1h", timesteps=4096)
    with pytest.raises(TrainingRunActive) as info:
        training_run_create(dataset="eurusd_1h", timesteps=2048, kind=RunKind.NIGHTLY)
    assert info.value.run.pk == run.pk
    training_run_create(dataset="googl_1d", timesteps=4096)  # another dataset is free


@pytest.mark.django_db
def test_redelivery_after_the_training_process_died_fails_the_run_at_once():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = _running(worker=f"w1@host pid={dead.pid}")
    result = training_run_execute(run_id=run.pk, worker=f"w1@host pid={os.getpid()}")
    assert result["status"] == RunStatus.FAILED
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == f"worker lost: process {dead.pid} on w1@host died while running"
    # A live process on the same node, or the same dead pid on another node, is left alone.
    alive = _running(dataset="googl_1d", worker=f"w1@host pid={os.getppid()}")
    assert training_run_execute(run_id=alive.pk, worker=f"w1@host pid={os.getpid()}")["status"] == "skipped"


@pytest.mark.django_db
def test_sweeper_fails_only_runs_with_a_stale_heartbeat(settings):
    settings.RLV3_RUN_STALE_SECONDS = 60
    stale = _running(heartbeat_age=300)
    fresh = _running(dataset="googl_1d", heartbeat_age=5)
    queued = training_run_create(dataset="recorded:BTCUSDT", timesteps=4096)
    assert training_run_sweep() == [stale.pk]
    for run in (stale, fresh, queued):
        run.refresh_from_db()
    assert stale.status == RunStatus.FAILED and stale.error.startswith("worker lost: no heartbeat since")
    assert stale.finished_at is not None
    assert (fresh.status, queued.status) == (RunStatus.RUNNING, RunStatus.QUEUED)
    assert training_run_sweep() == []  # idempotent


@pytest.mark.django_db
def test_worker_start_fails_what_that_node_was_running_regardless_of_heartbeat():
    mine = _running(worker="w1@host pid=100")
    other = _running(dataset="googl_1d", worker="w10@host pid=100")  # a node whose name merely starts alike
    assert training_run_sweep(lost_node="w1@host") == [mine.pk]
    mine.refresh_from_db()
    other.refresh_from_db()
    assert mine.error == "worker lost: w1@host restarted while the run was running"
    assert other.status == RunStatus.RUNNING


@pytest.mark.django_db(transaction=True)
def test_monitor_writes_heartbeat_and_progress_and_notices_a_run_taken_away():
    run = _running(heartbeat_age=100)
    before = TrainingRun.objects.get(pk=run.pk).heartbeat_at
    with RunMonitor(run, interval=0.05) as monitor:
        assert monitor.record(timesteps_done=1024, recent_mean_reward=0.25) is True
        deadline = time.monotonic() + 10
        while TrainingRun.objects.get(pk=run.pk).timesteps_done != 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        row = TrainingRun.objects.get(pk=run.pk)
        assert (row.timesteps_done, row.progress, row.recent_mean_reward) == (1024, 25.0, 0.25)
        assert row.heartbeat_at > before
        services.training_run_fail(run=run, error="cancelled by an operator")
        while not monitor.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.record(timesteps_done=2048) is False  # the training callback stops here
    row = TrainingRun.objects.get(pk=run.pk)
    assert (row.status, row.timesteps_done, row.error) == (RunStatus.FAILED, 1024, "cancelled by an operator")


@pytest.mark.django_db
def test_monitor_caps_progress_below_100_until_the_run_succeeds():
    run = _running()
    monitor = RunMonitor(run)
    monitor.record(timesteps_done=10_000)
    monitor.flush()
    run.refresh_from_db()
    assert run.progress == 99.0 and run.timesteps_done == 10_000


@pytest.mark.django_db
def test_fanout_parent_progress_is_the_mean_of_its_children():
    parent = _running(kind=RunKind.FANOUT, worker="")
    a = _running(parent=parent)
    b = _running(parent=parent)
    for child, done in ((a, 4096), (b, 1024)):
        monitor = RunMonitor(child)
        monitor.record(timesteps_done=done)
        monitor.flush()
    parent.refresh_from_db()
    assert parent.progress == pytest.approx((99.0 + 25.0) / 2)
    assert parent.timesteps_done == (4096 + 1024) // 2


@pytest.mark.django_db
def test_sweeper_removes_staging_and_unregistered_artifacts_of_finished_runs_only(settings, tmp_path):
    root = versions_dir()
    running = _running()
    failed = TrainingRun.objects.create(dataset="googl_1d", timesteps=1, status=RunStatus.FAILED)
    registered_run = TrainingRun.objects.create(dataset="x", timesteps=1, status=RunStatus.SUCCEEDED)
    keep_staging = root / f".tmp-run{running.pk}-ab12cd34"
    drop_staging = root / f".tmp-run{failed.pk}-ab12cd34"
    drop_orphan = root / f"run{failed.pk}"  # renamed, but the registering transaction never committed
    keep_published = root / f"run{registered_run.pk}"
    unrelated = root / "notes.txt"
    for d in (keep_staging, drop_staging, drop_orphan):
        fake_artifact(d, "policy")
    artifact = fake_artifact(keep_published, "policy")
    services.model_version_register(artifact=artifact, config={}, metrics={}, dataset="x", feature_spec_version="t",
                                    training_run=registered_run)
    unrelated.write_text("operator notes")
    link_tmp = settings.RLV3_MODEL_DIR / "ppo_model.pt.tmp"
    link_tmp.write_bytes(b"half a copy")
    os.utime(link_tmp, (time.time() - 3600, time.time() - 3600))

    removed = model_dir_sweep()
    assert sorted(removed) == sorted([drop_staging, drop_orphan, link_tmp])
    assert keep_staging.is_dir() and keep_published.is_dir() and unrelated.is_file()


@pytest.mark.django_db
def test_a_fanout_whose_children_all_ended_is_finished_by_the_sweeper_with_the_best_seed(tmp_path):
    parent = TrainingRun.objects.create(dataset="eurusd_1h", timesteps=2048, kind=RunKind.FANOUT, seeds=[0, 1, 2],
                                        status=RunStatus.RUNNING)
    versions = {}
    for seed, sharpe in ((0, 0.4), (1, 1.2)):
        child = TrainingRun.objects.create(parent=parent, dataset="eurusd_1h", timesteps=2048, seed=seed,
                                           status=RunStatus.SUCCEEDED, metrics={"validation": {"sharpe": sharpe}})
        version = version_with(tmp_path, sharpe=sharpe)
        version.training_run = child
        version.save()
        versions[seed] = version
    TrainingRun.objects.create(parent=parent, dataset="eurusd_1h", timesteps=2048, seed=2, status=RunStatus.FAILED,
                               error="worker lost")
    training_run_sweep()
    parent.refresh_from_db()
    assert parent.status == RunStatus.SUCCEEDED
    assert (parent.metrics["best_seed"], parent.metrics["version"]) == (1, versions[1].version)
    assert [c["status"] for c in parent.metrics["children"]] == ["succeeded", "succeeded", "failed"]
    for v in versions.values():
        v.refresh_from_db()
    assert versions[1].gate_decision.startswith("promoted: first model")
    assert versions[0].gate_decision.startswith("not gated: seed 1")


@pytest.mark.django_db
def test_nightly_adds_the_symbols_with_bars_recorded_since_the_last_successful_nightly_run():
    from decisions.models import MarketBar
    from training.services import nightly_config

    now = timezone.now().replace(second=0, microsecond=0)
    for symbol, age in (("BTCUSDT", 120), ("ETHUSDT", 30), ("SOLUSDT", 5)):
        MarketBar.objects.create(symbol=symbol, time=now - timedelta(minutes=age), open=1, high=1, low=1, close=1)
    assert nightly_config() == {"extra_datasets": ["recorded:BTCUSDT", "recorded:ETHUSDT", "recorded:SOLUSDT"],
                                "recorded_since": None}
    last_night = now - timedelta(minutes=60)
    TrainingRun.objects.create(dataset="eurusd_1h", timesteps=1, kind=RunKind.NIGHTLY, status=RunStatus.SUCCEEDED,
                               started_at=last_night)
    TrainingRun.objects.create(dataset="eurusd_1h", timesteps=1, kind=RunKind.NIGHTLY, status=RunStatus.FAILED,
                               started_at=now - timedelta(minutes=10))  # a failed night does not move the window
    assert nightly_config() == {"extra_datasets": ["recorded:ETHUSDT", "recorded:SOLUSDT"],
                                "recorded_since": last_night.isoformat()}


@pytest.mark.django_db
def test_a_run_whose_worker_died_does_not_block_a_new_request(settings):
    settings.RLV3_RUN_STALE_SECONDS = 60
    dead = _running(heartbeat_age=600)
    fresh = training_run_create(dataset="eurusd_1h", timesteps=2048)
    dead.refresh_from_db()
    assert dead.status == RunStatus.FAILED and dead.error.startswith("worker lost: no heartbeat since")
    assert fresh.status == RunStatus.QUEUED
    with pytest.raises(TrainingRunActive):  # a live (queued) run still conflicts
        training_run_create(dataset="eurusd_1h", timesteps=2048)


@pytest.mark.django_db
def test_a_fanout_parent_is_never_trained_itself():
    parent = TrainingRun.objects.create(dataset="eurusd_1h", timesteps=2048, kind=RunKind.FANOUT, seeds=[0, 1])
    result = training_run_execute(run_id=parent.pk, worker="w1@host pid=1")
    assert result["reason"] == "a fan-out run is trained by its child runs"
    parent.refresh_from_db()
    assert parent.status == RunStatus.QUEUED


@pytest.mark.django_db
def test_worker_start_spares_a_run_its_new_pool_already_took():
    restart = timezone.now() - timedelta(seconds=5)
    before = _running(worker="w1@host pid=100", heartbeat_age=30)
    after = _running(dataset="googl_1d", worker="w1@host pid=200", heartbeat_age=1)
    assert training_run_sweep(lost_node="w1@host", lost_before=restart) == [before.pk]
    after.refresh_from_db()
    assert after.status == RunStatus.RUNNING

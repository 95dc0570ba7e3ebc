"""Executing runs in this process (as `make run`'s first champion does): failure paths and fencing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from training.models import RunStatus, TrainingRun
from training.services import champion_ensure, training_run_create, training_run_execute, training_run_fail

pytestmark = pytest.mark.django_db(transaction=True)


def _leftovers() -> list[Path]:
    versions = Path(settings.RLV3_MODEL_DIR) / "versions"
    return sorted(versions.iterdir()) if versions.exists() else []


def test_an_unavailable_device_fails_the_run_with_a_clear_message(settings):
    settings.RLV3_DEVICE = "cuda:7"
    run = training_run_create(dataset="googl_1d", timesteps=2048)
    result = training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert result["status"] == run.status == RunStatus.FAILED
    assert run.error.startswith("DeviceError: RLV3_DEVICE=cuda:7 but")
    assert _leftovers() == []


def test_a_run_cancelled_while_training_stops_and_registers_nothing():
    run = training_run_create(dataset="googl_1d", timesteps=2_000_000, config={"ppo": {"n_steps": 32}})

    def cancel_once_training():
        from django.db import connection

        try:
            deadline = time.monotonic() + 60
            while TrainingRun.objects.get(pk=run.pk).timesteps_done == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            training_run_fail(run=run, error="cancelled by ops")
        finally:
            connection.close()  # this thread's own connection

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    started = time.monotonic()
    result = training_run_execute(run_id=run.pk)
    canceller.join()
    run.refresh_from_db()
    assert result["status"] == RunStatus.FAILED and result["error"].startswith("RunLost")
    assert (run.status, run.error) == (RunStatus.FAILED, "cancelled by ops")  # the operator's reason stays
    assert run.model_versions.count() == 0 and _leftovers() == []
    assert time.monotonic() - started < 60  # stopped long before its 2,000,000 steps


def test_champion_ensure_returns_the_champion_without_training_when_there_is_one(tmp_path):
    from tests.training.factories import version_with
    from training.services import model_version_gate

    existing = version_with(tmp_path, sharpe=0.3)
    model_version_gate(version=existing)
    assert champion_ensure(timesteps=2048).pk == existing.pk
    assert TrainingRun.objects.count() == 0


def test_champion_ensure_reports_a_failed_first_training(settings):
    settings.RLV3_DEFAULT_DATASET = "recorded:NOBARS"
    with pytest.raises(RuntimeError, match=r"could not train a first champion \(run \d+\): DatasetError: recorded:NOBARS"):
        champion_ensure(timesteps=2048)


def test_champion_ensure_trains_the_first_champion_here_with_a_progress_bar(settings):
    import io

    from training.models import AliasName
    from training.selectors import alias_version

    settings.RLV3_DEFAULT_DATASET = "googl_1d"
    out = io.StringIO()
    version = champion_ensure(timesteps=2048, stdout=out)
    assert alias_version(AliasName.CHAMPION).pk == version.pk
    assert version.gate_decision == "promoted: first model: no champion yet"
    assert version.dataset == "googl_1d" and version.training_run.config == {"bootstrap": True}
    assert version.training_run.worker.startswith("setup@")
    assert version.metrics["training"]["device"] == "cpu"  # RLV3_DEVICE=auto on a machine without CUDA
    assert f"training run {version.training_run.pk}" in out.getvalue() and "2048/2048" in out.getvalue()
    assert champion_ensure(timesteps=2048).pk == version.pk  # idempotent: no second training
    assert TrainingRun.objects.count() == 1


def test_champion_ensure_trains_a_run_left_queued_by_an_earlier_session(settings):
    settings.RLV3_DEFAULT_DATASET = "googl_1d"
    leftover = training_run_create(dataset="googl_1d", timesteps=2048)
    version = champion_ensure(timesteps=4096)
    assert version.training_run_id == leftover.pk
    assert TrainingRun.objects.count() == 1


def test_the_setup_command_draws_one_progress_bar_in_place(settings, capsys):
    from django.core.management import call_command

    settings.RLV3_DEFAULT_DATASET = "googl_1d"
    call_command("rlv3_setup", "--champion-timesteps", "2048")
    out = capsys.readouterr().out
    assert "nightly retraining: training.tasks.retrain_nightly at" in out and "champion: v1" in out
    bars = [line for line in out.split("\n") if "training run" in line]
    assert len(bars) == 1 and bars[0].count("\r") >= 2  # redrawn in place, not one line per update

"""Through a real Celery worker process: task routing, failure recording, sweeping at worker start."""

from __future__ import annotations

import pytest

from tests.training.conftest import wait_for
from training.models import RunStatus, TrainingRun
from training.services import training_run_submit


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_run_that_cannot_load_its_data_fails_with_the_reason_and_frees_the_dataset(celery_worker):
    run = training_run_submit(dataset="recorded:NOSUCH", timesteps=2048)
    assert run.celery_task_id
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).status == RunStatus.FAILED, timeout=60,
             message=f"run to fail; worker log:\n{celery_worker.log_tail()}")
    run.refresh_from_db()
    assert run.error == "DatasetError: recorded:NOSUCH: no recorded market bars for NOSUCH"
    assert run.worker.startswith(f"{celery_worker.node} pid=")
    assert run.started_at is not None and run.finished_at is not None
    assert model_dir_files() == []  # nothing staged survives
    training_run_submit(dataset="recorded:NOSUCH", timesteps=2048)  # the dataset is free again


def model_dir_files() -> list:
    from django.conf import settings

    return sorted(p for p in settings.RLV3_MODEL_DIR.rglob("*") if p.is_file())


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_the_sweeper_task_runs_on_the_worker(celery_worker):
    from django.utils import timezone

    from training.tasks import sweep_training_runs

    long_ago = timezone.now() - timezone.timedelta(hours=1)
    lost = TrainingRun.objects.create(dataset="eurusd_1h", timesteps=2048, status=RunStatus.RUNNING,
                                      worker="gone@elsewhere pid=1", started_at=long_ago, heartbeat_at=long_ago)
    assert sweep_training_runs.delay().get(timeout=30) == [lost.pk]
    lost.refresh_from_db()
    assert lost.status == RunStatus.FAILED and lost.error.startswith("worker lost: no heartbeat")

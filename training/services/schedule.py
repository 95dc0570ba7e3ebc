"""The nightly schedule (django-celery-beat rows) and the first champion of a new installation."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from django.conf import settings
from django.db import transaction

from ..models import (
    ACTIVE_RUN_STATUSES,
    AliasName,
    ModelVersion,
    RunStatus,
    TrainingRun,
)
from ..selectors import alias_version
from .execution import training_run_execute
from .runs import (
    TrainingRunActive,
    training_run_create,
    training_run_sweep,
    worker_label,
)

log = logging.getLogger(__name__)


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
        from django_celery_beat.models import (
            CrontabSchedule,
            IntervalSchedule,
            PeriodicTask,
        )
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

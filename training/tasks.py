"""Thin Celery wrappers around training.services (the work and its rules live there).

Every task here is acks_late and reject_on_worker_lost (settings): a message whose worker died is
delivered again, and the services make that harmless — a run is claimed atomically, so a second
delivery never trains twice.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_init, worker_ready

log = logging.getLogger(__name__)


def _worker(task) -> str:
    from training.services import worker_label

    return worker_label(task.request.hostname or "")


@shared_task(bind=True, name="training.tasks.train_policy", acks_late=True, reject_on_worker_lost=True)
def train_policy(self, run_id: int) -> dict:
    """Train, evaluate, register and gate one queued TrainingRun."""
    from training.services import training_run_execute

    return training_run_execute(run_id=run_id, worker=_worker(self))


@shared_task(name="training.tasks.fanout_finish", acks_late=True)
def fanout_finish(parent_id: int) -> dict:
    """Chord callback of a multi-seed run: keep the best seed and gate it."""
    from training.services import training_run_fanout_finish

    return training_run_fanout_finish(parent_id=parent_id)


@shared_task(bind=True, name="training.tasks.retrain_nightly", acks_late=True, reject_on_worker_lost=True)
def retrain_nightly(self) -> dict:
    """Beat's nightly retraining (schedule: the 'rlv3: nightly retraining' periodic task)."""
    from training.services import training_run_nightly

    return training_run_nightly(task_id=self.request.id or "", worker=_worker(self))


@shared_task(bind=True, name="training.tasks.finetune_from_experiences", acks_late=True, reject_on_worker_lost=True)
def finetune_from_experiences(self, limit: int = 50_000, epochs: int = 4) -> dict:
    """Fine-tune the champion from stored experiences, then run the promotion gate."""
    from training.services import training_run_finetune

    return training_run_finetune(task_id=self.request.id or "", worker=_worker(self), limit=limit, epochs=epochs)


@shared_task(name="training.tasks.sweep_training_runs", acks_late=True)
def sweep_training_runs() -> list[int]:
    """Beat, every minute: fail runs whose worker is gone, remove stray files. Returns failed ids."""
    from training.services import training_run_sweep

    return training_run_sweep()


_worker_started_at = None


@worker_init.connect
def import_training_engine(**_kwargs) -> None:
    """Note the start time, and import torch and the PPO engine once in the worker's main process,
    before the pool forks.

    Children then start with it loaded: a run's first seconds are not spent importing (inside its
    time limit), and a time limit can never interrupt an import half way. Importing torch does not
    initialise CUDA; the device is chosen inside each run (`training.rl.device.resolve_device`).
    """
    global _worker_started_at
    from django.utils import timezone

    _worker_started_at = timezone.now()
    import training.rl.offpolicy  # noqa: F401
    import training.rl.ppo  # noqa: F401


@worker_ready.connect
def sweep_on_worker_start(sender=None, **_kwargs) -> None:
    """Whatever this node was running before it (re)started is dead: fail it now, not in minutes."""
    from django.db import connection

    from training.services import training_run_sweep

    node = getattr(sender, "hostname", "") or ""
    try:
        failed = training_run_sweep(lost_node=node, lost_before=_worker_started_at)
        if failed:
            log.warning("worker %s start: failed lost training runs %s", node, failed)
    except Exception:  # the worker must start even if the database is briefly unavailable
        log.exception("training-run sweep at worker start failed")
    finally:
        connection.close()  # the pool's children must not share the parent's connection

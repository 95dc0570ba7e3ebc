"""Thin Celery wrappers around training.services."""

from celery import shared_task


@shared_task(name="training.tasks.train_policy", acks_late=True, reject_on_worker_lost=True)
def train_policy(run_id: int) -> dict:
    from training.services import training_run_execute

    return training_run_execute(run_id=run_id)

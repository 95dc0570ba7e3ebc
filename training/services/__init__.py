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

The writes are split by concept: `registry` (versions, aliases, the gate), `runs` (the rows: create,
queue, claim, heartbeat, sweep, fan-out), `execution` (train, evaluate, publish) and `schedule`
(the nightly schedule, the first champion). Import them from here.
"""

from .registry import (  # noqa: F401
    PUBLISHED_RE,
    STAGING_RE,
    alias_set,
    champion_link_update,
    code_version,
    file_sha256,
    gate_compare,
    json_safe,
    model_version_gate,
    model_version_promote,
    model_version_register,
    run_curve_path,
    run_log_dir,
    versions_dir,
)

from .runs import (  # noqa: F401
    QueueUnavailable,
    RunLost,
    RunMonitor,
    TrainingRunActive,
    model_dir_sweep,
    training_run_cancel,
    training_run_claim,
    training_run_create,
    training_run_fail,
    training_run_fanout_finish,
    training_run_submit,
    training_run_sweep,
    worker_label,
)

from .execution import (  # noqa: F401
    MIN_EXPERIENCES,
    Trained,
    nightly_config,
    ppo_config_for,
    training_run_execute,
    training_run_finetune,
    training_run_nightly,
)

from .schedule import (  # noqa: F401
    NIGHTLY_TASK_NAME,
    SWEEPER_TASK_NAME,
    SWEEP_EVERY_SECONDS,
    beat_schedule_ensure,
    champion_ensure,
    cron_fields,
    nightly_schedule_ensure,
)

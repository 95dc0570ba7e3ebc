"""The model registry and training runs (MLflow-style: numbered versions, movable aliases)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class RunKind(models.TextChoices):
    TRAIN = "train"
    NIGHTLY = "nightly"
    FINETUNE = "finetune"
    FANOUT = "fanout"


class TrainingRun(models.Model):
    kind = models.CharField(max_length=16, choices=RunKind.choices, default=RunKind.TRAIN)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    dataset = models.CharField(max_length=200)
    seed = models.IntegerField(default=0)
    seeds = models.JSONField(default=list, blank=True, help_text="Seeds of a fan-out run.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    timesteps = models.PositiveIntegerField(help_text="Requested environment steps.")
    timesteps_done = models.PositiveIntegerField(default=0)
    progress = models.FloatField(default=0.0, help_text="0-100 %.")
    recent_mean_reward = models.FloatField(null=True, blank=True)
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    curve = models.JSONField(default=list, blank=True, help_text="Per-update training diagnostics.")
    error = models.TextField(blank=True, default="")
    celery_task_id = models.CharField(max_length=64, blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One active run per dataset: a double click, a retry and the nightly job never train twice.
            models.UniqueConstraint(
                fields=["dataset"],
                condition=Q(status__in=["queued", "running"]) & Q(parent__isnull=True),
                name="trainingrun_one_active_per_dataset",
            ),
            models.CheckConstraint(condition=Q(progress__gte=0, progress__lte=100), name="trainingrun_progress_range"),
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="trainingrun_status_time")]

    def __str__(self) -> str:
        return f"run {self.pk} {self.kind} {self.dataset} {self.status} {self.progress:.0f}%"


class ModelVersion(models.Model):
    version = models.PositiveIntegerField(unique=True)
    artifact_path = models.CharField(max_length=500, help_text="Torch checkpoint (training, fine-tuning).")
    sha256 = models.CharField(max_length=64)
    runtime_path = models.CharField(max_length=500, help_text="Numpy export loaded by serving.")
    runtime_sha256 = models.CharField(max_length=64)
    feature_spec_version = models.CharField(max_length=64)
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="Validation (and test) metrics.")
    dataset = models.CharField(max_length=200, blank=True, default="")
    dataset_fingerprint = models.CharField(max_length=64, blank=True, default="")
    code_version = models.CharField(max_length=64, blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    gate_decision = models.TextField(blank=True, default="", help_text="Why the promotion gate promoted or kept it.")
    training_run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"v{self.version}"


class AliasName(models.TextChoices):
    CHAMPION = "champion"
    CHALLENGER = "challenger"


class ModelAlias(models.Model):
    """A movable name for a version; moving `champion` is how a model is promoted or rolled back."""

    name = models.CharField(max_length=32, choices=AliasName.choices, unique=True)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.name} -> v{self.model_version.version}"


class AliasChange(models.Model):
    """Audit of every alias move: promotions by the gate, manual promotions and rollbacks."""

    name = models.CharField(max_length=32, choices=AliasName.choices)
    old_version = models.PositiveIntegerField(null=True, blank=True)
    new_version = models.PositiveIntegerField(null=True, blank=True)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    changed_at = models.DateTimeField(default=timezone.now)
    reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-changed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name}: v{self.old_version} -> v{self.new_version}"

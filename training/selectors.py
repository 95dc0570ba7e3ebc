"""Reads of the model registry and training runs."""

from __future__ import annotations

from pathlib import Path

from django.db.models import QuerySet

from .models import ACTIVE_RUN_STATUSES, AliasName, ModelAlias, ModelVersion, TrainingRun


class ModelNotFound(LookupError):
    pass


def alias_version(name: str) -> ModelVersion | None:
    """The version an alias points to, or None when the alias is unset."""
    alias = ModelAlias.objects.select_related("model_version").filter(name=name).first()
    return alias.model_version if alias else None


def alias_versions() -> dict[str, int]:
    """{alias name: version number} for every set alias (one cheap query)."""
    return dict(ModelAlias.objects.values_list("name", "model_version__version"))


def model_version_resolve(ref: str | int) -> ModelVersion:
    """A version by number ("3", "v3", 3) or by alias ("champion", "challenger")."""
    text = str(ref).strip().lower()
    if text in AliasName.values:
        version = alias_version(text)
        if version is None:
            raise ModelNotFound(f"no model is {text} yet")
        return version
    number = text[1:] if text.startswith("v") else text
    if not (number.isascii() and number.isdigit()):  # str.isdigit() is also true for "⑷", which int() refuses
        raise ModelNotFound(f"not a model version or alias: {ref!r}")
    try:
        return ModelVersion.objects.get(version=int(number))
    except ModelVersion.DoesNotExist:
        raise ModelNotFound(f"model version {number} does not exist") from None


def model_version_list() -> QuerySet[ModelVersion]:
    return ModelVersion.objects.select_related("training_run").prefetch_related("aliases").order_by("-version")


def training_run_active(*, dataset: str) -> TrainingRun | None:
    return TrainingRun.objects.filter(dataset=dataset, status__in=ACTIVE_RUN_STATUSES, parent__isnull=True).first()


def training_run_latest() -> TrainingRun | None:
    return TrainingRun.objects.filter(parent__isnull=True).order_by("-created_at", "-id").first()


def artifact_exists(version: ModelVersion) -> bool:
    return Path(version.runtime_path).is_file() and Path(version.artifact_path).is_file()

import base64

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from decisions.admin_utils import HistoryAdmin, pretty_json

from . import services
from .models import AliasChange, ModelAlias, ModelVersion, TrainingRun


class RegistryAdmin(HistoryAdmin):
    """Read-only registry rows with readable metrics and config, and operator-only actions."""

    @admin.display(description="metrics")
    def metrics_pretty(self, obj):
        return pretty_json(obj.metrics)

    @admin.display(description="config")
    def config_pretty(self, obj):
        return pretty_json(obj.config)

    def operator_allowed(self, request) -> bool:
        from decisions.api.permissions import is_operator

        if is_operator(request.user):
            return True
        self.message_user(request, "operator permission required", level=messages.ERROR)
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(RegistryAdmin):
    list_display = ("version", "alias_names", "val_sharpe", "val_return", "val_drawdown", "dataset", "created_at", "gate_decision")
    list_filter = ("dataset", "feature_spec_version")
    search_fields = ("=version", "dataset", "code_version")
    date_hierarchy = "created_at"
    readonly_fields = ("metrics_pretty", "config_pretty")
    exclude = ("metrics", "config")
    actions = ["promote_to_champion"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("aliases")

    @admin.display(description="aliases")
    def alias_names(self, obj):
        return ", ".join(sorted(a.name for a in obj.aliases.all())) or "-"

    def _val(self, obj, key):
        value = (obj.metrics or {}).get("validation", {}).get(key)
        return None if value is None else round(float(value), 4)

    @admin.display(description="val Sharpe")
    def val_sharpe(self, obj):
        return self._val(obj, "sharpe")

    @admin.display(description="val return")
    def val_return(self, obj):
        return self._val(obj, "total_return")

    @admin.display(description="val max DD")
    def val_drawdown(self, obj):
        return self._val(obj, "max_drawdown")

    @admin.action(description="Promote to champion (or roll back to it)")
    def promote_to_champion(self, request, queryset):
        if not self.operator_allowed(request):
            return
        if queryset.count() != 1:
            self.message_user(request, "select exactly one version", level=messages.ERROR)
            return
        version = queryset.get()
        services.model_version_promote(version=version, user=request.user, reason=f"promoted by {request.user.username} in the admin")
        self.message_user(request, f"v{version.version} is now champion")

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ModelAlias)
class ModelAliasAdmin(HistoryAdmin):
    list_display = ("name", "model_version", "updated_at")


@admin.register(AliasChange)
class AliasChangeAdmin(HistoryAdmin):
    list_display = ("changed_at", "name", "old_version", "new_version", "changed_by", "reason")
    list_filter = ("name",)
    date_hierarchy = "changed_at"


@admin.register(TrainingRun)
class TrainingRunAdmin(RegistryAdmin):
    list_display = ("id", "kind", "dataset", "seed", "status", "progress_pct", "timesteps_done", "timesteps", "recent_mean_reward", "parent", "created_at", "finished_at")
    list_filter = ("status", "kind", "dataset")
    search_fields = ("=id", "dataset", "celery_task_id", "worker")
    date_hierarchy = "created_at"
    readonly_fields = ("curve_png", "versions", "log_dir", "metrics_pretty", "config_pretty")
    exclude = ("metrics", "config", "curve")
    actions = ["cancel_runs"]

    @admin.display(description="progress", ordering="progress")
    def progress_pct(self, obj):
        return f"{obj.progress:.0f}%"

    @admin.display(description="training curve")
    def curve_png(self, obj):
        # Inlined as a data: URI: no media URL to serve or protect, and only staff see this page.
        path = services.run_curve_path(obj.pk)
        if not path.is_file():
            return "no curve yet (drawn when the run finishes)"
        encoded = base64.b64encode(path.read_bytes()).decode()
        return format_html('<img src="data:image/png;base64,{}" alt="training curve of run {}" style="max-width:100%">', encoded, obj.pk)

    @admin.display(description="model versions")
    def versions(self, obj):
        links = [
            format_html('<a href="{}">v{}</a> {}', reverse("admin:training_modelversion_change", args=[v.pk]), v.version, v.gate_decision)
            for v in obj.model_versions.all()
        ]
        return format_html_join(mark_safe("<br>"), "{}", ((link,) for link in links)) if links else "-"

    @admin.display(description="TensorBoard logs")
    def log_dir(self, obj):
        return f"tensorboard --logdir {services.run_log_dir(obj.pk)}"

    @admin.action(description="Cancel (mark failed; a running run stops at its next update)")
    def cancel_runs(self, request, queryset):
        if not self.operator_allowed(request):
            return
        cancelled = [run.pk for run in queryset if services.training_run_cancel(run=run, user=request.user)]
        self.message_user(request, f"cancelled runs {cancelled}" if cancelled else "no queued or running run selected")

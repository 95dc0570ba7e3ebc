from django.contrib import admin

from training.rl.actions import ACTION_NAMES

from .admin_utils import ActionFilter, HistoryAdmin, ModelVersionFilter, pretty_json
from .models import Decision, Experience, MarketBar, ShadowModeChange, ShadowModeState


@admin.register(Decision)
class DecisionAdmin(HistoryAdmin):
    list_display = ("created_at", "symbol", "action_name", "confidence_pct", "value", "model_version", "role", "shadow_mode", "source")
    list_filter = (ActionFilter, "shadow_mode", "source", "role", ModelVersionFilter)
    exact_search_fields = ("symbol", "correlation_id", "stream_entry_id")
    uuid_search_fields = ("decision_id",)
    date_hierarchy = "created_at"
    readonly_fields = ("observation_pretty", "probabilities_pretty")
    exclude = ("observation", "features", "probabilities")

    @admin.display(description="action", ordering="action")
    def action_name(self, obj):
        return ACTION_NAMES[obj.action]

    @admin.display(description="confidence", ordering="confidence")
    def confidence_pct(self, obj):
        return f"{obj.confidence:.1%}"

    @admin.display(description="observation")
    def observation_pretty(self, obj):
        return pretty_json(obj.observation)

    @admin.display(description="probabilities")
    def probabilities_pretty(self, obj):
        return pretty_json(dict(zip(ACTION_NAMES, obj.probabilities)))


@admin.register(Experience)
class ExperienceAdmin(HistoryAdmin):
    list_display = ("closed_at", "symbol", "action_name", "pnl", "roi", "reward", "model_version", "position_id")
    list_filter = (ActionFilter, ModelVersionFilter)
    exact_search_fields = ("symbol", "position_id", "correlation_id")
    date_hierarchy = "closed_at"
    readonly_fields = ("observation_pretty", "behaviour_pretty")
    exclude = ("observation", "behaviour_probabilities")
    raw_id_fields = ("decision",)
    list_select_related = ()

    @admin.display(description="action", ordering="action")
    def action_name(self, obj):
        return ACTION_NAMES[obj.action]

    @admin.display(description="observation")
    def observation_pretty(self, obj):
        return pretty_json(obj.observation)

    @admin.display(description="behaviour probabilities")
    def behaviour_pretty(self, obj):
        return pretty_json(dict(zip(ACTION_NAMES, obj.behaviour_probabilities)))


@admin.register(MarketBar)
class MarketBarAdmin(HistoryAdmin):
    list_display = ("symbol", "time", "open", "high", "low", "close", "volume", "ticks", "interval_seconds")
    list_filter = ("interval_seconds",)
    exact_search_fields = ("symbol",)
    date_hierarchy = "time"


@admin.register(ShadowModeChange)
class ShadowModeChangeAdmin(HistoryAdmin):
    list_display = ("changed_at", "changed_by", "old_value", "new_value", "reason", "via")
    list_filter = ("new_value", "via")
    search_fields = ("reason", "changed_by__username")
    date_hierarchy = "changed_at"


@admin.register(ShadowModeState)
class ShadowModeStateAdmin(HistoryAdmin):
    list_display = ("enabled", "updated_at")

"""Admin helpers shared by both apps, built to stay fast with millions of rows: no full COUNT(*),
no DISTINCT scans for filters or the date hierarchy, exact (index-served) search."""

from __future__ import annotations

import json
import uuid

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Q
from django.utils.functional import cached_property
from django.utils.html import format_html

from decisions.selectors import newest_first_filter
from training.rl.actions import ACTION_CHOICES

# Filtered lists count at most this many rows; beyond it the admin shows "10001" (i.e. "more").
COUNT_CAP = 10_000


class EstimatedCountPaginator(Paginator):
    """PostgreSQL's row estimate for unfiltered large tables; a capped count for filtered ones."""

    @cached_property
    def count(self):
        qs = self.object_list
        if connection.vendor != "postgresql":
            return super().count
        if not qs.query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [qs.model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] and row[0] > 100_000:
                return int(row[0])
            return super().count
        return qs.order_by()[: COUNT_CAP + 1].count()


def pretty_json(value) -> str:
    return format_html("<pre style='white-space:pre-wrap;margin:0'>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


class ModelVersionFilter(admin.SimpleListFilter):
    """Choices from the registry (a few rows), not SELECT DISTINCT over the decisions."""

    title = "model version"
    parameter_name = "model_version"

    def lookups(self, request, model_admin):
        from training.models import ModelVersion

        versions = ModelVersion.objects.order_by("-version").values_list("version", flat=True)[:50]
        return [(str(v), f"v{v}") for v in versions] + [("untrained", "untrained")]

    def queryset(self, request, queryset):
        return newest_first_filter(queryset, model_version=self.value()) if self.value() else queryset


class ActionFilter(admin.SimpleListFilter):
    """The action, by name, with the parameter of Django's own filter on the field
    (``action__exact``); a code that is no action shows no rows."""

    title = "action"
    parameter_name = "action__exact"

    def lookups(self, request, model_admin):
        return [(str(code), name) for code, name in ACTION_CHOICES]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value not in dict(self.lookup_choices):
            return queryset.none()
        return newest_first_filter(queryset, action=int(value))


class HistoryAdmin(admin.ModelAdmin):
    """Rows that are history: viewable, never edited or added by hand.

    `exact_search_fields` are matched exactly (each with an index), instead of Django's
    case-insensitive LIKE search that scans the table.
    """

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    change_list_template = "admin/rlv3/change_list_fast.html"
    exact_search_fields: tuple[str, ...] = ()
    uuid_search_fields: tuple[str, ...] = ()

    def get_search_fields(self, request):
        return self.exact_search_fields + self.uuid_search_fields or super().get_search_fields(request)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()[:200]
        if not term or not (self.exact_search_fields or self.uuid_search_fields):
            return super().get_search_results(request, queryset, search_term)
        q = Q()
        for name in self.exact_search_fields:
            q |= Q(**{name: term})
            if name == "symbol" and term.upper() != term:
                q |= Q(symbol=term.upper())
        try:
            as_uuid = uuid.UUID(term)
        except ValueError:
            as_uuid = None
        if as_uuid is not None:
            for name in self.uuid_search_fields:
                q |= Q(**{name: as_uuid})
        return queryset.filter(q), False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

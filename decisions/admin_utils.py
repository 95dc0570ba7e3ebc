"""Admin helpers shared by both apps: a count-free paginator and a readable JSON display."""

from __future__ import annotations

import json

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.utils.functional import cached_property
from django.utils.html import format_html


class EstimatedCountPaginator(Paginator):
    """Uses PostgreSQL's row estimate for unfiltered large tables instead of COUNT(*)."""

    @cached_property
    def count(self):
        query = self.object_list.query
        if connection.vendor == "postgresql" and not query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [self.object_list.model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] and row[0] > 100_000:
                return int(row[0])
        return super().count


def pretty_json(value) -> str:
    return format_html("<pre style='white-space:pre-wrap;margin:0'>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


class HistoryAdmin(admin.ModelAdmin):
    """Rows that are history: viewable, never edited or added by hand."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

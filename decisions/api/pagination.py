import re

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination as _CursorPagination

_WHOLE_NUMBER = re.compile(r"[0-9]{1,6}")


class CursorPagination(_CursorPagination):
    """Keyset pagination: constant cost at any depth, no COUNT(*) over millions of rows."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = ("-created_at", "-id")

    def get_page_size(self, request) -> int:
        """?page_size=1..max_page_size; anything else is a 400 naming the parameter (not ignored)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not _WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({self.page_size_query_param: [f"must be a whole number from 1 to {self.max_page_size}"]})
        return int(raw)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters

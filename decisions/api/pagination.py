import base64
import binascii
import re

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination as _CursorPagination

_WHOLE_NUMBER = re.compile(r"[0-9]{1,6}")


class CursorPagination(_CursorPagination):
    """Keyset pagination: constant cost at any depth, no COUNT(*) over millions of rows."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = ("-created_at", "-pk")

    def get_page_size(self, request) -> int:
        """?page_size=1..max_page_size; anything else is a 400 naming the parameter (not ignored)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not _WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({self.page_size_query_param: [f"must be a whole number from 1 to {self.max_page_size}"]})
        return int(raw)

    def decode_cursor(self, request):
        """DRF's decoder, after refusing anything that is not one of its own cursors: its lenient
        base64 would read ``' OR '1'='1`` as an empty cursor (the first page) instead of an error."""
        raw = request.query_params.get(self.cursor_query_param)
        if raw is not None:
            try:
                decoded = base64.b64decode(raw.encode("ascii"), validate=True).decode("ascii")
            except (UnicodeError, binascii.Error):
                raise NotFound(self.invalid_cursor_message) from None
            if not re.fullmatch(r"([opr]=[^&]*)(&[opr]=[^&]*)*", decoded):
                raise NotFound(self.invalid_cursor_message)
        return super().decode_cursor(request)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters

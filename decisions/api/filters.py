from datetime import UTC, datetime

import django_filters
from django import forms
from django_filters import rest_framework as filters
from django_filters.constants import EMPTY_VALUES
from django_filters.fields import IsoDateTimeField
from drf_spectacular.utils import extend_schema_field

from decisions.models import Decision, Experience
from decisions.selectors import newest_first_filter
from training.rl.actions import ACTION_NAMES, N_ACTIONS, Action


class _PresentCharField(forms.CharField):
    def clean(self, value):
        if value == "":
            raise forms.ValidationError("must not be empty")
        return super().clean(value)


@extend_schema_field({"type": "string", "enum": [*ACTION_NAMES, *(str(code) for code in range(N_ACTIONS))],
                      "description": "Action name or code."})
class ActionFilter(django_filters.CharFilter):
    """?action=LONG or ?action=1 (present but empty is an error)."""

    field_class = _PresentCharField

    def filter(self, qs, value):
        if value in (None, ""):
            return qs
        try:
            code = int(Action.parse(value))
        except ValueError as exc:
            from rest_framework.exceptions import ValidationError

            raise ValidationError({"action": [str(exc)]}) from None
        return newest_first_filter(qs, **{self.field_name: code})


def as_utc(moment: datetime) -> datetime:
    """An aware time in UTC (naive means UTC). PostgreSQL refuses offsets beyond +-15:59 that Python
    parses (up to +-23:59), so every time reaches the database in UTC; raises ValueError when the
    conversion leaves the representable years."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the representable years 1-9999 in UTC") from None


class _PresentIsoDateTimeField(IsoDateTimeField):
    """An ISO-8601 time in UTC; present but empty (`?since=`) is an error, not "no filter"."""

    def clean(self, value):
        if value == "":
            raise forms.ValidationError("must be an ISO-8601 time, got an empty value")
        moment = super().clean(value)
        try:
            return None if moment is None else as_utc(moment)
        except ValueError as exc:
            raise forms.ValidationError(f"must be an ISO-8601 time, got one that {exc}") from None


class TimeFilter(filters.IsoDateTimeFilter):
    field_class = _PresentIsoDateTimeField


class _TrueFalseField(forms.Field):
    """true/false (or 1/0); any other value is an error instead of being read as "no filter"."""

    widget = forms.TextInput

    def clean(self, value):
        if value is None:
            return None
        text = str(value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        # Not quoted back: django-filter %-formats the message, and a "%" in the caller's value made
        # that a 500 when the value was part of it.
        raise forms.ValidationError("must be true or false (or 1 or 0)")


class TrueFalseFilter(filters.BooleanFilter):
    field_class = _TrueFalseField

    def __init__(self, *args, **kwargs):
        kwargs["widget"] = forms.TextInput  # the raw text, for _TrueFalseField to judge
        super().__init__(*args, **kwargs)


class _PresentChoiceField(django_filters.fields.ChoiceField):
    def clean(self, value):
        if value == "":
            raise forms.ValidationError("must be one of the listed values, got an empty value")
        return super().clean(value)


class ChoiceFilter(filters.ChoiceFilter):
    """A choice; present but empty is an error, not "no filter"."""

    field_class = _PresentChoiceField


# Django's form fields refuse NUL characters (PostgreSQL text cannot hold them): the schema says so.
@extend_schema_field({"type": "string", "maxLength": 32, "pattern": "^[^\\x00]*$",
                      "description": "Exact match; at most 32 characters, no NUL."})
class TextFilter(filters.CharFilter):
    """An exact text match of up to 32 characters (empty means no filter), on a list shown newest
    first (`newest_first_filter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_length", 32)
        super().__init__(*args, **kwargs)

    def filter(self, qs, value):
        if value in EMPTY_VALUES:
            return qs
        return newest_first_filter(qs, **{self.field_name: value})


class DecisionFilter(filters.FilterSet):
    symbol = TextFilter(field_name="symbol")
    action = ActionFilter(field_name="action", help_text="Action name or code.")
    model_version = TextFilter(field_name="model_version")
    shadow_mode = TrueFalseFilter(field_name="shadow_mode")
    source = ChoiceFilter(field_name="source", choices=Decision._meta.get_field("source").choices)
    role = ChoiceFilter(field_name="role", choices=Decision._meta.get_field("role").choices)
    since = TimeFilter(field_name="created_at", lookup_expr="gte")
    until = TimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Decision
        fields = []


class ExperienceFilter(filters.FilterSet):
    symbol = TextFilter(field_name="symbol")
    action = ActionFilter(field_name="action", help_text="Action name or code.")
    model_version = TextFilter(field_name="model_version")
    since = TimeFilter(field_name="closed_at", lookup_expr="gte")
    until = TimeFilter(field_name="closed_at", lookup_expr="lt")

    class Meta:
        model = Experience
        fields = []

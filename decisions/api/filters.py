import django_filters
from django_filters import rest_framework as filters

from decisions.models import Decision, Experience
from training.rl.actions import Action


class ActionFilter(django_filters.CharFilter):
    """?action=LONG or ?action=1."""

    def filter(self, qs, value):
        if value in (None, ""):
            return qs
        try:
            code = int(Action.parse(value))
        except ValueError as exc:
            from rest_framework.exceptions import ValidationError

            raise ValidationError({"action": [str(exc)]}) from None
        return qs.filter(**{self.field_name: code})


class DecisionFilter(filters.FilterSet):
    symbol = filters.CharFilter(field_name="symbol", max_length=32)
    action = ActionFilter(field_name="action", help_text="Action name or code.")
    model_version = filters.CharFilter(field_name="model_version", max_length=32)
    shadow_mode = filters.BooleanFilter(field_name="shadow_mode")
    source = filters.ChoiceFilter(field_name="source", choices=Decision._meta.get_field("source").choices)
    role = filters.ChoiceFilter(field_name="role", choices=Decision._meta.get_field("role").choices)
    since = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Decision
        fields = []


class ExperienceFilter(filters.FilterSet):
    symbol = filters.CharFilter(field_name="symbol", max_length=32)
    action = ActionFilter(field_name="action", help_text="Action name or code.")
    model_version = filters.CharFilter(field_name="model_version", max_length=32)
    since = filters.IsoDateTimeFilter(field_name="closed_at", lookup_expr="gte")
    until = filters.IsoDateTimeFilter(field_name="closed_at", lookup_expr="lt")

    class Meta:
        model = Experience
        fields = []

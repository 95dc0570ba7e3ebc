from django.conf import settings
from rest_framework.permissions import BasePermission


def is_operator(user) -> bool:
    """Superusers and members of the operators group may change state (train, shadow mode, promote)."""
    if not (user and user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or user.groups.filter(name=settings.RLV3_OPERATORS_GROUP).exists()


class IsOperator(BasePermission):
    message = "operator permission required"

    def has_permission(self, request, view):
        return is_operator(request.user)

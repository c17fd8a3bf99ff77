"""Who may call what: every endpoint needs a signed-in user holding a model permission.

The plant roles (mes/roles.py) are groups holding these permissions; docs/api.md has the table.
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission, DjangoModelPermissions


class ModelPermissions(DjangoModelPermissions):
    """DRF's model permissions, plus `view_<model>` for reads (DRF lets any user read)."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }


class OperationPermission(BasePermission):
    """The codenames an operation view names in `required_permissions`, all of them."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perms(view.required_permissions))

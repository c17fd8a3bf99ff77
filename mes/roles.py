"""The plant's roles as Django groups, with the permissions each one holds.

Later features add their permissions here; the migration that calls `sync_roles` and the
`demo_plant` command keep the groups in step.
"""

from __future__ import annotations

OPERATOR = "operator"
SUPERVISOR = "supervisor"
QUALITY_ENGINEER = "quality_engineer"
ML_ENGINEER = "ml_engineer"
INTEGRATOR = "integrator"
ADMIN = "admin"

PLANT_MODEL_VIEW = [
    "mes.view_site",
    "mes.view_area",
    "mes.view_line",
    "mes.view_station",
]
PLANT_MODEL_CHANGE = [
    f"mes.{action}_{model}"
    for model in ("site", "area", "line", "station")
    for action in ("add", "change", "delete")
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    OPERATOR: PLANT_MODEL_VIEW,
    SUPERVISOR: PLANT_MODEL_VIEW,
    QUALITY_ENGINEER: PLANT_MODEL_VIEW,
    ML_ENGINEER: PLANT_MODEL_VIEW,
    INTEGRATOR: PLANT_MODEL_VIEW,
    ADMIN: PLANT_MODEL_VIEW + PLANT_MODEL_CHANGE,
}


def sync_roles(group_model, permission_model) -> None:
    """Create each role's group and set exactly its permissions (idempotent)."""
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        permissions = []
        for dotted in codenames:
            app_label, codename = dotted.split(".")
            permissions.append(
                permission_model.objects.get(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(permissions)

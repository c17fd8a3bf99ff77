"""The plant's roles as Django groups, with the permissions each one holds.

Every API endpoint checks one of these permissions; the migration that calls `sync_roles`
and `seed_demo` keep the groups in step with this table.
"""

from __future__ import annotations

OPERATOR = "operator"
SUPERVISOR = "supervisor"
QUALITY_ENGINEER = "quality_engineer"
ML_ENGINEER = "ml_engineer"
INTEGRATOR = "integrator"
ADMIN = "admin"

ROLES = (OPERATOR, SUPERVISOR, QUALITY_ENGINEER, ML_ENGINEER, INTEGRATOR, ADMIN)

READABLE_MODELS = (
    "site",
    "area",
    "line",
    "station",
    "stationsignal",
    "product",
    "route",
    "routeoperation",
    "workorder",
    "unit",
    "stationvisit",
    "firmwareflash",
    "shiftpattern",
    "shifttemplate",
    "shift",
    "shiftbreak",
    "downtimereason",
    "downtimeevent",
    "scrapreason",
    "productioncount",
    "defectcode",
    "qualityevent",
)
VIEW_ALL = [f"mes.view_{model}" for model in READABLE_MODELS] + [
    # OEE, the downtime Pareto, MTBF and MTTR (docs/oee.md): read by everyone who reads the MES.
    "mes.view_oee",
    # Foresight's model registry, scores and defect alerts are read by everyone who reads the MES.
    "foresight.view_modelversion",
    "foresight.view_score",
    "foresight.view_defectalert",
]
# Managing Foresight models (docs/foresight.md) and answering its alerts.
MODEL_LIFECYCLE = ["foresight.promote_modelversion", "foresight.rollback_modelversion"]
ACKNOWLEDGE_ALERTS = ["foresight.acknowledge_defectalert"]
RESOLVE_ALERTS = ["foresight.resolve_defectalert"]


def _crud(*models: str) -> list[str]:
    return [f"mes.{action}_{model}" for model in models for action in ("add", "change", "delete")]


SHOP_FLOOR = [
    "mes.start_workorder",
    "mes.complete_workorder",
    "mes.add_stationvisit",
    "mes.change_stationvisit",
    "mes.add_firmwareflash",
    "mes.add_productioncount",
    "mes.add_downtimeevent",
    "mes.change_downtimeevent",
    "mes.add_qualityevent",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    OPERATOR: VIEW_ALL + SHOP_FLOOR + ACKNOWLEDGE_ALERTS,
    SUPERVISOR: VIEW_ALL
    + SHOP_FLOOR
    + [
        "mes.add_workorder",
        "mes.release_workorder",
        "mes.cancel_workorder",
        "mes.add_unit",
        *_crud("shiftpattern", "shifttemplate", "shift", "shiftbreak"),
    ]
    + ACKNOWLEDGE_ALERTS
    + RESOLVE_ALERTS,
    QUALITY_ENGINEER: [
        *VIEW_ALL,
        "mes.add_qualityevent",
        "mes.change_qualityevent",
        *_crud("defectcode"),
        *ACKNOWLEDGE_ALERTS,
        *RESOLVE_ALERTS,
    ],
    ML_ENGINEER: VIEW_ALL + MODEL_LIFECYCLE,
    # A machine account: pushes shop-floor facts and work-order lifecycle, reads the MES,
    # and nothing about people.
    INTEGRATOR: VIEW_ALL
    + SHOP_FLOOR
    + [
        "mes.add_workorder",
        "mes.release_workorder",
        "mes.cancel_workorder",
        "mes.add_unit",
        "mes.post_mes_webhook",
    ],
    ADMIN: VIEW_ALL
    + _crud(*READABLE_MODELS)
    + [
        "mes.release_workorder",
        "mes.start_workorder",
        "mes.complete_workorder",
        "mes.cancel_workorder",
        "mes.post_mes_webhook",
        "mes.view_auditentry",
        *_crud("webhookintegration"),
        "mes.view_webhookinboxevent",
        "mes.view_outboxmessage",
        "mes.view_apitoken",
        "mes.delete_apitoken",
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
        "auth.view_group",
        *MODEL_LIFECYCLE,
        *ACKNOWLEDGE_ALERTS,
        *RESOLVE_ALERTS,
    ],
}


def _declared_by_a_later_migration(app_label: str, codename: str, permission_model) -> bool:
    """A custom permission the models declare (`Meta.permissions`) that the migration state
    running now does not declare yet: the migration that adds it calls `sync_roles` again."""
    from django.apps import apps as current_apps

    def declared(registry) -> bool:
        try:
            app_config = registry.get_app_config(app_label)
        except LookupError:
            return False
        return any(
            codename == declared_codename
            for model in app_config.get_models()
            for declared_codename, _ in model._meta.permissions
        )

    return declared(current_apps) and not declared(permission_model._meta.apps)


def sync_roles(group_model, permission_model) -> None:
    """Create each role's group and set exactly its permissions (idempotent).

    Permissions of an app whose models do not exist yet (Foresight's, while the MES migrations
    run), and permissions a later migration declares (`mes.view_oee`, while 0003 runs), are
    skipped: the migration that creates them calls this again. Any other missing permission is
    an error (a typo in the table above).
    """
    content_type_model = permission_model._meta.get_field("content_type").related_model
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        permissions = []
        for dotted in sorted(set(codenames)):
            app_label, codename = dotted.split(".")
            permission = permission_model.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is None:
                if not content_type_model.objects.filter(app_label=app_label).exists():
                    continue  # the app's models do not exist yet
                if _declared_by_a_later_migration(app_label, codename, permission_model):
                    continue
                raise permission_model.DoesNotExist(f"no permission {dotted}")
            permissions.append(permission)
        group.permissions.set(permissions)

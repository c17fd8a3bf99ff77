from django.contrib.auth.management import create_permissions
from django.db import migrations


def sync_roles(apps, schema_editor):
    """The roles' Foresight permissions: skipped by the MES roles migration, which runs before
    these tables exist, and granted now (mes/roles.py is the table)."""
    from mes.roles import sync_roles

    # Permissions are normally created after all migrations; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    sync_roles(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


class Migration(migrations.Migration):
    dependencies = [
        ("foresight", "0002_score_hypertable"),
        ("mes", "0003_roles"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]

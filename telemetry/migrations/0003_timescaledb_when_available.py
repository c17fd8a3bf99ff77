from django.conf import settings
from django.db import migrations

from telemetry import timescale


def to_hypertable(apps, schema_editor):
    """Use TimescaleDB when the server has it; plain PostgreSQL otherwise (nothing to do)."""
    with schema_editor.connection.cursor() as cursor:
        if not timescale.available(cursor):
            return
        for statement in timescale.HYPERTABLE_STATEMENTS:
            cursor.execute(statement)
        timescale.set_retention(cursor, settings.TELEMETRY_RETENTION_HOURS)


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0002_rollups")]

    # A hypertable cannot go back to a plain table in place; reversing leaves it as it is.
    operations = [migrations.RunPython(to_hypertable, migrations.RunPython.noop)]

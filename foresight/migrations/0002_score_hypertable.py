from django.db import migrations

from telemetry import timescale

# The score table grows with the sample rate (one row per sample and model): on a server with
# TimescaleDB it is a hypertable with hour chunks, compressed like the telemetry it scores.
# Without the extension (the embedded PostgreSQL) it stays a plain table.
SCORE_HYPERTABLE_STATEMENTS = [
    "CREATE EXTENSION IF NOT EXISTS timescaledb",
    "SELECT create_hypertable('foresight_score', by_range('ts', INTERVAL '1 hour'), "
    "migrate_data => true, if_not_exists => true)",
    "ALTER TABLE foresight_score SET (timescaledb.compress, "
    "timescaledb.compress_segmentby = 'station_id, model_version_id', "
    "timescaledb.compress_orderby = 'ts, seq')",
    "SELECT add_compression_policy('foresight_score', INTERVAL '2 hours', if_not_exists => true)",
]


def to_hypertable(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if not timescale.available(cursor):
            return
        for statement in SCORE_HYPERTABLE_STATEMENTS:
            cursor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("foresight", "0001_initial")]

    # A hypertable cannot go back to a plain table in place; reversing leaves it as it is.
    operations = [migrations.RunPython(to_hypertable, migrations.RunPython.noop)]

"""The TimescaleDB path: detected at migrate time, never required.

On a server with the extension available (docker-compose runs timescale/timescaledb), the
telemetry table becomes a hypertable with compression and retention policies. Without it
(the embedded PostgreSQL) the same table stays a plain table and `telemetry.upkeep` deletes
expired rows in batches. Every statement here is syntax-checked by the tests on both paths.
"""

from __future__ import annotations

AVAILABLE = "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
INSTALLED = "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
IS_HYPERTABLE = (
    "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'telemetry_sample'"
)

CREATE_EXTENSION = "CREATE EXTENSION IF NOT EXISTS timescaledb"
# Chunks of one hour: 20k samples/s x 3600 s = 72M rows, a size compression handles well.
CREATE_HYPERTABLE = (
    "SELECT create_hypertable('telemetry_sample', by_range('ts', INTERVAL '1 hour'), "
    "migrate_data => true, if_not_exists => true)"
)
# Segment by station (queries filter by it); order by time within a segment.
ENABLE_COMPRESSION = (
    "ALTER TABLE telemetry_sample SET (timescaledb.compress, "
    "timescaledb.compress_segmentby = 'station_id', timescaledb.compress_orderby = 'ts, seq')"
)
COMPRESSION_POLICY = (
    "SELECT add_compression_policy('telemetry_sample', INTERVAL '2 hours', if_not_exists => true)"
)
RETENTION_POLICY = (
    "SELECT add_retention_policy('telemetry_sample', make_interval(hours => %(hours)s), "
    "if_not_exists => true)"
)
REMOVE_RETENTION_POLICY = "SELECT remove_retention_policy('telemetry_sample', if_exists => true)"

HYPERTABLE_STATEMENTS = [
    CREATE_EXTENSION,
    CREATE_HYPERTABLE,
    ENABLE_COMPRESSION,
    COMPRESSION_POLICY,
]


def available(cursor) -> bool:
    cursor.execute(AVAILABLE)
    return cursor.fetchone() is not None


def enabled(cursor) -> bool:
    cursor.execute(INSTALLED)
    if cursor.fetchone() is None:
        return False
    cursor.execute(IS_HYPERTABLE)
    return cursor.fetchone() is not None


def set_retention(cursor, hours: int) -> None:
    """Replace the retention policy (the setting may have changed since the last deploy)."""
    cursor.execute(REMOVE_RETENTION_POLICY)
    cursor.execute(RETENTION_POLICY, {"hours": hours})

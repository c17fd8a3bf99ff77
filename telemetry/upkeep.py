"""Keeping telemetry storage in shape: 1-minute roll-ups and retention (run by Celery beat)."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from telemetry import timescale
from telemetry.models import RollupWatermark

WATERMARK = "rollup_1m"
# Buckets this far before the watermark are recomputed on every refresh, so samples that
# arrive late (a backlog replayed after an outage) still land in their minute.
DEFAULT_LOOKBACK = dt.timedelta(hours=2)
# The current minute is still filling; it is rolled up once it is over.
SETTLE = dt.timedelta(minutes=1)

REFRESH_SQL = """
INSERT INTO telemetry_rollup_1m
    (station_id, signal, bucket, samples, mean, minimum, maximum, stddev)
SELECT s.station_id,
       v.key,
       date_bin(INTERVAL '1 minute', s.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       count(*),
       avg(v.value::double precision),
       min(v.value::double precision),
       max(v.value::double precision),
       stddev_samp(v.value::double precision)
FROM telemetry_sample AS s
CROSS JOIN LATERAL jsonb_each_text(s.signals) AS v
WHERE s.ts >= %(start)s AND s.ts < %(end)s
GROUP BY 1, 2, 3
ON CONFLICT (station_id, signal, bucket) DO UPDATE SET
    samples = EXCLUDED.samples,
    mean = EXCLUDED.mean,
    minimum = EXCLUDED.minimum,
    maximum = EXCLUDED.maximum,
    stddev = EXCLUDED.stddev
"""

DELETE_EXPIRED_SQL = """
DELETE FROM {table}
WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE ts < %(cutoff)s LIMIT %(limit)s))
"""
# Tables whose rows live as long as the telemetry they come from (Foresight's scores: a
# backtest scores stored telemetry again, so older scores serve nothing).
ALONGSIDE_TELEMETRY = ("foresight_score",)
DELETE_EXPIRED_ROLLUPS_SQL = "DELETE FROM telemetry_rollup_1m WHERE bucket < %(cutoff)s"


def _minute(instant: dt.datetime) -> dt.datetime:
    return instant.replace(second=0, microsecond=0)


@transaction.atomic
def rollups_refresh(
    *, now: dt.datetime | None = None, lookback: dt.timedelta = DEFAULT_LOOKBACK
) -> dict[str, object]:
    """Recompute the roll-ups from (watermark - lookback) to the last finished minute."""
    end = _minute((now or timezone.now()) - SETTLE)
    watermark = RollupWatermark.objects.select_for_update().filter(name=WATERMARK).first()
    if watermark is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT min(ts) FROM telemetry_sample")
            oldest = cursor.fetchone()[0]
        start = _minute(oldest) if oldest else end
        watermark = RollupWatermark.objects.create(name=WATERMARK, complete_until=start)
    start = min(_minute(watermark.complete_until - lookback), end)
    with connection.cursor() as cursor:
        cursor.execute(REFRESH_SQL, {"start": start, "end": end})
        rows = cursor.rowcount
    watermark.complete_until = max(watermark.complete_until, end)
    watermark.save(update_fields=["complete_until"])
    return {"from": start, "until": end, "rollups_written": rows}


def retention_enforce(
    *, now: dt.datetime | None = None, batch: int = 50_000, max_batches: int = 200
) -> dict[str, object]:
    """Delete telemetry older than the retention, in batches that keep locks short.

    With TimescaleDB the retention policy drops whole chunks instead; this then only trims
    roll-ups (kept ten times longer than raw samples).
    """
    now = now or timezone.now()
    hours = settings.TELEMETRY_RETENTION_HOURS
    cutoff = now - dt.timedelta(hours=hours)
    deleted = scores_deleted = 0
    with connection.cursor() as cursor:
        hypertable = timescale.enabled(cursor)
        if hypertable:
            timescale.set_retention(cursor, hours)
        else:
            deleted = _delete_before(cursor, "telemetry_sample", cutoff, batch, max_batches)
        for table in ALONGSIDE_TELEMETRY:
            scores_deleted += _delete_before(cursor, table, cutoff, batch, max_batches)
        cursor.execute(DELETE_EXPIRED_ROLLUPS_SQL, {"cutoff": now - dt.timedelta(hours=10 * hours)})
    return {
        "cutoff": cutoff,
        "samples_deleted": deleted,
        "scores_deleted": scores_deleted,
        "timescaledb": hypertable,
    }


def _delete_before(cursor, table: str, cutoff: dt.datetime, batch: int, max_batches: int) -> int:
    deleted = 0
    statement = DELETE_EXPIRED_SQL.format(table=table)  # a constant table name, never input
    for _ in range(max_batches):
        with transaction.atomic():
            cursor.execute(statement, {"cutoff": cutoff, "limit": batch})
            deleted += cursor.rowcount
        if cursor.rowcount < batch:
            break
    return deleted

"""Re-attribute stored telemetry from the MES tables: the repair path of the point-in-time join.

When MES facts arrive late for a past interval (a legacy MES reporting a visit after the fact,
a flash recorded afterwards), `StateHistory.apply` returns the intervals whose attribution
changed, and the rows already stored for them are rewritten here, in one set-based statement
per interval, from the MES tables themselves (not from the worker's memory):

- the visit: the latest `mes_stationvisit` of the station arrived at or before `ts`, if it had
  not left by then (visits at a station never overlap, so it is the only candidate);
- unit, VIN, serial, work order and product through `mes_unit` and `mes_workorder`;
- firmware: per component, the latest `mes_firmwareflash` of that unit at or before `ts`,
  gathered with `jsonb_object_agg` (NULL when there is none, as in the worker);
- shift: the `mes_shift` of the station's line containing `ts`.

Only rows whose enrichment differs are written, so a repair of an interval that is already
right writes nothing (no dead tuples, no WAL). The statements run on plain PostgreSQL (no
extension needed) and on a TimescaleDB hypertable alike. The caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from telemetry.enrichment import Interval, coalesce_intervals, ms_datetime

_ENRICHED = """
    SELECT t.station_id, t.ts, t.seq,
           u.id AS unit_id, u.vin, u.serial, u.work_order_id, w.product_id,
           shift.id AS shift_id, fw.firmware
    FROM telemetry_sample AS t
    JOIN mes_station AS station ON station.id = t.station_id
    LEFT JOIN LATERAL (
        SELECT v.unit_id, v.left_at FROM mes_stationvisit AS v
        WHERE v.station_id = t.station_id AND v.arrived_at <= t.ts
        ORDER BY v.arrived_at DESC LIMIT 1
    ) AS visit ON visit.left_at IS NULL OR visit.left_at > t.ts
    LEFT JOIN mes_unit AS u ON u.id = visit.unit_id
    LEFT JOIN mes_workorder AS w ON w.id = u.work_order_id
    LEFT JOIN LATERAL (
        SELECT jsonb_object_agg(latest.component, latest.version) AS firmware
        FROM (
            SELECT DISTINCT ON (f.component) f.component, f.version
            FROM mes_firmwareflash AS f
            WHERE f.unit_id = u.id AND f.flashed_at <= t.ts
            ORDER BY f.component, f.flashed_at DESC
        ) AS latest
    ) AS fw ON true
    LEFT JOIN LATERAL (
        SELECT s.id, s.ends_at FROM mes_shift AS s
        WHERE s.line_id = station.line_id AND s.starts_at <= t.ts
        ORDER BY s.starts_at DESC LIMIT 1
    ) AS shift ON shift.ends_at > t.ts
    WHERE t.station_id = %(station)s AND t.ts >= %(from)s {until}
"""

_UPDATE = """
UPDATE telemetry_sample AS s
SET unit_id = e.unit_id, vin = e.vin, serial = e.serial, work_order_id = e.work_order_id,
    product_id = e.product_id, shift_id = e.shift_id, firmware = e.firmware
FROM ({enriched}) AS e
WHERE s.station_id = %(station)s AND s.ts >= %(from)s {until_s}
  AND s.station_id = e.station_id AND s.ts = e.ts AND s.seq = e.seq
  AND (s.unit_id, s.vin, s.serial, s.work_order_id, s.product_id, s.shift_id, s.firmware)
      IS DISTINCT FROM
      (e.unit_id, e.vin, e.serial, e.work_order_id, e.product_id, e.shift_id, e.firmware)
"""

# Two fixed statements (bounded and open-ended), so the planner sees plain range predicates
# on the primary key instead of `%s IS NULL OR ts < %s`.
REATTRIBUTE_SQL = _UPDATE.format(
    enriched=_ENRICHED.format(until="AND t.ts < %(to)s"), until_s="AND s.ts < %(to)s"
)
REATTRIBUTE_ONWARDS_SQL = _UPDATE.format(enriched=_ENRICHED.format(until=""), until_s="")


def reattribute_statement(
    *, station_id: int, from_ts: dt.datetime, to_ts: dt.datetime | None
) -> tuple[str, dict]:
    params = {"station": station_id, "from": from_ts, "to": to_ts}
    return (REATTRIBUTE_ONWARDS_SQL if to_ts is None else REATTRIBUTE_SQL), params


def reattribute(
    connection, *, station_id: int, from_ts: dt.datetime, to_ts: dt.datetime | None
) -> int:
    """Rewrite the enrichment of the station's rows in [from_ts, to_ts) (to_ts None: onwards)
    from the MES tables; returns how many rows changed.

    `connection` is a Django connection or a psycopg 3 connection; the caller commits.
    """
    sql, params = reattribute_statement(station_id=station_id, from_ts=from_ts, to_ts=to_ts)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


async def reattribute_async(
    aconnection, *, station_id: int, from_ts: dt.datetime, to_ts: dt.datetime | None
) -> int:
    """`reattribute` on a psycopg 3 AsyncConnection."""
    sql, params = reattribute_statement(station_id=station_id, from_ts=from_ts, to_ts=to_ts)
    async with aconnection.cursor() as cursor:
        await cursor.execute(sql, params)
        return cursor.rowcount


def intervals_as_datetimes(
    intervals: Iterable[Interval],
) -> list[tuple[int, dt.datetime, dt.datetime | None]]:
    """`StateHistory.apply` results, merged per station, as `reattribute` arguments."""
    return [
        (station_id, ms_datetime(start), None if end is None else ms_datetime(end))
        for station_id, start, end in coalesce_intervals(list(intervals))
    ]


def reattribute_intervals(connection, intervals: Iterable[Interval]) -> int:
    """Re-attribute every interval `StateHistory.apply` returned (merged first)."""
    return sum(
        reattribute(connection, station_id=station_id, from_ts=start, to_ts=end)
        for station_id, start, end in intervals_as_datetimes(intervals)
    )


def reattribute_all(connection, since: dt.datetime) -> int:
    """Full repair: every station's rows from `since` on, recomputed from the MES tables
    (one statement per station keeps each one's locks short). Returns rows changed."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM mes_station ORDER BY id")
        station_ids = [row[0] for row in cursor.fetchall()]
    return sum(
        reattribute(connection, station_id=station_id, from_ts=since, to_ts=None)
        for station_id in station_ids
    )

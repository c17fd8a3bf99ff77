"""Re-attribution: stored rows get the MES state of their own instant, recomputed in SQL.

Rows are inserted directly into telemetry_sample; the statements run on the test session's
embedded PostgreSQL, which has no extension at all (no TimescaleDB, no contrib).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import orjson
import psycopg
import pytest
from django.db import connection

from mes import services
from mes.relay import database_parameters
from telemetry.enrichment import Enrichment, StateHistory, datetime_ms, ms_datetime
from telemetry.reattribution import (
    reattribute,
    reattribute_all,
    reattribute_async,
    reattribute_intervals,
)
from tests.telemetry.test_enrichment import (
    SINCE,
    T0,
    Plant,
    RandomShopFloor,
    _instants,
    at_unit,
    minutes,
    outbox_after,
    outbox_mark,
)

pytestmark = pytest.mark.django_db

WRONG = "WRONGWRONGWRONG00"  # a VIN no unit has: rows still carrying it were not rewritten


def store(station_id: int, instants: list[int], enrichment: dict | None = None) -> None:
    """Rows as a worker would COPY them: one per instant, with the given (or a wrong) VIN."""
    rows = []
    for ts in instants:
        value = (enrichment or {}).get(ts)
        rows.append(
            (
                station_id,
                ms_datetime(ts),
                value.unit_id if value else None,
                value.vin if value else WRONG,
                value.serial if value else None,
                value.work_order_id if value else None,
                value.product_id if value else None,
                value.shift_id if value else None,
                value.firmware_json if value else None,
            )
        )
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO telemetry_sample (station_id, ts, seq, unit_id, vin, serial,"
            " work_order_id, product_id, shift_id, firmware, signals)"
            " VALUES (%s, %s, 0, %s, %s, %s, %s, %s, %s, %s::jsonb, '{\"torque\": 1.0}')",
            rows,
        )


def stored(station_id: int) -> dict[int, Enrichment]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ts, unit_id, vin, serial, work_order_id, product_id, shift_id, firmware"
            " FROM telemetry_sample WHERE station_id = %s ORDER BY ts",
            [station_id],
        )
        rows = cursor.fetchall()
    result = {}
    for ts, *columns, firmware in rows:
        if isinstance(firmware, str):
            firmware = orjson.loads(firmware)
        result[datetime_ms(ts)] = Enrichment(*columns, firmware)
    return result


def every_30_s(start: dt.datetime, end: dt.datetime) -> list[int]:
    return list(range(datetime_ms(start), datetime_ms(end), 30_000))


def test_reattribute_rewrites_exactly_the_rows_of_the_interval():
    plant = Plant()
    station, other = plant.stations
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    services.firmware_flash(unit=unit, component="EPS", version="v2", at=minutes(4))
    services.unit_leave(unit=unit, station=station, at=minutes(10))
    instants = every_30_s(minutes(-10), minutes(30))
    store(station.pk, instants)
    store(other.pk, instants)

    changed = reattribute(connection, station_id=station.pk, from_ts=minutes(2), to_ts=minutes(20))

    rows = stored(station.pk)
    inside = [ts for ts in instants if datetime_ms(minutes(2)) <= ts < datetime_ms(minutes(20))]
    assert changed == len(inside)
    for ts in instants:
        if ts not in inside:
            assert rows[ts].vin == WRONG  # outside the interval: untouched
        elif ts < datetime_ms(minutes(4)):
            assert rows[ts] == at_unit(unit)
        elif ts < datetime_ms(minutes(10)):
            assert rows[ts] == at_unit(unit, firmware={"EPS": "v2"})
        else:
            assert rows[ts] == Enrichment(None, None, None, None, None, None, None)
    assert {value.vin for value in stored(other.pk).values()} == {WRONG}
    # Rows already right are not written again.
    assert (
        reattribute(connection, station_id=station.pk, from_ts=minutes(2), to_ts=minutes(20)) == 0
    )


def test_an_open_ended_interval_reaches_the_newest_rows():
    plant = Plant()
    station = plant.stations[0]
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    instants = every_30_s(minutes(-5), minutes(60))
    store(station.pk, instants)

    changed = reattribute(connection, station_id=station.pk, from_ts=minutes(0), to_ts=None)

    rows = stored(station.pk)
    assert changed == len([ts for ts in instants if ts >= datetime_ms(minutes(0))])
    assert rows[instants[-1]] == at_unit(unit)
    assert rows[instants[0]].vin == WRONG


@pytest.mark.parametrize("seed", [5, 41])
def test_the_sql_gives_what_the_in_memory_history_gives_at_every_boundary(seed):
    plant = Plant(stations=3)
    plant.shifts(dt.date(2026, 5, 3), dt.date(2026, 5, 5))
    floor = RandomShopFloor(plant, seed)
    for _ in range(150):
        floor.step()
    extra = sorted(
        random.Random(seed).randrange(datetime_ms(SINCE), datetime_ms(floor.now) + 3_600_000)
        for _ in range(200)
    )
    instants = [ts for ts in _instants(plant.stations, extra) if ts >= datetime_ms(SINCE)]
    for station in plant.stations:
        store(station.pk, instants)

    changed = reattribute_all(connection, SINCE)

    assert changed == len(instants) * len(plant.stations)  # every row had a wrong VIN
    history = StateHistory.load(since=SINCE)
    mismatches = [
        (station.code, ms_datetime(ts).isoformat(), row, history.lookup(station.pk, ts))
        for station in plant.stations
        for ts, row in stored(station.pk).items()
        if row != history.lookup(station.pk, ts)
    ]
    assert mismatches == []
    assert any(row.firmware for row in stored(plant.stations[0].pk).values())


def test_late_facts_reattribute_the_stored_rows_they_concern_and_no_others():
    """The invariant end to end: rows stored live, then the MES learns about the past."""
    plant = Plant()
    station, other = plant.stations
    first, late = plant.unit(), plant.unit()
    services.unit_arrive(unit=first, station=station, at=minutes(0))
    services.unit_leave(unit=first, station=station, at=minutes(10))
    live = StateHistory.load(since=SINCE)
    instants = every_30_s(minutes(-5), minutes(40))
    for where in (station, other):
        store(where.pk, instants, {ts: live.lookup(where.pk, ts) for ts in instants})
    before = {where.pk: stored(where.pk) for where in (station, other)}
    mark = outbox_mark()

    # At 09:40 a legacy MES reports that `late` was there from 09:20 to 09:25 and flashed at 09:22,
    # and that `first` got a new ECU image at 09:05.
    services.unit_arrive(unit=late, station=station, at=minutes(20))
    services.firmware_flash(unit=late, component="ECU", version="9", at=minutes(22))
    services.unit_leave(unit=late, station=station, at=minutes(25))
    services.firmware_flash(
        unit=first, component="ECU", version="8", at=minutes(5), station=station
    )
    intervals = [interval for message in outbox_after(mark) for interval in live.apply(message)]

    changed = reattribute_intervals(connection, intervals)

    truth = StateHistory.load(since=SINCE)
    after = stored(station.pk)
    assert after == {ts: truth.lookup(station.pk, ts) for ts in instants}
    rewritten = [ts for ts in instants if after[ts] != before[station.pk][ts]]
    assert changed == len(rewritten)
    assert min(rewritten) == datetime_ms(minutes(5))
    assert max(rewritten) < datetime_ms(minutes(25))
    assert (
        after[
            datetime_ms(
                minutes(
                    22,
                )
            )
        ].vin
        == late.vin
    )
    assert after[datetime_ms(minutes(23))].firmware == {"ECU": "9"}
    assert stored(other.pk) == before[other.pk]


def test_the_repair_runs_on_plain_postgresql_without_any_extension():
    with connection.cursor() as cursor:
        cursor.execute("SELECT extname FROM pg_extension")
        extensions = {row[0] for row in cursor.fetchall()}
    assert extensions <= {"plpgsql", "vector"}  # nothing the statements could lean on
    plant = Plant()
    station = plant.stations[0]
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=T0)
    store(station.pk, [datetime_ms(T0)])
    assert reattribute_all(connection, SINCE) == 1
    assert stored(station.pk)[datetime_ms(T0)] == at_unit(unit)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_worker_connection_reattributes_with_psycopg_sync_and_async():
    plant = Plant()
    station = plant.stations[0]
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    store(station.pk, every_30_s(minutes(0), minutes(2)))
    parameters = database_parameters()

    with psycopg.connect(**parameters) as worker:
        assert reattribute(worker, station_id=station.pk, from_ts=minutes(0), to_ts=minutes(1)) == 2

    async def repair() -> int:
        async with await psycopg.AsyncConnection.connect(**parameters) as worker:
            return await reattribute_async(
                worker, station_id=station.pk, from_ts=minutes(1), to_ts=None
            )

    assert asyncio.run(repair()) == 2
    assert {value.vin for value in stored(station.pk).values()} == {unit.vin}

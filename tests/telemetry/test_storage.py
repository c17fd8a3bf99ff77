"""The COPY writer stores each sample once with its enrichment: new batches by plain COPY, a
redelivered batch through the idempotent path, refused messages isolated from good ones.

Real PostgreSQL; the writer uses its own session, so the tests share committed data."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import psycopg
import pytest

from telemetry.models import Sample
from telemetry.storage import CopyRows, SampleStore, WriteResult, database_parameters

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

T0_MS = 1_790_000_000_000


@dataclass(frozen=True)
class Enrichment:
    """The attributes the writer reads (the shape of telemetry.enrichment.Enrichment)."""

    unit_id: int | None = None
    vin: str | None = None
    serial: str | None = None
    work_order_id: int | None = None
    product_id: int | None = None
    shift_id: int | None = None
    firmware: dict | None = None


UNIT_42 = Enrichment(42, "1HGBH41JXMN109186", "SN000042", 17, 3, 301, {"EPS": "v2.1.4"})
NOBODY = Enrichment(shift_id=301)


def rows_of(*messages: list[tuple[int, int, int]], enrichment=UNIT_42) -> CopyRows:
    """Each message: (station_id, ts offset ms, seq) per sample."""
    rows = CopyRows()
    for samples in messages:
        start = rows.mark()
        for station_id, offset, seq in samples:
            rows.add(station_id, T0_MS + offset, seq, enrichment, {"torque": 40.0 + offset})
        rows.end_message(start)
    return rows


def write(*batches: CopyRows, each: bool = False) -> list:
    async def scenario() -> list:
        store = SampleStore(database_parameters())
        try:
            if each:
                return [await store.write_each(rows) for rows in batches]
            return [await store.write(rows) for rows in batches]
        finally:
            await store.close()

    return asyncio.run(scenario())


def keys() -> list[tuple[int, int, int]]:
    return [
        (station_id, int(ts.timestamp() * 1000) - T0_MS, seq)
        for station_id, ts, seq in Sample.objects.order_by("station_id", "ts", "seq").values_list(
            "station_id", "ts", "seq"
        )
    ]


def test_new_samples_are_stored_with_their_instant_enrichment_and_signals():
    rows = CopyRows()
    rows.add(7, T0_MS + 123, 0, UNIT_42, {"torque": 43.21, "angle": 31})
    rows.add(7, T0_MS + 123, 1, NOBODY, {"torque": 43.5})
    rows.add(8, T0_MS, 0, None, {"flow": -1.5e-3})

    (result,) = write(rows)

    assert result.stored == 3
    assert result.duplicates == 0
    assert not result.idempotent
    first, second = Sample.objects.filter(station_id=7).order_by("seq")
    assert first.ts == dt.datetime(2026, 9, 21, 14, 13, 20, 123000, tzinfo=dt.UTC)
    assert (first.unit_id, first.vin, first.serial) == (42, "1HGBH41JXMN109186", "SN000042")
    assert (first.work_order_id, first.product_id, first.shift_id) == (17, 3, 301)
    assert first.firmware == {"EPS": "v2.1.4"}
    assert first.signals == {"torque": 43.21, "angle": 31}
    assert (second.unit_id, second.vin, second.firmware, second.shift_id) == (None, None, None, 301)
    orphan = Sample.objects.get(station_id=8)
    assert (orphan.unit_id, orphan.shift_id, orphan.firmware) == (None, None, None)
    assert orphan.signals == {"flow": -1.5e-3}


def test_a_redelivered_batch_stores_only_its_new_samples_and_counts_the_rest():
    first = rows_of([(1, n, 0) for n in range(10)])
    redelivered = rows_of([(1, n, 0) for n in range(5, 15)])

    fast, idempotent = write(first, redelivered)

    assert fast == WriteResult(10, 0, fast.seconds, idempotent=False)
    assert idempotent == WriteResult(5, 5, idempotent.seconds, idempotent=True)
    assert keys() == [(1, n, 0) for n in range(15)]


def test_the_same_sample_twice_in_one_batch_is_stored_once():
    (result,) = write(rows_of([(1, 0, 0), (1, 1, 0)], [(1, 0, 0)], [(1, 0, 1)]))

    assert (result.stored, result.duplicates) == (3, 1)
    assert keys() == [(1, 0, 0), (1, 0, 1), (1, 1, 0)]


def test_a_lost_session_fails_the_write_and_the_next_write_reconnects():
    async def scenario() -> tuple[WriteResult, WriteResult]:
        store = SampleStore(database_parameters())
        try:
            before = await store.write(rows_of([(1, 0, 0)]))
            backend = store.connection.info.backend_pid
            # What a restarted server does to the session.
            async with await psycopg.AsyncConnection.connect(
                **database_parameters(), autocommit=True
            ) as other:
                await other.execute("SELECT pg_terminate_backend(%s)", [backend])
            with pytest.raises(psycopg.OperationalError):
                await store.write(rows_of([(1, 1, 0)]))
            return before, await store.write(rows_of([(1, 1, 0)]))
        finally:
            await store.close()

    before, after = asyncio.run(scenario())

    assert (before.stored, after.stored) == (1, 1)
    assert keys() == [(1, 0, 0), (1, 1, 0)]


def _refused_rows() -> CopyRows:
    """Three messages; the middle one has a signal name PostgreSQL's jsonb refuses (NUL)."""
    rows = CopyRows()
    for index, name in enumerate(["torque", "tor\u0000que", "angle"]):
        start = rows.mark()
        rows.add(1, T0_MS + index, 0, UNIT_42, {name: 1.0})
        rows.add(1, T0_MS + index, 1, UNIT_42, {name: 2.0})
        rows.end_message(start)
    return rows


def test_a_batch_the_server_refuses_raises_and_stores_nothing():
    with pytest.raises(psycopg.DataError):
        write(_refused_rows())

    assert keys() == []


def test_refused_messages_are_isolated_and_the_others_stored():
    write(rows_of([(1, 0, 0)]))  # already there: counted as a duplicate, not refused

    ((result, refused),) = write(_refused_rows(), each=True)

    assert [index for index, _error in refused] == [1]
    assert "unicode" in refused[0][1].lower()
    assert (result.stored, result.duplicates) == (3, 1)
    assert keys() == [(1, 0, 0), (1, 0, 1), (1, 2, 0), (1, 2, 1)]

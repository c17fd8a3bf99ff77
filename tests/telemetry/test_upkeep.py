"""Roll-ups, retention and the TimescaleDB path of telemetry storage."""

from __future__ import annotations

import datetime as dt
import json

import pglast
import pytest
from django.db import connection

from aegis.celery import app
from telemetry import timescale, upkeep
from telemetry.models import SignalRollup

pytestmark = pytest.mark.django_db
T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)


def _insert(station_id: int, ts: dt.datetime, seq: int = 0, **signals: float) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_sample (station_id, ts, seq, signals) VALUES (%s, %s, %s, %s)",
            [station_id, ts, seq, json.dumps(signals)],
        )


def _rollup(station_id: int, signal: str, bucket: dt.datetime) -> SignalRollup:
    return SignalRollup.objects.get(station_id=station_id, signal=signal, bucket=bucket)


def test_rollups_summarise_each_minute_of_each_signal():
    for second, torque in enumerate([40.0, 42.0, 44.0]):
        _insert(5, T0 + dt.timedelta(seconds=second), torque=torque, angle=30.0 + second)
    _insert(5, T0 + dt.timedelta(minutes=1, seconds=5), torque=50.0, angle=31.0)
    _insert(6, T0 + dt.timedelta(seconds=10), torque=10.0)

    result = upkeep.rollups_refresh(now=T0 + dt.timedelta(minutes=5))

    first = _rollup(5, "torque", T0)
    assert (first.samples, first.mean, first.minimum, first.maximum) == (3, 42.0, 40.0, 44.0)
    assert first.stddev == pytest.approx(2.0)
    assert _rollup(5, "torque", T0 + dt.timedelta(minutes=1)).samples == 1
    assert _rollup(5, "torque", T0 + dt.timedelta(minutes=1)).stddev is None
    assert _rollup(6, "torque", T0).mean == 10.0
    assert _rollup(5, "angle", T0).maximum == 32.0
    assert result["rollups_written"] == 5


def test_the_running_minute_waits_and_late_samples_land_in_their_minute():
    _insert(5, T0, torque=40.0)
    _insert(5, T0 + dt.timedelta(minutes=3, seconds=1), torque=41.0)
    upkeep.rollups_refresh(now=T0 + dt.timedelta(minutes=3, seconds=30))
    assert not SignalRollup.objects.filter(bucket=T0 + dt.timedelta(minutes=3)).exists()

    _insert(5, T0 + dt.timedelta(seconds=30), torque=44.0)  # a replayed backlog, arriving late
    upkeep.rollups_refresh(now=T0 + dt.timedelta(minutes=10))
    assert _rollup(5, "torque", T0).samples == 2
    assert _rollup(5, "torque", T0).mean == 42.0
    assert _rollup(5, "torque", T0 + dt.timedelta(minutes=3)).samples == 1


def test_retention_deletes_only_expired_samples_in_batches(settings):
    settings.TELEMETRY_RETENTION_HOURS = 24
    now = T0 + dt.timedelta(days=2)
    for n in range(5):
        _insert(5, T0 + dt.timedelta(seconds=n), torque=1.0)  # 2 days old
    _insert(5, now - dt.timedelta(hours=1), torque=2.0)
    with connection.cursor() as cursor:
        for at in (T0, now - dt.timedelta(hours=1)):  # a score of each age, model 0 and 3
            cursor.execute(
                "INSERT INTO foresight_score (station_id, ts, seq, model_version_id, score, shadow)"
                " VALUES (5, %s, 0, 0, 0.5, false), (5, %s, 0, 3, 0.7, true)",
                [at, at],
            )
    result = upkeep.retention_enforce(now=now, batch=2)
    assert result["samples_deleted"] == 5
    assert result["scores_deleted"] == 2
    assert result["timescaledb"] is False
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_sample")
        assert cursor.fetchone()[0] == 1
        cursor.execute("SELECT count(*) FROM foresight_score")
        assert cursor.fetchone()[0] == 2


def test_the_embedded_server_has_no_timescaledb_and_stays_a_plain_table():
    with connection.cursor() as cursor:
        assert timescale.available(cursor) is False
        assert timescale.enabled(cursor) is False
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'telemetry_sample'")
        assert cursor.fetchone()[0] == "r"


@pytest.mark.parametrize(
    "statement",
    [
        *timescale.HYPERTABLE_STATEMENTS,
        timescale.AVAILABLE,
        timescale.INSTALLED,
        timescale.IS_HYPERTABLE,
        timescale.REMOVE_RETENTION_POLICY,
        timescale.RETENTION_POLICY.replace("%(hours)s", "24"),
    ],
)
def test_every_timescaledb_statement_parses_as_postgresql(statement):
    # The embedded server has no TimescaleDB, so these run only in a plant; PostgreSQL's own
    # parser (pglast) still proves their syntax here.
    assert len(pglast.parse_sql(statement)) == 1


def test_upkeep_runs_on_the_beat_schedule():
    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {"telemetry.rollups_refresh", "telemetry.retention_enforce"} <= tasks

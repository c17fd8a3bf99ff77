"""What v_unit_genealogy, v_vin_trace and v_alerts say about the traced vehicle (tests/reporting/
plant.py), row by row, worked out by hand from the MES facts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from tests.reporting.plant import IDLE_SERIAL, MODEL_VERSION, SERIAL, VIN, WORK_ORDER, at

pytestmark = pytest.mark.django_db


def rows(query: str, params=()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall()


def test_genealogy_tells_the_vehicles_life_one_event_per_row(traced_plant):
    assert rows(
        """
        SELECT event_kind, event_at, event_end, duration_seconds, station, firmware_component,
               firmware_version, defect_code, severity, detection_source, detected_by,
               description
        FROM reporting.v_unit_genealogy
        WHERE vin = %s AND event_kind <> 'registered'
        ORDER BY event_at
        """,
        [VIN],
    ) == [
        ("visit", at(0), at(60), Decimal(60), "RA", None, None, None, None, None, None, None),
        ("visit", at(90), at(200), Decimal(110), "RB", None, None, None, None, None, None, None),
        ("firmware", at(120), None, None, "RB", "EPS", "4.2.1", *[None] * 5),
        (
            "quality",
            at(150),
            None,
            None,
            "RB",
            None,
            None,
            "steering",
            "major",
            "inspection",
            "inspector.ines",
            "pulls left at 80 km/h",
        ),
    ]


def test_every_genealogy_row_names_the_unit_its_work_order_and_product(traced_plant):
    described = rows(
        """
        SELECT DISTINCT serial, vin, unit_status, work_order, work_order_status, product, line
        FROM reporting.v_unit_genealogy WHERE serial IN (%s, %s) ORDER BY serial
        """,
        [SERIAL, IDLE_SERIAL],
    )
    assert described == [
        (SERIAL, VIN, "in_progress", WORK_ORDER, "in_progress", "SEDAN-R", "R1"),
        (IDLE_SERIAL, None, "planned", WORK_ORDER, "in_progress", "SEDAN-R", "R1"),
    ]


def test_a_unit_that_did_nothing_yet_still_has_its_registration_row(traced_plant):
    assert rows(
        "SELECT event_kind, station FROM reporting.v_unit_genealogy WHERE serial = %s",
        [IDLE_SERIAL],
    ) == [("registered", None)]


def test_vin_trace_has_one_numeric_row_per_signal_with_the_state_of_its_instant(traced_plant):
    traced = rows(
        """
        SELECT ts, station, firmware, signal, value, signal_unit, serial, work_order, product
        FROM reporting.v_vin_trace WHERE vin = %s ORDER BY ts, signal
        """,
        [VIN],
    )
    assert [row[:6] for row in traced] == [
        (at(10), "RA", None, "angle", Decimal("31.5"), None),
        (at(10), "RA", None, "torque", Decimal("43.21"), "N·m"),
        (at(20), "RA", None, "angle", Decimal("33"), None),
        (at(20), "RA", None, "torque", Decimal("47.9"), "N·m"),
        (at(130), "RB", "EPS=4.2.1", "supply_voltage", Decimal("13.2"), None),
    ]
    assert {row[6:] for row in traced} == {(SERIAL, WORK_ORDER, "SEDAN-R")}


def test_a_sample_with_nobody_at_the_station_is_traced_by_station_and_time(traced_plant):
    assert rows(
        """
        SELECT ts, vin, serial, unit_id, work_order, signal, value
        FROM reporting.v_vin_trace WHERE station = 'RA' AND ts BETWEEN %s AND %s
        """,
        [at(61), at(89)],
    ) == [(at(75), None, None, None, None, "torque", Decimal("0.0"))]


def test_firmware_pairs_are_in_component_order_and_non_numbers_are_left_out(traced_plant):
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM mes_station WHERE code = 'RB'")
        (station_b,) = cursor.fetchone()
        cursor.execute(
            """
            INSERT INTO telemetry_sample (station_id, ts, seq, vin, firmware, signals)
            VALUES (%s, %s, 0, %s, '{"EPS": "4.2.1", "BCM": "1.0.2"}',
                    '{"leak_rate": 0.12, "valve": "open", "pressure": null}')
            """,
            [station_b, at(140), VIN],
        )
    assert rows(
        "SELECT firmware, signal, value FROM reporting.v_vin_trace WHERE ts = %s", [at(140)]
    ) == [("BCM=1.0.2;EPS=4.2.1", "leak_rate", Decimal("0.12"))]


def test_alerts_carry_where_what_how_it_scored_and_who_did_what(traced_plant):
    resolved, still_open = rows(
        """
        SELECT ts, site, line, station, vin, serial, work_order, product, firmware, score,
               threshold, source, model_version, model_kind, trigger_torque_nm, top_feature,
               top_signal, top_share, status, acknowledged_by, acknowledged_at IS NOT NULL,
               resolved_by, resolved_at IS NOT NULL, feedback, note
        FROM reporting.v_alerts ORDER BY ts
        """
    )
    site = rows("SELECT code FROM mes_site")[0][0]
    assert resolved == (
        at(20),
        site,
        "R1",
        "RA",
        VIN,
        SERIAL,
        WORK_ORDER,
        "SEDAN-R",
        None,  # nothing flashed before 09:00:20
        Decimal("7.5"),
        Decimal("5"),
        "model",
        MODEL_VERSION,
        "pca_t2q",
        Decimal("47.9"),
        "torque_mean",
        "torque",
        Decimal("0.8"),
        "resolved",
        "supervisor.sam",
        True,
        "supervisor.sam",
        True,
        "true_defect",
        "rack bolt re-torqued",
    )
    assert still_open == (
        at(130),
        site,
        "R1",
        "RB",
        VIN,
        SERIAL,
        WORK_ORDER,
        "SEDAN-R",
        "EPS=4.2.1",
        Decimal("3.25"),
        Decimal("3"),
        "baseline",
        None,
        None,
        None,  # no torque at an ECU flash station
        None,
        None,
        None,
        "open",
        None,
        False,
        None,
        False,
        None,
        None,
    )


def plan(query: str, params) -> str:
    with connection.cursor() as cursor:
        # Tiny tables are cheaper to scan; what matters is that the filter can reach an index.
        cursor.execute("SET LOCAL enable_seqscan = off")
        # Statistics of this test's rows, not of whatever an earlier test left behind: with
        # stale ones the planner may reach mes_unit through its primary key and filter.
        cursor.execute("ANALYZE mes_unit, mes_stationvisit, telemetry_sample")
        cursor.execute(f"EXPLAIN {query}", params)
        return "\n".join(line for (line,) in cursor.fetchall())


def crowd_the_line(vin: str, units: int) -> None:
    """Give the traced vehicle's work order `units` more vehicles, each with one visit to a
    station of its own hour, and the station four times as many samples of nobody: with a
    handful of rows in a table any plan is as cheap as any other (and which one the planner
    picks depends on what earlier tests left in its statistics); with thousands only the
    indexes on the unit and the VIN find one vehicle's rows quickly."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH crowd AS (
                INSERT INTO mes_unit (created_at, updated_at, serial, vin, status, work_order_id)
                SELECT now(), now(), 'CROWD-' || n, NULL, u.status, u.work_order_id
                FROM mes_unit AS u, generate_series(1, %s) AS n
                WHERE u.vin = %s
                RETURNING id
            )
            INSERT INTO mes_stationvisit (unit_id, station_id, arrived_at, left_at)
            SELECT crowd.id, v.station_id,
                   v.arrived_at + make_interval(hours => crowd.id::int),
                   v.arrived_at + make_interval(hours => crowd.id::int, secs => 30)
            FROM crowd, LATERAL (
                SELECT station_id, arrived_at FROM mes_stationvisit
                WHERE unit_id = (SELECT id FROM mes_unit WHERE vin = %s) LIMIT 1
            ) AS v
            """,
            [units, vin, vin],
        )
        # And a sample a second of the same station from the crowd's hours, without a VIN: a
        # few rows of the traced vehicle among many more of nobody.
        cursor.execute(
            """
            INSERT INTO telemetry_sample (station_id, ts, seq, signals)
            SELECT s.station_id, s.ts + make_interval(hours => 1, secs => n), 0, s.signals
            FROM generate_series(1, %s) AS n,
                 (SELECT station_id, ts, signals FROM telemetry_sample LIMIT 1) AS s
            """,
            [units * 4],
        )


def test_filters_on_vin_reach_the_indexes_through_the_views(traced_plant):
    crowd_the_line(VIN, units=5000)
    genealogy = plan("SELECT * FROM reporting.v_unit_genealogy WHERE vin = %s", [VIN])
    assert "mes_unit_vin" in genealogy
    # Either index that leads with the unit serves: the b-tree on unit_id, or the GiST index
    # behind the one-place-at-a-time exclusion constraint (which the planner sometimes prefers).
    assert "mes_stationvisit_unit_id" in genealogy or "mes_visit_unit_in_one_place" in genealogy
    assert "Seq Scan on mes_stationvisit" not in genealogy
    trace = plan("SELECT * FROM reporting.v_vin_trace WHERE vin = %s", [VIN])
    assert "telemetry_sample_vin_ts" in trace
    by_time = plan(
        "SELECT * FROM reporting.v_vin_trace WHERE ts BETWEEN %s AND %s", [at(0), at(60)]
    )
    assert "telemetry_sample_ts" in by_time or "telemetry_sample_pkey" in by_time

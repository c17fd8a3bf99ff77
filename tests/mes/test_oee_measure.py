"""How long OEE questions take on a plant's history: the numbers in docs/oee.md come from

    AEGIS_MEASURE_OEE=1 .venv/bin/pytest tests/mes/test_oee_measure.py -s -p no:cacheprovider

(AEGIS_MEASURE_OEE_DAYS, default 28, sets the history's length). Skipped otherwise: it is a
measurement, not a check. The plant: 2 lines x 6 stations, three 8-hour shifts a day with a
30-minute break each, one count report per station and minute (one unit, as the simulator
reports them), an unplanned stop of 10 s to 20 min every 97 minutes per station. Each question is
asked 3 times; the median and the worst are printed, in seconds, execute + fetch.
"""

from __future__ import annotations

import os
import statistics
import time
from decimal import Decimal

import pytest
from django.db import connection

from mes.api.authentication import api_token_issue
from tests.factories import (
    LineFactory,
    RouteOperationFactory,
    StationFactory,
    UserFactory,
    WorkOrderFactory,
)

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        not os.environ.get("AEGIS_MEASURE_OEE"), reason="a measurement: set AEGIS_MEASURE_OEE=1"
    ),
]

DAYS = int(os.environ.get("AEGIS_MEASURE_OEE_DAYS", "28"))
START = "2025-03-01 00:00+00"
REPEATS = 3


def build_history() -> int:
    """The plant and its history, written with generate_series; returns the count rows."""
    lines = []
    for _ in range(2):
        line = LineFactory()
        stations = [StationFactory(line=line) for _ in range(6)]
        first = RouteOperationFactory(
            route__line=line, station=stations[0], ideal_cycle_time_s=Decimal("55")
        )
        for station in stations[1:]:
            RouteOperationFactory(
                route=first.route, station=station, ideal_cycle_time_s=Decimal("55")
            )
        work_order = WorkOrderFactory(product=first.route.product, line=line, quantity=10**6)
        lines.append((line, stations, work_order))
    with connection.cursor() as cursor:
        for line, stations, work_order in lines:
            cursor.execute(
                """
                INSERT INTO mes_shift (line_id, name, business_date, starts_at, ends_at)
                SELECT %(line)s, s.name, day::date, day + s.starts, day + s.starts + interval '8h'
                FROM generate_series(%(start)s::timestamptz,
                                     %(start)s::timestamptz + (%(days)s - 1) * interval '1 day',
                                     interval '1 day') AS day
                CROSS JOIN (VALUES ('Early', interval '6h'), ('Late', interval '14h'),
                                   ('Night', interval '22h')) AS s(name, starts)
                """,
                {"line": line.pk, "start": START, "days": DAYS},
            )
            cursor.execute(
                """
                INSERT INTO mes_shiftbreak (shift_id, name, starts_at, ends_at)
                SELECT id, 'Break', starts_at + interval '3h', starts_at + interval '3h 30min'
                FROM mes_shift WHERE line_id = %s
                """,
                [line.pk],
            )
            for station in stations:
                cursor.execute(
                    """
                    INSERT INTO mes_productioncount (station_id, work_order_id, interval_start,
                        interval_end, good, scrap, created_at, updated_at)
                    SELECT %(station)s, %(work_order)s, t, t + interval '1 min', 1, 0, now(), now()
                    FROM generate_series(%(start)s::timestamptz + interval '6h',
                        %(start)s::timestamptz + interval '6h' + %(days)s * interval '1 day'
                            - interval '1 min',
                        interval '1 min') AS t
                    """,
                    {
                        "station": station.pk,
                        "work_order": work_order.pk,
                        "start": START,
                        "days": DAYS,
                    },
                )
                cursor.execute(
                    """
                    INSERT INTO mes_downtimeevent (station_id, started_at, ended_at, planned,
                        comment, created_at, updated_at)
                    SELECT %(station)s, t,
                        t + interval '10 s' + (random() * interval '20 min'), false, '',
                        now(), now()
                    FROM generate_series(%(start)s::timestamptz + interval '7h 7min',
                        %(start)s::timestamptz + %(days)s * interval '1 day',
                        interval '97 min') AS t
                    """,
                    {"station": station.pk, "start": START, "days": DAYS},
                )
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM mes_productioncount")
        return cursor.fetchone()[0]


def timed(run) -> tuple[float, float, int]:
    times, rows = [], 0
    for _ in range(REPEATS):
        began = time.perf_counter()
        rows = run()
        times.append(time.perf_counter() - began)
    return statistics.median(times), max(times), rows


def sql(query: str):
    def run() -> int:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return len(cursor.fetchall())

    return run


def test_measure_oee_questions(client):
    counts = build_history()
    user = UserFactory(role="supervisor")
    _, secret = api_token_issue(user=user, name="measure")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}

    def rest(url: str):
        def run() -> int:
            response = client.get(url, **headers)
            assert response.status_code == 200, response.content
            return len(response.json())

        return run

    questions = [
        ("v_oee_shift, all history", sql("SELECT * FROM reporting.v_oee_shift")),
        ("v_oee_line_day, all history", sql("SELECT * FROM reporting.v_oee_line_day")),
        ("v_downtime_pareto, all history", sql("SELECT * FROM reporting.v_downtime_pareto")),
        (
            "reporting.oee(), one day per station",
            sql("SELECT * FROM reporting.oee('2025-03-02 06:00+00', '2025-03-03 06:00+00')"),
        ),
        (
            "reporting.oee(), one week per station",
            sql("SELECT * FROM reporting.oee('2025-03-02 06:00+00', '2025-03-09 06:00+00')"),
        ),
        (
            "GET /api/v1/oee/shifts, one business day",
            rest("/api/v1/oee/shifts?first_day=2025-03-02&last_day=2025-03-02"),
        ),
        (
            "GET /api/v1/oee?per=line, one week",
            rest("/api/v1/oee?per=line&start=2025-03-02T06:00Z&end=2025-03-09T06:00Z"),
        ),
        (
            "GET /api/v1/downtime/pareto, one week",
            rest(
                "/api/v1/downtime/pareto?by=station&start=2025-03-02T06:00Z&end=2025-03-09T06:00Z"
            ),
        ),
    ]
    print(f"\n{DAYS} days, 12 stations, {counts} count rows")
    print(f"{'question':45} {'median s':>9} {'worst s':>9} {'rows':>6}")
    for name, run in questions:
        median, worst, rows = timed(run)
        print(f"{name:45} {median:9.3f} {worst:9.3f} {rows:6d}")
        assert rows > 0

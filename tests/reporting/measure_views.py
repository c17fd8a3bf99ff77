"""Measure what a reporting client waits for: the traceability views read by the reporting role
through psycopg (libpq), psqlODBC (pyodbc) and the PostgreSQL JDBC driver, over a day of
telemetry. The numbers in docs/reporting.md come from this command:

    .venv/bin/python -m tests.reporting.measure_views [--stations 12] [--hours 24]

It starts private embedded servers in a temporary directory (the test settings), migrates,
writes `stations * hours * 3600` samples at 1 Hz with two signals each (units move one station
per minute, so a VIN has 60 samples at every station), creates the reporting role, and times
each question several times per driver: median and worst, milliseconds, execute + fetch all
("server only": PostgreSQL's planning + execution time from EXPLAIN ANALYZE, no transfer).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ["DJANGO_SETTINGS_MODULE"] = "aegis.settings.test"

import django

django.setup()  # the settings module is chosen above, before anything imports Django

import psycopg  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from tests.factories import LineFactory, StationFactory  # noqa: E402
from tests.reporting.odbc import connection_string, register_psqlodbc  # noqa: E402

START = "2026-01-05 00:00:00+00"
# Run first on every connection, untimed: loads the catalog entries of the view and its tables
# (and the JDBC driver's classes) as a report's first query would.
WARM_UP = "SELECT * FROM v_vin_trace WHERE false"
PROBE = Path(__file__).resolve().parent / "jdbc" / "Probe.java"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")
REPEATS = 7


def vin(unit: int) -> str:
    return f"BENCH{unit:012d}"


def fill(stations: int, hours: int) -> tuple[list[int], int]:
    line = LineFactory(code="B1")
    ids = [StationFactory(line=line, code=f"B{n}", position=n).pk for n in range(1, stations + 1)]
    seconds = hours * 3600
    started = time.monotonic()
    with connection.cursor() as cursor:
        # Unit u is at station k (1-based) during minute u + k - 1 of the day.
        cursor.execute(
            """
            INSERT INTO telemetry_sample
                (station_id, ts, seq, unit_id, vin, serial, firmware, signals)
            SELECT station.id, %(start)s::timestamptz + make_interval(secs => second), 0,
                   second / 60 - station.position + 1,
                   'BENCH' || lpad((second / 60 - station.position + 1)::text, 12, '0'),
                   'SN' || (second / 60 - station.position + 1),
                   '{"EPS": "4.2.1", "BCM": "1.0.2"}',
                   jsonb_build_object('torque', round((40 + random() * 8)::numeric, 2),
                                      'angle', round((30 + random() * 30)::numeric, 1))
            FROM (SELECT id, row_number() OVER (ORDER BY id) AS position
                  FROM mes_station WHERE id = ANY(%(ids)s)) AS station,
                 generate_series(0, %(last)s) AS second
            """,
            {"start": START, "ids": ids, "last": seconds - 1},
        )
        cursor.execute("ANALYZE telemetry_sample")
    print(f"wrote {stations * seconds:,} samples in {time.monotonic() - started:.1f} s")
    return ids, seconds


def questions(stations: int, seconds: int) -> list[tuple[str, str, tuple[str, ...]]]:
    """(what a quality engineer asks, SQL with ? parameters, parameters) for one random unit."""
    unit = secrets.randbelow(seconds // 60 - stations) + 1
    minute = unit + 2  # the unit is at station B3 during this minute of the day
    instant = f"{START[:10]} {minute // 60:02d}:{minute % 60:02d}:30+00"
    return [
        ("VIN's whole trace", "SELECT * FROM v_vin_trace WHERE vin = ?", (vin(unit),)),
        (
            "VIN at one instant",
            "SELECT * FROM v_vin_trace WHERE vin = ? AND ts = CAST(? AS timestamptz)",
            (vin(unit), instant),
        ),
        (
            "station B3, 10 minutes",
            "SELECT * FROM v_vin_trace WHERE station = 'B3'"
            " AND ts >= CAST(? AS timestamptz) AND ts < CAST(? AS timestamptz) + interval '10 min'",
            (instant, instant),
        ),
    ]


def libpq_times(login: dict, script) -> dict[str, tuple[float, int]]:
    timings = {}
    with psycopg.connect(**login, autocommit=True) as client:
        client.execute(WARM_UP)
        for label, query, parameters in script:
            started = time.perf_counter()
            rows = client.execute(query.replace("?", "%s"), parameters).fetchall()
            timings[label] = ((time.perf_counter() - started) * 1000, len(rows))
    return timings


def server_times(login: dict, script) -> dict[str, tuple[float, int]]:
    """The database's own share: planning plus execution, as EXPLAIN ANALYZE reports them."""
    timings = {}
    with psycopg.connect(**login, autocommit=True) as client:
        client.execute(WARM_UP)
        for label, query, parameters in script:
            explained = "EXPLAIN (ANALYZE, FORMAT JSON) " + query.replace("?", "%s")
            (plan,) = client.execute(explained, parameters).fetchone()[0]
            millis = plan["Planning Time"] + plan["Execution Time"]
            timings[label] = (millis, plan["Plan"]["Actual Rows"])
    return timings


def odbc_times(login: dict, script) -> dict[str, tuple[float, int]]:
    import pyodbc

    client = pyodbc.connect(
        connection_string(
            host=login["host"],
            port=login["port"],
            database=login["dbname"],
            user=login["user"],
            password=login["password"],
        ),
        autocommit=True,
    )
    timings = {}
    try:
        cursor = client.cursor()
        cursor.execute(WARM_UP)
        for label, query, parameters in script:
            started = time.perf_counter()
            rows = cursor.execute(query, *parameters).fetchall()
            timings[label] = ((time.perf_counter() - started) * 1000, len(rows))
    finally:
        client.close()
    return timings


def jdbc_times(login: dict, script) -> dict[str, tuple[float, int]]:
    lines = [f"warm up\t{WARM_UP}"]
    lines += ["\t".join([label, query, *parameters]) for label, query, parameters in script]
    url = "jdbc:postgresql://{host}:{port}/{dbname}".format(**login)
    result = subprocess.run(
        ["java", "-cp", str(JDBC_JAR), str(PROBE), url],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "AEGIS_PROBE_USER": login["user"],
            "AEGIS_PROBE_PASSWORD": login["password"],
        },
    )
    answers = [json.loads(line) for line in result.stdout.splitlines()][2:]
    return {answer["label"]: (answer["millis"], len(answer["rows"])) for answer in answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=12)
    parser.add_argument("--hours", type=int, default=24)
    arguments = parser.parse_args()
    call_command("migrate", verbosity=0)
    _, seconds = fill(arguments.stations, arguments.hours)
    password = secrets.token_urlsafe(18)
    os.environ["AEGIS_REPORTING_PASSWORD"] = password
    call_command("reporting_role", stdout=io.StringIO())
    database = connection.settings_dict
    login = {
        "host": database["HOST"],
        "port": int(database["PORT"]),
        "dbname": database["NAME"],
        "user": os.environ.get("AEGIS_REPORTING_ROLE", "aegis_reporting"),
        "password": password,
    }
    odbc_ini = tempfile.TemporaryDirectory(prefix="aegis-odbc-")
    register_psqlodbc(Path(odbc_ini.name))
    drivers = {
        "server only": server_times,
        "libpq (psycopg)": libpq_times,
        "psqlODBC (pyodbc)": odbc_times,
    }
    if JDBC_JAR.is_file():
        drivers["PostgreSQL JDBC"] = jdbc_times
    samples: dict[tuple[str, str], list[float]] = {}
    rows: dict[str, int] = {}
    for _ in range(REPEATS):
        script = questions(arguments.stations, seconds)  # another VIN each round
        for driver, measure in drivers.items():
            for label, (millis, count) in measure(login, script).items():
                samples.setdefault((driver, label), []).append(millis)
                rows[label] = count
    print(f"{'question':<48} {'rows':>6}  {'driver':<18} {'median ms':>9} {'worst ms':>9}")
    for (driver, label), times in samples.items():
        print(
            f"{label:<48} {rows[label]:>6}  {driver:<18} "
            f"{statistics.median(times):>9.1f} {max(times):>9.1f}"
        )


if __name__ == "__main__":
    main()

"""The reporting role through real client drivers, as a BI tool uses it: the PostgreSQL JDBC
driver (Debian libpostgresql-jdbc-java, run by the installed Java) and psqlODBC (Debian
odbc-postgresql under unixODBC, through pyodbc). Over TCP with the role's password, it reads
every view of the contract with the contract's types, finds the traced vehicle, and is refused
on base tables, on writes to views and tables, and on creating anything anywhere.

The tests install the Debian packages they need (tests/debian.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from tests.debian import require_packages
from tests.reporting.conftest import ReportingLogin, load_contract
from tests.reporting.odbc import connection_string as odbc_connection_string
from tests.reporting.odbc import register_psqlodbc
from tests.reporting.plant import VIN, at

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

JDBC_JAR = Path("/usr/share/java/postgresql.jar")
PROBE = Path(__file__).resolve().parent / "jdbc" / "Probe.java"

# The contract's SQL types as each driver names them (JDBC type names; ODBC SQL data types of
# SQLColumns: the Unicode driver reports varchar as SQL_WVARCHAR).
JDBC_TYPES = {
    "character varying": "varchar",
    "numeric": "numeric",
    "integer": "int4",
    "bigint": "int8",
    "boolean": "bool",
    "timestamp with time zone": "timestamptz",
    "date": "date",
}
SQL_WVARCHAR, SQL_VARCHAR, SQL_NUMERIC, SQL_INTEGER, SQL_BIGINT = -9, 12, 2, 4, -5
SQL_BIT, SQL_TYPE_DATE, SQL_TYPE_TIMESTAMP = -7, 91, 93
ODBC_TYPES = {
    "character varying": {SQL_WVARCHAR, SQL_VARCHAR},
    "numeric": {SQL_NUMERIC},
    "integer": {SQL_INTEGER},
    "bigint": {SQL_BIGINT},
    "boolean": {SQL_BIT},
    "timestamp with time zone": {SQL_TYPE_TIMESTAMP},
    "date": {SQL_TYPE_DATE},
}

REFUSED = "42501"  # insufficient_privilege
READ_ONLY = "25006"  # read_only_sql_transaction
NOT_UPDATABLE = "55000"  # a view that is not updatable


def statements() -> list[tuple[str, str, tuple[str, ...]]]:
    """(label, SQL, string parameters): what every driver runs, in this order."""
    # Unqualified names: the role's search_path finds them. Names from the committed contract.
    views = [(f"view {name}", f"SELECT * FROM {name}", ()) for name in load_contract()]  # noqa: S608
    application_user = connection.settings_dict["USER"]
    return [
        ("search_path", "SHOW search_path", ()),
        ("read only by default", "SHOW transaction_read_only", ()),
        *views,
        (
            "genealogy",
            "SELECT event_kind, station, firmware_component, firmware_version, defect_code,"
            " detected_by FROM v_unit_genealogy WHERE vin = ? ORDER BY event_at",
            (VIN,),
        ),
        (
            "trace",
            "SELECT station, signal, value, firmware FROM v_vin_trace WHERE vin = ?"
            " ORDER BY ts, signal",
            (VIN,),
        ),
        ("first sample", "SELECT min(ts) FROM v_vin_trace WHERE vin = ?", (VIN,)),
        (
            "alerts",
            "SELECT station, vin, source, model_version, score, threshold, status,"
            " resolved_by, feedback FROM v_alerts ORDER BY ts",
            (),
        ),
        ("write while read only", "CREATE TABLE reporting.mine (a integer)", ()),
        # From here on the role asks for read-write transactions: privileges alone refuse it.
        ("read write", "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", ()),
        ("select mes_unit", "SELECT * FROM public.mes_unit", ()),
        ("select telemetry_sample", "SELECT * FROM public.telemetry_sample", ()),
        ("select foresight_defectalert", "SELECT * FROM public.foresight_defectalert", ()),
        ("select auth_user", "SELECT username, password FROM public.auth_user", ()),
        ("insert into a view", "INSERT INTO v_alerts (alert_id) VALUES (1)", ()),
        ("update a view", "UPDATE v_unit_genealogy SET serial = 'X'", ()),
        ("delete from a view", "DELETE FROM v_vin_trace", ()),
        ("insert into a table", "INSERT INTO public.mes_site (code, name) VALUES ('X', 'X')", ()),
        ("update a table", "UPDATE public.mes_unit SET status = 'scrapped'", ()),
        ("delete from a table", "DELETE FROM public.telemetry_sample", ()),
        ("truncate a table", "TRUNCATE public.mes_unit", ()),
        ("create table in reporting", "CREATE TABLE reporting.mine (a integer)", ()),
        ("create table in public", "CREATE TABLE public.mine (a integer)", ()),
        ("create table by search_path", "CREATE TABLE mine (a integer)", ()),
        ("create temporary table", "CREATE TEMPORARY TABLE mine (a integer)", ()),
        ("create view", "CREATE VIEW reporting.v_mine AS SELECT 1 AS one", ()),
        ("create schema", "CREATE SCHEMA mine", ()),
        ("become the application", f'SET ROLE "{application_user}"', ()),
    ]


# Every refusal after "read write", with the SQLSTATE(s) that prove it is a refusal.
REFUSALS = {
    "select mes_unit": {REFUSED},
    "select telemetry_sample": {REFUSED},
    "select foresight_defectalert": {REFUSED},
    "select auth_user": {REFUSED},
    # PostgreSQL says "not updatable" before it looks at privileges: the role has neither.
    "insert into a view": {REFUSED, NOT_UPDATABLE},
    "update a view": {REFUSED, NOT_UPDATABLE},
    "delete from a view": {REFUSED, NOT_UPDATABLE},
    "insert into a table": {REFUSED},
    "update a table": {REFUSED},
    "delete from a table": {REFUSED},
    "truncate a table": {REFUSED},
    "create table in reporting": {REFUSED},
    "create table in public": {REFUSED},
    "create table by search_path": {REFUSED},
    "create temporary table": {REFUSED},
    "create view": {REFUSED},
    "create schema": {REFUSED},
    "become the application": {REFUSED},
}


def check_answers(answers: dict[str, dict], plain) -> None:
    """What every driver must have seen; `plain` turns its values into comparable ones."""
    assert answers["search_path"]["rows"] == [["reporting"]]
    assert answers["read only by default"]["rows"] == [["on"]]
    for view in load_contract():
        answer = answers[f"view {view}"]
        assert answer["ok"], answer
    for view in ("v_unit_genealogy", "v_vin_trace", "v_alerts"):
        assert answers[f"view {view}"]["rows"], f"{view} returned no rows"
    assert [plain(row) for row in answers["genealogy"]["rows"]] == [
        ["visit", "RA", None, None, None, None],
        ["visit", "RB", None, None, None, None],
        ["firmware", "RB", "EPS", "4.2.1", None, None],
        ["quality", "RB", None, None, "steering", "inspector.ines"],
        ["registered", None, None, None, None, None],
    ]
    assert [plain(row) for row in answers["trace"]["rows"]] == [
        ["RA", "angle", Decimal("31.5"), None],
        ["RA", "torque", Decimal("43.21"), None],
        ["RA", "angle", Decimal("33"), None],
        ["RA", "torque", Decimal("47.9"), None],
        ["RB", "supply_voltage", Decimal("13.2"), "EPS=4.2.1"],
    ]
    resolved, still_open = (plain(row) for row in answers["alerts"]["rows"])
    assert resolved == [
        "RA",
        VIN,
        "model",
        "pca_t2q-RA-trace",
        Decimal("7.5"),
        Decimal("5"),
        "resolved",
        "supervisor.sam",
        "true_defect",
    ]
    assert still_open == [
        "RB",
        VIN,
        "baseline",
        None,
        Decimal("3.25"),
        Decimal("3"),
        "open",
        None,
        None,
    ]
    assert answers["write while read only"]["sqlstate"] == READ_ONLY
    assert answers["read write"]["ok"]
    refused_wrongly = {
        label: answers[label].get("sqlstate") or "accepted"
        for label, expected in REFUSALS.items()
        if answers[label].get("sqlstate") not in expected
    }
    assert not refused_wrongly


def _decimal_or_text(value):
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            return value
    return value


# -- JDBC -------------------------------------------------------------------------------------


def run_probe(login: ReportingLogin, password: str, lines: list[str]) -> list[dict]:
    url = f"jdbc:postgresql://{login.host}:{login.port}/{login.database}"
    result = subprocess.run(
        ["java", "-Duser.timezone=UTC", "-cp", str(JDBC_JAR), str(PROBE), url],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AEGIS_PROBE_USER": login.user, "AEGIS_PROBE_PASSWORD": password},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture
def jdbc_driver():
    if shutil.which("java") is None:  # `java Probe.java` compiles the probe: a JDK
        require_packages("default-jdk-headless")
    require_packages("libpostgresql-jdbc-java")
    assert JDBC_JAR.is_file()


def test_jdbc_client_reads_the_views_and_is_refused_everything_else(
    jdbc_driver, traced_plant, reporting_login
):
    script = statements()
    lines = ["\t".join([label, query, *parameters]) for label, query, parameters in script]
    connected, *results = run_probe(reporting_login, reporting_login.password, lines)
    assert connected["ok"], connected
    assert connected["driver"].startswith("PostgreSQL JDBC Driver")
    contract = load_contract()
    assert sorted(connected["views"]) == sorted(contract)  # what a BI navigator lists
    answers = {answer["label"]: answer for answer in results}
    assert [answer["label"] for answer in results] == [label for label, _, _ in script]

    for view, columns in contract.items():
        served = answers[f"view {view}"]["columns"]
        assert [column["name"] for column in served] == [name for name, _ in columns], view
        for column, (name, sql_type) in zip(served, columns, strict=True):
            base = sql_type.split("(")[0]
            assert column["type"] == JDBC_TYPES[base], f"{view}.{name}: {column}"
            if base == "character varying" and "(" in sql_type:
                assert column["precision"] == int(sql_type[len(base) + 1 : -1]), f"{view}.{name}"

    assert answers["first sample"]["rows"] == [[at(10).strftime("%Y-%m-%d %H:%M:%S+00")]]
    check_answers(answers, plain=lambda row: [_decimal_or_text(value) for value in row])


def test_jdbc_client_with_a_wrong_password_is_refused(jdbc_driver, reporting_login):
    (connected,) = run_probe(reporting_login, "not-the-password", [])
    assert connected == {
        "label": "connect",
        "ok": False,
        "sqlstate": "28P01",  # invalid_password: the server asked for it over TCP
        "message": f'FATAL: password authentication failed for user "{reporting_login.user}"',
    }


# -- ODBC -------------------------------------------------------------------------------------


@pytest.fixture
def odbc(tmp_path, monkeypatch):
    """pyodbc with psqlODBC registered in a private odbcinst.ini (tests/reporting/odbc.py)."""
    require_packages("unixodbc", "odbc-postgresql")
    pyodbc = pytest.importorskip("pyodbc")
    monkeypatch.setenv("ODBCSYSINI", "")  # restored after the test
    register_psqlodbc(tmp_path)
    return pyodbc


def connection_string(login: ReportingLogin, password: str, time_zone: str = "UTC") -> str:
    return odbc_connection_string(
        host=login.host,
        port=login.port,
        database=login.database,
        user=login.user,
        password=password,
        time_zone=time_zone,
    )


def odbc_answers(pyodbc, cursor, script) -> dict[str, dict]:
    answers = {}
    for label, query, parameters in script:
        try:
            cursor.execute(query, *parameters)
        except pyodbc.Error as error:
            answers[label] = {"ok": False, "sqlstate": error.args[0], "message": str(error)}
            continue
        rows = cursor.fetchall() if cursor.description else []
        answers[label] = {"ok": True, "rows": [list(row) for row in rows]}
    return answers


def test_odbc_client_reads_the_views_and_is_refused_everything_else(
    odbc, traced_plant, reporting_login
):
    client = odbc.connect(connection_string(reporting_login, reporting_login.password))
    client.autocommit = True  # as BI tools run: every statement on its own
    try:
        cursor = client.cursor()
        contract = load_contract()
        listed = sorted(
            row.table_name for row in cursor.tables(schema="reporting", tableType="VIEW")
        )
        assert listed == sorted(contract)
        for view, columns in contract.items():
            described = list(cursor.columns(schema="reporting", table=view))
            assert [c.column_name for c in described] == [name for name, _ in columns], view
            for column, (name, sql_type) in zip(described, columns, strict=True):
                base = sql_type.split("(")[0]
                # Never SQL_LONGVARCHAR (memo fields in Excel/Access): varchar stays varchar.
                assert column.data_type in ODBC_TYPES[base], f"{view}.{name}: {column.type_name}"
                if base == "character varying" and "(" in sql_type:
                    assert column.column_size == int(sql_type[len(base) + 1 : -1])
        answers = odbc_answers(odbc, cursor, statements())
    finally:
        client.close()

    assert answers["first sample"]["rows"] == [[at(10).replace(tzinfo=None)]]
    check_answers(answers, plain=lambda row: list(row))


def test_odbc_client_with_a_wrong_password_is_refused(odbc, reporting_login):
    with pytest.raises(odbc.Error, match="password authentication failed") as refused:
        odbc.connect(connection_string(reporting_login, "not-the-password"))
    assert refused.value.args[0] == "08001"  # psqlODBC reports every failed connect as 08001


def test_no_psqlodbc_log_is_left_behind(odbc, reporting_login):
    before = set(Path("/tmp").glob("psqlodbc_*.log"))
    odbc.connect(connection_string(reporting_login, reporting_login.password)).close()
    assert set(Path("/tmp").glob("psqlodbc_*.log")) == before


def test_timestamps_arrive_in_the_session_time_zone(odbc, traced_plant, reporting_login):
    """ODBC has no time zone in its timestamps: the connection string pins the session's."""
    login = connection_string(reporting_login, reporting_login.password, "America/Detroit")
    client = odbc.connect(login)
    try:
        cursor = client.cursor().execute("SELECT min(ts) FROM v_vin_trace WHERE vin = ?", VIN)
        first = cursor.fetchone()[0]
    finally:
        client.close()
    assert first == dt.datetime(2025, 3, 10, 5, 0, 10)  # 09:00:10 UTC, EDT since 9 March

"""`manage.py reporting_role`: a login that reads the reporting views and nothing else, set up
idempotently by the application's database user (a superuser here, a plain owner with
CREATEROLE in a plant), with a clear refusal when that user lacks what it needs."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from psycopg import sql

from reporting.install import install_views
from reporting.management.commands.reporting_role import (
    ReportingRoleRefused,
    reporting_role_apply,
)

PASSWORD = "a-long-enough-reporting-password"
BASE_TABLES = ["mes_unit", "mes_workorder", "telemetry_sample", "foresight_defectalert"]


def run_command(monkeypatch, password: str = PASSWORD, *arguments: str) -> str:
    monkeypatch.setenv("AEGIS_REPORTING_PASSWORD", password)
    output = io.StringIO()
    call_command("reporting_role", *arguments, stdout=output, stderr=output)
    return output.getvalue()


def value(query: str, params=()) -> object:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()[0]


def role_settings(role: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT unnest(s.setconfig) FROM pg_db_role_setting AS s
            JOIN pg_roles AS r ON r.oid = s.setrole WHERE r.rolname = %s
            """,
            [role],
        )
        return {setting for (setting,) in cursor.fetchall()}


# -- refusals before anything changes --------------------------------------------------------


def test_without_a_password_in_the_environment_it_says_where_it_comes_from(monkeypatch):
    monkeypatch.delenv("AEGIS_REPORTING_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="AEGIS_REPORTING_PASSWORD is not set"):
        call_command("reporting_role")


@pytest.mark.django_db
def test_a_short_password_is_refused(monkeypatch, reporting_role_name):
    with pytest.raises(CommandError, match="too short: at least 12 characters"):
        run_command(monkeypatch, "short")
    assert value("SELECT count(*) FROM pg_roles WHERE rolname = %s", [reporting_role_name]) == 0


@pytest.mark.django_db
def test_the_applications_own_user_is_never_made_the_reporting_role(monkeypatch, settings):
    settings.AEGIS_REPORTING_ROLE = connection.settings_dict["USER"]
    with pytest.raises(CommandError, match="must not be the application's own database user"):
        run_command(monkeypatch)
    assert value("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["Reporting", "pg_reporting", "bi-user", "1bi", ""])
def test_role_names_clients_would_have_to_quote_are_refused(monkeypatch, settings, name):
    settings.AEGIS_REPORTING_ROLE = name
    with pytest.raises(CommandError, match="reporting role name"):
        run_command(monkeypatch)


# -- what the role is -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_role_logs_in_inherits_nothing_and_may_create_nothing(monkeypatch, reporting_role_name):
    output = run_command(monkeypatch, PASSWORD, "--connection-limit", "4")
    assert "created: LOGIN NOINHERIT" in output
    assert PASSWORD not in output
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT rolcanlogin, rolinherit, rolsuper, rolcreatedb, rolcreaterole,
                   rolreplication, rolbypassrls, rolconnlimit
            FROM pg_roles WHERE rolname = %s
            """,
            [reporting_role_name],
        )
        assert cursor.fetchone() == (True, False, False, False, False, False, False, 4)
        # Stored as a salted SCRAM verifier: the password itself never reached the server.
        cursor.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [reporting_role_name]
        )
        stored = cursor.fetchone()[0]
    assert stored.startswith("SCRAM-SHA-256$4096:")
    assert PASSWORD not in stored
    assert role_settings(reporting_role_name) == {
        "search_path=reporting",
        "default_transaction_read_only=on",
        "idle_in_transaction_session_timeout=15min",
        "statement_timeout=300s",
    }


@pytest.mark.django_db
def test_it_may_read_every_view_and_no_base_table(monkeypatch, reporting_role_name):
    run_command(monkeypatch)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, has_table_privilege(%(role)s, c.oid, 'SELECT'),
                   has_table_privilege(%(role)s, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
            FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE n.nspname = 'reporting' AND c.relkind = 'v'
            """,
            {"role": reporting_role_name},
        )
        views = cursor.fetchall()
        cursor.execute(
            """
            SELECT count(*) FILTER (WHERE has_table_privilege(%(role)s, c.oid,
                       'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')),
                   count(*)
            FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
            """,
            {"role": reporting_role_name},
        )
        open_tables, tables = cursor.fetchone()
        cursor.execute(
            """
            SELECT has_schema_privilege(%(role)s, 'public', 'CREATE'),
                   has_schema_privilege(%(role)s, 'reporting', 'CREATE'),
                   has_database_privilege(%(role)s, current_database(), 'CREATE'),
                   has_database_privilege(%(role)s, current_database(), 'TEMPORARY'),
                   has_database_privilege(%(role)s, current_database(), 'CONNECT')
            """,
            {"role": reporting_role_name},
        )
        assert cursor.fetchone() == (False, False, False, False, True)
    assert {"v_unit_genealogy", "v_vin_trace", "v_alerts"} <= {name for name, _, _ in views}
    assert all(readable and not writable for _, readable, writable in views)
    assert tables > 30  # the MES, telemetry, Foresight and Django tables
    assert open_tables == 0


@pytest.mark.django_db
def test_running_it_again_changes_the_password_and_nothing_else(monkeypatch, reporting_role_name):
    run_command(monkeypatch, PASSWORD, "--statement-timeout", "60")
    first = value("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [reporting_role_name])
    output = run_command(monkeypatch, "another-long-password", "--statement-timeout", "0")
    assert "updated: LOGIN NOINHERIT" in output
    assert "revoked from PUBLIC" not in output  # done the first time
    assert value("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [reporting_role_name]) != (
        first
    )
    assert value("SELECT count(*) FROM pg_roles WHERE rolname = %s", [reporting_role_name]) == 1
    assert not any(s.startswith("statement_timeout") for s in role_settings(reporting_role_name))


@pytest.mark.django_db
def test_a_role_with_more_rights_is_brought_back_to_reading_views(monkeypatch, reporting_role_name):
    role = sql.Identifier(reporting_role_name)
    writers = sql.Identifier(f"{reporting_role_name}_writers")
    with connection.cursor() as cursor:
        pg = cursor.connection
        for statement in [
            sql.SQL("CREATE ROLE {} LOGIN INHERIT CREATEDB").format(role),
            sql.SQL("CREATE ROLE {}").format(writers),
            sql.SQL("GRANT INSERT ON mes_unit TO {}").format(writers),
            sql.SQL("GRANT {} TO {}").format(writers, role),
            sql.SQL("GRANT SELECT ON mes_workorder TO {}").format(role),
            sql.SQL("GRANT UPDATE (status) ON mes_unit TO {}").format(role),
            sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role),
            sql.SQL("GRANT SELECT ON telemetry_sample TO PUBLIC"),
            sql.SQL("GRANT CREATE ON SCHEMA public TO PUBLIC"),
        ]:
            cursor.execute(statement.as_string(pg))
    output = run_command(monkeypatch)
    assert "updated" in output
    assert f"no longer a member of role {reporting_role_name}_writers" in output
    assert "revoked from PUBLIC: CREATE on schema public" in output
    assert "revoked from PUBLIC: privileges on telemetry_sample" in output
    for table in BASE_TABLES:
        assert not value(
            "SELECT has_table_privilege(%s, %s, 'SELECT, INSERT, UPDATE')",
            [reporting_role_name, table],
        ), table
    assert not value(
        "SELECT has_any_column_privilege(%s, 'mes_unit', 'UPDATE')", [reporting_role_name]
    )
    assert not value("SELECT has_schema_privilege(%s, 'public', 'CREATE')", [reporting_role_name])
    assert (
        value(
            "SELECT rolinherit OR rolcreatedb FROM pg_roles WHERE rolname = %s",
            [reporting_role_name],
        )
        is False
    )
    assert (
        value(
            "SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole", [reporting_role_name]
        )
        == 0
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("attributes", "owns_a_table", "refusal"),
    [
        ("SUPERUSER", False, "is a superuser, replication or BYPASSRLS role"),
        ("NOSUPERUSER", True, r"is an owner \(1 databases, schemas, tables or functions\)"),
    ],
)
def test_a_role_that_is_more_than_a_login_is_never_taken_over(
    monkeypatch, reporting_role_name, attributes, owns_a_table, refusal
):
    role = sql.Identifier(reporting_role_name)
    with connection.cursor() as cursor:
        pg = cursor.connection
        cursor.execute(sql.SQL("CREATE ROLE {} {}").format(role, sql.SQL(attributes)).as_string(pg))
        if owns_a_table:
            cursor.execute("CREATE TABLE scratch_reporting_owner (a integer)")
            cursor.execute(
                sql.SQL("ALTER TABLE scratch_reporting_owner OWNER TO {}")
                .format(role)
                .as_string(pg)
            )
    with pytest.raises(CommandError, match=refusal):
        run_command(monkeypatch)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = %s", [reporting_role_name]
        )
        assert cursor.fetchone() == (attributes == "SUPERUSER", False)  # as it was


@pytest.mark.django_db
def test_rebuilt_views_are_granted_to_it_again(monkeypatch, reporting_role_name):
    run_command(monkeypatch)
    install_views()  # what every `migrate` does: drop the schema, create the views again
    assert value(
        "SELECT has_table_privilege(%s, 'reporting.v_vin_trace', 'SELECT')", [reporting_role_name]
    )


# -- as a plant's database user that is no superuser ------------------------------------------


def _server_login(**overrides: str) -> str:
    settings_dict = connection.settings_dict
    parameters = {
        "host": settings_dict["HOST"],
        "port": str(settings_dict["PORT"]),
        "user": settings_dict["USER"],
        "password": settings_dict["PASSWORD"],
        "dbname": "postgres",
        "connect_timeout": "10",
    }
    parameters.update(overrides)
    return psycopg.conninfo.make_conninfo(**parameters)


@contextmanager
def plant_database(*, createrole: bool) -> Iterator[tuple[str, str, str]]:
    """A database owned by a plain (non-superuser) application user, migrated by that user:
    one MES table and a reporting view over it. Yields (database, user, password)."""
    suffix = secrets.token_hex(4)
    database, user, password = f"plant_{suffix}", f"aegis_app_{suffix}", secrets.token_urlsafe(16)
    reporting_role = f"aegis_reporting_{suffix}"
    with psycopg.connect(_server_login(), autocommit=True) as server:
        server.execute(
            sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                sql.Identifier(user),
                sql.SQL("CREATEROLE" if createrole else "NOCREATEROLE"),
                sql.Literal(password),
            )
        )
        server.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(user)
            )
        )
    try:
        with psycopg.connect(
            _server_login(user=user, password=password, dbname=database), autocommit=True
        ) as application:
            application.execute("CREATE TABLE mes_unit (id bigint PRIMARY KEY, vin varchar(17))")
            application.execute("INSERT INTO mes_unit VALUES (1, '1HGBH41JXMN109186')")
            application.execute("CREATE SCHEMA reporting")
            application.execute("CREATE VIEW reporting.v_units AS SELECT id, vin FROM mes_unit")
        yield database, user, password, reporting_role
    finally:
        with psycopg.connect(_server_login(), autocommit=True) as server:
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
            for role in (reporting_role, user):
                server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_a_plain_database_owner_with_createrole_sets_it_up():
    with plant_database(createrole=True) as (database, user, password, reporting_role):
        with psycopg.connect(_server_login(user=user, password=password, dbname=database)) as pg:
            report = reporting_role_apply(pg=pg, role=reporting_role, password=PASSWORD)
            pg.commit()
        assert report.created
        assert report.views == ["v_units"]
        assert report.revoked_from_public == [f"TEMPORARY on database {database}"]
        # Over TCP with the password (the server's pg_hba asks for scram-sha-256).
        login = _server_login(user=reporting_role, password=PASSWORD, dbname=database)
        with psycopg.connect(login, autocommit=True) as client:
            assert client.execute("SELECT vin FROM v_units").fetchall() == [("1HGBH41JXMN109186",)]
            client.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                client.execute("SELECT * FROM public.mes_unit")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                client.execute("CREATE TEMPORARY TABLE scratch (a integer)")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(_server_login(user=reporting_role, password="wrong", dbname=database))
        # The owner still may use temporary tables (telemetry ingest's idempotent path does).
        with psycopg.connect(
            _server_login(user=user, password=password, dbname=database), autocommit=True
        ) as application:
            application.execute("CREATE TEMPORARY TABLE batch (a integer)")


def test_a_database_user_without_createrole_is_told_what_it_needs():
    with plant_database(createrole=False) as (database, user, password, reporting_role):
        login = _server_login(user=user, password=password, dbname=database)
        with psycopg.connect(login) as pg:
            needs = rf"needs CREATEROLE \(ALTER ROLE {user} CREATEROLE\)"
            with pytest.raises(ReportingRoleRefused, match=needs):
                reporting_role_apply(pg=pg, role=reporting_role, password=PASSWORD)
            pg.rollback()
            roles = pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", [reporting_role])
            assert roles.fetchone()[0] == 0


def test_a_user_that_does_not_own_the_database_is_told_so():
    with plant_database(createrole=True) as (database, user, password, reporting_role):
        with psycopg.connect(_server_login(), autocommit=True) as server:
            server.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(database), sql.Identifier(connection.settings_dict["USER"])
                )
            )
        login = _server_login(user=user, password=password, dbname=database)
        with (
            psycopg.connect(login) as pg,
            pytest.raises(ReportingRoleRefused, match=f"ownership of database {database}"),
        ):
            reporting_role_apply(pg=pg, role=reporting_role, password=PASSWORD)

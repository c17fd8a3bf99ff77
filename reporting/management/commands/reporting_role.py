"""`manage.py reporting_role`: the read-only PostgreSQL login of ODBC/JDBC reporting clients.

The role may SELECT the views of the schema `reporting` and nothing else. PostgreSQL gives every
role what the pseudo-role PUBLIC has, and PUBLIC cannot be subtracted from one role, so "nothing
else" is enforced in three ways: the role's own attributes (NOINHERIT, no superuser or create
rights, read-only transactions by default), revoking from PUBLIC the few things that would let
it write (TEMPORARY on the database, CREATE on a schema, any grant to PUBLIC on a table), and a
final check of the role's effective privileges that fails the whole command (one transaction)
if anything outside `reporting` is still open to it.

The logic lives here because the command is its only caller; `reporting/install.py` re-grants
the views after every rebuild of the schema.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from psycopg import sql

from reporting.install import SCHEMA

PASSWORD_VARIABLE = "AEGIS_REPORTING_PASSWORD"  # noqa: S105 - the variable's name
MIN_PASSWORD_LENGTH = 12
# Plain lower-case names: clients type them in connection strings, where quoting is unusual.
ROLE_NAME = re.compile(r"^(?!pg_)[a-z_][a-z0-9_]{0,62}$")
# A BI client that opens a transaction and walks away would hold back vacuum on the telemetry
# table for as long as it stays open.
IDLE_IN_TRANSACTION_TIMEOUT = "15min"

# Relations outside `reporting` and whether `who` (a role, or 'public') can touch them. Objects
# that belong to an extension (e.g. TimescaleDB's catalog, which it opens to PUBLIC itself) are
# the extension's business, not Aegis data.
_OPEN_RELATIONS = """
    SELECT c.oid::regclass::text, c.relkind,
           CASE WHEN c.relkind = 'S'
                THEN has_sequence_privilege(%(who)s, c.oid, 'USAGE, SELECT, UPDATE')
                ELSE has_table_privilege(%(who)s, c.oid,
                         'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                     OR has_any_column_privilege(%(who)s, c.oid,
                         'SELECT, INSERT, UPDATE, REFERENCES')
           END
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND n.nspname <> %(schema)s
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
      AND NOT EXISTS (
          SELECT 1 FROM pg_depend AS d
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
      )
    ORDER BY 1
"""


class ReportingRoleRefused(Exception):
    """The database user cannot set the role up as promised; the message says what is needed."""


@dataclass
class ReportingRoleReport:
    role: str
    database: str
    created: bool = False
    views: list[str] = field(default_factory=list)
    relations_checked: int = 0
    revoked_from_public: list[str] = field(default_factory=list)


def _rows(pg: psycopg.Connection, query, params=None) -> list[tuple]:
    with pg.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def _run(pg: psycopg.Connection, query, params=None) -> None:
    with pg.cursor() as cursor:
        cursor.execute(query, params)


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _check_operator(pg: psycopg.Connection, role: str) -> tuple[str, str]:
    """What the application's database user must hold, checked before anything changes."""
    (user, database, superuser, createrole, database_grant, schema_exists) = _rows(
        pg,
        """
        SELECT current_user, current_database(), r.rolsuper, r.rolcreaterole,
               has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION'),
               EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)
        FROM pg_roles AS r WHERE r.rolname = current_user
        """,
        [SCHEMA],
    )[0]
    if role == user:
        raise ReportingRoleRefused(
            f"the reporting role must not be the application's own database user {user!r}: "
            "set AEGIS_REPORTING_ROLE to another name"
        )
    missing = []
    if not (superuser or createrole):
        missing.append(f"CREATEROLE (ALTER ROLE {user} CREATEROLE)")
    if not database_grant:
        missing.append(
            f"ownership of database {database} (ALTER DATABASE {database} OWNER TO {user})"
        )
    if not schema_exists:
        raise ReportingRoleRefused(
            f"schema {SCHEMA!r} does not exist in database {database}: run `manage.py migrate` "
            "first (it builds the reporting views)"
        )
    if missing:
        raise ReportingRoleRefused(
            f"database user {user} cannot set up the reporting role; it needs "
            + " and ".join(missing)
            + ". A DBA can grant that, or run this command as the database owner."
        )
    return user, database


def _role_attributes(pg: psycopg.Connection, role: str) -> dict | None:
    found = _rows(
        pg,
        """
        SELECT rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
               rolbypassrls, rolconnlimit
        FROM pg_roles WHERE rolname = %s
        """,
        [role],
    )
    if not found:
        return None
    names = [
        "superuser",
        "inherit",
        "createrole",
        "createdb",
        "login",
        "replication",
        "bypassrls",
        "connection_limit",
    ]
    return dict(zip(names, found[0], strict=True))


def _login(pg: psycopg.Connection, role: str, password: str, connection_limit: int) -> bool:
    """Create or correct the role; True when it was created."""
    # Only the SCRAM verifier crosses the wire: the password itself never reaches server logs.
    verifier = pg.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    current = _role_attributes(pg, role)
    if current is None:
        options = sql.SQL("LOGIN NOINHERIT CONNECTION LIMIT {} PASSWORD {}").format(
            sql.Literal(connection_limit), sql.Literal(verifier.decode())
        )
        _run(pg, sql.SQL("CREATE ROLE {} ").format(_ident(role)) + options)
        return True
    # A role of that name that is more than a login is someone else's: never demote it.
    owned = _rows(
        pg,
        """
        SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
             + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
             + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
             + (SELECT count(*) FROM pg_database WHERE datdba = r.oid)
        FROM pg_roles AS r WHERE r.rolname = %s
        """,
        [role],
    )[0][0]
    if current["superuser"] or current["replication"] or current["bypassrls"] or owned:
        what = "a superuser, replication or BYPASSRLS role" if not owned else "an owner"
        raise ReportingRoleRefused(
            f"role {role} exists and is {what}"
            + (f" ({owned} databases, schemas, tables or functions)" if owned else "")
            + ", not a reporting login: set AEGIS_REPORTING_ROLE to another name"
        )
    # Name only what differs: PostgreSQL 16 lets a CREATEROLE user change only the attributes
    # it holds itself, so restating NOCREATEDB would be refused for no reason.
    wanted = {
        "createdb": (False, "NOCREATEDB"),
        "createrole": (False, "NOCREATEROLE"),
        "inherit": (False, "NOINHERIT"),
        "login": (True, "LOGIN"),
    }
    options = [keyword for name, (value, keyword) in wanted.items() if current[name] != value]
    statement = sql.SQL("ALTER ROLE {} ").format(_ident(role)) + sql.SQL(" ").join(
        [sql.SQL(option) for option in options]
        + [
            sql.SQL("CONNECTION LIMIT {} PASSWORD {}").format(
                sql.Literal(connection_limit), sql.Literal(verifier.decode())
            )
        ]
    )
    _run(pg, statement)
    return False


def _session_defaults(pg: psycopg.Connection, role: str, statement_timeout_s: int) -> str:
    settings_ = [
        ("search_path", SCHEMA),
        # A second lock: even a view that someone made writable refuses writes by default.
        ("default_transaction_read_only", "on"),
        ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_TIMEOUT),
    ]
    if statement_timeout_s:
        settings_.append(("statement_timeout", f"{statement_timeout_s}s"))
    else:
        _run(pg, sql.SQL("ALTER ROLE {} RESET statement_timeout").format(_ident(role)))
    for name, value in settings_:
        _run(
            pg,
            sql.SQL("ALTER ROLE {} SET {} = {}").format(
                _ident(role), sql.SQL(name), sql.Literal(value)
            ),
        )
    return ", ".join(f"{name}={value}" for name, value in settings_)


def _drop_memberships(pg: psycopg.Connection, role: str) -> list[str]:
    """NOINHERIT still allows SET ROLE to a role one is a member of: be a member of none."""
    granted = [
        name
        for (name,) in _rows(
            pg,
            """
            SELECT g.rolname FROM pg_auth_members AS m
            JOIN pg_roles AS g ON g.oid = m.roleid
            JOIN pg_roles AS r ON r.oid = m.member
            WHERE r.rolname = %s
            """,
            [role],
        )
    ]
    for name in granted:
        _run(pg, sql.SQL("REVOKE {} FROM {}").format(_ident(name), _ident(role)))
    return granted


def _close_database(
    pg: psycopg.Connection, role: str, database: str, report: ReportingRoleReport
) -> None:
    _run(
        pg,
        sql.SQL("REVOKE CREATE, TEMPORARY ON DATABASE {} FROM {}").format(
            _ident(database), _ident(role)
        ),
    )
    _run(pg, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(_ident(database), _ident(role)))
    public_temporary = _rows(
        pg, "SELECT has_database_privilege('public', current_database(), 'TEMPORARY')"
    )[0][0]
    if public_temporary:
        # PostgreSQL's default: every role may create temporary tables. The owner and
        # superusers keep the right; other roles relying on PUBLIC lose it.
        _run(pg, sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(_ident(database)))
        report.revoked_from_public.append(f"TEMPORARY on database {database}")


def _close_schemas(pg: psycopg.Connection, role: str, report: ReportingRoleReport) -> None:
    schemas = _rows(
        pg,
        """
        SELECT n.nspname, has_schema_privilege('public', n.oid, 'CREATE')
        FROM pg_namespace AS n
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
        """,
    )
    for schema, public_create in schemas:
        if schema != SCHEMA:
            _run(
                pg, sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(_ident(schema), _ident(role))
            )
        if public_create:
            # PostgreSQL 14 and older let PUBLIC create tables in schema public.
            _run(pg, sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(_ident(schema)))
            report.revoked_from_public.append(f"CREATE on schema {schema}")
    _run(pg, sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(_ident(SCHEMA), _ident(role)))


def _open_relations(pg: psycopg.Connection, who: str) -> list[tuple[str, str, bool]]:
    return _rows(pg, _OPEN_RELATIONS, {"who": who, "schema": SCHEMA})


def _close_relations(pg: psycopg.Connection, role: str, report: ReportingRoleReport) -> None:
    relations = _open_relations(pg, role)
    report.relations_checked = len(relations)
    open_to_public = {name for name, _, is_open in _open_relations(pg, "public") if is_open}
    for name, kind, is_open in relations:
        if not is_open:
            continue
        target = sql.SQL("SEQUENCE" if kind == "S" else "TABLE")
        relation = sql.SQL(name)  # regclass text: already quoted and schema-qualified as needed
        _run(pg, sql.SQL("REVOKE ALL ON {} {} FROM {}").format(target, relation, _ident(role)))
        if name in open_to_public:
            _run(pg, sql.SQL("REVOKE ALL ON {} {} FROM PUBLIC").format(target, relation))
            report.revoked_from_public.append(f"privileges on {name}")


def _grant_views(pg: psycopg.Connection, role: str) -> None:
    schema, grantee = _ident(SCHEMA), _ident(role)
    _run(pg, sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, grantee))
    _run(
        pg,
        sql.SQL(
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER "
            "ON ALL TABLES IN SCHEMA {} FROM {}"
        ).format(schema, grantee),
    )
    _run(pg, sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, grantee))


def _verify(pg: psycopg.Connection, role: str, report: ReportingRoleReport) -> None:
    """The role's effective privileges, as PostgreSQL itself evaluates them."""
    problems = []
    views = _rows(
        pg,
        """
        SELECT c.relname, has_table_privilege(%(role)s, c.oid, 'SELECT'),
               pg_get_userbyid(c.relowner)
        FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('v', 'm', 'r', 'p', 'f')
        ORDER BY c.relname
        """,
        {"role": role, "schema": SCHEMA},
    )
    report.views = [name for name, _, _ in views]
    problems += [
        f"no SELECT on {SCHEMA}.{name}: grant it as its owner {owner}"
        for name, readable, owner in views
        if not readable
    ]
    still_open = [name for name, _, is_open in _open_relations(pg, role) if is_open]
    problems += [
        f"{name} is still open to it (granted by another user?)" for name in still_open[:10]
    ]
    if len(still_open) > 10:
        problems.append(f"… and {len(still_open) - 10} more relations")
    writable_schemas = _rows(
        pg,
        """
        SELECT n.nspname FROM pg_namespace AS n
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
          AND has_schema_privilege(%s, n.oid, 'CREATE')
        """,
        [role],
    )
    problems += [f"it may CREATE in schema {name}" for (name,) in writable_schemas]
    create, temporary = _rows(
        pg,
        """
        SELECT has_database_privilege(%(role)s, current_database(), 'CREATE'),
               has_database_privilege(%(role)s, current_database(), 'TEMPORARY')
        """,
        {"role": role},
    )[0]
    if create:
        problems.append(f"it may CREATE schemas in database {report.database}")
    if temporary:
        problems.append(
            f"it may create temporary tables in database {report.database}: PUBLIC still holds "
            f"TEMPORARY (REVOKE TEMPORARY ON DATABASE {report.database} FROM PUBLIC as its owner)"
        )
    definers = _rows(
        pg,
        """
        SELECT p.oid::regprocedure::text FROM pg_proc AS p
        JOIN pg_namespace AS n ON n.oid = p.pronamespace
        WHERE p.prosecdef AND n.nspname <> %(schema)s
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
          AND has_function_privilege(%(role)s, p.oid, 'EXECUTE')
          AND NOT EXISTS (
              SELECT 1 FROM pg_depend AS d
              WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          )
        """,
        {"role": role, "schema": SCHEMA},
    )
    problems += [
        f"it may call the SECURITY DEFINER function {name} (it runs with its owner's rights)"
        for (name,) in definers
    ]
    attributes = _role_attributes(pg, role)
    for name in ("superuser", "inherit", "createrole", "createdb", "replication", "bypassrls"):
        if attributes[name]:
            problems.append(f"it still has {name.upper()}")
    if problems:
        raise ReportingRoleRefused(
            f"role {role} would not be read-only on the reporting views; nothing was changed:\n  "
            + "\n  ".join(problems)
        )


def reporting_role_apply(
    *,
    pg: psycopg.Connection,
    role: str,
    password: str,
    connection_limit: int = 10,
    statement_timeout_s: int = 300,
    say: Callable[[str], None] = lambda message: None,
) -> ReportingRoleReport:
    """Create or update the reporting login so it reads the reporting views and nothing else.

    Runs in the caller's transaction on `pg` (the application's connection): any refusal
    leaves the database as it was.
    """
    if not ROLE_NAME.match(role):
        raise ReportingRoleRefused(
            f"reporting role name {role!r}: 1-63 lower-case letters, digits or '_', not "
            "starting with a digit or 'pg_'"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ReportingRoleRefused(
            f"{PASSWORD_VARIABLE} is too short: at least {MIN_PASSWORD_LENGTH} characters"
        )
    try:
        user, database = _check_operator(pg, role)
        report = ReportingRoleReport(role=role, database=database)
        say(f"reporting role {role} in database {database}, set up as database user {user}")
        report.created = _login(pg, role, password, connection_limit)
        say(
            f"  {'created' if report.created else 'updated'}: LOGIN NOINHERIT NOSUPERUSER "
            f"NOCREATEDB NOCREATEROLE, connection limit {connection_limit}"
        )
        say(f"  password: from {PASSWORD_VARIABLE}, stored as a SCRAM-SHA-256 verifier")
        say(f"  defaults: {_session_defaults(pg, role, statement_timeout_s)}")
        for name in _drop_memberships(pg, role):
            say(f"  no longer a member of role {name}")
        _close_database(pg, role, database, report)
        _close_schemas(pg, role, report)
        _close_relations(pg, role, report)
        for what in report.revoked_from_public:
            say(f"  revoked from PUBLIC: {what}")
        _grant_views(pg, role)
        _verify(pg, role, report)
    except psycopg.errors.InsufficientPrivilege as error:
        raise ReportingRoleRefused(
            f"the database refused a step: {error.diag.message_primary}"
            + (f" ({error.diag.message_detail})" if error.diag.message_detail else "")
            + ". The application's database user needs CREATEROLE, ownership of the database"
            " and of the reporting views (see docs/reporting.md)."
        ) from None
    say(f"  CONNECT on database {database}; USAGE on schema {SCHEMA}")
    say(f"  SELECT on {len(report.views)} views: {', '.join(report.views) or '(none yet)'}")
    say(
        f"  checked: {report.relations_checked} tables, views and sequences outside "
        f"{SCHEMA} refuse it; it can create no table, schema or temporary table"
    )
    return report


class Command(BaseCommand):
    help = (
        "Create or update the read-only PostgreSQL login of ODBC/JDBC reporting clients "
        "(name: AEGIS_REPORTING_ROLE, default aegis_reporting; password: the environment "
        f"variable {PASSWORD_VARIABLE}, never printed). The role logs in with a password, "
        "inherits nothing, has no create rights, defaults to search_path=reporting and "
        "read-only transactions, and reads the views of schema 'reporting' and nothing "
        "else: the command revokes from PUBLIC what would let it create temporary tables or "
        "tables, then checks the role's effective privileges and changes nothing if any table "
        "outside 'reporting' is still open to it. Idempotent: run it again to change the "
        "password or limits. Runs as the application's database user, which needs CREATEROLE "
        "and ownership of the database and of the reporting views (docs/reporting.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--connection-limit",
            type=int,
            default=10,
            help="concurrent connections the role may hold (default 10)",
        )
        parser.add_argument(
            "--statement-timeout",
            type=int,
            default=300,
            metavar="SECONDS",
            help="longest query of the role before PostgreSQL cancels it (default 300; 0: none)",
        )
        parser.add_argument(
            "--database", default=DEFAULT_DB_ALIAS, help="Django database alias (default: default)"
        )

    def handle(
        self,
        *args,
        connection_limit: int,
        statement_timeout: int,
        database: str,
        **options,
    ):
        password = os.environ.get(PASSWORD_VARIABLE, "")
        if not password.strip():
            raise CommandError(
                f"{PASSWORD_VARIABLE} is not set: export the reporting role's password in it "
                "(clients log in with it; it is never printed or stored in plain text)"
            )
        if connection_limit < 1:
            raise CommandError("--connection-limit must be at least 1")
        if statement_timeout < 0:
            raise CommandError("--statement-timeout must be 0 (none) or more seconds")
        connection = connections[database]
        try:
            with transaction.atomic(using=database):
                connection.ensure_connection()
                report = reporting_role_apply(
                    pg=connection.connection,
                    role=settings.AEGIS_REPORTING_ROLE,
                    password=password,
                    connection_limit=connection_limit,
                    statement_timeout_s=statement_timeout,
                    say=self.stdout.write,
                )
        except ReportingRoleRefused as refusal:
            raise CommandError(str(refusal)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"done: {report.role} reads the {len(report.views)} reporting views and "
                "nothing else"
            )
        )

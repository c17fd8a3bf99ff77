"""The reporting contract: SQL views in the schema `reporting`, rebuilt from `reporting/sql/`.

Views are derived objects, so they are not migrated one change at a time: after every
`migrate` the schema is dropped and every file of `reporting/sql/` is run again in name order
(like a repeatable migration). The tables underneath are the apps' own and migrated as usual;
a view that no longer matches them fails the `migrate` that broke it, loudly.

Dropping the schema drops the grants on it too, so the reporting role (when it exists, see
`manage.py reporting_role`) is granted its read access again at the end.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import connections, transaction

SCHEMA = "reporting"
SQL_DIR = Path(__file__).resolve().parent / "sql"


def sql_files() -> list[Path]:
    return sorted(SQL_DIR.glob("*.sql"))


def reporting_role_name() -> str:
    return settings.AEGIS_REPORTING_ROLE


def install_views(using: str = "default") -> list[str]:
    """Rebuild the reporting schema; returns the names of the files run."""
    connection = connections[using]
    ran = []
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        cursor.execute(f"CREATE SCHEMA {SCHEMA}")
        for path in sql_files():
            cursor.execute(path.read_text(encoding="utf-8"))
            ran.append(path.name)
        grant_reporting_role(cursor)
    return ran


def grant_reporting_role(cursor) -> None:
    """USAGE on the schema and SELECT on its views, for the reporting role if it exists."""
    role = reporting_role_name()
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    if cursor.fetchone() is None:
        return
    quoted = connections["default"].ops.quote_name(role)
    cursor.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {quoted}")
    cursor.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {quoted}")


def install_after_migrate(*, using: str = "default", **kwargs) -> None:
    install_views(using)

"""Fixtures of the reporting tests: the contract, the traced plant, and a real reporting login."""

from __future__ import annotations

import io
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from psycopg import sql

from tests.reporting.plant import TracedPlant, build_traced_plant

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "docs" / "reporting-contract.json"
DOCS = REPO / "docs" / "reporting.md"


def load_contract() -> dict[str, list[tuple[str, str]]]:
    views = json.loads(CONTRACT.read_text(encoding="utf-8"))["views"]
    return {view: [tuple(column) for column in columns] for view, columns in views.items()}


@dataclass(frozen=True)
class ReportingLogin:
    """Where and as whom an ODBC/JDBC client connects: over TCP, with a password."""

    host: str
    port: int
    database: str
    user: str
    password: str


@pytest.fixture
def reporting_role_name(settings) -> str:
    """A role of this test alone: roles are shared by the whole PostgreSQL server."""
    settings.AEGIS_REPORTING_ROLE = f"aegis_reporting_{secrets.token_hex(4)}"
    return settings.AEGIS_REPORTING_ROLE


def drop_role(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
        if cursor.fetchone() is None:
            return
        role = sql.Identifier(name).as_string(cursor.connection)
        # Its grants on this database and on the database object go first.
        cursor.execute(f"DROP OWNED BY {role}")
        cursor.execute(f"DROP ROLE {role}")


@pytest.fixture
def reporting_login(reporting_role_name, monkeypatch) -> ReportingLogin:
    """The reporting role created by `manage.py reporting_role`, committed so that other
    processes (the JDBC probe) see it; dropped afterwards. Needs a transactional test."""
    password = secrets.token_urlsafe(18)
    monkeypatch.setenv("AEGIS_REPORTING_PASSWORD", password)
    call_command("reporting_role", stdout=io.StringIO())
    database = connection.settings_dict
    try:
        yield ReportingLogin(
            host=database["HOST"],
            port=int(database["PORT"]),
            database=database["NAME"],
            user=reporting_role_name,
            password=password,
        )
    finally:
        drop_role(reporting_role_name)


@pytest.fixture
def traced_plant() -> TracedPlant:
    return build_traced_plant()

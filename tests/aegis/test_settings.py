"""Settings fail fast, naming the variable, and production passes `check --deploy`."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from aegis.settings import environment as env
from tests.support import REPO, environment_without_aegis

PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "aegis.settings.production",
    "AEGIS_SECRET_KEY": secrets.token_urlsafe(50),
    "AEGIS_ALLOWED_HOSTS": "aegis.plant.example",
    "AEGIS_DATABASE_URL": "postgresql://aegis:pw@db.plant.example:5432/aegis",
    "AEGIS_NATS_URL": "nats://aegis:pw@nats.plant.example:4222",
    "AEGIS_REDIS_URL": "redis://:pw@redis.plant.example:6379/0",
}


def _django_setup(**variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('configured')"],
        cwd=REPO,
        env=environment_without_aegis(**variables),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_load_with_every_variable_given():
    result = _django_setup(**PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configured"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AEGIS_DATABASE_URL", "not a url", "AEGIS_DATABASE_URL: malformed URL: scheme"),
        ("AEGIS_DATABASE_URL", "mysql://db/aegis", "AEGIS_DATABASE_URL: malformed URL: scheme"),
        ("AEGIS_DATABASE_URL", "postgresql://db:99999/aegis", "AEGIS_DATABASE_URL: malformed URL"),
        ("AEGIS_DATABASE_URL", "postgresql://db:5432/", "AEGIS_DATABASE_URL: malformed URL: no"),
        ("AEGIS_NATS_URL", "http://nats:4222", "AEGIS_NATS_URL: malformed URL: scheme"),
        ("AEGIS_REDIS_URL", "redis://:pw@/0", "AEGIS_REDIS_URL: malformed URL: no host"),
        ("AEGIS_DEBUG", "maybe", "AEGIS_DEBUG: expected true/false"),
        ("AEGIS_DB_CONN_MAX_AGE", "forever", "AEGIS_DB_CONN_MAX_AGE: expected a whole number"),
        ("AEGIS_NATS_REPLICAS", "7", "AEGIS_NATS_REPLICAS: must be at most 5"),
        ("AEGIS_LOG_FORMAT", "xml", "AEGIS_LOG_FORMAT: expected one of json, console"),
        ("AEGIS_SECRET_KEY", "short", "AEGIS_SECRET_KEY: must be at least 50"),
    ],
)
def test_a_malformed_setting_stops_startup_naming_the_variable(variable, value, message):
    result = _django_setup(**{**PRODUCTION, variable: value})
    assert result.returncode != 0
    assert message in result.stderr
    assert "configured" not in result.stdout


@pytest.mark.parametrize(
    "variable",
    ["AEGIS_SECRET_KEY", "AEGIS_DATABASE_URL", "AEGIS_METRICS_TOKEN"],
)
def test_production_refuses_the_placeholders_of_env_example(variable):
    placeholders = {
        "AEGIS_SECRET_KEY": "change-me-" + "x" * 60,
        "AEGIS_DATABASE_URL": "postgresql://aegis:change-me-postgres-password@db:5432/aegis",
        "AEGIS_METRICS_TOKEN": "change-me-metrics-token",
    }
    result = _django_setup(**{**PRODUCTION, variable: placeholders[variable]})
    assert result.returncode != 0
    assert f"{variable}: still holds a change-me placeholder" in result.stderr


@pytest.mark.parametrize(
    "variable",
    [
        "AEGIS_DATABASE_URL",
        "AEGIS_NATS_URL",
        "AEGIS_REDIS_URL",
        "AEGIS_SECRET_KEY",
        "AEGIS_ALLOWED_HOSTS",
    ],
)
def test_production_requires_explicit_servers_secret_and_hosts(variable):
    variables = dict(PRODUCTION)
    del variables[variable]
    result = _django_setup(**variables)
    assert result.returncode != 0
    assert f"{variable}: is required" in result.stderr


def test_production_settings_pass_the_deployment_checklist():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=environment_without_aegis(**PRODUCTION),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("TRUE", True), ("off", False), ("no", False)]
)
def test_booleans_accept_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("AEGIS_PROBE_FLAG", raw)
    assert env.boolean("AEGIS_PROBE_FLAG", not expected) is expected


def test_blank_values_count_as_unset(monkeypatch):
    monkeypatch.setenv("AEGIS_PROBE_NUMBER", "  ")
    assert env.integer("AEGIS_PROBE_NUMBER", 12) == 12


def test_database_url_becomes_a_django_database(monkeypatch):
    monkeypatch.setenv("AEGIS_PROBE_DB", "postgresql://user:p%40ss@db.example:6543/mes")
    config = env.database("AEGIS_PROBE_DB")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.example", 6543, "mes")
    assert (config["USER"], config["PASSWORD"]) == ("user", "p@ss")

"""The OpenAPI schema is a committed contract: valid, warning-free, and what the server serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.factories import UserFactory

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"
REGENERATE = (
    "the API changed: regenerate the committed schema with\n"
    "  .venv/bin/python manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml\n"
    "and review the diff"
)


def test_committed_schema_is_valid_and_matches_the_code(tmp_path):
    generated = tmp_path / "openapi.yaml"
    # --fail-on-warn: an endpoint drf-spectacular cannot describe fails here, not in a client.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(generated))
    assert generated.read_text() == COMMITTED.read_text(), REGENERATE


def test_schema_names_no_host_or_port():
    text = COMMITTED.read_text()
    # DRF's pagination examples use api.example.org; nothing may name this machine.
    assert not re.search(r"localhost|127\.0\.0\.1|\[::1\]|://[^/\s]+:\d+", text)
    assert yaml.safe_load(text)["servers"] == [
        {"url": "/", "description": "the Aegis server that serves this schema"}
    ]


@pytest.mark.django_db
def test_served_schema_is_the_committed_one():
    client = APIClient()
    client.force_login(UserFactory())
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi")
    assert response.status_code == 200
    assert yaml.safe_load(response.content) == yaml.safe_load(COMMITTED.read_text())


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["/api/v1/docs/", "/api/v1/redoc/"])
def test_docs_are_served_offline_to_signed_in_users(client, page):
    assert client.get(page).status_code == 401
    client.force_login(UserFactory())
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
    assert assets, html
    assert all(asset.startswith("/static/drf_spectacular_sidecar/") for asset in assets), assets
    assert client.get(assets[0]).status_code == 200


@pytest.mark.django_db
def test_schema_is_also_served_as_json():
    client = APIClient()
    client.force_login(UserFactory())
    response = client.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "Aegis MES API"

"""The models page: each station's model versions (status, threshold, training range, metrics),
the shadow-against-production score chart, and Promote / Roll back buttons only for the roles
that may — buttons that call the existing REST operations with the session and its CSRF token,
which refuse everyone else whatever a page shows."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from foresight import registry
from foresight.models import ModelStatus, ModelVersion
from mes.roles import ROLES
from tests.factories import UserFactory
from tests.telemetry.test_series_api import model_version, traced_vehicle
from tests.ui.test_trace_page import parse, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def vehicle():
    """TA's production model pca-TA-1 and shadow pca-TA-2 with scores, and a candidate."""
    traced = traced_vehicle()
    model_version(traced.station_a, "pca-TA-3", 4.5)
    return traced


def models_page(client, **query):
    return client.get("/models/", query)


def test_signed_out_visitors_are_sent_to_sign_in_and_roleless_users_refused(client, vehicle):
    assert models_page(client)["Location"] == "/accounts/login/?next=/models/"
    assert models_page(signed_in(client, None)).status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_the_models(client, vehicle, role):
    response = models_page(signed_in(client, role))
    assert response.status_code == 200
    versions = [row.attrs["data-model"] for row in parse(response).find_all("tr", data_model=True)]
    assert versions == ["pca-TA-3", "pca-TA-2", "pca-TA-1"]


def test_each_version_shows_status_threshold_training_range_and_metrics(client, vehicle):
    page = parse(models_page(signed_in(client, "ml_engineer"), station="TA"))
    row = page.one("tr", data_model="pca-TA-1")
    assert "production" in row.one(class_="status").text
    assert "5.0000" in row.text
    assert "2025-03-09 09:00 to 2025-03-10 08:00" in row.text
    metrics = row.one("dl", class_="metrics").text
    assert "auc 0.93" in metrics
    assert "training rows 12,000" in metrics


@pytest.mark.parametrize("role", ["ml_engineer", "admin"])
def test_roles_that_may_get_the_promotions_their_status_allows(client, vehicle, role):
    page = parse(models_page(signed_in(client, role), station="TA"))
    buttons = {
        version: [b.text for b in page.one("tr", data_model=version).find_all("button")]
        for version in ("pca-TA-1", "pca-TA-2", "pca-TA-3")
    }
    assert buttons == {
        "pca-TA-1": [],  # production, replaced nothing: no rollback
        "pca-TA-2": ["Promote to production"],
        "pca-TA-3": ["Promote to shadow", "Promote to production"],
    }
    promote = page.one("tr", data_model="pca-TA-2").one("button")
    assert promote.attrs["data-url"] == "/api/v1/foresight/models/pca-TA-2/promote"
    assert promote.attrs["data-to"] == "production"


@pytest.mark.parametrize("role", ["operator", "supervisor", "quality_engineer", "integrator"])
def test_other_roles_get_no_buttons(client, vehicle, role):
    page = parse(models_page(signed_in(client, role)))
    assert not page.find_all("button", data_action=True)


def test_a_production_model_that_replaced_another_offers_a_rollback(client, vehicle):
    registry.promote(version=ModelVersion.objects.get(version="pca-TA-2"), to="production")
    page = parse(models_page(signed_in(client, "ml_engineer"), station="TA"))
    (rollback,) = page.one("tr", data_model="pca-TA-2").find_all("button")
    assert rollback.text == "Roll back"
    assert rollback.attrs["data-url"] == "/api/v1/foresight/stations/TA/rollback"
    assert "back to pca-TA-1" in rollback.attrs["data-confirm"]


def test_the_buttons_call_the_rest_operations_with_the_session_and_csrf(vehicle):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(UserFactory(role="ml_engineer"))
    page = parse(browser.get("/models/", {"station": "TA"}))
    token = page.one("meta", name="csrf-token").attrs["content"]
    url = page.one("tr", data_model="pca-TA-2").one("button").attrs["data-url"]

    forged = browser.post(url, {"to": "production"}, content_type="application/json")
    assert forged.status_code == 403
    done = browser.post(
        url, {"to": "production"}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert done.status_code == 200, done.json()
    assert ModelVersion.objects.get(version="pca-TA-2").status == ModelStatus.PRODUCTION

    # A role without the permission is refused by the server even with a valid token.
    other = Client(enforce_csrf_checks=True)
    other.force_login(UserFactory(role="supervisor"))
    token = parse(other.get("/models/")).one("meta", name="csrf-token").attrs["content"]
    refused = other.post(
        "/api/v1/foresight/stations/TA/rollback",
        {},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert refused.status_code == 403


def test_the_comparison_charts_production_and_shadow_up_to_the_latest_score(client, vehicle):
    response = models_page(signed_in(client, "ml_engineer"), hours=1)
    page = parse(response)
    assert "station TA" in page.one(id="compare-heading").text
    data = json.loads(page.one("script", id="models-data").text)
    series = {s["label"]: s for s in data["series"]}
    assert set(series) == {"pca-TA-1", "pca-TA-2"}
    assert (series["pca-TA-1"]["threshold"], series["pca-TA-1"]["shadow"]) == (5.0, False)
    assert (series["pca-TA-2"]["threshold"], series["pca-TA-2"]["shadow"]) == (4.0, True)
    assert max(series["pca-TA-1"]["max"]) == 7.5
    rows = page.one("table", id="models-compare-table").find_all("tr")[1:]
    assert [row.text for row in rows] == [
        "pca-TA-1 production 5.0000 7.5000 1 " + str(len(series["pca-TA-1"]["max"])),
        "pca-TA-2 shadow 4.0000 6.0000 1 " + str(len(series["pca-TA-2"]["max"])),
    ]


def test_bad_choices_are_400_with_a_message(client, vehicle):
    response = models_page(signed_in(client, "operator"), hours="5")
    assert response.status_code == 400
    assert "Compare over 1, 8, 24, 72, 168 hours" in parse(response).one("p", role="alert").text
    assert models_page(client, station="NOPE").status_code == 400


def test_more_models_cost_no_more_queries(client, vehicle):
    signed_in(client, "ml_engineer")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            models_page(client)
        return len(captured)

    before = queries()
    for n in range(10):
        model_version(vehicle.station_b, f"pca-TB-{n}", 3.0)
    assert queries() == before

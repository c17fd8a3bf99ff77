"""/api/v1/foresight/models and the station's rollback and score chart: who may read, promote,
archive and roll back (401 anonymous, 403 wrong role), what the answers hold, audited calls."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from rest_framework.test import APIClient

from foresight import registry
from foresight.models import BASELINE_MODEL_VERSION_ID, ModelStatus, ModelVersion
from mes.models import AuditEntry
from tests.foresight.test_registry import T0, register, unique_station

pytestmark = pytest.mark.django_db

ALL_ROLES = ("operator", "supervisor", "quality_engineer", "ml_engineer", "integrator", "admin")


@pytest.fixture
def station():
    return unique_station()


def promote_url(model: ModelVersion) -> str:
    return f"/api/v1/foresight/models/{model.version}/promote"


# -- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ALL_ROLES)
def test_every_role_reads_the_registry(api_as, station, role):
    model = register(station)

    response = api_as(role).get(f"/api/v1/foresight/models/{model.version}/")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["version"] == model.version
    assert body["station"] == station.code
    assert body["line"] == station.line_id
    assert body["status"] == "candidate"
    assert body["feature_names"] == model.feature_names
    assert body["sha256"] == model.sha256
    assert "artifact_path" not in body


def test_anonymous_and_roleless_callers_cannot_read_the_registry(api_as, station):
    register(station)

    anonymous = APIClient().get("/api/v1/foresight/models/")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "not_authenticated"
    assert api_as(None).get("/api/v1/foresight/models/").status_code == 403


def test_models_filter_by_station_line_status_and_kind(api_as, station):
    other = unique_station()
    production, candidate = register(station), register(station, kind="isolation_forest")
    elsewhere = register(other)
    registry.promote(version=production, to="production")
    reader = api_as("quality_engineer")

    def versions(**params) -> set[str]:
        response = reader.get("/api/v1/foresight/models/", params)
        assert response.status_code == 200, response.json()
        return {row["version"] for row in response.json()["results"]}

    assert versions(station=station.code) == {production.version, candidate.version}
    assert versions(line=other.line_id) == {elsewhere.version}
    assert versions(status="production") == {production.version}
    assert versions(status=["production", "candidate"]) == {
        production.version,
        candidate.version,
        elsewhere.version,
    }
    assert versions(kind="isolation_forest") == {candidate.version}
    malformed = reader.get("/api/v1/foresight/models/", {"status": "retired"})
    assert malformed.status_code == 400
    assert "status" in malformed.json()["fields"]


def test_the_model_list_costs_the_same_queries_for_any_page_length(
    api_as, station, django_assert_max_num_queries
):
    reader = api_as("ml_engineer")
    for _ in range(2):
        registry.promote(version=register(station), to="production")
    with django_assert_max_num_queries(50) as few:
        reader.get("/api/v1/foresight/models/")
    for _ in range(8):
        registry.promote(version=register(station), to="production")
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = reader.get("/api/v1/foresight/models/")
    assert response.json()["count"] == 10


def test_an_unknown_model_is_404(api_as):
    response = api_as("ml_engineer").get("/api/v1/foresight/models/no-such-model/")
    assert response.status_code == 404


# -- promote, archive, roll back ------------------------------------------------------------------


@pytest.mark.parametrize("role", ["ml_engineer", "admin"])
def test_ml_engineers_and_admins_promote_a_model_audited_as_api(api_as, station, role):
    model = register(station)
    client = api_as(role)

    response = client.post(promote_url(model), {"to": "production"})

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "production"
    assert response.json()["promoted_by"] == client.user.username
    entry = AuditEntry.objects.filter(model="foresight.modelversion", action="update").get()
    assert (entry.source, entry.actor, entry.after["status"]) == ("api", client.user, "production")


@pytest.mark.parametrize("role", ["operator", "supervisor", "quality_engineer", "integrator", None])
def test_other_roles_cannot_promote_archive_or_roll_back(api_as, station, role):
    model = register(station)
    client = api_as(role)

    assert client.post(promote_url(model), {"to": "shadow"}).status_code == 403
    assert client.post(f"/api/v1/foresight/models/{model.version}/archive", {}).status_code == 403
    rollback = client.post(f"/api/v1/foresight/stations/{station.code}/rollback", {})
    assert rollback.status_code == 403
    assert rollback.json()["code"] == "permission_denied"
    model.refresh_from_db()
    assert model.status == ModelStatus.CANDIDATE


def test_anonymous_promotion_is_401(station):
    model = register(station)
    assert APIClient().post(promote_url(model), {"to": "shadow"}, format="json").status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "to"), ({"to": "sideways"}, "to"), ({"to": "archived"}, "to")],
)
def test_a_malformed_promotion_is_400_naming_the_field(api_as, station, body, field):
    model = register(station)

    response = api_as("ml_engineer").post(promote_url(model), body, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert field in response.json()["fields"]
    assert not AuditEntry.objects.filter(action="update").exists()


def test_promoting_twice_is_409_and_an_unknown_model_404(api_as, station):
    model = register(station)
    engineer = api_as("ml_engineer")
    assert engineer.post(promote_url(model), {"to": "shadow"}).status_code == 200

    again = engineer.post(promote_url(model), {"to": "shadow"})

    assert again.status_code == 409
    assert again.json()["code"] == "transition_refused"
    assert again.json()["fields"] == {"status": ["shadow"]}
    missing = engineer.post("/api/v1/foresight/models/nope/promote", {"to": "shadow"})
    assert missing.status_code == 404


def test_rollback_restores_the_previous_production_model(api_as, station):
    first, second = register(station), register(station)
    engineer = api_as("ml_engineer")
    for model in (first, second):
        assert engineer.post(promote_url(model), {"to": "production"}).status_code == 200

    response = engineer.post(f"/api/v1/foresight/stations/{station.code}/rollback", {})

    assert response.status_code == 200, response.json()
    assert response.json()["version"] == first.version
    assert response.json()["status"] == "production"
    second.refresh_from_db()
    assert second.status == ModelStatus.ARCHIVED
    refused = engineer.post(f"/api/v1/foresight/stations/{station.code}/rollback", {})
    assert refused.status_code == 409
    assert "previous_production" in refused.json()["fields"]
    unknown = engineer.post("/api/v1/foresight/stations/NOPE/rollback", {})
    assert unknown.status_code == 404


def test_archiving_the_production_model_answers_the_archived_model(api_as, station):
    model = register(station)
    registry.promote(version=model, to="production")

    response = api_as("admin").post(f"/api/v1/foresight/models/{model.version}/archive", {})

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "archived"
    assert registry.station_models(station)["production"] is None


# -- scores ------------------------------------------------------------------------------------


def insert_scores(station, model_id: int, scores: list[float], *, shadow: bool = False) -> None:
    """One score per second from T0, as the scorer writes them."""
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO foresight_score (station_id, ts, seq, model_version_id, score, shadow) "
            "VALUES (%s, %s, 0, %s, %s, %s)",
            [
                (station.pk, T0 + dt.timedelta(seconds=i), model_id, score, shadow)
                for i, score in enumerate(scores)
            ],
        )


def test_the_score_chart_keeps_every_peak_in_at_most_limit_buckets(api_as, station):
    production, shadow = register(station, threshold=0.8), register(station)
    registry.promote(version=production, to="production")
    registry.promote(version=shadow, to="shadow")
    calm = [0.1] * 1000
    peaked = calm[:]
    peaked[437] = 5.0
    insert_scores(station, production.pk, peaked)
    insert_scores(station, shadow.pk, calm, shadow=True)
    insert_scores(station, BASELINE_MODEL_VERSION_ID, calm)

    response = api_as("operator").get(
        f"/api/v1/foresight/stations/{station.code}/scores",
        {"start": T0.isoformat(), "end": (T0 + dt.timedelta(seconds=999)).isoformat(), "limit": 20},
    )

    assert response.status_code == 200, response.json()
    chart = response.json()
    series = {(s["model_version"], s["shadow"]): s for s in chart["series"]}
    assert set(series) == {(production.version, False), (shadow.version, True), (None, False)}
    main = series[(production.version, False)]
    assert main["threshold"] == 0.8
    assert main["source"] == "model"
    assert len(main["points"]) <= 20
    assert sum(point["samples"] for point in main["points"]) == 1000
    assert max(point["max"] for point in main["points"]) == 5.0
    assert series[(None, False)]["source"] == "baseline"
    assert series[(None, False)]["threshold"] == 1.0
    assert chart["bucket_seconds"] >= 999 / 20
    only = api_as("operator").get(
        f"/api/v1/foresight/stations/{station.code}/scores",
        {
            "start": T0.isoformat(),
            "end": (T0 + dt.timedelta(hours=1)).isoformat(),
            "model": shadow.version,
        },
    )
    assert [s["model_version"] for s in only.json()["series"]] == [shadow.version]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-11-20T10:00:00Z", "end": "2026-11-20T09:00:00Z"}, "end"),
        ({"start": "2026-11-01T00:00:00Z", "end": "2026-11-20T00:00:00Z"}, "start"),
        ({"limit": 3}, "limit"),
        ({"start": "yesterday"}, "start"),
    ],
)
def test_a_malformed_score_query_is_400_naming_the_parameter(api_as, station, params, field):
    response = api_as("ml_engineer").get(
        f"/api/v1/foresight/stations/{station.code}/scores", params
    )

    assert response.status_code == 400
    assert field in response.json()["fields"]


def test_scores_need_a_role_and_a_known_station(api_as, station):
    url = f"/api/v1/foresight/stations/{station.code}/scores"
    assert APIClient().get(url).status_code == 401
    assert api_as(None).get(url).status_code == 403
    assert api_as("integrator").get(url).status_code == 200
    assert api_as("integrator").get("/api/v1/foresight/stations/NOPE/scores").status_code == 404

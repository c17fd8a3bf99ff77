"""Who may read what over /graphql: signed-in users and tokens only, each root field behind the
permission the REST API asks for the same data, nested objects behind their own, refusals
without data."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from aegis.graphql.permissions import ROOT_PERMISSIONS, TYPE_PERMISSIONS
from aegis.graphql.schema import schema
from mes.api.authentication import api_token_issue, api_token_revoke
from tests.factories import UserFactory
from tests.graphql.conftest import codes
from tests.graphql.plant import T0, alert, line_with_stations, work_orders_with_units

pytestmark = pytest.mark.django_db

# One small valid document per root field (mutations and the subscription are tested below).
ROOT_QUERIES = {
    "plant": "{ plant { code } }",
    "stations": "{ stations { code } }",
    "station": '{ station(code: "ST0") { code } }',
    "workOrders": "{ workOrders { totalCount results { externalId } } }",
    "workOrder": '{ workOrder(externalId: "WO-1") { externalId } }',
    "units": "{ units { totalCount results { serial } } }",
    "unit": '{ unit(serial: "SN1") { serial } }',
    "telemetry": "{ telemetry(filter: {}) { readings { ts } } }",
    "telemetryBuckets": (
        '{ telemetryBuckets(filter: {since: "2026-03-03T06:00:00Z", '
        'until: "2026-03-03T07:00:00Z"}, bucketSeconds: 60) { count } }'
    ),
    "alerts": "{ alerts { totalCount results { id } } }",
    "alert": '{ alert(id: "1") { id } }',
    "models": "{ models { totalCount results { version } } }",
    "model": '{ model(version: "x") { version } }',
    "oee": '{ oee(from: "2026-03-03T06:00:00Z", to: "2026-03-03T14:00:00Z") { oee } }',
    "oeePerShift": '{ oeePerShift(firstDay: "2026-03-03", lastDay: "2026-03-03") { oee } }',
    "oeePerDay": '{ oeePerDay(firstDay: "2026-03-03", lastDay: "2026-03-03") { oee } }',
    "downtimePareto": (
        '{ downtimePareto(from: "2026-03-03T06:00:00Z", to: "2026-03-03T14:00:00Z") { key } }'
    ),
}


def _root_fields(type_name: str) -> set[str]:
    graphql_type = schema._schema.get_type(type_name)
    return {f"{type_name}.{name}" for name in graphql_type.fields}


def test_every_root_field_is_listed_with_its_permission_and_nothing_else_is():
    published = _root_fields("Query") | _root_fields("Mutation") | _root_fields("Subscription")
    assert published == set(ROOT_PERMISSIONS)
    assert {f"Query.{name}" for name in ROOT_QUERIES} == _root_fields("Query")


def test_every_plant_object_type_has_its_view_permission():
    for type_name in TYPE_PERMISSIONS:
        assert schema._schema.get_type(type_name) is not None, type_name
    model_types = {"Site", "Area", "Line", "Station", "Unit", "WorkOrder", "DefectAlert"}
    assert model_types <= set(TYPE_PERMISSIONS)


def _anonymous_post(document: str) -> tuple[int, dict]:
    response = Client().post(
        "/graphql", data=json.dumps({"query": document}), content_type="application/json"
    )
    return response.status_code, response.json()


@pytest.mark.parametrize("field", sorted(ROOT_QUERIES))
def test_an_anonymous_caller_gets_401_and_no_data(field):
    status, body = _anonymous_post(ROOT_QUERIES[field])
    assert status == 401
    assert body["data"] is None
    assert codes(body) == ["UNAUTHENTICATED"]


def test_an_anonymous_caller_cannot_read_the_schema_either():
    status, body = _anonymous_post("{ __schema { types { name } } }")
    assert status == 401
    assert body["data"] is None


def test_an_anonymous_get_of_graphql_is_refused():
    response = Client().get("/graphql", {"query": "{ plant { code } }"})
    assert response.status_code == 401


@pytest.mark.parametrize("field", sorted(ROOT_QUERIES))
def test_a_user_without_a_role_is_forbidden_every_root_field(signed_in, field):
    line_with_stations()
    caller = signed_in(None)
    body = caller.query(ROOT_QUERIES[field])
    assert caller.response.status_code == 200  # GraphQL answers refusals as errors
    assert codes(body) == ["FORBIDDEN"]
    required = ROOT_PERMISSIONS[f"Query.{field}"]
    assert all(permission in body["errors"][0]["message"] for permission in required)
    assert body["data"] in (None, {field: None})  # null when the field may be


@pytest.mark.parametrize(
    "role", ["operator", "supervisor", "quality_engineer", "ml_engineer", "integrator", "admin"]
)
def test_every_role_reads_every_root_field(signed_in, role):
    line_with_stations()
    caller = signed_in(role)
    for field, document in ROOT_QUERIES.items():
        body = caller.query(document)
        assert "errors" not in body, (field, body)


def _group_with(*permissions: str) -> Group:
    group = Group.objects.create(name="custom " + "+".join(permissions))
    for dotted in permissions:
        app_label, codename = dotted.split(".")
        group.permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return group


def test_a_nested_object_needs_its_own_permission_and_leaks_nothing(signed_in):
    """A role allowed work orders but not units sees the orders and an error where the units
    would be, never a serial."""
    orders = work_orders_with_units(1)
    caller = signed_in(None)
    caller.user.groups.add(_group_with("mes.view_workorder", "mes.view_product"))
    body = caller.query(
        "{ workOrders { results { externalId product { code } units { serial } } } }"
    )
    assert codes(body) == ["FORBIDDEN"]
    assert "mes.view_unit" in body["errors"][0]["message"]
    assert body["errors"][0]["path"] == ["workOrders", "results", 0, "units"]
    assert body["data"] is None  # units is non-null: the refusal empties its parents
    assert orders[0].units.first().serial not in json.dumps(body)

    allowed = caller.query("{ workOrders { results { externalId product { code } } } }")
    assert allowed["data"]["workOrders"]["results"] == [
        {"externalId": orders[0].external_id, "product": {"code": orders[0].product.code}}
    ]


def test_a_nullable_nested_object_is_null_with_an_error(signed_in):
    _, stations = line_with_stations()
    unit = work_orders_with_units(1, stations=stations)[0].units.first()
    alert(stations[0], ts=T0, unit=unit)
    caller = signed_in(None)
    caller.user.groups.add(_group_with("foresight.view_defectalert", "mes.view_station"))
    body = caller.query("{ alerts { results { score station { code } unit { serial } } } }")
    assert codes(body) == ["FORBIDDEN"]
    assert body["data"]["alerts"]["results"] == [
        {"score": 7.5, "station": {"code": stations[0].code}, "unit": None}
    ]


def test_an_inactive_user_is_refused(signed_in):
    caller = signed_in("admin")
    caller.user.is_active = False
    caller.user.save()
    caller.query("{ plant { code } }")
    assert caller.response.status_code == 401


# -- tokens -----------------------------------------------------------------------------------


def test_a_script_with_a_bearer_token_needs_no_csrf_token(with_token):
    line_with_stations()
    caller = with_token("integrator")
    caller.client = Client(enforce_csrf_checks=True)
    assert caller.data("{ stations { code } }")["stations"]


@pytest.mark.parametrize("problem", ["unknown", "revoked", "malformed"])
def test_a_bad_token_is_refused_with_401_before_anything_runs(problem):
    user = UserFactory(role="admin")
    token, secret = api_token_issue(user=user)
    header = {
        "unknown": "Bearer aegis_not-a-token",
        "revoked": f"Bearer {secret}",
        "malformed": f"Bearer {secret} extra",
    }[problem]
    if problem == "revoked":
        api_token_revoke(token=token)
    response = Client().post(
        "/graphql",
        data=json.dumps({"query": "{ plant { code } }"}),
        content_type="application/json",
        headers={"Authorization": header},
    )
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert codes(response.json()) == ["UNAUTHENTICATED"]


def test_a_token_of_a_role_without_the_permission_is_forbidden(with_token):
    caller = with_token(None)
    assert codes(caller.query("{ alerts { totalCount } }")) == ["FORBIDDEN"]


# -- the browser's session and CSRF -------------------------------------------------------------


def _session_client(role: str = "supervisor") -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(UserFactory(role=role))
    return client


def test_a_session_post_without_the_csrf_token_is_refused():
    response = _session_client().post(
        "/graphql",
        data=json.dumps({"query": "{ plant { code } }"}),
        content_type="application/json",
    )
    assert response.status_code == 403
    assert codes(response.json()) == ["FORBIDDEN"]
    assert "CSRF" in response.json()["errors"][0]["message"]


def test_a_session_post_with_the_csrf_token_of_the_graphiql_page_is_served():
    client = _session_client()
    page = client.get("/graphql", headers={"Accept": "text/html"})
    token = client.cookies["csrftoken"].value
    assert page.status_code == 200
    response = client.post(
        "/graphql",
        data=json.dumps({"query": "{ plant { code } }"}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 200
    assert "errors" not in response.json()


def test_a_session_get_runs_a_query_but_never_a_mutation():
    _, stations = line_with_stations()
    raised = alert(stations[0], ts=T0)
    client = _session_client("quality_engineer")
    query = client.get("/graphql", {"query": "{ plant { code } }"})
    assert query.status_code == 200
    mutation = client.get(
        "/graphql", {"query": f'mutation {{ acknowledgeAlert(id: "{raised.pk}") {{ id }} }}'}
    )
    assert mutation.status_code == 400  # strawberry: mutations are not allowed over GET
    raised.refresh_from_db()
    assert raised.status == "open"


# -- GraphiQL ---------------------------------------------------------------------------------


def test_graphiql_sends_a_signed_out_browser_to_the_sign_in_page():
    response = Client().get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/graphql")


def test_graphiql_is_served_to_a_signed_in_browser_from_aegis_itself():
    client = _session_client("operator")
    page = client.get("/graphql", headers={"Accept": "text/html"})
    html = page.content.decode()
    assert page.status_code == 200
    assert "GraphiQL.createFetcher" in html
    assert "unpkg.com" not in html
    assert "cdn" not in html.lower()
    for asset in (
        "/graphql/ide/graphiql-3.8.3/graphiql.min.js",
        "/graphql/ide/graphiql-3.8.3/graphiql.min.css",
        "/graphql/ide/react-18.2.0/react.production.min.js",
        "/graphql/ide/react-dom-18.2.0/react-dom.production.min.js",
    ):
        assert f'"{asset}"' in html
        served = client.get(asset)
        assert served.status_code == 200
        assert b"".join(served.streaming_content)


def test_graphiql_assets_are_the_published_files_their_integrity_attributes_name():
    import base64
    import hashlib
    import re

    client = _session_client()
    html = client.get("/graphql", headers={"Accept": "text/html"}).content.decode()
    pairs = re.findall(r'(?:src|href)="([^"]+)"\s+integrity="sha384-([^"]+)"', html)
    assert len(pairs) == 4
    for url, expected in pairs:
        body = b"".join(client.get(url).streaming_content)
        assert base64.b64encode(hashlib.sha384(body).digest()).decode() == expected


def test_only_the_vendored_files_are_served():
    client = Client()
    assert client.get("/graphql/ide/../../settings/base.py").status_code == 404
    assert client.get("/graphql/ide/graphiql-3.8.3/LICENSE").status_code == 404

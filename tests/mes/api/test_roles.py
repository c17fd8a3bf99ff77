"""Every endpoint checks the caller's role (mes/roles.py), whichever way they signed in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.admindocs.views import simplify_regex
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient

from mes.api.permissions import ModelPermissions
from mes.models import AuditEntry, QualityEvent, WorkOrderStatus
from mes.roles import ROLE_PERMISSIONS, ROLES
from tests.factories import (
    DefectCodeFactory,
    RouteOperationFactory,
    UnitFactory,
    UserFactory,
    WorkOrderFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def work_order():
    operation = RouteOperationFactory()
    return WorkOrderFactory(product=operation.route.product, line=operation.route.line)


def test_operator_cannot_cancel_a_work_order(api_as, work_order):
    operator = api_as("operator")
    response = operator.post(
        f"/api/v1/work-orders/{work_order.external_id}/cancel", {"reason": "not mine to cancel"}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    work_order.refresh_from_db()
    assert work_order.status == WorkOrderStatus.PLANNED


def test_operator_can_start_a_released_work_order(api_as, work_order):
    assert (
        api_as("supervisor")
        .post(f"/api/v1/work-orders/{work_order.external_id}/release", {})
        .status_code
        == 200
    )
    response = api_as("operator").post(f"/api/v1/work-orders/{work_order.external_id}/start", {})
    assert response.status_code == 200
    assert response.json()["status"] == WorkOrderStatus.IN_PROGRESS


def test_operator_cannot_release_or_create_work_orders(api_as, work_order):
    operator = api_as("operator")
    url = f"/api/v1/work-orders/{work_order.external_id}/release"
    assert operator.post(url, {}).status_code == 403
    assert operator.post("/api/v1/work-orders/", {}).status_code == 403


def test_supervisor_can_cancel_a_work_order(api_as, work_order):
    response = api_as("supervisor").post(
        f"/api/v1/work-orders/{work_order.external_id}/cancel", {"reason": "line rebalanced"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == WorkOrderStatus.CANCELLED


def test_integrator_token_cannot_read_users(api_as):
    integrator = api_as("integrator")
    assert integrator.get("/api/v1/users/").status_code == 403
    assert integrator.get(f"/api/v1/users/{integrator.user.pk}/").status_code == 403
    assert integrator.get("/api/v1/work-orders/").status_code == 200


def test_operator_cannot_read_users_or_the_audit_trail(api_as):
    operator = api_as("operator")
    assert operator.get("/api/v1/users/").status_code == 403
    assert operator.get("/api/v1/audit-entries/").status_code == 403


def test_admin_reads_users_with_their_roles(api_as):
    admin = api_as("admin")
    UserFactory(username="night-operator", role="operator")
    response = admin.get("/api/v1/users/", {"role": "operator"})
    assert response.status_code == 200
    assert [(u["username"], u["roles"]) for u in response.json()["results"]] == [
        ("night-operator", ["operator"])
    ]
    assert "password" not in response.json()["results"][0]


def test_user_without_a_role_can_read_nothing(api_as):
    nobody = api_as(None)
    assert nobody.get("/api/v1/sites/").status_code == 403
    assert nobody.get("/api/v1/work-orders/").status_code == 403


def test_anonymous_request_is_401_with_a_bearer_challenge(api_client):
    response = api_client.get("/api/v1/work-orders/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json()["code"] == "not_authenticated"


def test_quality_engineer_can_record_a_quality_event(api_as, work_order):
    unit = UnitFactory(work_order=work_order)
    defect = DefectCodeFactory()
    quality = api_as("quality_engineer")
    response = quality.post(
        "/api/v1/quality-events/",
        {"unit": unit.serial, "defect": defect.code, "severity": "critical", "source": "customer"},
    )
    assert response.status_code == 201, response.json()
    event = QualityEvent.objects.get()
    assert event.detected_by == quality.user
    entry = AuditEntry.objects.get(model="mes.qualityevent")
    assert (entry.source, entry.actor) == ("api", quality.user)


def test_ml_engineer_reads_but_cannot_write(api_as, work_order):
    ml = api_as("ml_engineer")
    assert ml.get("/api/v1/work-orders/").status_code == 200
    assert ml.post(f"/api/v1/work-orders/{work_order.external_id}/start", {}).status_code == 403
    assert ml.post("/api/v1/quality-events/", {}).status_code == 403


def test_browser_session_needs_the_csrf_token_to_write(work_order):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(UserFactory(role="supervisor"))
    assert browser.get("/api/v1/work-orders/").status_code == 200
    url = f"/api/v1/work-orders/{work_order.external_id}/release"
    refused = browser.post(url, {})
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]

    browser.get("/accounts/login/")  # sets the csrftoken cookie, as any page of the UI does
    token = browser.cookies["csrftoken"].value
    assert browser.post(url, {}, HTTP_X_CSRFTOKEN=token).status_code == 200


# -- every URL -------------------------------------------------------------------------------


def _api_urls(patterns=None, prefix: str = ""):
    """(url, allowed methods) for every URL pattern under /api/v1/, with sample path values."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _api_urls(pattern.url_patterns, route)
            continue
        assert isinstance(pattern, URLPattern)
        path = simplify_regex(route)
        if not path.startswith("/api/v1/"):
            continue
        view = pattern.callback
        if hasattr(view, "actions"):  # a viewset routes methods to actions
            methods = list(view.actions)
        elif hasattr(view, "cls"):  # a DRF view
            methods = [m for m in ("get", "post", "delete") if hasattr(view.cls, m)]
        else:  # a plain Django view (the signed webhook) takes a POST
            methods = ["post"]
        yield re.sub(r"<[^>]+>", "1", path), methods


def test_every_api_url_is_found():
    urls = dict(_api_urls())
    assert len(urls) >= 50
    assert "/api/v1/work-orders/1/cancel/" in urls
    assert "/api/v1/docs/" in urls


def test_every_api_url_rejects_anonymous_requests(api_client):
    checked = 0
    for url, methods in _api_urls():
        for method in methods:
            if (url, method) == ("/api/v1/auth/token/", "post"):
                continue
            response = getattr(api_client, method)(url, {}, format="json")
            assert response.status_code in (401, 403), (method, url, response.status_code)
            checked += 1
    assert checked >= 55


def test_anonymous_can_only_ask_for_a_token(api_client):
    response = api_client.post("/api/v1/auth/token", {"username": "x", "password": "y"})
    assert response.status_code == 401


# Open to any signed-in user: their own tokens, and the description of the API.
WITHOUT_ROLE = ("/api/v1/auth/", "/api/v1/schema/", "/api/v1/docs/", "/api/v1/redoc/")
SIGNED_NOT_SIGNED_IN = ("/api/v1/webhooks/",)  # authenticated by signature, see webhooks.md


def test_every_data_url_needs_a_permission_a_user_without_role_lacks(api_as):
    nobody = api_as(None)
    checked = 0
    for url, methods in _api_urls():
        if url.startswith(WITHOUT_ROLE + SIGNED_NOT_SIGNED_IN):
            continue
        for method in methods:
            response = getattr(nobody, method)(url, {}, format="json")
            assert response.status_code == 403, (method, url, response.status_code)
            checked += 1
    assert checked >= 50


def _required_permission(method: str, url: str) -> str:
    """The permission the code checks for `method` on `url` (as docs/api.md names it)."""
    view = resolve(url).func
    if hasattr(view.cls, "required_permissions"):
        return " and ".join(view.cls.required_permissions)
    if getattr(view.cls, "queryset", None) is None:
        return "signed in"
    meta = view.cls.queryset.model._meta
    return ModelPermissions.perms_map[method][0] % {
        "app_label": meta.app_label,
        "model_name": meta.model_name,
    }


def test_roles_table_in_the_docs_is_what_the_code_checks():
    table = (Path(__file__).resolve().parents[3] / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| `(GET|POST) (/api/v1/[^`]+)` \| `([^`]+)` \|(.*)\|$", table, re.M)
    assert len(rows) >= 15
    documented = set()
    for method, path, permission, marks in rows:
        url = re.sub(r"\{[^}]+\}", "1", path)
        assert _required_permission(method, url) == permission, (method, path)
        roles_with_mark = [
            role for role, mark in zip(ROLES, marks.split("|"), strict=True) if mark.strip()
        ]
        holders = [role for role in ROLES if permission in ROLE_PERMISSIONS[role]]
        assert roles_with_mark == holders, (method, path)
        documented.add((method.lower(), url.rstrip("/")))
    writes = {
        (method, url.rstrip("/"))
        for url, methods in _api_urls()
        for method in methods
        if method == "post" and not url.startswith(("/api/v1/auth/", *SIGNED_NOT_SIGNED_IN))
    }
    assert writes <= documented, writes - documented

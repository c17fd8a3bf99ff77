"""Tokens for machines: shown once, stored as a digest, expiring, revocable, throttled."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from aegis.settings.environment import SettingError
from mes.api.throttling import check_rates
from mes.models import ApiToken, AuditEntry
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def _issue(client: APIClient, username: str, **extra):
    return client.post("/api/v1/auth/token", {"username": username, "password": PASSWORD, **extra})


def _bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_token_is_shown_once_and_stored_only_as_its_digest(api_client):
    user = UserFactory(role="integrator")
    response = _issue(api_client, user.username, name="legacy MES bridge")
    assert response.status_code == 201, response.json()
    body = response.json()
    secret = body["token"]
    assert secret.startswith("aegis_")
    assert len(secret) > 40
    token = ApiToken.objects.get()
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert token.name == "legacy MES bridge"
    assert secret[6:14] == token.prefix == body["prefix"]
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(days=29, hours=23) < expires - timezone.now() <= dt.timedelta(days=30)

    listed = _bearer(secret).get("/api/v1/auth/tokens").json()["results"]
    assert [t["prefix"] for t in listed] == [token.prefix]
    assert "token" not in listed[0]
    assert "digest" not in listed[0]
    assert secret not in str(AuditEntry.objects.get(model="mes.apitoken").after)
    assert token.digest not in str(AuditEntry.objects.get(model="mes.apitoken").after)


def test_bearer_token_reads_as_its_user(api_client):
    user = UserFactory(role="integrator")
    secret = _issue(api_client, user.username).json()["token"]
    assert _bearer(secret).get("/api/v1/sites/").status_code == 200


def test_lifetime_is_chosen_in_hours_up_to_90_days(api_client):
    user = UserFactory()
    short = _issue(api_client, user.username, lifetime_hours=8).json()
    expires = dt.datetime.fromisoformat(short["expires_at"])
    assert dt.timedelta(hours=7, minutes=59) < expires - timezone.now() <= dt.timedelta(hours=8)
    too_long = _issue(api_client, user.username, lifetime_hours=90 * 24 + 1)
    assert too_long.status_code == 400
    assert "lifetime_hours" in too_long.json()["fields"]


@pytest.mark.parametrize("who", ["unknown user", "wrong password", "inactive user"])
def test_wrong_credentials_are_401_without_saying_which_part_was_wrong(api_client, who):
    user = UserFactory(is_active=who != "inactive user")
    username = "nobody-here" if who == "unknown user" else user.username
    password = "not the password" if who == "wrong password" else PASSWORD
    response = api_client.post("/api/v1/auth/token", {"username": username, "password": password})
    assert response.status_code == 401
    assert response.json() == {
        "code": "authentication_failed",
        "detail": "Unable to sign in with these credentials.",
    }
    assert not ApiToken.objects.exists()


def test_missing_credentials_are_400(api_client):
    response = api_client.post("/api/v1/auth/token", {"username": "someone"})
    assert response.status_code == 400
    assert response.json()["fields"] == {"password": ["This field is required."]}


def test_delete_revokes_the_token_in_use(api_client):
    user = UserFactory(role="operator")
    secret = _issue(api_client, user.username).json()["token"]
    machine = _bearer(secret)
    assert machine.delete("/api/v1/auth/token").status_code == 204
    refused = machine.get("/api/v1/sites/")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "This token was revoked."
    assert ApiToken.objects.get().revoked_at is not None
    entry = AuditEntry.objects.filter(model="mes.apitoken", action="update").get()
    assert (entry.source, entry.actor) == ("api", user)


def test_a_lost_token_is_revoked_by_id_from_another_session(api_client):
    user = UserFactory(role="operator")
    lost = _issue(api_client, user.username).json()
    browser = APIClient()
    browser.force_login(user)
    response = browser.delete(f"/api/v1/auth/tokens/{lost['id']}")
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    assert _bearer(lost["token"]).get("/api/v1/sites/").status_code == 401


def test_nobody_revokes_another_users_token(api_client):
    theirs = _issue(api_client, UserFactory().username).json()
    mine = _issue(api_client, UserFactory().username).json()
    response = _bearer(mine["token"]).delete(f"/api/v1/auth/tokens/{theirs['id']}")
    assert response.status_code == 404
    assert ApiToken.objects.get(pk=theirs["id"]).revoked_at is None


def test_delete_without_a_token_is_400(api_client):
    browser = APIClient()
    browser.force_login(UserFactory())
    response = browser.delete("/api/v1/auth/token")
    assert response.status_code == 400
    assert "authorization" in response.json()["fields"]


def test_expired_token_is_401(api_client):
    secret = _issue(api_client, UserFactory(role="operator").username).json()["token"]
    now = timezone.now()
    ApiToken.objects.update(created_at=now - dt.timedelta(days=31), expires_at=now)
    response = _bearer(secret).get("/api/v1/sites/")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_token_of_a_deactivated_user_is_401(api_client):
    user = UserFactory(role="operator")
    secret = _issue(api_client, user.username).json()["token"]
    user.is_active = False
    user.save()
    assert _bearer(secret).get("/api/v1/sites/").status_code == 401


@pytest.mark.parametrize("header", ["Bearer not-a-token", "Bearer", "Bearer a b"])
def test_malformed_or_unknown_bearer_token_is_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/sites/")
    assert response.status_code == 401


def test_last_used_is_written_at_most_once_a_minute(api_client):
    secret = _issue(api_client, UserFactory(role="operator").username).json()["token"]
    machine = _bearer(secret)
    machine.get("/api/v1/sites/")
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    machine.get("/api/v1/sites/")
    assert ApiToken.objects.get().last_used_at == first
    ApiToken.objects.update(last_used_at=first - dt.timedelta(minutes=2))
    machine.get("/api/v1/sites/")
    assert ApiToken.objects.get().last_used_at > first


def test_token_endpoint_is_throttled_per_address(settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"user": "1000/min", "anon": "1000/min", "token": "3/min"},
    }
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"  # a fresh count
    client = APIClient(REMOTE_ADDR=address)
    statuses = [
        client.post("/api/v1/auth/token", {"username": "x", "password": "y"}).status_code
        for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    assert (
        APIClient(REMOTE_ADDR="10.255.0.1")
        .post("/api/v1/auth/token", {"username": "x", "password": "y"})
        .status_code
        == 401
    )
    # X-Forwarded-For is ignored unless AEGIS_API_NUM_PROXIES says a proxy sets it.
    spoofed = client.post(
        "/api/v1/auth/token", {"username": "x", "password": "y"}, HTTP_X_FORWARDED_FOR="1.2.3.4"
    )
    assert spoofed.status_code == 429
    assert int(spoofed["Retry-After"]) > 0


def test_users_are_throttled_per_user(settings, api_as):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"user": "2/min", "anon": "1000/min", "token": "1000/min"},
    }
    machine = api_as("operator")
    assert [machine.get("/api/v1/sites/").status_code for _ in range(3)] == [200, 200, 429]
    assert machine.get("/api/v1/sites/").json()["code"] == "throttled"
    assert api_as("operator").get("/api/v1/sites/").status_code == 200


@pytest.mark.parametrize("rate", ["10", "ten/min", "10/fortnight", "0/min", ""])
def test_a_malformed_throttle_rate_names_its_variable(rate):
    with pytest.raises(SettingError, match="AEGIS_API_THROTTLE_USER"):
        check_rates({"user": rate, "anon": "60/min", "token": "10/min"})
    check_rates({"user": "600/min", "anon": "20/s", "token": "10/minute"})

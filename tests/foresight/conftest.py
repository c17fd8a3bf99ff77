"""Fixtures of the Foresight API tests."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from mes.api.authentication import api_token_issue
from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def generous_throttles(settings):
    """Throttle counts live in Redis across tests; these tests are not about throttling."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            "user": "100000/min",
            "anon": "100000/min",
            "token": "100000/min",
        },
    }


@pytest.fixture(autouse=True)
def artifact_dir(settings, tmp_path):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path / "artifacts"


@pytest.fixture
def api_as():
    """A client sending a real bearer token of a new user with `role` (None: no role)."""

    def client_for(role: str | None) -> APIClient:
        user = UserFactory(role=role)
        _, secret = api_token_issue(user=user, name=f"test {role}")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        client.user = user
        return client

    return client_for

"""Fixtures of the GraphQL tests: callers of /graphql signed in with a role (session or token)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from django.test import Client

from mes.api.authentication import api_token_issue
from tests.factories import UserFactory


@dataclass
class Caller:
    """Posts GraphQL documents to /graphql as one user; `response` is the last HTTP answer."""

    client: Client
    user: object = None
    headers: dict | None = None
    response: object = None

    def query(self, document: str, **variables) -> dict:
        self.response = self.client.post(
            "/graphql",
            data=json.dumps({"query": document, "variables": variables}),
            content_type="application/json",
            headers=self.headers or {},
        )
        return self.response.json()

    def data(self, document: str, **variables) -> dict:
        """The data of a query that must succeed."""
        body = self.query(document, **variables)
        assert self.response.status_code == 200, body
        assert "errors" not in body, body["errors"]
        return body["data"]


@pytest.fixture
def signed_in():
    """A caller signed in through the session, with `role` (None: no role at all)."""

    def caller(role: str | None = "supervisor") -> Caller:
        user = UserFactory(role=role)
        client = Client()
        client.force_login(user)
        return Caller(client=client, user=user)

    return caller


@pytest.fixture
def with_token():
    """A caller sending a real bearer token of a new user with `role`."""

    def caller(role: str | None = "integrator") -> Caller:
        user = UserFactory(role=role)
        _, secret = api_token_issue(user=user, name=f"graphql {role}")
        return Caller(client=Client(), user=user, headers={"Authorization": f"Bearer {secret}"})

    return caller


def codes(body: dict) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in body.get("errors", [])]

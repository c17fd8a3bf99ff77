"""The front page: sign-in for visitors, the plant for signed-in users, CSRF enforced."""

from __future__ import annotations

import pytest
from django.test import Client

from mes.demo import seed_demo_plant
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_visitors_get_the_sign_in_form(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b'name="username"' in response.content
    assert b"csrfmiddlewaretoken" in response.content


def test_signed_in_users_see_the_plant_in_line_order(client, django_assert_max_num_queries):
    seed_demo_plant()
    client.force_login(UserFactory(role="operator"))
    with django_assert_max_num_queries(10):
        response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    positions = [
        page.index(name) for name in ("Steering rack torque", "ECU flash", "Coolant leak test")
    ]
    assert positions == sorted(positions)
    assert "/ws/events/" not in page  # the socket URL is built by the script, not inlined


def test_signing_in_requires_a_csrf_token():
    user = UserFactory(role="supervisor")
    browser = Client(enforce_csrf_checks=True)
    forged = browser.post("/accounts/login/", {"username": user.username, "password": PASSWORD})
    assert forged.status_code == 403

    browser.get("/")  # sets the CSRF cookie, as a real page load does
    token = browser.cookies["csrftoken"].value
    signed_in = browser.post(
        "/accounts/login/",
        {"username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    assert signed_in.status_code == 302
    assert browser.get("/").context["user"] == user


def test_wrong_password_is_refused_with_a_message(client):
    user = UserFactory(role="supervisor")
    response = client.post("/accounts/login/", {"username": user.username, "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    assert not response.context["user"].is_authenticated


def test_admin_login_page_is_served_with_its_static_files(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    static = client.get("/static/admin/css/base.css")
    assert static.status_code == 200


def test_only_administrators_reach_the_admin(client):
    client.force_login(UserFactory(role="supervisor"))
    assert client.get("/admin/").status_code == 302
    client.force_login(UserFactory(role="admin", is_staff=True, is_superuser=True))
    assert client.get("/admin/").status_code == 200

"""The navigation shows exactly the pages a user's role may open (the table in
aegis/ui/navigation.py), and a page hidden from a role is refused to it as well."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from aegis.ui.navigation import ALERTS, PAGES, links_for
from mes.roles import ROLES
from tests.factories import UserFactory
from tests.ui.test_board import parse

pytestmark = pytest.mark.django_db


def navigation_links(content: bytes) -> list[tuple[str, str]]:
    page = parse(content)
    navs = page.select("nav", aria_label="Main")
    if not navs:
        return []
    return [(link.text, link.attrs["href"]) for link in navs[0].select("a")]


def expected_links(user) -> list[tuple[str, str]]:
    return [(page.label, page.path) for page in links_for(user)]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_the_links_of_the_pages_it_may_open(client, role):
    user = UserFactory(role=role)
    client.force_login(user)

    links = navigation_links(client.get("/").content)

    assert links == expected_links(user)
    assert ("Plant", "/") in links
    assert ("Administration", "/admin/") not in links  # a role is not staff


def test_staff_also_see_the_administration(client):
    user = UserFactory(role="admin", is_staff=True)
    client.force_login(user)

    links = navigation_links(client.get("/").content)

    assert links == expected_links(user)
    assert links[-1] == ("Administration", "/admin/")


def test_a_user_without_a_role_sees_no_page_links_and_is_refused_the_pages(client):
    client.force_login(UserFactory())

    board = client.get("/")
    alerts = client.get("/alerts/")

    assert navigation_links(board.content) == []
    assert (board.status_code, alerts.status_code) == (403, 403)


def test_a_permission_less_makes_its_link_disappear_and_its_page_refuse(client):
    user = UserFactory()
    user.user_permissions.add(
        Permission.objects.get(codename="view_station", content_type__app_label="mes")
    )
    client.force_login(user)

    links = navigation_links(client.get("/").content)

    assert links == [("Plant", "/")]
    assert client.get(ALERTS.path).status_code == 403


def test_visitors_see_no_navigation_and_are_sent_to_sign_in_from_a_page():
    visitor = Client()

    assert navigation_links(visitor.get("/").content) == []
    response = visitor.get("/alerts/?status=open")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/alerts/%3Fstatus%3Dopen"


def test_the_current_page_is_marked_for_assistive_technology(client):
    client.force_login(UserFactory(role="supervisor"))

    page = parse(client.get("/alerts/").content)

    current = page.one("nav", aria_label="Main").select("a", aria_current="page")
    assert [link.text for link in current] == [ALERTS.label]


def test_every_page_of_the_table_has_a_link_in_the_layout():
    """The layout names each page's permission: a page added to the table needs its link."""
    layout = (Path(__file__).resolve().parents[2] / "templates" / "base.html").read_text()
    for page in PAGES:
        assert f'href="{page.path}"' in layout
        if page.permission is not None:
            assert f'"{page.permission}" in perms' in layout

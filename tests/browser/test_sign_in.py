"""Signing in and out through the pages, in the browser: a wrong password is refused with a
message the screen reader announces, the right one opens the page asked for, and signing out
closes the session (the pages send to the sign-in form again)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.factories import PASSWORD, UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("transactional_db")]


def test_a_wrong_password_is_refused_with_an_announced_message(open_page):
    user = UserFactory(role="supervisor")
    page = open_page("/alerts/", role=None).page
    expect(page).to_have_url("/accounts/login/?next=/alerts/")

    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD + "?")
    page.get_by_role("button", name="Sign in").click()

    error = page.get_by_role("alert")
    expect(error).to_be_visible()
    expect(error).to_contain_text("password")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url("/accounts/login/")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_a_supervisor_signs_in_through_the_form_and_out_again(open_page, site):
    user = UserFactory(role="supervisor")
    opened = open_page("/alerts/", role=None)
    page = opened.page

    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url("/alerts/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Alerts")
    expect(page.get_by_role("banner")).to_contain_text(user.username)

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    page.goto("/alerts/")
    expect(page).to_have_url("/accounts/login/?next=/alerts/")
    assert opened.errors == []

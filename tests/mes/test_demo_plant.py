"""`manage.py demo_plant` is idempotent and gives each role a working demo user."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.test import override_settings

from mes import roles
from mes.models import Area, Line, Site, Station

pytestmark = pytest.mark.django_db


def _run() -> str:
    output = StringIO()
    call_command("demo_plant", stdout=output)
    return output.getvalue()


def test_demo_plant_can_be_created_again_without_changes(tmp_path):
    with override_settings(DATA_DIR=tmp_path):
        first = _run()
        counts = [model.objects.count() for model in (Site, Area, Line, Station)]
        second = _run()
    assert "(9 objects created)" in first
    assert "(0 objects created)" in second
    assert counts == [1, 1, 1, 6]
    assert [model.objects.count() for model in (Site, Area, Line, Station)] == counts
    assert list(Station.objects.values_list("code", flat=True)) == ["1", "2", "3", "4", "5", "6"]


def test_demo_users_keep_their_printed_passwords_across_runs(tmp_path):
    with override_settings(DATA_DIR=tmp_path):
        printed = _run()
        _run()
    stored = json.loads((tmp_path / "demo-credentials.json").read_text())
    assert oct((tmp_path / "demo-credentials.json").stat().st_mode & 0o777) == "0o600"
    assert {entry["role"] for entry in stored} == set(roles.ROLE_PERMISSIONS)
    for entry in stored:
        assert entry["password"] in printed
        user = authenticate(username=entry["username"], password=entry["password"])
        assert user is not None, entry["username"]
        assert list(user.groups.values_list("name", flat=True)) == [entry["role"]]
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser
    assert admin.is_staff
    assert not get_user_model().objects.get(username="operator").is_staff


def test_every_role_exists_with_its_permissions():
    from django.contrib.auth.models import Group

    for role, codenames in roles.ROLE_PERMISSIONS.items():
        group = Group.objects.get(name=role)
        held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        assert held == set(codenames), role


def test_an_existing_account_with_a_demo_name_is_left_untouched(tmp_path):
    plant_admin = get_user_model().objects.create_user(
        username="admin", password="the plant's own password", is_staff=True
    )
    with override_settings(DATA_DIR=tmp_path):
        printed = _run()
    plant_admin.refresh_from_db()
    assert plant_admin.check_password("the plant's own password")
    assert not plant_admin.is_superuser
    assert not plant_admin.groups.exists()
    assert "admin       exists already and was left untouched" in printed
    stored = json.loads((tmp_path / "demo-credentials.json").read_text())
    assert "admin" not in {entry["username"] for entry in stored}

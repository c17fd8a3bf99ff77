"""`manage.py seed_demo` is idempotent, realistic, and gives each role a working demo user."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.test import override_settings

from mes import roles
from mes.models import (
    Line,
    Route,
    Shift,
    ShiftBreak,
    Station,
    StationType,
    Unit,
    WorkOrder,
    validate_vin,
)

pytestmark = pytest.mark.django_db


def _seed(tmp_path) -> str:
    output = StringIO()
    with override_settings(DATA_DIR=tmp_path):
        call_command("seed_demo", stdout=output)
    return output.getvalue()


def _counts() -> list[int]:
    return [m.objects.count() for m in (Line, Station, Route, Shift, ShiftBreak, WorkOrder, Unit)]


def test_seed_demo_builds_two_lines_of_realistic_stations(tmp_path):
    _seed(tmp_path)
    assert list(Line.objects.values_list("code", flat=True)) == ["L1", "L2"]
    for line in Line.objects.all():
        types = set(line.stations.values_list("station_type", flat=True))
        assert line.stations.count() == 6
        assert {
            StationType.TIGHTENING,
            StationType.FLASHING,
            StationType.ALIGNMENT,
            StationType.LEAK_TEST,
            StationType.INSPECTION,
        } <= types
        assert all(station.signals.exists() for station in line.stations.all())
        route = line.routes.get()
        assert route.operations.count() == 6
    torque = Station.objects.get(code="5").signals.get(name="torque")
    assert (torque.unit, torque.nominal_min, torque.nominal_max) == ("N·m", 110.0, 130.0)


def test_seed_demo_gives_vehicles_valid_vins_and_every_line_three_shifts(tmp_path):
    _seed(tmp_path)
    vins = list(Unit.objects.exclude(vin=None).values_list("vin", flat=True))
    assert len(vins) == 24
    for vin in vins:
        validate_vin(vin)
    assert not Unit.objects.filter(work_order__line__code="L2").exclude(vin=None).exists()
    names = set(Shift.objects.values_list("name", flat=True))
    assert names == {"Early", "Late", "Night"}
    assert ShiftBreak.objects.filter(shift__name="Night").exists()
    statuses = set(WorkOrder.objects.values_list("status", flat=True))
    assert statuses == {"in_progress", "released"}


def test_seed_demo_can_run_again_without_changes(tmp_path):
    first = _seed(tmp_path)
    counts = _counts()
    second = _seed(tmp_path)
    assert "created)" in first
    assert "(nothing new created)" in second
    assert _counts() == counts


def test_demo_users_keep_their_printed_passwords_across_runs(tmp_path):
    printed = _seed(tmp_path)
    _seed(tmp_path)
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


def test_an_existing_account_with_a_demo_name_is_left_untouched(tmp_path):
    plant_admin = get_user_model().objects.create_user(
        username="admin", password="the plant's own password", is_staff=True
    )
    printed = _seed(tmp_path)
    plant_admin.refresh_from_db()
    assert plant_admin.check_password("the plant's own password")
    assert not plant_admin.is_superuser
    assert not plant_admin.groups.exists()
    assert "admin       exists already and was left untouched" in printed
    stored = json.loads((tmp_path / "demo-credentials.json").read_text())
    assert "admin" not in {entry["username"] for entry in stored}


def test_every_role_exists_with_exactly_its_permissions():
    from django.contrib.auth.models import Group

    for role, codenames in roles.ROLE_PERMISSIONS.items():
        group = Group.objects.get(name=role)
        held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        assert held == set(codenames), role
    operator = set(roles.ROLE_PERMISSIONS[roles.OPERATOR])
    assert "mes.cancel_workorder" not in operator
    assert "auth.view_user" not in set(roles.ROLE_PERMISSIONS[roles.INTEGRATOR])

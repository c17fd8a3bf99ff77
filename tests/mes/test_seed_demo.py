"""`manage.py seed_demo` is idempotent, realistic, and gives each role a working demo user."""

from __future__ import annotations

import json
from io import StringIO

import orjson
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
    StationSignal,
    StationType,
    Unit,
    WorkOrder,
    validate_vin,
)
from telemetry.simulator import FaultSettings, Simulation, SimulationConfig, plant_layout_load
from telemetry.simulator.signals import AUXILIARY_SIGNALS, station_generator

pytestmark = pytest.mark.django_db


def _seed(tmp_path) -> str:
    output = StringIO()
    with override_settings(DATA_DIR=tmp_path):
        call_command("seed_demo", stdout=output)
    return output.getvalue()


def _counts() -> list[int]:
    models = (Line, Station, StationSignal, Route, Shift, ShiftBreak, WorkOrder, Unit)
    return [m.objects.count() for m in models]


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


def test_seed_demo_declares_the_simulators_auxiliary_signals_with_their_units_and_ranges(
    tmp_path,
):
    _seed(tmp_path)
    for station in Station.objects.all():
        declared = {s.name: (s.unit, s.nominal_min, s.nominal_max) for s in station.signals.all()}
        for auxiliary in AUXILIARY_SIGNALS[station.station_type]:
            assert declared[auxiliary.name] == (auxiliary.unit, auxiliary.low, auxiliary.high)
    spindle = Station.objects.get(code="5").signals.get(name="spindle_temp")
    assert (spindle.unit, spindle.nominal_min, spindle.nominal_max) == ("°C", 20.0, 60.0)
    flow = Station.objects.get(code="10").signals.get(name="fill_flow")
    assert (flow.unit, flow.nominal_min, flow.nominal_max) == ("l/min", 0.0, 20.0)


def test_the_simulator_publishes_only_declared_signals_inside_their_nominal_ranges(tmp_path):
    _seed(tmp_path)
    layout = plant_layout_load()
    config = SimulationConfig(
        seed=7,
        start_ms=1_772_517_600_000,
        rate_hz=5.0,
        batch=50,
        faults=FaultSettings(enabled=False),
    )
    simulation = Simulation(layout, config)
    ranges = {
        (s.station.code, s.name): (s.nominal_min, s.nominal_max)
        for s in StationSignal.objects.select_related("station")
    }
    for spec in layout.stations:  # nothing the simulator adds on its own any more
        names = station_generator(spec, seed=7, rate_hz=5.0).names
        assert sorted(names) == sorted(name for code, name in ranges if code == spec.code)

    checked = 0
    for message in simulation.advance(config.start_ms + 15 * 60 * 1000):
        document = orjson.loads(message.payload)
        for sample in document["samples"]:
            for name, value in sample["signals"].items():
                low, high = ranges[(document["station_id"], name)]
                assert low <= value <= high, (document["station_id"], name, value)
                checked += 1
    assert checked > 12 * 15 * 60 * 5 * 4 * 0.9


def test_a_plant_seeded_before_keeps_its_own_ranges_and_gains_the_missing_signals(tmp_path):
    _seed(tmp_path)
    station = Station.objects.get(code="5")
    station.signals.filter(name="motor_current").update(nominal_min=1.0, nominal_max=25.0)
    station.signals.filter(name="spindle_temp").delete()

    second = _seed(tmp_path)

    assert "1 StationSignal" in second
    current = station.signals.get(name="motor_current")
    assert (current.nominal_min, current.nominal_max) == (1.0, 25.0)
    assert station.signals.filter(name="spindle_temp").exists()


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

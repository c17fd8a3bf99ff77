"""SPC against the real database and NATS: limits computed from stored telemetry by the service
and the `spc_limits` command (audited, announced to the scorers), and a violation found by the
live scorer's `SpcMonitor` raised as a defect alert naming its rule, published through the
outbox and the real relay."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction
from django.urls import reverse

from foresight import registry, spc
from foresight.management.commands.spc_limits import Command as SpcLimitsCommand
from foresight.models import ControlLimits, DefectAlert
from mes import services
from mes.errors import InvalidInput, TransitionRefused
from mes.models import AuditEntry, OutboxMessage
from tests.factories import UnitFactory, UserFactory
from tests.foresight.test_registry import (
    drain,
    kv_entry,
    messages,
    provision,
    unique_station,
)
from tests.foresight.test_training import store_samples

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.UTC)
T0_MS = int(T0.timestamp() * 1000)
STEP_MS = 100
SHARED_DB = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def at(index: int) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=index * STEP_MS)


def torque_baseline(count: int, *, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(120.0, 0.5, count)


def store_torque(station, values: np.ndarray, *, first: int = 0) -> None:
    ts = T0_MS + STEP_MS * (first + np.arange(values.shape[0]))
    angle = np.full(values.shape[0], 30.0)
    store_samples(station.pk, ts, {"torque": values, "angle": angle})


@pytest.fixture
def station():
    return unique_station()


def activate(station, *, subgroup: int = 1, values: np.ndarray | None = None, user=None):
    values = torque_baseline(400) if values is None else values
    limits = spc.compute_limits(values, subgroup)
    row, _ = registry.control_limits_activate(
        station=station,
        signal="torque",
        limits=limits,
        baseline_start=at(0),
        baseline_end=at(values.shape[0] - 1),
        user=user,
    )
    return row


# -- limits: the service ------------------------------------------------------------------------


def test_limits_computed_from_stored_telemetry_become_active_audited_and_announced(station):
    values = torque_baseline(1_000)
    values[::7] = np.nan  # samples without torque are left out
    store_torque(station, values)
    engineer = UserFactory(role="quality_engineer")
    heard: list[tuple[int, int]] = []

    row, new = registry.control_limits_from_baseline(
        station=station,
        signal="torque",
        start=at(0),
        end=at(999),
        subgroup_size=5,
        user=engineer,
        progress=lambda read, total: heard.append((read, total)),
    )

    expected = spc.compute_limits(values, 5)
    assert new
    assert (row.active, row.chart, row.subgroup_size, row.signal) == (True, "xbar_r", 5, "torque")
    assert row.centre == pytest.approx(expected.centre)
    assert (row.ucl, row.lcl) == (pytest.approx(expected.ucl), pytest.approx(expected.lcl))
    assert row.range_ucl == pytest.approx(expected.range_ucl)
    assert (row.baseline_samples, row.baseline_points) == (857, 171)
    assert (row.baseline_start, row.baseline_end) == (at(0), at(999))
    assert row.computed_by == engineer
    assert heard[-1] == (1_000, 1_000)
    entry = AuditEntry.objects.get(model="foresight.controllimits", object_id=str(row.pk))
    assert (entry.action, entry.after["ucl"]) == ("create", row.ucl)
    (event,) = OutboxMessage.objects.filter(
        subject="aegis.foresight.models", station_code=station.code
    )
    assert event.kind == "spc.limits_activated"
    assert (event.payload["limits"], event.payload["signal"]) == (row.pk, "torque")
    assert event.payload["models"]["production"] is None  # the scorers' KV entry is rewritten


def test_new_limits_replace_the_active_ones_and_the_same_baseline_changes_nothing(station):
    store_torque(station, torque_baseline(600))
    first, _ = registry.control_limits_from_baseline(
        station=station, signal="torque", start=at(0), end=at(399)
    )
    again, new_again = registry.control_limits_from_baseline(
        station=station, signal="torque", start=at(0), end=at(399)
    )
    second, new_second = registry.control_limits_from_baseline(
        station=station, signal="torque", start=at(0), end=at(599), subgroup_size=3
    )

    first.refresh_from_db()
    assert (again.pk, new_again) == (first.pk, False)
    assert new_second
    assert (first.active, first.deactivated_at is not None) == (False, True)
    assert registry.control_limits_in_use([station.pk]) == [
        spc.Limits(
            subgroup_size=3,
            centre=second.centre,
            sigma=second.sigma,
            ucl=second.ucl,
            lcl=second.lcl,
            range_centre=second.range_centre,
            range_ucl=second.range_ucl,
            range_lcl=second.range_lcl,
            baseline_samples=600,
            baseline_points=200,
            interval=3,
            id=second.pk,
            station_id=station.pk,
            signal="torque",
        )
    ]
    assert list(
        OutboxMessage.objects.filter(station_code=station.code).values_list("kind", flat=True)
    ) == ["spc.limits_activated", "spc.limits_activated"]
    assert OutboxMessage.objects.filter(station_code=station.code).last().payload["replaced"] == (
        first.pk
    )


def test_stopping_a_signal_deactivates_its_limits_and_a_second_stop_is_refused(station):
    row = activate(station)

    registry.control_limits_deactivate(station=station, signal="torque")

    row.refresh_from_db()
    assert not row.active
    assert registry.control_limits_in_use([station.pk]) == []
    with pytest.raises(TransitionRefused, match="no active control limits"):
        registry.control_limits_deactivate(station=station, signal="torque")


@pytest.mark.parametrize(
    ("arguments", "field", "message"),
    [
        ({"signal": "pressure"}, "signal", "no numeric 'pressure' samples"),
        ({"subgroup_size": 12}, "subgroup_size", "not 12"),
        ({"end": at(10)}, "start", "holds 11 samples; at least 20"),
        ({"subgroup_size": 5, "interval": 4}, "interval", "not every 4"),
        ({"interval": 20}, "start", "holds 10 samples; at least 20"),
        ({"start": at(500), "end": at(10)}, "end", "ends"),
    ],
)
def test_limits_that_cannot_be_computed_are_refused_naming_the_reason(
    station, arguments, field, message
):
    store_torque(station, torque_baseline(200))
    request = {"signal": "torque", "start": at(0), "end": at(199), **arguments}

    with pytest.raises(InvalidInput, match=message) as refused:
        registry.control_limits_from_baseline(station=station, **request)

    assert field in refused.value.fields
    assert not ControlLimits.objects.filter(station=station).exists()


@pytest.mark.parametrize(
    ("fields", "constraint"),
    [
        ({"active": True, "deactivated_at": None}, "foresight_spc_one_active_per_signal"),
        ({"subgroup_size": 1}, "foresight_spc_chart_matches_subgroup"),
        ({"ucl": 0.0}, "foresight_spc_limits_ordered"),
        ({"deactivated_at": None}, "foresight_spc_deactivated_when_inactive"),
        ({"rules": "1,9"}, "foresight_spc_rules_format"),
    ],
)
def test_the_database_refuses_limits_that_break_their_invariants(station, fields, constraint):
    old = activate(station, subgroup=4)
    activate(station, subgroup=4, values=torque_baseline(400, seed=2))
    old.refresh_from_db()

    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        ControlLimits.objects.filter(pk=old.pk).update(**fields)


# -- limits: the command ------------------------------------------------------------------------


def run_command(*arguments: str) -> str:
    out = io.StringIO()
    call_command("spc_limits", *arguments, stdout=out)
    return out.getvalue()


def test_the_command_stores_the_limits_and_reports_them_with_progress(station):
    values = torque_baseline(500)
    values[250] = 135.0  # one baseline sample far outside
    store_torque(station, values)
    period = ("--start", at(0).isoformat(), "--end", at(499).isoformat())

    printed = run_command("--station", station.code, "--signal", "torque", *period)
    repeated = run_command("--station", station.code, "--signal", "torque", *period)

    row = ControlLimits.objects.get(station=station, active=True)
    expected = spc.compute_limits(values, 1)
    assert row.ucl == pytest.approx(expected.ucl)
    assert "100%  500 of 500 samples read" in printed
    assert f"activated limits #{row.pk} of {station.code}.torque (I-MR)" in printed
    assert f"I chart: centre {row.centre:.6g}, UCL {row.ucl:.6g}" in printed
    assert row.baseline_points_outside >= 1
    assert (
        f"{row.baseline_points_outside} of 500 baseline points lie beyond these limits" in printed
    )
    assert "not in control itself" not in printed  # about what chance alone puts there
    assert f"unchanged, already active: limits #{row.pk}" in repeated
    assert AuditEntry.objects.get(
        model="foresight.controllimits", object_id=str(row.pk)
    ).source == ("command")


def test_the_command_warns_of_a_baseline_that_was_not_in_control(station):
    values = torque_baseline(400)
    values[100:140] += 6.0  # forty samples of a shifted process inside the baseline
    store_torque(station, values)

    printed = run_command(
        *("--station", station.code, "--signal", "torque"),
        *("--start", at(0).isoformat(), "--end", at(399).isoformat()),
    )

    assert "the baseline was not in control itself" in printed


def test_the_command_charts_subgroups_and_stops_charting_on_request(station):
    store_torque(station, torque_baseline(500))
    period = ("--start", at(0).isoformat(), "--end", at(499).isoformat())

    printed = run_command(
        "--station",
        station.code,
        "--signal",
        "torque",
        *period,
        "--subgroup",
        "5",
        "--every",
        "10",
        "--rules",
        "6,1,2,5",
    )
    stopped = run_command("--station", station.code, "--signal", "torque", "--deactivate")

    assert (
        "(X̄-R, subgroups of 5, one every 10 samples) from 250 samples, 50 points, rules 1,2,5,6"
        in printed
    )
    stored = ControlLimits.objects.get(station=station)
    assert (stored.rules, stored.interval) == ("1,2,5,6", 10)
    assert "X̄ chart: centre" in printed
    assert "R chart: centre" in printed
    assert "stopped charting" in stopped
    assert not ControlLimits.objects.filter(station=station, active=True).exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--station", "NOPE", "--signal", "torque"), "unknown station 'NOPE'"),
        (("--signal", "torque", "--start", at(0).isoformat()), "--start and --end"),
        (("--signal", "torque", "--start", "yesterday", "--end", "now"), "not an ISO 8601"),
        (("--signal", "torque", "--deactivate"), "no active control limits"),
        (
            (
                "--signal",
                "torque",
                "--rules",
                "1,9",
                "--start",
                "2026-11-23",
                "--end",
                "2026-11-24",
            ),
            "numbers 1 to 8",
        ),
        (
            ("--signal", "torque", "--start", at(0).isoformat(), "--end", at(99).isoformat()),
            "no numeric 'torque' samples",
        ),
    ],
)
def test_the_command_refuses_what_it_cannot_do_with_a_clear_message(station, arguments, message):
    if arguments[0] != "--station":
        arguments = ("--station", station.code, *arguments)

    with pytest.raises(CommandError, match=message):
        run_command(*arguments)


def test_the_command_explains_itself():
    text = " ".join(
        SpcLimitsCommand().create_parser("manage.py", "spc_limits").format_help().split()
    )

    for option in ("--station", "--signal", "--start", "--end", "--subgroup", "--deactivate"):
        assert option in text
    assert "Nelson rule" in text
    assert "I-MR" in text


# -- violations become alerts -------------------------------------------------------------------


def push_spike(monitor: spc.SpcMonitor, station, *, spike_at: int = 60) -> list[spc.Violation]:
    """A calm stretch around 120 N·m with one tightening far above it."""
    torque = np.tile([120.3, 120.8, 120.3, 119.7, 119.2, 119.7], 20)
    torque[spike_at] = 126.0
    ts = T0_MS + STEP_MS * np.arange(torque.shape[0], dtype=np.int64)
    angle = np.full(torque.shape[0], 31.5)
    return monitor.push(station.pk, ts, np.zeros_like(ts), {"torque": torque, "angle": angle})


def test_an_spc_violation_becomes_a_defect_alert_naming_its_rule_and_is_queued_for_nats(station):
    unit = UnitFactory(vin="1HGBH41JXMN100042")
    services.unit_arrive(unit=unit, station=station, at=T0)
    limits = activate(station)
    monitor = spc.SpcMonitor()
    monitor.use(registry.control_limits_in_use())

    violations = push_spike(monitor, station)
    spike = next(v for v in violations if v.chart == "i")
    alert = registry.raise_spc_violation(violation=spike)
    again = registry.raise_spc_violation(violation=spike)

    # The jump up and the jump back are one MR violation: the rule holds at both points.
    assert [(v.chart, v.rule) for v in violations] == [("i", 1), ("mr", 1)]
    assert again.pk == alert.pk
    assert (alert.source, alert.rule, alert.chart, alert.signal) == (
        "spc",
        "nelson_1",
        "i",
        "torque",
    )
    assert alert.control_limits == limits
    assert alert.model_version is None
    assert (alert.score, alert.threshold) == (126.0, pytest.approx(limits.ucl))
    assert alert.ts == at(60)
    assert (alert.vin, alert.unit) == ("1HGBH41JXMN100042", unit)
    assert alert.triggering == {"torque": 126.0, "angle": 31.5}
    assert alert.explanation[0]["feature"] == "torque.i@1"
    assert alert.explanation[0]["z"] == pytest.approx((126.0 - limits.centre) / limits.sigma)
    (queued,) = OutboxMessage.objects.filter(subject=f"aegis.defect.alerts.{station.code}")
    payload = queued.payload
    assert payload["kind"] == "alert.raised"
    assert (payload["source"], payload["rule"], payload["chart"]) == ("spc", "nelson_1", "i")
    assert payload["spc"]["rule"] == 1
    assert payload["spc"]["rule_name"] == "one point beyond 3 sigma"
    assert payload["spc"]["value"] == 126.0
    assert payload["spc"]["ucl"] == pytest.approx(limits.ucl)
    assert payload["spc"]["limits"] == limits.pk
    assert payload["anomaly_score"] == 126.0
    assert payload["trigger_torque_nm"] == 126.0
    assert payload["vin"] == "1HGBH41JXMN100042"


def test_rules_of_one_sample_raise_their_own_alerts_beside_a_model_alert(station):
    limits = activate(station)
    monitor = spc.SpcMonitor()
    monitor.use(registry.control_limits_in_use([station.pk]))
    violations = push_spike(monitor, station)
    at_spike = [v for v in violations if v.ts_ms == T0_MS + 60 * STEP_MS]

    model_alert = registry.raise_alert(station=station, ts=at(60), score=9.0, threshold=5.0)
    spc_alerts = [registry.raise_spc_violation(violation=v) for v in at_spike]

    assert [(a.chart, a.rule) for a in spc_alerts] == [("i", "nelson_1"), ("mr", "nelson_1")]
    assert spc_alerts[1].threshold == pytest.approx(limits.range_ucl)
    assert model_alert.source == "baseline"
    assert model_alert.rule is None
    assert DefectAlert.objects.filter(station=station, ts=at(60)).count() == 3
    payload = registry.alert_payload(model_alert)
    assert (payload["rule"], payload["spc"]) == (None, None)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"source": "spc", "rule": "nelson_9", "chart": "i", "signal": "torque"}, "rule"),
        ({"source": "spc", "rule": "nelson_1", "chart": "p", "signal": "torque"}, "chart"),
        ({"source": "spc", "rule": "nelson_1", "chart": "i", "signal": ""}, "signal"),
        ({"rule": "nelson_1", "chart": "i", "signal": "torque"}, "control_limits"),
        ({"source": "baseline", "rule": "nelson_1"}, "rule"),
        ({"source": "model"}, "model_version"),
        ({"source": "guess"}, "source"),
    ],
)
def test_alerts_whose_source_does_not_match_what_names_it_are_refused(station, arguments, field):
    if "chart" in arguments:
        arguments = {"control_limits": activate(station), **arguments}
        if field == "control_limits":
            del arguments["control_limits"]

    with pytest.raises(InvalidInput) as refused:
        registry.raise_alert(station=station, ts=T0, score=1.0, threshold=1.0, **arguments)

    assert field in refused.value.fields


@pytest.mark.parametrize(
    ("fields", "constraint"),
    [
        ({"rule": None}, "foresight_alert_spc_names_its_rule"),
        ({"rule": "nelson_0"}, "foresight_alert_spc_names_its_rule"),
        ({"source": "baseline"}, "foresight_alert_spc_names_its_rule"),
        ({"control_limits": None}, "foresight_alert_spc_names_its_rule"),
    ],
)
def test_the_database_refuses_spc_alert_rows_that_do_not_name_their_rule(
    station, fields, constraint
):
    monitor = spc.SpcMonitor()
    activate(station)
    monitor.use(registry.control_limits_in_use([station.pk]))
    alert = registry.raise_spc_violation(violation=push_spike(monitor, station)[0])

    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        DefectAlert.objects.filter(pk=alert.pk).update(**fields)


def test_the_admin_lists_limits_and_shows_an_spc_alert_with_its_rule(admin_client, station):
    limits = activate(station)
    monitor = spc.SpcMonitor()
    monitor.use(registry.control_limits_in_use([station.pk]))
    alert = registry.raise_spc_violation(violation=push_spike(monitor, station)[0])

    listing = admin_client.get(reverse("admin:foresight_controllimits_changelist"))
    page = admin_client.get(reverse("admin:foresight_controllimits_change", args=[limits.pk]))
    alert_page = admin_client.get(reverse("admin:foresight_defectalert_change", args=[alert.pk]))
    stopped = admin_client.post(
        reverse("admin:foresight_controllimits_changelist"),
        {"action": "stop_charting", "_selected_action": [limits.pk]},
        follow=True,
    )

    assert listing.status_code == page.status_code == alert_page.status_code == 200
    assert station.code in listing.content.decode()
    assert "alerts raised" in page.content.decode().lower()
    assert "nelson_1" in alert_page.content.decode()
    assert f"1 signal(s) no longer charted: {station.code}.torque" in stopped.content.decode()
    limits.refresh_from_db()
    assert not limits.active


# -- through the real relay and NATS ------------------------------------------------------------


@SHARED_DB
def test_an_spc_alert_and_a_limits_change_are_published_by_the_relay():
    provision()
    station = unique_station()
    limits = activate(station)
    monitor = spc.SpcMonitor()
    monitor.use(registry.control_limits_in_use([station.pk]))
    alert = registry.raise_spc_violation(violation=push_spike(monitor, station)[0])

    relay = drain()

    assert relay.totals.failed == 0
    published = [
        payload
        for _, payload, _ in messages("DEFECT_ALERTS", f"aegis.defect.alerts.{station.code}")
    ]
    assert [(p["alert"], p["source"], p["rule"], p["chart"]) for p in published] == [
        (alert.pk, "spc", "nelson_1", "i")
    ]
    assert published[0]["spc"]["rule_name"] == "one point beyond 3 sigma"
    events = [
        payload
        for _, payload, _ in messages("FORESIGHT_MODELS", "aegis.foresight.models")
        if payload["station"] == station.code
    ]
    assert [(e["kind"], e["limits"]) for e in events] == [("spc.limits_activated", limits.pk)]
    entry = kv_entry("foresight_models", station.code)
    assert entry is not None
    assert entry["outbox_id"] == OutboxMessage.objects.get(kind="spc.limits_activated").pk

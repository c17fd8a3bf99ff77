"""Defect alerts: raised once per triggering sample with what the MES knew at that instant,
published through the real relay on aegis.defect.alerts.<station>; listed, acknowledged and
resolved with feedback over /api/v1/foresight/alerts by the roles allowed to."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from foresight import registry
from foresight.models import AlertStatus, DefectAlert
from mes import services
from mes.errors import InvalidInput, TransitionRefused
from mes.models import AuditEntry, OutboxMessage, vin_check_digit
from tests.factories import UnitFactory, UserFactory, WorkOrderFactory
from tests.foresight.test_registry import (
    SHARED_DB,
    T0,
    drain,
    messages,
    provision,
    register,
    unique_station,
)

pytestmark = pytest.mark.django_db

VIN = "1HGBH41JXMN109186"
_vins = itertools.count(200_000)


def make_vin() -> str:
    vin = f"1HGBH41J0MN{next(_vins):06d}"
    return vin[:8] + vin_check_digit(vin) + vin[9:]


EXPLANATION = [
    {"feature": "torque.mean@20", "signal": "torque", "value": 51.2, "z": 6.8, "share": 0.71},
    {"feature": "torque.slope@100", "signal": "torque", "value": 0.09, "z": 3.1, "share": 0.15},
]


class Floor:
    """A station with a unit (VIN, work order) that arrived at T0 after an EPS flash."""

    def __init__(self, vin: str = VIN) -> None:
        self.station = unique_station()
        self.work_order = WorkOrderFactory(line=self.station.line)
        self.vin = vin
        self.unit = UnitFactory(work_order=self.work_order, vin=vin)
        services.firmware_flash(unit=self.unit, component="EPS", version="4.2.0", at=T0)
        services.firmware_flash(
            unit=self.unit, component="EPS", version="4.2.1", at=T0 + dt.timedelta(seconds=1)
        )
        services.unit_arrive(unit=self.unit, station=self.station, at=T0 + dt.timedelta(seconds=5))
        services.unit_leave(unit=self.unit, station=self.station, at=T0 + dt.timedelta(minutes=2))

    def alert(self, seconds: float = 30, **fields) -> DefectAlert:
        values = {
            "station": self.station,
            "ts": T0 + dt.timedelta(seconds=seconds),
            "score": 2.4,
            "threshold": 1.0,
            "triggering": {"torque": 51.2, "angle": 31.0, "current": float("nan")},
            "explanation": EXPLANATION,
        }
        values.update(fields)
        return registry.raise_alert(**values)


@pytest.fixture
def floor() -> Floor:
    return Floor()


# -- raising -----------------------------------------------------------------------------------


def test_an_alert_carries_the_unit_vin_work_order_and_firmware_at_its_instant(floor):
    model = register(floor.station)
    registry.promote(version=model, to="production")

    alert = floor.alert(model_version=model)

    assert alert.unit == floor.unit
    assert alert.vin == VIN
    assert alert.work_order == floor.work_order
    assert alert.firmware == {"EPS": "4.2.1"}
    assert (alert.source, alert.model_version, alert.status) == ("model", model, "open")
    assert alert.triggering == {"torque": 51.2, "angle": 31.0, "current": None}
    assert alert.explanation == EXPLANATION
    entry = AuditEntry.objects.get(model="foresight.defectalert")
    assert entry.action == "create"


def test_an_alert_after_the_unit_left_names_no_unit(floor):
    alert = floor.alert(seconds=600)

    assert (alert.unit, alert.vin, alert.work_order, alert.firmware) == (None, "", None, {})
    assert alert.source == "baseline"


def test_raising_the_same_sample_again_returns_the_first_alert_and_publishes_once(floor):
    first = floor.alert(seq=3)
    again = floor.alert(seq=3, score=9.9)

    assert again.pk == first.pk
    assert again.score == 2.4
    assert DefectAlert.objects.count() == 1
    rows = OutboxMessage.objects.filter(subject=f"aegis.defect.alerts.{floor.station.code}")
    assert rows.count() == 1
    payload = rows.get().payload
    assert payload["kind"] == "alert.raised"
    assert payload["station_id"] == floor.station.code
    assert payload["anomaly_score"] == 2.4
    assert payload["trigger_torque_nm"] == 51.2
    assert payload["timestamp"] == int((T0 + dt.timedelta(seconds=30)).timestamp() * 1000)
    assert (payload["vin"], payload["work_order"]) == (VIN, floor.work_order.external_id)
    assert payload["firmware"] == {"EPS": "4.2.1"}
    assert payload["explanation"] == EXPLANATION
    assert (payload["model_version"], payload["threshold"]) == (None, 1.0)


def test_a_score_that_is_not_a_number_is_refused(floor):
    with pytest.raises(InvalidInput) as refused:
        floor.alert(score=float("nan"))
    assert "score" in refused.value.fields


@SHARED_DB
def test_the_relay_publishes_a_raised_alert_on_the_stations_alert_subject():
    provision()
    floor = Floor()
    alert = floor.alert()

    drain()

    published = messages("DEFECT_ALERTS", f"aegis.defect.alerts.{floor.station.code}")
    assert len(published) == 1
    _, payload, headers = published[0]
    assert payload["alert"] == alert.pk
    assert payload["vin"] == VIN
    assert payload["explanation"][0]["feature"] == "torque.mean@20"
    row = OutboxMessage.objects.get(subject=f"aegis.defect.alerts.{floor.station.code}")
    assert headers["Nats-Msg-Id"] == f"aegis-outbox-{row.id}"
    assert row.published_at is not None


# -- the services --------------------------------------------------------------------------------


def test_resolving_an_open_alert_acknowledges_it_too_and_keeps_both_notes(floor):
    supervisor = UserFactory(role="supervisor")
    alert = floor.alert()
    registry.acknowledge(alert=alert, user=supervisor, note="checking the nutrunner")

    resolved = registry.resolve(
        alert=alert, feedback="true_defect", note="loose bolt confirmed", user=supervisor
    )

    assert resolved.status == AlertStatus.RESOLVED
    assert resolved.feedback == "true_defect"
    assert resolved.note == "checking the nutrunner\nloose bolt confirmed"
    direct = registry.resolve(alert=floor.alert(seconds=31), feedback="false_alarm")
    assert direct.acknowledged_at == direct.resolved_at
    with pytest.raises(TransitionRefused):
        registry.acknowledge(alert=direct)
    with pytest.raises(TransitionRefused, match="resolved already"):
        registry.resolve(alert=direct, feedback="true_defect")


# -- the API -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["operator", "supervisor", "quality_engineer", "admin"])
def test_shop_floor_and_quality_roles_acknowledge_alerts(api_as, floor, role):
    alert = floor.alert()
    client = api_as(role)

    response = client.post(
        f"/api/v1/foresight/alerts/{alert.pk}/acknowledge", {"note": "on it"}, format="json"
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["status"], body["acknowledged_by"], body["note"]) == (
        "acknowledged",
        client.user.username,
        "on it",
    )
    entry = AuditEntry.objects.get(model="foresight.defectalert", action="update")
    assert (entry.source, entry.actor) == ("api", client.user)
    again = client.post(f"/api/v1/foresight/alerts/{alert.pk}/acknowledge", {})
    assert again.status_code == 409


@pytest.mark.parametrize("role", ["ml_engineer", "integrator", None])
def test_other_roles_cannot_acknowledge(api_as, floor, role):
    alert = floor.alert()

    response = api_as(role).post(f"/api/v1/foresight/alerts/{alert.pk}/acknowledge", {})

    assert response.status_code == 403
    alert.refresh_from_db()
    assert alert.status == "open"


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("supervisor", True),
        ("quality_engineer", True),
        ("admin", True),
        ("operator", False),
        ("ml_engineer", False),
        ("integrator", False),
    ],
)
def test_only_supervisors_quality_engineers_and_admins_resolve(api_as, floor, role, allowed):
    alert = floor.alert()

    response = api_as(role).post(
        f"/api/v1/foresight/alerts/{alert.pk}/resolve",
        {"feedback": "false_alarm", "note": "sensor glitch"},
        format="json",
    )

    alert.refresh_from_db()
    if allowed:
        assert response.status_code == 200, response.json()
        assert response.json()["feedback"] == "false_alarm"
        assert (alert.status, alert.feedback) == ("resolved", "false_alarm")
    else:
        assert response.status_code == 403
        assert (alert.status, alert.feedback) == ("open", "")


def test_anonymous_callers_are_401(floor):
    alert = floor.alert()
    client = APIClient()

    assert client.get("/api/v1/foresight/alerts/").status_code == 401
    assert client.post(f"/api/v1/foresight/alerts/{alert.pk}/acknowledge", {}).status_code == 401
    resolve = client.post(
        f"/api/v1/foresight/alerts/{alert.pk}/resolve", {"feedback": "true_defect"}
    )
    assert resolve.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "feedback"),
        ({"feedback": "maybe"}, "feedback"),
        ({"feedback": "true_defect", "note": "x" * 2001}, "note"),
    ],
)
def test_a_malformed_resolution_is_400_naming_the_field(api_as, floor, body, field):
    alert = floor.alert()

    response = api_as("quality_engineer").post(
        f"/api/v1/foresight/alerts/{alert.pk}/resolve", body, format="json"
    )

    assert response.status_code == 400
    assert field in response.json()["fields"]
    alert.refresh_from_db()
    assert alert.status == "open"


def test_unknown_alerts_are_404(api_as):
    client = api_as("supervisor")
    assert client.post("/api/v1/foresight/alerts/999999/acknowledge", {}).status_code == 404
    assert client.post("/api/v1/foresight/alerts/x/resolve", {}).status_code == 404
    assert client.get("/api/v1/foresight/alerts/999999/").status_code == 404


def test_alerts_filter_by_status_station_line_and_since(api_as, floor):
    older = floor.alert(seconds=10)
    newer = floor.alert(seconds=40)
    registry.acknowledge(alert=older)
    elsewhere = Floor(vin=make_vin())
    other = elsewhere.alert(seconds=50)
    reader = api_as("integrator")

    def ids(**params) -> list[int]:
        response = reader.get("/api/v1/foresight/alerts/", params)
        assert response.status_code == 200, response.json()
        return [row["id"] for row in response.json()["results"]]

    assert ids(station=floor.station.code) == [newer.pk, older.pk]  # newest first
    assert ids(status="open") == [other.pk, newer.pk]
    assert ids(status=["open", "acknowledged"], line=floor.station.line_id) == [
        newer.pk,
        older.pk,
    ]
    since = (T0 + dt.timedelta(seconds=40)).isoformat()
    assert ids(since=since) == [other.pk, newer.pk]
    assert ids(vin=elsewhere.vin) == [other.pk]
    assert reader.get("/api/v1/foresight/alerts/", {"since": "soon"}).status_code == 400


def test_an_alert_reads_with_its_explanation(api_as, floor):
    alert = floor.alert()

    body = api_as("operator").get(f"/api/v1/foresight/alerts/{alert.pk}/").json()

    assert body["station"] == floor.station.code
    assert body["unit"] == floor.unit.serial
    assert body["vin"] == VIN
    assert body["work_order"] == floor.work_order.external_id
    assert body["firmware"] == {"EPS": "4.2.1"}
    assert body["triggering"]["torque"] == 51.2
    assert body["explanation"] == EXPLANATION
    assert body["model_version"] is None
    assert body["source"] == "baseline"


# -- admin ---------------------------------------------------------------------------------------


def test_admin_actions_acknowledge_and_resolve_alerts_audited_as_admin(
    admin_client, admin_user, floor
):
    first, second = floor.alert(seconds=10), floor.alert(seconds=20)
    url = reverse("admin:foresight_defectalert_changelist")

    admin_client.post(url, {"action": "acknowledge", "_selected_action": [first.pk]}, follow=True)
    response = admin_client.post(
        url,
        {"action": "resolve_false_alarm", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )

    assert "2 alert(s) resolved as false alarm" in response.content.decode()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.feedback, first.acknowledged_by) == (
        "resolved",
        "false_alarm",
        admin_user,
    )
    assert second.acknowledged_at == second.resolved_at
    entries = AuditEntry.objects.filter(model="foresight.defectalert", action="update")
    assert set(entries.values_list("source", flat=True)) == {"admin"}
    assert entries.count() == 3


def test_admin_alert_pages_show_the_explanation(admin_client, floor):
    alert = floor.alert()

    changelist = admin_client.get(reverse("admin:foresight_defectalert_changelist"))
    page = admin_client.get(reverse("admin:foresight_defectalert_change", args=[alert.pk]))

    assert changelist.status_code == 200
    assert page.status_code == 200
    assert "torque.mean@20: value 51.2, z 6.8, share 0.71" in page.content.decode()

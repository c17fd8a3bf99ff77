"""The original Aegis payload {"station_id", "vin", "firmware"} puts the unit at the station
with that firmware, signed with the current or the previous secret, recorded as the webhook."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from mes import services
from mes.models import AuditEntry, FirmwareFlash, OutboxMessage, StationVisit, WebhookInboxEvent
from mes.webhooks.events import derived_event_id
from tests.mes.webhooks.conftest import PREVIOUS_SECRET, SECRET, VIN

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.mes.webhooks.urls")]

ORIGINAL = {"station_id": "5", "vin": VIN, "firmware": "v2.1.4"}


@pytest.mark.parametrize("secret", [SECRET, PREVIOUS_SECRET], ids=["current", "previous"])
def test_original_payload_puts_unit_at_station_with_firmware(send, plant, integrator, secret):
    response = send(ORIGINAL, secret=secret)

    assert response.status_code == 200, response.content
    visit = StationVisit.objects.get(unit=plant.unit)
    assert visit.station == plant.station
    assert visit.left_at is None
    flash = FirmwareFlash.objects.get(unit=plant.unit)
    assert (flash.component, flash.version, flash.station) == ("MAIN", "v2.1.4", plant.station)
    entries = AuditEntry.objects.filter(source="webhook")
    assert {entry.model for entry in entries} == {"mes.stationvisit", "mes.firmwareflash"}
    assert {entry.actor_id for entry in entries} == {integrator.pk}
    assert set(OutboxMessage.objects.values_list("kind", flat=True)) == {
        "visit.started",
        "firmware.flashed",
    }
    body = response.json()
    assert body["event_id"] == derived_event_id(json.dumps(ORIGINAL).encode())
    assert body["result"] == {
        "station_id": "5",
        "unit": "SEDAN-100005",
        "vin": VIN,
        "visit": visit.pk,
        "arrived": True,
        "firmware": {"component": "MAIN", "version": "v2.1.4", "flashed": True},
    }
    inbox = WebhookInboxEvent.objects.get()
    assert (inbox.event_type, inbox.response_status, inbox.payload) == (
        "station_state",
        200,
        ORIGINAL,
    )


def test_station_id_may_be_a_number_and_vin_lower_case(send, plant):
    response = send({"station_id": 5, "vin": VIN.lower()})

    assert response.status_code == 200, response.content
    assert StationVisit.objects.get(unit=plant.unit).station == plant.station


def test_unit_may_be_named_by_serial(send, plant):
    response = send({"station_id": "5", "serial": "SEDAN-100005", "event_id": "s-1"})

    assert response.status_code == 200, response.content
    assert StationVisit.objects.get(unit=plant.unit).station == plant.station


def test_a_state_the_mes_already_has_changes_nothing(send, plant):
    at = dt.datetime(2026, 4, 27, 7, 22, 47, tzinfo=dt.UTC)
    services.unit_arrive(unit=plant.unit, station=plant.station, at=at)
    services.firmware_flash(unit=plant.unit, component="MAIN", version="v2.1.4", at=at)
    before = (StationVisit.objects.count(), FirmwareFlash.objects.count())

    response = send({**ORIGINAL, "event_id": "resend-1"})

    assert response.status_code == 200, response.content
    assert response.json()["result"]["arrived"] is False
    assert response.json()["result"]["firmware"]["flashed"] is False
    assert (StationVisit.objects.count(), FirmwareFlash.objects.count()) == before


def test_new_firmware_and_next_station_are_recorded_as_changes(send, plant):
    send({**ORIGINAL, "event_id": "e-1", "at": "2026-04-27T09:00:00+02:00"})

    response = send(
        {
            "event_id": "e-2",
            "station_id": "6",
            "vin": VIN,
            "firmware": "v2.2.0",
            "component": "EPS",
            "at": 1777273500000,  # 2026-04-27T07:05:00Z in epoch milliseconds
        }
    )

    assert response.status_code == 200, response.content
    first, second = StationVisit.objects.order_by("arrived_at")
    assert first.station.code == "5"
    assert first.left_at == second.arrived_at == dt.datetime(2026, 4, 27, 7, 5, tzinfo=dt.UTC)
    assert second.station.code == "6"
    assert list(FirmwareFlash.objects.values_list("component", "version")) == [
        ("MAIN", "v2.1.4"),
        ("EPS", "v2.2.0"),
    ]


def test_event_id_header_names_an_original_payload(send, plant):
    response = send(ORIGINAL, headers={"X-Aegis-Event-Id": "legacy-42"})

    assert response.status_code == 200, response.content
    assert response.json()["event_id"] == "legacy-42"
    assert WebhookInboxEvent.objects.get().event_id == "legacy-42"

"""An event id is applied once per integration: a repeat answers the first response, marked
as a replay, and changes nothing; concurrent repeats are settled by the inbox's unique key."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connection
from django.test import Client

from mes.models import (
    AuditEntry,
    OutboxMessage,
    StationVisit,
    WebhookInboxEvent,
    WebhookIntegration,
)
from tests.factories import UserFactory
from tests.mes.webhooks.conftest import PREVIOUS_SECRET, URL, VIN, signed_headers

ORIGINAL = {"station_id": "5", "vin": VIN, "firmware": "v2.1.4"}
ARRIVAL = {"event_id": "arr-1", "type": "unit.arrived", "station_id": "5", "vin": VIN}


@pytest.mark.django_db
@pytest.mark.urls("tests.mes.webhooks.urls")
def test_repeated_event_returns_first_response_and_changes_nothing(send, plant):
    first = send(ARRIVAL)
    writes = (
        StationVisit.objects.count(),
        AuditEntry.objects.count(),
        OutboxMessage.objects.count(),
    )

    # A retry signed later (and with the previous secret) is still the same event.
    again = send(ARRIVAL, secret=PREVIOUS_SECRET, timestamp=int(time.time()) + 5)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert first.get("X-Aegis-Idempotent-Replay") is None
    assert again["X-Aegis-Idempotent-Replay"] == "true"
    assert (
        (
            StationVisit.objects.count(),
            AuditEntry.objects.count(),
            OutboxMessage.objects.count(),
        )
        == writes
        == (1, 1, 1)
    )
    assert WebhookInboxEvent.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.urls("tests.mes.webhooks.urls")
def test_original_payload_sent_twice_is_one_event(send, plant):
    first = send(ORIGINAL)
    again = send(ORIGINAL)

    assert again["X-Aegis-Idempotent-Replay"] == "true"
    assert again.json() == first.json()
    assert WebhookInboxEvent.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.urls("tests.mes.webhooks.urls")
def test_reused_event_id_with_another_payload_keeps_the_first_result(send, plant):
    first = send(ARRIVAL)
    again = send({**ARRIVAL, "station_id": "6"})

    assert again.json() == first.json()
    assert again["X-Aegis-Idempotent-Replay"] == "true"
    assert StationVisit.objects.get().station.code == "5"


@pytest.mark.django_db
@pytest.mark.urls("tests.mes.webhooks.urls")
def test_event_ids_are_per_integration(send, plant, integration):
    WebhookIntegration.objects.create(
        name="second-mes", user=UserFactory(role="integrator"), secret="s" * 64
    )
    send(ARRIVAL)
    response = send(
        {**ARRIVAL, "type": "unit.left", "at": None}, integration="second-mes", secret="s" * 64
    )

    assert response.status_code == 200, response.content
    assert response.get("X-Aegis-Idempotent-Replay") is None
    assert WebhookInboxEvent.objects.count() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.urls("tests.mes.webhooks.urls")
def test_concurrent_duplicates_apply_once(plant, integration):
    body = json.dumps(ARRIVAL).encode()
    senders = 6
    start = threading.Barrier(senders)
    responses = []

    def deliver() -> None:
        try:
            start.wait()
            response = Client().post(
                URL, data=body, content_type="application/json", headers=signed_headers(body)
            )
            responses.append(response)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(responses) == senders
    assert {response.status_code for response in responses} == {201}
    assert len({json.dumps(response.json(), sort_keys=True) for response in responses}) == 1
    replays = [r for r in responses if r.get("X-Aegis-Idempotent-Replay") == "true"]
    assert len(replays) == senders - 1
    assert StationVisit.objects.count() == 1
    assert AuditEntry.objects.filter(model="mes.stationvisit").count() == 1
    assert WebhookInboxEvent.objects.count() == 1

"""A legacy-MES integration, a line with a station "5" and a unit with a valid VIN, and a
client that signs what it posts the way docs/webhooks.md tells senders to."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

from mes.demo import demo_vin
from mes.models import (
    AuditEntry,
    DowntimeEvent,
    FirmwareFlash,
    OutboxMessage,
    ProductionCount,
    QualityEvent,
    Station,
    StationVisit,
    Unit,
    WebhookInboxEvent,
    WebhookIntegration,
    WorkOrder,
)
from mes.webhooks.signing import sign
from tests.factories import RouteOperationFactory, UnitFactory, UserFactory, WorkOrderFactory

URL = "/api/v1/webhooks/mes"
SECRET = "3f1c9a7e5b2d4c6a8e0f1b3d5c7a9e1f3b5d7c9a1e3f5b7d9c1a3e5f7b9d1c3a"
PREVIOUS_SECRET = "0a2b4c6d8e0f1a3b5c7d9e1f0a2b4c6d8e0f1a3b5c7d9e1f0a2b4c6d8e0f1a3b"
VIN = demo_vin("1HG", 100005)  # 1HGBH41J1MN100005: the original payload's VIN, check digit fixed


@dataclass
class Plant:
    station: Station
    other_station: Station
    work_order: WorkOrder
    unit: Unit


@pytest.fixture
def integrator(db):
    return UserFactory(username="legacy-mes-account", role="integrator")


@pytest.fixture
def integration(integrator) -> WebhookIntegration:
    return WebhookIntegration.objects.create(
        name="legacy-mes", user=integrator, secret=SECRET, previous_secret=PREVIOUS_SECRET
    )


@pytest.fixture
def plant(db) -> Plant:
    operation = RouteOperationFactory(station__code="5")
    route = operation.route
    other = RouteOperationFactory(route=route, station__code="6").station
    work_order = WorkOrderFactory(product=route.product, line=route.line, external_id="WO-4711")
    unit = UnitFactory(work_order=work_order, serial="SEDAN-100005", vin=VIN)
    return Plant(station=operation.station, other_station=other, work_order=work_order, unit=unit)


def signed_headers(
    body: bytes,
    *,
    secret: str = SECRET,
    timestamp: int | str | None = None,
    integration: str = "legacy-mes",
) -> dict[str, str]:
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-Aegis-Integration": integration,
        "X-Aegis-Timestamp": timestamp,
        "X-Aegis-Signature": sign(secret, timestamp, body),
    }


@pytest.fixture
def send(client, integration):
    """POST a payload (dict) or raw bytes, signed unless told otherwise."""

    def send(payload=None, *, body: bytes | None = None, headers=None, drop=(), **signing):
        raw = body if body is not None else json.dumps(payload).encode()
        sent = {**signed_headers(raw, **signing), **(headers or {})}
        for name in drop:
            sent.pop(name)
        return client.post(URL, data=raw, content_type="application/json", headers=sent)

    return send


WRITTEN_MODELS = (
    WebhookInboxEvent,
    StationVisit,
    FirmwareFlash,
    WorkOrder,
    Unit,
    ProductionCount,
    DowntimeEvent,
    QualityEvent,
    AuditEntry,
    OutboxMessage,
)


def written() -> dict[str, int]:
    """Rows of everything a webhook could write: inbox, MES facts, audit trail, outbox."""
    return {model.__name__: model.objects.count() for model in WRITTEN_MODELS}

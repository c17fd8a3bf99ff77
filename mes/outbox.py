"""The transactional outbox: MES state changes for the telemetry join, written with the change.

`outbox_enqueue` runs inside the service's transaction, so a state change and its message are
committed together or not at all. `manage.py outbox_relay` publishes them to
`aegis.mes.state.<station>` in commit order per station, with retries while NATS is away.

Foresight publishes through the same outbox (foresight/registry.py), on its own subjects:
registry events on `aegis.foresight.models`, which the relay also mirrors into the scorers' KV
bucket `foresight_models` (key: station code), and defect alerts on
`aegis.defect.alerts.<station>`.
"""

from __future__ import annotations

from mes.models import OutboxMessage, Station

SUBJECT_PREFIX = "aegis.mes.state"
REGISTRY_SUBJECT = "aegis.foresight.models"
REGISTRY_BUCKET = "foresight_models"
ALERT_SUBJECT_PREFIX = "aegis.defect.alerts"


def outbox_enqueue(
    *, station: Station, kind: str, payload: dict, subject: str | None = None
) -> OutboxMessage:
    """Queue `payload` for publication after commit: on the station's MES-state subject, or on
    `subject` (rows of one subject are published in commit order)."""
    return OutboxMessage.objects.create(
        station_code=station.code,
        subject=subject or f"{SUBJECT_PREFIX}.{station.code}",
        kind=kind,
        payload={"kind": kind, "station": station.code, **payload},
    )

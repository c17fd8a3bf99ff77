"""The transactional outbox: MES state changes for the telemetry join, written with the change.

`outbox_enqueue` runs inside the service's transaction, so a state change and its message are
committed together or not at all. `manage.py outbox_relay` publishes them to
`aegis.mes.state.<station>` in commit order per station, with retries while NATS is away.
"""

from __future__ import annotations

from mes.models import OutboxMessage, Station

SUBJECT_PREFIX = "aegis.mes.state"


def outbox_enqueue(*, station: Station, kind: str, payload: dict) -> OutboxMessage:
    return OutboxMessage.objects.create(
        station_code=station.code,
        subject=f"{SUBJECT_PREFIX}.{station.code}",
        kind=kind,
        payload={"kind": kind, "station": station.code, **payload},
    )

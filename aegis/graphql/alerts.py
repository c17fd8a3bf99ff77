"""Defect alerts over GraphQL: acknowledging and resolving them (the REST API's services and
permissions, foresight/registry.py), and the `alerts` subscription.

The subscription joins the Channels group the scorer pushes each new alert to (station.<code>,
line.<id> or plant; foresight/scorer.py) through the Redis channel layer, as the /ws/events/
socket does, and yields the alert as stored, so a subscriber sees the same fields a query does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from channels.db import database_sync_to_async
from graphql import GraphQLError
from strawberry.types import Info
from strawberry_django.optimizer import optimize

from aegis.graphql.filters import no_nul
from aegis.graphql.permissions import ROOT_PERMISSIONS, check, mes_error
from aegis.graphql.types import AlertFeedback, DefectAlertType
from aegis.realtime import PLANT_GROUP
from foresight import registry
from foresight.models import DefectAlert
from mes.audit import audit_context
from mes.errors import InvalidInput, MesError, UnknownReference
from mes.models import Line, Station

AUDIT_SOURCE = "graphql"
ALERT_EVENT = "defect.alert"


def _alert_id(alert_id: strawberry.ID) -> int:
    try:
        return int(alert_id)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(
            "an alert id is a whole number", fields={"id": ["not a number"]}
        ) from None


def alert_by_id(info: Info, alert_id: strawberry.ID) -> DefectAlert | None:
    return optimize(DefectAlert.objects.filter(pk=_alert_id(alert_id)), info).first()


def _existing_alert(alert_id: strawberry.ID) -> DefectAlert:
    alert = DefectAlert.objects.filter(pk=_alert_id(alert_id)).first()
    if alert is None:
        raise GraphQLError(f"no alert {alert_id}", extensions={"code": "NOT_FOUND"})
    return alert


def acknowledge(*, info: Info, alert_id: strawberry.ID, note: str) -> DefectAlert:
    alert = _existing_alert(alert_id)
    user = info.context.user
    with audit_context(user=user, source=AUDIT_SOURCE):
        registry.acknowledge(alert=alert, user=user, note=note)
    return alert_by_id(info, alert_id)


def resolve(*, info: Info, alert_id: strawberry.ID, feedback: AlertFeedback, note: str):
    alert = _existing_alert(alert_id)
    user = info.context.user
    with audit_context(user=user, source=AUDIT_SOURCE):
        registry.resolve(alert=alert, feedback=feedback.value, note=note, user=user)
    return alert_by_id(info, alert_id)


# -- the subscription -------------------------------------------------------------------------


def alert_group(station: str | None, line: strawberry.ID | None) -> str:
    """The Channels group carrying the alerts asked for; unknown stations and lines refused."""
    if station is not None:
        found = Station.objects.filter(code=no_nul(station)).first()
        if found is None:
            raise UnknownReference(f"no station {station!r}", fields={"station": ["unknown"]})
        if line is not None and str(found.line_id) != str(line):
            raise InvalidInput("the station is not on that line", fields={"line": ["not its"]})
        return f"station.{found.code}"
    if line is not None:
        if not str(line).isdigit() or not Line.objects.filter(pk=int(line)).exists():
            raise UnknownReference(f"no line {line!r}", fields={"line": ["unknown"]})
        return f"line.{int(line)}"
    return PLANT_GROUP


async def alert_stream(
    info: Info, station: str | None, line: strawberry.ID | None
) -> AsyncGenerator[DefectAlert, None]:
    check(info.context, ROOT_PERMISSIONS["Subscription.alerts"])
    if info.context.ws is None:
        raise GraphQLError("subscribe over the websocket at /graphql", extensions={"code": "WS"})
    try:
        group = await database_sync_to_async(alert_group)(station, line)
    except MesError as error:  # raised while streaming, past the gate that maps resolvers'
        raise mes_error(error) from error
    load = database_sync_to_async(alert_by_id)
    async with info.context.ws.listen_to_channel("plant.event", groups=[group]) as messages:
        async for message in messages:
            event = message.get("event") or {}
            if event.get("type") != ALERT_EVENT or event.get("alert") is None:
                continue
            alert = await load(info, event["alert"])
            if alert is not None:  # a push for a rolled-back alert has nothing to show
                yield alert


__all__ = ["DefectAlertType", "acknowledge", "alert_by_id", "alert_stream", "resolve"]

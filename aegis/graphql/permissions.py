"""Who may read what: every root field needs a signed-in user holding the permission the REST
API asks for the same data, and every field returning a plant object needs that object's
`view_*` permission, so no nesting reaches around a role's limits.

A root field missing from ROOT_PERMISSIONS is refused to everybody: a new field cannot be
published unguarded by forgetting it here (a test checks that every root field is listed).
Refusals are GraphQL errors with `extensions.code` UNAUTHENTICATED (HTTP would say 401) or
FORBIDDEN (403); the refused field is null and nothing of it is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from graphql import GraphQLError, get_named_type
from strawberry.execution.is_awaitable import optimized_is_awaitable
from strawberry.extensions import SchemaExtension

from mes.errors import MesError

UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"

# Telemetry is a station's signals joined with the unit that was there (VIN, work order,
# firmware): reading it takes both (the REST API has no telemetry list of its own).
TELEMETRY = ("mes.view_station", "mes.view_unit")

ROOT_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "Query.plant": ("mes.view_site",),
    "Query.stations": ("mes.view_station",),
    "Query.station": ("mes.view_station",),
    "Query.workOrders": ("mes.view_workorder",),
    "Query.workOrder": ("mes.view_workorder",),
    "Query.units": ("mes.view_unit",),
    "Query.unit": ("mes.view_unit",),
    "Query.telemetry": TELEMETRY,
    "Query.telemetryBuckets": TELEMETRY,
    "Query.alerts": ("foresight.view_defectalert",),
    "Query.alert": ("foresight.view_defectalert",),
    "Query.models": ("foresight.view_modelversion",),
    "Query.model": ("foresight.view_modelversion",),
    "Query.oee": ("mes.view_oee",),
    "Query.oeePerShift": ("mes.view_oee",),
    "Query.oeePerDay": ("mes.view_oee",),
    "Query.downtimePareto": ("mes.view_oee",),
    "Mutation.acknowledgeAlert": ("foresight.acknowledge_defectalert",),
    "Mutation.resolveAlert": ("foresight.resolve_defectalert",),
    "Subscription.alerts": ("foresight.view_defectalert",),
}
ROOT_TYPES = frozenset({"Query", "Mutation", "Subscription"})

# The permission to read each plant object wherever it appears in a result.
TYPE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "Site": ("mes.view_site",),
    "Area": ("mes.view_area",),
    "Line": ("mes.view_line",),
    "Station": ("mes.view_station",),
    "StationSignal": ("mes.view_stationsignal",),
    "Product": ("mes.view_product",),
    "WorkOrder": ("mes.view_workorder",),
    "Unit": ("mes.view_unit",),
    "StationVisit": ("mes.view_stationvisit",),
    "FirmwareFlash": ("mes.view_firmwareflash",),
    "QualityEvent": ("mes.view_qualityevent",),
    "DefectCode": ("mes.view_defectcode",),
    "DefectAlert": ("foresight.view_defectalert",),
    "ModelVersion": ("foresight.view_modelversion",),
}
# What an unlisted root field needs: a permission nobody holds.
NOT_LISTED: tuple[str, ...] = ("aegis.graphql.unlisted_field",)


def unauthenticated() -> GraphQLError:
    return GraphQLError(
        "Sign in, or send 'Authorization: Bearer <token>' (POST /api/v1/auth/token).",
        extensions={"code": UNAUTHENTICATED},
    )


def forbidden(permissions: tuple[str, ...]) -> GraphQLError:
    return GraphQLError(
        "Your role lacks the permission " + " and ".join(permissions) + ".",
        extensions={"code": FORBIDDEN},
    )


def mes_error(error: MesError) -> GraphQLError:
    """A service's or selector's refusal, with its code and the fields at fault."""
    extensions: dict[str, Any] = {"code": error.code.upper(), "status": error.status}
    if error.fields:
        extensions["fields"] = error.fields
    return GraphQLError(error.detail, extensions=extensions, original_error=error)


def check(context, permissions: tuple[str, ...]) -> None:
    """Raise the refusal a caller without `permissions` gets."""
    if not context.authenticated:
        raise unauthenticated()
    if not context.allowed(permissions):
        raise forbidden(permissions)


class PermissionGate(SchemaExtension):
    """Checks every root field and every field returning a plant object before it resolves,
    and turns a MesError raised while resolving into a GraphQL error with its code."""

    # (parent type, field) -> permissions needed; () when the field needs none of its own.
    _needed: ClassVar[dict[tuple[str, str], tuple[str, ...]]] = {}

    def _permissions(self, info) -> tuple[str, ...]:
        key = (info.parent_type.name, info.field_name)
        needed = self._needed.get(key)
        if needed is None:
            if key[1].startswith("__"):
                needed = ()  # introspection: the view admits only signed-in callers
            elif key[0] in ROOT_TYPES:
                needed = ROOT_PERMISSIONS.get(f"{key[0]}.{key[1]}", NOT_LISTED)
            else:
                needed = TYPE_PERMISSIONS.get(get_named_type(info.return_type).name, ())
            self._needed[key] = needed
        return needed

    def resolve(self, _next: Callable, root, info, *args, **kwargs) -> Any:
        needed = self._permissions(info)
        if needed:
            check(info.context, needed)
            if info.context.ws is not None and info.parent_type.name in ("Query", "Mutation"):
                # Resolvers of queries and mutations run the ORM synchronously: over HTTP.
                raise GraphQLError(
                    "Over the websocket only subscriptions; POST queries and mutations to "
                    "/graphql.",
                    extensions={"code": "SUBSCRIPTIONS_ONLY"},
                )
        try:
            result = _next(root, info, *args, **kwargs)
        except MesError as error:
            raise mes_error(error) from error
        if optimized_is_awaitable(result):  # a subscription's fields, on the event loop
            return _awaited(result)
        return result


async def _awaited(result) -> Any:
    try:
        return await result
    except MesError as error:
        raise mes_error(error) from error

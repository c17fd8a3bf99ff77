"""The root schema: what `/graphql` answers (docs/graphql.md; SDL in docs/schema.graphql).

Resolvers are thin: they parse arguments, call one selector or service, and return what it
gives. Permissions (permissions.py) and limits (limits.py) are schema extensions, so no field
can forget them; strawberry-django's optimizer turns every selection into a fixed number of
queries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry
import strawberry_django
from django.db.models import QuerySet
from graphql import GraphQLError
from strawberry.extensions import MaskErrors
from strawberry.types import Info
from strawberry_django.optimizer import DjangoOptimizerExtension, optimize
from strawberry_django.pagination import OffsetPaginated

from aegis.graphql import alerts as alert_actions
from aegis.graphql import filters, limits
from aegis.graphql import oee as oee_reports
from aegis.graphql import telemetry as telemetry_reads
from aegis.graphql.filters import (
    AlertFilter,
    ModelFilter,
    StationFilter,
    UnitFilter,
    WorkOrderFilter,
    filtered,
    no_nul,
)
from aegis.graphql.permissions import PermissionGate
from aegis.graphql.types import (
    AlertFeedback,
    DefectAlertType,
    ModelVersionType,
    SiteType,
    StationType,
    UnitType,
    WorkOrderType,
)
from foresight.api import filtersets as foresight_filtersets
from foresight.api import selectors as foresight_selectors
from foresight.models import DefectAlert, ModelVersion
from mes import filtersets as mes_filtersets
from mes.errors import InvalidInput, MesError
from mes.models import Site, Station, Unit, WorkOrder


def _one(info: Info, queryset: QuerySet):
    """The object a lookup names (or None), loaded with what the selection needs."""
    return optimize(queryset, info).first()


@strawberry.type
class Query:
    @strawberry_django.field(description="The plant: sites → areas → lines → stations.")
    def plant(self) -> list[SiteType]:
        return Site.objects.order_by("code")

    @strawberry_django.field(description="Stations in line order.")
    def stations(self, filter: StationFilter | None = None) -> list[StationType]:
        values = filters.values_of(filter)
        return filtered(
            mes_filtersets.StationFilterSet, Station.objects.order_by("line_id", "position"), values
        )

    @strawberry_django.field(description="One station by its code.")
    def station(self, info: Info, code: str) -> StationType | None:
        return _one(info, Station.objects.filter(code=no_nul(code)))

    @strawberry_django.offset_paginated(
        OffsetPaginated[WorkOrderType], description="Work orders, newest first."
    )
    def work_orders(self, filter: WorkOrderFilter | None = None) -> QuerySet[WorkOrder]:
        queryset = WorkOrder.objects.order_by("-created_at", "-id")
        return filtered(mes_filtersets.WorkOrderFilterSet, queryset, filters.values_of(filter))

    @strawberry_django.field(description="One work order by its external id.")
    def work_order(self, info: Info, external_id: str) -> WorkOrderType | None:
        return _one(info, WorkOrder.objects.filter(external_id=no_nul(external_id)))

    @strawberry_django.offset_paginated(OffsetPaginated[UnitType], description="Units by serial.")
    def units(self, filter: UnitFilter | None = None) -> QuerySet[Unit]:
        queryset = Unit.objects.order_by("serial")
        return filtered(mes_filtersets.UnitFilterSet, queryset, filters.values_of(filter))

    @strawberry_django.field(description="One unit by its serial or its VIN.")
    def unit(
        self, info: Info, serial: str | None = None, vin: str | None = None
    ) -> UnitType | None:
        if (serial is None) == (vin is None):
            raise InvalidInput("give serial or vin", fields={"serial": ["or vin"]})
        if serial is not None:
            return _one(info, Unit.objects.filter(serial=no_nul(serial)))
        return _one(info, Unit.objects.filter(vin=no_nul(vin)))

    @strawberry.field(
        description="Telemetry readings, oldest first, in pages of `limit` (at most "
        f"{limits.TELEMETRY_MAX_LIMIT:,})."
    )
    def telemetry(
        self,
        filter: telemetry_reads.TelemetryFilter,
        limit: int = limits.TELEMETRY_DEFAULT_LIMIT,
        offset: int = 0,
    ) -> telemetry_reads.TelemetryPage:
        return telemetry_reads.telemetry_page(where=filter, limit=limit, offset=offset)

    @strawberry.field(
        description="Count, min, max and mean of each signal per station and time bucket "
        f"(needs since and until; at most {limits.MAX_BUCKETS:,} rows)."
    )
    def telemetry_buckets(
        self,
        filter: telemetry_reads.TelemetryFilter,
        bucket_seconds: float,
        signals: list[str] | None = None,
    ) -> list[telemetry_reads.TelemetryBucket]:
        return telemetry_reads.telemetry_buckets(
            where=filter, bucket_seconds=bucket_seconds, signals=signals
        )

    @strawberry_django.offset_paginated(
        OffsetPaginated[DefectAlertType], description="Foresight's defect alerts, newest first."
    )
    def alerts(self, filter: AlertFilter | None = None) -> QuerySet[DefectAlert]:
        return filtered(
            foresight_filtersets.DefectAlertFilterSet,
            DefectAlert.objects.order_by("-ts", "-id"),
            filters.values_of(filter),
        )

    @strawberry_django.field(description="One defect alert by its id.")
    def alert(self, info: Info, id: strawberry.ID) -> DefectAlertType | None:
        return alert_actions.alert_by_id(info, id)

    @strawberry_django.offset_paginated(
        OffsetPaginated[ModelVersionType], description="Foresight's model versions, newest first."
    )
    def models(self, filter: ModelFilter | None = None) -> QuerySet[ModelVersion]:
        return filtered(
            foresight_filtersets.ModelVersionFilterSet,
            foresight_selectors.model_version_list().order_by("-created_at", "-id"),
            filters.values_of(filter),
        )

    @strawberry_django.field(description="One model version by its version string.")
    def model(self, info: Info, version: str) -> ModelVersionType | None:
        return _one(info, ModelVersion.objects.filter(version=no_nul(version)))

    @strawberry.field(
        description="OEE of each station or line over [from, to) (at most 366 days); shifts "
        "are cut at the period's ends. The REST API's /oee/ numbers."
    )
    def oee(
        self,
        from_: Annotated[dt.datetime, strawberry.argument(name="from")],
        to: Annotated[dt.datetime, strawberry.argument(description="Exclusive.")],
        per: oee_reports.OeePer = oee_reports.OeePer.STATION,
        line: strawberry.ID | None = None,
        station: str | None = None,
    ) -> list[oee_reports.OeeRow]:
        return oee_reports.oee_over_period(start=from_, end=to, per=per, line=line, station=station)

    @strawberry.field(description="OEE of each station or line and shift of the business dates.")
    def oee_per_shift(
        self,
        first_day: dt.date,
        last_day: dt.date,
        per: oee_reports.OeePer = oee_reports.OeePer.STATION,
        line: strawberry.ID | None = None,
        station: str | None = None,
    ) -> list[oee_reports.OeeRow]:
        return oee_reports.oee_per_shift(
            first_day=first_day, last_day=last_day, per=per, line=line, station=station
        )

    @strawberry.field(description="OEE of each line or station and business date.")
    def oee_per_day(
        self,
        first_day: dt.date,
        last_day: dt.date,
        per: oee_reports.OeePer = oee_reports.OeePer.LINE,
        line: strawberry.ID | None = None,
        station: str | None = None,
    ) -> list[oee_reports.OeeRow]:
        return oee_reports.oee_per_day(
            first_day=first_day, last_day=last_day, per=per, line=line, station=station
        )

    @strawberry.field(description="Unplanned stops over [from, to) ranked by the time they cost.")
    def downtime_pareto(
        self,
        from_: Annotated[dt.datetime, strawberry.argument(name="from")],
        to: Annotated[dt.datetime, strawberry.argument(description="Exclusive.")],
        by: oee_reports.ParetoBy = oee_reports.ParetoBy.REASON,
        depth: Annotated[
            int | None, strawberry.argument(description="By reason: roll the tree up to it.")
        ] = None,
        line: strawberry.ID | None = None,
        station: str | None = None,
    ) -> list[oee_reports.ParetoRow]:
        return oee_reports.downtime_pareto(
            start=from_, end=to, by=by, depth=depth, line=line, station=station
        )


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Acknowledge an open alert (someone is on it).")
    def acknowledge_alert(
        self,
        info: Info,
        id: strawberry.ID,
        note: str = "",
    ) -> DefectAlertType:
        return alert_actions.acknowledge(info=info, alert_id=id, note=note)

    @strawberry.mutation(
        description="Resolve an alert with feedback: true defect or false alarm (a training label)."
    )
    def resolve_alert(
        self,
        info: Info,
        id: strawberry.ID,
        feedback: AlertFeedback,
        note: str = "",
    ) -> DefectAlertType:
        return alert_actions.resolve(info=info, alert_id=id, feedback=feedback, note=note)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="New defect alerts as Foresight raises them: of one station (code), one "
        "line (id) or the whole plant."
    )
    async def alerts(
        self, info: Info, station: str | None = None, line: strawberry.ID | None = None
    ) -> AsyncGenerator[DefectAlertType, None]:
        async for alert in alert_actions.alert_stream(info, station, line):
            yield alert


def _expected(error: GraphQLError) -> bool:
    """Errors whose message is meant for the caller; any other is masked (no internals leak)."""
    original = error.original_error
    return original is None or isinstance(original, (GraphQLError, MesError))


class AegisSchema(strawberry.Schema):
    def process_errors(self, errors, execution_context=None) -> None:
        # Refusals and invalid input are the caller's business, not the server log's.
        unexpected = [error for error in errors if not _expected(error)]
        if unexpected:
            super().process_errors(unexpected, execution_context)


schema = AegisSchema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    extensions=[
        *limits.extensions(),
        PermissionGate,
        DjangoOptimizerExtension,
        lambda: MaskErrors(should_mask_error=lambda error: not _expected(error)),
    ],
)

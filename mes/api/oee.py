"""OEE, downtime Pareto and reliability over REST: thin reads of mes/oee.py, which reads the
SQL functions of the schema `reporting` (docs/oee.md) — the numbers ODBC/JDBC clients see in the
views, to the last digit.

Each endpoint is one GET: its query parameters are validated (400 with the fields at fault, 422
for a line or station the MES does not know), then one selector answers a list, never paged:
its length is bounded by the period (at most 366 days) and the plant.
"""

from __future__ import annotations

from collections.abc import Callable

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from mes import oee
from mes.api import serializers as s
from mes.api.permissions import OperationPermission
from mes.api.views import ERRORS

VIEW_OEE = "mes.view_oee"
RESPONSES = {
    **{code: ERRORS[code] for code in (400, 401, 403, 429)},
    422: OpenApiResponse(
        s.ErrorSerializer, description="The query names a line or station the MES does not know."
    ),
}


def _described(summary: str, operation_id: str, details: str):
    """The OpenAPI description of a report's GET, from the view's own serializers."""

    def describe(view: type[ReportView]) -> type[ReportView]:
        return extend_schema_view(
            get=extend_schema(
                summary=summary,
                description=f"{details} Requires the permission `{VIEW_OEE}`. See docs/oee.md.",
                operation_id=operation_id,
                parameters=[view.query_serializer_class],
                responses={
                    200: view.serializer_class(many=True),
                    **RESPONSES,
                },
            )
        )(view)

    return describe


class ReportView(GenericAPIView):
    """GET: validate the query, call `selector` with it, answer its rows."""

    permission_classes = [OperationPermission]
    required_permissions: tuple[str, ...] = (VIEW_OEE,)
    filter_backends = []
    pagination_class = None
    query_serializer_class: type[s.InputSerializer]
    selector: Callable[..., list[oee.OeeRow]]

    def get(self, request):
        query = self.query_serializer_class(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = type(self).selector(**query.validated_data)
        return Response(self.get_serializer(rows, many=True).data)


@_described(
    "OEE of each station or line over any period",
    "oee_over_period",
    "Shifts are cut at the period's ends; time in no shift is not planned production time.",
)
class OeeOverPeriodView(ReportView):
    serializer_class = s.OeeSerializer
    query_serializer_class = s.OeeOverPeriodQuerySerializer
    selector = staticmethod(oee.oee_over_period)


@_described(
    "OEE of each station or line per shift",
    "oee_per_shift",
    "The shifts of the business dates asked for; a running shift so far.",
)
class OeePerShiftView(ReportView):
    serializer_class = s.OeeSerializer
    query_serializer_class = s.OeePerShiftQuerySerializer
    selector = staticmethod(oee.oee_per_shift)


@_described(
    "OEE of each line or station per business date",
    "oee_per_day",
    "A business date's shifts together; TEEP against the local calendar day (23 to 25 hours).",
)
class OeePerDayView(ReportView):
    serializer_class = s.OeeSerializer
    query_serializer_class = s.OeePerDayQuerySerializer
    selector = staticmethod(oee.oee_per_day)


@_described(
    "Pareto of unplanned stops by reason, station or shift",
    "downtime_pareto",
    "Ranked by the production time they cost (downtime plus small stops); by reason the tree "
    "rolls up to `depth`.",
)
class DowntimeParetoView(ReportView):
    serializer_class = s.DowntimeParetoSerializer
    query_serializer_class = s.DowntimeParetoQuerySerializer

    @staticmethod
    def selector(*, depth: int | None = None, **query) -> list[oee.OeeRow]:
        return oee.downtime_pareto(reason_depth=depth, **query)


@_described(
    "MTBF and MTTR of each station or line over a period",
    "downtime_reliability",
    "Failures are breakdown stops at or above the micro-stop threshold that started in the period.",
)
class ReliabilityView(ReportView):
    serializer_class = s.ReliabilitySerializer
    query_serializer_class = s.OeeOverPeriodQuerySerializer
    selector = staticmethod(oee.reliability)


@_described(
    "Unplanned stops of a period, per station and shift they fall in",
    "downtime_stops",
    "A stop across a shift change is one row per shift, with the time it cost in each.",
)
class DowntimeStopsView(ReportView):
    serializer_class = s.DowntimeStopSerializer
    query_serializer_class = s.OeePeriodQuerySerializer
    selector = staticmethod(oee.downtime_stops)

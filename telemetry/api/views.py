"""The telemetry API's entry points: GET only, one selector each (telemetry/selectors.py)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework.exceptions import NotFound
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from mes.api.permissions import OperationPermission
from mes.api.serializers import ErrorSerializer
from mes.api.views import ERRORS
from mes.models import Station
from telemetry import selectors
from telemetry.api import serializers as s

# Reading a VIN's trace reads the unit, where it was, what was flashed and found, the alerts
# and the scores: the permissions of each.
TRACE_PERMISSIONS = (
    "mes.view_unit",
    "mes.view_stationvisit",
    "mes.view_firmwareflash",
    "mes.view_qualityevent",
    "foresight.view_defectalert",
    "foresight.view_score",
)
SERIES_PERMISSIONS = ("mes.view_station",)


def _requires(permissions: tuple[str, ...]) -> str:
    return "Requires the permissions " + ", ".join(f"`{p}`" for p in permissions) + "."


class _ChartView(GenericAPIView):
    permission_classes = [OperationPermission]
    filter_backends = []
    pagination_class = None


@extend_schema_view(
    get=extend_schema(
        summary="A station's signals over a range, decimated for charts",
        description="Each signal is at most `points` buckets of equal width with the lowest, "
        "highest and mean value and the sample count, computed in PostgreSQL: one bucket per "
        "pixel keeps every spike visible. Ranges over two hours read the 1-minute roll-ups "
        f"(whole-minute buckets). {_requires(SERIES_PERMISSIONS)}",
        operation_id="telemetry_station_series",
        parameters=[s.SeriesQuerySerializer],
        responses={
            200: s.SeriesChartSerializer,
            **{code: ERRORS[code] for code in (400, 401, 403, 404, 429)},
        },
    )
)
class StationSeriesView(_ChartView):
    required_permissions = SERIES_PERMISSIONS
    serializer_class = s.SeriesChartSerializer
    queryset = Station.objects.all()

    def get(self, request, code: str):
        if "\x00" in code:
            raise NotFound()
        station = get_object_or_404(self.get_queryset(), code=code)
        query = s.SeriesQuerySerializer(data=request.query_params)  # signal may repeat
        query.is_valid(raise_exception=True)
        chart = selectors.signal_series(station=station, **query.validated_data)
        return Response(self.get_serializer(chart).data)


@extend_schema_view(
    get=extend_schema(
        summary="What happened to a VIN at an instant: its trace bundle",
        description="The unit's visits, firmware flashes, quality events and alerts; where it "
        "was at `at` and the firmware it carried then; and at that station the samples "
        f"closest to the instant (at most {selectors.MAX_TRACE_ROWS}), the decimated series "
        "and Foresight's scores `window` seconds either side. `telemetry` is null when the "
        "unit was at no station then (`in_life` says whether the instant lies in its time on "
        f"the line). {_requires(TRACE_PERMISSIONS)}",
        operation_id="telemetry_vin_trace",
        parameters=[s.TraceQuerySerializer],
        responses={
            200: s.VinTraceSerializer,
            **{code: ERRORS[code] for code in (400, 401, 403, 429)},
            422: OpenApiResponse(ErrorSerializer, description="No unit has this VIN or serial."),
        },
    )
)
class VinTraceView(_ChartView):
    required_permissions = TRACE_PERMISSIONS
    serializer_class = s.VinTraceSerializer

    def get(self, request):
        query = s.TraceQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        wanted = query.validated_data
        unit = selectors.unit_by_vin_or_serial(wanted["vin"])
        now = timezone.now()
        trace = selectors.vin_trace(
            unit=unit,
            at=wanted.get("at") or now,
            window=wanted["window"],
            points=wanted["points"],
            now=now,
        )
        return Response(self.get_serializer(trace).data)

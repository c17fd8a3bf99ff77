"""Entry points of Foresight's REST API, built like the MES's (mes/api/views.py): read-only
viewsets over selectors and filtersets, and one view per operation calling one service of
`foresight.registry` in the caller's audit context."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.exceptions import NotFound
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from foresight import registry
from foresight.api import filtersets, selectors
from foresight.api import serializers as s
from foresight.models import DefectAlert, ModelVersion
from mes.api.permissions import OperationPermission
from mes.api.views import ERRORS, OperationView, ReadViewSet, operation, reads
from mes.models import Station


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL, so nothing stored can match such a lookup.
    if "\x00" in value:
        raise NotFound()
    return value


def _by_pk(queryset, pk: str):
    try:
        return get_object_or_404(queryset, pk=int(pk))
    except (ValueError, OverflowError):
        raise NotFound() from None


# -- reads ------------------------------------------------------------------------------------


@reads("Foresight model versions (the registry)")
class ModelVersionViewSet(ReadViewSet):
    queryset = selectors.model_version_list()
    serializer_class = s.ModelVersionSerializer
    filterset_class = filtersets.ModelVersionFilterSet
    lookup_field = "version"


@reads("defect alerts, newest first")
class DefectAlertViewSet(ReadViewSet):
    queryset = selectors.alert_list()
    serializer_class = s.DefectAlertSerializer
    filterset_class = filtersets.DefectAlertFilterSet


@extend_schema_view(
    get=extend_schema(
        summary="Scores of a station over a range, in buckets for charts",
        description="Requires the permission `foresight.view_score`. Each model (production, "
        "shadows, the baseline) is one series of at most `limit` buckets with the highest "
        "score, the mean and the sample count of each.",
        operation_id="foresight_score_chart",
        parameters=[s.ScoreQuerySerializer],
        responses={
            200: s.ScoreChartSerializer,
            **{code: ERRORS[code] for code in (400, 401, 403, 404, 429)},
        },
    )
)
class ScoreChartView(GenericAPIView):
    permission_classes = [OperationPermission]
    required_permissions = ("foresight.view_score",)
    queryset = Station.objects.all()
    serializer_class = s.ScoreChartSerializer
    filter_backends = []
    pagination_class = None

    def get(self, request, code: str):
        station = get_object_or_404(self.get_queryset(), code=_no_nul(code))
        query = s.ScoreQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        wanted = query.validated_data
        model = None
        if wanted.get("model"):
            model = ModelVersion.objects.filter(
                station=station, version=_no_nul(wanted["model"])
            ).first()
            if model is None:  # an unknown model in a filter matches nothing
                chart = selectors.ScoreChart(station.code, wanted["start"], wanted["end"], 0, [])
                return Response(self.get_serializer(chart).data)
        chart = selectors.score_chart(
            station=station,
            start=wanted["start"],
            end=wanted["end"],
            points=wanted["limit"],
            model=model,
        )
        return Response(self.get_serializer(chart).data)


# -- operations -------------------------------------------------------------------------------


class _ModelOperation(OperationView):
    queryset = ModelVersion.objects.select_related("station")
    serializer_class = s.ModelVersionSerializer
    input_serializer_class = s.NoInputSerializer
    with_user = True

    def subject(self, *, version: str) -> dict:
        return {"version": get_object_or_404(self.get_queryset(), version=_no_nul(version))}


@operation(
    "Promote a model to shadow or production (the production model it replaces is archived)",
    404,
    409,
    operation_id="foresight_model_promote",
)
class ModelPromoteView(_ModelOperation):
    required_permissions = ("foresight.promote_modelversion",)
    service = staticmethod(registry.promote)
    input_serializer_class = s.PromoteInputSerializer


@operation(
    "Archive a model (archiving the production model leaves the station on the baseline)",
    404,
    409,
    operation_id="foresight_model_archive",
)
class ModelArchiveView(_ModelOperation):
    required_permissions = ("foresight.promote_modelversion",)
    service = staticmethod(registry.archive)


@operation(
    "Roll a station back to its previous production model",
    404,
    409,
    operation_id="foresight_station_rollback",
)
class StationRollbackView(OperationView):
    required_permissions = ("foresight.rollback_modelversion",)
    queryset = Station.objects.all()
    serializer_class = s.ModelVersionSerializer
    input_serializer_class = s.NoInputSerializer
    service = staticmethod(registry.rollback)
    with_user = True

    def subject(self, *, code: str) -> dict:
        return {"station": get_object_or_404(self.get_queryset(), code=_no_nul(code))}


class _AlertOperation(OperationView):
    queryset = DefectAlert.objects.all()
    serializer_class = s.DefectAlertSerializer
    with_user = True

    def subject(self, *, pk: str) -> dict:
        return {"alert": _by_pk(self.get_queryset(), pk)}


@operation("Acknowledge an open defect alert", 404, 409, operation_id="foresight_alert_acknowledge")
class AlertAcknowledgeView(_AlertOperation):
    required_permissions = ("foresight.acknowledge_defectalert",)
    service = staticmethod(registry.acknowledge)
    input_serializer_class = s.AcknowledgeInputSerializer


@operation(
    "Resolve a defect alert with feedback: true defect or false alarm (a training label)",
    404,
    409,
    operation_id="foresight_alert_resolve",
)
class AlertResolveView(_AlertOperation):
    required_permissions = ("foresight.resolve_defectalert",)
    service = staticmethod(registry.resolve)
    input_serializer_class = s.ResolveInputSerializer

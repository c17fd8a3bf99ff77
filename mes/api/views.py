"""Entry points of the REST API. Reads are read-only viewsets over selectors and filtersets;
each write is one operation: validate a small input, call one service inside the caller's
audit context, answer with the resulting object."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.contrib.auth import authenticate
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import AuthenticationFailed, NotFound
from rest_framework.generics import GenericAPIView, ListAPIView
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response

from mes import filtersets, selectors, services
from mes.api import schema  # noqa: F401 - registers the OpenAPI description of bearer tokens
from mes.api import serializers as s
from mes.api.authentication import api_token_issue, api_token_revoke
from mes.api.permissions import ModelPermissions, OperationPermission
from mes.api.throttling import TokenEndpointThrottle
from mes.audit import audit_context
from mes.errors import InvalidInput
from mes.models import ApiToken, DowntimeEvent, Unit, WorkOrder

ERRORS = {
    code: OpenApiResponse(s.ErrorSerializer, description=description)
    for code, description in {
        400: "Malformed request; `fields` says which values and why.",
        401: "Not authenticated, or the token is invalid, expired or revoked.",
        403: "Authenticated, but the role lacks the permission this endpoint needs.",
        404: "No such object.",
        409: "Refused by the object's state or by recorded facts (e.g. an overlap).",
        422: "The body names a station, unit, code or work order the MES does not know.",
        429: "Too many requests; retry after the Retry-After header's seconds.",
    }.items()
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: ERRORS[code] for code in (401, 403, 429, *codes)}


def _requires(*permissions: str) -> str:
    return "Requires the permission " + " and ".join(f"`{p}`" for p in permissions) + "."


def _model_permission(view: type, action: str) -> str:
    meta = view.queryset.model._meta
    return f"{meta.app_label}.{action}_{meta.model_name}"


def _without_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL, so nothing stored can match such a lookup.
    if "\x00" in value:
        raise NotFound()
    return value


# -- reads ------------------------------------------------------------------------------------


class ReadViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """List (paged, filtered) and detail of one model; `view_<model>` is required. Detail URLs
    use `lookup_field`: codes where the plant has them, ids otherwise."""

    permission_classes = [ModelPermissions]

    def get_object(self):
        _without_nul(self.kwargs[self.lookup_url_kwarg or self.lookup_field])
        return super().get_object()


def reads(plural: str):
    """The OpenAPI description of a ReadViewSet's list and detail."""

    def describe(view: type[ReadViewSet]) -> type[ReadViewSet]:
        if view.lookup_field != "pk":
            view.lookup_value_regex = "[^/]+"  # codes may contain dots
        permission = _requires(_model_permission(view, "view"))
        return extend_schema_view(
            list=extend_schema(
                summary=f"List {plural}",
                description=permission,
                responses={200: view.serializer_class, **_errors(400)},
            ),
            retrieve=extend_schema(
                summary=f"One of the {plural}",
                description=permission,
                responses={200: view.serializer_class, **_errors(404)},
            ),
        )(view)

    return describe


@reads("sites")
class SiteViewSet(ReadViewSet):
    queryset = selectors.site_list()
    serializer_class = s.SiteSerializer
    filterset_class = filtersets.SiteFilterSet
    lookup_field = "code"


@reads("areas")
class AreaViewSet(ReadViewSet):
    queryset = selectors.area_list()
    serializer_class = s.AreaSerializer
    filterset_class = filtersets.AreaFilterSet


@reads("lines")
class LineViewSet(ReadViewSet):
    queryset = selectors.line_list()
    serializer_class = s.LineSerializer
    filterset_class = filtersets.LineFilterSet


@reads("stations, with their signals")
class StationViewSet(ReadViewSet):
    queryset = selectors.station_list()
    serializer_class = s.StationSerializer
    filterset_class = filtersets.StationFilterSet
    lookup_field = "code"


@reads("products")
class ProductViewSet(ReadViewSet):
    queryset = selectors.product_list()
    serializer_class = s.ProductSerializer
    filterset_class = filtersets.ProductFilterSet
    lookup_field = "code"


@reads("routes, with their operations")
class RouteViewSet(ReadViewSet):
    queryset = selectors.route_list()
    serializer_class = s.RouteSerializer
    filterset_class = filtersets.RouteFilterSet


@reads("station visits")
class StationVisitViewSet(ReadViewSet):
    queryset = selectors.station_visit_list()
    serializer_class = s.StationVisitSerializer
    filterset_class = filtersets.StationVisitFilterSet


@reads("firmware flashes")
class FirmwareFlashViewSet(ReadViewSet):
    queryset = selectors.firmware_flash_list()
    serializer_class = s.FirmwareFlashSerializer
    filterset_class = filtersets.FirmwareFlashFilterSet


@reads("shifts, with their breaks")
class ShiftViewSet(ReadViewSet):
    queryset = selectors.shift_list()
    serializer_class = s.ShiftSerializer
    filterset_class = filtersets.ShiftFilterSet


@reads("downtime reasons")
class DowntimeReasonViewSet(ReadViewSet):
    queryset = selectors.downtime_reason_list()
    serializer_class = s.DowntimeReasonSerializer
    filterset_class = filtersets.DowntimeReasonFilterSet
    lookup_field = "code"


@reads("scrap reasons")
class ScrapReasonViewSet(ReadViewSet):
    queryset = selectors.scrap_reason_list()
    serializer_class = s.ScrapReasonSerializer
    filterset_class = filtersets.ScrapReasonFilterSet
    lookup_field = "code"


@reads("production counts")
class ProductionCountViewSet(ReadViewSet):
    queryset = selectors.production_count_list()
    serializer_class = s.ProductionCountSerializer
    filterset_class = filtersets.ProductionCountFilterSet


@reads("defect codes")
class DefectCodeViewSet(ReadViewSet):
    queryset = selectors.defect_code_list()
    serializer_class = s.DefectCodeSerializer
    filterset_class = filtersets.DefectCodeFilterSet
    lookup_field = "code"


@reads("audit entries (who changed what, when, from where)")
class AuditEntryViewSet(ReadViewSet):
    queryset = selectors.audit_entry_list()
    serializer_class = s.AuditEntrySerializer
    filterset_class = filtersets.AuditEntryFilterSet


@reads("users and their roles")
class UserViewSet(ReadViewSet):
    queryset = selectors.user_list()
    serializer_class = s.UserSerializer
    filterset_class = filtersets.UserFilterSet


# -- operations -------------------------------------------------------------------------------


def _perform(request, service: Callable, inputs: dict, with_user: bool):
    """Call the one service of an operation, recording the caller in the audit trail."""
    if with_user:
        inputs["user"] = request.user
    with audit_context(user=request.user, source="api"):
        return service(**inputs)


def operation(summary: str, *errors: int, operation_id: str):
    """The OpenAPI description of an operation (an OperationView's POST, or a collection's
    create), from the view's own serializers and permissions."""

    def describe(view: type) -> type:
        if issubclass(view, ReadViewSet):
            method, permissions = "create", (_model_permission(view, "add"),)
        else:
            method, permissions = "post", view.required_permissions
        responses = {view.output_status: view.serializer_class, **_errors(400, *errors)}
        return extend_schema_view(
            **{
                method: extend_schema(
                    summary=summary,
                    description=_requires(*permissions),
                    operation_id=operation_id,
                    request=view.input_serializer_class,
                    responses=responses,
                )
            }
        )(view)

    return describe


class CollectionViewSet(ReadViewSet):
    """A list that also takes a POST: creating one is an operation needing `add_<model>`."""

    input_serializer_class: type[s.InputSerializer]
    output_status = status.HTTP_201_CREATED
    service: Callable
    with_user = False  # the service records who reported it

    def create(self, request):
        serializer = self.input_serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = _perform(request, self.service, dict(serializer.validated_data), self.with_user)
        return Response(self.get_serializer(result).data, status=self.output_status)


@operation("Create a work order (planned)", 409, 422, operation_id="work_order_create")
@reads("work orders")
class WorkOrderViewSet(CollectionViewSet):
    queryset = selectors.work_order_list()
    serializer_class = s.WorkOrderSerializer
    filterset_class = filtersets.WorkOrderFilterSet
    lookup_field = "external_id"
    input_serializer_class = s.WorkOrderCreateInputSerializer
    service = staticmethod(services.work_order_create)


@operation("Create a unit of a work order", 409, 422, operation_id="unit_create")
@reads("units")
class UnitViewSet(CollectionViewSet):
    queryset = selectors.unit_list()
    serializer_class = s.UnitSerializer
    filterset_class = filtersets.UnitFilterSet
    lookup_field = "serial"
    input_serializer_class = s.UnitCreateInputSerializer
    service = staticmethod(services.unit_create)


@operation("Open a downtime at a station", 409, 422, operation_id="downtime_open")
@reads("downtime events")
class DowntimeEventViewSet(CollectionViewSet):
    queryset = selectors.downtime_event_list()
    serializer_class = s.DowntimeEventSerializer
    filterset_class = filtersets.DowntimeEventFilterSet
    input_serializer_class = s.DowntimeOpenInputSerializer
    service = staticmethod(services.downtime_open)
    with_user = True


@operation("Record a defect found on a unit", 409, 422, operation_id="quality_event_record")
@reads("quality events")
class QualityEventViewSet(CollectionViewSet):
    queryset = selectors.quality_event_list()
    serializer_class = s.QualityEventSerializer
    filterset_class = filtersets.QualityEventFilterSet
    input_serializer_class = s.QualityEventInputSerializer
    service = staticmethod(services.quality_event_record)
    with_user = True


class OperationView(GenericAPIView):
    """POST one input to one service; answer with `serializer_class`. The caller needs every
    permission in `required_permissions`. `subject` turns the URL into the object it names."""

    permission_classes = [OperationPermission]
    required_permissions: tuple[str, ...] = ()
    filter_backends = []
    pagination_class = None
    input_serializer_class: type[s.InputSerializer] = s.StepInputSerializer
    output_status = status.HTTP_200_OK
    service: Callable
    with_user = False

    def subject(self, **url_kwargs) -> dict:
        return {}

    def post(self, request, **url_kwargs):
        subject = self.subject(**url_kwargs)
        serializer = self.input_serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        inputs = {**subject, **serializer.validated_data}
        result = _perform(request, self.service, inputs, self.with_user)
        return Response(self.get_serializer(result).data, status=self.output_status)


def _by_pk(queryset, pk: str):
    """The object with this id, or 404 (also for ids that are not whole numbers)."""
    try:
        return get_object_or_404(queryset, pk=int(pk))
    except ValueError:
        raise NotFound() from None


class _WorkOrderOperation(OperationView):
    queryset = WorkOrder.objects.select_related("product")
    serializer_class = s.WorkOrderSerializer

    def subject(self, *, external_id: str) -> dict:
        work_order = get_object_or_404(self.get_queryset(), external_id=_without_nul(external_id))
        return {"work_order": work_order}


@operation("Release a planned work order to the line", 404, 409, operation_id="work_order_release")
class WorkOrderReleaseView(_WorkOrderOperation):
    required_permissions = ("mes.release_workorder",)
    service = staticmethod(services.work_order_release)


@operation("Start a released work order", 404, 409, operation_id="work_order_start")
class WorkOrderStartView(_WorkOrderOperation):
    required_permissions = ("mes.start_workorder",)
    service = staticmethod(services.work_order_start)


@operation("Complete a work order in progress", 404, 409, operation_id="work_order_complete")
class WorkOrderCompleteView(_WorkOrderOperation):
    required_permissions = ("mes.complete_workorder",)
    service = staticmethod(services.work_order_complete)


@operation("Cancel a work order, saying why", 404, 409, operation_id="work_order_cancel")
class WorkOrderCancelView(_WorkOrderOperation):
    required_permissions = ("mes.cancel_workorder",)
    service = staticmethod(services.work_order_cancel)
    input_serializer_class = s.WorkOrderCancelInputSerializer


class _UnitOperation(OperationView):
    queryset = Unit.objects.select_related("work_order__product")

    def subject(self, *, serial: str) -> dict:
        return {"unit": get_object_or_404(self.get_queryset(), serial=_without_nul(serial))}


@operation(
    "The unit arrives at a station (ending where it and the station were)",
    404,
    409,
    422,
    operation_id="unit_arrive",
)
class UnitArriveView(_UnitOperation):
    required_permissions = ("mes.add_stationvisit",)
    service = staticmethod(services.unit_arrive)
    input_serializer_class = s.StationMoveInputSerializer
    serializer_class = s.StationVisitSerializer


@operation("The unit leaves a station", 404, 409, 422, operation_id="unit_leave")
class UnitLeaveView(_UnitOperation):
    required_permissions = ("mes.change_stationvisit",)
    service = staticmethod(services.unit_leave)
    input_serializer_class = s.StationMoveInputSerializer
    serializer_class = s.StationVisitSerializer


@operation(
    "The unit is complete (it left the last station of its route)",
    404,
    409,
    operation_id="unit_complete",
)
class UnitCompleteView(_UnitOperation):
    # Completing is the unit's last move on the floor, recorded by whoever records its
    # departures: the roles that may end a visit may complete the unit that left the line.
    required_permissions = ("mes.change_stationvisit",)
    service = staticmethod(services.unit_complete)
    serializer_class = s.UnitSerializer


@operation(
    "Record firmware flashed onto a component of the unit",
    404,
    409,
    422,
    operation_id="firmware_flash",
)
class UnitFirmwareView(_UnitOperation):
    required_permissions = ("mes.add_firmwareflash",)
    service = staticmethod(services.firmware_flash)
    input_serializer_class = s.FirmwareFlashInputSerializer
    serializer_class = s.FirmwareFlashSerializer
    output_status = status.HTTP_201_CREATED


@operation(
    "Report good and scrap counts of a station for an interval",
    409,
    422,
    operation_id="counts_report",
)
class CountsReportView(OperationView):
    required_permissions = ("mes.add_productioncount",)
    service = staticmethod(services.counts_report)
    input_serializer_class = s.CountsReportInputSerializer
    serializer_class = s.ProductionCountSerializer
    output_status = status.HTTP_201_CREATED


@operation("Close a downtime, with its reason", 404, 409, 422, operation_id="downtime_close")
class DowntimeCloseView(OperationView):
    required_permissions = ("mes.change_downtimeevent",)
    queryset = DowntimeEvent.objects.all()
    service = staticmethod(services.downtime_close)
    input_serializer_class = s.DowntimeCloseInputSerializer
    serializer_class = s.DowntimeEventSerializer

    def subject(self, *, pk: str) -> dict:
        return {"downtime": _by_pk(self.get_queryset(), pk)}


# -- tokens -----------------------------------------------------------------------------------


class TokenView(GenericAPIView):
    """POST: trade a username and password for a token. DELETE: revoke the token in use."""

    serializer_class = s.TokenIssuedSerializer
    filter_backends = []
    pagination_class = None

    def _issuing(self) -> bool:
        # Django's View.setup() sets self.request before DRF asks for these (drf-spectacular
        # does not, and describes POST through its extend_schema below).
        return getattr(self.request, "method", None) == "POST"

    def get_authenticators(self):
        return [] if self._issuing() else super().get_authenticators()

    def get_permissions(self):
        return [AllowAny()] if self._issuing() else [IsAuthenticated()]

    def get_throttles(self):
        return [TokenEndpointThrottle()] if self._issuing() else super().get_throttles()

    def get_authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'

    @extend_schema(
        summary="Get a token for a machine (username and password)",
        description="Answers the token once; store it like a password. Throttled per address.",
        operation_id="api_token_issue",
        request=s.TokenRequestSerializer,
        responses={201: s.TokenIssuedSerializer, **{c: ERRORS[c] for c in (400, 401, 429)}},
        auth=[],
    )
    def post(self, request):
        serializer = s.TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        credentials = serializer.validated_data
        user = authenticate(
            request._request, username=credentials["username"], password=credentials["password"]
        )
        if user is None:
            # Never say whether the user exists or the password was wrong.
            raise AuthenticationFailed("Unable to sign in with these credentials.")
        with audit_context(user=user, source="api"):
            token, secret = api_token_issue(
                user=user,
                name=credentials["name"],
                lifetime=dt.timedelta(hours=credentials["lifetime_hours"]),
            )
        token.token = secret
        return Response(s.TokenIssuedSerializer(token).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Revoke the token this request is authenticated with",
        operation_id="api_token_revoke",
        request=None,
        responses={204: None, **_errors(400)},
    )
    def delete(self, request):
        if not isinstance(request.auth, ApiToken):
            raise InvalidInput(
                "authenticate with the token to revoke (Authorization: Bearer <token>)",
                fields={"authorization": ["no bearer token in this request"]},
            )
        with audit_context(user=request.user, source="api"):
            api_token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    get=extend_schema(
        summary="List your tokens (never their secrets)",
        operation_id="api_token_list",
        responses={200: s.ApiTokenSerializer, **_errors()},
    )
)
class TokenListView(ListAPIView):
    serializer_class = s.ApiTokenSerializer
    permission_classes = [IsAuthenticated]
    filter_backends = []

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular has no real user
            return ApiToken.objects.none()
        return selectors.api_token_list(user=self.request.user)


class TokenRevokeView(GenericAPIView):
    serializer_class = s.ApiTokenSerializer
    permission_classes = [IsAuthenticated]
    filter_backends = []
    pagination_class = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular has no real user
            return ApiToken.objects.none()
        return selectors.api_token_list(user=self.request.user)

    @extend_schema(
        summary="Revoke one of your tokens (e.g. a lost one)",
        operation_id="api_token_revoke_by_id",
        request=None,
        responses={200: s.ApiTokenSerializer, **_errors(404)},
    )
    def delete(self, request, pk: str):
        token = _by_pk(self.get_queryset(), pk)
        with audit_context(user=request.user, source="api"):
            token = api_token_revoke(token=token)
        return Response(self.get_serializer(token).data)

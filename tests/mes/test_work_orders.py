"""Every work-order transition, allowed and refused, in services and in the database."""

from __future__ import annotations

import itertools

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from mes import services
from mes.errors import InvalidInput, TransitionRefused
from mes.models import AuditEntry, OutboxMessage, WorkOrder, WorkOrderStatus
from tests.factories import RouteOperationFactory, WorkOrderFactory

pytestmark = pytest.mark.django_db

STATUSES = [status.value for status in WorkOrderStatus]
STEP = {
    WorkOrderStatus.RELEASED: lambda wo: services.work_order_release(work_order=wo),
    WorkOrderStatus.IN_PROGRESS: lambda wo: services.work_order_start(work_order=wo),
    WorkOrderStatus.COMPLETED: lambda wo: services.work_order_complete(work_order=wo),
    WorkOrderStatus.CANCELLED: lambda wo: services.work_order_cancel(
        work_order=wo, reason="customer order withdrawn"
    ),
}
PATH = {
    WorkOrderStatus.PLANNED: [],
    WorkOrderStatus.RELEASED: [WorkOrderStatus.RELEASED],
    WorkOrderStatus.IN_PROGRESS: [WorkOrderStatus.RELEASED, WorkOrderStatus.IN_PROGRESS],
    WorkOrderStatus.COMPLETED: [
        WorkOrderStatus.RELEASED,
        WorkOrderStatus.IN_PROGRESS,
        WorkOrderStatus.COMPLETED,
    ],
    WorkOrderStatus.CANCELLED: [WorkOrderStatus.CANCELLED],
}
ALLOWED = {
    ("planned", "released"),
    ("released", "in_progress"),
    ("in_progress", "completed"),
    ("planned", "cancelled"),
    ("released", "cancelled"),
    ("in_progress", "cancelled"),
}


def _work_order_in(status: str) -> WorkOrder:
    operation = RouteOperationFactory()
    work_order = WorkOrderFactory(product=operation.route.product, line=operation.route.line)
    for step in PATH[status]:
        STEP[step](work_order)
    assert work_order.status == status
    return work_order


@pytest.mark.parametrize(
    ("current", "target"),
    list(itertools.product(STATUSES, [s for s in STATUSES if s != "planned"])),
)
def test_each_transition_is_allowed_or_refused(current, target):
    work_order = _work_order_in(current)
    if (current, target) in ALLOWED:
        STEP[target](work_order)
        work_order.refresh_from_db()
        assert work_order.status == target
        stamp = {
            "released": "released_at",
            "in_progress": "started_at",
            "completed": "completed_at",
            "cancelled": "cancelled_at",
        }[target]
        assert getattr(work_order, stamp) is not None
    else:
        entries = AuditEntry.objects.count()
        with pytest.raises(TransitionRefused, match=f"is {current}"):
            STEP[target](work_order)
        work_order.refresh_from_db()
        assert work_order.status == current
        assert AuditEntry.objects.count() == entries


def test_a_transition_is_audited_and_published_to_every_station_of_the_line():
    work_order = _work_order_in("planned")
    services.work_order_release(work_order=work_order)
    entry = AuditEntry.objects.filter(model="mes.workorder", action="update").get()
    assert entry.before["status"] == "planned"
    assert entry.after["status"] == "released"
    assert entry.source == "system"
    messages = OutboxMessage.objects.filter(kind="work_order.status")
    assert {m.station_code for m in messages} == set(
        work_order.line.stations.values_list("code", flat=True)
    )
    assert messages.first().payload["status"] == "released"


def test_cancelling_needs_a_reason():
    work_order = _work_order_in("released")
    with pytest.raises(InvalidInput):
        services.work_order_cancel(work_order=work_order, reason="  ")


def test_the_database_refuses_a_status_without_its_timestamps():
    work_order = _work_order_in("planned")
    with transaction.atomic(), pytest.raises(IntegrityError, match="mes_wo_status_timestamps"):
        WorkOrder.objects.filter(pk=work_order.pk).update(status="completed")
    with transaction.atomic(), pytest.raises(IntegrityError, match="mes_wo_status_timestamps"):
        WorkOrder.objects.filter(pk=work_order.pk).update(
            status="released", released_at=timezone.now(), completed_at=timezone.now()
        )


def test_a_work_order_needs_a_route_for_its_product_on_its_line():
    operation = RouteOperationFactory()
    other_line_order = WorkOrderFactory.build(product=operation.route.product)
    other_line_order.line.area.site.save()
    other_line_order.line.area.save()
    other_line_order.line.save()
    with pytest.raises(InvalidInput, match="has no route"):
        services.work_order_create(
            external_id="WO-X",
            product=operation.route.product,
            line=other_line_order.line,
            quantity=5,
        )

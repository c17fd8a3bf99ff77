"""The Django admin: every model has a working admin, lists stay at a fixed number of queries,
every admin write lands in the append-only audit trail, business writes go through the
services, and secrets never reach a page or the trail."""

from __future__ import annotations

import datetime as dt
import json
import secrets

import numpy as np
import pytest
from django import forms
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from foresight import registry, spc
from foresight.models import ModelVersion
from mes import services
from mes.audit import audit_context, audit_record
from mes.demo import seed_demo_plant
from mes.models import (
    ApiToken,
    AuditEntry,
    DefectCode,
    DowntimeEvent,
    DowntimeReason,
    Line,
    OutboxMessage,
    ScrapReason,
    Shift,
    ShiftPattern,
    ShiftTemplate,
    Station,
    StationSignal,
    StationVisit,
    Unit,
    WebhookInboxEvent,
    WebhookIntegration,
    WorkOrder,
    WorkOrderStatus,
)
from tests.factories import (
    LineFactory,
    ProductFactory,
    RouteOperationFactory,
    StationFactory,
    UnitFactory,
    UserFactory,
    WorkOrderFactory,
)

pytestmark = pytest.mark.django_db

SECRET = "current-" + secrets.token_urlsafe(32)
PREVIOUS_SECRET = "previous-" + secrets.token_urlsafe(32)
TOKEN_DIGEST = secrets.token_hex(32)


def _url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _form_data(response) -> dict:
    """The POST a browser would send for the admin form in `response`, unchanged."""
    data: dict = {}
    _add_form(data, response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        _add_form(data, formset.management_form)
        for form in formset.forms:
            _add_form(data, form)
    return data


def _add_form(data: dict, form) -> None:
    for name, field in form.fields.items():
        bound = form[name]
        value = bound.value()
        if isinstance(field.widget, forms.MultiWidget):
            parts = field.widget.decompress(value)
            for index, (widget, part) in enumerate(zip(field.widget.widgets, parts, strict=True)):
                data[f"{bound.html_name}_{index}"] = widget.format_value(part) or ""
        elif isinstance(field, forms.BooleanField):
            if value:
                data[bound.html_name] = "on"
        elif value is None:
            data[bound.html_name] = ""
        elif isinstance(value, list | tuple):
            data[bound.html_name] = [str(item) for item in value]
        else:
            data[bound.html_name] = str(value)


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def _run_action(client, model, action: str, objects) -> object:
    return client.post(
        _url(model, "changelist"),
        {"action": action, "_selected_action": [obj.pk for obj in objects]},
        follow=True,
    )


@pytest.fixture
def plant():
    seed_demo_plant()


@pytest.fixture
def shop_floor(plant):
    """At least one row of every MES model, written the way production writes them."""
    unit = Unit.objects.filter(vin__isnull=False).select_related("work_order").first()
    first, second = Station.objects.get(code="1"), Station.objects.get(code="2")
    start = timezone.now() - dt.timedelta(hours=1)
    services.unit_arrive(unit=unit, station=first, at=start)
    services.unit_arrive(unit=unit, station=second, at=start + dt.timedelta(minutes=5))
    services.firmware_flash(
        unit=unit,
        component="EPS",
        version="4.2.0",
        at=start + dt.timedelta(minutes=6),
        station=second,
    )
    services.counts_report(
        station=first,
        interval_start=start,
        interval_end=start + dt.timedelta(minutes=10),
        good=9,
        scrap=1,
        scrap_reason=ScrapReason.objects.get(code="DAMAGED"),
        work_order=unit.work_order,
    )
    services.downtime_open(
        station=first,
        at=start + dt.timedelta(minutes=20),
        reason=DowntimeReason.objects.get(code="MECH.CONVEYOR"),
    )
    services.quality_event_record(
        unit=unit,
        defect=DefectCode.objects.get(code="steering"),
        severity="major",
        source="inspection",
        station=second,
    )
    machine = UserFactory(username="legacy-mes")
    ApiToken.objects.create(
        user=machine,
        name="line PLC gateway",
        prefix=TOKEN_DIGEST[:8],
        digest=TOKEN_DIGEST,
        expires_at=timezone.now() + dt.timedelta(days=30),
    )
    integration = WebhookIntegration.objects.create(
        name="legacy", user=machine, secret=SECRET, previous_secret=PREVIOUS_SECRET
    )
    WebhookInboxEvent.objects.create(
        integration=integration,
        event_id="evt-1",
        event_type="unit.arrived",
        payload={"serial": unit.serial, "station": "1"},
        response_status=201,
        response_body={"visit": 1},
    )
    model = ModelVersion.objects.create(
        version="pca_t2q-2-admin",
        station=second,
        kind="pca_t2q",
        feature_spec={},
        threshold=1.0,
        training_start=start,
        training_end=start,
        artifact_path="00/none.onnx",
        sha256="0" * 64,
    )
    registry.raise_alert(
        station=second,
        ts=start + dt.timedelta(minutes=7),
        score=2.0,
        threshold=1.0,
        model_version=model,
    )
    baseline = np.linspace(9.0, 11.0, 40)  # 40 individuals: enough for I-MR limits
    registry.control_limits_activate(
        station=second,
        signal="torque",
        limits=spc.compute_limits(baseline, 1),
        baseline_start=start,
        baseline_end=start + dt.timedelta(minutes=1),
    )
    return unit


# Session, user, count(s), date hierarchy, filter choices, rows: never one query per row.
CHANGELIST_QUERY_LIMIT = 12
REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label_lower)


def test_every_mes_model_has_an_admin():
    missing = set(apps.get_app_config("mes").get_models()) - set(admin.site._registry)
    assert not missing


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label_lower)
def test_every_admin_lists_adds_and_shows_its_objects(
    admin_client, shop_floor, django_assert_max_num_queries, model
):
    model_admin = admin.site._registry[model]

    with django_assert_max_num_queries(CHANGELIST_QUERY_LIMIT):
        changelist = admin_client.get(_url(model, "changelist"))
    assert changelist.status_code == 200

    add = admin_client.get(_url(model, "add"))
    assert add.status_code == (200 if model_admin.has_add_permission(add.wsgi_request) else 403)

    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"the fixture has no {model._meta.label_lower}"
    assert admin_client.get(_url(model, "change", obj.pk)).status_code == 200


def _queries_for(client, url: str) -> int:
    client.get(url)  # warm the session and content-type caches
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


def _add_work_orders(count: int) -> None:
    operation = RouteOperationFactory()
    for _ in range(count):
        work_order = WorkOrderFactory(product=operation.route.product, line=operation.route.line)
        UnitFactory.create_batch(2, work_order=work_order)


def _add_visits(count: int) -> None:
    station = StationFactory()
    start = timezone.now() - dt.timedelta(days=1)
    for index in range(count):
        services.unit_arrive(
            unit=UnitFactory(), station=station, at=start + dt.timedelta(minutes=index)
        )


def _add_lines(count: int) -> None:
    StationFactory.create_batch(count)  # each on its own line, area and site


@pytest.mark.parametrize(
    ("model", "add_rows"),
    [
        (WorkOrder, _add_work_orders),
        (Unit, _add_work_orders),
        (StationVisit, _add_visits),
        (Line, _add_lines),
        (Station, _add_lines),
    ],
    ids=["work orders", "units", "station visits", "lines", "stations"],
)
def test_changelist_queries_do_not_grow_with_rows(
    admin_client, django_assert_max_num_queries, model, add_rows
):
    url = _url(model, "changelist")
    add_rows(3)
    few = _queries_for(admin_client, url)
    add_rows(22)
    assert model.objects.count() >= 25
    many = _queries_for(admin_client, url)
    assert many == few
    with django_assert_max_num_queries(CHANGELIST_QUERY_LIMIT):
        assert admin_client.get(url).status_code == 200


def test_editing_a_station_in_admin_is_audited_with_before_and_after(
    admin_client, admin_user, plant
):
    station = Station.objects.get(code="1")
    url = _url(Station, "change", station.pk)
    data = _form_data(admin_client.get(url))
    data["name"] = "Steering rack torque (new nutrunner)"

    response = admin_client.post(url, data)

    assert response.status_code == 302
    entry = AuditEntry.objects.get(model="mes.station", object_id=str(station.pk))
    assert (entry.source, entry.action, entry.actor_id, entry.actor_name) == (
        "admin",
        "update",
        admin_user.pk,
        admin_user.username,
    )
    assert entry.before["name"] == "Steering rack torque"
    assert entry.after["name"] == "Steering rack torque (new nutrunner)"
    # The unchanged signal rows of the inline wrote nothing.
    assert not AuditEntry.objects.filter(model="mes.stationsignal").exists()


def test_inline_rows_added_and_changed_in_admin_are_audited(admin_client, plant):
    station = Station.objects.get(code="1")
    torque = station.signals.get(name="torque")
    url = _url(Station, "change", station.pk)
    data = _form_data(admin_client.get(url))
    index = next(
        key.split("-")[1]
        for key, value in data.items()
        if key.endswith("-id") and value == str(torque.pk)
    )
    data[f"signals-{index}-nominal_max"] = "49.5"
    total = int(data["signals-TOTAL_FORMS"])
    data["signals-TOTAL_FORMS"] = str(total + 1)
    data.update(
        {
            f"signals-{total}-name": "spindle_current",
            f"signals-{total}-unit": "A",
            f"signals-{total}-nominal_min": "",
            f"signals-{total}-nominal_max": "12",
            f"signals-{total}-station": str(station.pk),
        }
    )

    assert admin_client.post(url, data).status_code == 302

    changed = AuditEntry.objects.get(model="mes.stationsignal", object_id=str(torque.pk))
    assert (changed.source, changed.action) == ("admin", "update")
    assert (changed.before["nominal_max"], changed.after["nominal_max"]) == (48.0, 49.5)
    added = StationSignal.objects.get(station=station, name="spindle_current")
    created = AuditEntry.objects.get(model="mes.stationsignal", object_id=str(added.pk))
    assert (created.source, created.action, created.after["unit"]) == ("admin", "create", "A")


def test_deleting_in_admin_audits_the_object_and_what_cascades(admin_client, admin_user):
    station = StationFactory(name="Spare press")
    signal = StationSignal.objects.create(station=station, name="force", unit="kN")

    response = admin_client.post(_url(Station, "delete", station.pk), {"post": "yes"})

    assert response.status_code == 302
    assert not Station.objects.filter(pk=station.pk).exists()
    deleted = {
        entry.model: entry
        for entry in AuditEntry.objects.filter(action="delete", source="admin", actor=admin_user)
    }
    assert deleted["mes.station"].object_id == str(station.pk)
    assert deleted["mes.station"].before["name"] == "Spare press"
    assert deleted["mes.station"].after is None
    assert deleted["mes.stationsignal"].object_id == str(signal.pk)
    assert deleted["mes.stationsignal"].before["unit"] == "kN"


def test_bulk_delete_action_audits_each_row(admin_client):
    reasons = [
        ScrapReason.objects.create(code="BENT", name="Bent bracket"),
        ScrapReason.objects.create(code="CRACK", name="Cracked housing"),
    ]
    response = admin_client.post(
        _url(ScrapReason, "changelist"),
        {"action": "delete_selected", "_selected_action": [r.pk for r in reasons], "post": "yes"},
    )

    assert response.status_code == 302
    assert not ScrapReason.objects.filter(code__in=["BENT", "CRACK"]).exists()
    entries = AuditEntry.objects.filter(model="mes.scrapreason", action="delete", source="admin")
    assert sorted(entry.before["code"] for entry in entries) == ["BENT", "CRACK"]


def _planned_work_order() -> WorkOrder:
    operation = RouteOperationFactory()
    return WorkOrderFactory(product=operation.route.product, line=operation.route.line)


def test_release_action_calls_the_service_and_is_audited_as_admin(admin_client, admin_user):
    work_order = _planned_work_order()
    outbox_before = OutboxMessage.objects.count()

    response = _run_action(admin_client, WorkOrder, "release", [work_order])

    work_order.refresh_from_db()
    assert work_order.status == WorkOrderStatus.RELEASED
    assert work_order.released_at is not None
    assert any("released" in message for message in _messages(response))
    entry = AuditEntry.objects.get(model="mes.workorder", object_id=str(work_order.pk))
    assert (entry.source, entry.action, entry.actor_id) == ("admin", "update", admin_user.pk)
    assert (entry.before["status"], entry.after["status"]) == ("planned", "released")
    # The service told the line's stations (the admin form never could).
    assert OutboxMessage.objects.count() == outbox_before + work_order.line.stations.count()


def test_cancel_action_records_who_cancelled_in_the_reason(admin_client, admin_user):
    work_order = _planned_work_order()

    _run_action(admin_client, WorkOrder, "cancel", [work_order])

    work_order.refresh_from_db()
    assert work_order.status == WorkOrderStatus.CANCELLED
    assert work_order.cancel_reason == f"cancelled in admin by {admin_user.username}"
    entry = AuditEntry.objects.get(model="mes.workorder", object_id=str(work_order.pk))
    assert (entry.source, entry.after["status"]) == ("admin", "cancelled")


def test_refused_transition_shows_an_error_and_changes_nothing(admin_client):
    work_order = _planned_work_order()
    audit_before, outbox_before = AuditEntry.objects.count(), OutboxMessage.objects.count()

    response = _run_action(admin_client, WorkOrder, "complete", [work_order])

    work_order.refresh_from_db()
    assert work_order.status == WorkOrderStatus.PLANNED
    assert work_order.completed_at is None
    errors = [m for m in response.context["messages"] if m.level_tag == "error"]
    assert len(errors) == 1
    assert "can become completed only from in_progress" in str(errors[0])
    assert AuditEntry.objects.count() == audit_before
    assert OutboxMessage.objects.count() == outbox_before


def test_an_action_on_several_orders_reports_each_outcome(admin_client):
    planned, already_released = _planned_work_order(), _planned_work_order()
    services.work_order_release(work_order=already_released)

    response = _run_action(admin_client, WorkOrder, "release", [planned, already_released])

    planned.refresh_from_db()
    assert planned.status == WorkOrderStatus.RELEASED
    levels = sorted(message.level_tag for message in response.context["messages"])
    assert levels == ["error", "success"]


def test_work_order_status_cannot_be_edited_in_the_form(admin_client):
    work_order = _planned_work_order()
    url = _url(WorkOrder, "change", work_order.pk)
    data = _form_data(admin_client.get(url))
    assert "status" not in data
    data.update({"status": "completed", "quantity": "12"})

    assert admin_client.post(url, data).status_code == 302

    work_order.refresh_from_db()
    assert (work_order.status, work_order.quantity) == (WorkOrderStatus.PLANNED, 12)


def test_adding_a_work_order_goes_through_the_service(admin_client, admin_user):
    operation = RouteOperationFactory()
    orphan_product = ProductFactory()
    form = {
        "external_id": "WO-ADMIN-1",
        "quantity": "5",
        "due_at_0": "",
        "due_at_1": "",
        "line": str(operation.route.line.pk),
    }

    refused = admin_client.post(_url(WorkOrder, "add"), {**form, "product": orphan_product.pk})

    assert refused.status_code == 200
    assert "has no route on line" in refused.content.decode()
    assert not WorkOrder.objects.filter(external_id="WO-ADMIN-1").exists()

    accepted = admin_client.post(
        _url(WorkOrder, "add"), {**form, "product": operation.route.product.pk}
    )

    assert accepted.status_code == 302
    work_order = WorkOrder.objects.get(external_id="WO-ADMIN-1")
    entries = AuditEntry.objects.filter(model="mes.workorder", object_id=str(work_order.pk))
    assert [(e.action, e.source, e.actor_id) for e in entries] == [
        ("create", "admin", admin_user.pk)
    ]


def test_adding_a_unit_to_a_cancelled_order_is_refused_on_the_form(admin_client):
    work_order = _planned_work_order()
    services.work_order_cancel(work_order=work_order, reason="customer withdrew the order")

    response = admin_client.post(
        _url(Unit, "add"), {"work_order": work_order.pk, "serial": "SN-ADMIN-1", "vin": ""}
    )

    assert response.status_code == 200
    assert "no new units" in response.content.decode()
    assert not Unit.objects.filter(serial="SN-ADMIN-1").exists()


def test_shop_floor_records_are_read_only_in_admin(admin_client, shop_floor):
    visit = shop_floor.visits.first()
    url = _url(StationVisit, "change", visit.pk)
    page = admin_client.get(url)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert admin_client.post(url, {"left_at_0": "", "left_at_1": ""}).status_code == 403
    assert admin_client.get(_url(StationVisit, "delete", visit.pk)).status_code == 403


def test_unit_page_shows_its_visits_flashes_and_quality_events(admin_client, shop_floor):
    content = admin_client.get(_url(Unit, "change", shop_floor.pk)).content.decode()
    assert "4.2.0" in content  # firmware inline
    assert "steering" in content  # quality event inline
    assert content.count("Steering rack torque") >= 1  # visit at station 1


def test_audit_trail_cannot_be_added_changed_or_deleted_in_admin(admin_client, plant):
    entry = AuditEntry.objects.first()
    assert entry is not None

    assert admin_client.get(_url(AuditEntry, "add")).status_code == 403
    page = admin_client.get(_url(AuditEntry, "change", entry.pk))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert admin_client.post(_url(AuditEntry, "change", entry.pk), {}).status_code == 403
    assert admin_client.get(_url(AuditEntry, "delete", entry.pk)).status_code == 403
    changelist = admin_client.get(_url(AuditEntry, "changelist")).content.decode()
    assert "delete_selected" not in changelist
    assert _url(AuditEntry, "add") not in changelist


def test_database_refuses_to_update_or_delete_audit_entries(plant):
    entry = AuditEntry.objects.first()

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).update(actor_name="someone else")
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM mes_auditentry WHERE id = %s", [entry.pk])

    assert AuditEntry.objects.get(pk=entry.pk).actor_name == entry.actor_name


def test_audit_entry_page_shows_before_after_and_highlights_changes(admin_client, plant):
    station = Station.objects.get(code="3")
    url = _url(Station, "change", station.pk)
    data = _form_data(admin_client.get(url))
    data["name"] = "Wheel alignment <rig 2>"
    admin_client.post(url, data)
    entry = AuditEntry.objects.get(model="mes.station", object_id=str(station.pk))

    content = admin_client.get(_url(AuditEntry, "change", entry.pk)).content.decode()

    assert '<tr class="audit-changed"' in content
    changed_row = content.split('<tr class="audit-changed"')[1].split("</tr>")[0]
    assert "<td>name</td>" in changed_row
    assert "Wheel alignment &lt;rig 2&gt;" in changed_row  # escaped, not markup
    assert content.count('class="audit-changed"') == 1  # code, line, position unchanged
    assert (
        "\n  &quot;name&quot;: &quot;Wheel alignment&quot;,\n" in content
    )  # pretty-printed before


def test_history_button_opens_the_objects_audit_trail(admin_client, plant):
    station = Station.objects.get(code="4")
    url = _url(Station, "change", station.pk)
    data = _form_data(admin_client.get(url))
    data["name"] = "Coolant leak test (helium)"
    admin_client.post(url, data)

    response = admin_client.get(_url(Station, "history", station.pk), follow=True)

    assert response.status_code == 200
    entries = list(response.context["cl"].result_list)
    assert [(e.model, e.object_id) for e in entries] == [("mes.station", str(station.pk))]


def test_webhook_secrets_never_appear_in_admin_pages(admin_client, shop_floor):
    integration = WebhookIntegration.objects.get(name="legacy")
    pages = [
        admin_client.get(_url(WebhookIntegration, "changelist")),
        admin_client.get(_url(WebhookIntegration, "change", integration.pk)),
        admin_client.get(_url(WebhookIntegration, "add")),
    ]
    for page in pages:
        content = page.content.decode()
        assert page.status_code == 200
        assert SECRET not in content
        assert PREVIOUS_SECRET not in content
    assert "rotating" in pages[1].content.decode()


def test_rotating_a_webhook_secret_in_admin_keeps_it_out_of_pages_and_trail(
    admin_client, shop_floor
):
    integration = WebhookIntegration.objects.get(name="legacy")
    url = _url(WebhookIntegration, "change", integration.pk)
    new_secret = "rotated-" + secrets.token_urlsafe(32)
    data = _form_data(admin_client.get(url))
    data["new_secret"] = new_secret

    response = admin_client.post(url, data, follow=True)

    integration.refresh_from_db()
    assert (integration.secret, integration.previous_secret) == (new_secret, SECRET)
    entry = AuditEntry.objects.get(model="mes.webhookintegration", object_id=str(integration.pk))
    trail = json.dumps([entry.before, entry.after])
    for secret in (SECRET, PREVIOUS_SECRET, new_secret):
        assert secret not in trail
        assert secret not in response.content.decode()
        assert secret not in admin_client.get(_url(AuditEntry, "change", entry.pk)).content.decode()
    assert entry.before["secret"] != entry.after["secret"]  # the fingerprint shows the rotation


def test_api_tokens_are_listed_without_digest_and_revoked_with_audit(admin_client, shop_floor):
    token = ApiToken.objects.get(name="line PLC gateway")
    changelist = admin_client.get(_url(ApiToken, "changelist")).content.decode()
    detail = admin_client.get(_url(ApiToken, "change", token.pk)).content.decode()
    assert token.prefix in changelist
    assert TOKEN_DIGEST not in changelist
    assert TOKEN_DIGEST not in detail

    _run_action(admin_client, ApiToken, "revoke", [token])

    token.refresh_from_db()
    assert token.revoked_at is not None
    entry = AuditEntry.objects.get(model="mes.apitoken", object_id=str(token.pk))
    assert (entry.source, entry.before["revoked_at"]) == ("admin", None)
    assert entry.after["revoked_at"] is not None
    assert TOKEN_DIGEST not in json.dumps([entry.before, entry.after])


def test_closing_downtime_in_admin_uses_its_recorded_reason(admin_client, shop_floor):
    downtime = DowntimeEvent.objects.get(ended_at__isnull=True)
    unexplained = services.downtime_open(
        station=Station.objects.get(code="7"), at=timezone.now() - dt.timedelta(minutes=5)
    )

    response = _run_action(admin_client, DowntimeEvent, "close_now", [downtime, unexplained])

    downtime.refresh_from_db()
    unexplained.refresh_from_db()
    assert downtime.ended_at is not None
    assert unexplained.ended_at is None
    assert sorted(m.level_tag for m in response.context["messages"]) == ["error", "success"]
    entry = AuditEntry.objects.get(
        model="mes.downtimeevent", object_id=str(downtime.pk), action="update"
    )
    assert entry.source == "admin"


def test_generating_shifts_in_admin_goes_through_the_service(admin_client):
    pattern = ShiftPattern.objects.create(line=LineFactory(), name="Day only")
    ShiftTemplate.objects.create(
        pattern=pattern, name="Day", starts=dt.time(7), ends=dt.time(15), weekdays="1234567"
    )

    _run_action(admin_client, ShiftPattern, "generate_shifts", [pattern])

    shifts = Shift.objects.filter(line=pattern.line)
    assert shifts.count() == 14
    assert AuditEntry.objects.filter(model="mes.shift", source="admin").count() == 14


def test_user_group_changes_are_audited_without_the_password_hash(admin_client, plant):
    user = UserFactory(username="night-supervisor")
    url = _url(type(user), "change", user.pk)
    data = _form_data(admin_client.get(url))
    data["groups"] = [str(Group.objects.get(name="supervisor").pk)]

    assert admin_client.post(url, data).status_code == 302

    entry = AuditEntry.objects.get(model="auth.user", object_id=str(user.pk))
    assert (entry.before["groups"], entry.after["groups"]) == ([], ["supervisor"])
    user.refresh_from_db()
    assert user.password not in json.dumps([entry.before, entry.after])


def test_password_change_in_admin_is_audited_as_a_fingerprint(admin_client):
    user = UserFactory(username="line-lead")
    old_hash = user.password
    new_password = "a much longer passphrase 42"

    response = admin_client.post(
        _url(type(user), "password_change", user.pk),
        {"password1": new_password, "password2": new_password, "usable_password": "true"},
    )

    assert response.status_code == 302
    user.refresh_from_db()
    entry = AuditEntry.objects.get(model="auth.user", object_id=str(user.pk))
    assert entry.before["password"] != entry.after["password"]
    trail = json.dumps([entry.before, entry.after])
    assert old_hash not in trail
    assert user.password not in trail
    assert new_password not in trail


def test_deleting_a_user_keeps_their_audit_trail(admin_client):
    leaver = UserFactory(username="leaver")
    station = StationFactory()
    with audit_context(user=leaver, source="api"):
        entry = audit_record(action="update", instance=station, before={}, after={})

    response = admin_client.post(_url(type(leaver), "delete", leaver.pk), {"post": "yes"})

    assert response.status_code == 302
    assert not type(leaver).objects.filter(pk=leaver.pk).exists()
    kept = AuditEntry.objects.get(pk=entry.pk)
    assert (kept.actor_id, kept.actor_name) == (leaver.pk, "leaver")
    assert AuditEntry.objects.filter(model="auth.user", action="delete", source="admin").exists()


@pytest.mark.parametrize("path", ["/admin/", "/admin/mes/workorder/", "/admin/mes/auditentry/"])
def test_supervisor_cannot_reach_the_admin(client, path):
    client.force_login(UserFactory(role="supervisor"))

    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_work_order_actions_follow_the_role_permissions(client):
    # Operators may start and complete orders but not release or cancel them.
    operator = UserFactory(role="operator", is_staff=True)
    client.force_login(operator)

    response = client.get(_url(WorkOrder, "changelist"))

    assert response.status_code == 200
    offered = {name for name, _label in response.context["action_form"].fields["action"].choices}
    assert {"start", "complete"} <= offered
    assert not offered & {"release", "cancel", "delete_selected"}

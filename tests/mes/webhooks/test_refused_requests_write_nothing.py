"""Every refusal answers its status and leaves the database exactly as it was: no inbox row,
no visit, no firmware, no audit entry, no outbox message."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from django.contrib.auth.models import Group
from django.test import override_settings

from mes import services
from mes.models import WebhookIntegration
from tests.mes.webhooks.conftest import VIN, signed_headers, written

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.mes.webhooks.urls")]

ORIGINAL = {"station_id": "5", "vin": VIN, "firmware": "v2.1.4"}


def _refused(send, expected_status: int, *args, **kwargs) -> dict:
    before = written()
    response = send(*args, **kwargs)
    assert response.status_code == expected_status, response.content
    assert written() == before
    return response.json()


@pytest.mark.parametrize(
    "missing", ["X-Aegis-Integration", "X-Aegis-Timestamp", "X-Aegis-Signature"]
)
def test_missing_header_is_unauthorised(send, plant, missing):
    body = _refused(send, 401, ORIGINAL, drop=[missing])
    assert body["code"] == "unauthorized"


def test_signature_of_another_body_is_unauthorised(send, plant):
    signed_for = json.dumps({**ORIGINAL, "firmware": "v9.9.9"}).encode()
    _refused(send, 401, ORIGINAL, headers=signed_headers(signed_for))


def test_wrong_secret_is_unauthorised(send, plant):
    body = _refused(send, 401, ORIGINAL, secret="0" * 64)
    assert body == {"code": "unauthorized", "detail": "invalid signature"}


def test_retired_previous_secret_is_unauthorised(send, plant, integration):
    old = integration.previous_secret
    integration.previous_secret = ""
    integration.save()
    _refused(send, 401, ORIGINAL, secret=old)


def test_signature_over_another_timestamp_is_unauthorised(send, plant):
    now = int(time.time())
    headers = signed_headers(json.dumps(ORIGINAL).encode(), timestamp=now - 1)
    headers["X-Aegis-Timestamp"] = str(now)
    _refused(send, 401, ORIGINAL, headers=headers)


@pytest.mark.parametrize("signature", ["sha256=zz", "md5=" + "0" * 64, "0" * 64, "sha256="])
def test_malformed_signature_is_unauthorised(send, plant, signature):
    _refused(send, 401, ORIGINAL, headers={"X-Aegis-Signature": signature})


@pytest.mark.parametrize("timestamp", ["soon", "-5", "1714234567.5", "17142345670000"])
def test_malformed_timestamp_is_unauthorised(send, plant, timestamp):
    _refused(send, 401, ORIGINAL, timestamp=timestamp)


# Past the 300 s window by more than a slow machine's request time (int() truncates up to 1 s).
@pytest.mark.parametrize("skew", [-310, 310, -3600, 86400], ids=["past", "future", "hour", "day"])
def test_stale_timestamp_is_unauthorised_even_when_signed(send, plant, skew):
    body = _refused(send, 401, ORIGINAL, timestamp=int(time.time()) + skew)
    assert body["detail"].startswith("stale timestamp")


@pytest.mark.parametrize("skew", [-290, 290])
def test_timestamp_within_five_minutes_is_accepted(send, plant, skew):
    response = send(ORIGINAL, timestamp=int(time.time()) + skew)
    assert response.status_code == 200, response.content


def test_unknown_integration_is_unauthorised_like_a_bad_signature(send, plant):
    body = _refused(send, 401, ORIGINAL, integration="nobody")
    assert body == {"code": "unauthorized", "detail": "invalid signature"}


def test_inactive_integration_is_unauthorised(send, plant, integration):
    WebhookIntegration.objects.filter(pk=integration.pk).update(is_active=False)
    _refused(send, 401, ORIGINAL)


def test_account_without_permission_is_forbidden(send, plant, integrator):
    integrator.groups.set([Group.objects.get(name="operator")])
    body = _refused(send, 403, ORIGINAL)
    assert body["code"] == "forbidden"


def test_inactive_account_is_forbidden(send, plant, integrator):
    integrator.is_active = False
    integrator.save()
    _refused(send, 403, ORIGINAL)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{not json", b"[1, 2]", b'"station"', b'{"station_id": NaN}', b"\xff\xfe{}"],
    ids=["empty", "broken", "array", "string", "nan", "not-utf8"],
)
def test_body_that_is_not_a_json_object_is_malformed(send, plant, raw):
    body = _refused(send, 400, body=raw)
    assert body["code"] == "invalid"
    assert "body" in body["fields"]


def test_missing_fields_are_named(send, plant):
    body = _refused(send, 400, {"type": "counts.reported", "event_id": "c-1", "good": -1})
    assert set(body["fields"]) == {"station_id", "interval_start", "interval_end", "good"}


def test_original_payload_without_unit_is_malformed(send, plant):
    body = _refused(send, 400, {"station_id": "5", "firmware": "v2.1.4"})
    assert body["fields"] == {"vin": ["give the unit's vin or serial"]}


def test_typed_event_without_event_id_is_malformed(send, plant):
    body = _refused(send, 400, {"type": "unit.arrived", "station_id": "5", "vin": VIN})
    assert list(body["fields"]) == ["event_id"]


def test_unknown_event_type_is_malformed(send, plant):
    body = _refused(send, 400, {"type": "unit.teleported", "event_id": "t-1"})
    assert list(body["fields"]) == ["type"]


def test_event_id_in_body_and_header_must_agree(send, plant):
    payload = {**ORIGINAL, "event_id": "a"}
    body = _refused(send, 400, payload, headers={"X-Aegis-Event-Id": "b"})
    assert list(body["fields"]) == ["event_id"]


@pytest.mark.parametrize(
    "at",
    ["2026-04-27T09:22:47", "2026-04-27", "yesterday", 1714234567, True],
    ids=["naive", "date", "word", "seconds", "bool"],
)
def test_timestamp_without_offset_or_unit_is_malformed(send, plant, at):
    body = _refused(send, 400, {**ORIGINAL, "at": at})
    assert list(body["fields"]) == ["at"]


def test_fact_in_the_future_is_malformed(send, plant):
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    body = _refused(send, 400, {**ORIGINAL, "at": ahead.isoformat()})
    assert body["fields"]["at"][0].startswith("lies in the future")


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", 1e400, -1e20], ids=str)
def test_timestamp_out_of_range_is_malformed(send, plant, at):
    raw = json.dumps({**ORIGINAL, "at": at}).encode().replace(b"Infinity", b"1e400")
    body = _refused(send, 400, body=raw)
    assert list(body["fields"]) == ["at"]


def test_count_beyond_the_database_integer_is_malformed(send, plant):
    payload = {
        "event_id": "w-1",
        "type": "work_order.created",
        "work_order": "WO-9",
        "product": "P",
        "line": "L",
        "quantity": 2**31,
    }
    body = _refused(send, 400, payload)
    assert list(body["fields"]) == ["quantity"]


def test_unknown_station_is_unprocessable(send, plant):
    body = _refused(send, 422, {**ORIGINAL, "station_id": "99"})
    assert body["code"] == "unknown_reference"
    assert body["fields"] == {"station_id": ["unknown station '99'"]}


def test_unknown_vin_is_unprocessable(send, plant):
    # The original example VIN: its check digit is wrong, so no unit can carry it.
    body = _refused(send, 422, {**ORIGINAL, "vin": "1HGBH41JXMN100005"})
    assert body["fields"] == {"vin": ["unknown VIN"]}


def test_unknown_codes_are_unprocessable(send, plant):
    base = {"event_id": "q-1", "type": "quality.recorded", "vin": VIN, "severity": "major"}
    body = _refused(send, 422, {**base, "defect": "no-such-defect"})
    assert list(body["fields"]) == ["defect"]
    body = _refused(send, 422, {**base, "type": "work_order.started", "work_order": "WO-0"})
    assert list(body["fields"]) == ["work_order"]


def test_oversize_body_is_refused_unread(send, plant):
    padding = "x" * (256 * 1024)
    body = _refused(send, 413, {**ORIGINAL, "comment": padding})
    assert body["code"] == "too_large"


@override_settings(WEBHOOK_MAX_BODY_BYTES=64)
def test_body_limit_is_a_setting(send, plant):
    _refused(send, 413, ORIGINAL)


def test_service_refusal_rolls_back_the_inbox_row(send, plant):
    payload = {"event_id": "wo-1", "type": "work_order.completed", "work_order": "WO-4711"}
    body = _refused(send, 409, payload)
    assert body["code"] == "transition_refused"
    assert "is planned" in body["detail"]


def test_refusal_in_second_step_rolls_back_the_first(send, plant):
    """station_state arrives, then flashes: a flash the database refuses (same component at
    the same instant) undoes the arrival too."""
    at = dt.datetime(2026, 4, 27, 7, tzinfo=dt.UTC)
    services.firmware_flash(unit=plant.unit, component="MAIN", version="v1.0.0", at=at)

    body = _refused(send, 409, {**ORIGINAL, "event_id": "e-1", "at": at.isoformat()})

    assert body["fields"] == {"constraint": ["mes_flash_unique_instant"]}


def test_get_is_not_allowed(client, plant, integration):
    response = client.get("/api/v1/webhooks/mes")
    assert response.status_code == 405


def test_refused_event_can_be_sent_again_once_fixed(send, plant):
    payload = {**ORIGINAL, "event_id": "retry-1", "station_id": "99"}
    assert send(payload).status_code == 422
    response = send({**payload, "station_id": "5"})
    assert response.status_code == 200, response.content
    assert response.get("X-Aegis-Idempotent-Replay") is None

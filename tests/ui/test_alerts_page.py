"""The alerts page: newest first, filtered server-side by status, station, line and time range
from a deep-linkable query string, paginated; each row says where, on which VIN, work order and
firmware, by how much and why; Acknowledge and Resolve appear only for the roles that may use
them and work through the REST endpoints with the session and its CSRF token."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from foresight import registry
from foresight.models import AlertStatus, DefectAlert, ModelVersion
from mes import services
from tests.factories import (
    PASSWORD,
    LineFactory,
    SiteFactory,
    StationFactory,
    UnitFactory,
    UserFactory,
    WorkOrderFactory,
)
from tests.ui.test_board import Element, make_vin, parse

pytestmark = pytest.mark.django_db

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
EXPLANATION = [
    {"feature": "torque.slope@100", "signal": "torque", "value": 0.09, "z": 3.1, "share": 0.15},
    {"feature": "torque.mean@20", "signal": "torque", "value": 51.2, "z": 6.8, "share": 0.71},
]


class Alerts:
    """Two lines in one Berlin site; alerts at stations of both, hours apart, in each status."""

    def __init__(self) -> None:
        site = SiteFactory(timezone="Europe/Berlin")
        self.line_1 = LineFactory(area__site=site)
        self.line_2 = LineFactory(area__site=site)
        self.s1 = StationFactory(line=self.line_1)
        self.s2 = StationFactory(line=self.line_2)
        self.now = timezone.now().replace(microsecond=0)
        self.work_order = WorkOrderFactory(line=self.line_1)
        self.unit = UnitFactory(work_order=self.work_order, vin=make_vin())
        arrival = self.now - dt.timedelta(hours=30)
        services.firmware_flash(unit=self.unit, component="EPS", version="4.2.1", at=arrival)
        services.unit_arrive(unit=self.unit, station=self.s1, at=arrival)
        self.model = ModelVersion.objects.create(
            version="s1-pca-7",
            station=self.s1,
            kind="pca_t2q",
            feature_spec={},
            threshold=1.0,
            training_start=self.now - dt.timedelta(days=9),
            training_end=self.now - dt.timedelta(days=2),
            artifact_path="s1.onnx",
            sha256="0" * 64,
        )
        # s1: now-10 min (open, with a model), now-2 h (acknowledged), now-26 h (resolved)
        self.recent = self.raise_(self.s1, minutes=10, model_version=self.model)
        self.acknowledged = registry.acknowledge(alert=self.raise_(self.s1, minutes=120))
        self.resolved = registry.resolve(
            alert=self.raise_(self.s1, minutes=26 * 60), feedback="true_defect"
        )
        # s2 (another line): now-30 min (open), no unit there
        self.other_line = self.raise_(self.s2, minutes=30)

    def raise_(self, station, *, minutes: float, **fields) -> DefectAlert:
        return registry.raise_alert(
            station=station,
            ts=self.now - dt.timedelta(minutes=minutes),
            score=2.4,
            threshold=1.0,
            triggering={"torque": 51.2, "angle": 31.0},
            explanation=EXPLANATION,
            **fields,
        )


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


def signed_in(client, role: str = "supervisor"):
    client.force_login(UserFactory(role=role))
    return client


def rows(content: bytes) -> list[Element]:
    return parse(content).select("li", data_alert_id=True)


def ids(content: bytes) -> list[int]:
    return [int(row.attrs["data-alert-id"]) for row in rows(content)]


def buttons(row: Element) -> list[str]:
    return [button.text for button in row.select("button")]


# -- access ------------------------------------------------------------------------------------


def test_signed_out_visitors_are_sent_to_sign_in_and_come_back_to_the_filtered_list(alerts):
    visitor = Client()

    response = visitor.get("/alerts/?status=open")

    assert response.status_code == 302
    target = urlsplit(response["Location"])
    assert target.path == "/accounts/login/"
    signed_in = visitor.post(
        "/accounts/login/",
        {
            "username": UserFactory(role="operator").username,
            "password": PASSWORD,
            "next": parse_qs(target.query)["next"][0],
        },
    )
    assert signed_in["Location"] == "/alerts/?status=open"


def test_a_role_without_the_alert_permission_is_refused(client, alerts):
    client.force_login(UserFactory())

    response = client.get("/alerts/")

    assert response.status_code == 403
    assert b"foresight.view_defectalert" in response.content


# -- the list and its filters ----------------------------------------------------------------


def test_alerts_are_listed_newest_first(client, alerts):
    response = signed_in(client).get("/alerts/")

    assert response.status_code == 200
    assert ids(response.content)[:4] == [
        alerts.recent.pk,
        alerts.other_line.pk,
        alerts.acknowledged.pk,
        alerts.resolved.pk,
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=open", ["recent", "other_line"]),
        ("status=acknowledged", ["acknowledged"]),
        ("status=resolved", ["resolved"]),
        ("status=active", ["recent", "other_line", "acknowledged"]),
        ("range=1h", ["recent", "other_line"]),
        ("range=24h&status=active", ["recent", "other_line", "acknowledged"]),
        ("range=8h&status=resolved", []),
    ],
)
def test_status_and_time_range_filters_select_the_alerts(client, alerts, query, expected):
    response = signed_in(client).get(f"/alerts/?{query}")

    assert response.status_code == 200
    assert ids(response.content) == [getattr(alerts, name).pk for name in expected]


def test_station_and_line_filters_select_the_alerts_of_that_place(client, alerts):
    client = signed_in(client)

    by_station = client.get(f"/alerts/?station={alerts.s2.code}")
    by_line = client.get(f"/alerts/?line={alerts.line_1.pk}&status=open")

    assert ids(by_station.content) == [alerts.other_line.pk]
    assert ids(by_line.content) == [alerts.recent.pk]


def test_a_custom_range_is_read_in_the_plants_time_zone(client, alerts):
    # The acknowledged alert was raised two hours ago: a window of Berlin wall-clock times
    # around it finds it only if the page reads the times as Berlin's, not as UTC.
    local = timezone.localtime(alerts.acknowledged.ts, BERLIN)
    since = (local - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    until = (local + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")

    response = signed_in(client).get(f"/alerts/?range=custom&since={since}&until={until}")

    assert ids(response.content) == [alerts.acknowledged.pk]
    page = parse(response.content)
    assert page.one("input", name="since").attrs["value"] == since
    assert "Europe/Berlin" in page.text


def test_a_range_that_ends_before_it_starts_is_refused_with_the_reason(client, alerts):
    response = signed_in(client).get(
        "/alerts/?range=custom&since=2025-03-03T10:00&until=2025-03-03T09:00"
    )

    assert response.status_code == 400
    assert "after its end" in parse(response.content).one(role="alert").text
    assert ids(response.content) == []


def test_an_unknown_station_in_a_link_is_refused_not_ignored(client, alerts):
    response = signed_in(client).get("/alerts/?station=no-such-station")

    assert response.status_code == 400
    assert ids(response.content) == []


def test_pages_of_25_keep_the_filters_in_their_links(client, alerts):
    for minute in range(30):
        alerts.raise_(alerts.s2, minutes=40 + minute)
    client = signed_in(client)

    first = client.get(f"/alerts/?station={alerts.s2.code}&status=open")
    next_link = parse(first.content).one("a", rel="next").attrs["href"]
    second = client.get(f"/alerts/{next_link}")

    assert len(ids(first.content)) == 25
    assert parse_qs(urlsplit(next_link).query) == {
        "station": [alerts.s2.code],
        "status": ["open"],
        "page": ["2"],
    }
    assert len(ids(second.content)) == 6  # 31 open alerts at s2
    assert set(ids(first.content)).isdisjoint(ids(second.content))


def test_a_single_alert_is_rendered_on_its_own_for_the_live_list(client, alerts):
    response = signed_in(client).get(f"/alerts/?id={alerts.other_line.pk}")

    assert ids(response.content) == [alerts.other_line.pk]
    assert parse(response.content).one(id="alert-results").attrs["data-single"] == "true"


# -- what a row says -------------------------------------------------------------------------


def test_a_row_says_where_on_which_vin_work_order_and_firmware_and_by_how_much(client, alerts):
    response = signed_in(client).get(f"/alerts/?id={alerts.recent.pk}")

    (row,) = rows(response.content)
    text = row.text
    assert f"Station {alerts.s1.code}" in text
    assert alerts.unit.vin in text
    assert alerts.work_order.external_id in text
    assert "EPS 4.2.1" in text
    assert "2.400 / 1.000" in text
    assert "model s1-pca-7" in text
    assert row.attrs["data-status"] == "open"
    hrefs = [link.attrs["href"] for link in row.select("a")]
    instant = alerts.recent.ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    trace = next(href for href in hrefs if href.startswith("/trace/"))
    assert parse_qs(urlsplit(trace).query) == {"vin": [alerts.unit.vin], "at": [instant]}
    assert f"/stations/{alerts.s1.code}/" in hrefs
    assert f"/work-orders/{alerts.work_order.external_id}/" in hrefs


def test_the_explanation_lists_features_by_their_share_with_bars(client, alerts):
    response = signed_in(client).get(f"/alerts/?id={alerts.recent.pk}")

    (row,) = rows(response.content)
    table_rows = row.one("table").one("tbody").select("tr")
    assert [tr.one("th").text for tr in table_rows] == ["torque.mean@20", "torque.slope@100"]
    assert [tr.select("td")[-1].text for tr in table_rows] == ["71 %", "15 %"]
    bars = [tr.select("td")[-1].select("span")[1].attrs["style"] for tr in table_rows]
    assert bars == ["width: 71%", "width: 15%"]
    assert "6.8 \N{GREEK SMALL LETTER SIGMA}" in table_rows[0].text


# -- who may act ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("supervisor", ["Acknowledge", "Resolve"]),
        ("quality_engineer", ["Acknowledge", "Resolve"]),
        ("operator", ["Acknowledge"]),
        ("ml_engineer", []),
        ("integrator", []),
    ],
)
def test_buttons_are_shown_only_to_roles_that_may_use_them(client, alerts, role, expected):
    response = signed_in(client, role).get("/alerts/")

    by_id = {int(row.attrs["data-alert-id"]): row for row in rows(response.content)}
    open_buttons = [text for text in buttons(by_id[alerts.recent.pk]) if text in expected]
    assert open_buttons == expected
    acknowledged = [text for text in buttons(by_id[alerts.acknowledged.pk]) if text != "Cancel"]
    assert "Acknowledge" not in acknowledged
    assert ("Resolve" in acknowledged) == ("Resolve" in expected)
    assert buttons(by_id[alerts.resolved.pk]) == []


def _csrf_client(role: str) -> tuple[Client, str]:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(UserFactory(role=role))
    page = parse(browser.get("/alerts/").content)
    return browser, page.one("meta", name="csrf-token").attrs["content"]


def test_acknowledge_works_through_the_rest_endpoint_with_the_session_and_csrf_token(alerts):
    browser, token = _csrf_client("operator")
    page = parse(browser.get(f"/alerts/?id={alerts.recent.pk}").content)
    url = page.one("li", data_alert_id=str(alerts.recent.pk)).attrs["data-acknowledge-url"]

    forged = browser.post(url, "{}", content_type="application/json")
    acknowledged = browser.post(
        url, json.dumps({"note": ""}), content_type="application/json", HTTP_X_CSRFTOKEN=token
    )

    assert forged.status_code == 403
    assert acknowledged.status_code == 200
    alerts.recent.refresh_from_db()
    assert alerts.recent.status == AlertStatus.ACKNOWLEDGED
    (row,) = rows(browser.get(f"/alerts/?id={alerts.recent.pk}").content)
    assert row.attrs["data-status"] == "acknowledged"
    assert "Acknowledge" not in buttons(row)


def test_resolve_records_the_feedback_and_the_comment(alerts):
    browser, token = _csrf_client("quality_engineer")
    page = parse(browser.get(f"/alerts/?id={alerts.acknowledged.pk}").content)
    url = page.one("li", data_alert_id=str(alerts.acknowledged.pk)).attrs["data-resolve-url"]

    response = browser.post(
        url,
        json.dumps({"feedback": "false_alarm", "note": "fixture was loose"}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )

    assert response.status_code == 200
    alerts.acknowledged.refresh_from_db()
    assert (alerts.acknowledged.status, alerts.acknowledged.feedback) == ("resolved", "false_alarm")
    assert "fixture was loose" in alerts.acknowledged.note


def test_a_role_without_the_button_is_refused_by_the_endpoint_too(alerts):
    browser, token = _csrf_client("ml_engineer")
    url = f"/api/v1/foresight/alerts/{alerts.recent.pk}/acknowledge"

    response = browser.post(url, "{}", content_type="application/json", HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 403
    alerts.recent.refresh_from_db()
    assert alerts.recent.status == AlertStatus.OPEN


def test_a_page_of_alerts_costs_the_same_queries_whatever_its_length(
    client, alerts, django_assert_max_num_queries
):
    client = signed_in(client)
    with django_assert_max_num_queries(20) as few:
        client.get("/alerts/")
    for minute in range(21):
        alerts.raise_(alerts.s1, minutes=300 + minute, model_version=alerts.model)

    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get("/alerts/")

    assert len(ids(response.content)) == 25

"""The plant board renders each station's state now from the database: the unit and VIN there,
its work order and firmware, an open downtime, unresolved alerts and the latest Foresight
score; visitors get the sign-in form and roles without the permission a 403."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from foresight import registry
from foresight.models import Score
from mes import services
from mes.models import StationSignal, vin_check_digit
from tests.factories import (
    DowntimeReasonFactory,
    LineFactory,
    StationFactory,
    UnitFactory,
    UserFactory,
    WorkOrderFactory,
)

pytestmark = pytest.mark.django_db

_vins = itertools.count(300_000)


def make_vin() -> str:
    vin = f"1HGBH41J0MN{next(_vins):06d}"
    return vin[:8] + vin_check_digit(vin) + vin[9:]


# -- a small HTML reader (the standard library's parser; no third-party dependency) -----------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}


class Element:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Element | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element | str] = []

    @property
    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text for c in self.children]
        return re.sub(r"\s+", " ", " ".join(parts)).strip()

    def iter(self):
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def select(self, tag: str | None = None, **attrs: str | bool) -> list[Element]:
        """Descendants with `tag` and these attributes (`data_field` is data-field; True: any)."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            element
            for element in self.iter()
            if (tag is None or element.tag == tag)
            and all(
                (name in element.attrs) if value is True else element.attrs.get(name) == value
                for name, value in wanted.items()
            )
        ]

    def one(self, tag: str | None = None, **attrs: str | bool) -> Element:
        found = self.select(tag, **attrs)
        assert len(found) == 1, f"{len(found)} elements match {tag} {attrs}"
        return found[0]


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        if tag not in _VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, dict(attrs), self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(content: bytes | str) -> Element:
    reader = _Reader()
    reader.feed(content.decode() if isinstance(content, bytes) else content)
    return reader.root


def tile(document: Element, code: str) -> Element:
    return document.one("li", data_station=code)


def field(element: Element, name: str) -> str:
    return element.one(data_field=name).text


# -- a floor with one station in each state -----------------------------------------------------


class Floor:
    """One line: A occupied (unit with a VIN, two flashed components), B down, C idle (its unit
    left), D occupied with an open alert, and scores for A."""

    def __init__(self) -> None:
        now = timezone.now()
        self.line = LineFactory()
        self.a, self.b, self.c, self.d = (
            StationFactory(line=self.line, position=position) for position in (1, 2, 3, 4)
        )
        StationSignal.objects.create(
            station=self.a, name="torque", unit="N·m", nominal_min=40, nominal_max=48
        )
        StationSignal.objects.create(station=self.a, name="angle", unit="deg")
        self.work_order = WorkOrderFactory(line=self.line)
        self.unit = UnitFactory(work_order=self.work_order, vin=make_vin())
        services.firmware_flash(unit=self.unit, component="EPS", version="4.2.0", at=now - _s(300))
        services.firmware_flash(unit=self.unit, component="EPS", version="4.2.1", at=now - _s(200))
        services.firmware_flash(unit=self.unit, component="BCM", version="1.7", at=now - _s(100))
        services.unit_arrive(unit=self.unit, station=self.a, at=now - _s(60))
        self.reason = DowntimeReasonFactory(code="MECH.JAM", name="Fixture jam")
        services.downtime_open(station=self.b, at=now - _s(30), reason=self.reason)
        self.gone = UnitFactory(work_order=self.work_order, vin=make_vin())
        services.unit_arrive(unit=self.gone, station=self.c, at=now - _s(120))
        services.unit_leave(unit=self.gone, station=self.c, at=now - _s(90))
        self.watched = UnitFactory(work_order=self.work_order, vin=make_vin())
        services.unit_arrive(unit=self.watched, station=self.d, at=now - _s(40))
        self.alert = registry.raise_alert(
            station=self.d, ts=now - _s(10), score=2.5, threshold=1.0, triggering={"torque": 51.0}
        )
        for seconds, score in ((20, 0.4), (5, 1.6)):
            Score.objects.create(
                station_id=self.a.pk, ts=now - _s(seconds), seq=0, model_version_id=0, score=score
            )
        # A shadow model's later score is not what the board shows.
        Score.objects.create(
            station_id=self.a.pk, ts=now - _s(1), model_version_id=999, score=9.0, shadow=True
        )


def _s(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


@pytest.fixture
def floor() -> Floor:
    return Floor()


# -- who sees it ------------------------------------------------------------------------------


def test_a_visitor_gets_the_sign_in_form_not_the_board(client, floor):
    response = client.get("/")

    assert response.status_code == 200
    page = parse(response.content)
    assert page.select("input", name="username")
    assert page.select("input", name="password")
    assert not page.select(data_station=True)


def test_a_signed_in_user_without_the_station_permission_is_refused(client, floor):
    client.force_login(UserFactory())  # no role

    response = client.get("/")

    assert response.status_code == 403
    assert b"mes.view_station" in response.content
    assert floor.unit.vin.encode() not in response.content


def test_a_role_that_reads_stations_but_not_alerts_sees_tiles_without_alerts_or_scores(
    client, floor
):
    user = UserFactory()
    user.user_permissions.add(
        Permission.objects.get(codename="view_station", content_type__app_label="mes")
    )
    client.force_login(user)

    page = parse(client.get("/").content)

    assert field(tile(page, floor.a.code), "vin") == floor.unit.vin
    assert tile(page, floor.d.code).attrs["data-state"] == "occupied"
    assert tile(page, floor.d.code).attrs["data-open-alerts"] == "0"
    assert field(tile(page, floor.a.code), "score").endswith("no score yet")


# -- what it shows ------------------------------------------------------------------------------


def test_the_board_shows_each_stations_state_now_from_the_database(client, floor):
    client.force_login(UserFactory(role="supervisor"))

    response = client.get("/")

    assert response.status_code == 200
    page = parse(response.content)
    occupied = tile(page, floor.a.code)
    assert occupied.attrs["data-state"] == "occupied"
    assert field(occupied, "state") == "Occupied"
    assert field(occupied, "vin") == floor.unit.vin
    assert field(occupied, "unit") == floor.unit.serial
    assert field(occupied, "work-order") == floor.work_order.external_id
    assert field(occupied, "firmware") == "BCM 1.7 EPS 4.2.1"  # the latest flash per component

    down = tile(page, floor.b.code)
    assert down.attrs["data-state"] == "down"
    assert field(down, "state") == "Down"
    assert "Fixture jam" in field(down, "downtime")
    assert field(down, "vin") == "—"

    idle = tile(page, floor.c.code)
    assert idle.attrs["data-state"] == "idle"
    assert (field(idle, "vin"), field(idle, "work-order")) == ("—", "—")

    alerting = tile(page, floor.d.code)
    assert alerting.attrs["data-state"] == "alert"
    assert alerting.attrs["data-mes-state"] == "occupied"
    assert field(alerting, "state") == "Alert"
    assert field(alerting, "vin") == floor.watched.vin
    assert field(alerting, "alerts") == "▲ 1 open"


def test_the_score_is_the_latest_production_score_against_its_threshold(client, floor):
    client.force_login(UserFactory(role="quality_engineer"))

    page = parse(client.get("/").content)

    score = tile(page, floor.a.code).one(data_field="score")
    assert (score.attrs["data-score"], score.attrs["data-threshold"]) == ("1.6", "1.0")
    assert "1.60 / 1.00" in score.text
    assert "above threshold" in score.text
    assert "above" in score.attrs["class"]


def test_every_tile_has_a_sparkline_of_its_first_declared_signal(client, floor):
    client.force_login(UserFactory(role="operator"))

    page = parse(client.get("/").content)

    sparkline = tile(page, floor.a.code).one("canvas", data_field="sparkline")
    assert sparkline.attrs["data-signal"] == "torque"
    assert float(sparkline.attrs["data-nominal-min"]) == 40.0
    assert float(sparkline.attrs["data-nominal-max"]) == 48.0
    assert sparkline.attrs["role"] == "img"
    assert "torque" in sparkline.attrs["aria-label"]


def test_a_resolved_alert_no_longer_colours_the_tile(client, floor):
    registry.resolve(alert=floor.alert, feedback="false_alarm")
    client.force_login(UserFactory(role="supervisor"))

    page = parse(client.get("/").content)

    assert tile(page, floor.d.code).attrs["data-state"] == "occupied"
    assert "hidden" in tile(page, floor.d.code).one(data_field="alerts").attrs


def test_lines_and_stations_appear_in_plant_order(client, floor):
    client.force_login(UserFactory(role="operator"))

    page = parse(client.get("/").content)

    codes = [element.attrs["data-station"] for element in page.select("li", data_station=True)]
    expected = [floor.a.code, floor.b.code, floor.c.code, floor.d.code]
    assert [code for code in codes if code in expected] == expected


def test_the_board_costs_the_same_queries_for_four_stations_or_forty(
    client, floor, django_assert_max_num_queries
):
    client.force_login(UserFactory(role="supervisor"))
    with django_assert_max_num_queries(9) as few:
        client.get("/")
    for _ in range(36):
        StationFactory(line=floor.line)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get("/")
    assert len(parse(response.content).select("li", data_station=True)) >= 40

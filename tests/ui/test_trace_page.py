"""The VIN trace page: /trace/?vin=<VIN>&at=<instant> answers what was happening to a vehicle
at an instant (timeline, telemetry table with the triggering torque, scores, alerts), for every
role that reads units, with clear messages for an unknown VIN or an instant outside its life.

Also here: `parse`, the small HTML reader the page tests of UI-B share (standard library only).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from mes.roles import ROLES
from tests.factories import UserFactory
from tests.telemetry.test_series_api import SERIAL, SPIKE, VIN, WORK_ORDER, at, traced_vehicle

pytestmark = pytest.mark.django_db


# -- reading HTML -------------------------------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text for c in self.children]
        return re.sub(r"\s+", " ", " ".join(parts)).strip()

    def walk(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find_all(self, tag: str | None = None, **attrs: str | bool) -> list[Node]:
        """Descendants with this tag and attributes (`True`: present; `class_` for class;
        `data_ts` for data-ts)."""
        wanted = {name.rstrip("_").replace("_", "-"): value for name, value in attrs.items()}
        found = []
        for node in self.walk():
            if tag and node.tag != tag:
                continue
            ok = True
            for name, value in wanted.items():
                have = node.attrs.get(name)
                if value is True:
                    ok = ok and name in node.attrs
                elif name == "class":
                    ok = ok and value in (have or "").split()
                else:
                    ok = ok and have == value
            if ok:
                found.append(node)
        return found

    def one(self, tag: str | None = None, **attrs: str | bool) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}>"
        return found[0]


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(response) -> Node:
    reader = _Reader()
    reader.feed(response.content.decode())
    return reader.root


def signed_in(client, role: str | None):
    client.force_login(UserFactory(role=role))
    return client


# -- the page -----------------------------------------------------------------------------------


@pytest.fixture
def vehicle():
    return traced_vehicle()


def trace(client, **query):
    return client.get("/trace/", query)


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = trace(client, vin=VIN)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/trace/")


def test_a_user_without_a_role_is_refused(client, vehicle):
    assert trace(signed_in(client, None), vin=VIN).status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_every_role_traces_a_vin(client, vehicle, role):
    response = trace(signed_in(client, role), vin=VIN, at=at(20).isoformat())
    assert response.status_code == 200


def test_the_trace_at_the_alert_shows_the_triggering_torque(
    client, vehicle, django_assert_max_num_queries
):
    signed_in(client, "quality_engineer")
    with django_assert_max_num_queries(25):
        response = trace(client, vin=VIN, at="2025-03-10T09:00:20Z", window="5")
    assert response.status_code == 200
    page = parse(response)
    table = page.one("table", id="trace-telemetry")
    rows = table.find_all("tr", data_ts=True)
    assert len(rows) == 101  # ±5 s at 10 Hz
    (spike,) = [row for row in rows if row.attrs["data-ts"] == "2025-03-10T09:00:20.000Z"]
    assert "at-instant" in spike.attrs["class"]
    assert spike.attrs["data-alert-id"] == str(vehicle.alert_id)
    torque = spike.one("td", data_signal="torque")
    assert torque.attrs["data-value"] == str(SPIKE)
    assert torque.text == "57.25"
    header = [th.text for th in table.find_all("th")]
    assert header[:4] == ["Time", "Unit", "angle [deg]", "torque [N·m]"]
    # The unit, where it was and what it ran then; the alert; the charts' data.
    assert "at station TA Rack torque" in page.one(id="trace-where").text
    assert page.one("dl", id="trace-unit").text.count(WORK_ORDER) == 1
    alert_row = page.one("table", id="trace-alerts").one("tr", data_alert_id=str(vehicle.alert_id))
    assert "pca-TA-1" in alert_row.text
    assert "torque 57.25" in alert_row.text
    data = page.one("script", id="trace-data").text
    assert '"label": "pca-TA-2"' in data
    assert '"shadow": true' in data


def test_the_timeline_shows_visits_flashes_quality_events_and_alerts(client, vehicle):
    page = parse(trace(signed_in(client, "supervisor"), vin=VIN, at=at(20).isoformat()))
    timeline = page.one(id="trace-timeline")
    assert [n.text for n in timeline.find_all(class_="tl-label")] == [
        f"Work order {WORK_ORDER}",
        "TA Rack torque",
        "TB ECU flash",
        "",
    ]
    labels = [mark.attrs["aria-label"] for mark in timeline.find_all("a", class_="tl-mark")]
    assert sum(label.startswith("at TA") for label in labels) == 1
    assert any(label.startswith("EPS 4.2.1 flashed") for label in labels)
    assert any(label.startswith("steering (major) found") for label in labels)
    assert any(label.startswith("alert model score 7.5") for label in labels)
    assert any(label.startswith("work order released") for label in labels)
    # Every marker links to a trace of its own instant.
    assert all(
        mark.attrs["href"].startswith(f"?vin={VIN}&at=")
        for mark in timeline.find_all("a", class_="tl-mark")
    )
    # The instant: one cursor line across each row, at the same place.
    cursors = timeline.find_all(class_="tl-cursor")
    assert len(cursors) == 3
    assert len({cursor.attrs["style"] for cursor in cursors}) == 1
    events = page.one("table", id="trace-events").text
    assert "EPS 4.2.1" in events
    assert "steering — Steering pull, major, by inspection: pulls left at 80 km/h" in events


def test_a_serial_and_a_hand_typed_offset_find_the_same_unit(client, vehicle):
    signed_in(client, "operator")
    # "+01:00" typed into a URL arrives as " 01:00".
    response = client.get(f"/trace/?vin={SERIAL}&at=2025-03-10T10:00:20 01:00")
    assert response.status_code == 200
    page = parse(response)
    assert page.one(id="trace-instant").attrs["datetime"] == "2025-03-10T09:00:20.000Z"
    assert page.one("input", id="trace-vin").attrs["value"] == SERIAL


def test_an_unknown_vin_says_so(client, vehicle):
    response = trace(signed_in(client, "operator"), vin="1HGCM82633A004352")
    assert response.status_code == 404
    assert "No unit has the VIN or serial" in parse(response).one(id="trace-error").text


def test_an_instant_outside_the_unit_s_life_says_when_it_was_on_the_line(client, vehicle):
    response = trace(signed_in(client, "operator"), vin=VIN, at=at(7200).isoformat())
    assert response.status_code == 200
    page = parse(response)
    message = page.one(id="trace-outside").text
    assert "outside this unit's time on the line" in message
    assert "2025-03-10 10:00:00 to 2025-03-10 10:03:20" in message  # Europe/Berlin
    assert not page.find_all(id="trace-telemetry")
    # The timeline is still there to pick an instant from.
    assert page.find_all(id="trace-timeline")


def test_between_stations_the_page_links_to_the_last_departure_and_next_arrival(client, vehicle):
    page = parse(trace(signed_in(client, "operator"), vin=VIN, at=at(75).isoformat()))
    message = page.one(id="trace-between")
    assert "between stations" in message.text
    links = [a.attrs["href"] for a in message.find_all("a")]
    assert links[0].endswith(f"at={quote('2025-03-10T10:01:00+01:00')}&window=30")
    assert links[1].endswith(f"at={quote('2025-03-10T10:01:30+01:00')}&window=30")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"at": "teatime"}, "is not an instant"),
        ({"at": "0001-01-01T00:00:01Z"}, "is not an instant"),
        ({"window": "7"}, "The window is one of"),
    ],
)
def test_bad_parameters_are_400_with_a_message(client, vehicle, query, message):
    response = trace(signed_in(client, "operator"), vin=VIN, **query)
    assert response.status_code == 400
    assert message in parse(response).one(id="trace-error").text


def test_without_a_vin_the_page_offers_the_search_and_the_latest_alerted_units(client, vehicle):
    response = trace(signed_in(client, "operator"))
    assert response.status_code == 200
    page = parse(response)
    search = page.one("form", role="search")
    for field in ("trace-vin", "trace-at", "trace-window"):
        assert search.one("label", **{"for": field})
    (link,) = page.one(id="recent-heading").parent.find_all("a")
    assert link.attrs["href"].startswith(f"/trace/?vin={VIN}&at=")


def test_without_an_instant_the_latest_alert_is_traced(client, vehicle):
    page = parse(trace(signed_in(client, "operator"), vin=VIN))
    assert page.one(id="trace-instant").attrs["datetime"] == "2025-03-10T09:00:20.000Z"

"""The `alerts` subscription on a real daphne, over the real Redis channel layer: a signed-in
browser's socket gets each new alert of the station, line or plant it asked for, as the scorer
pushes it (the same Channels event, to the same groups), and nothing else."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from aegis.realtime import broadcast
from foresight.registry import alert_payload
from tests.factories import UserFactory
from tests.graphql.plant import T0, alert, line_with_stations, work_orders_with_units
from tests.support import daphne

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

ALERTS = """
subscription ($station: String, $line: ID) {
  alerts(station: $station, line: $line) {
    id ts score threshold triggerTorqueNm status
    station { code line { id } }
    unit { serial workOrder { externalId } }
    firmware { component version }
  }
}
"""


@pytest.fixture(scope="module")
def server(django_db_setup):
    with daphne() as base_url:
        yield base_url


def _cookie(role: str | None) -> str:
    client = Client()
    client.force_login(UserFactory(role=role))
    return f"sessionid={client.cookies['sessionid'].value}"


def _socket(base_url: str, role: str | None = "supervisor"):
    headers = {"Origin": base_url}
    if role != "anonymous":
        headers["Cookie"] = _cookie(role)
    return connect(
        base_url.replace("http://", "ws://") + "/graphql",
        subprotocols=["graphql-transport-ws"],
        additional_headers=headers,
        open_timeout=10,
    )


def _subscribe(socket, **variables) -> None:
    socket.send(json.dumps({"type": "connection_init"}))
    assert json.loads(socket.recv(timeout=10))["type"] == "connection_ack"
    socket.send(
        json.dumps(
            {"id": "1", "type": "subscribe", "payload": {"query": ALERTS, "variables": variables}}
        )
    )


def _push(raised) -> None:
    """What the scorer does for a new alert (foresight/scorer.py): the event to its station's,
    its line's and the plant's groups."""
    payload = alert_payload(raised)
    for group in (f"station.{raised.station.code}", f"line.{raised.station.line_id}", "plant"):
        broadcast("defect.alert", payload, group=group)


def _first_alert(socket, raised, timeout: float = 15.0) -> dict:
    """Push `raised` until the subscription has joined its group and passes it on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _push(raised)
        try:
            return json.loads(socket.recv(timeout=0.5))
        except TimeoutError:
            continue
    raise AssertionError("no alert reached the subscriber")


def _next(socket) -> dict:
    message = json.loads(socket.recv(timeout=10))
    assert message["type"] == "next", message
    return message["payload"]


def test_a_subscriber_of_a_station_gets_its_new_alerts_and_no_others(server):
    _, (watched, other) = line_with_stations(2)
    _, (elsewhere,) = line_with_stations(1)
    unit = work_orders_with_units(1, units=1, stations=[watched, other])[0].units.get()
    first = alert(watched, ts=T0, unit=unit)
    with _socket(server) as socket:
        _subscribe(socket, station=watched.code)
        message = _first_alert(socket, first)
        assert message["type"] == "next"
        assert message["payload"]["data"]["alerts"] == {
            "id": str(first.pk),
            "ts": T0.isoformat(),
            "score": 7.5,
            "threshold": 3.5,
            "triggerTorqueNm": 52.5,
            "status": "OPEN",
            "station": {"code": watched.code, "line": {"id": str(watched.line_id)}},
            "unit": {
                "serial": unit.serial,
                "workOrder": {"externalId": unit.work_order.external_id},
            },
            "firmware": [{"component": "EPS", "version": "v2.1.4"}],
        }
        _push(alert(other, ts=T0))  # same line, other station
        _push(alert(elsewhere, ts=T0))  # other line
        second = alert(watched, ts=T0.replace(minute=1))
        _push(second)
        assert _next(socket)["data"]["alerts"]["id"] == str(second.pk)


def test_a_subscriber_of_a_line_gets_the_alerts_of_its_stations(server):
    line, (one, two) = line_with_stations(2)
    _, (elsewhere,) = line_with_stations(1)
    with _socket(server, role="operator") as socket:
        _subscribe(socket, line=str(line.pk))
        first = alert(one, ts=T0)
        assert _first_alert(socket, first)["payload"]["data"]["alerts"]["id"] == str(first.pk)
        _push(alert(elsewhere, ts=T0))
        second = alert(two, ts=T0)
        _push(second)
        assert _next(socket)["data"]["alerts"]["station"]["code"] == two.code


def test_a_subscriber_of_the_plant_gets_every_alert(server):
    _, (one,) = line_with_stations(1)
    _, (two,) = line_with_stations(1)
    with _socket(server) as socket:
        _subscribe(socket)
        first = alert(one, ts=T0)
        assert _first_alert(socket, first)["payload"]["data"]["alerts"]["id"] == str(first.pk)
        second = alert(two, ts=T0)
        _push(second)  # reaches the plant group once, whatever other groups it went to
        assert _next(socket)["data"]["alerts"]["id"] == str(second.pk)


def test_an_anonymous_socket_is_closed_as_unauthenticated(server):
    with _socket(server, role="anonymous") as socket, pytest.raises(ConnectionClosed) as closed:
        socket.recv(timeout=10)
    assert closed.value.rcvd.code == 4401


def test_a_role_without_the_alerts_permission_is_refused(server):
    with _socket(server, role=None) as socket:
        _subscribe(socket)
        message = json.loads(socket.recv(timeout=10))
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"]


def test_an_unknown_station_is_refused(server):
    with _socket(server) as socket:
        _subscribe(socket, station="no-such-station")
        message = json.loads(socket.recv(timeout=10))
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["UNKNOWN_REFERENCE"]


def test_queries_are_sent_over_http_not_the_websocket(server):
    with _socket(server) as socket:
        socket.send(json.dumps({"type": "connection_init"}))
        assert json.loads(socket.recv(timeout=10))["type"] == "connection_ack"
        socket.send(
            json.dumps(
                {"id": "1", "type": "subscribe", "payload": {"query": "{ stations { code } }"}}
            )
        )
        message = json.loads(socket.recv(timeout=10))
    assert message["type"] == "next"
    assert [e["extensions"]["code"] for e in message["payload"]["errors"]] == ["SUBSCRIPTIONS_ONLY"]

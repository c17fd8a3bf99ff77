"""Websockets on a real daphne: authenticated, origin-checked, fed through Redis by any process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.factories import UserFactory
from tests.support import REPO, daphne, process_environment

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _session_cookie(client) -> str:
    user = UserFactory(role="supervisor")
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def _websocket_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/ws/events/"


def test_an_event_broadcast_from_another_process_reaches_a_connected_browser(client):
    cookie = _session_cookie(client)
    with (
        daphne() as base_url,
        connect(
            _websocket_url(base_url),
            additional_headers={"Cookie": cookie, "Origin": base_url},
            open_timeout=10,
        ) as socket,
    ):
        hello = json.loads(socket.recv(timeout=10))
        assert hello["type"] == "hello"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import django; django.setup();"
                "from aegis.realtime import broadcast;"
                "broadcast('station.state', {'station': '5', 'state': 'running'})",
            ],
            cwd=REPO,
            env=process_environment(),
            check=True,
            timeout=60,
        )
        event = json.loads(socket.recv(timeout=10))
    assert event == {"type": "station.state", "station": "5", "state": "running"}


def test_an_anonymous_websocket_is_closed_as_unauthenticated():
    with (
        daphne() as base_url,
        connect(
            _websocket_url(base_url), additional_headers={"Origin": base_url}, open_timeout=10
        ) as socket,
        pytest.raises(ConnectionClosed) as closed,
    ):
        socket.recv(timeout=10)
    assert closed.value.rcvd.code == 4401


def test_a_websocket_from_a_foreign_origin_is_refused(client):
    cookie = _session_cookie(client)
    with daphne() as base_url, pytest.raises(InvalidStatus) as refused:
        connect(
            _websocket_url(base_url),
            additional_headers={"Cookie": cookie, "Origin": "http://evil.example"},
            open_timeout=10,
        )
    assert refused.value.response.status_code == 403


def _broadcast(group: str, payload: dict) -> None:
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, json, sys; django.setup();"
            "from aegis.realtime import broadcast;"
            "broadcast('defect.alert', json.loads(sys.argv[2]), group=sys.argv[1])",
            group,
            json.dumps(payload),
        ],
        cwd=REPO,
        env=process_environment(),
        check=True,
        timeout=60,
    )


def test_a_socket_for_one_station_gets_that_stations_events_and_no_others(client):
    from tests.factories import StationFactory

    watched, other = StationFactory(), StationFactory()
    cookie = _session_cookie(client)
    with (
        daphne() as base_url,
        connect(
            f"{_websocket_url(base_url)}?station={watched.code}",
            additional_headers={"Cookie": cookie, "Origin": base_url},
            open_timeout=10,
        ) as socket,
    ):
        hello = json.loads(socket.recv(timeout=10))
        assert hello["groups"] == [f"station.{watched.code}"]
        _broadcast(f"station.{other.code}", {"n": 1})
        _broadcast("plant", {"n": 2})
        _broadcast(f"station.{watched.code}", {"n": 3})
        event = json.loads(socket.recv(timeout=10))
    assert event == {"type": "defect.alert", "n": 3}  # the first two went elsewhere


def test_a_socket_for_a_line_joins_the_line_group(client):
    from tests.factories import StationFactory

    station = StationFactory()
    cookie = _session_cookie(client)
    with (
        daphne() as base_url,
        connect(
            f"{_websocket_url(base_url)}?line={station.line_id}",
            additional_headers={"Cookie": cookie, "Origin": base_url},
            open_timeout=10,
        ) as socket,
    ):
        assert json.loads(socket.recv(timeout=10))["groups"] == [f"line.{station.line_id}"]
        _broadcast(f"line.{station.line_id}", {"n": 4})
        assert json.loads(socket.recv(timeout=10)) == {"type": "defect.alert", "n": 4}


@pytest.mark.parametrize("query", ["station=no-such-station", "station=bad%20code", "line=x"])
def test_a_socket_for_an_unknown_station_or_line_is_closed_as_not_found(client, query):
    cookie = _session_cookie(client)
    with (
        daphne() as base_url,
        connect(
            f"{_websocket_url(base_url)}?{query}",
            additional_headers={"Cookie": cookie, "Origin": base_url},
            open_timeout=10,
        ) as socket,
        pytest.raises(ConnectionClosed) as closed,
    ):
        socket.recv(timeout=10)
    assert closed.value.rcvd.code == 4404


def test_an_idle_socket_outlives_the_channel_layers_blocking_reads(client):
    # channels-redis waits 5 s per blocking read; redis-py 8 used to time the read out at 5 s
    # and kill the consumer. Idle for three reads, then an event must still arrive.
    cookie = _session_cookie(client)
    with (
        daphne() as base_url,
        connect(
            _websocket_url(base_url),
            additional_headers={"Cookie": cookie, "Origin": base_url},
            open_timeout=10,
        ) as socket,
    ):
        assert json.loads(socket.recv(timeout=10))["type"] == "hello"
        with pytest.raises(TimeoutError):
            socket.recv(timeout=16)  # nothing to receive while idle
        _broadcast("plant", {"n": 5})
        assert json.loads(socket.recv(timeout=10)) == {"type": "defect.alert", "n": 5}

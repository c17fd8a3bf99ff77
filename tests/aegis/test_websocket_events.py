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

"""`station.state`: after the real outbox relay has published a station's visit, flash or
downtime, a browser's websocket (a real daphne) receives the station's state now — unit, VIN,
work order, the unit's firmware, the downtime — and nothing for changes a tile does not show.
A Redis that is down costs the browsers their event, never the publication."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from websockets.sync.client import connect

from aegis import jetstream
from aegis.embedded.servers import free_port
from mes import services
from mes.models import OutboxMessage
from mes.relay import OUTBOX_BROWSER_EVENTS, OutboxRelay
from tests.factories import (
    DowntimeReasonFactory,
    LineFactory,
    StationFactory,
    UnitFactory,
    UserFactory,
    WorkOrderFactory,
)
from tests.support import daphne
from tests.ui.test_board import make_vin

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


async def _provision() -> None:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        await jetstream.provision(client.jetstream(), replicas=1)
    finally:
        await client.close()


def drain() -> OutboxRelay:
    relay = OutboxRelay()
    asyncio.run(relay.drain(handle_signals=False))
    return relay


class Line:
    """Two stations; a unit with a VIN whose ECU was flashed at the first (a flashing station)
    before it moves on to the second."""

    def __init__(self) -> None:
        asyncio.run(_provision())
        self.line = LineFactory()
        self.flash, self.torque = (
            StationFactory(line=self.line, position=1),
            StationFactory(line=self.line, position=2),
        )
        self.work_order = WorkOrderFactory(line=self.line)
        self.unit = UnitFactory(work_order=self.work_order, vin=make_vin())
        self.now = timezone.now() - dt.timedelta(minutes=10)

    def at(self, minutes: float) -> dt.datetime:
        return self.now + dt.timedelta(minutes=minutes)


@pytest.fixture
def line() -> Line:
    return Line()


def session_cookie(client) -> str:
    client.force_login(UserFactory(role="supervisor"))
    return f"sessionid={client.cookies['sessionid'].value}"


def states(socket, *stations: str, seconds: float = 5.0) -> dict[str, dict]:
    """The next station.state event of each of `stations`, in whatever order they come."""
    found: dict[str, dict] = {}
    while len(found) < len(stations):
        event = json.loads(socket.recv(timeout=seconds))
        if event["type"] == "station.state" and event["station"] in stations:
            assert event["station"] not in found, "two events for one station and batch"
            found[event["station"]] = event
    return found


def test_a_browser_hears_the_state_of_a_station_after_the_relay_publishes_its_change(client, line):
    cookie = session_cookie(client)
    drain()  # the line's earlier history is not what this test listens for
    with (
        daphne() as base_url,
        connect(
            base_url.replace("http://", "ws://") + f"/ws/events/?line={line.line.pk}",
            additional_headers={"Cookie": cookie, "Origin": base_url},
            open_timeout=10,
        ) as socket,
    ):
        assert json.loads(socket.recv(timeout=10))["type"] == "hello"

        services.unit_arrive(unit=line.unit, station=line.flash, at=line.at(0))
        services.firmware_flash(
            unit=line.unit, component="ECU", version="2.1.4", at=line.at(1), station=line.flash
        )
        services.unit_leave(unit=line.unit, station=line.flash, at=line.at(2))
        services.unit_arrive(unit=line.unit, station=line.torque, at=line.at(2))
        relay = drain()
        after_visits = states(socket, line.torque.code, line.flash.code)

        services.downtime_open(
            station=line.torque, at=line.at(3), reason=DowntimeReasonFactory(name="Conveyor jam")
        )
        drain()
        down = states(socket, line.torque.code)[line.torque.code]

        services.work_order_release(work_order=line.work_order, at=line.at(4))
        drain()
        with pytest.raises(TimeoutError):  # a work order's status changes no tile
            states(socket, line.torque.code, seconds=1.5)

    at_torque, at_flash = after_visits[line.torque.code], after_visits[line.flash.code]
    assert at_torque == {
        "type": "station.state",
        "station": line.torque.code,
        "line": line.line.pk,
        "state": "occupied",
        "unit": line.unit.serial,
        "vin": line.unit.vin,
        "work_order": line.work_order.external_id,
        "product": line.work_order.product.code,
        "arrived_at": line.at(2).isoformat(),
        # The unit's firmware, flashed at another station: what the unit here runs.
        "firmware": {"ECU": "2.1.4"},
        "downtime": None,
        "kind": "visit.started",
        "at": line.at(2).isoformat(),
    }
    # One event per station and batch, with its state after the whole batch: the unit left.
    assert (at_flash["state"], at_flash["unit"], at_flash["kind"]) == ("idle", None, "visit.ended")
    assert relay.totals.published == 4
    assert down["state"] == "down"
    assert down["unit"] == line.unit.serial  # still there, and the station is down
    assert down["downtime"]["reason_name"] == "Conveyor jam"
    assert down["downtime"]["started_at"] == line.at(3).isoformat()


def test_the_relay_publishes_everything_while_redis_is_down_and_counts_the_lost_events(line):
    dead = [{"address": f"redis://127.0.0.1:{free_port()}/0", "socket_timeout": 1}]
    layers = {"default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": {"hosts": dead}}}
    services.unit_arrive(unit=line.unit, station=line.torque, at=line.at(0))
    failed_before = OUTBOX_BROWSER_EVENTS.labels("failed")._value.get()

    with override_settings(CHANNEL_LAYERS=layers):
        relay = drain()

    assert relay.totals.published == OutboxMessage.objects.count()
    assert not OutboxMessage.objects.filter(published_at__isnull=True).exists()
    assert relay.totals.failed == 0
    assert OUTBOX_BROWSER_EVENTS.labels("failed")._value.get() > failed_before

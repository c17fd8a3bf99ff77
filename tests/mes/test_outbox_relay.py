"""The outbox relay publishes every MES state change once, in commit order per station, across a
NATS outage and a crash, and keeps each station's current state in the KV bucket.

Real PostgreSQL and NATS throughout; the outage test stops and restarts its own nats-server.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import importlib
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import orjson
import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from aegis import jetstream
from aegis.backoff import Backoff
from aegis.embedded.servers import NatsServer, RunningServer, free_port
from mes import services
from mes.management.commands.outbox_relay import Command as OutboxRelayCommand
from mes.models import OutboxMessage, vin_check_digit
from mes.relay import (
    OUTBOX_PUBLISHED,
    RELAY_LOCK_KEY,
    OutboxRelay,
    OutboxStore,
    RelayUnavailable,
    database_parameters,
    shift_at,
    station_state_empty,
    station_state_merge,
)
from tests.factories import (
    DowntimeReasonFactory,
    LineFactory,
    ProductFactory,
    StationFactory,
    UnitFactory,
    WorkOrderFactory,
)
from tests.support import REPO, ServedInThread, process_environment, stop

T0 = dt.datetime(2025, 3, 3, 6, 0, tzinfo=dt.UTC)
SHARED_DB = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def iso(minutes: float) -> str:
    return at(minutes).isoformat()


# -- the station state fold (pure) ------------------------------------------------------------


def started(visit: int, unit: str, minutes: float, **extra) -> dict:
    return {
        "kind": "visit.started",
        "station": "ST1",
        "visit": visit,
        "unit": unit,
        "vin": extra.get("vin"),
        "work_order": extra.get("work_order", "WO-1"),
        "work_order_status": extra.get("status", "in_progress"),
        "product": extra.get("product", "EV-SUV"),
        "at": iso(minutes),
    }


def ended(visit: int, unit: str, minutes: float, **extra) -> dict:
    return {**started(visit, unit, minutes, **extra), "kind": "visit.ended"}


def fold(*messages: dict, station: str = "ST1") -> dict:
    state = station_state_empty(station)
    for seq, message in enumerate(messages, start=1):
        state = station_state_merge(state, message, seq=seq, outbox_id=seq * 10)
    return state


def test_an_arriving_unit_is_at_the_station_with_its_vin_work_order_and_product():
    state = fold(started(7, "SN1", 0, vin="1HGBH41JXMN109186"))

    assert state["unit"] == "SN1"
    assert state["vin"] == "1HGBH41JXMN109186"
    assert state["work_order"] == "WO-1"
    assert state["product"] == "EV-SUV"
    assert state["work_order_status"] == "in_progress"
    assert state["visit"]["arrived_at"] == iso(0)
    assert (state["seq"], state["outbox_id"], state["updated_at"]) == (1, 10, iso(0))


def test_a_unit_leaving_empties_the_station_and_keeps_the_last_visit():
    state = fold(started(7, "SN1", 0), ended(7, "SN1", 3))

    assert state["unit"] is None
    assert state["work_order"] is None
    assert state["work_order_status"] is None
    assert state["visit"]["unit"] == "SN1"
    assert state["visit"]["left_at"] == iso(3)


def test_the_next_unit_replaces_the_one_that_left():
    state = fold(started(7, "SN1", 0), ended(7, "SN1", 3), started(8, "SN2", 3))

    assert state["unit"] == "SN2"
    assert state["visit"]["visit"] == 8


def test_a_late_report_of_an_older_visit_does_not_replace_the_unit_there_now():
    state = fold(started(8, "SN2", 60), started(5, "SN0", 10), ended(5, "SN0", 20))

    assert state["unit"] == "SN2"
    assert state["visit"]["visit"] == 8
    assert state["updated_at"] == iso(60)


def test_firmware_is_kept_per_component_and_an_older_flash_does_not_win():
    def flash(component: str, version: str, minutes: float) -> dict:
        return {
            "kind": "firmware.flashed",
            "unit": "SN1",
            "vin": None,
            "component": component,
            "version": version,
            "at": iso(minutes),
        }

    state = fold(flash("ECU", "1.0", 0), flash("BMS", "4.2", 1), flash("ECU", "1.1", 2))
    late = station_state_merge(state, flash("ECU", "0.9", 1.5), seq=99)

    assert state["firmware"]["ECU"]["version"] == "1.1"
    assert state["firmware"]["BMS"]["version"] == "4.2"
    assert late["firmware"]["ECU"]["version"] == "1.1"


def test_work_order_status_messages_set_the_status_of_the_work_order_at_the_station():
    def status(value: str, minutes: float, work_order: str = "WO-1") -> dict:
        return {
            "kind": "work_order.status",
            "work_order": work_order,
            "product": "EV-SUV",
            "status": value,
            "at": iso(minutes),
        }

    state = fold(
        status("released", 0),
        started(7, "SN1", 1, status="released"),
        status("in_progress", 2),
        # A visit's status is a snapshot from its own commit: it never overrides the truth.
        ended(7, "SN1", 3, status="released"),
        started(8, "SN2", 3, status="released"),
        status("released", 4, work_order="WO-2"),
    )

    assert state["work_order_status"] == "in_progress"
    assert state["work_orders"]["WO-1"]["status"] == "in_progress"
    assert state["work_orders"]["WO-2"]["status"] == "released"


def test_finished_work_orders_are_forgotten_a_day_after_the_latest_change():
    def status(work_order: str, value: str, minutes: float) -> dict:
        return {
            "kind": "work_order.status",
            "work_order": work_order,
            "status": value,
            "at": iso(minutes),
        }

    state = fold(
        status("WO-OLD", "completed", 0),
        status("WO-OPEN", "in_progress", 0),
        status("WO-NEW", "released", 25 * 60),
    )

    assert set(state["work_orders"]) == {"WO-OPEN", "WO-NEW"}


def test_downtime_opens_and_closes_and_a_late_end_of_an_older_one_is_ignored():
    opened = {
        "kind": "downtime.started",
        "downtime": 4,
        "reason": None,
        "planned": False,
        "at": iso(10),
    }
    closed = {"kind": "downtime.ended", "downtime": 4, "reason": "MECH.CONVEYOR", "at": iso(25)}
    older_end = {"kind": "downtime.ended", "downtime": 3, "reason": "ELEC", "at": iso(5)}

    while_open = fold(opened)
    after = fold(opened, closed, older_end)

    assert while_open["downtime"]["open"] is True
    assert after["downtime"] == {
        "downtime": 4,
        "open": False,
        "reason": "MECH.CONVEYOR",
        "planned": False,
        "started_at": iso(10),
        "ended_at": iso(25),
    }


def test_the_current_shift_is_the_scheduled_shift_containing_the_latest_change():
    def scheduled(shift: int, name: str, start_h: float, end_h: float) -> dict:
        return {
            "kind": "shift.scheduled",
            "shift": shift,
            "name": name,
            "business_date": "2025-03-03",
            "starts_at": iso(start_h * 60),
            "ends_at": iso(end_h * 60),
        }

    schedule = [scheduled(2, "Late", 8, 16), scheduled(1, "Early", 0, 8)]
    state = fold(*schedule, started(7, "SN1", 9 * 60))
    much_later = fold(*schedule, started(7, "SN1", 60 * 60))

    assert [shift["name"] for shift in state["shifts"]] == ["Early", "Late"]
    assert state["shift"]["name"] == "Late"
    assert shift_at(state, at(60))["name"] == "Early"
    assert shift_at(state, at(20 * 60)) is None
    assert much_later["shifts"] == []  # ended more than a day before the latest change


def test_folding_a_message_again_changes_nothing():
    state = fold(started(7, "SN1", 0), ended(7, "SN1", 3))

    again = station_state_merge(state, started(7, "SN1", 0), seq=1)

    assert again is state
    assert station_state_merge(state, started(9, "SN9", 99), seq=state["seq"]) is state


def test_merging_leaves_the_given_state_untouched():
    state = fold(started(7, "SN1", 0))
    before = copy.deepcopy(state)

    station_state_merge(state, ended(7, "SN1", 3), seq=5)

    assert state == before


def test_unknown_kinds_only_advance_the_sequence():
    state = fold(started(7, "SN1", 0))

    merged = station_state_merge(state, {"kind": "counts.reported"}, seq=2, outbox_id=99)

    assert merged["seq"] == 2
    assert merged["unit"] == "SN1"


def test_back_off_doubles_from_half_a_second_to_thirty_seconds():
    backoff = Backoff(cap_s=30.0)  # the relay's idle back-off

    delays = [backoff.next() for _ in range(9)]
    backoff.reset()

    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.next() == 0.5


# -- helpers for the relay against real servers ------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def run(coroutine):
    return asyncio.run(coroutine)


async def _provision() -> None:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        await jetstream.provision(client.jetstream(), replicas=1)
    finally:
        await client.close()


@dataclass
class StreamMessage:
    seq: int
    msg_id: str
    payload: dict


async def _stream(subject: str) -> list[StreamMessage]:
    client = await jetstream.connect("test", allow_reconnect=False)
    js = client.jetstream()
    found, sequence = [], 1
    try:
        while True:
            try:
                message = await js.get_msg(
                    jetstream.MES_STATE_STREAM, seq=sequence, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError:
                return found
            found.append(
                StreamMessage(
                    message.seq, message.headers["Nats-Msg-Id"], orjson.loads(message.data)
                )
            )
            sequence = message.seq + 1
    finally:
        await client.close()


def stream_of(station_code: str) -> list[StreamMessage]:
    return run(_stream(f"aegis.mes.state.{station_code}"))


async def _kv(station_code: str, value: dict | None = None) -> dict | None:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        kv = await client.jetstream().key_value(jetstream.MES_STATION_STATE_BUCKET)
        if value is not None:
            await kv.put(station_code, orjson.dumps(value))
            return value
        try:
            return orjson.loads((await kv.get(station_code)).value)
        except nats.js.errors.KeyNotFoundError:
            return None
    finally:
        await client.close()


def station_state(station_code: str) -> dict | None:
    return run(_kv(station_code))


def drain(**options) -> OutboxRelay:
    relay = OutboxRelay(**options)
    run(relay.drain(handle_signals=False))
    return relay


class RunningRelay(ServedInThread):
    """`OutboxRelay.serve()` in a thread with its own event loop, as the command runs it."""

    what = "relay"

    def __init__(self, **options) -> None:
        super().__init__(OutboxRelay(**options))
        self.relay = self.service


@contextmanager
def own_nats(sync_interval: str = "always") -> Iterator[tuple[NatsServer, RunningServer]]:
    """A nats-server of the test's own (not the session's), provisioned, its data deleted after."""
    data_dir = Path(tempfile.mkdtemp(prefix="aegis-outbox-"))
    server = NatsServer(data_dir, password=secrets.token_urlsafe(16), sync_interval=sync_interval)
    handle = Handle(server.start(free_port()))
    try:
        with override_settings(NATS_URL=handle.running.url):
            run(_provision())
            yield server, handle
    finally:
        if server.is_running(handle.running):
            server.stop(handle.running)
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class Handle:
    running: RunningServer


def rows_of(station) -> list[OutboxMessage]:
    return list(OutboxMessage.objects.filter(station_code=station.code).order_by("id"))


def make_vin(number: int) -> str:
    vin = f"1HGBH41J0MN{number:06d}"
    return vin[:8] + vin_check_digit(vin) + vin[9:]


class Plant:
    """Two stations on one line, a work order and units with VINs; changes through services."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        line = LineFactory()
        self.station_a = StationFactory(line=line, code=f"relay-{tag}-a")
        self.station_b = StationFactory(line=line, code=f"relay-{tag}-b")
        self.stations = [self.station_a, self.station_b]
        self.work_order = WorkOrderFactory(line=line, product=ProductFactory())
        self.units = [
            UnitFactory(work_order=self.work_order, vin=make_vin(int(tag, 16) % 10**5 + n))
            for n in range(6)
        ]
        self.minute = 0
        self.reason = DowntimeReasonFactory()

    def tick(self) -> dt.datetime:
        self.minute += 1
        return at(self.minute)

    def interleaved_changes(self, first_unit: int) -> None:
        """Visits, flashes and a downtime on both stations, interleaved: 3 messages at A, 5 at B."""
        a, b = self.station_a, self.station_b
        unit_a, unit_b = self.units[first_unit], self.units[first_unit + 1]
        services.unit_arrive(unit=unit_a, station=a, at=self.tick())
        services.unit_arrive(unit=unit_b, station=b, at=self.tick())
        services.firmware_flash(
            unit=unit_a, component="ECU", version=f"1.{first_unit}", at=self.tick(), station=a
        )
        downtime = services.downtime_open(station=b, at=self.tick(), reason=self.reason)
        services.firmware_flash(
            unit=unit_b, component="BMS", version=f"4.{first_unit}", at=self.tick(), station=b
        )
        services.unit_leave(unit=unit_a, station=a, at=self.tick())
        services.downtime_close(downtime=downtime, at=self.tick())
        services.unit_leave(unit=unit_b, station=b, at=self.tick())


@pytest.fixture
def plant() -> Plant:
    run(_provision())
    return Plant()


def assert_published_once_in_commit_order(station) -> list[StreamMessage]:
    rows = rows_of(station)
    messages = stream_of(station.code)
    assert rows, "the test made no changes at this station"
    assert [message.payload for message in messages] == [row.payload for row in rows]
    assert [message.msg_id for message in messages] == [f"aegis-outbox-{row.id}" for row in rows]
    assert all(row.published_at is not None for row in rows)
    return messages


# -- publishing ---------------------------------------------------------------------------------


@SHARED_DB
def test_relay_publishes_each_change_once_in_commit_order_per_station(plant):
    plant.interleaved_changes(0)
    services.work_order_release(work_order=plant.work_order, at=plant.tick())
    kinds = [row.kind for row in OutboxMessage.objects.all()]
    published_before = OUTBOX_PUBLISHED.labels("visit.started")._value.get()

    relay = drain()
    drain()  # nothing left: publishes nothing again

    for station in plant.stations:
        assert_published_once_in_commit_order(station)
    assert relay.totals.published == len(kinds) == 10
    assert relay.totals.duplicates == 0
    assert set(OutboxMessage.objects.values_list("attempts", "last_error")) == {(1, "")}
    assert OUTBOX_PUBLISHED.labels("visit.started")._value.get() == published_before + 2


@SHARED_DB
def test_kv_holds_the_latest_state_of_each_station(plant):
    plant.interleaved_changes(0)
    services.work_order_release(work_order=plant.work_order, at=plant.tick())
    services.unit_arrive(unit=plant.units[2], station=plant.station_a, at=plant.tick())
    downtime = services.downtime_open(station=plant.station_a, at=plant.tick())

    drain()

    state_a = station_state(plant.station_a.code)
    state_b = station_state(plant.station_b.code)
    assert state_a["seq"] == stream_of(plant.station_a.code)[-1].seq
    assert state_a["outbox_id"] == rows_of(plant.station_a)[-1].id
    assert state_a["unit"] == plant.units[2].serial
    assert state_a["vin"] == plant.units[2].vin
    assert state_a["work_order"] == plant.work_order.external_id
    assert state_a["product"] == plant.work_order.product.code
    assert state_a["work_order_status"] == "released"
    assert state_a["firmware"]["ECU"]["version"] == "1.0"
    assert state_a["downtime"]["open"] is True
    assert state_a["downtime"]["downtime"] == downtime.pk
    assert state_b["unit"] is None
    assert state_b["visit"]["unit"] == plant.units[1].serial
    assert list(state_b["firmware"]) == ["BMS"]
    assert state_b["firmware"]["BMS"]["version"] == "4.0"
    assert state_b["firmware"]["BMS"]["vin"] == plant.units[1].vin
    assert state_b["downtime"]["open"] is False
    assert state_b["downtime"]["reason"] == plant.reason.code


class SimulatedCrash(Exception):
    pass


@SHARED_DB
def test_a_crash_between_publishing_and_marking_duplicates_nothing(plant, monkeypatch):
    plant.interleaved_changes(0)

    def crash(self, **marks):
        raise SimulatedCrash("killed after the acks, before marking the rows")

    with monkeypatch.context() as patch:
        patch.setattr(OutboxStore, "mark", crash)
        with pytest.raises(SimulatedCrash):
            drain()
    unmarked = OutboxMessage.objects.filter(published_at__isnull=True).count()
    in_stream = {station.code: len(stream_of(station.code)) for station in plant.stations}

    relay = drain()

    assert unmarked == 8
    assert in_stream == {plant.station_a.code: 3, plant.station_b.code: 5}
    assert relay.totals.published == 8
    assert relay.totals.duplicates == 8  # the stream dropped every second copy by Nats-Msg-Id
    for station in plant.stations:
        messages = assert_published_once_in_commit_order(station)
        assert station_state(station.code)["seq"] == messages[-1].seq


@SHARED_DB
def test_a_station_state_left_behind_is_caught_up_from_the_stream(plant):
    plant.interleaved_changes(0)
    drain()
    current = station_state(plant.station_a.code)
    # What a relay killed after marking its rows, before writing KV, leaves behind.
    run(_kv(plant.station_a.code, station_state_empty(plant.station_a.code)))

    drain()

    assert station_state(plant.station_a.code) == current


async def _delete_state_bucket() -> None:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        await client.jetstream().delete_key_value(jetstream.MES_STATION_STATE_BUCKET)
    finally:
        await client.close()


@SHARED_DB
def test_publishing_goes_on_without_the_state_bucket_and_the_state_catches_up_later(plant):
    with own_nats():
        run(_delete_state_bucket())
        plant.interleaved_changes(0)

        with pytest.raises(RelayUnavailable, match="station state"):
            drain()
        published = not OutboxMessage.objects.filter(published_at__isnull=True).exists()
        messages = {station.code: stream_of(station.code) for station in plant.stations}
        run(_provision())  # the operator runs nats_setup
        drain()
        states = {station.code: station_state(station.code) for station in plant.stations}

    assert published
    for station in plant.stations:
        assert [message.payload for message in messages[station.code]] == [
            row.payload for row in rows_of(station)
        ]
        assert states[station.code]["seq"] == messages[station.code][-1].seq
    assert states[plant.station_a.code]["firmware"]["ECU"]["version"] == "1.0"


@SHARED_DB
def test_a_second_relay_stands_by_while_one_holds_the_lock(plant):
    plant.interleaved_changes(0)
    active = psycopg.connect(**database_parameters(), autocommit=True)
    try:
        active.execute("SELECT pg_advisory_lock(%s)", [RELAY_LOCK_KEY])
        standby = drain()
        untouched = OutboxMessage.objects.filter(published_at__isnull=True).count()
    finally:
        active.close()

    relay = drain()

    assert standby.totals.standby is True
    assert standby.totals.published == 0
    assert untouched == 8
    assert relay.totals.published == 8


def _relay_lock_holder() -> int | None:
    """The backend pid of the relay session holding the outbox lock, if any."""
    with psycopg.connect(**database_parameters(), autocommit=True) as admin:
        holder = admin.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",
            [RELAY_LOCK_KEY],
        ).fetchone()
    return holder[0] if holder else None


def _terminate(backend_pid: int) -> None:
    """What a database failover or a network cut does to a session."""
    with psycopg.connect(**database_parameters(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend_pid])


@pytest.mark.slow
@SHARED_DB
def test_publishing_resumes_in_order_when_the_active_relay_loses_its_database_session(plant):
    options = {"poll_interval_s": 0.05, "standby_interval_s": 0.1, "backoff_max_s": 1.0}
    with RunningRelay(**options), RunningRelay(**options):
        plant.interleaved_changes(0)
        wait_until(
            lambda: not OutboxMessage.objects.filter(published_at__isnull=True).exists(),
            15,
            "the active relay publishes",
        )
        killed = _relay_lock_holder()
        _terminate(killed)
        plant.interleaved_changes(2)
        wait_until(
            lambda: not OutboxMessage.objects.filter(published_at__isnull=True).exists(),
            15,
            "a relay with a new session publishes the rest",
        )
        assert _relay_lock_holder() not in (None, killed)

    for station in plant.stations:
        messages = assert_published_once_in_commit_order(station)
        assert station_state(station.code)["seq"] == messages[-1].seq


# -- a NATS outage ------------------------------------------------------------------------------


@pytest.mark.slow
@SHARED_DB
def test_changes_made_while_nats_is_down_are_published_once_in_order_after_it_returns(plant):
    # Its own nats-server, restarted on the same port as a plant's NATS would be.
    with own_nats() as (server, nats_server):
        with RunningRelay(poll_interval_s=0.05, backoff_max_s=2.0):
            plant.interleaved_changes(0)
            wait_until(
                lambda: not OutboxMessage.objects.filter(published_at__isnull=True).exists(),
                15,
                "the changes before the outage are published",
            )
            published_before = OutboxMessage.objects.count()

            server.stop(nats_server.running)  # the relay keeps running
            plant.interleaved_changes(2)
            services.work_order_release(work_order=plant.work_order, at=plant.tick())
            heads = OutboxMessage.objects.filter(published_at__isnull=True)
            wait_until(
                lambda: (
                    heads.filter(attempts__gte=2).values("station_code").distinct().count() == 2
                ),
                20,
                "the relay retried the first waiting row of each station",
            )
            every_row = list(OutboxMessage.objects.order_by("id"))
            waiting = [row for row in every_row if row.published_at is None]

            nats_server.running = server.start(nats_server.running.port)
            recovery = wait_until(
                lambda: not OutboxMessage.objects.filter(published_at__isnull=True).exists(),
                30,
                "every change made during the outage is published after NATS returns",
            )
        for station in plant.stations:
            messages = assert_published_once_in_commit_order(station)
            assert station_state(station.code)["seq"] == messages[-1].seq
        final_a = station_state(plant.station_a.code)

    assert len(waiting) == len(every_row) - published_before == 8 + 2
    assert all(row.last_error for row in waiting if row.attempts)
    assert "reconnecting" in max(waiting, key=lambda row: row.attempts).last_error
    assert final_a["firmware"]["ECU"]["version"] == "1.2"
    assert final_a["work_order_status"] is None  # the station is empty again
    assert final_a["work_orders"][plant.work_order.external_id]["status"] == "released"
    print(f"\nrecovered {len(waiting)} rows {recovery:.2f} s after NATS was back")


# -- latency and throughput (measured; the numbers go to docs/mes-state.md) ------------------------

# The trigger the migration installs; the test takes it away to measure polling alone.
_NOTIFY_MIGRATION = importlib.import_module("mes.migrations.0005_outbox_notify")


class ArrivalClock:
    """A core-NATS subscriber that notes when each outbox message reaches the stream."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.arrivals: dict[str, float] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = await jetstream.connect("test-clock", allow_reconnect=False)

        async def arrived(message) -> None:
            self.arrivals[message.headers["Nats-Msg-Id"]] = time.time()

        await client.subscribe(self.subject, cb=arrived)
        await client.flush()
        self._ready.set()
        await self._stop.wait()
        await client.close()

    def __enter__(self) -> ArrivalClock:
        self.thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc_info) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def commit_to_publish_latencies(plant: Plant, changes: int) -> list[float]:
    """Commit `changes` visits one by one, 30 ms apart; seconds from each commit to the stream."""
    committed = {}
    station = plant.station_a
    with ArrivalClock(f"aegis.mes.state.{station.code}") as clock:
        for number in range(changes):
            unit = plant.units[number % 2]
            services.unit_arrive(unit=unit, station=station, at=plant.tick())
            committed[f"aegis-outbox-{OutboxMessage.objects.latest('id').id}"] = time.time()
            time.sleep(0.03)
        wait_until(
            lambda: committed.keys() <= clock.arrivals.keys(), 20, "every change reaches the stream"
        )
    return [clock.arrivals[msg_id] - when for msg_id, when in committed.items()]


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms over {len(ordered)} commits"
    )


@pytest.mark.slow
@SHARED_DB
def test_commit_to_publish_latency_is_the_poll_interval_or_less_and_a_notify_cuts_it(plant):
    with psycopg.connect(**database_parameters(), autocommit=True) as admin:
        admin.execute(_NOTIFY_MIGRATION.DROP)
        try:
            with RunningRelay(poll_interval_s=0.2):
                polled = commit_to_publish_latencies(plant, 40)
        finally:
            admin.execute(_NOTIFY_MIGRATION.NOTIFY)
    # A poll interval no test could wait out: only the migration's NOTIFY can wake the relay.
    with RunningRelay(poll_interval_s=30.0):
        notified = commit_to_publish_latencies(plant, 40)

    print(f"\ncommit→stream, 200 ms poll: {summary(polled)}")
    print(f"commit→stream, LISTEN/NOTIFY: {summary(notified)}")
    assert max(polled) < 1.0
    assert max(notified) < 1.0
    assert statistics.median(notified) < statistics.median(polled)


def _backlog(stations: list[str], rows_per_station: int) -> int:
    payload = {"kind": "firmware.flashed", "unit": "SN1", "vin": None, "component": "ECU"}
    rows = [
        OutboxMessage(
            station_code=code,
            subject=f"aegis.mes.state.{code}",
            kind="firmware.flashed",
            payload={**payload, "station": code, "version": f"1.{n}", "at": iso(n)},
        )
        for n in range(rows_per_station)
        for code in stations
    ]
    OutboxMessage.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


@pytest.mark.slow
@SHARED_DB
@pytest.mark.parametrize("sync_interval", ["always", "2m"])
@pytest.mark.parametrize(("stations", "rows_per_station"), [(20, 250), (1, 2000)])
def test_relay_drains_a_backlog_at_a_measured_rate(stations, rows_per_station, sync_interval):
    tag = secrets.token_hex(3)
    codes = [f"bench-{tag}-{n}" for n in range(stations)]
    total = _backlog(codes, rows_per_station)

    with own_nats(sync_interval):
        relay = drain()
        last_state = station_state(codes[0])

    rate = total / relay.totals.seconds
    print(
        f"\n{total} rows from {stations} stations, NATS sync_interval {sync_interval}: "
        f"drained at {rate:.0f} rows/s"
    )
    assert relay.totals.published == total
    assert not OutboxMessage.objects.filter(published_at__isnull=True).exists()
    assert last_state["firmware"]["ECU"]["version"] == f"1.{rows_per_station - 1}"
    assert rate > 100


# -- the command and the process ------------------------------------------------------------------


def test_help_explains_the_relay():
    help_text = OutboxRelayCommand().create_parser("manage.py", "outbox_relay").format_help()

    for words in ("aegis.mes.state", "Nats-Msg-Id", "SIGTERM", "--once", "standby"):
        assert words in help_text


def test_once_fails_naming_nats_when_it_is_unreachable():
    with (
        override_settings(NATS_URL=f"nats://127.0.0.1:{free_port()}"),
        pytest.raises(CommandError, match="outbox not drained"),
    ):
        call_command("outbox_relay", "--once")


@SHARED_DB
def test_once_prints_its_progress_and_totals(plant, capsys):
    plant.interleaved_changes(0)

    call_command("outbox_relay", "--once")

    output = capsys.readouterr().out
    assert "batch: 8/8 published from 2 stations" in output
    assert "outbox relay drained: 8 published" in output


@pytest.mark.slow
@SHARED_DB
def test_relay_process_publishes_committed_changes_and_exits_cleanly_on_sigterm(plant):
    process = subprocess.Popen(
        [sys.executable, "manage.py", "outbox_relay"],
        cwd=REPO,
        env=process_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        plant.interleaved_changes(0)
        wait_until(
            lambda: not OutboxMessage.objects.filter(published_at__isnull=True).exists(),
            30,
            "the relay process publishes the committed changes",
        )
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        stop(process)

    assert process.returncode == 0, output
    assert "outbox relay stopped: 8 published" in output
    for station in plant.stations:
        assert_published_once_in_commit_order(station)

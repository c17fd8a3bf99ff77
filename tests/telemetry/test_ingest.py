"""The ingest worker stores every published sample exactly once with the MES state of its own
instant, through a kill -9, a NATS restart and a PostgreSQL outage, and dead-letters each kind
of poison message with its reason without holding up the good ones.

Real servers throughout: the session's NATS and PostgreSQL, plus a nats-server or PostgreSQL of
the test's own (the embedded-server classes, in a temporary directory) where a test stops one
and starts it again on the same port. `-s` prints what each run saw (duplicates absorbed,
rates)."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psycopg
import pytest
from django.db import connection
from django.test import override_settings

from aegis.embedded.servers import NatsServer, PostgresServer, free_port
from mes import services
from mes.models import vin_check_digit
from mes.relay import OutboxRelay
from telemetry import metrics, payloads
from telemetry.ingest import DEAD_LETTER_PREFIX
from telemetry.models import Sample
from tests.factories import (
    LineFactory,
    ProductFactory,
    StationFactory,
    UnitFactory,
    WorkOrderFactory,
)
from tests.support import REPO, process_environment
from tests.telemetry.conftest import (
    IngestProcess,
    PacedPublisher,
    Published,
    RunningWorker,
    batch_body,
    consumer_info,
    dead_letters,
    now_ms,
    publish,
    reset_telemetry_streams,
    run,
    single,
    wait_until,
)

SHARED_DB = pytest.mark.django_db(transaction=True, serialized_rollback=True)
pytestmark = [SHARED_DB, pytest.mark.usefixtures("telemetry_streams")]


def make_vin(number: int) -> str:
    vin = f"1HGBH41J0MN{number:06d}"
    return vin[:8] + vin_check_digit(vin) + vin[9:]


class Plant:
    """Two stations of one line; unit U is at station A from `arrived` on."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        line = LineFactory()
        self.a = StationFactory(line=line, code=f"ing-{self.tag}-a")
        self.b = StationFactory(line=line, code=f"ing-{self.tag}-b")
        work_order = WorkOrderFactory(line=line, product=ProductFactory())
        self.unit = UnitFactory(work_order=work_order, vin=make_vin(int(self.tag, 16) % 10**5))
        self.arrived_ms = now_ms() - 60_000
        services.unit_arrive(
            unit=self.unit,
            station=self.a,
            at=dt.datetime.fromtimestamp(self.arrived_ms / 1000, dt.UTC),
        )

    def subject(self, station) -> str:
        return f"aegis.telemetry.raw.{station.code}"


@pytest.fixture
def plant() -> Plant:
    return Plant()


def stored() -> int:
    return Sample.objects.count()


def duplicates() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) - count(DISTINCT (station_id, ts, seq)) FROM telemetry_sample"
        )
        return cursor.fetchone()[0]


def counter(metric, *labels: str) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


# -- poison -------------------------------------------------------------------------------------


def test_each_poison_class_is_dead_lettered_with_its_reason_while_good_messages_are_stored(plant):
    t0 = now_ms()
    subject_a, subject_b = plant.subject(plant.a), plant.subject(plant.b)
    good = [Published(subject_a, single(plant.a.code, t0 - n, torque=40.0 + n)) for n in range(20)]
    good += [
        Published(subject_b, batch_body(plant.b.code, t0 - 10_000 * (n + 1), 100)) for n in range(3)
    ]
    oversize_body = orjson.dumps({"timestamp": t0, "torque": 1.0, "note": "x" * (1 << 20)})
    too_many = orjson.dumps(
        {"samples": [{"ts": t0, "seq": n, "signals": {"t": 1}} for n in range(10_001)]}
    )
    unknown = f"ghost-{plant.tag}"
    poison = {
        payloads.BAD_JSON: Published(subject_a, b'{"station_id": "x", "torque": 4'),
        payloads.WRONG_TYPE: Published(subject_a, single(plant.a.code, t0, torque="43.2")),
        payloads.UNKNOWN_STATION: Published(
            f"aegis.telemetry.raw.{unknown}", single(unknown, t0, torque=1.0)
        ),
        payloads.MISSING_TIMESTAMP: Published(subject_b, orjson.dumps({"torque": 1.0})),
        payloads.FAR_FUTURE_TIMESTAMP: Published(
            subject_a, single(plant.a.code, t0 + 3_600_000, torque=1.0)
        ),
        payloads.OVERSIZE: Published(subject_b, oversize_body),
        payloads.TOO_OLD: Published(subject_a, single(plant.a.code, t0 - 3 * 86_400_000, t=1.0)),
        payloads.STATION_MISMATCH: Published(subject_a, single(plant.b.code, t0, torque=1.0)),
    }
    oversize_batch = Published(subject_b, too_many)
    # Poison interleaved with good messages, all in the stream before the worker starts: one
    # batch holds both.
    messages = list(good)
    for index, message in enumerate([*poison.values(), oversize_batch]):
        messages.insert(index * 3 + 1, message)
    publish(messages)
    before = {reason: counter(metrics.DEAD_LETTERS, reason) for reason in payloads.REASONS}

    with RunningWorker(batch_size=500, batch_wait_ms=100):
        wait_until(lambda: stored() == 20 + 300, 20, "every good sample is stored")
        wait_until(lambda: len(dead_letters()) == 9, 10, "every poison message is dead-lettered")
        wait_until(
            lambda: (
                (lambda info: (info.num_pending, info.num_ack_pending))(consumer_info()) == (0, 0)
            ),
            10,
            "every message is acknowledged or terminated",
        )
        time.sleep(0.5)  # nothing comes back: terminated messages are never redelivered

    letters = dead_letters()
    by_reason: dict[str, list] = {}
    for letter in letters:
        by_reason.setdefault(letter.headers["Aegis-Reason"], []).append(letter)
    assert sorted(by_reason) == sorted(poison)
    assert len(by_reason[payloads.OVERSIZE]) == 2
    for reason, message in poison.items():
        letter = by_reason[reason][0]
        assert letter.body == message.body, reason
        assert letter.headers["Aegis-Original-Subject"] == message.subject
        assert letter.headers["Aegis-Detail"]
        station = message.subject.rsplit(".", 1)[1]
        expected = station if station in (plant.a.code, plant.b.code) else "unknown"
        assert letter.subject == f"{DEAD_LETTER_PREFIX}.{expected}", reason
    assert {letter.body for letter in by_reason[payloads.OVERSIZE]} == {oversize_body, too_many}
    after = {reason: counter(metrics.DEAD_LETTERS, reason) for reason in payloads.REASONS}
    assert {r: after[r] - before[r] for r in after if after[r] != before[r]} == {
        **dict.fromkeys(poison, 1),
        payloads.OVERSIZE: 2,
    }
    assert stored() == 320
    assert duplicates() == 0
    assert len(dead_letters()) == 9


# -- the join ---------------------------------------------------------------------------------


def test_samples_carry_the_unit_at_their_station_at_their_own_instant(plant):
    before = plant.arrived_ms - 5_000
    publish(
        [
            Published(plant.subject(plant.a), single(plant.a.code, before, torque=1.0)),
            Published(plant.subject(plant.a), single(plant.a.code, plant.arrived_ms, torque=2.0)),
            Published(
                plant.subject(plant.a), single(plant.a.code, plant.arrived_ms + 9, torque=3.0)
            ),
            Published(plant.subject(plant.b), single(plant.b.code, plant.arrived_ms + 9, angle=4)),
        ]
    )

    with RunningWorker(batch_wait_ms=50):
        wait_until(lambda: stored() == 4, 20, "the samples are stored")

    rows = {(row.station_id, row.signals.popitem()[1]): row for row in Sample.objects.all()}
    assert rows[(plant.a.id, 1.0)].vin is None  # before the unit arrived
    for value in (2.0, 3.0):
        row = rows[(plant.a.id, value)]
        assert (row.unit_id, row.vin, row.serial) == (
            plant.unit.id,
            plant.unit.vin,
            plant.unit.serial,
        )
        assert row.work_order_id == plant.unit.work_order_id
        assert row.product_id == plant.unit.work_order.product_id
    assert rows[(plant.b.id, 4)].unit_id is None  # the unit was never at station B


def at_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def test_a_backlog_replayed_after_many_mes_changes_is_attributed_as_it_happened(plant):
    # Four more units pass station A one after another (5 s each, 1 s empty between them), the
    # second is flashed half-way through its visit, and only then does a worker start: every
    # sample of the minute takes the state of its own instant, not the state at replay time.
    t0 = plant.arrived_ms + 2_000
    services.unit_leave(unit=plant.unit, station=plant.a, at=at_ms(t0))
    schedule = [(plant.arrived_ms, t0, plant.unit)]
    for n in range(4):
        unit = UnitFactory(work_order=plant.unit.work_order, vin=make_vin(90_000 + n))
        arrived, left = t0 + 1_000 + n * 6_000, t0 + 6_000 + n * 6_000
        services.unit_arrive(unit=unit, station=plant.a, at=at_ms(arrived))
        services.unit_leave(unit=unit, station=plant.a, at=at_ms(left))
        schedule.append((arrived, left, unit))
    flashed_ms = schedule[2][0] + 2_500
    services.firmware_flash(
        unit=schedule[2][2], component="EPS", version="v2.1.4", at=at_ms(flashed_ms)
    )
    span = range(plant.arrived_ms - 1_000, schedule[-1][1] + 1_000, 50)
    publish(
        [Published(plant.subject(plant.a), single(plant.a.code, ts, torque=1.0)) for ts in span]
    )

    with RunningWorker(batch_wait_ms=50):
        wait_until(lambda: stored() == len(span), 30, "the backlog is stored")

    def expected(ts: int):
        return next((unit for start, end, unit in schedule if start <= ts < end), None)

    rows = Sample.objects.filter(station_id=plant.a.id).order_by("ts")
    checked = 0
    for row in rows:
        ts = round(row.ts.timestamp() * 1000)
        unit = expected(ts)
        assert row.vin == (unit.vin if unit else None), f"sample at {ts}"
        assert row.unit_id == (unit.id if unit else None)
        flashed = unit == schedule[2][2] and ts >= flashed_ms
        assert row.firmware == ({"EPS": "v2.1.4"} if flashed else None), f"sample at {ts}"
        checked += 1
    assert checked == len(span)
    assert {row.vin for row in rows} == {None} | {unit.vin for _, _, unit in schedule}


def test_a_quiet_line_is_stored_without_waiting_for_the_batch_timer(plant):
    # With a 5 s batch timer, a lone sample is still committed as soon as it arrives: the
    # writer is idle, so the batch is cut at once (the timer only bounds batches under load).
    with RunningWorker(batch_wait_ms=5_000):
        wait_until(lambda: consumer_info().num_waiting >= 1, 30, "the worker pulls")
        for n in range(3):
            sent = time.monotonic()
            body = single(plant.a.code, now_ms(), n, torque=1.0)
            publish([Published(plant.subject(plant.a), body)])
            seconds = wait_until(lambda n=n: stored() == n + 1, 10, "the sample is stored")
            print(f"\nsample {n}: stored {seconds * 1000:.0f} ms after its publish")
            assert time.monotonic() - sent < 1.0


# -- crashes and outages ----------------------------------------------------------------------


def stream_of_samples(plant: Plant, count: int, *, tag: str) -> list[Published]:
    """`count` single-sample messages alternating between the two stations, each with its own
    Nats-Msg-Id, timestamps in the last minute."""
    t0 = now_ms() - 60_000
    messages = []
    for n in range(count):
        station = plant.a if n % 2 else plant.b
        messages.append(
            Published(
                plant.subject(station),
                single(station.code, t0 + n // 2, torque=40.0 + n % 13),
                msg_id=f"{tag}-{n}",
            )
        )
    return messages


def test_a_worker_killed_mid_stream_and_restarted_stores_every_sample_once(plant):
    run(reset_telemetry_streams(ack_wait_s=2))  # a killed worker's messages return after 2 s
    total = 20_000
    publisher = PacedPublisher(stream_of_samples(plant, total, tag="kill"), per_second=5_000)

    with IngestProcess("--batch-size", "200") as first:
        publisher.start()
        wait_until(
            lambda: stored() >= 3_000, 30, f"the first worker stores samples\n{first.output()}"
        )
        first.assert_running()
        first.kill()
    at_kill = stored()
    with IngestProcess("--batch-size", "200") as second:
        publisher.join(30)
        wait_until(lambda: stored() >= total, 60, f"every sample is stored\n{second.output()}")
        time.sleep(2.5)  # past ack_wait: whatever the first worker held has come back
        second.assert_running()
        assert second.terminate() == 0
        summary = second.output().strip().splitlines()[-1]
    print(f"\nkilled with {at_kill} samples stored; then {summary}")

    assert at_kill < total, "the worker was killed after the stream had ended"
    assert publisher.acknowledged == total
    assert stored() == total
    assert duplicates() == 0
    assert dead_letters() == []


class SimulatedCrash(Exception):
    """The worker dies after its commit, before a single ack leaves."""


def test_a_crash_between_commit_and_ack_duplicates_nothing(plant):
    run(reset_telemetry_streams(ack_wait_s=1))
    messages = stream_of_samples(plant, 300, tag="crash")
    publish(messages)

    async def crash(_messages) -> None:
        raise SimulatedCrash

    crashing = RunningWorker(batch_size=100)
    crashing.worker._acknowledge = crash

    def until_it_dies() -> None:
        with crashing:
            wait_until(lambda: crashing.error is not None, 20, "the worker commits and dies")

    with pytest.raises(SimulatedCrash):
        until_it_dies()
    committed_before_crash = stored()
    with RunningWorker(batch_size=500) as second:
        wait_until(lambda: second.worker.totals.received >= 300, 20, "the messages come back")
        wait_until(lambda: consumer_info().num_ack_pending == 0, 10, "everything is acked")

    assert committed_before_crash == 100  # one batch committed, none of it acknowledged
    assert stored() == 300
    assert duplicates() == 0
    assert second.worker.totals.duplicates == 100
    assert second.worker.totals.stored == 200


class OwnServer:
    """A server of the test's own (not the session's) that the test stops and starts again on
    the same port, as a plant's server restarts; stopped and deleted at the end."""

    def __init__(self, server_class: type, **options) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="aegis-ingest-"))
        # As EmbeddedServices does: as root, PostgreSQL runs as another user that must get in.
        self.data_dir.chmod(0o711 if os.geteuid() == 0 else 0o700)
        self.server = server_class(self.data_dir, password=secrets.token_hex(12), **options)
        self.running = self.server.start(free_port())
        self.url = self.running.url

    def stop(self) -> None:
        self.server.stop(self.running)

    def start(self) -> None:
        self.running = self.server.start(self.running.port)

    def __enter__(self) -> OwnServer:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.server.is_running(self.running):
            self.server.stop(self.running)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def test_a_nats_restart_mid_stream_loses_and_duplicates_nothing(plant):
    total = 12_000
    with OwnServer(NatsServer) as nats_server, override_settings(NATS_URL=nats_server.url):
        run(reset_telemetry_streams(ack_wait_s=2))
        publisher = PacedPublisher(stream_of_samples(plant, total, tag="nats"), per_second=2_000)
        with IngestProcess(AEGIS_NATS_URL=nats_server.url) as worker:
            publisher.start()
            wait_until(lambda: stored() >= 2_000, 30, f"samples are stored\n{worker.output()}")
            nats_server.stop()  # the worker and the edge keep going
            time.sleep(1.5)
            nats_server.start()
            at_restart = stored()
            publisher.join(60)
            wait_until(lambda: stored() >= total, 60, f"every sample is stored\n{worker.output()}")
            time.sleep(2.5)  # past ack_wait: anything unacknowledged has come back
            worker.assert_running()
            assert worker.terminate() == 0
            summary = worker.output().strip().splitlines()[-1]
        letters = dead_letters()
    print(f"\n{at_restart} stored at the restart, {publisher.retries} publish retries; {summary}")

    assert at_restart < total
    assert publisher.retries > 0, "the edge never noticed the restart"
    assert stored() == total
    assert duplicates() == 0
    assert letters == []


def test_postgresql_stopped_for_ten_seconds_mid_stream_loses_and_dead_letters_nothing():
    total = 15_000
    with OwnServer(PostgresServer) as database:
        environment = {"AEGIS_DATABASE_URL": database.url}
        for command in (["migrate", "--noinput"], ["seed_demo", "--no-users"]):
            subprocess.run(
                [sys.executable, "manage.py", *command, "--verbosity", "0"],
                cwd=REPO,
                env=process_environment(**environment),
                check=True,
                capture_output=True,
                timeout=180,
            )

        def stored_there() -> int:
            try:
                with psycopg.connect(database.url, connect_timeout=2) as session:
                    return session.execute("SELECT count(*) FROM telemetry_sample").fetchone()[0]
            except psycopg.OperationalError:
                return -1  # stopped

        t0 = now_ms() - 60_000
        messages = [
            Published(
                f"aegis.telemetry.raw.{1 + n % 3}",
                single(str(1 + n % 3), t0 + n // 3, torque=40.0 + n % 11),
                msg_id=f"pg-{n}",
            )
            for n in range(total)
        ]
        publisher = PacedPublisher(messages, per_second=1_000)
        with IngestProcess(**environment) as worker:
            publisher.start()
            wait_until(
                lambda: stored_there() >= 2_000, 30, f"samples are stored\n{worker.output()}"
            )
            database.stop()
            time.sleep(10)
            worker.assert_running()
            database.start()
            at_restart = stored_there()
            publisher.join(60)
            wait_until(lambda: stored_there() >= total, 60, f"all stored\n{worker.output()}")
            worker.assert_running()
            assert worker.terminate() == 0
            output = worker.output()
        with psycopg.connect(database.url) as session:
            count, distinct = session.execute(
                "SELECT count(*), count(DISTINCT (station_id, ts, seq)) FROM telemetry_sample"
            ).fetchone()
    letters = dead_letters()
    print(f"\n{at_restart} stored when PostgreSQL came back; {output.strip().splitlines()[-1]}")

    assert "database_unavailable" in output  # the worker noticed, and retried
    assert at_restart < total
    assert count == distinct == total
    assert letters == []


def test_sigterm_stores_and_acknowledges_the_batches_in_hand_then_exits(plant):
    total = 30_000
    publish(stream_of_samples(plant, total, tag="term"))

    with IngestProcess() as first:
        wait_until(lambda: stored() > 0, 30, f"the worker stores samples\n{first.output()}")
        assert first.terminate(timeout=20) == 0
        at_stop = stored()
        assert "telemetry ingest stopped" in first.output()
    left_unacknowledged = consumer_info().num_ack_pending
    with RunningWorker() as second:
        wait_until(lambda: stored() >= total, 30, "the rest is stored by the next worker")

    assert 0 < at_stop < total, "stopped after the stream was drained"
    assert left_unacknowledged == 0  # nothing waits for ack_wait
    assert second.worker.totals.duplicates == 0  # everything stored was also acknowledged
    assert stored() == total
    assert duplicates() == 0


# -- MES facts arriving late ---------------------------------------------------------------------


def test_a_visit_reported_late_reattributes_the_samples_already_stored(plant):
    sample_ms = now_ms() - 30_000
    other = UnitFactory(
        work_order=plant.unit.work_order, vin=make_vin(int(plant.tag, 16) % 10**5 + 1)
    )

    def row_at_b(ts_ms: int) -> Sample | None:
        return Sample.objects.filter(
            station_id=plant.b.id, ts=dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
        ).first()

    with RunningWorker(batch_wait_ms=50) as running:
        publish([Published(plant.subject(plant.b), single(plant.b.code, sample_ms, torque=1.0))])
        wait_until(lambda: row_at_b(sample_ms) is not None, 20, "the sample is stored")
        assert row_at_b(sample_ms).vin is None  # nobody at station B, as far as anyone knew

        # A legacy MES reports now that the unit had been at B since before the sample.
        services.unit_arrive(
            unit=other,
            station=plant.b,
            at=dt.datetime.fromtimestamp((sample_ms - 10_000) / 1000, dt.UTC),
        )
        run(OutboxRelay().drain(handle_signals=False))  # → aegis.mes.state.<B>
        wait_until(lambda: row_at_b(sample_ms).vin == other.vin, 20, "the stored row is repaired")
        publish(
            [Published(plant.subject(plant.b), single(plant.b.code, sample_ms + 5, torque=2.0))]
        )
        wait_until(lambda: row_at_b(sample_ms + 5) is not None, 20, "a later sample is stored")

    repaired, later = row_at_b(sample_ms), row_at_b(sample_ms + 5)
    assert (repaired.unit_id, repaired.serial, repaired.work_order_id) == (
        other.id,
        other.serial,
        other.work_order_id,
    )
    assert later.vin == other.vin  # joined with the new state directly
    assert running.worker.totals.reattributed == 1


# -- throughput (measured; the numbers go to docs/telemetry-payloads.md) --------------------------


@pytest.mark.parametrize("form", ["batched", "single"])
def test_a_backlog_drains_at_a_measured_rate(plant, form):
    t0 = now_ms() - 600_000
    if form == "batched":  # 2,000 messages of 100 samples with 4 signals each
        messages = [
            Published(plant.subject(station), batch_body(station.code, t0 + n * 100, 100))
            for n in range(1_000)
            for station in (plant.a, plant.b)
        ]
        total = 200_000
    else:  # 40,000 messages of one sample with 4 signals
        messages = [
            Published(
                plant.subject(station),
                single(station.code, t0 + n, torque=43.2, angle=31.0, speed=1200.5, current=7.5),
            )
            for n in range(20_000)
            for station in (plant.a, plant.b)
        ]
        total = 40_000
    publish(messages)

    with IngestProcess() as worker:
        wait_until(lambda: stored() > 0, 30, f"the worker starts\n{worker.output()}")
        started, first = time.monotonic(), stored()
        wait_until(lambda: stored() >= total, 60, f"the backlog drains\n{worker.output()}")
        seconds = time.monotonic() - started
    rate = (total - first) / seconds
    print(f"\n{form}: {total - first} samples in {seconds:.2f} s = {rate:,.0f} samples/s")

    assert stored() == total
    # A floor far below the measured rates: it catches a pipeline that stalls, not noise.
    assert rate > 5_000


def test_rows_the_database_refuses_dead_letter_only_their_message(plant, monkeypatch):
    # A gap in validation, simulated: a signal name with NUL (jsonb refuses it) passes as known.
    monkeypatch.setattr(payloads, "_known_names", {"tor\u0000que", "torque"})
    t0 = now_ms()
    subject = plant.subject(plant.a)
    good = [Published(subject, single(plant.a.code, t0 - n, torque=1.0)) for n in range(10)]
    refused = Published(subject, orjson.dumps({"timestamp": t0, "tor\u0000que": 1.0}))
    publish([*good[:5], refused, *good[5:]])

    with RunningWorker(batch_size=100, batch_wait_ms=100):
        wait_until(lambda: stored() == 10, 20, "the good samples are stored")
        wait_until(lambda: len(dead_letters()) == 1, 10, "the refused message is dead-lettered")
        wait_until(lambda: consumer_info().num_ack_pending == 0, 10, "nothing is left pending")

    (letter,) = dead_letters()
    assert letter.headers["Aegis-Reason"] == payloads.REJECTED_BY_DATABASE
    assert "unicode" in letter.headers["Aegis-Detail"].lower()
    assert letter.body == refused.body
    assert duplicates() == 0

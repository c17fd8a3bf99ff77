"""Partitioned scorers against real NATS and PostgreSQL: two partitions together score every
sample exactly once, a station created while they run (or while its partition is stopped) is
caught up by its partition, a crashed partition's unacknowledged batch comes back first
(AckPolicy.ALL), a new layout starts where the last one left off (both ways), and a second
process on a partition is refused.

"Exactly once" is checked twice: in the scores table (one row per sample) and in the scorers'
own counts (a sample fed twice into a station's windows would be counted twice, even though the
table's key would store it once)."""

from __future__ import annotations

import secrets
import threading
import time

import numpy as np
import orjson
import pytest
from django.db import connection
from nats.js import api
from nats.js.errors import NotFoundError

from aegis import jetstream
from foresight import scorer as scorer_module
from foresight.scorer import (
    CONSUMER,
    ForesightScorer,
    Partition,
    PartitionBusy,
    _layout,
    partition_of,
)
from telemetry.ingest import TELEMETRY_STREAM
from tests.factories import LineFactory, StationFactory
from tests.support import ServedInThread
from tests.telemetry.conftest import Published, now_ms, publish, reset_telemetry_streams, run
from tests.telemetry.conftest import wait_until as wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

HALVES = (Partition(1, 2), Partition(2, 2))
SAMPLES_PER_MESSAGE = 20


async def _reset() -> None:
    """Empty TELEMETRY, a fresh provisioned `foresight-scorer`, no partition consumers."""
    await reset_telemetry_streams(consumers=(CONSUMER,))
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        js = client.jetstream()
        for info in await js.consumers_info(TELEMETRY_STREAM):
            if info.name != CONSUMER and (_layout(info.name) or "catch-up" in info.name):
                await js.delete_consumer(TELEMETRY_STREAM, info.name)
    finally:
        await client.close()


@pytest.fixture(autouse=True)
def streams():
    run(_reset())
    yield
    run(_reset())


async def _consumer(name: str) -> api.ConsumerInfo:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        return await client.jetstream().consumer_info(TELEMETRY_STREAM, name)
    finally:
        await client.close()


def consumer(name: str) -> api.ConsumerInfo:
    return run(_consumer(name))


def codes_for(partitions: int, per_partition: int) -> dict[int, list[str]]:
    """Fresh station codes, `per_partition` of them in each of `partitions` partitions."""
    tag = secrets.token_hex(3)
    chosen: dict[int, list[str]] = {p: [] for p in range(1, partitions + 1)}
    n = 0
    while any(len(codes) < per_partition for codes in chosen.values()):
        code = f"pt{tag}x{n}"
        n += 1
        codes = chosen[partition_of(code, partitions)]
        if len(codes) < per_partition:
            codes.append(code)
    return chosen


def body(code: str, first_ts: int) -> bytes:
    rng = np.random.default_rng(first_ts % 2**32)
    return orjson.dumps(
        {
            "station_id": code,
            "samples": [
                {
                    "ts": first_ts + n,
                    "seq": 0,
                    "signals": {
                        "torque": round(float(rng.normal(40.0, 0.4)), 3),
                        "angle": round(float(rng.normal(30.0, 0.6)), 3),
                    },
                }
                for n in range(SAMPLES_PER_MESSAGE)
            ],
        }
    )


def wave(codes: list[str], first_ts: int, messages: int) -> list[Published]:
    """`messages` messages per station from `first_ts` on, stations interleaved."""
    return [
        Published(f"aegis.telemetry.raw.{code}", body(code, first_ts + m * SAMPLES_PER_MESSAGE))
        for m in range(messages)
        for code in codes
    ]


def score_rows(station_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(rows, distinct samples) of each station's production-side scores."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT station_id, count(*), count(DISTINCT (ts, seq)) FROM foresight_score "
            "WHERE station_id = ANY(%s) AND NOT shadow GROUP BY station_id",
            [station_ids],
        )
        found = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    return {station_id: found.get(station_id, (0, 0)) for station_id in station_ids}


def pulling(name: str) -> bool:
    try:
        return (consumer(name).num_waiting or 0) >= 1
    except NotFoundError:
        return False


def settled(name: str) -> bool:
    """Every delivered message of the consumer acknowledged (as the server has it)."""
    return not consumer(name).num_ack_pending


class Killed(Exception):
    """What a killed process does not get to do: anything after this point."""


class Gated(ForesightScorer):
    """A scorer whose station reloads wait while `gate` is closed."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.gate = threading.Event()
        self.gate.set()

    def _load_stations(self) -> None:
        assert self.gate.wait(30)
        super()._load_stations()


class DiesBeforeStoring(ForesightScorer):
    """A scorer killed after taking a batch and before storing or acknowledging any of it,
    once it has scored `survive` samples."""

    def __init__(self, *, survive: int, **options) -> None:
        super().__init__(**options)
        self.survive = survive

    async def _store(self, rows, alerts) -> bool:
        if self.scored >= self.survive:
            raise Killed
        return await super()._store(rows, alerts)


def test_two_partitions_together_score_every_sample_exactly_once():
    line = LineFactory()
    codes = codes_for(2, 3)
    stations = {
        code: StationFactory(code=code, line=line) for group in codes.values() for code in group
    }
    everyone = [code for group in codes.values() for code in group]
    messages = wave(everyone, now_ms() - 30_000, 40)
    per_station = 40 * SAMPLES_PER_MESSAGE

    first, second = (ForesightScorer(partition=p) for p in HALVES)
    with ServedInThread(first), ServedInThread(second):
        wait_for(lambda: all(pulling(p.consumer) for p in HALVES), 20, "both pulling")
        publish(messages)
        wait_for(lambda: first.scored + second.scored >= len(everyone) * per_station, 60, "scored")
        time.sleep(0.5)  # anything scored twice would show up by now

    ids = [station.id for station in stations.values()]
    assert score_rows(ids) == {i: (per_station, per_station) for i in ids}
    assert first.scored == len(codes[1]) * per_station
    assert second.scored == len(codes[2]) * per_station
    assert {stations[c].id for c in codes[1]} == set(first.scorers)
    assert {stations[c].id for c in codes[2]} == set(second.scorers)
    for partition in HALVES:
        config = consumer(partition.consumer).config
        assert config.ack_policy == api.AckPolicy.ALL
        assert {f"aegis.telemetry.raw.{c}" for c in codes[partition.index]} <= set(
            config.filter_subjects
        )
        assert not {f"aegis.telemetry.raw.{c}" for c in codes[3 - partition.index]} & set(
            config.filter_subjects
        )


def test_a_station_created_while_partitions_run_is_caught_up_by_its_own(monkeypatch):
    monkeypatch.setattr(scorer_module, "STATIONS_POLL_S", 1.0)
    line = LineFactory()
    codes = codes_for(2, 2)
    for code in codes[1] + codes[2]:
        StationFactory(code=code, line=line)
    (late,) = codes_for(2, 1)[2]
    subject = f"aegis.telemetry.raw.{late}"
    t0 = now_ms() - 60_000

    first, second = ForesightScorer(partition=HALVES[0]), Gated(partition=HALVES[1])
    with ServedInThread(first), ServedInThread(second):
        wait_for(lambda: all(pulling(p.consumer) for p in HALVES), 20, "both pulling")
        publish(wave(codes[1] + codes[2], t0, 10))
        # The edge starts publishing the moment the station exists, before its scorer has
        # reloaded the stations (held back here, so that every one of these is caught up).
        second.gate.clear()
        station = StationFactory(code=late, line=line)
        publish(wave([late], t0, 10))
        second.gate.set()
        wait_for(
            lambda: subject in (consumer(HALVES[1].consumer).config.filter_subjects or []),
            20,
            "the station joined its partition's filter",
        )
        publish(wave([late], t0 + 10 * SAMPLES_PER_MESSAGE, 10))
        everything = (len(codes[1]) + len(codes[2])) * 200 + 400
        wait_for(lambda: first.scored + second.scored >= everything, 60, "all scored")
        time.sleep(0.5)

    assert score_rows([station.id]) == {station.id: (400, 400)}
    assert second.caught_up == 200  # read before the station joined the filter
    assert station.id in second.scorers
    assert station.id not in first.scorers
    assert second.scored == len(codes[2]) * 200 + 400  # none fed twice into the windows
    assert first.scored == len(codes[1]) * 200
    assert subject not in (consumer(HALVES[0].consumer).config.filter_subjects or [])


def test_a_station_created_while_its_partition_was_stopped_is_scored_when_it_starts():
    line = LineFactory()
    (known,) = codes_for(2, 1)[2]
    StationFactory(code=known, line=line)
    (late,) = codes_for(2, 1)[2]
    partition = HALVES[1]
    t0 = now_ms() - 60_000

    before = ForesightScorer(partition=partition)
    with ServedInThread(before):
        publish(wave([known], t0, 10))
        wait_for(lambda: before.scored >= 200, 30, "the known station scored")
    station = StationFactory(code=late, line=line)
    publish(wave([late], t0, 10) + wave([known], t0 + 200, 10))

    after = ForesightScorer(partition=partition)
    with ServedInThread(after):
        wait_for(lambda: after.scored >= 400, 30, "both stations scored")
        time.sleep(0.5)

    assert score_rows([station.id]) == {station.id: (200, 200)}
    assert after.caught_up == 200
    assert after.scored == 400  # the new station's samples once, though read twice
    assert f"aegis.telemetry.raw.{late}" in consumer(partition.consumer).config.filter_subjects


def test_a_crashed_partitions_unacknowledged_batch_comes_back_first_and_in_order():
    """Under AckPolicy.ALL the next batch's acknowledgement would cover a crashed run's batch:
    it would never be scored. The restarted scorer recreates the consumer at its floor."""
    line = LineFactory()
    (code,) = codes_for(2, 1)[1]
    station = StationFactory(code=code, line=line)
    partition = HALVES[0]
    t0 = now_ms() - 60_000
    a, b, c = (wave([code], t0 + k * 4_000, 20) for k in range(3))  # 400 samples each

    dying = ServedInThread(DiesBeforeStoring(survive=400, partition=partition))
    dying.thread.start()
    wait_for(lambda: pulling(partition.consumer), 20, "pulling")
    publish(a)
    wait_for(lambda: dying.service.scored >= 400, 30, "the first wave scored")
    publish(b)
    dying.thread.join(30)
    assert isinstance(dying.error, Killed)
    floor = consumer(partition.consumer).ack_floor.stream_seq
    assert consumer(partition.consumer).delivered.stream_seq > floor  # b: delivered, unacked
    publish(c)

    started = time.monotonic()
    restarted = ForesightScorer(partition=partition)
    with ServedInThread(restarted):
        wait_for(lambda: restarted.scored >= 800, 25, "b and c scored")
        seconds = time.monotonic() - started
        time.sleep(0.5)

    assert score_rows([station.id]) == {station.id: (1_200, 1_200)}
    assert restarted.scored == 800  # b and c, each once; a not again
    assert consumer(partition.consumer).config.opt_start_seq == floor + 1
    assert seconds < 20  # not the 30 s ack_wait after which a lost batch would come back


def test_a_new_layout_starts_where_the_last_one_left_off_and_back():
    line = LineFactory()
    codes = codes_for(2, 2)
    everyone = codes[1] + codes[2]
    stations = [StationFactory(code=code, line=line) for code in everyone]
    t0 = now_ms() - 60_000
    a, b, c = (wave(everyone, t0 + k * 2_000, 5) for k in range(3))
    per_wave = len(everyone) * 5 * SAMPLES_PER_MESSAGE
    per_station = 3 * 5 * SAMPLES_PER_MESSAGE

    whole = ForesightScorer()
    with ServedInThread(whole):
        publish(a)
        wait_for(lambda: whole.scored >= per_wave, 30, "a scored by the single scorer")
        wait_for(lambda: settled(CONSUMER), 10, "a acknowledged")
    publish(b)  # while no scorer runs: the new layout must not leave it behind

    halves = [ForesightScorer(partition=p) for p in HALVES]
    with ServedInThread(halves[0]), ServedInThread(halves[1]):
        wait_for(lambda: sum(h.scored for h in halves) >= per_wave, 30, "b scored by halves")
        wait_for(lambda: all(settled(p.consumer) for p in HALVES), 10, "b acknowledged")
        time.sleep(0.5)
    assert sum(h.scored for h in halves) == per_wave  # b only: a is not scored again
    publish(c)

    back = ForesightScorer()
    with ServedInThread(back):
        wait_for(lambda: back.scored >= per_wave, 30, "c scored by the single scorer")
        time.sleep(0.5)
    assert back.scored == per_wave  # c only: what the halves scored is not scored again

    ids = [station.id for station in stations]
    assert score_rows(ids) == {i: (per_station, per_station) for i in ids}
    legacy = consumer(CONSUMER).config
    assert legacy.ack_policy == api.AckPolicy.EXPLICIT  # still the provisioned consumer
    assert legacy.filter_subject == "aegis.telemetry.raw.>"


def test_a_second_process_on_a_partition_is_refused():
    partition = HALVES[0]
    with ServedInThread(ForesightScorer(partition=partition)):
        wait_for(lambda: pulling(partition.consumer), 20, "the first one pulling")
        with pytest.raises(PartitionBusy, match="exactly one scorer per partition"):
            run(ForesightScorer(partition=partition).serve(handle_signals=False))

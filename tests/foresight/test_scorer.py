"""The live scorer against real servers: fail-open beside a running ingest, 100 hot-swaps under
load with every sample scored once, and an alert reaching a real websocket client. Then, without
servers: the fast decoding of plain batch messages agrees with `parse_message` and leaves
everything else to it, and partitions are parsed and assigned as documented.

The scorer, the ingest worker and the outbox relay run in threads of the test process (their
`serve()`, as their commands run them), daphne as a real process. Partitioned scorers:
test_partitions.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import secrets
import time
import zlib

import numpy as np
import orjson
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from onnx import TensorProto, helper, numpy_helper
from websockets.sync.client import connect

from foresight import metrics, registry, spc
from foresight.detectors import train
from foresight.features import FeatureSpec, StationWindows
from foresight.models import DefectAlert, ModelStatus
from foresight.scorer import (
    ForesightScorer,
    Partition,
    StationSamples,
    partition_of,
    plain_batch,
)
from mes.relay import OutboxRelay
from telemetry.ingest import IngestWorker
from telemetry.models import Sample
from telemetry.payloads import Rejection, parse_message, time_window
from tests.factories import StationFactory, UserFactory
from tests.support import ServedInThread, daphne
from tests.telemetry.conftest import (
    PacedPublisher,
    Published,
    now_ms,
    publish,
    reset_telemetry_streams,
    run,
    wait_until,
)


def live(test):
    """Against the real servers, with TELEMETRY emptied and the scorer's consumer fresh."""
    for mark in (
        pytest.mark.slow,
        pytest.mark.django_db(transaction=True, serialized_rollback=True),
        pytest.mark.usefixtures("streams"),
    ):
        test = mark(test)
    return test


SPEC = FeatureSpec.from_json(
    {
        "version": 1,
        "signals": ["torque", "angle"],
        "windows": [10, 40],
        "features": ["mean", "std", "min", "max", "slope"],
        "correlations": [["torque", "angle"]],
    }
)
SCORER = "foresight-scorer"


@pytest.fixture
def streams():
    run(reset_telemetry_streams(consumers=("ingest", SCORER)))
    yield
    run(reset_telemetry_streams(consumers=("ingest", SCORER)))


@pytest.fixture(scope="module")
def detector():
    rng = np.random.default_rng(7)
    n = 6_000
    values = {"torque": rng.normal(40.0, 0.4, n), "angle": rng.normal(30.0, 0.6, n)}
    features = StationWindows(SPEC).push(np.arange(n), values)
    return train("pca_t2q", features[40:])


def exploding_artifact(n_features: int) -> bytes:
    """Loads, then fails on every call: a weight one row too tall for the features."""
    weights = numpy_helper.from_array(np.ones((n_features + 1, 1), dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["product"]),
            helper.make_node("Flatten", ["product"], ["flat"], axis=0),
            helper.make_node("Squeeze", ["flat"], ["score"]),
        ],
        "exploding",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


def register(station, detector, *, onnx_bytes: bytes | None = None, version: str | None = None):
    now = dt.datetime.now(dt.UTC)
    return registry.register_candidate(
        station=station,
        kind="pca_t2q",
        onnx=onnx_bytes or detector.onnx,
        feature_spec=SPEC.to_json(),
        feature_mean=detector.feature_mean,
        feature_std=detector.feature_std,
        threshold=detector.threshold,
        training_start=now - dt.timedelta(hours=1),
        training_end=now,
        version=version,
    )


def batch(station: str, first_ts: int, count: int, *, torque: float = 40.0) -> bytes:
    rng = np.random.default_rng(first_ts % 2**32)
    samples = [
        {
            "ts": first_ts + n,
            "seq": 0,
            "signals": {
                "torque": round(float(rng.normal(torque, 0.4)), 3),
                "angle": round(float(rng.normal(30.0, 0.6)), 3),
            },
        }
        for n in range(count)
    ]
    return json.dumps({"station_id": station, "samples": samples}).encode()


def subject(station) -> str:
    return f"aegis.telemetry.raw.{station.code}"


def production_rows(station) -> tuple[int, int, int]:
    """(rows, distinct samples, distinct models) of the station's production-side scores."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT (ts, seq)), count(DISTINCT model_version_id) "
            "FROM foresight_score WHERE station_id = %s AND NOT shadow",
            [station.id],
        )
        return cursor.fetchone()


def counter(metric) -> float:
    return metric._value.get()


@live
def test_a_model_failing_on_every_call_leaves_ingest_alone_and_the_baseline_alerts(detector):
    station = StationFactory(code=f"fo-{secrets.token_hex(3)}")
    model = register(station, detector, onnx_bytes=exploding_artifact(len(SPEC.names)))
    registry.promote(version=model, to=ModelStatus.PRODUCTION)
    errors_before = counter(metrics.SCORING_ERRORS)
    t0 = now_ms() - 60_000
    messages = [
        Published(subject(station), batch(station.code, t0 + n * 100, 100)) for n in range(30)
    ]
    messages.append(Published(subject(station), batch(station.code, t0 + 3_000, 100, torque=90)))
    total = 31 * 100

    scorer = ForesightScorer()
    with ServedInThread(IngestWorker(batch_wait_ms=50)), ServedInThread(scorer):
        publish(messages)
        wait_until(
            lambda: Sample.objects.filter(station_id=station.id).count() == total, 30, "stored"
        )
        wait_until(lambda: scorer.scored >= total, 30, "scored")

    assert counter(metrics.SCORING_ERRORS) > errors_before  # counted
    assert production_rows(station) == (total, total, 1)  # every sample scored, by the fallback
    (alert,) = DefectAlert.objects.filter(station=station)
    assert alert.source == "baseline"
    assert alert.model_version is None
    assert alert.triggering["torque"] > 80
    assert alert.explanation[0]["signal"] == "torque"


@live
def test_a_hundred_hot_swaps_under_load_score_every_sample_exactly_once(detector):
    station = StationFactory(code=f"hs-{secrets.token_hex(3)}")
    models = [register(station, detector) for _ in range(100)]
    t0 = now_ms()
    # Messages of 20 samples, 100 a second (2,000 samples/s) for 30 s: the swaps happen within.
    stream = [
        Published(subject(station), batch(station.code, t0 + n * 20, 20), msg_id=f"{t0}-{n}")
        for n in range(3_000)
    ]
    publisher = PacedPublisher(stream, per_second=100, chunk=2)
    scorer = ForesightScorer()
    delays = []
    with ServedInThread(OutboxRelay(poll_interval_s=0.05)), ServedInThread(scorer):
        publisher.start()
        wait_until(lambda: scorer.scored > 1_000, 30, "scoring under way")
        for model in models:
            swaps = scorer.swaps
            registry.promote(version=model, to=ModelStatus.PRODUCTION)
            # From the promotion's commit to the scorer using the new model.
            delays.append(wait_until(lambda s=swaps: scorer.swaps > s, 5, f"{model} swapped in"))
            # Swaps apply between batches, so the next batch is the new model's. Waiting for it
            # keeps two promotions from landing between the same two batches (with a batch every
            # 50 ms that happens), so that every model scores samples.
            scored = scorer.scored
            wait_until(lambda n=scored: scorer.scored > n, 5, f"a batch scored by {model}")
        assert publisher.thread.is_alive(), "the swaps outlasted the load"
        publisher.join(120)
        wait_until(lambda: production_rows(station)[1] >= len(stream) * 20, 60, "all scored")

    rows, samples, model_ids = production_rows(station)
    print(f"\nswaps: median {np.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms")
    assert publisher.acknowledged == len(stream)
    assert samples == len(stream) * 20  # none missed
    assert rows == samples  # none scored twice
    assert model_ids == 101  # each of the 100 models scored samples, and the baseline first
    assert max(delays) < 1.0


@contextlib.contextmanager
def watching(client, station):
    """A live scorer and an operator's websocket on the station, past its hello."""
    client.force_login(UserFactory(role="operator"))
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    with (
        daphne() as base_url,
        connect(
            f"{base_url.replace('http://', 'ws://')}/ws/events/?station={station.code}",
            additional_headers={"Cookie": cookie, "Origin": base_url},
            open_timeout=10,
        ) as socket,
        ServedInThread(ForesightScorer()) as running,
    ):
        assert json.loads(socket.recv(timeout=10))["type"] == "hello"
        yield socket, running


@live
def test_an_alert_reaches_a_websocket_client_with_its_explanation(client, detector):
    station = StationFactory(code=f"ws-{secrets.token_hex(3)}")
    registry.promote(version=register(station, detector), to=ModelStatus.PRODUCTION)
    t0 = now_ms() - 10_000
    normal = [
        Published(subject(station), batch(station.code, t0 + n * 100, 100)) for n in range(20)
    ]
    with watching(client, station) as (socket, running):
        publish(normal)
        wait_until(lambda: running.service.scored >= 2_000, 30, "normal samples scored")
        live = json.loads(socket.recv(timeout=10))  # the board's summary of what was scored
        sent = time.monotonic()
        publish([Published(subject(station), batch(station.code, t0 + 2_000, 50, torque=48.0))])
        event = json.loads(socket.recv(timeout=10))
        while event["type"] == "station.live":
            event = json.loads(socket.recv(timeout=10))
        seconds = time.monotonic() - sent

    print(f"\npublish → websocket: {seconds * 1000:.0f} ms")
    assert live["type"] == "station.live"
    assert live["station"] == station.code
    assert live["signals"]["torque"]["last"] is not None
    assert live["threshold"] is not None
    assert event["type"] == "defect.alert"
    assert event["station_id"] == station.code
    assert event["source"] == "model"
    assert event["trigger_torque_nm"] > 44
    assert event["anomaly_score"] >= event["threshold"]
    assert event["explanation"][0]["signal"] == "torque"
    assert {"feature", "z", "share"} <= event["explanation"][0].keys()


def epoch_ms(instant: str) -> int:
    return round(dt.datetime.fromisoformat(instant).timestamp() * 1000)


@live
def test_an_spc_violation_in_live_telemetry_reaches_a_websocket_client_naming_its_rule(client):
    station = StationFactory(code=f"sp-{secrets.token_hex(3)}")
    limits = spc.compute_limits(np.random.default_rng(3).normal(40.0, 0.4, 400), 1)
    now = dt.datetime.now(dt.UTC)
    registry.control_limits_activate(
        station=station,
        signal="torque",
        limits=limits,
        baseline_start=now - dt.timedelta(hours=1),
        baseline_end=now,
        user=None,
    )
    t0 = now_ms() - 10_000
    spike_ts = t0 + 500
    spike = {"ts": spike_ts, "seq": 0, "signals": {"torque": 48.0, "angle": 30.0}}
    with watching(client, station) as (socket, running):
        publish([Published(subject(station), batch(station.code, t0, 500))])
        wait_until(lambda: running.service.scored >= 500, 30, "in-control samples scored")
        publish([Published(subject(station), message([spike], station_id=station.code))])
        event = json.loads(socket.recv(timeout=10))
        while not (event["type"] == "defect.alert" and epoch_ms(event["ts"]) == spike_ts):
            event = json.loads(socket.recv(timeout=10))

    assert (event["source"], event["rule"], event["chart"]) == ("spc", "nelson_1", "i")
    assert event["spc"]["value"] == 48.0
    assert event["spc"]["ucl"] == pytest.approx(limits.ucl)
    # In-control noise may break the run rules now and then; the spike breaks rule 1.
    stored = DefectAlert.objects.get(
        station=station, ts=event["ts"], source="spc", rule="nelson_1", chart="i"
    )
    assert stored.model_version is None
    assert stored.triggering == {"torque": 48.0, "angle": 30.0}


# -- decoding, without servers ----------------------------------------------------------------

NOW_MS = 1_714_234_567_890
WINDOW = time_window(now_ms=NOW_MS, retention_hours=24)
SUBJECT = "aegis.telemetry.raw.st-7"
VETTED = {"torque", "angle"}


def sample(n: int, **changes) -> dict:
    return {"ts": NOW_MS - 1_000 + n, "seq": n, "signals": {"torque": 40.5 + n, "angle": 30}} | (
        changes
    )


def message(samples: list, **document) -> bytes:
    return orjson.dumps({"station_id": "st-7", "samples": samples} | document)


def test_a_plain_batch_decodes_to_the_samples_parse_message_accepts():
    body = message([sample(n) for n in range(20)])
    code, chunk = plain_batch(body, subject=SUBJECT, window=WINDOW, vetted=VETTED)
    parsed = parse_message(body, subject=SUBJECT, window=WINDOW)

    assert code == parsed.station == "st-7"
    assert list(chunk.ts) == [s.ts for s in parsed.samples]
    assert list(chunk.seq) == [s.seq for s in parsed.samples]
    assert list(chunk.raw) == [s.signals for s in parsed.samples]
    samples = StationSamples()
    samples.add_chunk(chunk)
    ts, seq, values = samples.arrays()
    assert ts.dtype == np.int64
    assert seq.tolist() == list(range(20))
    assert values["torque"].tolist() == [40.5 + n for n in range(20)]
    assert values["angle"].dtype == np.float64


NOT_PLAIN = {
    # valid, but not plain: parse_message accepts them and the scorer scores them that way
    "integral float ts": (message([sample(0, ts=float(NOW_MS))]), True),
    "seq left out": (message([{"ts": NOW_MS, "signals": {"torque": 1.0}}]), True),
    "numeric station_id": (orjson.dumps({"station_id": 7, "samples": [sample(0)]}), None),
    "signals differ between samples": (
        message([sample(0), sample(1, signals={"torque": 2.0})]),
        True,
    ),
    "the single-sample form": (
        orjson.dumps({"station_id": "st-7", "timestamp": NOW_MS, "torque": 1.0}),
        True,
    ),
    "a signal name not vetted yet": (message([sample(0, signals={"speed": 1.0})]), True),
    # rejected by parse_message
    "bad JSON": (b'{"station_id": "st-7", "samples": [', False),
    "not an object": (b"[1, 2]", False),
    "boolean signal": (message([sample(0, signals={"torque": True})]), False),
    "string signal": (message([sample(0, signals={"torque": "40.1"})]), False),
    "null signal": (message([sample(0, signals={"torque": None})]), False),
    "no signals": (message([sample(0, signals={})]), False),
    "extra sample key": (message([sample(0) | {"unit": "x"}]), False),
    "extra document key": (message([sample(0)], vin="X"), False),
    "station mismatch": (orjson.dumps({"station_id": "st-8", "samples": [sample(0)]}), False),
    "no samples": (message([]), False),
    "samples not a list": (orjson.dumps({"station_id": "st-7", "samples": {}}), False),
    "sample not an object": (message([[1, 2, 3]]), False),
    "boolean ts": (message([sample(0, ts=True)]), False),
    "ts too old": (message([sample(0, ts=WINDOW.oldest - 1)]), False),
    "ts far in the future": (message([sample(0, ts=WINDOW.newest + 1)]), False),
    "negative seq": (message([sample(0, seq=-1)]), False),
    "seq beyond int4": (message([sample(0, seq=2**31)]), False),
    "oversize": (message([sample(n) for n in range(10_001)]), False),
}


@pytest.mark.parametrize("case", NOT_PLAIN)
def test_anything_less_plain_is_left_to_parse_message(case):
    body, accepted = NOT_PLAIN[case]
    assert plain_batch(body, subject=SUBJECT, window=WINDOW, vetted=VETTED) is None
    verdict = parse_message(body, subject=SUBJECT, window=WINDOW)
    if accepted is not None:
        assert (type(verdict) is not Rejection) == accepted, verdict


def test_a_station_whose_messages_differ_gets_columns_with_gaps():
    plain = plain_batch(message([sample(0)]), subject=SUBJECT, window=WINDOW, vetted=VETTED)
    other = message([sample(1, signals={"torque": 9.0, "speed": 3})])
    samples = StationSamples()
    samples.add_chunk(plain[1])
    samples.add_message(parse_message(other, subject=SUBJECT, window=WINDOW))
    _, seq, values = samples.arrays()

    assert seq.tolist() == [0, 1]
    assert values["torque"].tolist() == [40.5, 9.0]
    assert values["angle"][0] == 30
    assert math.isnan(values["angle"][1])
    assert math.isnan(values["speed"][0])
    assert values["speed"][1] == 3


# -- partitions, without servers --------------------------------------------------------------


def test_partitions_are_written_i_of_n_and_checked():
    assert Partition.parse(" 2/3 ") == Partition(2, 3)
    assert Partition.parse("1/1").consumer == "foresight-scorer"
    assert Partition.parse("2/3").consumer == "foresight-scorer-2-of-3"
    for wrong in ("0/2", "3/2", "1/0", "2", "a/b", "1/65"):
        with pytest.raises(ValueError, match="partition"):
            Partition.parse(wrong)


def test_every_station_belongs_to_exactly_one_partition_by_crc32_of_its_code():
    codes = [f"ST{n}" for n in range(200)] + ["bench-abc123-01", "tq-01"]
    for count in (1, 2, 3, 5):
        partitions = [Partition(index, count) for index in range(1, count + 1)]
        for code in codes:
            assert [p.owns(code) for p in partitions].count(True) == 1
            assert partition_of(code, count) == zlib.crc32(code.encode()) % count + 1
    # The assignment is part of the contract (docs/foresight.md): it must not drift.
    codes = ("ST1", "ST4", "ST6", "tq-02", "bench-abc123-01")
    assert [partition_of(code, 2) for code in codes] == [2, 1, 1, 2, 1]
    assert [partition_of(code, 3) for code in codes] == [2, 1, 2, 3, 1]


@pytest.mark.django_db
def test_the_command_lists_a_partitions_stations_and_refuses_a_wrong_one(capsys):
    stations = [StationFactory(code=f"lp-{n}") for n in range(6)]
    mine = sorted(s.code for s in stations if partition_of(s.code, 2) == 2)

    call_command("foresight", "--partition=2/2", "--list-stations")
    listed = capsys.readouterr().out

    assert "foresight-scorer-2-of-2" in listed
    assert [
        line.strip() for line in listed.splitlines()[1:] if line.strip().startswith("lp-")
    ] == mine
    with pytest.raises(CommandError, match="I/N"):
        call_command("foresight", "--partition=3/2", "--list-stations")

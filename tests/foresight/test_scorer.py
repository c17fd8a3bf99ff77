"""The live scorer against real servers: fail-open beside a running ingest, 100 hot-swaps under
load with every sample scored once, and an alert reaching a real websocket client.

The scorer, the ingest worker and the outbox relay run in threads of the test process (their
`serve()`, as their commands run them), daphne as a real process."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time

import numpy as np
import pytest
from django.db import connection
from onnx import TensorProto, helper, numpy_helper
from websockets.sync.client import connect

from foresight import metrics, registry
from foresight.detectors import train
from foresight.features import FeatureSpec, StationWindows
from foresight.models import DefectAlert, ModelStatus
from foresight.scorer import ForesightScorer
from mes.relay import OutboxRelay
from telemetry.ingest import IngestWorker
from telemetry.models import Sample
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

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

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


@pytest.fixture(autouse=True)
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


def test_an_alert_reaches_a_websocket_client_with_its_explanation(client, detector):
    station = StationFactory(code=f"ws-{secrets.token_hex(3)}")
    registry.promote(version=register(station, detector), to=ModelStatus.PRODUCTION)
    user = UserFactory(role="operator")
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    t0 = now_ms() - 10_000
    normal = [
        Published(subject(station), batch(station.code, t0 + n * 100, 100)) for n in range(20)
    ]
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
        publish(normal)
        wait_until(lambda: running.service.scored >= 2_000, 30, "normal samples scored")
        sent = time.monotonic()
        publish([Published(subject(station), batch(station.code, t0 + 2_000, 50, torque=48.0))])
        event = json.loads(socket.recv(timeout=10))
        seconds = time.monotonic() - sent

    print(f"\npublish → websocket: {seconds * 1000:.0f} ms")
    assert event["type"] == "defect.alert"
    assert event["station_id"] == station.code
    assert event["source"] == "model"
    assert event["trigger_torque_nm"] > 44
    assert event["anomaly_score"] >= event["threshold"]
    assert event["explanation"][0]["signal"] == "torque"
    assert {"feature", "z", "share"} <= event["explanation"][0].keys()

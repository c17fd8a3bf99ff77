"""Both payload forms decode into samples; every malformed message is refused with its reason;
the published JSON Schemas agree with the worker on what is well-formed."""

from __future__ import annotations

import json
import re

import jsonschema
import orjson
import pytest

from telemetry import payloads
from telemetry.payloads import Message, Rejection, Sample, parse_message, time_window
from tests.support import REPO

NOW = 1_790_000_000_000  # a fixed "now" for the time window
WINDOW = time_window(now_ms=NOW, retention_hours=24)
SUBJECT = "aegis.telemetry.raw.5"
SCHEMAS = REPO / "docs" / "schemas"
DOC = REPO / "docs" / "telemetry-payloads.md"


def parse(document: object, subject: str = SUBJECT) -> Message | Rejection:
    body = document if isinstance(document, bytes) else orjson.dumps(document)
    return parse_message(body, subject=subject, window=WINDOW)


def reason_of(document: object, subject: str = SUBJECT) -> str:
    result = parse(document, subject)
    assert isinstance(result, Rejection), f"accepted: {result}"
    return result.reason


def batch(*samples: dict, station: str | None = "5") -> dict:
    document: dict = {"samples": list(samples)}
    if station is not None:
        document["station_id"] = station
    return document


# -- accepted ---------------------------------------------------------------------------------


def test_single_sample_keeps_every_other_numeric_field_as_a_signal():
    result = parse({"station_id": "5", "torque": 43.21, "angle": 31, "timestamp": NOW})

    assert result == Message("5", [Sample(NOW, 0, {"torque": 43.21, "angle": 31})])


def test_single_sample_takes_seq_and_a_numeric_station_id():
    result = parse({"station_id": 5, "timestamp": NOW, "seq": 3, "torque": 1.5})

    assert result == Message("5", [Sample(NOW, 3, {"torque": 1.5})])


def test_the_subject_names_the_station_when_the_payload_does_not():
    assert parse({"timestamp": NOW, "torque": 1.0}, "aegis.telemetry.raw.L1-S03").station == (
        "L1-S03"
    )


def test_batch_carries_each_samples_own_timestamp_seq_and_signals():
    result = parse(
        batch(
            {"ts": NOW - 10, "seq": 0, "signals": {"torque": 43.2, "angle": 31.0}},
            {"ts": NOW - 10, "seq": 1, "signals": {"torque": 43.4}},
            {"ts": NOW, "signals": {"angle": 32.5}},
        )
    )

    assert result == Message(
        "5",
        [
            Sample(NOW - 10, 0, {"torque": 43.2, "angle": 31.0}),
            Sample(NOW - 10, 1, {"torque": 43.4}),
            Sample(NOW, 0, {"angle": 32.5}),
        ],
    )


def test_integral_numbers_written_with_a_fraction_are_integers():
    result = parse({"timestamp": float(NOW), "seq": 2.0, "torque": 1})

    assert result.samples == [Sample(NOW, 2, {"torque": 1})]
    assert type(result.samples[0].ts) is int


def test_timestamps_at_the_edges_of_the_window_are_accepted():
    newest = NOW + payloads.FUTURE_TOLERANCE_MS
    oldest = NOW - 24 * 3_600_000

    assert isinstance(parse({"timestamp": newest, "torque": 1}), Message)
    assert isinstance(parse({"timestamp": oldest, "torque": 1}), Message)


def test_a_batch_of_the_maximum_size_is_accepted():
    samples = [{"ts": NOW, "seq": n, "signals": {"t": 1}} for n in range(payloads.MAX_SAMPLES)]

    assert len(parse(batch(*samples)).samples) == payloads.MAX_SAMPLES


# -- refused, one reason each -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"timestamp": 1, "torque": NaN}', b'{"torque": 1e400}', b"\xff\xfe", b""],
    ids=["truncated", "nan", "infinity", "not-utf8", "empty"],
)
def test_undecodable_bodies_are_bad_json(body):
    assert reason_of(body) == payloads.BAD_JSON


@pytest.mark.parametrize(
    "document",
    [
        [{"timestamp": NOW, "torque": 1}],
        "a string",
        {"timestamp": NOW, "torque": "43.2"},
        {"timestamp": NOW, "torque": True},
        {"timestamp": NOW, "torque": None},
        {"timestamp": NOW, "torque": {"value": 1}},
        {"timestamp": str(NOW), "torque": 1},
        {"timestamp": NOW + 0.5, "torque": 1},
        {"timestamp": NOW, "seq": -1, "torque": 1},
        {"timestamp": NOW, "seq": 2**31, "torque": 1},
        {"timestamp": NOW, "seq": "1", "torque": 1},
        {"timestamp": NOW},
        {"timestamp": NOW, "station_id": ["5"], "torque": 1},
        {"timestamp": NOW, "tor\u0000que": 1},
        {"timestamp": NOW, "": 1},
        {"timestamp": NOW, "x" * 129: 1},
        batch({"ts": NOW, "signals": {"torque": "high"}}),
        batch({"ts": NOW, "signals": {}}),
        batch({"ts": NOW}),
        batch({"ts": NOW, "signals": [1, 2]}),
        batch({"ts": NOW, "signals": {"t": 1}, "extra": 1}),
        batch("not a sample"),
        batch(),
        {"station_id": "5", "samples": {"ts": NOW}},
        {"station_id": "5", "samples": [], "edge": "gw-1"},
    ],
    ids=[
        "array",
        "string",
        "string-signal",
        "boolean-signal",
        "null-signal",
        "object-signal",
        "string-timestamp",
        "fractional-timestamp",
        "negative-seq",
        "seq-beyond-int4",
        "string-seq",
        "no-signals",
        "station-id-array",
        "nul-in-signal-name",
        "empty-signal-name",
        "long-signal-name",
        "batch-string-signal",
        "batch-empty-signals",
        "batch-missing-signals",
        "batch-signals-array",
        "batch-unknown-sample-key",
        "batch-sample-not-object",
        "batch-empty",
        "batch-samples-not-array",
        "batch-unknown-top-level-key",
    ],
)
def test_wrong_shapes_and_types_are_wrong_type(document):
    assert reason_of(document) == payloads.WRONG_TYPE


def test_the_detail_names_the_offending_sample_and_field():
    result = parse(
        batch({"ts": NOW, "signals": {"torque": 1}}, {"ts": NOW, "signals": {"angle": "x"}})
    )

    assert result == Rejection(
        payloads.WRONG_TYPE, "samples[1].angle: expected a number, got string"
    )


@pytest.mark.parametrize(
    "document",
    [
        {"station_id": "5", "torque": 1},
        {"station_id": "5", "timestamp": None, "torque": 1},
        batch({"ts": NOW, "signals": {"t": 1}}, {"seq": 1, "signals": {"t": 1}}),
    ],
    ids=["single", "single-null", "batch"],
)
def test_samples_without_a_timestamp_are_missing_timestamp(document):
    assert reason_of(document) == payloads.MISSING_TIMESTAMP


def test_timestamps_beyond_five_minutes_ahead_are_far_future():
    ahead = NOW + payloads.FUTURE_TOLERANCE_MS + 1

    assert reason_of({"timestamp": ahead, "torque": 1}) == payloads.FAR_FUTURE_TIMESTAMP
    assert reason_of(batch({"ts": ahead, "signals": {"t": 1}})) == payloads.FAR_FUTURE_TIMESTAMP


def test_timestamps_older_than_the_retention_are_too_old():
    expired = NOW - 24 * 3_600_000 - 1

    assert reason_of({"timestamp": expired, "torque": 1}) == payloads.TOO_OLD
    # Seconds instead of milliseconds: 1970, far too old.
    assert reason_of({"timestamp": NOW // 1000, "torque": 1}) == payloads.TOO_OLD


def test_a_station_id_contradicting_the_subject_is_a_station_mismatch():
    assert reason_of({"station_id": "6", "timestamp": NOW, "t": 1}) == payloads.STATION_MISMATCH
    assert reason_of(batch({"ts": NOW, "signals": {"t": 1}}, station="6")) == (
        payloads.STATION_MISMATCH
    )


def test_bodies_over_one_mebibyte_and_batches_over_ten_thousand_samples_are_oversize():
    padding = "x" * (payloads.MAX_MESSAGE_BYTES)
    samples = [{"ts": NOW, "seq": n, "signals": {"t": 1}} for n in range(payloads.MAX_SAMPLES + 1)]

    assert reason_of({"timestamp": NOW, "t": 1, "note": padding}) == payloads.OVERSIZE
    assert reason_of(batch(*samples)) == payloads.OVERSIZE


def test_one_bad_sample_refuses_its_whole_message():
    good = [{"ts": NOW, "seq": n, "signals": {"t": 1}} for n in range(50)]

    assert reason_of(batch(*good, {"ts": "later", "signals": {"t": 1}})) == payloads.WRONG_TYPE


# -- the published schemas --------------------------------------------------------------------


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_accepts(document: object) -> bool:
    name = (
        "telemetry-batch.schema.json"
        if isinstance(document, dict) and "samples" in document
        else "telemetry-sample.schema.json"
    )
    return validator(name).is_valid(document)


# Documents whose validity does not depend on the clock, the station or the size.
SHAPES = [
    {"station_id": "5", "torque": 43.21, "timestamp": NOW},
    {"station_id": 5, "torque": 43.21, "timestamp": NOW, "seq": 7},
    {"timestamp": NOW, "a": 1, "b": -2.5e-3},
    {"timestamp": float(NOW), "a": 1},
    batch({"ts": NOW, "seq": 0, "signals": {"torque": 43.2, "angle": 31.0}}),
    batch({"ts": NOW, "signals": {"t": 1}}, station=None),
    {"timestamp": NOW},
    {"timestamp": NOW, "torque": "1"},
    {"timestamp": NOW, "torque": False},
    {"timestamp": NOW + 0.25, "torque": 1},
    {"timestamp": NOW, "seq": -1, "torque": 1},
    {"timestamp": NOW, "\u0007bell": 1},
    {"torque": 1},
    batch(),
    batch({"ts": NOW, "signals": {}}),
    batch({"ts": NOW, "signals": {"t": None}}),
    batch({"signals": {"t": 1}}),
    batch({"ts": NOW, "signals": {"t": 1}, "x": 1}),
    {"station_id": "5", "samples": [{"ts": NOW, "signals": {"t": 1}}], "edge": "gw"},
    {"station_id": "5", "samples": "none"},
]


@pytest.mark.parametrize("document", SHAPES, ids=[json.dumps(d)[:60] for d in SHAPES])
def test_the_schemas_and_the_worker_agree_on_well_formed_messages(document):
    assert schema_accepts(document) == isinstance(parse(document), Message)


def test_the_schema_examples_and_the_documented_examples_are_accepted():
    documented = [
        json.loads(block)
        for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
        if '"timestamp"' in block or '"samples"' in block
    ]
    examples = [
        *json.loads((SCHEMAS / "telemetry-sample.schema.json").read_text())["examples"],
        *json.loads((SCHEMAS / "telemetry-batch.schema.json").read_text())["examples"],
    ]
    assert documented, "docs/telemetry-payloads.md shows no example messages"
    for example in [*documented, *examples]:
        assert schema_accepts(example), example
        timestamps = [example.get("timestamp")] + [s["ts"] for s in example.get("samples", [])]
        around = time_window(now_ms=max(t for t in timestamps if t), retention_hours=24)
        result = parse_message(orjson.dumps(example), subject=SUBJECT, window=around)
        assert isinstance(result, Message), (example, result)

"""Sparkplug B: the payload codec against the protobuf wire format written out by hand from the
specification's field numbers, and the MQTT source against a test edge node on Mosquitto."""

from __future__ import annotations

import asyncio
import struct

import aiomqtt
import pytest
from google.protobuf.message import DecodeError

from edge.sources import SLOT_BASE_SPARKPLUG
from edge.sources import sparkplug as spb
from edge.sources.mqtt import from_config
from tests.edge.servers import CollectingSink, eventually, mosquitto, running

BASE_MS = 1_714_234_567_000

# -- a protobuf wire writer and reader, independent of the codec -----------------------------

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def field_varint(number: int, value: int) -> bytes:
    return tag(number, VARINT) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return tag(number, LENGTH) + varint(len(value)) + value


def field_double(number: int, value: float) -> bytes:
    return tag(number, FIXED64) + struct.pack("<d", value)


def field_float(number: int, value: float) -> bytes:
    return tag(number, FIXED32) + struct.pack("<f", value)


def read_fields(data: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, raw value) in order; length-delimited values stay bytes."""
    fields, position = [], 0

    def read_varint() -> int:
        nonlocal position
        result = shift = 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while position < len(data):
        key = read_varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value: object = read_varint()
        elif wire_type == FIXED64:
            value = data[position : position + 8]
            position += 8
        elif wire_type == FIXED32:
            value = data[position : position + 4]
            position += 4
        else:
            length = read_varint()
            value = data[position : position + length]
            position += length
        fields.append((number, wire_type, value))
    return fields


# -- the codec ---------------------------------------------------------------------------------


def test_codec_decodes_a_payload_written_field_by_field_from_the_specification():
    metrics = [
        # Torque: name 1, alias 2, timestamp 3, datatype 4 (Double), double_value 13
        field_bytes(1, b"Torque")
        + field_varint(2, 5)
        + field_varint(3, BASE_MS + 7)
        + field_varint(4, 10)
        + field_double(13, 43.25),
        # by alias only: Int8 -5, sign-extended into the uint32 int_value 10
        field_varint(2, 6) + field_varint(4, 1) + field_varint(10, 0xFFFF_FFFB),
        # Boolean true in boolean_value 14, with metadata (8) the codec does not declare
        field_bytes(1, b"Running")
        + field_varint(4, 11)
        + field_bytes(8, field_bytes(3, b"text/plain"))
        + field_varint(14, 1),
        # UInt64 above 2**63 in long_value 11
        field_bytes(1, b"Strokes") + field_varint(4, 8) + field_varint(11, 2**63 + 5),
        # Float in float_value 12
        field_bytes(1, b"Temp") + field_varint(4, 9) + field_float(12, 1.5),
        # Int64 -2 in long_value 11, and a null Int32
        field_bytes(1, b"Offset") + field_varint(4, 4) + field_varint(11, 2**64 - 2),
        field_bytes(1, b"Spare") + field_varint(4, 3) + field_varint(7, 1),
    ]
    payload = (
        field_varint(1, BASE_MS)
        + b"".join(field_bytes(2, metric) for metric in metrics)
        + field_varint(3, 7)
        + field_bytes(4, b"aegis-test")
    )

    decoded = spb.decode_payload(payload)

    assert decoded.timestamp_ms == BASE_MS
    assert decoded.seq == 7
    torque, by_alias, running, strokes, temp, offset, spare = decoded.metrics
    assert (torque.name, torque.alias, torque.timestamp_ms, torque.datatype, torque.value) == (
        "Torque",
        5,
        BASE_MS + 7,
        spb.DataType.DOUBLE,
        43.25,
    )
    assert by_alias.name is None
    assert by_alias.alias == 6
    assert spb.metric_number(by_alias.value, by_alias.datatype) == -5.0
    assert spb.metric_number(running.value, running.datatype) == 1.0
    assert spb.metric_number(strokes.value, strokes.datatype) == float(2**63 + 5)
    assert spb.metric_number(temp.value, temp.datatype) == 1.5
    assert spb.metric_number(offset.value, offset.datatype) == -2.0
    assert spare.is_null
    assert spare.value is None


def test_codec_writes_the_specifications_field_numbers_and_wire_types():
    encoded = spb.encode_payload(
        timestamp_ms=BASE_MS,
        seq=255,
        metrics=[
            spb.Metric("Torque", 5, BASE_MS + 1, spb.DataType.DOUBLE, 43.25),
            spb.Metric(None, 6, None, spb.DataType.INT16, -300),
            spb.Metric("Temp", None, None, spb.DataType.FLOAT, 1.5),
            spb.Metric("Running", None, None, spb.DataType.BOOLEAN, True),
        ],
    )
    fields = read_fields(encoded)
    assert [(number, wire) for number, wire, _ in fields] == [
        (1, VARINT),
        (2, LENGTH),
        (2, LENGTH),
        (2, LENGTH),
        (2, LENGTH),
        (3, VARINT),
    ]
    assert fields[0][2] == BASE_MS
    assert fields[-1][2] == 255
    torque, by_alias, temp, running = (read_fields(value) for _, _, value in fields[1:5])
    assert torque == [
        (1, LENGTH, b"Torque"),
        (2, VARINT, 5),
        (3, VARINT, BASE_MS + 1),
        (4, VARINT, 10),
        (13, FIXED64, struct.pack("<d", 43.25)),
    ]
    assert by_alias == [(2, VARINT, 6), (4, VARINT, 2), (10, VARINT, (-300) & 0xFFFF_FFFF)]
    assert temp[-1] == (12, FIXED32, struct.pack("<f", 1.5))
    assert running[-1] == (14, VARINT, 1)


def test_codec_round_trips_every_numeric_type_at_its_limits():
    cases = [
        (spb.DataType.INT8, -128),
        (spb.DataType.INT8, 127),
        (spb.DataType.INT16, -32768),
        (spb.DataType.INT32, -(2**31)),
        (spb.DataType.INT64, -(2**63)),
        (spb.DataType.UINT8, 255),
        (spb.DataType.UINT16, 65535),
        (spb.DataType.UINT32, 2**32 - 1),
        (spb.DataType.UINT64, 2**64 - 1),
        (spb.DataType.FLOAT, -0.5),
        (spb.DataType.DOUBLE, 1e300),
        (spb.DataType.BOOLEAN, False),
    ]
    metrics = [
        spb.Metric(f"m{i}", i, None, datatype, value) for i, (datatype, value) in enumerate(cases)
    ]
    decoded = spb.decode_payload(spb.encode_payload(timestamp_ms=1, seq=0, metrics=metrics))
    assert [spb.metric_number(m.value, m.datatype) for m in decoded.metrics] == [
        float(value) for _, value in cases
    ]


def test_strings_and_unknown_types_are_not_numbers():
    assert spb.metric_number("12", spb.DataType.STRING) is None
    assert spb.metric_number(b"\x01", spb.DataType.BYTES) is None
    assert spb.metric_number(None, spb.DataType.DATASET) is None
    assert spb.metric_number(1, None) is None


def test_garbage_is_a_decode_error():
    with pytest.raises(DecodeError):
        spb.decode_payload(b"\xff\xff\xff")


def test_topics_are_parsed_by_the_sparkplug_namespace():
    assert spb.parse_topic("spBv1.0/Plant1/DDATA/Line1/Press1") == spb.Topic(
        "Plant1", "DDATA", "Line1", "Press1"
    )
    assert spb.parse_topic("spBv1.0/Plant1/NBIRTH/Line1") == spb.Topic(
        "Plant1", "NBIRTH", "Line1", None
    )
    assert spb.parse_topic("plant/op30/press") is None


# -- the source against a test edge node on Mosquitto ------------------------------------------

SECTION = {
    "host": "127.0.0.1",
    "client_id": "edge-sparkplug-test",
    "rebirth_interval_s": 0.2,
    "sparkplug": [
        {
            "group": "Plant1",
            "edge_node": "Line1",
            "device": "Press1",
            "station": "OP30",
            "metrics": {"Torque": "torque", "Strokes": "strokes", "Recipe": "recipe"},
        },
        {
            "group": "Plant1",
            "edge_node": "Line1",
            "station": "LINE1",
            "metrics": {"Line Speed": "line_speed"},
        },
    ],
}
TORQUE, STROKES, RECIPE = SLOT_BASE_SPARKPLUG, SLOT_BASE_SPARKPLUG + 1, SLOT_BASE_SPARKPLUG + 2


class EdgeNode:
    """A Sparkplug B edge node as a PLC gateway runs it: births, data by alias, its own seq."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seq = 0
        self.bd_seq = 0

    def next_seq(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    async def send(self, kind: str, metrics: list[spb.Metric], *, device=None, seq=None):
        topic = f"spBv1.0/Plant1/{kind}/Line1" + (f"/{device}" if device else "")
        payload = spb.encode_payload(
            timestamp_ms=BASE_MS, seq=self.next_seq() if seq is None else seq, metrics=metrics
        )
        await self.client.publish(topic, payload, qos=1)

    async def births(self) -> None:
        self.seq = 0
        await self.send(
            "NBIRTH",
            [
                spb.Metric("bdSeq", 0, None, spb.DataType.INT64, self.bd_seq),
                spb.Metric("Line Speed", 1, BASE_MS, spb.DataType.FLOAT, 12.5),
            ],
        )
        await self.send(
            "DBIRTH",
            [
                spb.Metric("Torque", 10, BASE_MS, spb.DataType.DOUBLE, 40.0),
                spb.Metric("Strokes", 11, BASE_MS, spb.DataType.UINT32, 100),
                spb.Metric("Recipe", 12, BASE_MS, spb.DataType.STRING, "R-17"),
                spb.Metric("Unmapped", 13, BASE_MS, spb.DataType.DOUBLE, 1.0),
            ],
            device="Press1",
        )

    async def torque(self, index: int) -> None:
        await self.send(
            "DDATA",
            [spb.Metric(None, 10, BASE_MS + index, spb.DataType.DOUBLE, 40.0 + index / 8)],
            device="Press1",
        )


async def rebirth_requests(port: int, seen: list[spb.SparkplugPayload]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-ncmd-listener") as listener:
        await listener.subscribe("spBv1.0/Plant1/NCMD/Line1", qos=1)
        async for message in listener.messages:
            seen.append(spb.decode_payload(message.payload))


def sparkplug_source(port: int):
    [source] = from_config([{**SECTION, "port": port}], path="mqtt")
    return source


def test_births_and_data_by_alias_become_samples_with_metric_timestamps(tmp_path):
    async def scenario(port: int):
        source = sparkplug_source(port)
        sink = CollectingSink()
        async with running(source.run(sink)):
            await eventually(lambda: source.health()["connected"], 10, "subscribed")
            async with aiomqtt.Client("127.0.0.1", port, identifier="line1-node") as client:
                node = EdgeNode(client)
                await node.births()
                for index in range(1, 301):
                    await node.torque(index)
                await node.send(
                    "NDATA", [spb.Metric(None, 1, BASE_MS + 500, spb.DataType.FLOAT, 13.0)]
                )
            await eventually(lambda: len(sink.samples) >= 304, 10, "304 samples")
            await asyncio.sleep(0.2)
        return sink, source.health()

    with mosquitto(tmp_path) as port:
        sink, health = asyncio.run(scenario(port))
    line = [(s.ts_ms, s.seq, s.signals) for s in sink.of("LINE1")]
    assert line == [
        (BASE_MS, TORQUE, {"line_speed": 12.5}),
        (BASE_MS + 500, TORQUE, {"line_speed": 13.0}),
    ]
    torque = [(s.ts_ms, s.signals["torque"]) for s in sink.of("OP30", TORQUE)]
    assert torque == [(BASE_MS, 40.0)] + [(BASE_MS + i, 40.0 + i / 8) for i in range(1, 301)]
    assert [(s.ts_ms, s.signals) for s in sink.of("OP30", STROKES)] == [
        (BASE_MS, {"strokes": 100.0})
    ]
    assert sink.of("OP30", RECIPE) == []  # a String metric is not stored, and is counted
    assert health["errors_by_reason"] == {"unsupported_type": 1}
    assert health["sparkplug_nodes"]["Plant1/Line1"]["born"] is True
    assert health["sparkplug_nodes"]["Plant1/Line1"]["last_seq"] == 302 % 256


def test_data_before_a_birth_asks_for_a_rebirth_and_is_then_stored(tmp_path):
    async def scenario(port: int):
        source = sparkplug_source(port)
        sink = CollectingSink()
        requests: list[spb.SparkplugPayload] = []
        listener = asyncio.create_task(rebirth_requests(port, requests))
        await asyncio.sleep(0.3)
        async with aiomqtt.Client("127.0.0.1", port, identifier="line1-node") as client:
            node = EdgeNode(client)
            node.seq = 40  # the node has been running for a while before the bridge starts
            async with running(source.run(sink)):
                await eventually(lambda: source.health()["connected"], 10, "subscribed")
                await node.torque(1)
                await eventually(lambda: len(requests) >= 1, 10, "a rebirth request")
                await node.births()  # what a node does on Node Control/Rebirth
                await node.torque(2)
                await eventually(lambda: len(sink.of("OP30", TORQUE)) >= 2, 10, "samples")
                health = source.health()
        listener.cancel()
        return sink, health, requests

    with mosquitto(tmp_path) as port:
        sink, health, requests = asyncio.run(scenario(port))
    [metric] = requests[0].metrics
    assert (metric.name, metric.datatype, metric.value) == (
        spb.REBIRTH_METRIC,
        spb.DataType.BOOLEAN,
        True,
    )
    assert [(s.ts_ms, s.signals["torque"]) for s in sink.of("OP30", TORQUE)] == [
        (BASE_MS, 40.0),
        (BASE_MS + 2, 40.25),
    ]
    assert health["errors_by_reason"]["data_before_birth"] == 1
    assert health["rebirths_requested"] >= 1


def test_a_gap_in_the_nodes_sequence_asks_for_a_rebirth(tmp_path):
    async def scenario(port: int):
        source = sparkplug_source(port)
        sink = CollectingSink()
        requests: list[spb.SparkplugPayload] = []
        listener = asyncio.create_task(rebirth_requests(port, requests))
        async with running(source.run(sink)):
            await eventually(lambda: source.health()["connected"], 10, "subscribed")
            await asyncio.sleep(0.3)  # past the rebirth asked at connect (no birth seen yet)
            async with aiomqtt.Client("127.0.0.1", port, identifier="line1-node") as client:
                node = EdgeNode(client)
                await node.births()
                await node.torque(1)
                await eventually(lambda: len(sink.of("OP30", TORQUE)) == 2, 10, "born")
                asked = len(requests)
                node.seq += 3  # three messages lost on the way
                await node.torque(2)
                await eventually(lambda: len(requests) > asked, 10, "a rebirth request")
                await eventually(lambda: len(sink.of("OP30", TORQUE)) == 3, 10, "stored anyway")
                health = source.health()
        listener.cancel()
        return health

    with mosquitto(tmp_path) as port:
        health = asyncio.run(scenario(port))
    assert health["errors_by_reason"]["seq_gap"] == 1


def test_seq_wraps_from_255_to_0_without_a_gap(tmp_path):
    async def scenario(port: int):
        source = sparkplug_source(port)
        sink = CollectingSink()
        async with running(source.run(sink)):
            await eventually(lambda: source.health()["connected"], 10, "subscribed")
            async with aiomqtt.Client("127.0.0.1", port, identifier="line1-node") as client:
                node = EdgeNode(client)
                await node.births()
                for index in range(1, 600):  # seq runs past 255 twice
                    await node.torque(index)
            await eventually(lambda: len(sink.of("OP30", TORQUE)) == 600, 10, "600 samples")
        return source.health()

    with mosquitto(tmp_path) as port:
        health = asyncio.run(scenario(port))
    assert "seq_gap" not in health["errors_by_reason"]


def test_node_death_with_the_births_bdseq_marks_the_node_offline(tmp_path):
    async def scenario(port: int):
        source = sparkplug_source(port)
        sink = CollectingSink()
        async with running(source.run(sink)):
            await eventually(lambda: source.health()["connected"], 10, "subscribed")
            async with aiomqtt.Client("127.0.0.1", port, identifier="line1-node") as client:
                node = EdgeNode(client)
                await node.births()
                await eventually(lambda: len(sink.samples) >= 3, 10, "birth samples")
                stale = [spb.Metric("bdSeq", None, None, spb.DataType.INT64, 99)]
                await client.publish(
                    "spBv1.0/Plant1/NDEATH/Line1",
                    spb.encode_payload(timestamp_ms=None, seq=None, metrics=stale),
                    qos=1,
                )
                await node.send("DDEATH", [], device="Press1")
                await asyncio.sleep(0.3)
                alive = source.health()["sparkplug_nodes"]["Plant1/Line1"]
                death = [spb.Metric("bdSeq", None, None, spb.DataType.INT64, node.bd_seq)]
                await client.publish(
                    "spBv1.0/Plant1/NDEATH/Line1",
                    spb.encode_payload(timestamp_ms=None, seq=None, metrics=death),
                    qos=1,
                )
                await eventually(
                    lambda: not source.health()["sparkplug_nodes"]["Plant1/Line1"]["born"],
                    10,
                    "the node dead",
                )
        return alive

    with mosquitto(tmp_path) as port:
        alive = asyncio.run(scenario(port))
    assert alive["born"] is True  # another session's will does not kill the node
    assert alive["devices_born"] == []  # but the device's death counted


def test_sparkplug_slots_number_each_stations_metrics_in_config_order():
    [source] = from_config([{**SECTION, "port": 1883}], path="mqtt")
    slots = [
        (target.station, metric, target.seq)
        for device in source.config.sparkplug
        for metric, target in device.metrics
    ]
    assert slots == [
        ("OP30", "Torque", SLOT_BASE_SPARKPLUG),
        ("OP30", "Strokes", SLOT_BASE_SPARKPLUG + 1),
        ("OP30", "Recipe", SLOT_BASE_SPARKPLUG + 2),
        ("LINE1", "Line Speed", SLOT_BASE_SPARKPLUG),
    ]

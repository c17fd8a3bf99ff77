"""The MQTT source's JSON topics against a real Mosquitto broker on loopback."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import orjson
import pytest

from aegis.embedded.servers import free_port
from edge.sources import SLOT_BASE_MQTT_JSON, SourceConfigError
from edge.sources.mqtt import from_config, json_timestamp
from tests.edge.servers import CollectingSink, eventually, mosquitto, running

BASE_MS = 1_714_234_567_000


def broker_section(port: int, topics: list[dict], **extra) -> list[dict]:
    return [
        {"host": "127.0.0.1", "port": port, "client_id": "edge-test", "topics": topics, **extra}
    ]


OP30_TOPIC = {
    "topic": "plant/op30/+",
    "station": "OP30",
    "format": "json",
    "timestamp_field": "ts",
    "timestamp_unit": "ms",
    "signals": {"torque": "torque_nm", "angle": "axis.angle_deg"},
}


async def publish(port: int, topic: str, documents: list, *, qos: int = 1) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-plc") as plc:
        for document in documents:
            payload = document if isinstance(document, bytes) else orjson.dumps(document)
            await plc.publish(topic, payload, qos=qos)


async def subscribed(source) -> None:
    """Wait until the source's subscriptions are in place (it reports connected after them)."""
    await eventually(lambda: source.health()["connected"], 10, "the source subscribed")


def test_json_messages_become_samples_in_order_with_their_own_timestamps(tmp_path):
    documents = [
        {"ts": BASE_MS + i, "torque_nm": 40.0 + i / 4, "axis": {"angle_deg": i}} for i in range(200)
    ]

    async def scenario(port: int):
        [source] = from_config(broker_section(port, [OP30_TOPIC]), path="mqtt")
        sink = CollectingSink()
        async with running(source.run(sink)):
            await subscribed(source)
            await publish(port, "plant/op30/press", documents)
            await eventually(lambda: len(sink.samples) >= 200, 10, "200 samples")
        return sink, source.health()

    with mosquitto(tmp_path) as port:
        sink, health = asyncio.run(scenario(port))
    assert [(s.station, s.ts_ms, s.seq) for s in sink.samples] == [
        ("OP30", BASE_MS + i, SLOT_BASE_MQTT_JSON) for i in range(200)
    ]
    assert [s.signals for s in sink.samples[:2]] == [
        {"torque": 40.0, "angle": 0.0},
        {"torque": 40.25, "angle": 1.0},
    ]
    assert health["samples"] == 200
    assert health["errors"] == 0


def test_bad_fields_are_counted_and_good_ones_still_stored(tmp_path):
    documents = [
        {"ts": BASE_MS, "torque_nm": "high", "axis": {"angle_deg": 3}},  # torque not a number
        {"ts": BASE_MS + 1, "torque_nm": "n/a"},  # nothing left: no sample
        {"torque_nm": 41.0},  # no timestamp: dropped, it could not be stored exactly once
        b"not json",
        {"ts": BASE_MS + 2, "torque_nm": 42.0, "axis": {"angle_deg": 4}},
    ]

    async def scenario(port: int):
        [source] = from_config(broker_section(port, [OP30_TOPIC]), path="mqtt")
        sink = CollectingSink()
        async with running(source.run(sink)):
            await subscribed(source)
            await publish(port, "plant/op30/press", documents)
            await eventually(lambda: len(sink.samples) >= 2, 10, "the two usable samples")
            await asyncio.sleep(0.2)
        return sink, source.health()

    with mosquitto(tmp_path) as port:
        sink, health = asyncio.run(scenario(port))
    assert [(s.ts_ms, s.signals) for s in sink.samples] == [
        (BASE_MS, {"angle": 3.0}),
        (BASE_MS + 2, {"torque": 42.0, "angle": 4.0}),
    ]
    assert health["errors_by_reason"] == {
        "not_a_number": 2,
        "missing_field": 1,  # the angle of the second message
        "bad_timestamp": 1,
        "not_json": 1,
    }


def test_messages_published_while_the_bridge_is_away_arrive_after_it_returns(tmp_path):
    """QoS 1 in a persistent session: the broker keeps them for the bridge's client id."""

    async def scenario(port: int):
        sink = CollectingSink()
        [source] = from_config(broker_section(port, [OP30_TOPIC]), path="mqtt")
        async with running(source.run(sink)):
            await subscribed(source)
            await publish(port, "plant/op30/press", [{"ts": BASE_MS, "torque_nm": 1.0}])
            await eventually(lambda: len(sink.samples) == 1, 10, "the first sample")
        # The bridge is down (restarted, or its network lost) while the press keeps publishing.
        away = [{"ts": BASE_MS + i, "torque_nm": float(i)} for i in range(1, 101)]
        await publish(port, "plant/op30/press", away)
        [restarted] = from_config(broker_section(port, [OP30_TOPIC]), path="mqtt")
        async with running(restarted.run(sink)):
            await eventually(lambda: len(sink.samples) >= 101, 10, "the backlog")
            await asyncio.sleep(0.2)
        return sink

    with mosquitto(tmp_path) as port:
        sink = asyncio.run(scenario(port))
    assert [s.ts_ms for s in sink.samples] == [BASE_MS + i for i in range(101)]


def test_a_broker_restart_is_counted_and_the_source_resubscribes(tmp_path):
    port = free_port()

    async def scenario():
        [source] = from_config(broker_section(port, [OP30_TOPIC]), path="mqtt")
        sink = CollectingSink()
        async with running(source.run(sink)):
            with mosquitto(tmp_path, port):
                await subscribed(source)
                await publish(port, "plant/op30/press", [{"ts": BASE_MS, "torque_nm": 1.0}])
                await eventually(lambda: len(sink.samples) == 1, 10, "before the restart")
            await eventually(lambda: not source.health()["connected"], 10, "the drop noticed")
            with mosquitto(tmp_path, port):
                # A broker without persistence forgot the session: the source subscribes anew.
                await subscribed(source)
                await publish(port, "plant/op30/press", [{"ts": BASE_MS + 1, "torque_nm": 2.0}])
                await eventually(lambda: len(sink.samples) == 2, 20, "after the restart")
                health = source.health()
        return sink, health

    sink, health = asyncio.run(scenario())
    assert [s.ts_ms for s in sink.samples] == [BASE_MS, BASE_MS + 1]
    assert health["errors"] >= 1


def test_an_unreachable_broker_never_raises_out_of_run():
    [source] = from_config(broker_section(free_port(), [OP30_TOPIC]), path="mqtt")

    async def scenario():
        task = asyncio.create_task(source.run(CollectingSink()))
        await eventually(lambda: source.health()["errors"] >= 2, 10, "two failed attempts")
        assert not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert source.health()["connected"] is False


@pytest.mark.parametrize(
    ("raw", "unit", "expected"),
    [
        (1714234567890, "ms", 1714234567890),
        (1714234567.89, "s", 1714234567890),
        ("2024-04-27T16:16:07.890Z", "iso", 1714234567890),
        ("2024-04-27T18:16:07.890+02:00", "iso", 1714234567890),
        ("2024-04-27T16:16:07.890", "iso", 1714234567890),  # no zone: UTC
        ("yesterday", "iso", None),
        ("1714234567890", "ms", None),
        (True, "ms", None),
    ],
)
def test_json_timestamps_in_each_unit(raw, unit, expected):
    assert json_timestamp(raw, unit) == expected


def test_seq_slots_count_json_topics_per_station_across_brokers():
    topic = {"topic": "a/#", "station": "OP30", "signals": {"t": "t"}}
    brokers = from_config(
        [
            {"name": "one", "host": "h", "client_id": "c", "topics": [topic, topic]},
            {"name": "two", "host": "h", "client_id": "c", "topics": [topic]},
        ],
        path="mqtt",
    )
    assert [entry.seq for broker in brokers for entry in broker.config.topics] == [
        SLOT_BASE_MQTT_JSON,
        SLOT_BASE_MQTT_JSON + 1,
        SLOT_BASE_MQTT_JSON + 2,
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("client_id"), "mqtt[0].client_id: required"),
        (lambda b: b.update(password_env="AEGIS_TEST_UNSET_PASSWORD"), "AEGIS_TEST_UNSET_PASSWORD"),
        (lambda b: b["topics"][0].update(timestamp_unit="us"), "topics[0].timestamp_unit: one of"),
        (lambda b: b["topics"][0].update(format="xml"), "topics[0].format: one of json"),
        (lambda b: b["topics"][0].update(signals={"seq": "x"}), "topics[0].signals"),
        (lambda b: b.update(topics=[]), "mqtt[0]: needs `topics`, `sparkplug` or both"),
        (lambda b: b.update(tls={"ca_file": "/nonexistent/ca.pem"}), "tls.ca_file: no file"),
    ],
)
def test_config_errors_name_the_field(change, message):
    section = broker_section(1883, [dict(OP30_TOPIC)])
    change(section[0])
    with pytest.raises(SourceConfigError) as error:
        from_config(section, path="mqtt")
    assert message in str(error.value)

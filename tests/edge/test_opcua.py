"""The OPC UA source against asyncua's own server on loopback."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua

from aegis.embedded.servers import free_port
from edge.sources import SLOT_BASE_OPCUA, SourceConfigError
from edge.sources.opcua import from_config, timestamp_ms
from tests.edge.servers import CollectingSink, eventually, opcua_server, running

PLC_CLOCK = datetime(2026, 11, 22, 6, 0, 0, tzinfo=UTC)  # the PLC's clock, not the bridge's


def server_section(port: int, signals: list[dict], **extra) -> list[dict]:
    return [
        {
            "endpoint": f"opc.tcp://127.0.0.1:{port}/aegis/",
            "publishing_interval_ms": 50,
            "timeout_s": 2,
            "liveness_check_s": 0.5,
            "signals": signals,
            **extra,
        }
    ]


TORQUE = {
    "node": "ns=2;s=Press1.Torque",
    "station": "OP30",
    "signal": "torque",
    "sampling_interval_ms": 0,
    "queue_size": 1000,
}
COUNT = {"node": "ns=2;s=Press1.Count", "station": "OP30", "signal": "strokes", "queue_size": 1000}


async def write(variable, value, variant_type, at: datetime, status=ua.StatusCodes.Good):
    await variable.write_value(
        ua.DataValue(
            ua.Variant(value, variant_type),
            StatusCode=ua.StatusCode(status),
            SourceTimestamp=at,
            ServerTimestamp=at + timedelta(milliseconds=3),
        )
    )


async def subscribed(source) -> None:
    await eventually(lambda: source.health()["connected"], 20, "the subscription")
    await asyncio.sleep(0.2)  # the first publish (the current values) is on its way


def test_every_written_value_arrives_once_in_order_with_the_source_timestamp():
    port = free_port()
    [source] = from_config(server_section(port, [TORQUE, COUNT]), path="opcua")
    written = [(PLC_CLOCK + timedelta(milliseconds=i), 40.0 + i / 16) for i in range(1, 501)]

    async def scenario():
        sink = CollectingSink()
        async with opcua_server(port) as (_, variables), running(source.run(sink)):
            await subscribed(source)
            initial = len(sink.samples)
            # Faster than the 50 ms publishing interval: the server queues them per item.
            for at, value in written:
                await write(variables["Torque"], value, ua.VariantType.Double, at)
            await write(variables["Count"], 7, ua.VariantType.Int32, PLC_CLOCK)
            await eventually(lambda: len(sink.samples) >= initial + 501, 20, "501 samples")
            await asyncio.sleep(0.3)
            return sink.samples[initial:], source.health()

    samples, health = asyncio.run(scenario())
    torque = [(s.ts_ms, s.signals["torque"]) for s in samples if s.seq == SLOT_BASE_OPCUA]
    assert torque == [(timestamp_ms(at), value) for at, value in written]
    strokes = [s for s in samples if s.seq == SLOT_BASE_OPCUA + 1]
    assert [(s.station, s.ts_ms, s.signals) for s in strokes] == [
        ("OP30", timestamp_ms(PLC_CLOCK), {"strokes": 7.0})
    ]
    assert health["errors"] == 0


def test_server_timestamp_stands_in_for_a_missing_source_timestamp_and_bad_values_drop():
    port = free_port()
    [source] = from_config(server_section(port, [TORQUE]), path="opcua")
    server_stamped = ua.DataValue(ua.Variant(1.5, ua.VariantType.Double))  # no SourceTimestamp

    async def scenario():
        sink = CollectingSink()
        async with opcua_server(port) as (server, variables), running(source.run(sink)):
            await subscribed(source)
            initial = len(sink.samples)
            torque = variables["Torque"]
            before_ms = time.time_ns() // 1_000_000
            await torque.write_value(server_stamped)  # the server stamps its own clock
            after_ms = time.time_ns() // 1_000_000
            await write(
                torque, 2.5, ua.VariantType.Double, PLC_CLOCK, ua.StatusCodes.BadSensorFailure
            )
            await write(
                torque,
                3.5,
                ua.VariantType.Double,
                PLC_CLOCK,
                ua.StatusCodes.UncertainLastUsableValue,
            )
            await write(torque, 4.5, ua.VariantType.Double, PLC_CLOCK + timedelta(seconds=1))
            # A server that stamps nothing: counted, and stamped on arrival.
            server.set_force_server_timestamp(False)
            await torque.write_value(ua.DataValue(ua.Variant(5.5, ua.VariantType.Double)))
            await eventually(lambda: len(sink.samples) >= initial + 3, 10, "three good values")
            await asyncio.sleep(0.3)
            return sink.samples[initial:], source.health(), (before_ms, after_ms)

    samples, health, (before_ms, after_ms) = asyncio.run(scenario())
    assert [s.signals["torque"] for s in samples] == [1.5, 4.5, 5.5]
    assert before_ms <= samples[0].ts_ms <= after_ms
    assert samples[1].ts_ms == timestamp_ms(PLC_CLOCK + timedelta(seconds=1))
    assert samples[2].ts_ms >= after_ms
    assert health["errors_by_reason"] == {
        "bad_status": 1,
        "uncertain_status": 1,
        "no_timestamp": 1,
    }


def test_a_string_variable_is_counted_not_forwarded():
    port = free_port()
    label = {"node": "ns=2;s=Press1.Label", "station": "OP30", "signal": "label"}
    [source] = from_config(server_section(port, [label]), path="opcua")

    async def scenario():
        sink = CollectingSink()
        async with opcua_server(port) as (_, variables), running(source.run(sink)):
            await subscribed(source)
            await write(variables["Label"], "R-17", ua.VariantType.String, PLC_CLOCK)
            await eventually(
                lambda: source.health()["errors_by_reason"].get("not_a_number", 0) >= 2,
                10,
                "the initial and the written label counted",
            )
            return sink.samples

    assert asyncio.run(scenario()) == []


def test_an_unknown_node_is_counted_and_the_others_still_subscribed():
    port = free_port()
    missing = {"node": "ns=2;s=Press1.Missing", "station": "OP30", "signal": "missing"}
    [source] = from_config(server_section(port, [missing, TORQUE]), path="opcua")

    async def scenario():
        sink = CollectingSink()
        async with opcua_server(port) as (_, variables), running(source.run(sink)):
            await subscribed(source)
            await write(variables["Torque"], 9.0, ua.VariantType.Double, PLC_CLOCK)
            await eventually(
                lambda: any(s.signals.get("torque") == 9.0 for s in sink.samples), 10, "torque"
            )
            return source.health()

    health = asyncio.run(scenario())
    assert health["errors_by_reason"] == {"bad_node": 1}


def test_a_server_restart_mid_stream_is_survived_with_a_new_subscription():
    port = free_port()
    [source] = from_config(server_section(port, [TORQUE]), path="opcua")

    async def scenario():
        sink = CollectingSink()
        async with running(source.run(sink)):
            async with opcua_server(port) as (_, variables):
                await subscribed(source)
                for i in range(1, 51):
                    at = PLC_CLOCK + timedelta(milliseconds=i)
                    await write(variables["Torque"], float(i), ua.VariantType.Double, at)
                await eventually(
                    lambda: any(s.signals["torque"] == 50.0 for s in sink.samples), 10, "50"
                )
            await eventually(lambda: not source.health()["connected"], 20, "the drop noticed")
            async with opcua_server(port) as (_, variables):
                await subscribed(source)
                for i in range(51, 101):
                    at = PLC_CLOCK + timedelta(milliseconds=i)
                    await write(variables["Torque"], float(i), ua.VariantType.Double, at)
                await eventually(
                    lambda: any(s.signals["torque"] == 100.0 for s in sink.samples), 20, "100"
                )
                health = source.health()
        return sink.samples, health

    samples, health = asyncio.run(scenario())
    plc_ms = timestamp_ms(PLC_CLOCK)
    # Each server start also publishes the variable's initial value, stamped with its own clock.
    written = [(s.ts_ms - plc_ms, s.signals["torque"]) for s in samples if s.ts_ms < plc_ms + 1000]
    assert written == [(i, float(i)) for i in range(1, 101)]
    assert health["connected"] is True
    assert health["errors"] >= 1


def test_notification_throughput():
    """How many notifications per second reach the sink (printed with -s). The server runs in
    the same process and loop, so this is a floor for the source, not its limit."""
    port = free_port()
    [source] = from_config(server_section(port, [TORQUE], publishing_interval_ms=20), path="opcua")
    count, burst = 5000, 500  # bursts within the item's queue of 1000

    async def scenario():
        sink = CollectingSink()
        async with opcua_server(port) as (_, variables), running(source.run(sink)):
            await subscribed(source)
            initial = len(sink.samples)
            started = time.perf_counter()
            for first in range(1, count + 1, burst):
                for i in range(first, first + burst):
                    at = PLC_CLOCK + timedelta(milliseconds=i)
                    await write(variables["Torque"], float(i), ua.VariantType.Double, at)
                done = initial + first + burst - 1
                await eventually(lambda d=done: len(sink.samples) >= d, 20, f"{done} samples")
            elapsed = time.perf_counter() - started
            return sink.samples[initial:], elapsed

    samples, elapsed = asyncio.run(scenario())
    print(f"opcua: {count} notifications in {elapsed:.2f} s = {count / elapsed:.0f}/s")
    assert [s.signals["torque"] for s in samples] == [float(i) for i in range(1, count + 1)]


def test_seq_slots_number_each_stations_signals_across_servers():
    servers = from_config(
        [
            {"name": "a", "endpoint": "opc.tcp://a:4840", "signals": [TORQUE, COUNT]},
            {
                "name": "b",
                "endpoint": "opc.tcp://b:4840",
                "signals": [{**TORQUE, "station": "OP40"}, {**COUNT, "signal": "count_b"}],
            },
        ],
        path="opcua",
    )
    assert [(s.station, s.seq) for server in servers for s in server.config.signals] == [
        ("OP30", SLOT_BASE_OPCUA),
        ("OP30", SLOT_BASE_OPCUA + 1),
        ("OP40", SLOT_BASE_OPCUA),
        ("OP30", SLOT_BASE_OPCUA + 2),
    ]


def test_timestamps_convert_exactly_to_milliseconds():
    assert timestamp_ms(datetime(2024, 4, 27, 16, 16, 7, 890999, tzinfo=UTC)) == 1714234567890
    assert timestamp_ms(datetime(2024, 4, 27, 16, 16, 7, 890000)) == 1714234567890  # naive: UTC


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(endpoint="http://press"), "opcua[0].endpoint: an opc.tcp:// URL"),
        (lambda s: s["signals"][0].update(node="Torque;;"), "opcua[0].signals[0].node: not a"),
        (lambda s: s["signals"][0].update(queue_size=0), "signals[0].queue_size: 1..100000"),
        (lambda s: s["signals"][0].pop("station"), "opcua[0].signals[0].station: required"),
        (lambda s: s.update(security={"policy": "Basic128Rsa15"}), "security.policy: one of"),
        (lambda s: s.update(security={"mode": "Sign"}), "security.certificate: required"),
        (lambda s: s.update(password_env="AEGIS_TEST_UNSET_PASSWORD"), "is not set"),
        (lambda s: s["signals"].append(dict(TORQUE)), "OP30 'torque' is mapped twice"),
    ],
)
def test_config_errors_name_the_field(change, message):
    section = server_section(4840, [dict(TORQUE)])
    change(section[0])
    with pytest.raises(SourceConfigError) as error:
        from_config(section, path="opcua")
    assert message in str(error.value)

"""The Modbus TCP source against pymodbus's own server on loopback."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin

from aegis.embedded.servers import free_port
from edge.sources import SLOT_BASE_MODBUS, SOURCE_ERRORS, SourceConfigError
from edge.sources.modbus import ReadRange, from_config, plan_reads
from tests.edge.servers import CollectingSink, eventually, modbus_device, modbus_server, running

DATATYPE = ModbusClientMixin.DATATYPE


def words(value, datatype, word_order="big") -> list[int]:
    return ModbusClientMixin.convert_to_registers(value, datatype, word_order=word_order)


def device_section(port: int, groups: list[dict], **extra) -> list[dict]:
    return [{"host": "127.0.0.1", "port": port, "unit_id": 1, "poll_groups": groups, **extra}]


def blank_device():
    return modbus_device(
        holding=[0] * 64, input_registers=[0] * 8, coils=[False] * 8, discrete=[False] * 8
    )


def test_register_types_word_orders_and_scale_decode_to_exact_values():
    holding = [0] * 40
    holding[0:1] = words(-1234, DATATYPE.INT16)
    holding[1:2] = words(60000, DATATYPE.UINT16)
    holding[2:4] = words(-70000, DATATYPE.INT32)
    holding[4:6] = words(3_000_000_000, DATATYPE.UINT32, "little")
    holding[6:8] = words(12.5, DATATYPE.FLOAT32)
    holding[8:10] = words(-3.25, DATATYPE.FLOAT32, "little")
    holding[10:14] = words(1234.0625, DATATYPE.FLOAT64)
    holding[20:21] = words(415, DATATYPE.UINT16)  # tenths of a newton metre
    device = modbus_device(
        holding=holding,
        input_registers=[7, 8, 9],
        coils=[False, True, False],
        discrete=[True, False],
    )
    port = free_port()
    registers = [
        {"signal": "i16", "address": 0, "type": "int16"},
        {"signal": "u16", "address": 1, "type": "uint16"},
        {"signal": "i32", "address": 2, "type": "int32"},
        {"signal": "u32_little", "address": 4, "type": "uint32", "word_order": "little"},
        {"signal": "f32_big", "address": 6, "type": "float32", "word_order": "big"},
        {"signal": "f32_little", "address": 8, "type": "float32", "word_order": "little"},
        {"signal": "f64", "address": 10, "type": "float64"},
        {"signal": "torque", "address": 20, "scale": 0.1, "offset": -1.5},
        {"signal": "input_word", "kind": "input", "address": 2},
        {"signal": "clamp_closed", "kind": "coil", "address": 1},
        {"signal": "guard_open", "kind": "discrete", "address": 0},
    ]
    [source] = from_config(
        device_section(port, [{"station": "OP30", "rate_hz": 10, "registers": registers}]),
        path="modbus",
    )

    async def scenario() -> CollectingSink:
        sink = CollectingSink()
        async with modbus_server(device, port), running(source.run(sink)):
            await eventually(lambda: len(sink.samples) >= 2, 10, "two polls")
        return sink

    sink = asyncio.run(scenario())
    sample = sink.samples[0]
    assert sample.station == "OP30"
    assert sample.seq == SLOT_BASE_MODBUS
    assert sample.signals == {
        "i16": -1234.0,
        "u16": 60000.0,
        "i32": -70000.0,
        "u32_little": 3_000_000_000.0,
        "f32_big": 12.5,
        "f32_little": -3.25,
        "f64": 1234.0625,
        "torque": pytest.approx(40.0),
        "input_word": 9.0,
        "clamp_closed": 1.0,
        "guard_open": 1.0,
    }
    assert sink.samples[1].ts_ms > sample.ts_ms
    assert source.health()["connected"] is False  # the session ended with the test


def test_reads_are_planned_as_few_contiguous_requests_per_kind():
    [source] = from_config(
        device_section(
            502,
            [
                {
                    "station": "OP30",
                    "rate_hz": 1,
                    "registers": [
                        {"signal": "a", "address": 0, "type": "float32"},
                        {"signal": "b", "address": 2, "type": "uint16"},
                        {"signal": "c", "address": 3, "type": "float64"},
                        {"signal": "d", "address": 10},  # a gap: a second request
                        {"signal": "e", "address": 120, "type": "float64"},  # past 125 words
                        {"signal": "f", "kind": "coil", "address": 5},
                        {"signal": "g", "kind": "coil", "address": 6},
                    ],
                }
            ],
        ),
        path="modbus",
    )
    plan = plan_reads(source.config.poll_groups[0].registers)
    assert plan == [
        ReadRange("holding", 0, 7),
        ReadRange("holding", 10, 1),
        ReadRange("holding", 120, 4),
        ReadRange("coil", 5, 2),
    ]


def test_polls_follow_the_configured_rate_without_drift():
    port = free_port()
    [source] = from_config(
        device_section(
            port, [{"station": "OP30", "rate_hz": 20, "registers": [{"signal": "a", "address": 0}]}]
        ),
        path="modbus",
    )

    async def scenario() -> int:
        sink = CollectingSink()
        async with modbus_server(blank_device(), port), running(source.run(sink)):
            await eventually(lambda: len(sink.samples) >= 1, 10, "the first poll")
            first = len(sink.samples)
            await asyncio.sleep(3.0)
            return len(sink.samples) - first

    polled = asyncio.run(scenario())
    assert 57 <= polled <= 63, polled


def test_a_slow_poll_skips_ticks_and_counts_overruns_instead_of_bursting():
    port = free_port()
    [source] = from_config(
        device_section(
            port, [{"station": "OP30", "rate_hz": 20, "registers": [{"signal": "a", "address": 0}]}]
        ),
        path="modbus",
    )

    class SlowSink(CollectingSink):
        def __init__(self) -> None:
            super().__init__()
            self.arrivals: list[float] = []

        async def put(self, sample) -> None:
            self.arrivals.append(time.monotonic())
            await super().put(sample)
            await asyncio.sleep(0.12)  # longer than two 50 ms periods

    async def scenario() -> SlowSink:
        sink = SlowSink()
        async with modbus_server(blank_device(), port), running(source.run(sink)):
            await eventually(lambda: len(sink.samples) >= 8, 10, "eight slow polls")
        return sink

    sink = asyncio.run(scenario())
    gaps = [
        later - earlier for earlier, later in zip(sink.arrivals, sink.arrivals[1:], strict=False)
    ]
    assert min(gaps) >= 0.12  # never two polls back to back to catch up
    assert source.health()["overruns"] >= 2 * (len(sink.samples) - 1)


def percentiles(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), values[max(0, int(len(values) * 0.99) - 1)]


def test_poll_jitter_at_100_hz_stays_within_a_few_milliseconds():
    """Measures how far each poll's sample lands from its tick (printed with -s)."""
    port = free_port()
    [source] = from_config(
        device_section(
            port,
            [
                {
                    "station": "OP30",
                    "rate_hz": 100,
                    "registers": [{"signal": "a", "address": 0, "type": "float32"}],
                }
            ],
        ),
        path="modbus",
    )

    class TimingSink(CollectingSink):
        def __init__(self) -> None:
            super().__init__()
            self.arrivals: list[float] = []

        async def put(self, sample) -> None:
            self.arrivals.append(time.monotonic())
            await super().put(sample)

    async def scenario() -> TimingSink:
        sink = TimingSink()
        async with modbus_server(blank_device(), port), running(source.run(sink)):
            await eventually(lambda: len(sink.samples) >= 300, 20, "300 polls")
        return sink

    sink = asyncio.run(scenario())
    lateness_ms = sorted(1000 * late for late in list(source.recent_lateness_s)[1:])
    intervals_ms = [1000 * (b - a) for a, b in zip(sink.arrivals, sink.arrivals[1:], strict=False)]
    deviation_ms = sorted(abs(interval - 10.0) for interval in intervals_ms)
    p50, p99 = percentiles(lateness_ms)
    d50, d99 = percentiles(deviation_ms)
    print(
        f"modbus 100 Hz: poll sent after its tick p50 {p50:.2f} ms p99 {p99:.2f} ms; "
        f"sample interval off 10 ms p50 {d50:.2f} ms p99 {d99:.2f} ms; overruns {source.overruns}"
    )
    assert p50 < 5.0
    assert p99 < 10.0  # within one period: the schedule holds on a loaded 2-core box


def test_server_restart_is_counted_and_polling_resumes():
    port = free_port()
    [source] = from_config(
        device_section(
            port,
            [{"station": "OP30", "rate_hz": 50, "registers": [{"signal": "a", "address": 0}]}],
            timeout_s=0.5,
        ),
        path="modbus",
    )

    async def scenario() -> tuple[int, int, dict]:
        sink = CollectingSink()
        async with running(source.run(sink)):
            async with modbus_server(blank_device(), port):
                await eventually(lambda: len(sink.samples) >= 5, 10, "polls before the stop")
            await eventually(lambda: not source.health()["connected"], 10, "the drop noticed")
            await asyncio.sleep(1.0)  # down for a while: reconnect attempts fail
            before = len(sink.samples)
            async with modbus_server(blank_device(), port):
                await eventually(
                    lambda: len(sink.samples) >= before + 5, 20, "polls after the restart"
                )
                health = source.health()
        return before, len(sink.samples), health

    before, after, health = asyncio.run(scenario())
    assert after >= before + 5
    assert health["connected"] is True
    assert health["errors"] >= 2  # the drop and at least one refused reconnect
    assert health["errors_by_reason"].get("connection", 0) >= 1


def test_exception_responses_are_counted_and_not_forwarded():
    port = free_port()
    [source] = from_config(
        device_section(
            port,
            [{"station": "OP30", "rate_hz": 20, "registers": [{"signal": "a", "address": 500}]}],
            name="press-plc",
        ),
        path="modbus",
    )

    async def scenario() -> CollectingSink:
        sink = CollectingSink()
        async with modbus_server(blank_device(), port), running(source.run(sink)):
            await eventually(
                lambda: source.health()["errors_by_reason"].get("exception_response", 0) >= 3,
                10,
                "three refused polls",
            )
        return sink

    sink = asyncio.run(scenario())
    assert sink.samples == []
    counted = SOURCE_ERRORS.labels(source="press-plc", reason="exception_response")._value.get()
    assert counted >= 3


def test_writes_made_by_the_plc_show_up_in_the_next_polls():
    port = free_port()
    [source] = from_config(
        device_section(
            port,
            [
                {
                    "station": "OP30",
                    "rate_hz": 50,
                    "registers": [{"signal": "torque", "address": 4, "type": "float32"}],
                }
            ],
        ),
        path="modbus",
    )

    async def scenario() -> list[float]:
        sink = CollectingSink()
        async with modbus_server(blank_device(), port), running(source.run(sink)):
            await eventually(lambda: len(sink.samples) >= 1, 10, "the first poll")
            plc = AsyncModbusTcpClient("127.0.0.1", port=port, reconnect_delay=0)
            await plc.connect()
            for value in (1.5, 2.5, 3.5):
                await plc.write_registers(4, words(value, DATATYPE.FLOAT32), device_id=1)
                await eventually(
                    lambda v=value: sink.samples and sink.samples[-1].signals["torque"] == v,
                    5,
                    f"torque {value}",
                )
            plc.close()
        return [sample.signals["torque"] for sample in sink.samples]

    seen = asyncio.run(scenario())
    distinct = [value for i, value in enumerate(seen) if i == 0 or seen[i - 1] != value]
    assert distinct == [0.0, 1.5, 2.5, 3.5]


def test_seq_slots_follow_each_stations_groups_in_config_order():
    register = [{"signal": "a", "address": 0}]
    devices = from_config(
        [
            {
                "host": "plc-a",
                "poll_groups": [
                    {"station": "OP30", "rate_hz": 1, "registers": register},
                    {"station": "OP40", "rate_hz": 1, "registers": register},
                ],
            },
            {
                "host": "plc-b",
                "poll_groups": [{"station": "OP30", "rate_hz": 1, "registers": register}],
            },
        ],
        path="modbus",
    )
    slots = [
        (group.station, group.seq) for device in devices for group in device.config.poll_groups
    ]
    assert slots == [
        ("OP30", SLOT_BASE_MODBUS),
        ("OP40", SLOT_BASE_MODBUS),
        ("OP30", SLOT_BASE_MODBUS + 1),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda g: g["registers"][0].pop("address"),
            "modbus[0].poll_groups[0].registers[0].address: required",
        ),
        (lambda g: g["registers"][0].update(type="float16"), "registers[0].type: one of int16"),
        (lambda g: g["registers"][0].update(kind="coil", type="uint16"), "takes no type"),
        (lambda g: g.update(rate_hz=0), "poll_groups[0].rate_hz: must be above 0"),
        (lambda g: g.update(station="OP 30"), "poll_groups[0].station: a station code"),
        (
            lambda g: g["registers"].append({"signal": "a", "address": 9}),
            "signal 'a' appears twice",
        ),
        (lambda g: g.update(rate="fast"), "poll_groups[0]: unknown key rate"),
    ],
)
def test_config_errors_name_the_field(change, message):
    group = {"station": "OP30", "rate_hz": 10, "registers": [{"signal": "a", "address": 0}]}
    change(group)
    with pytest.raises(SourceConfigError) as error:
        from_config(device_section(502, [group]), path="modbus")
    assert message in str(error.value)

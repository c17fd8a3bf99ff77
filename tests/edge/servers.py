"""Real third-party servers on loopback for the edge source tests, and a sink that collects.

- Modbus: pymodbus's own TCP server, in the test's event loop.
- OPC UA: asyncua's own Server, in the test's event loop.
- MQTT: Mosquitto from Debian, as a subprocess (installed by tests.debian when missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from aegis.embedded.servers import free_port
from edge.samples import EdgeSample
from tests.debian import require_packages


class CollectingSink:
    """A SampleSink that keeps every sample in arrival order."""

    def __init__(self) -> None:
        self.samples: list[EdgeSample] = []

    async def put(self, sample: EdgeSample) -> None:
        self.samples.append(sample)

    def of(self, station: str, seq: int | None = None) -> list[EdgeSample]:
        return [
            sample
            for sample in self.samples
            if sample.station == station and (seq is None or sample.seq == seq)
        ]


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


@contextlib.asynccontextmanager
async def running(coroutine) -> AsyncIterator[asyncio.Task]:
    """`coroutine` (a source's run) as a task, cancelled and awaited on exit."""
    task = asyncio.create_task(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def wait_for_port(port: int, timeout: float = 10.0, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


# -- Modbus ----------------------------------------------------------------------------------


def modbus_device(*, holding: list[int], input_registers: list[int], coils, discrete):
    """A pymodbus SimDevice with separate blocks: coils, discrete inputs, holding, input."""
    from pymodbus.simulator import DataType, SimData, SimDevice

    return SimDevice(
        id=1,
        simdata=(
            [SimData(address=0, values=list(coils), datatype=DataType.BITS)],
            [SimData(address=0, values=list(discrete), datatype=DataType.BITS)],
            [SimData(address=0, values=list(holding), datatype=DataType.REGISTERS)],
            [SimData(address=0, values=list(input_registers), datatype=DataType.REGISTERS)],
        ),
    )


@contextlib.asynccontextmanager
async def modbus_server(device, port: int) -> AsyncIterator[object]:
    """pymodbus's TCP server on 127.0.0.1:`port` serving `device`, stopped on exit."""
    from pymodbus.server import ModbusTcpServer

    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()


# -- MQTT ------------------------------------------------------------------------------------


@contextlib.contextmanager
def mosquitto(tmp_path: Path, port: int | None = None) -> Iterator[int]:
    """A Mosquitto broker on a loopback port; yields the port. In-memory sessions only, so a
    broker restart (with the same port) starts empty, as a real restart without persistence."""
    require_packages("mosquitto")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = port or free_port()
    config = tmp_path / f"mosquitto-{port}.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        "log_dest stderr\n"
    )
    log = (tmp_path / f"mosquitto-{port}.log").open("wb")
    process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process=process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- OPC UA ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def opcua_server(port: int) -> AsyncIterator[tuple[object, dict[str, object]]]:
    """asyncua's Server on opc.tcp://127.0.0.1:`port` with a few press variables; yields the
    server and its variables by name (Torque: Double, Count: Int32, Label: String)."""
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/aegis/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    namespace = await server.register_namespace("urn:aegis:test-press")
    press = await server.nodes.objects.add_object(ua.NodeId("Press1", namespace), "Press1")
    variables = {
        "Torque": await press.add_variable(
            ua.NodeId("Press1.Torque", namespace), "Torque", ua.Variant(0.0, ua.VariantType.Double)
        ),
        "Count": await press.add_variable(
            ua.NodeId("Press1.Count", namespace), "Count", ua.Variant(0, ua.VariantType.Int32)
        ),
        "Label": await press.add_variable(
            ua.NodeId("Press1.Label", namespace), "Label", ua.Variant("", ua.VariantType.String)
        ),
    }
    await server.start()
    try:
        yield server, variables
    finally:
        await server.stop()

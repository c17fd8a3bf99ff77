"""The contract between protocol sources and the bridge core.

A source turns whatever a PLC speaks into `EdgeSample`s and hands them to a `SampleSink`; the
bridge batches them per station, appends them to the durable buffer and publishes to JetStream.
Nothing here imports Django: an edge box runs without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EdgeSample:
    """One reading of one station, keyed in Aegis by (station, ts, seq).

    `seq` is the stable slot of the signal (OPC UA item, Sparkplug metric) or group (Modbus poll
    group, MQTT JSON topic) in that station's mapping, so a repeat of the same reading gets the
    same key and is stored once, while two different readings never share one.
    """

    station: str
    ts_ms: int
    seq: int
    signals: dict[str, float]


class SampleSink(Protocol):
    async def put(self, sample: EdgeSample) -> None:
        """Return once the sample is in the durable buffer's write path.

        Under the `block` policy this waits while the buffer is full (source backpressure).
        """
        ...


class Source(Protocol):
    name: str

    async def run(self, sink: SampleSink) -> None:
        """Run until cancelled; reconnect by itself with aegis.backoff; never raise on a
        network error."""
        ...

    def health(self) -> dict:
        """{"connected": bool, "last_sample_ts_ms": int | None, "errors": int, ...}"""
        ...

"""Throughput of the disk buffer, against the raw file-write floor measured in the same run.

Run with `manage.py bench_edge` (docs/edge.md, "Measured"). Every figure is samples per second
on this machine's disk; compare the ratios, which travel between machines better than the
absolute numbers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from edge.buffer import DiskBuffer, encode

SIGNAL_NAMES = ("torque", "angle", "speed", "temperature", "current", "voltage", "pressure")


def batch_body(station: str, first_ts: int, samples: int, signals: int, seq: int = 0) -> bytes:
    names = [
        SIGNAL_NAMES[i % len(SIGNAL_NAMES)] + (str(i) if i >= 7 else "") for i in range(signals)
    ]
    return orjson.dumps(
        {
            "station_id": station,
            "samples": [
                {
                    "ts": first_ts + n,
                    "seq": seq,
                    "signals": {
                        name: round(40.0 + (n * 7 + i) % 97 * 0.37, 2)
                        for i, name in enumerate(names)
                    },
                }
                for n in range(samples)
            ],
        }
    )


@dataclass
class Result:
    what: str
    samples: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def bytes_per_sample(*, signals: int, batch: int) -> float:
    """Bytes on disk per sample: the record frame and subject shared by the batch."""
    subject = "aegis.telemetry.raw.OP30-press-1"
    body = batch_body("OP30-press-1", 1_790_000_000_000, batch, signals)
    return len(encode(0, 0, batch, subject, body)) / batch


def _timed(what: str, samples: int, work: Callable[[], None]) -> Result:
    started = time.perf_counter()
    work()
    return Result(what, samples, time.perf_counter() - started)


def run(
    *, directory: Path | None = None, records: int = 2000, batch: int = 100, signals: int = 4
) -> list[Result]:
    root = Path(tempfile.mkdtemp(prefix="aegis-bench-edge-", dir=directory))
    subject = "aegis.telemetry.raw.OP30-press-1"
    bodies = [
        batch_body("OP30-press-1", 1_790_000_000_000 + n * batch, batch, signals)
        for n in range(records)
    ]
    frames = [encode(n, 0, batch, subject, body) for n, body in enumerate(bodies)]
    samples = records * batch
    results: list[Result] = []
    try:

        def raw_write(sync_every: int) -> Callable[[], None]:
            def work() -> None:
                path = root / f"raw-{sync_every}"
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                try:
                    for n, frame in enumerate(frames, 1):
                        os.write(descriptor, frame)
                        if n % sync_every == 0:
                            os.fsync(descriptor)
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                path.unlink()

            return work

        def buffered(sync_every: int, name: str) -> Callable[[], None]:
            def work() -> None:
                buffer = DiskBuffer(root / name, max_bytes=1 << 40, segment_bytes=16 << 20)
                for n, body in enumerate(bodies, 1):
                    buffer.append(subject, body, batch)
                    if n % sync_every == 0:
                        buffer.sync()
                buffer.sync()
                buffer.close()

            return work

        results.append(
            _timed("raw os.write, one fsync at the end (floor)", samples, raw_write(records))
        )
        results.append(_timed("raw os.write, fsync every 50 records", samples, raw_write(50)))
        results.append(
            _timed("buffer append, group fsync every 50 records", samples, buffered(50, "group"))
        )
        results.append(_timed("buffer append, fsync every record", samples, buffered(1, "each")))

        def replay() -> None:
            buffer = DiskBuffer(root / "group", max_bytes=1 << 40, segment_bytes=16 << 20)
            position = buffer.acked
            while position < buffer.next_number:
                found = buffer.read(position, buffer.next_number, max_records=256)
                position = found[-1].number + 1
            buffer.close()

        results.append(_timed("replay: open (scan, crc) and read every record", samples, replay))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results

"""A test source: a PLC counter that produces a known, numbered sequence of samples.

Sample n (start ≤ n < start + count) of `station` has ts = base_ts_ms + n, seq 0 and the
signal `count` = n, so a test can tell exactly which samples reached the table, and that
`count` grows with ts (the order per signal).
"""

from __future__ import annotations

import asyncio

from edge.samples import EdgeSample, SampleSink


class Counter:
    def __init__(
        self, *, station: str, base_ts_ms: int, start: int, count: int, per_second: float
    ) -> None:
        self.name = f"counter:{station}"
        self.station = station
        self.base_ts_ms = base_ts_ms
        self.start = start
        self.count = count
        self.per_second = per_second
        self.produced = 0
        self.last_ts_ms: int | None = None

    async def run(self, sink: SampleSink) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index in range(self.count):
            n = self.start + index
            ts = self.base_ts_ms + n
            await sink.put(EdgeSample(self.station, ts, 0, {"count": float(n)}))
            self.produced += 1
            self.last_ts_ms = ts
            if self.per_second:
                due = started + (index + 1) / self.per_second
                await asyncio.sleep(max(0.0, due - loop.time()))
            elif index % 50 == 49:
                await asyncio.sleep(0)  # flat out, but as a network source would: yielding
        await asyncio.Event().wait()  # a PLC that has nothing more to say stays connected

    def health(self) -> dict:
        return {
            "connected": True,
            "last_sample_ts_ms": self.last_ts_ms,
            "errors": 0,
            "produced": self.produced,
        }

"""`station.live`: foresight/live.py summarises what the scorer saw per station and sends at
most one event per station every 0.5 s — last, min and max of each signal since the previous
event, the latest score and the threshold — over the real Redis channel layer, cheaply, and
without ever raising into the scorer."""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import numpy as np
from channels.layers import get_channel_layer
from django.conf import settings
from django.test import override_settings

from aegis.embedded.servers import free_port
from foresight.live import LIVE_EVENTS, LiveFeed, production_scores
from foresight.scoring import Scored


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def station() -> str:
    return f"live-{uuid.uuid4().hex[:8]}"


def batch(start_ms: int, torque: list[float], angle: list[float] | None = None) -> dict:
    n = len(torque)
    values = {"torque": np.array(torque, dtype=np.float64)}
    if angle is not None:
        values["angle"] = np.array(angle, dtype=np.float64)
    return {"ts_ms": np.arange(start_ms, start_ms + 10 * n, 10, dtype=np.int64), "values": values}


async def listen(*groups: str):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    for group in groups:
        await layer.group_add(group, channel)

    async def receive(timeout: float = 5.0) -> dict:
        message = await asyncio.wait_for(layer.receive(channel), timeout)
        assert message["type"] == "plant.event"
        return message["event"]

    return receive


async def nothing_arrives(receive, seconds: float = 0.5) -> bool:
    try:
        await receive(seconds)
    except TimeoutError:
        return True
    return False


def test_one_event_per_station_per_interval_however_many_batches_arrive():
    code, clock = station(), Clock()

    async def main():
        receive = await listen(f"station.{code}")
        feed = LiveFeed(clock=clock)
        feed.add(station=code, line=1, **batch(0, [40.0, 41.0]))
        assert await feed.flush() == 1  # the first batch goes at once
        first = await receive()
        clock.now += 0.1
        feed.add(station=code, line=1, **batch(20, [44.0, 39.5, 42.0]))
        clock.now += 0.2
        feed.add(station=code, line=1, **batch(50, [47.5, 43.0]))
        assert await feed.flush() == 0  # 0.3 s after the last event: not yet
        assert await nothing_arrives(receive)
        clock.now += 0.25
        assert await feed.flush() == 1
        second = await receive()
        return first, second

    first, second = asyncio.run(main())

    assert first["signals"]["torque"] == {"last": 41.0, "min": 40.0, "max": 41.0}
    assert (first["from"], first["ts"], first["samples"]) == (0, 10, 2)
    # The second event spans both later batches: nothing between two events is lost.
    assert second["signals"]["torque"] == {"last": 43.0, "min": 39.5, "max": 47.5}
    assert (second["from"], second["ts"], second["samples"]) == (20, 60, 5)


def test_the_event_carries_each_signals_last_number_min_max_and_the_score():
    code, clock = station(), Clock()
    nan = math.nan

    async def main():
        receive = await listen(f"station.{code}")
        feed = LiveFeed(clock=clock)
        values = batch(1_700_000_000_000, [43.21234, 44.9, nan], [nan, nan, nan])
        values["values"]["current"] = np.array([1.5, 2.5, 1.0])
        feed.add(
            station=code,
            line=7,
            **values,
            scores=np.array([0.2, 1.4, 0.7], dtype=np.float32),
            threshold=1.0,
        )
        await feed.flush()
        return await receive()

    event = asyncio.run(main())

    assert event["type"] == "station.live"
    assert (event["station"], event["line"]) == (code, 7)
    # A sample without the signal (NaN) does not hide its last value.
    assert event["signals"]["torque"] == {"last": 44.9, "min": 43.21, "max": 44.9}
    assert event["signals"]["angle"] == {"last": None, "min": None, "max": None}
    assert event["signals"]["current"] == {"last": 1.0, "min": 1.0, "max": 2.5}
    assert (event["score"], event["score_max"], event["threshold"]) == (0.7, 1.4, 1.0)


def test_events_reach_the_station_its_line_and_the_plant():
    code, clock = station(), Clock()

    async def main():
        receivers = [await listen(group) for group in (f"station.{code}", "line.424242", "plant")]
        feed = LiveFeed(clock=clock)
        feed.add(station=code, line=424242, **batch(0, [1.0]))
        await feed.flush()
        events = []
        for receive in receivers:
            while True:  # the plant group may carry other tests' stations
                event = await receive()
                if event.get("station") == code:
                    events.append(event)
                    break
        return events

    events = asyncio.run(main())

    assert [event["station"] for event in events] == [code] * 3


def test_a_redis_that_is_down_is_counted_and_backed_off_and_never_raised():
    code, clock = station(), Clock()
    dead = [{"address": f"redis://127.0.0.1:{free_port()}/0", "socket_timeout": 1}]
    layers = {"default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": {"hosts": dead}}}
    failed_before = LIVE_EVENTS.labels("failed")._value.get()
    skipped_before = LIVE_EVENTS.labels("skipped")._value.get()

    async def main():
        feed = LiveFeed(clock=clock, timeout_s=0.5)
        feed.add(station=code, line=1, **batch(0, [40.0]))
        sent = await feed.flush()
        clock.now += 0.6
        feed.add(station=code, line=1, **batch(10, [41.0]))
        started = time.monotonic()
        sent_again = await feed.flush()  # inside the back-off: not even tried
        return feed, sent, sent_again, time.monotonic() - started

    with override_settings(CHANNEL_LAYERS=layers):
        feed, sent, sent_again, waited = asyncio.run(main())

    assert (sent, sent_again) == (0, 0)
    assert feed.failed == 1
    assert waited < 0.1
    assert LIVE_EVENTS.labels("failed")._value.get() == failed_before + 1
    assert LIVE_EVENTS.labels("skipped")._value.get() == skipped_before + 1
    assert code in feed.pending  # kept, and sent once Redis is back


def test_a_station_that_falls_silent_still_gets_its_last_samples_sent():
    code = station()

    async def main():
        receive = await listen(f"station.{code}")
        feed = LiveFeed(interval_s=0.3)
        feed.add(station=code, line=1, **batch(0, [40.0]))
        feed.schedule()  # due: flushed in the background
        first = await receive()
        feed.add(station=code, line=1, **batch(10, [48.0]))
        feed.schedule()  # not due for 0.3 s: a timer, and no batch will come to call again
        second = await receive(2.0)
        await feed.close()
        return first, second

    first, second = asyncio.run(main())

    assert first["signals"]["torque"]["last"] == 40.0
    assert second["signals"]["torque"]["last"] == 48.0


def test_folding_a_batch_costs_a_few_numpy_calls_per_signal_however_long_it_is():
    rng = np.random.default_rng(7)

    def columns(n: int) -> dict:
        return {
            "ts_ms": np.arange(n, dtype=np.int64),
            "values": {name: rng.normal(45, 2, n) for name in ("torque", "angle", "current", "t")},
            "scores": rng.random(n).astype(np.float32),
        }

    def cost(n: int) -> float:
        data = columns(n)
        feed = LiveFeed()
        best = math.inf
        for _ in range(30):
            started = time.perf_counter()
            feed.add(station="bench", line=1, threshold=1.0, **data)
            best = min(best, time.perf_counter() - started)
        return best

    small, large = cost(100), cost(100_000)

    # Python work per sample would make 1000 times the samples cost ~1000 times as much; numpy
    # reductions over contiguous columns cost a fraction of that (measured ~5-20 times).
    measured = f"{small * 1e6:.1f} µs for 100 samples, {large * 1e6:.1f} µs for 100,000"
    assert large / small < 150, measured


def test_the_scores_shown_are_the_production_models_never_a_shadows():
    ts = np.arange(3, dtype=np.int64)
    production, shadow = np.array([0.1, 0.2, 3.0]), np.array([9.0, 9.0, 9.0])

    class Model:
        threshold = 2.5

    by_model = [(5, False, production), (6, True, shadow)]
    scored = Scored(ts, ts, by_model=by_model, source="model")
    baseline = Scored(ts, ts, by_model=[(0, False, production)], source="baseline")

    assert production_scores(scored, Model()) == (production, 2.5)
    assert production_scores(baseline, None) == (production, 1.0)
    assert production_scores(Scored(ts, ts), None) == (None, None)

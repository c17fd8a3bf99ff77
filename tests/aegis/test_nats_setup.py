"""`manage.py nats_setup` provisions the JetStream topology idempotently on a real server."""

from __future__ import annotations

import asyncio
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from aegis import jetstream


def _setup() -> list[str]:
    output = StringIO()
    call_command("nats_setup", stdout=output)
    return output.getvalue().splitlines()


async def _inspect():
    client = await jetstream.connect("test", allow_reconnect=False)
    js = client.jetstream()
    try:
        telemetry = (await js.stream_info("TELEMETRY")).config
        ingest = (await js.consumer_info("TELEMETRY", "ingest")).config
        await js.key_value("foresight_models")
        return telemetry, ingest
    finally:
        await client.close()


async def _drift():
    """What an operator's manual edits do: change a stream, a consumer and a bucket."""
    client = await jetstream.connect("test", allow_reconnect=False)
    js = client.jetstream()
    stream = (await js.stream_info("TELEMETRY")).config
    await js.update_stream(stream.evolve(max_age=3600.0))
    consumer = (await js.consumer_info("TELEMETRY", "ingest")).config
    await js.add_consumer("TELEMETRY", consumer.evolve(max_ack_pending=10))
    bucket = (await js.stream_info("KV_foresight_models")).config
    await js.update_stream(bucket.evolve(max_msgs_per_subject=2))
    await client.close()


@pytest.mark.django_db
def test_nats_setup_creates_then_leaves_the_topology_unchanged():
    _setup()
    second = _setup()
    assert second
    assert all(line.endswith("unchanged") for line in second), second
    names = {line.split(":")[0] for line in second}
    assert {
        "stream TELEMETRY",
        "stream MES_STATE",
        "stream DEFECT_ALERTS",
        "stream FORESIGHT_MODELS",
        "stream DEAD_LETTERS",
        "consumer TELEMETRY/ingest",
        "consumer TELEMETRY/foresight-scorer",
        "kv foresight_models",
        "kv mes_station_state",
    } <= names

    telemetry, ingest = asyncio.run(_inspect())
    assert telemetry.subjects == ["aegis.telemetry.raw.>"]
    assert telemetry.max_age == settings.TELEMETRY_RETENTION_HOURS * 3600
    assert telemetry.duplicate_window == 120
    assert ingest.durable_name == "ingest"
    assert ingest.ack_policy == "explicit"


@pytest.mark.django_db
def test_nats_setup_repairs_drifted_configuration():
    _setup()
    asyncio.run(_drift())
    report = _setup()
    assert "stream TELEMETRY: updated max_age" in report
    assert "consumer TELEMETRY/ingest: updated max_ack_pending" in report
    assert "kv foresight_models: updated max_msgs_per_subject" in report
    telemetry, ingest = asyncio.run(_inspect())
    assert telemetry.max_age == settings.TELEMETRY_RETENTION_HOURS * 3600
    assert ingest.max_ack_pending == 20_000
    assert all(line.endswith("unchanged") for line in _setup())

"""The one way Aegis processes connect to NATS, and the JetStream topology they rely on.

`connect()` reads the URL, credentials and TLS files from settings and reconnects forever, so
a NATS restart never stops a worker. `provision()` creates or updates every stream, durable
consumer and KV bucket declared here; it is idempotent and run by `manage.py nats_setup`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import nats
from django.conf import settings
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError

DAY_S = 24 * 3600

# Names other modules rely on: the relay publishes MES state changes into MES_STATE and keeps
# each station's current state (key: station code) in the MES_STATION_STATE bucket.
MES_STATE_STREAM = "MES_STATE"
MES_STATE_SUBJECT_PREFIX = "aegis.mes.state"
MES_STATION_STATE_BUCKET = "mes_station_state"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    max_age_s: float
    description: str

    def config(self, replicas: int) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            description=self.description,
            subjects=self.subjects,
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            max_age=self.max_age_s,
            # Publishers set Nats-Msg-Id; retries within this window are dropped by the server.
            duplicate_window=120.0,
            num_replicas=replicas,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    description: str
    filter_subject: str
    ack_wait_s: float = 30.0
    max_ack_pending: int = 20_000
    extra: dict = field(default_factory=dict)

    def config(self, replicas: int) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            durable_name=self.durable,
            description=self.description,
            filter_subject=self.filter_subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            max_waiting=512,
            num_replicas=replicas,
            **self.extra,
        )


@dataclass(frozen=True)
class BucketSpec:
    bucket: str
    description: str
    history: int = 16


def streams() -> list[StreamSpec]:
    return [
        StreamSpec(
            "TELEMETRY",
            ["aegis.telemetry.raw.>"],
            settings.TELEMETRY_RETENTION_HOURS * 3600.0,
            "PLC samples per station (aegis.telemetry.raw.<station>)",
        ),
        StreamSpec(
            MES_STATE_STREAM,
            [f"{MES_STATE_SUBJECT_PREFIX}.>"],
            30.0 * DAY_S,
            "MES state changes per station, published from the outbox after commit",
        ),
        StreamSpec(
            "DEFECT_ALERTS",
            ["aegis.defect.alerts.>"],
            90.0 * DAY_S,
            "Foresight defect alerts per station",
        ),
        StreamSpec(
            "FORESIGHT_MODELS",
            ["aegis.foresight.models"],
            365.0 * DAY_S,
            "Model registry events (promoted, rolled back, archived)",
        ),
        StreamSpec(
            "DEAD_LETTERS",
            ["aegis.deadletter.>"],
            14.0 * DAY_S,
            "Messages no worker could process, with the reason in the Aegis-Reason header",
        ),
    ]


def consumers() -> list[ConsumerSpec]:
    return [
        ConsumerSpec(
            "TELEMETRY",
            "ingest",
            "Telemetry ingest workers: enrich, store, then ack",
            "aegis.telemetry.raw.>",
        ),
        ConsumerSpec(
            "TELEMETRY",
            "foresight-scorer",
            "Foresight scorers: score windows of live telemetry",
            "aegis.telemetry.raw.>",
        ),
    ]


def buckets() -> list[BucketSpec]:
    return [
        BucketSpec("foresight_models", "Production model per scope; scorers watch it to hot-swap"),
        BucketSpec(
            MES_STATION_STATE_BUCKET,
            "Current MES state per station (key: station code), written by the outbox relay",
            # The history of a station is the MES_STATE stream; a few revisions help debugging.
            history=5,
        ),
    ]


def _tls_context() -> ssl.SSLContext | None:
    if not (settings.NATS_TLS_CA_FILE or settings.NATS_TLS_CERT_FILE):
        return None
    context = ssl.create_default_context(cafile=settings.NATS_TLS_CA_FILE)
    if settings.NATS_TLS_CERT_FILE:
        context.load_cert_chain(settings.NATS_TLS_CERT_FILE, settings.NATS_TLS_KEY_FILE)
    return context


async def connect(name: str, *, allow_reconnect: bool = True, **options) -> Client:
    """Connect to AEGIS_NATS_URL; reconnects without limit unless told otherwise."""
    options.setdefault("connect_timeout", settings.NATS_CONNECT_TIMEOUT_S)
    return await nats.connect(
        settings.NATS_URL,
        name=f"aegis-{name}",
        allow_reconnect=allow_reconnect,
        max_reconnect_attempts=-1 if allow_reconnect else 0,
        reconnect_time_wait=1,
        user_credentials=settings.NATS_CREDENTIALS_FILE,
        tls=_tls_context(),
        **options,
    )


def _differs(current: object, wanted: object, fields: list[str]) -> list[str]:
    return [f for f in fields if getattr(current, f) != getattr(wanted, f)]


STREAM_FIELDS = ["subjects", "max_age", "duplicate_window", "description", "num_replicas"]
CONSUMER_FIELDS = ["filter_subject", "ack_wait", "max_ack_pending", "description", "num_replicas"]


async def _provision_stream(js: JetStreamContext, wanted: api.StreamConfig) -> str:
    try:
        current = (await js.stream_info(wanted.name)).config
    except NotFoundError:
        await js.add_stream(wanted)
        return "created"
    changed = _differs(current, wanted, STREAM_FIELDS)
    if not changed:
        return "unchanged"
    await js.update_stream(wanted)
    return f"updated {', '.join(changed)}"


async def _provision_consumer(js: JetStreamContext, spec: ConsumerSpec, replicas: int) -> str:
    wanted = spec.config(replicas)
    try:
        current = (await js.consumer_info(spec.stream, spec.durable)).config
    except NotFoundError:
        await js.add_consumer(spec.stream, wanted)
        return "created"
    changed = _differs(current, wanted, CONSUMER_FIELDS)
    if not changed:
        return "unchanged"
    # Where a consumer starts cannot be updated, and the Foresight scorer re-creates
    # `foresight-scorer` at a start sequence when it takes over from partitioned scorers.
    wanted = wanted.evolve(
        deliver_policy=current.deliver_policy,
        opt_start_seq=current.opt_start_seq,
        opt_start_time=current.opt_start_time,
    )
    await js.add_consumer(spec.stream, wanted)  # creating an existing durable updates it
    return f"updated {', '.join(changed)}"


async def _provision_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> str:
    try:
        await js.key_value(spec.bucket)
    except BucketNotFoundError:
        await js.create_key_value(
            bucket=spec.bucket,
            description=spec.description,
            history=spec.history,
            replicas=replicas,
            storage=api.StorageType.FILE,
        )
        return "created"
    # A bucket is the stream KV_<bucket>; its replicas and history are that stream's settings.
    current = (await js.stream_info(f"KV_{spec.bucket}")).config
    wanted = {"num_replicas": replicas, "max_msgs_per_subject": spec.history}
    changed = [field for field, value in wanted.items() if getattr(current, field) != value]
    if not changed:
        return "unchanged"
    await js.update_stream(current.evolve(**wanted))
    return f"updated {', '.join(changed)}"


async def provision(js: JetStreamContext, replicas: int) -> list[str]:
    """Create or update the declared topology; returns one line per object saying what changed."""
    report = []
    for stream in streams():
        outcome = await _provision_stream(js, stream.config(replicas))
        report.append(f"stream {stream.name}: {outcome}")
    for consumer in consumers():
        outcome = await _provision_consumer(js, consumer, replicas)
        report.append(f"consumer {consumer.stream}/{consumer.durable}: {outcome}")
    for bucket in buckets():
        outcome = await _provision_bucket(js, bucket, replicas)
        report.append(f"kv {bucket.bucket}: {outcome}")
    return report

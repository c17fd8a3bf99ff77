"""Sparkplug B payloads: the protobuf messages, built here from the specification's field
numbers, and the topic and metric rules the MQTT source needs.

The message definitions are assembled at import as a `FileDescriptorProto` and turned into
classes by protobuf's own runtime, so the wire format is protobuf's, not a hand-written one.
Only the parts the bridge reads or writes are declared: Payload (timestamp 1, metrics 2,
seq 3, uuid 4, body 5) and Metric (name 1, alias 2, timestamp 3, datatype 4, is_historical 5,
is_transient 6, is_null 7, and the scalar values int_value 10 to bytes_value 16). Metadata,
property sets, data sets and templates (fields 8, 9, 17 to 19) stay undeclared: protobuf skips
them as unknown fields, and such metrics are counted as ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
BDSEQ_METRIC = "bdSeq"


class DataType(IntEnum):
    """Sparkplug B metric datatypes (the scalar ones the bridge understands first)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19


# Bit widths of the signed integer types: Int8..Int32 travel in the uint32 int_value and
# Int64 in the uint64 long_value, as two's complement of the full field or of the type.
SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
UNSIGNED_BITS = {DataType.UINT8: 8, DataType.UINT16: 16, DataType.UINT32: 32, DataType.UINT64: 64}
NUMERIC_TYPES = frozenset(
    {*SIGNED_BITS, *UNSIGNED_BITS, DataType.FLOAT, DataType.DOUBLE, DataType.BOOLEAN}
)


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    file = descriptor_pb2.FileDescriptorProto(
        name="aegis_edge_sparkplug_b.proto",
        package="aegis.edge.sparkplug_b",
        syntax="proto2",
    )
    payload = file.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    metric_fields = [
        ("name", 1, field.TYPE_STRING, None),
        ("alias", 2, field.TYPE_UINT64, None),
        ("timestamp", 3, field.TYPE_UINT64, None),
        ("datatype", 4, field.TYPE_UINT32, None),
        ("is_historical", 5, field.TYPE_BOOL, None),
        ("is_transient", 6, field.TYPE_BOOL, None),
        ("is_null", 7, field.TYPE_BOOL, None),
        ("int_value", 10, field.TYPE_UINT32, 0),
        ("long_value", 11, field.TYPE_UINT64, 0),
        ("float_value", 12, field.TYPE_FLOAT, 0),
        ("double_value", 13, field.TYPE_DOUBLE, 0),
        ("boolean_value", 14, field.TYPE_BOOL, 0),
        ("string_value", 15, field.TYPE_STRING, 0),
        ("bytes_value", 16, field.TYPE_BYTES, 0),
    ]
    for name, number, type_, oneof in metric_fields:
        declared = metric.field.add(name=name, number=number, type=type_, label=optional)
        if oneof is not None:
            declared.oneof_index = oneof
    payload.field.add(name="timestamp", number=1, type=field.TYPE_UINT64, label=optional)
    payload.field.add(
        name="metrics",
        number=2,
        type=field.TYPE_MESSAGE,
        label=repeated,
        type_name=".aegis.edge.sparkplug_b.Payload.Metric",
    )
    payload.field.add(name="seq", number=3, type=field.TYPE_UINT64, label=optional)
    payload.field.add(name="uuid", number=4, type=field.TYPE_STRING, label=optional)
    payload.field.add(name="body", number=5, type=field.TYPE_BYTES, label=optional)
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
PAYLOAD_DESCRIPTOR = _POOL.FindMessageTypeByName("aegis.edge.sparkplug_b.Payload")
Payload = message_factory.GetMessageClass(PAYLOAD_DESCRIPTOR)


@dataclass(frozen=True, slots=True)
class Metric:
    name: str | None
    alias: int | None
    timestamp_ms: int | None
    datatype: int | None
    # The decoded value: int, float, bool, str or bytes; None when null or of a kind the
    # bridge does not decode (data sets, templates, …).
    value: object
    is_null: bool = False
    is_historical: bool = False


@dataclass(frozen=True, slots=True)
class SparkplugPayload:
    timestamp_ms: int | None
    seq: int | None
    metrics: tuple[Metric, ...]


@dataclass(frozen=True, slots=True)
class Topic:
    group: str
    message_type: str  # NBIRTH, NDATA, NDEATH, NCMD, DBIRTH, DDATA, DDEATH, DCMD, STATE
    edge_node: str
    device: str | None


def parse_topic(topic: str) -> Topic | None:
    """`spBv1.0/<group>/<type>/<edge node>[/<device>]`, or None for anything else."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        return None
    return Topic(parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None)


def decode_payload(data: bytes) -> SparkplugPayload:
    """Raises google.protobuf.message.DecodeError on bytes that are not a payload."""
    message = Payload()
    message.ParseFromString(data)
    metrics = tuple(
        Metric(
            name=metric.name if metric.HasField("name") else None,
            alias=metric.alias if metric.HasField("alias") else None,
            timestamp_ms=metric.timestamp if metric.HasField("timestamp") else None,
            datatype=metric.datatype if metric.HasField("datatype") else None,
            value=_raw_value(metric),
            is_null=metric.is_null,
            is_historical=metric.is_historical,
        )
        for metric in message.metrics
    )
    return SparkplugPayload(
        timestamp_ms=message.timestamp if message.HasField("timestamp") else None,
        seq=message.seq if message.HasField("seq") else None,
        metrics=metrics,
    )


def _raw_value(metric) -> object:
    kind = metric.WhichOneof("value")
    return None if kind is None else getattr(metric, kind)


def metric_number(value: object, datatype: int | None) -> float | None:
    """A metric value as the float Aegis stores, by its (birth) datatype; None for the types
    the bridge does not store (strings, bytes, data sets, …) or a value that does not fit."""
    if value is None or datatype not in NUMERIC_TYPES:
        return None
    datatype = DataType(datatype)
    if datatype == DataType.BOOLEAN:
        return (1.0 if value else 0.0) if isinstance(value, bool) else None
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, float | int) and not isinstance(value, bool):
            number = float(value)
            return number if number == number and abs(number) != float("inf") else None
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if datatype in SIGNED_BITS:
        bits = SIGNED_BITS[datatype]
        value &= (1 << bits) - 1
        return float(value - (1 << bits) if value >> (bits - 1) else value)
    return float(value & ((1 << UNSIGNED_BITS[datatype]) - 1))


def encode_payload(
    *, timestamp_ms: int | None, seq: int | None, metrics: list[Metric] | tuple[Metric, ...]
) -> bytes:
    """Bytes of a payload; a metric's value goes in the field its datatype prescribes."""
    message = Payload()
    if timestamp_ms is not None:
        message.timestamp = timestamp_ms
    if seq is not None:
        message.seq = seq
    for metric in metrics:
        encoded = message.metrics.add()
        if metric.name is not None:
            encoded.name = metric.name
        if metric.alias is not None:
            encoded.alias = metric.alias
        if metric.timestamp_ms is not None:
            encoded.timestamp = metric.timestamp_ms
        if metric.datatype is not None:
            encoded.datatype = metric.datatype
        if metric.is_historical:
            encoded.is_historical = True
        if metric.is_null or metric.value is None:
            encoded.is_null = metric.is_null
            continue
        _set_value(encoded, metric.datatype, metric.value)
    return message.SerializeToString()


def _set_value(encoded, datatype: int | None, value: object) -> None:
    if datatype in SIGNED_BITS or datatype in UNSIGNED_BITS:
        bits = SIGNED_BITS.get(datatype) or UNSIGNED_BITS[datatype]
        field = "long_value" if bits == 64 else "int_value"
        width = 64 if bits == 64 else 32
        setattr(encoded, field, int(value) & ((1 << width) - 1))
    elif datatype == DataType.FLOAT:
        encoded.float_value = float(value)
    elif datatype == DataType.DOUBLE:
        encoded.double_value = float(value)
    elif datatype == DataType.BOOLEAN:
        encoded.boolean_value = bool(value)
    elif datatype in (DataType.STRING, DataType.TEXT, DataType.UUID):
        encoded.string_value = str(value)
    elif datatype == DataType.DATETIME:
        encoded.long_value = int(value)
    elif datatype in (DataType.BYTES, DataType.FILE):
        encoded.bytes_value = bytes(value)
    else:
        raise ValueError(f"cannot encode a value of Sparkplug datatype {datatype}")


def rebirth_request(*, timestamp_ms: int) -> bytes:
    """The NCMD payload asking an edge node to publish its births again."""
    return encode_payload(
        timestamp_ms=timestamp_ms,
        seq=None,
        metrics=[
            Metric(
                name=REBIRTH_METRIC,
                alias=None,
                timestamp_ms=timestamp_ms,
                datatype=DataType.BOOLEAN,
                value=True,
            )
        ],
    )

"""Telemetry messages: decoded with orjson, validated, turned into samples or a rejection.

Two forms arrive on `aegis.telemetry.raw.<station code>` (docs/telemetry-payloads.md, with the
JSON Schemas in docs/schemas/):

- the original Aegis single sample: `{"station_id": "5", "torque": 43.21, "timestamp": …}`,
  every key other than `station_id`, `timestamp` and `seq` being a numeric signal;
- the batch form of edges that batch: `{"station_id": "5", "samples": [{"ts": …, "seq": 0,
  "signals": {"torque": 43.2}}, …]}`.

A message is accepted or rejected as a whole: one bad sample rejects its message, whose body
then goes to the dead letters untouched, ready to be fixed and published again. Rejections carry
a reason from `REASONS` and a human-readable detail naming the offending field.

This runs once per message at tens of thousands of messages per second, so it is plain Python
over the decoded dicts: type checks by identity, no schema library, and the signals dict of the
single form is reused as is (the keys are popped off it).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import orjson

# Limits (docs/telemetry-payloads.md).
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB
MAX_SAMPLES = 10_000
FUTURE_TOLERANCE_MS = 5 * 60 * 1000  # edge clocks run ahead; more than this is a wrong clock
MAX_SEQ = 2**31 - 1  # the seq column is a PostgreSQL integer
MAX_SIGNAL_NAME = 128

# Rejection reasons: the `Aegis-Reason` header of a dead letter and the metric label.
BAD_JSON = "bad_json"
WRONG_TYPE = "wrong_type"
UNKNOWN_STATION = "unknown_station"
STATION_MISMATCH = "station_mismatch"
MISSING_TIMESTAMP = "missing_timestamp"
FAR_FUTURE_TIMESTAMP = "far_future_timestamp"
TOO_OLD = "too_old"
OVERSIZE = "oversize"
# Set by the worker, not here: the database refused rows that passed every check above.
REJECTED_BY_DATABASE = "rejected_by_database"
REASONS = (
    BAD_JSON,
    WRONG_TYPE,
    UNKNOWN_STATION,
    STATION_MISMATCH,
    MISSING_TIMESTAMP,
    FAR_FUTURE_TIMESTAMP,
    TOO_OLD,
    OVERSIZE,
    REJECTED_BY_DATABASE,
)

SUBJECT_PREFIX = "aegis.telemetry.raw."
# Station codes as mes.models.code_validator accepts them (they are NATS subject tokens).
STATION_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

_NUMBER = frozenset((int, float))  # by identity: bool is not a number here
_SINGLE_KEYS = ("station_id", "timestamp", "seq")
_BATCH_KEYS = frozenset(("station_id", "samples"))
_SAMPLE_KEYS = frozenset(("ts", "seq", "signals"))
# Signal names already checked; a plant has hundreds, not millions (bounded anyway).
_known_names: set[str] = set()
_KNOWN_NAMES_LIMIT = 100_000


class Rejection(NamedTuple):
    """Why a message cannot be stored: `reason` (one of REASONS) and a detail for people."""

    reason: str
    detail: str


class Sample(NamedTuple):
    ts: int  # epoch milliseconds
    seq: int
    signals: dict[str, int | float]


class Message(NamedTuple):
    """An accepted message: the station code it names and its samples."""

    station: str
    samples: list[Sample]


class TimeWindow(NamedTuple):
    """Accepted sample timestamps, epoch ms inclusive: not expired, not in the future."""

    oldest: int
    newest: int


def time_window(*, now_ms: int, retention_hours: int) -> TimeWindow:
    return TimeWindow(now_ms - retention_hours * 3_600_000, now_ms + FUTURE_TOLERANCE_MS)


def subject_station(subject: str) -> str | None:
    """The station code of `aegis.telemetry.raw.<code>`, None for any other subject."""
    if subject.startswith(SUBJECT_PREFIX):
        return subject[len(SUBJECT_PREFIX) :] or None
    return None


def parse_message(body: bytes, *, subject: str, window: TimeWindow) -> Message | Rejection:
    """Decode and validate one message body published on `subject`."""
    if len(body) > MAX_MESSAGE_BYTES:
        return Rejection(OVERSIZE, f"{len(body)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return Rejection(BAD_JSON, str(error))
    if type(document) is not dict:
        return Rejection(WRONG_TYPE, f"expected a JSON object, got {_kind(document)}")
    station = _station(document.pop("station_id", None), subject_station(subject))
    if type(station) is Rejection:
        return station
    if "samples" in document:
        return _batch(station, document, window)
    return _single(station, document, window)


def _station(named: object, subject_code: str | None) -> str | Rejection:
    """The message's station code: `station_id` if given, else the subject's last token."""
    if named is None:
        if subject_code is None:
            return Rejection(WRONG_TYPE, "station_id is missing and the subject names no station")
        return subject_code
    if type(named) is int:
        named = str(named)
    elif type(named) is not str:
        return Rejection(WRONG_TYPE, f"station_id: expected a string, got {_kind(named)}")
    if subject_code is not None and named != subject_code:
        return Rejection(
            STATION_MISMATCH,
            f"station_id {named[:40]!r} but published for station {subject_code!r}",
        )
    return named


def _single(station: str, document: dict, window: TimeWindow) -> Message | Rejection:
    """`{"station_id", "timestamp", "seq"?, <signal>: <number>, …}`; `document` has no
    station_id any more, and what remains after popping the keys are the signals."""
    ts = document.pop("timestamp", None)
    seq = document.pop("seq", 0)
    sample = _sample(ts, seq, document, window, "timestamp", "")
    if type(sample) is Rejection:
        return sample
    return Message(station, [sample])


def _batch(station: str, document: dict, window: TimeWindow) -> Message | Rejection:
    if not _BATCH_KEYS.issuperset(document):
        extra = sorted(set(document) - _BATCH_KEYS)
        return Rejection(WRONG_TYPE, f"unexpected keys beside samples: {extra[:5]}")
    samples = document["samples"]
    if type(samples) is not list:
        return Rejection(WRONG_TYPE, f"samples: expected an array, got {_kind(samples)}")
    if not samples:
        return Rejection(WRONG_TYPE, "samples: empty")
    if len(samples) > MAX_SAMPLES:
        return Rejection(OVERSIZE, f"{len(samples)} samples, more than {MAX_SAMPLES}")
    accepted = []
    for index, sample in enumerate(samples):
        if type(sample) is not dict:
            return Rejection(
                WRONG_TYPE, f"samples[{index}]: expected an object, got {_kind(sample)}"
            )
        if not _SAMPLE_KEYS.issuperset(sample):
            extra = sorted(set(sample) - _SAMPLE_KEYS)
            return Rejection(WRONG_TYPE, f"samples[{index}]: unexpected keys {extra[:5]}")
        ts = sample.get("ts")
        seq = sample.get("seq", 0)
        signals = sample.get("signals")
        if type(signals) is not dict:
            if signals is None:
                return Rejection(WRONG_TYPE, f"samples[{index}].signals: missing")
            return Rejection(
                WRONG_TYPE, f"samples[{index}].signals: expected an object, got {_kind(signals)}"
            )
        checked = _sample(ts, seq, signals, window, "ts", f"samples[{index}].")
        if type(checked) is Rejection:
            return checked
        accepted.append(checked)
    return Message(station, accepted)


def _sample(
    ts: object, seq: object, signals: dict, window: TimeWindow, ts_key: str, where: str
) -> Sample | Rejection:
    if type(ts) is not int:
        if ts is None:
            return Rejection(MISSING_TIMESTAMP, f"{where}{ts_key}: missing")
        if type(ts) is float and ts.is_integer():
            ts = int(ts)  # 1714234567890.0 is an integer to JSON Schema too
        else:
            return Rejection(
                WRONG_TYPE, f"{where}{ts_key}: expected an integer (epoch ms), got {_kind(ts)}"
            )
    if ts > window.newest:
        return Rejection(
            FAR_FUTURE_TIMESTAMP,
            f"{where}{ts_key}: {ts} is more than {FUTURE_TOLERANCE_MS // 1000} s ahead of the "
            "worker's clock",
        )
    if ts < window.oldest:
        return Rejection(
            TOO_OLD, f"{where}{ts_key}: {ts} is before the retention window (from {window.oldest})"
        )
    if type(seq) is float and seq.is_integer():
        seq = int(seq)
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        return Rejection(
            WRONG_TYPE, f"{where}seq: expected an integer 0…{MAX_SEQ}, got {_kind(seq, True)}"
        )
    if not signals:
        return Rejection(WRONG_TYPE, f"{where.rstrip('.') or 'message'}: no signals")
    for name, value in signals.items():
        if type(value) not in _NUMBER:
            return Rejection(
                WRONG_TYPE, f"{where}{name[:64]}: expected a number, got {_kind(value)}"
            )
    if not _known_names.issuperset(signals):
        problem = _check_names(signals, where)
        if problem is not None:
            return problem
    return Sample(ts, seq, signals)


def _check_names(signals: dict, where: str) -> Rejection | None:
    """Names end up as jsonb keys: PostgreSQL refuses NUL, and control characters are a bug."""
    for name in signals:
        if name in _known_names:
            continue
        if not name or len(name) > MAX_SIGNAL_NAME or _CONTROL_CHARACTER.search(name):
            return Rejection(
                WRONG_TYPE,
                f"{where}signal name {name[:64]!r}: 1-{MAX_SIGNAL_NAME} characters, no control "
                "characters",
            )
        if len(_known_names) >= _KNOWN_NAMES_LIMIT:
            _known_names.clear()
        _known_names.add(name)
    return None


def _kind(value: object, show: bool = False) -> str:
    names = {
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        list: "array",
        dict: "object",
        type(None): "null",
    }
    kind = names.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"[:80] if show and kind in ("integer", "number") else kind

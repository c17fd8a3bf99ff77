"""The outbox relay: committed MES state changes to `aegis.mes.state.<station>`, in order.

Services write an OutboxMessage in the transaction that changes the MES (mes/outbox.py). This
relay publishes those rows to JetStream after they commit, and keeps each station's current
state in the KV bucket `mes_station_state`. The rules that make it lossless and ordered:

- One relay is active at a time: it holds a PostgreSQL advisory lock for the life of its
  database session. Other relays are hot standbys that take over when that session ends.
- Rows are published in id order, each station's rows one after another (a row is sent only
  after the previous row of its station was acknowledged by the stream); stations proceed
  concurrently. A station stops at its first failure, so nothing overtakes an unpublished row.
- Each message carries `Nats-Msg-Id: aegis-outbox-<id>`: a row published again after a crash
  (published, not yet marked) is dropped by the stream within its duplicate window.
- Rows are marked published only after their acknowledgement; a failed row records attempts
  and last_error and is retried with capped exponential back-off.
- The KV document of a station is a pure fold (`station_state_merge`) of the station's stream
  messages; it carries the stream sequence it has folded up to, so re-applying a message is a
  no-op and a document left behind by a crash is caught up from the stream.

Foresight's registry events and defect alerts leave through the same outbox on their own
subjects (mes/outbox.py): each row goes to the stream that holds its subject, and only MES-state
rows are folded into station documents. A registry event's `models` (the station's production
and shadow versions) is also written to the KV bucket `foresight_models` under the station's
code before the row counts as published, so the scorers' bucket never lags a marked row; the
entry carries the event's stream sequence and an older event never overwrites a newer one.

Browsers. After a batch is acknowledged and marked, every station whose tile on the plant board
changed (a visit started or ended, a flash, a downtime, a unit completed) gets one `station.state`
event on its websocket groups (station, line, plant): the station's MES state *now*, read from
the database in two queries for the whole batch (`station_now`, the same read the board renders
its first page from). Browsers are told, never waited for: a Redis failure is logged, counted
and backed off, and never holds a publish back.

docs/mes-state.md describes the contract for consumers and how to operate the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
import orjson
import psycopg
import structlog
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge, Histogram
from psycopg import sql

import aegis.observability.metrics  # noqa: F401 - names this process's metric files first
from aegis import jetstream
from aegis.backoff import Backoff
from aegis.realtime import PLANT_GROUP
from aegis.stopping import StopsOnSignals
from mes.models import OutboxMessage
from mes.outbox import REGISTRY_BUCKET, REGISTRY_SUBJECT

logger = structlog.get_logger(__name__)

MSG_ID_PREFIX = "aegis-outbox-"
NOTIFY_CHANNEL = "aegis_outbox"
# Key of the advisory lock the active relay holds (bigint; the bytes spell "aegis-ob").
RELAY_LOCK_KEY = int.from_bytes(b"aegis-ob", "big")

# -- metrics --------------------------------------------------------------------------------

OUTBOX_PUBLISHED = Counter(
    "aegis_outbox_published_total",
    "Outbox rows published to MES_STATE (duplicates the stream dropped included), by kind.",
    ["kind"],
)
OUTBOX_FAILURES = Counter(
    "aegis_outbox_failures_total",
    "Failed outbox relay operations, by reason (nats_unavailable, rejected, kv, database).",
    ["reason"],
)
OUTBOX_BACKLOG_AGE = Gauge(
    "aegis_outbox_backlog_oldest_seconds",
    "Age of the oldest unpublished outbox row seen by the active relay (0 when none).",
    multiprocess_mode="livemax",
)
OUTBOX_LATENCY = Histogram(
    "aegis_outbox_publish_latency_seconds",
    "From the outbox row's insert (its commit) to the stream's acknowledgement.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
OUTBOX_BROWSER_EVENTS = Counter(
    "aegis_outbox_browser_events_total",
    "station.state events for browsers, by outcome (sent, failed, skipped while backing off).",
    ["outcome"],
)
OUTBOX_RELAY_ACTIVE = Gauge(
    "aegis_outbox_relay_active",
    "1 in the relay that holds the lock and publishes; the sum over processes should be 1.",
    multiprocess_mode="livesum",
)


# -- station state: a pure fold of a station's messages ---------------------------------------

STATE_SCHEMA = 1
WORK_ORDER_FINISHED = ("completed", "cancelled")
# Finished work orders and past shifts stay this long after the station's latest change.
KEEP_FINISHED = dt.timedelta(hours=24)
MAX_SHIFTS = 256


def station_state_empty(station: str) -> dict:
    """The state of a station before any message: nothing there, nothing known."""
    return {
        "schema": STATE_SCHEMA,
        "station": station,
        "seq": 0,  # MES_STATE stream sequence of the last message folded in
        "outbox_id": None,
        "kind": None,
        "updated_at": None,  # latest `at` of any change folded in
        # What is at the station now (all None while it is empty), derived from `visit`.
        "unit": None,
        "vin": None,
        "work_order": None,
        "product": None,
        "work_order_status": None,
        "visit": None,  # the latest visit, open (left_at None) or closed
        "work_orders": {},  # external id -> {product, status, at} from work_order.status
        "firmware": {},  # component -> {version, unit, vin, at}: the latest flash here
        "downtime": None,  # {downtime, open, reason, planned, started_at, ended_at}
        "shift": None,  # the shift containing `updated_at`
        "shifts": [],  # scheduled shifts of the line, by start (readers pick by timestamp)
    }


def station_state_merge(
    state: dict, message: dict, *, seq: int, outbox_id: int | None = None
) -> dict:
    """The station's state after `message` (stream sequence `seq`). Pure: `state` is unchanged.

    A message at or below the state's sequence is already folded in and changes nothing, so
    replays are harmless. Facts carry their own time (`at`): a late message about the past never
    moves a station backwards (an old visit does not replace the unit there now).
    """
    if seq <= state["seq"]:
        return state
    merged = {**state, "seq": seq, "outbox_id": outbox_id, "kind": message.get("kind")}
    at = message.get("at")
    if at and (merged["updated_at"] is None or _instant(at) > _instant(merged["updated_at"])):
        merged["updated_at"] = at
    apply = _APPLY.get(message.get("kind"))
    if apply is not None:
        apply(merged, message)
    _prune(merged)
    _derive(merged)
    return merged


def shift_at(state: dict, when: str | dt.datetime) -> dict | None:
    """The scheduled shift containing `when` ([starts_at, ends_at)), if the state knows one."""
    instant = _instant(when) if isinstance(when, str) else when
    for shift in state["shifts"]:
        if _instant(shift["starts_at"]) <= instant < _instant(shift["ends_at"]):
            return shift
    return None


def _instant(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _earlier(at: str, reference: str | None) -> bool:
    return reference is not None and _instant(at) < _instant(reference)


def _latest_time(fact: dict) -> str | None:
    return (
        fact.get("ended_at")
        or fact.get("left_at")
        or fact.get("started_at")
        or fact.get("arrived_at")
    )


def _visit_from(message: dict, *, arrived_at: str | None, left_at: str | None) -> dict:
    return {
        "visit": message.get("visit"),
        "unit": message.get("unit"),
        "vin": message.get("vin"),
        "work_order": message.get("work_order"),
        "product": message.get("product"),
        "arrived_at": arrived_at,
        "left_at": left_at,
    }


def _visit_started(state: dict, message: dict) -> None:
    current = state["visit"]
    if (
        current
        and current["visit"] != message.get("visit")
        and _earlier(message["at"], _latest_time(current))
    ):
        return  # an older visit reported late: the station has moved on
    state["visit"] = _visit_from(message, arrived_at=message["at"], left_at=None)
    work_order = message.get("work_order")
    if work_order and work_order not in state["work_orders"]:
        # Only fills a gap: the status in a visit is a snapshot, work_order.status is the truth.
        state["work_orders"] = {
            **state["work_orders"],
            work_order: {
                "product": message.get("product"),
                "status": message.get("work_order_status"),
                "at": message["at"],
            },
        }


def _visit_ended(state: dict, message: dict) -> None:
    current = state["visit"]
    if current and current["visit"] == message.get("visit"):
        state["visit"] = {**current, "left_at": message["at"]}
        return
    reference = _latest_time(current) if current else None
    if reference is None or _instant(message["at"]) > _instant(reference):
        # The end of a visit whose start this state never saw.
        state["visit"] = _visit_from(message, arrived_at=None, left_at=message["at"])


def _firmware_flashed(state: dict, message: dict) -> None:
    component = message.get("component")
    known = state["firmware"].get(component)
    if not component or (known and _earlier(message["at"], known["at"])):
        return
    state["firmware"] = {
        **state["firmware"],
        component: {
            "version": message.get("version"),
            "unit": message.get("unit"),
            "vin": message.get("vin"),
            "at": message["at"],
        },
    }


def _work_order_status(state: dict, message: dict) -> None:
    external_id = message.get("work_order")
    known = state["work_orders"].get(external_id)
    if not external_id or (known and _earlier(message["at"], known["at"])):
        return
    state["work_orders"] = {
        **state["work_orders"],
        external_id: {
            "product": message.get("product") or (known or {}).get("product"),
            "status": message.get("status"),
            "at": message["at"],
        },
    }


def _downtime_started(state: dict, message: dict) -> None:
    current = state["downtime"]
    if (
        current
        and current["downtime"] != message.get("downtime")
        and _earlier(message["at"], _latest_time(current))
    ):
        return  # an older downtime reported late
    state["downtime"] = {
        "downtime": message.get("downtime"),
        "open": True,
        "reason": message.get("reason"),
        "planned": message.get("planned"),
        "started_at": message["at"],
        "ended_at": None,
    }


def _downtime_ended(state: dict, message: dict) -> None:
    current = state["downtime"]
    if current and current["downtime"] == message.get("downtime"):
        state["downtime"] = {
            **current,
            "open": False,
            "reason": message.get("reason") or current["reason"],
            "ended_at": message["at"],
        }
        return
    reference = _latest_time(current) if current else None
    if reference is None or _instant(message["at"]) > _instant(reference):
        state["downtime"] = {
            "downtime": message.get("downtime"),
            "open": False,
            "reason": message.get("reason"),
            "planned": None,
            "started_at": None,
            "ended_at": message["at"],
        }


def _shift_scheduled(state: dict, message: dict) -> None:
    shift = {
        "shift": message.get("shift"),
        "name": message.get("name"),
        "business_date": message.get("business_date"),
        "starts_at": message["starts_at"],
        "ends_at": message["ends_at"],
    }
    others = [known for known in state["shifts"] if known["shift"] != shift["shift"]]
    state["shifts"] = sorted([*others, shift], key=lambda known: _instant(known["starts_at"]))


_APPLY: dict[str, Callable[[dict, dict], None]] = {
    "visit.started": _visit_started,
    "visit.ended": _visit_ended,
    "firmware.flashed": _firmware_flashed,
    "work_order.status": _work_order_status,
    "downtime.started": _downtime_started,
    "downtime.ended": _downtime_ended,
    "shift.scheduled": _shift_scheduled,
}


def _prune(state: dict) -> None:
    """Keep documents small: drop what ended a day before the station's latest change."""
    if state["updated_at"] is None:
        return
    horizon = _instant(state["updated_at"]) - KEEP_FINISHED
    shifts = [shift for shift in state["shifts"] if _instant(shift["ends_at"]) >= horizon]
    if len(shifts) != len(state["shifts"]) or len(shifts) > MAX_SHIFTS:
        state["shifts"] = shifts[:MAX_SHIFTS]
    current = (state["visit"] or {}).get("work_order")
    kept = {
        external_id: work_order
        for external_id, work_order in state["work_orders"].items()
        if external_id == current
        or work_order["status"] not in WORK_ORDER_FINISHED
        or _instant(work_order["at"]) >= horizon
    }
    if len(kept) != len(state["work_orders"]):
        state["work_orders"] = kept


def _derive(state: dict) -> None:
    visit = state["visit"]
    here = visit if visit and visit["left_at"] is None else None
    state["unit"] = here and here["unit"]
    state["vin"] = here and here["vin"]
    state["work_order"] = here and here["work_order"]
    state["product"] = here and here["product"]
    work_order = state["work_orders"].get(here["work_order"]) if here else None
    state["work_order_status"] = work_order["status"] if work_order else None
    state["shift"] = shift_at(state, state["updated_at"]) if state["updated_at"] else None


# -- the database side ----------------------------------------------------------------------


@dataclass(frozen=True)
class PendingMessage:
    id: int
    station_code: str
    subject: str
    kind: str
    payload: dict
    created_at: dt.datetime


def database_parameters(alias: str = "default") -> dict:
    """psycopg connection parameters of a Django database, for the relay's own session."""
    parameters = connections[alias].get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        parameters.pop(django_only, None)
    parameters.setdefault("application_name", "aegis-outbox-relay")
    # The session holds the relay lock: notice a dead peer within about a minute.
    parameters.setdefault("keepalives", 1)
    parameters.setdefault("keepalives_idle", 30)
    parameters.setdefault("keepalives_interval", 10)
    parameters.setdefault("keepalives_count", 3)
    return parameters


class OutboxStore:
    """The relay's one PostgreSQL session: the relay lock, LISTEN, reading and marking rows."""

    def __init__(self, parameters: dict) -> None:
        self.parameters = parameters
        self.connection: psycopg.AsyncConnection | None = None
        table = sql.Identifier(OutboxMessage._meta.db_table)
        self._pending_sql = sql.SQL(
            "SELECT id, station_code, subject, kind, payload, created_at FROM {} "
            "WHERE published_at IS NULL ORDER BY id LIMIT %s"
        ).format(table)
        self._oldest_sql = sql.SQL(
            "SELECT created_at FROM {} WHERE published_at IS NULL ORDER BY id LIMIT 1"
        ).format(table)
        self._published_sql = sql.SQL(
            "UPDATE {} SET published_at = now(), attempts = attempts + 1 WHERE id = ANY(%s)"
        ).format(table)
        self._failed_sql = sql.SQL(
            "UPDATE {} SET attempts = attempts + 1, last_error = %s WHERE id = %s"
        ).format(table)

    @property
    def is_open(self) -> bool:
        return self.connection is not None and not self.connection.closed

    async def open(self) -> None:
        await self.close()
        self.connection = await psycopg.AsyncConnection.connect(**self.parameters, autocommit=True)
        await self.connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))

    async def close(self) -> None:
        """Closing the session also releases the relay lock."""
        if self.connection is not None:
            with contextlib.suppress(psycopg.Error):
                await self.connection.close()
        self.connection = None

    async def try_lead(self) -> bool:
        cursor = await self.connection.execute("SELECT pg_try_advisory_lock(%s)", [RELAY_LOCK_KEY])
        return bool((await cursor.fetchone())[0])

    async def pending(self, limit: int) -> list[PendingMessage]:
        cursor = await self.connection.execute(self._pending_sql, [limit])
        return [PendingMessage(*row) for row in await cursor.fetchall()]

    async def oldest_pending(self) -> dt.datetime | None:
        cursor = await self.connection.execute(self._oldest_sql)
        row = await cursor.fetchone()
        return row[0] if row else None

    async def mark(self, *, published: list[int], failed: list[tuple[int, str]]) -> None:
        async with self.connection.transaction():
            if published:
                await self.connection.execute(self._published_sql, [published])
            for outbox_id, error in failed:
                await self.connection.execute(self._failed_sql, [error[:2000], outbox_id])

    async def wait_for_rows(self, timeout: float) -> bool:
        """True when a NOTIFY on the outbox channel arrived within `timeout` seconds."""
        async for _notify in self.connection.notifies(timeout=timeout, stop_after=1):
            return True
        return False


# -- the station state bucket -----------------------------------------------------------------


class StationStates:
    """Station documents in KV, folded from the MES_STATE stream.

    A document is loaded once per leadership, caught up with the stream messages after its
    sequence, then advanced in memory with each acknowledged publish and written after the
    rows are marked. Any doubt (a failed write, a conflicting revision) drops the cached copy:
    the next flush reloads it and catches it up from the stream, which is the history.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.kv: KeyValue | None = None
        self.docs: dict[str, tuple[dict, int]] = {}  # station -> (document, KV revision)
        self.dirty: set[str] = set()
        self.stale: set[str] = set()  # to reload and catch up from the stream
        self.reconciled = False
        self.stream_last_seq: int | None = None  # set by reconcile for the loads that follow
        # KV trouble must not slow publishing down: the bucket has its own back-off.
        self.backoff = Backoff(cap_s=30.0)
        self.retry_after = 0.0

    async def _bucket(self) -> KeyValue:
        if self.kv is None:
            self.kv = await self.js.key_value(jetstream.MES_STATION_STATE_BUCKET)
        return self.kv

    def apply(self, station: str, payload: dict, *, seq: int, outbox_id: int) -> None:
        if station not in self.docs:
            self.stale.add(station)  # the catch-up from the stream will include this message
            return
        document, revision = self.docs[station]
        merged = station_state_merge(document, payload, seq=seq, outbox_id=outbox_id)
        if merged is not document:
            self.docs[station] = (merged, revision)
            self.dirty.add(station)

    async def reconcile(self) -> None:
        """At the start of a leadership: every station with messages is checked once."""
        info = await self.js.stream_info(
            jetstream.MES_STATE_STREAM, subjects_filter=f"{jetstream.MES_STATE_SUBJECT_PREFIX}.>"
        )
        prefix = f"{jetstream.MES_STATE_SUBJECT_PREFIX}."
        for subject in info.state.subjects or {}:
            station = subject.removeprefix(prefix)
            if station != subject and "." not in station:
                self.stale.add(station)
        self.stream_last_seq = info.state.last_seq
        self.reconciled = True

    async def flush(self) -> int:
        """Catch up stale stations and write changed documents; returns documents written."""
        if not self.reconciled:
            await self.reconcile()
        for station in sorted(self.stale):
            await self._load(station)
            self.stale.discard(station)
        self.stream_last_seq = None
        written = 0
        for station in sorted(self.dirty):
            document, revision = self.docs[station]
            value = orjson.dumps(document)
            kv = await self._bucket()
            try:
                if revision:
                    revision = await kv.update(station, value, last=revision)
                else:
                    revision = await kv.create(station, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Another writer (a relay that lost its lock late): reload and fold again.
                logger.warning("outbox.kv_conflict", station=station)
                del self.docs[station]
                self.dirty.discard(station)
                self.stale.add(station)
                continue
            self.docs[station] = (document, revision)
            self.dirty.discard(station)
            written += 1
        return written

    async def _load(self, station: str) -> None:
        kv = await self._bucket()
        try:
            entry = await kv.get(station)
            document, revision = orjson.loads(entry.value), entry.revision
        except nats.js.errors.KeyNotFoundError:
            document, revision = station_state_empty(station), 0
        if self.stream_last_seq is not None and document["seq"] > self.stream_last_seq:
            # Folded from a stream that was since deleted and created again: start over.
            document = station_state_empty(station)
        caught_up = await self._catch_up(document)
        self.docs[station] = (caught_up, revision)
        if caught_up is not document or not revision:
            self.dirty.add(station)

    async def _catch_up(self, document: dict) -> dict:
        subject = f"{jetstream.MES_STATE_SUBJECT_PREFIX}.{document['station']}"
        sequence = document["seq"] + 1
        while True:
            try:
                message = await self.js.get_msg(
                    jetstream.MES_STATE_STREAM, seq=sequence, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError:
                return document
            msg_id = (message.headers or {}).get("Nats-Msg-Id", "")
            outbox_id = msg_id.removeprefix(MSG_ID_PREFIX)
            document = station_state_merge(
                document,
                orjson.loads(message.data),
                seq=message.seq,
                outbox_id=int(outbox_id) if outbox_id.isdigit() else None,
            )
            sequence = message.seq + 1

    def forget(self) -> None:
        """Unwritten changes stay recoverable: they are folded again from the stream."""
        self.stale |= set(self.docs) | self.dirty
        self.docs.clear()
        self.dirty.clear()


# -- other streams: where a subject goes, and the registry's KV entry -----------------------------


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a final `>` one or more."""
    wanted, parts = pattern.split("."), subject.split(".")
    for index, part in enumerate(wanted):
        if part == ">":
            return len(parts) > index
        if index >= len(parts) or part not in ("*", parts[index]):
            return False
    return len(parts) == len(wanted)


@functools.cache
def stream_for(subject: str) -> str | None:
    """The declared stream whose subjects cover `subject` (aegis/jetstream.py)."""
    for spec in jetstream.streams():
        if any(_subject_matches(pattern, subject) for pattern in spec.subjects):
            return spec.name
    return None


def is_mes_state(subject: str) -> bool:
    return subject.startswith(f"{jetstream.MES_STATE_SUBJECT_PREFIX}.")


async def registry_state_put(js: JetStreamContext, row: PendingMessage, seq: int) -> bool:
    """Mirror a registry event's `models` into the scorers' bucket (key: station code).

    Returns False when the entry already holds this event or a later one (a re-published row).
    A concurrent writer makes the update fail, and the row is retried.
    """
    models = row.payload.get("models")
    if not isinstance(models, dict):
        return False  # an event that does not say what the station runs changes nothing
    kv = await js.key_value(REGISTRY_BUCKET)
    document = orjson.dumps({**models, "seq": seq, "outbox_id": row.id})
    try:
        entry = await kv.get(row.station_code)
    except nats.js.errors.KeyNotFoundError:
        await kv.create(row.station_code, document)
        return True
    if orjson.loads(entry.value).get("seq", 0) >= seq:
        return False
    await kv.update(row.station_code, document, last=entry.revision)
    return True


# -- browsers: the station's MES state now, as the plant board shows it --------------------------

# MES-state messages that change what a station's tile on the board shows.
BROWSER_KINDS = frozenset(
    {
        "visit.started",
        "visit.ended",
        "firmware.flashed",
        "downtime.started",
        "downtime.ended",
        "unit.completed",
    }
)
STATION_STATE_EVENT = "station.state"


# Each station with where it sits, its signals, and the visit and the downtime in progress now.
# Visits (and downtimes) never overlap at a station, so the latest one that began by now is the
# only candidate: one backward step of the (station, arrived_at) index per station.
STATION_NOW_SQL = """
SELECT st.id, st.code, st.name, st.station_type, li.id, li.code, li.name, ar.name, si.name,
       si.timezone,
       (SELECT coalesce(json_agg(json_build_object('name', sg.name, 'unit', sg.unit,
                                                   'min', sg.nominal_min, 'max', sg.nominal_max)
                                 ORDER BY sg.id), '[]'::json)
          FROM mes_stationsignal sg WHERE sg.station_id = st.id),
       vi.arrived_at, un.id, un.serial, un.vin, wo.external_id, pr.code,
       dn.started_at, dn.planned, dr.code, dr.name
FROM mes_station st
JOIN mes_line li ON li.id = st.line_id
JOIN mes_area ar ON ar.id = li.area_id
JOIN mes_site si ON si.id = ar.site_id
LEFT JOIN LATERAL (
    SELECT v.arrived_at, v.left_at, v.unit_id FROM mes_stationvisit v
    WHERE v.station_id = st.id AND v.arrived_at <= now()
    ORDER BY v.arrived_at DESC LIMIT 1
) vi ON vi.left_at IS NULL OR vi.left_at > now()
LEFT JOIN mes_unit un ON un.id = vi.unit_id
LEFT JOIN mes_workorder wo ON wo.id = un.work_order_id
LEFT JOIN mes_product pr ON pr.id = wo.product_id
LEFT JOIN LATERAL (
    SELECT d.started_at, d.ended_at, d.planned, d.reason_id FROM mes_downtimeevent d
    WHERE d.station_id = st.id AND d.started_at <= now()
    ORDER BY d.started_at DESC LIMIT 1
) dn ON dn.ended_at IS NULL OR dn.ended_at > now()
LEFT JOIN mes_downtimereason dr ON dr.id = dn.reason_id
WHERE %(every)s OR st.code = ANY(%(codes)s)
ORDER BY si.code, ar.code, li.code, st.position, st.code
"""
# The firmware on each unit now: its latest flash per component.
FIRMWARE_NOW_SQL = """
SELECT DISTINCT ON (unit_id, component) unit_id, component, version
FROM mes_firmwareflash
WHERE unit_id = ANY(%(units)s) AND flashed_at <= now()
ORDER BY unit_id, component, flashed_at DESC, id DESC
"""


@dataclass
class StationNow:
    """A station, where it sits in the plant, and its MES state now (`state`: the body of a
    `station.state` event)."""

    station_id: int
    code: str
    name: str
    station_type: str
    line_id: int
    line_code: str
    line_name: str
    area_name: str
    site_name: str
    timezone: str
    signals: list[dict]
    state: dict


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _stations_now(rows: list[tuple], firmware_rows: list[tuple]) -> list[StationNow]:
    firmware: dict[int, dict[str, str]] = defaultdict(dict)
    for unit_id, component, version in firmware_rows:
        firmware[unit_id][component] = version
    stations = []
    for row in rows:
        (station_id, code, name, station_type, line_id, line_code, line_name, area_name) = row[:8]
        site_name, timezone, signals, arrived_at, unit_id, serial, vin = row[8:15]
        work_order, product, down_since, planned, reason, reason_name = row[15:]
        downtime = None
        if down_since is not None:
            downtime = {
                "started_at": _iso(down_since),
                "planned": planned,
                "reason": reason,
                "reason_name": reason_name,
            }
        state = {
            "station": code,
            "line": line_id,
            "state": "down" if downtime else ("occupied" if unit_id is not None else "idle"),
            "unit": serial,
            "vin": vin,
            "work_order": work_order,
            "product": product,
            "arrived_at": _iso(arrived_at),
            "firmware": firmware.get(unit_id, {}) if unit_id is not None else {},
            "downtime": downtime,
        }
        stations.append(
            StationNow(
                station_id=station_id,
                code=code,
                name=name,
                station_type=station_type,
                line_id=line_id,
                line_code=line_code,
                line_name=line_name,
                area_name=area_name,
                site_name=site_name,
                timezone=timezone,
                signals=signals if isinstance(signals, list) else orjson.loads(signals),
                state=state,
            )
        )
    return stations


def _now_parameters(codes: list[str] | None) -> dict:
    return {"every": codes is None, "codes": list(codes or [])}


def _units(rows: list[tuple]) -> list[int]:
    return sorted({row[12] for row in rows if row[12] is not None})


def station_now(codes: list[str] | None = None) -> list[StationNow]:
    """The stations named (every station when None) in plant order, with their MES state now:
    two queries through Django's connection (the board's first render)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(STATION_NOW_SQL, _now_parameters(codes))
        rows = cursor.fetchall()
        units = _units(rows)
        firmware_rows = []
        if units:
            cursor.execute(FIRMWARE_NOW_SQL, {"units": units})
            firmware_rows = cursor.fetchall()
    return _stations_now(rows, firmware_rows)


async def station_now_async(
    connection: psycopg.AsyncConnection, codes: list[str]
) -> list[StationNow]:
    """`station_now` through the relay's own session."""
    cursor = await connection.execute(STATION_NOW_SQL, _now_parameters(codes))
    rows = await cursor.fetchall()
    units = _units(rows)
    firmware_rows = []
    if units:
        cursor = await connection.execute(FIRMWARE_NOW_SQL, {"units": units})
        firmware_rows = await cursor.fetchall()
    return _stations_now(rows, firmware_rows)


def station_groups(code: str, line_id: int) -> tuple[str, ...]:
    """The websocket groups that hear about a station (aegis/consumers.py)."""
    return (f"station.{code}", f"line.{line_id}", PLANT_GROUP)


class BrowserStates:
    """Sends `station.state` events for the stations a batch changed; never raises, never waits
    on Redis longer than `timeout_s`, and skips sending for a growing while after a failure."""

    def __init__(self, *, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self.backoff = Backoff(1.0, 30.0)
        self.retry_after = 0.0
        self.sent = 0

    async def send(self, connection: psycopg.AsyncConnection, changed: dict[str, dict]) -> int:
        """`changed`: station code → the payload of its latest published message."""
        if not changed:
            return 0
        if time.monotonic() < self.retry_after:
            OUTBOX_BROWSER_EVENTS.labels("skipped").inc(len(changed))
            return 0
        try:
            stations = await station_now_async(connection, sorted(changed))
            events = [
                (
                    station_groups(now.code, now.line_id),
                    {
                        "type": "plant.event",
                        "event": {
                            "type": STATION_STATE_EVENT,
                            **now.state,
                            "kind": changed[now.code].get("kind"),
                            "at": changed[now.code].get("at"),
                        },
                    },
                )
                for now in stations
            ]
            await asyncio.wait_for(self._group_send(events), self.timeout_s)
        except Exception as error:  # noqa: BLE001 - browsers are a courtesy: nothing stops publishing
            OUTBOX_BROWSER_EVENTS.labels("failed").inc(len(changed))
            delay = self.backoff.next()
            self.retry_after = time.monotonic() + delay
            logger.warning("outbox.browser_push_failed", error=_describe(error), retry_in_s=delay)
            return 0
        self.backoff.reset()
        OUTBOX_BROWSER_EVENTS.labels("sent").inc(len(events))
        self.sent += len(events)
        return len(events)

    @staticmethod
    async def _group_send(events: list[tuple[tuple[str, ...], dict]]) -> None:
        layer = get_channel_layer()
        for groups, message in events:
            for group in groups:
                await layer.group_send(group, message)


# -- the relay --------------------------------------------------------------------------------


class RelayUnavailable(RuntimeError):
    """`--once` could not drain the outbox (NATS or PostgreSQL unavailable)."""


@dataclass
class BatchReport:
    claimed: int = 0
    published: int = 0
    duplicates: int = 0
    failed: int = 0
    stations: int = 0
    states_written: int = 0
    browser_events: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backlog_age_s: float = 0.0


@dataclass
class RelayTotals:
    published: int = 0
    duplicates: int = 0
    failed: int = 0
    batches: int = 0
    standby: bool = False
    seconds: float = 0.0

    def add(self, report: BatchReport) -> None:
        self.published += report.published
        self.duplicates += report.duplicates
        self.failed += report.failed
        self.batches += 1 if report.claimed else 0


# Errors that mean "NATS is not there" rather than "this message was refused".
_UNAVAILABLE = (
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    TimeoutError,
)


# What interrupts the loop as a whole (connecting, the lock, reading and marking rows).
_INTERRUPTIONS = (OSError, TimeoutError, nats.errors.Error, psycopg.Error)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".rstrip(": ")


class OutboxRelay(StopsOnSignals):
    """Publishes the outbox: `serve()` until stopped (the process), `drain()` once (`--once`)."""

    stopping_event = "outbox.relay_stopping"

    def __init__(
        self,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 0.2,
        standby_interval_s: float = 2.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        publish_timeout_s: float = 5.0,
        progress: Callable[[BatchReport], None] | None = None,
        database: dict | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.standby_interval_s = standby_interval_s
        self.publish_timeout_s = publish_timeout_s
        self.backoff = Backoff(backoff_initial_s, backoff_max_s)
        self.progress = progress
        self.store = OutboxStore(database or database_parameters())
        self.client: Client | None = None
        self.js: JetStreamContext | None = None
        self.states: StationStates | None = None
        self.browsers = BrowserStates()
        self.leading = False
        self.totals = RelayTotals()
        self._stop: asyncio.Event | None = None
        self._reconnected: asyncio.Event | None = None
        self._said_standby = False
        self._closing = False

    # -- entry points -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batch in hand, then stop (signal handlers call this in the loop)."""
        if self._stop is not None:
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def serve(self, *, handle_signals: bool = True) -> RelayTotals:
        """Relay until asked to stop; survives NATS and PostgreSQL outages."""
        self._events()
        started = time.monotonic()
        if handle_signals:
            self._handle_signals()
        try:
            while not self.stopping:
                await self._serve_once()
        finally:
            if handle_signals:
                self._release_signals()
            await self._close()
            self.totals.seconds = time.monotonic() - started
        return self.totals

    async def drain(self, *, handle_signals: bool = True) -> RelayTotals:
        """Publish every pending row, then return (`--once`); RelayUnavailable on a failure."""
        self._events()
        started = time.monotonic()
        if handle_signals:
            self._handle_signals()
        try:
            await self._connect_nats(keep_trying=False)
            if self.client is None:
                return self.totals  # stopped while connecting
            await self.store.open()
            if not await self._lead():
                self.totals.standby = True
                return self.totals
            while not self.stopping:
                report = await self._relay_batch()
                if report.failed or report.errors:
                    raise RelayUnavailable("; ".join(report.errors))
                if report.claimed < self.batch_size:
                    break
            return self.totals
        except _INTERRUPTIONS as error:
            raise RelayUnavailable(_describe(error)) from error
        finally:
            if handle_signals:
                self._release_signals()
            await self._close()
            self.totals.seconds = time.monotonic() - started

    # -- the loop -------------------------------------------------------------------------

    async def _serve_once(self) -> None:
        try:
            if self.client is None or self.client.is_closed:
                await self._connect_nats(keep_trying=True)
                if self.client is None:
                    return  # stopped while connecting
            if not self.store.is_open:
                await self.store.open()
            if not self.leading and not await self._lead():
                await self._pause(self.standby_interval_s)
                return
            report = await self._relay_batch()
            if report.failed:
                await self._pause(self.backoff.next(), wake_on_reconnect=True)
                return
            self.backoff.reset()
            if report.claimed < self.batch_size and not self.stopping:
                await self._wait_for_rows()
        except _INTERRUPTIONS as error:
            await self._recover(error)

    async def _recover(self, error: BaseException) -> None:
        database = isinstance(error, psycopg.Error)
        OUTBOX_FAILURES.labels("database" if database else "nats_unavailable").inc()
        logger.warning(
            "outbox.relay_interrupted",
            dependency="postgresql" if database else "nats",
            error=_describe(error),
            leading=self.leading,
        )
        if database:
            await self.store.close()  # the lock goes with the session
            self._step_down("database session lost")
        await self._pause(self.backoff.next(), wake_on_reconnect=not database)

    async def _lead(self) -> bool:
        if not await self.store.try_lead():
            if not self._said_standby:
                logger.info("outbox.relay_standby", reason="another relay holds the outbox lock")
                self._said_standby = True
            return False
        self.leading = True
        self._said_standby = False
        self.states = StationStates(self.js)
        OUTBOX_RELAY_ACTIVE.set(1)
        logger.info("outbox.relay_active")
        return True

    def _step_down(self, reason: str) -> None:
        if self.leading:
            logger.info("outbox.relay_inactive", reason=reason)
        self.leading = False
        self.states = None
        OUTBOX_RELAY_ACTIVE.set(0)
        OUTBOX_BACKLOG_AGE.set(0)

    async def _relay_batch(self) -> BatchReport:
        started = time.monotonic()
        report = BatchReport()
        await self._flush_states(report)  # left over from an earlier failure, if any
        rows = await self.store.pending(self.batch_size)
        report.claimed = len(rows)
        if rows:
            lanes: dict[str, list[PendingMessage]] = defaultdict(list)
            for row in rows:
                lanes[row.subject].append(row)
            report.stations = len(lanes)
            outcomes = await asyncio.gather(*(self._publish_lane(lane) for lane in lanes.values()))
            published: list[int] = []
            failed: list[tuple[int, str]] = []
            changed: dict[str, dict] = {}  # station → its latest message a board tile shows
            now = time.time()
            for acknowledged, failure in outcomes:
                for row, ack in acknowledged:
                    published.append(row.id)
                    OUTBOX_PUBLISHED.labels(row.kind).inc()
                    if ack.duplicate:
                        report.duplicates += 1
                    else:
                        OUTBOX_LATENCY.observe(max(0.0, now - row.created_at.timestamp()))
                    if is_mes_state(row.subject):
                        self.states.apply(
                            row.station_code, row.payload, seq=ack.seq, outbox_id=row.id
                        )
                        if row.kind in BROWSER_KINDS:
                            changed[row.station_code] = row.payload
                if failure is not None:
                    row, error = failure
                    reason = "nats_unavailable" if isinstance(error, _UNAVAILABLE) else "rejected"
                    OUTBOX_FAILURES.labels(reason).inc()
                    failed.append((row.id, _describe(error)))
                    report.errors.append(f"{row.station_code} #{row.id}: {_describe(error)}")
            report.published = len(published)
            report.failed = len(failed)
            # Marked only after the acks: a crash before this line re-publishes, and the stream
            # drops the copies by Nats-Msg-Id.
            await self.store.mark(published=published, failed=failed)
            await self._flush_states(report)
            report.browser_events = await self.browsers.send(self.store.connection, changed)
            oldest = await self.store.oldest_pending()
            report.backlog_age_s = max(0.0, time.time() - oldest.timestamp()) if oldest else 0.0
        OUTBOX_BACKLOG_AGE.set(report.backlog_age_s)
        report.seconds = time.monotonic() - started
        self.totals.add(report)
        if rows:
            log = logger.warning if report.failed else logger.debug
            log(
                "outbox.batch",
                claimed=report.claimed,
                published=report.published,
                duplicates=report.duplicates,
                failed=report.failed,
                stations=report.stations,
                seconds=round(report.seconds, 4),
                errors=report.errors[:3] or None,
            )
            if self.progress is not None:
                self.progress(report)
        return report

    async def _publish_lane(
        self, rows: list[PendingMessage]
    ) -> tuple[list[tuple[PendingMessage, api.PubAck]], tuple[PendingMessage, Exception] | None]:
        """One station's rows in order, each after the previous one's ack; stops at a failure."""
        acknowledged = []
        for row in rows:
            if not self.client.is_connected:
                # Fail without calling publish: nothing is buffered, nothing is left pending.
                return acknowledged, (row, nats.errors.ConnectionReconnectingError())
            try:
                ack = await self.js.publish(
                    row.subject,
                    orjson.dumps(row.payload),
                    timeout=self.publish_timeout_s,
                    stream=stream_for(row.subject),
                    headers={"Nats-Msg-Id": f"{MSG_ID_PREFIX}{row.id}"},
                )
                if row.subject == REGISTRY_SUBJECT:
                    await registry_state_put(self.js, row, ack.seq)
            except (TimeoutError, nats.errors.Error) as error:
                return acknowledged, (row, error)
            acknowledged.append((row, ack))
        return acknowledged, None

    async def _flush_states(self, report: BatchReport) -> None:
        if self.states is None or not (
            self.states.dirty or self.states.stale or not self.states.reconciled
        ):
            return
        if not self.client.is_connected:
            report.errors.append("station state: NATS is not connected")
            return
        if time.monotonic() < self.states.retry_after:
            return
        try:
            report.states_written += await self.states.flush()
        except (TimeoutError, nats.errors.Error) as error:
            # The rows are published; their state is folded again from the stream later.
            self.states.forget()
            self.states.retry_after = time.monotonic() + self.states.backoff.next()
            OUTBOX_FAILURES.labels("kv").inc()
            report.errors.append(f"station state: {_describe(error)}")
            logger.warning("outbox.kv_failed", error=_describe(error))
        else:
            self.states.backoff.reset()

    # -- NATS -----------------------------------------------------------------------------

    async def _connect_nats(self, *, keep_trying: bool) -> None:
        """Connect; the client retries every second until NATS answers, a stop is requested or,
        unless `keep_trying`, the connect timeout passes; then it reconnects by itself."""
        self.client = None
        unreachable_said = False
        unreachable_error = "no error reported"

        async def disconnected() -> None:
            if not self._closing:
                logger.warning("outbox.nats_disconnected")

        async def reconnected() -> None:
            logger.info("outbox.nats_reconnected")
            self._reconnected.set()

        async def error(failure: Exception) -> None:
            nonlocal unreachable_said, unreachable_error
            unreachable_error = _describe(failure)
            if self.client is None and not unreachable_said:
                logger.warning("outbox.nats_unreachable", error=_describe(failure))
                unreachable_said = True
            else:
                logger.debug("outbox.nats_error", error=_describe(failure))

        connecting = asyncio.ensure_future(
            jetstream.connect(
                "outbox-relay",
                # No buffering while disconnected: a publish fails at once and is retried in
                # order, instead of being sent later behind the relay's back.
                pending_size=0,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
        )
        stopped = asyncio.ensure_future(self._stop.wait())
        timeout = None if keep_trying else settings.NATS_CONNECT_TIMEOUT_S
        try:
            await asyncio.wait(
                [connecting, stopped], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopped.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
        if connecting.cancelled():
            if self.stopping:
                return
            raise TimeoutError(f"NATS did not answer within {timeout} s ({unreachable_error})")
        self.client = connecting.result()
        self.js = self.client.jetstream(timeout=self.publish_timeout_s)
        if self.states is not None:
            self.states = StationStates(self.js)
        logger.info("outbox.nats_connected")

    # -- waiting --------------------------------------------------------------------------

    def _events(self) -> None:
        self._stop = self._stop or asyncio.Event()
        self._reconnected = asyncio.Event()

    async def _pause(self, seconds: float, *, wake_on_reconnect: bool = False) -> None:
        # A reconnection since the failure counts: NATS is back, retry now.
        waits = [self._stop.wait()]
        if wake_on_reconnect:
            waits.append(self._reconnected.wait())
        tasks = [asyncio.ensure_future(wait) for wait in waits]
        try:
            await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        self._reconnected.clear()

    async def _wait_for_rows(self) -> None:
        """Until a NOTIFY, the poll interval, or a stop request, whichever comes first."""
        notified = asyncio.ensure_future(self.store.wait_for_rows(self.poll_interval_s))
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([notified, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not notified.done():
                notified.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await notified
        if notified.done() and not notified.cancelled() and notified.exception():
            raise notified.exception()

    # -- signals and shutdown -------------------------------------------------------------

    async def _close(self) -> None:
        self._closing = True
        if self.states is not None and self.client is not None and self.client.is_connected:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await self.states.flush()
        self._step_down("stopped")
        await self.store.close()
        if self.client is not None:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await self.client.close()
        self.client = None

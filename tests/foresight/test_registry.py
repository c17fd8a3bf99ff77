"""The model registry: artifacts verified by hash, lifecycle invariants held by the database,
every change audited, and registry events plus the scorers' KV entry published through the
real outbox relay to the real NATS."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time

import nats
import orjson
import pglast
import pytest
from django.contrib.auth.models import Group, Permission
from django.db import IntegrityError, connection, transaction
from django.urls import reverse
from onnx import TensorProto, helper

from aegis import jetstream
from foresight import artifacts, registry
from foresight.models import DefectAlert, ModelStatus, ModelVersion
from mes import roles, services
from mes.errors import InvalidInput, TransitionRefused
from mes.models import AuditEntry, OutboxMessage
from mes.relay import OutboxRelay, OutboxStore
from tests.factories import LineFactory, StationFactory, UnitFactory, UserFactory
from tests.support import REPO, ServedInThread

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 20, 6, 0, tzinfo=dt.UTC)
SHARED_DB = pytest.mark.django_db(transaction=True, serialized_rollback=True)
SPEC = {"version": 1, "signals": ["torque", "angle"], "windows": [20], "features": ["mean", "std"]}
FEATURES = ["torque.mean@20", "torque.std@20", "angle.mean@20", "angle.std@20"]


# -- helpers shared with the API tests ---------------------------------------------------------


def onnx_model(
    n_features: int = len(FEATURES),
    *,
    tag: str = "",
    input_name: str = "features",
    output_name: str = "score",
) -> bytes:
    """A tiny valid artifact: score = the largest feature value of each row."""
    node = helper.make_node("ReduceMax", [input_name], [output_name], axes=[1], keepdims=0)
    graph = helper.make_graph(
        [node],
        f"tiny{tag}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString()


def register(station, *, user=None, **overrides) -> ModelVersion:
    """A candidate with a distinct artifact (unless `onnx` is given)."""
    fields = {
        "station": station,
        "kind": "pca_t2q",
        "onnx": onnx_model(tag=secrets.token_hex(4)),
        "feature_spec": SPEC,
        "feature_mean": [43.0, 0.4, 31.0, 0.8],
        "feature_std": [1.2, 0.1, 2.0, 0.2],
        "threshold": 1.0,
        "training_start": T0,
        "training_end": T0 + dt.timedelta(hours=8),
        "metrics": {"training_rows": 28_800, "score_q999": 0.93},
        "user": user,
    }
    fields.update(overrides)
    return registry.register_candidate(**fields)


def run(coroutine):
    return asyncio.run(coroutine)


async def _provision() -> None:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        await jetstream.provision(client.jetstream(), replicas=1)
    finally:
        await client.close()


def provision() -> None:
    run(_provision())


def drain() -> OutboxRelay:
    relay = OutboxRelay()
    run(relay.drain(handle_signals=False))
    return relay


async def _messages(stream: str, subject: str) -> list[tuple[int, dict, dict]]:
    """(stream sequence, payload, headers) of every message on `subject`, in order."""
    client = await jetstream.connect("test", allow_reconnect=False)
    js = client.jetstream()
    found, sequence = [], 1
    try:
        while True:
            try:
                message = await js.get_msg(stream, seq=sequence, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return found
            found.append((message.seq, orjson.loads(message.data), dict(message.headers or {})))
            sequence = message.seq + 1
    finally:
        await client.close()


def messages(stream: str, subject: str) -> list[tuple[int, dict, dict]]:
    return run(_messages(stream, subject))


async def _kv(bucket: str, key: str) -> dict | None:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        kv = await client.jetstream().key_value(bucket)
        try:
            return orjson.loads((await kv.get(key)).value)
        except nats.js.errors.KeyNotFoundError:
            return None
    finally:
        await client.close()


def kv_entry(bucket: str, key: str) -> dict | None:
    return run(_kv(bucket, key))


def unique_station(**fields):
    return StationFactory(code=f"fs-{secrets.token_hex(4)}", **fields)


@pytest.fixture(autouse=True)
def artifact_dir(settings, tmp_path):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.FORESIGHT_ARTIFACT_DIR


@pytest.fixture
def station():
    return unique_station()


# -- artifacts -------------------------------------------------------------------------------


def test_a_candidate_is_stored_by_its_hash_and_loads_back_verified(station, artifact_dir):
    data = onnx_model(tag="stored")
    engineer = UserFactory(role="ml_engineer")

    model = register(station, onnx=data, user=engineer)

    sha = artifacts.digest(data)
    assert model.status == ModelStatus.CANDIDATE
    assert model.sha256 == sha
    assert model.artifact_path == f"{sha[:2]}/{sha}.onnx"
    assert (artifact_dir / model.artifact_path).read_bytes() == data
    assert model.load_artifact() == data
    assert model.created_by == engineer
    assert model.version.startswith(f"pca_t2q-{station.code}-")
    assert model.feature_names == FEATURES
    # Only the artifact is in the store: the temporary file was renamed into place.
    assert [p.name for p in artifact_dir.rglob("*") if p.is_file()] == [f"{sha}.onnx"]


def test_the_same_artifact_registered_twice_is_stored_once(station, artifact_dir):
    data = onnx_model(tag="twice")

    first = register(station, onnx=data)
    second = register(station, onnx=data)

    assert first.version != second.version
    assert first.artifact_path == second.artifact_path
    assert len([p for p in artifact_dir.rglob("*.onnx")]) == 1


def test_a_corrupted_artifact_is_refused_when_loaded(station, artifact_dir):
    model = register(station)
    file = artifact_dir / model.artifact_path
    damaged = bytearray(file.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    file.write_bytes(bytes(damaged))

    with pytest.raises(artifacts.ArtifactCorrupt, match="damaged or replaced"):
        model.load_artifact()
    file.unlink()
    with pytest.raises(artifacts.ArtifactMissing):
        model.load_artifact()


def test_a_damaged_file_is_replaced_when_the_same_artifact_is_written_again(artifact_dir):
    data = onnx_model(tag="repair")
    stored = artifacts.write(data)
    (artifact_dir / stored.path).write_bytes(data[:-3])

    assert artifacts.write(data) == stored
    assert artifacts.load(stored.path, stored.sha256) == data


@pytest.mark.parametrize(
    ("artifact", "problem"),
    [
        (b"not a model at all", "not an ONNX model"),
        (onnx_model(input_name="x"), "expected one input named 'features'"),
        (onnx_model(output_name="anomaly"), "no output named 'score'"),
        (onnx_model(n_features=5), "takes 5 features, the feature names list 4"),
    ],
)
def test_an_artifact_that_breaks_the_scorer_contract_is_refused(station, artifact, problem):
    with pytest.raises(InvalidInput) as refused:
        register(station, onnx=artifact)

    assert problem in " ".join(refused.value.fields["onnx"])
    assert not ModelVersion.objects.exists()


def test_a_failing_verification_of_the_stored_artifact_refuses_the_registration(station):
    data = onnx_model(tag="parity")
    seen = []

    class ParityError(Exception):
        pass

    def parity_check(stored: bytes) -> None:
        seen.append(stored)
        raise ParityError("ONNX scores differ from the Python model's")

    with pytest.raises(ParityError):
        register(station, onnx=data, verify=parity_check)

    assert seen == [data]
    assert not ModelVersion.objects.exists()
    assert not AuditEntry.objects.filter(model="foresight.modelversion").exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"kind": "PCA T2Q"}, "kind"),
        ({"version": "Has Spaces"}, "version"),
        ({"feature_mean": [1.0]}, "feature_mean"),
        ({"feature_names": ["torque.mean@20"]}, "feature_names"),
        ({"feature_spec": {"signals": ["torque"], "windows": [1]}}, "feature_spec"),
        ({"training_end": T0 - dt.timedelta(seconds=1)}, "training_end"),
        ({"threshold": float("nan")}, "threshold"),
    ],
)
def test_malformed_registrations_name_the_field(station, overrides, field):
    with pytest.raises(InvalidInput) as refused:
        register(station, **overrides)

    assert field in refused.value.fields


def test_non_finite_metrics_are_stored_as_null(station):
    model = register(station, metrics={"auc": float("nan"), "lead_s": [1.5, float("inf")]})

    model.refresh_from_db()
    assert model.metrics == {"auc": None, "lead_s": [1.5, None]}


# -- lifecycle ---------------------------------------------------------------------------------


def test_promoting_to_production_archives_the_previous_model_and_remembers_it(station):
    engineer = UserFactory(role="ml_engineer")
    first, second = register(station), register(station)
    registry.promote(version=first, to="production", user=engineer)

    registry.promote(version=second, to="production", user=engineer)

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (ModelStatus.ARCHIVED, ModelStatus.PRODUCTION)
    assert second.previous_production == first
    assert second.promoted_by == engineer
    assert first.archived_by == engineer
    assert registry.station_models(station) == {
        "station": station.code,
        "production": second.version,
        "shadow": [],
    }


def test_rollback_walks_back_through_the_production_history(station):
    first, second, third = register(station), register(station), register(station)
    for model in (first, second, third):
        registry.promote(version=model, to="production")

    assert registry.rollback(station=station) == second
    assert registry.rollback(station=station) == first
    with pytest.raises(TransitionRefused, match="replaced no earlier production model"):
        registry.rollback(station=station)

    statuses = dict(ModelVersion.objects.values_list("version", "status"))
    assert statuses == {
        first.version: ModelStatus.PRODUCTION,
        second.version: ModelStatus.ARCHIVED,
        third.version: ModelStatus.ARCHIVED,
    }
    first.refresh_from_db()
    assert first.archived_at is None


def test_rollback_of_a_station_without_production_model_is_refused(station):
    register(station)

    with pytest.raises(TransitionRefused, match="no production model"):
        registry.rollback(station=station)


def test_shadow_models_run_beside_production_and_archiving_production_leaves_the_baseline(
    station,
):
    production, shadow_a, shadow_b = register(station), register(station), register(station)
    registry.promote(version=production, to="production")
    registry.promote(version=shadow_b, to="shadow")
    registry.promote(version=shadow_a, to="shadow")

    assert registry.station_models(station)["shadow"] == sorted(
        [shadow_a.version, shadow_b.version]
    )
    registry.archive(version=production)

    assert registry.station_models(station) == {
        "station": station.code,
        "production": None,
        "shadow": sorted([shadow_a.version, shadow_b.version]),
    }


@pytest.mark.parametrize(
    ("history", "to", "refusal"),
    [
        (["shadow"], "shadow", "is shadow; it becomes shadow only from candidate"),
        (["production"], "production", "is production; it becomes production only from"),
        (["production"], "shadow", "is production; it becomes shadow only from candidate"),
        (["archive"], "production", "is archived"),
    ],
)
def test_lifecycle_steps_out_of_order_are_refused(station, history, to, refusal):
    model = register(station)
    for step in history:
        if step == "archive":
            registry.archive(version=model)
        else:
            registry.promote(version=model, to=step)

    with pytest.raises(TransitionRefused, match=refusal):
        registry.promote(version=model, to=to)


def test_promoting_to_an_unknown_status_names_the_field(station):
    with pytest.raises(InvalidInput) as refused:
        registry.promote(version=register(station), to="archived")

    assert "to" in refused.value.fields


def test_every_registry_change_is_audited_with_before_and_after(station):
    engineer = UserFactory(role="ml_engineer")
    first, second = register(station, user=engineer), register(station)
    registry.promote(version=first, to="production", user=engineer)
    registry.promote(version=second, to="production", user=engineer)
    registry.rollback(station=station, user=engineer)

    entries = list(
        AuditEntry.objects.filter(model="foresight.modelversion")
        .order_by("id")
        .values_list("object_id", "action", "before__status", "after__status")
    )
    assert entries == [
        (str(first.pk), "create", None, "candidate"),
        (str(second.pk), "create", None, "candidate"),
        (str(first.pk), "update", "candidate", "production"),
        (str(first.pk), "update", "production", "archived"),
        (str(second.pk), "update", "candidate", "production"),
        (str(second.pk), "update", "production", "archived"),
        (str(first.pk), "update", "archived", "production"),
    ]


# -- invariants in the database ----------------------------------------------------------------


def test_the_database_refuses_a_second_production_model_at_a_station(station):
    first, second = register(station), register(station)
    registry.promote(version=first, to="production")

    with (
        pytest.raises(IntegrityError, match="foresight_one_production_per_station"),
        transaction.atomic(),
    ):
        ModelVersion.objects.filter(pk=second.pk).update(
            status=ModelStatus.PRODUCTION, promoted_at=T0
        )
    # Another station may have its own.
    other = register(unique_station())
    registry.promote(version=other, to="production")


@pytest.mark.parametrize(
    ("fields", "constraint"),
    [
        ({"status": "retired"}, "foresight_model_status_(valid|timestamps)"),
        ({"status": ModelStatus.SHADOW}, "foresight_model_status_timestamps"),
        ({"sha256": "not-a-hash"}, "foresight_model_sha256_format"),
    ],
)
def test_the_database_refuses_model_rows_that_break_the_lifecycle(station, fields, constraint):
    model = register(station)

    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        ModelVersion.objects.filter(pk=model.pk).update(**fields)


@pytest.mark.parametrize(
    ("fields", "constraint"),
    [
        ({"feedback": "true_defect"}, "foresight_alert_feedback_only_when_resolved"),
        (
            {"status": "resolved", "acknowledged_at": T0, "resolved_at": T0},
            "foresight_alert_feedback_only_when_resolved",
        ),
        ({"status": "acknowledged"}, "foresight_alert_status_timestamps"),
        ({"source": "model"}, "foresight_alert_source_matches_model"),
    ],
)
def test_the_database_refuses_alert_rows_that_break_their_invariants(station, fields, constraint):
    alert = registry.raise_alert(station=station, ts=T0, score=2.0, threshold=1.0)

    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        DefectAlert.objects.filter(pk=alert.pk).update(**fields)


# -- roles -------------------------------------------------------------------------------------


def test_the_roles_hold_their_foresight_permissions_after_migrating():
    def held(role: str) -> set[str]:
        group = Group.objects.get(name=role)
        return {
            f"{app}.{codename}"
            for app, codename in group.permissions.filter(
                content_type__app_label="foresight"
            ).values_list("content_type__app_label", "codename")
        }

    views = {"foresight.view_modelversion", "foresight.view_defectalert", "foresight.view_score"}
    assert held("ml_engineer") == views | {
        "foresight.promote_modelversion",
        "foresight.rollback_modelversion",
    }
    assert held("operator") == views | {"foresight.acknowledge_defectalert"}
    assert (
        held("supervisor")
        == held("quality_engineer")
        == views
        | {
            "foresight.acknowledge_defectalert",
            "foresight.resolve_defectalert",
        }
    )
    assert held("integrator") == views
    assert held("admin") == views | {
        "foresight.promote_modelversion",
        "foresight.rollback_modelversion",
        "foresight.acknowledge_defectalert",
        "foresight.resolve_defectalert",
    }


def test_syncing_roles_skips_apps_not_migrated_yet_but_not_a_misspelt_permission(monkeypatch):
    table = {"operator": ["mes.view_station", "later.view_thing"]}
    monkeypatch.setattr(roles, "ROLE_PERMISSIONS", table)

    roles.sync_roles(Group, Permission)

    assert list(
        Group.objects.get(name="operator").permissions.values_list("codename", flat=True)
    ) == ["view_station"]
    monkeypatch.setattr(roles, "ROLE_PERMISSIONS", {"operator": ["mes.view_stationn"]})
    with pytest.raises(Permission.DoesNotExist, match=r"mes\.view_stationn"):
        roles.sync_roles(Group, Permission)


# -- TimescaleDB -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    importlib.import_module(
        "foresight.migrations.0002_score_hypertable"
    ).SCORE_HYPERTABLE_STATEMENTS,
)
def test_every_score_hypertable_statement_parses_as_postgresql(statement):
    # The embedded server has no TimescaleDB; PostgreSQL's own parser still checks the syntax.
    assert len(pglast.parse_sql(statement)) == 1


# -- publication through the real relay and NATS ------------------------------------------------


def registry_events(station) -> list[tuple[int, dict, dict]]:
    return [
        (seq, payload, headers)
        for seq, payload, headers in messages("FORESIGHT_MODELS", "aegis.foresight.models")
        if payload["station"] == station.code
    ]


@SHARED_DB
def test_registry_events_and_the_scorers_kv_entry_are_published_by_the_relay(station):
    provision()
    engineer = UserFactory(role="ml_engineer")
    first, second, shadow = register(station), register(station), register(station)
    registry.promote(version=first, to="production", user=engineer)
    registry.promote(version=shadow, to="shadow", user=engineer)
    registry.promote(version=second, to="production", user=engineer)
    registry.rollback(station=station, user=engineer)

    relay = drain()

    events = registry_events(station)
    rows = list(
        OutboxMessage.objects.filter(subject="aegis.foresight.models", station_code=station.code)
    )
    assert relay.totals.failed == 0
    assert [payload for _, payload, _ in events] == [row.payload for row in rows]
    assert [headers["Nats-Msg-Id"] for _, _, headers in events] == [
        f"aegis-outbox-{row.id}" for row in rows
    ]
    assert [(p["kind"], p["version"], p["replaced"]) for _, p, _ in events] == [
        ("model.promoted", first.version, None),
        ("model.promoted", shadow.version, None),
        ("model.promoted", second.version, first.version),
        ("model.rolled_back", first.version, second.version),
    ]
    assert events[-1][1]["by"] == engineer.username
    entry = kv_entry("foresight_models", station.code)
    assert entry["production"] == first.version
    assert entry["shadow"] == [shadow.version]
    assert entry["seq"] == events[-1][0]
    assert entry["outbox_id"] == rows[-1].id


@SHARED_DB
def test_a_relay_crash_after_publishing_registry_events_duplicates_nothing(station, monkeypatch):
    provision()
    first, second = register(station), register(station)
    registry.promote(version=first, to="production")
    registry.promote(version=second, to="shadow")

    class Crash(Exception):
        pass

    def crash(self, **marks):
        raise Crash("killed after the acks, before marking the rows")

    with monkeypatch.context() as patch:
        patch.setattr(OutboxStore, "mark", crash)
        with pytest.raises(Crash):
            drain()
    relay = drain()

    events = registry_events(station)
    assert len(events) == 2
    assert relay.totals.duplicates >= 2
    assert OutboxMessage.objects.filter(published_at__isnull=True).count() == 0
    entry = kv_entry("foresight_models", station.code)
    assert (entry["production"], entry["shadow"], entry["seq"]) == (
        first.version,
        [second.version],
        events[-1][0],
    )


@SHARED_DB
def test_mes_state_and_registry_events_share_the_relay_without_mixing_streams():
    provision()
    station = unique_station(line=LineFactory())
    unit = UnitFactory()
    services.unit_arrive(unit=unit, station=station, at=T0)
    registry.promote(version=register(station), to="production")
    services.unit_leave(unit=unit, station=station, at=T0 + dt.timedelta(minutes=2))

    drain()

    mes_messages = messages(jetstream.MES_STATE_STREAM, f"aegis.mes.state.{station.code}")
    assert [payload["kind"] for _, payload, _ in mes_messages] == ["visit.started", "visit.ended"]
    assert len(registry_events(station)) == 1
    # The station's MES state folded only its own stream's messages.
    state = kv_entry(jetstream.MES_STATION_STATE_BUCKET, station.code)
    assert state["seq"] == mes_messages[-1][0]
    assert state["visit"]["left_at"] is not None


def test_the_artifact_store_defaults_to_a_directory_under_the_data_directory(tmp_path):
    # A fresh process without the variable, whatever this environment sets.
    environment = {k: v for k, v in os.environ.items() if k != "AEGIS_FORESIGHT_ARTIFACT_DIR"}
    environment["AEGIS_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings;"
            "print(settings.FORESIGHT_ARTIFACT_DIR)",
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == str((tmp_path / "foresight" / "artifacts").resolve())


# -- admin ---------------------------------------------------------------------------------------


def _admin_action(client, model, action: str, objects):
    url = reverse(f"admin:foresight_{model._meta.model_name}_changelist")
    return client.post(
        url, {"action": action, "_selected_action": [obj.pk for obj in objects]}, follow=True
    )


def test_admin_actions_promote_and_roll_back_through_the_registry(admin_client, admin_user):
    station = unique_station()
    first, second = register(station), register(station)

    for model in (first, second):
        response = _admin_action(admin_client, ModelVersion, "promote_to_production", [model])
        assert response.status_code == 200
    response = _admin_action(admin_client, ModelVersion, "roll_back_station", [second])

    assert "1 station(s) rolled back" in response.content.decode()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (ModelStatus.PRODUCTION, ModelStatus.ARCHIVED)
    sources = set(
        AuditEntry.objects.filter(model="foresight.modelversion", action="update").values_list(
            "source", "actor"
        )
    )
    assert sources == {("admin", admin_user.pk)}
    refused = _admin_action(admin_client, ModelVersion, "promote_to_shadow", [second])
    assert "1 refused" in refused.content.decode()


def test_admin_pages_of_a_model_show_its_features_and_recent_scores(admin_client):
    station = unique_station()
    model = register(station)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO foresight_score (station_id, ts, seq, model_version_id, score, shadow) "
            "VALUES (%s, now(), 0, %s, 0.42, false)",
            [station.pk, model.pk],
        )

    changelist = admin_client.get(reverse("admin:foresight_modelversion_changelist"))
    page = admin_client.get(reverse("admin:foresight_modelversion_change", args=[model.pk]))

    assert changelist.status_code == 200
    assert model.version in changelist.content.decode()
    assert page.status_code == 200
    text = page.content.decode()
    assert "1 samples" in text
    assert "torque.mean@20: 43.0 ± 1.2" in text
    assert admin_client.get(reverse("admin:foresight_modelversion_add")).status_code == 403


class KvClock:
    """Watches the scorers' KV entry of a station and notes when each production version
    first appears there (as a scorer watching the bucket would see it)."""

    def __init__(self, station_code: str) -> None:
        self.station_code = station_code
        self.arrivals: dict[str, float] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = await jetstream.connect("test-kv-clock", allow_reconnect=False)
        kv = await client.jetstream().key_value("foresight_models")
        watcher = await kv.watch(self.station_code)
        self._ready.set()

        async def note() -> None:
            async for entry in watcher:
                if entry is not None and entry.value:
                    version = orjson.loads(entry.value)["production"]
                    self.arrivals.setdefault(version, time.time())

        noting = asyncio.ensure_future(note())
        await self._stop.wait()
        noting.cancel()
        await watcher.stop()
        await client.close()

    def __enter__(self) -> KvClock:
        self.thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc_info) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


@pytest.mark.slow
@SHARED_DB
def test_a_promotion_reaches_the_scorers_kv_entry_well_within_a_second(station):
    provision()
    models = [register(station) for _ in range(30)]
    committed: dict[str, float] = {}
    with ServedInThread(OutboxRelay(poll_interval_s=30.0)), KvClock(station.code) as clock:
        for model in models:
            registry.promote(version=model, to="production")
            committed[model.version] = time.time()
            time.sleep(0.05)
        deadline = time.monotonic() + 20
        while not committed.keys() <= clock.arrivals.keys() and time.monotonic() < deadline:
            time.sleep(0.05)

    assert committed.keys() <= clock.arrivals.keys(), "every promotion reaches the KV entry"
    latencies = sorted(clock.arrivals[version] - when for version, when in committed.items())
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(
        f"\npromotion commit → KV foresight_models: p50 {statistics.median(latencies) * 1000:.1f}"
        f" ms, p95 {p95 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms over {len(latencies)}"
    )
    # Only LISTEN/NOTIFY can wake a relay polling every 30 s: the hot-swap budget is 1 s.
    assert latencies[-1] < 1.0

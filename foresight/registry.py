"""Writes of Foresight: the model registry's lifecycle and defect alerts.

Each service is one transaction: the change, its audit entry (mes.audit) and its NATS message
(through the MES outbox, published by the relay after commit) commit together or not at all.

Lifecycle of a station's models: `register_candidate` stores the artifact and records a
candidate; `promote` makes it a shadow (scored beside production, no alerts) or the production
model; promoting a new production model archives the one it replaces and remembers it, so
`rollback` can bring it back (archiving the current one). `archive` retires any model; archiving
the production model leaves the station on the statistical baseline. Changes of one station
are serialised by a lock on its row; the database allows one production model per station.

Every lifecycle change publishes a registry event on `aegis.foresight.models`; the relay also
writes the station's production and shadow versions to the KV bucket `foresight_models`
(key: station code), which the scorers watch to swap models.

Alerts: `raise_alert` (the scorer) records an alert once per triggering sample, with the unit,
VIN, work order and firmware the MES had at the station at that instant, and publishes it on
`aegis.defect.alerts.<station>`. People `acknowledge` it and `resolve` it with feedback (true
defect or false alarm), which training reads as a label.

SPC (foresight/spc.py, docs/spc.md): `control_limits_from_baseline` computes a station signal's
control limits from stored telemetry and `control_limits_activate` makes them the active ones
(replacing the previous, audited, with a registry event so the scorers reload them at once);
`control_limits_in_use` is what the scorer's `SpcMonitor` charts against, and
`raise_spc_violation` turns a rule that fired into a defect alert (`source` "spc", one per
sample, signal, chart and rule) through `raise_alert`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from aegis.realtime import PLANT_GROUP, broadcast_on_commit
from foresight import artifacts, spc
from foresight.models import (
    KIND_PATTERN,
    SPC_RULES,
    VERSION_PATTERN,
    AlertFeedback,
    AlertSource,
    AlertStatus,
    ControlLimits,
    DefectAlert,
    ModelStatus,
    ModelVersion,
    SpcChart,
    SpcChartName,
)
from mes.audit import audit_record, snapshot
from mes.errors import Conflict, InvalidInput, TransitionRefused
from mes.models import AuditAction, FirmwareFlash, Station, StationVisit, Unit, WorkOrder
from mes.outbox import ALERT_SUBJECT_PREFIX, REGISTRY_SUBJECT, outbox_enqueue

INPUT_NAME = "features"
VERSION_KEY = "foresight_modelversion_version_key"
OUTPUT_NAME = "score"

# target status → statuses a model may be promoted from
PROMOTIONS: dict[str, tuple[str, ...]] = {
    ModelStatus.SHADOW: (ModelStatus.CANDIDATE,),
    ModelStatus.PRODUCTION: (ModelStatus.CANDIDATE, ModelStatus.SHADOW),
}


def _person(user):
    return user if getattr(user, "is_authenticated", False) else None


def _json_safe(value: object) -> object:
    """JSON as PostgreSQL stores it: NaN and infinities (missing signals, z of a constant
    feature) become null instead of making the whole row unstorable."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def _finite(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be a number", fields={name: ["not a number"]}) from None
    if not math.isfinite(number):
        raise InvalidInput(f"{name} must be finite", fields={name: ["not finite"]})
    return number


# -- the registry -----------------------------------------------------------------------------


def _check_onnx(onnx_bytes: bytes, feature_count: int) -> None:
    """The artifact honours the contract the scorer relies on: one float input `features` of
    width F, an output `score`."""
    import onnx  # the web tier imports this module; only registration needs onnx

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as error:  # noqa: BLE001 - protobuf raises several unrelated types
        raise InvalidInput(
            f"the artifact is not an ONNX model ({type(error).__name__})",
            fields={"onnx": ["not an ONNX model"]},
        ) from None
    graph = model.graph
    initializers = {initializer.name for initializer in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    problems = []
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f"expected one input named {INPUT_NAME!r}, got {[i.name for i in inputs]}")
    else:
        tensor = inputs[0].type.tensor_type
        dims = tensor.shape.dim
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"input {INPUT_NAME!r} must be float32")
        if len(dims) != 2:
            problems.append(f"input {INPUT_NAME!r} must be [None, F], got rank {len(dims)}")
        elif dims[1].HasField("dim_value") and dims[1].dim_value != feature_count:
            problems.append(
                f"input {INPUT_NAME!r} takes {dims[1].dim_value} features, "
                f"the feature names list {feature_count}"
            )
    if OUTPUT_NAME not in [output.name for output in graph.output]:
        problems.append(f"no output named {OUTPUT_NAME!r}")
    if problems:
        raise InvalidInput("; ".join(problems), fields={"onnx": problems})


def _new_version(kind: str, station: Station) -> str:
    stamp = timezone.now().strftime("%Y%m%dT%H%M")
    return f"{kind}-{station.code.lower()}-{stamp}-{secrets.token_hex(2)}"


@transaction.atomic
def register_candidate(
    *,
    station: Station,
    kind: str,
    onnx: bytes,
    feature_spec: dict,
    feature_mean: Sequence[float],
    feature_std: Sequence[float],
    threshold: float,
    training_start: dt.datetime,
    training_end: dt.datetime,
    metrics: dict | None = None,
    notes: str = "",
    version: str | None = None,
    feature_names: Sequence[str] | None = None,
    verify: Callable[[bytes], None] | None = None,
    user=None,
) -> ModelVersion:
    """Store the ONNX artifact (content-addressed, fsynced) and record a candidate model.

    The model's input features are the spec's (`feature_names`, when given, must be those);
    `feature_mean` and `feature_std` hold one value per feature. `verify` (e.g. the detectors'
    ONNX parity check on held-out data) gets the artifact as read back from the store; whatever
    it raises refuses the registration. The artifact file is written before the row: a refused
    or rolled-back registration may leave an unused file behind, never a row without its file.
    """
    errors: dict[str, list[str]] = {}
    if not isinstance(kind, str) or not _matches(KIND_PATTERN, kind):
        errors["kind"] = ["lower-case letters, digits and '_', starting with a letter"]
    if version is not None and not _matches(VERSION_PATTERN, version):
        errors["version"] = ["1-100 letters, digits, '.', '-' or '_'"]
    feature_spec, names = _spec(feature_spec, errors)
    if feature_names is not None and list(feature_names) != names:
        errors["feature_names"] = ["not the names of the feature spec, in its order"]
    if len(feature_mean) != len(names) or len(feature_std) != len(names):
        errors["feature_mean"] = [
            f"{len(names)} names, {len(feature_mean)} means and {len(feature_std)} deviations"
        ]
    if timezone.is_naive(training_start) or timezone.is_naive(training_end):
        errors["training_start"] = ["timestamps must carry a time zone"]
    elif training_end < training_start:
        errors["training_end"] = ["must not be before training_start"]
    if errors:
        raise InvalidInput("model not registered", fields=errors)
    threshold = _finite("threshold", threshold)
    _check_onnx(onnx, len(names))
    stored = artifacts.write(onnx)
    if verify is not None:
        # What is checked is what scorers will load: the stored file, read back and hashed.
        verify(artifacts.load(stored.path, stored.sha256))
    model = None
    for _attempt in range(3):
        candidate_version = version or _new_version(kind, station)
        try:
            with transaction.atomic():
                model = ModelVersion.objects.create(
                    version=candidate_version,
                    station=station,
                    kind=kind,
                    feature_spec=_json_safe(feature_spec),
                    feature_names=names,
                    feature_mean=_json_safe([float(value) for value in feature_mean]),
                    feature_std=_json_safe([float(value) for value in feature_std]),
                    threshold=threshold,
                    training_start=training_start,
                    training_end=training_end,
                    metrics=_json_safe(metrics or {}),
                    artifact_path=stored.path,
                    sha256=stored.sha256,
                    notes=notes,
                    created_by=_person(user),
                )
        except IntegrityError as error:
            constraint = _constraint(error)
            if constraint != VERSION_KEY:
                raise Conflict(
                    f"model {candidate_version} not registered: refused by the database",
                    fields={"constraint": [constraint or "unknown"]},
                ) from error
            if version is not None:
                raise Conflict(
                    f"model {candidate_version} not registered: it exists already",
                    fields={"version": ["already registered"]},
                ) from error
            continue  # a generated name collided: draw another
        break
    if model is None:
        raise Conflict("no free model version name", fields={"version": ["collided"]})
    audit_record(action=AuditAction.CREATE, instance=model)
    return model


def _spec(feature_spec: dict, errors: dict[str, list[str]]) -> tuple[dict, list[str]]:
    """The spec with its defaults spelt out, and the model's input columns: its feature names
    in the order the scorer computes them (foresight/features.py)."""
    from foresight.features import FeatureSpec, FeatureSpecError

    try:
        spec = FeatureSpec.from_json(feature_spec)
    except FeatureSpecError as error:
        errors["feature_spec"] = [str(error)]
        return feature_spec, []
    return spec.to_json(), spec.names


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


def _constraint(error: IntegrityError) -> str | None:
    return getattr(getattr(error.__cause__, "diag", None), "constraint_name", None)


def _lock_station(station_id: int) -> Station:
    """Serialise registry changes of one station. FOR NO KEY UPDATE: rows referencing the
    station (visits, alerts) can still be inserted meanwhile."""
    return Station.objects.select_for_update(no_key=True).get(pk=station_id)


def station_models(station: Station) -> dict:
    """What a station's scorers run: its production version and its shadow versions."""
    rows = ModelVersion.objects.filter(
        station=station, status__in=[ModelStatus.PRODUCTION, ModelStatus.SHADOW]
    ).values_list("version", "status")
    production = [version for version, status in rows if status == ModelStatus.PRODUCTION]
    return {
        "station": station.code,
        "production": production[0] if production else None,
        "shadow": sorted(version for version, status in rows if status == ModelStatus.SHADOW),
    }


def _registry_event(
    *,
    station: Station,
    kind: str,
    model: ModelVersion,
    at: dt.datetime,
    user=None,
    replaced: ModelVersion | None = None,
) -> None:
    person = _person(user)
    outbox_enqueue(
        station=station,
        kind=kind,
        subject=REGISTRY_SUBJECT,
        payload={
            "version": model.version,
            "model_id": model.pk,
            "status": model.status,
            "replaced": replaced.version if replaced else None,
            "by": person.get_username() if person else None,
            "at": at.isoformat(),
            "models": {**station_models(station), "updated_at": at.isoformat()},
        },
    )


def _archive(model: ModelVersion, *, at: dt.datetime, user) -> None:
    before = snapshot(model)
    model.status = ModelStatus.ARCHIVED
    model.archived_at = at
    model.archived_by = _person(user)
    model.save(update_fields=["status", "archived_at", "archived_by"])
    audit_record(action=AuditAction.UPDATE, instance=model, before=before)


@transaction.atomic
def promote(*, version: ModelVersion, to: str, user=None) -> ModelVersion:
    """Make a model the station's shadow or production model. A new production model archives
    the previous one and records it as `previous_production` for `rollback`."""
    if to not in PROMOTIONS:
        raise InvalidInput(
            f"a model is promoted to {' or '.join(PROMOTIONS)}, not {to!r}",
            fields={"to": [f"one of {', '.join(PROMOTIONS)}"]},
        )
    station = _lock_station(version.station_id)
    model = ModelVersion.objects.get(pk=version.pk)
    if model.status not in PROMOTIONS[to]:
        raise TransitionRefused(
            f"model {model.version} is {model.status}; it becomes {to} only from "
            f"{' or '.join(PROMOTIONS[to])}",
            fields={"status": [model.status]},
        )
    before = snapshot(model)
    at = timezone.now()
    replaced = None
    if to == ModelStatus.PRODUCTION:
        replaced = ModelVersion.objects.filter(
            station=station, status=ModelStatus.PRODUCTION
        ).first()
        if replaced is not None:
            _archive(replaced, at=at, user=user)
        model.previous_production = replaced
    model.status = to
    model.promoted_at = at
    model.promoted_by = _person(user)
    model.save(update_fields=["status", "promoted_at", "promoted_by", "previous_production"])
    audit_record(action=AuditAction.UPDATE, instance=model, before=before)
    _registry_event(
        station=station, kind="model.promoted", model=model, at=at, user=user, replaced=replaced
    )
    _adopt(version, model)
    return model


@transaction.atomic
def rollback(*, station: Station, user=None) -> ModelVersion:
    """The production model before the current one comes back; the current one is archived.
    Repeating it walks further back through the station's production history."""
    station = _lock_station(station.pk)
    current = ModelVersion.objects.filter(station=station, status=ModelStatus.PRODUCTION).first()
    if current is None:
        raise TransitionRefused(
            f"station {station.code} has no production model to roll back",
            fields={"station": ["no production model"]},
        )
    if current.previous_production_id is None:
        raise TransitionRefused(
            f"model {current.version} replaced no earlier production model; archive it to "
            f"fall back to the statistical baseline",
            fields={"previous_production": ["none"]},
        )
    restored = ModelVersion.objects.get(pk=current.previous_production_id)
    at = timezone.now()
    _archive(current, at=at, user=user)
    before = snapshot(restored)
    restored.status = ModelStatus.PRODUCTION
    restored.promoted_at = at
    restored.promoted_by = _person(user)
    restored.archived_at = None
    restored.archived_by = None
    restored.save(
        update_fields=["status", "promoted_at", "promoted_by", "archived_at", "archived_by"]
    )
    audit_record(action=AuditAction.UPDATE, instance=restored, before=before)
    _registry_event(
        station=station,
        kind="model.rolled_back",
        model=restored,
        at=at,
        user=user,
        replaced=current,
    )
    return restored


@transaction.atomic
def archive(*, version: ModelVersion, user=None) -> ModelVersion:
    """Retire a model. Archiving the production model leaves the station on the baseline."""
    station = _lock_station(version.station_id)
    model = ModelVersion.objects.get(pk=version.pk)
    if model.status == ModelStatus.ARCHIVED:
        raise TransitionRefused(
            f"model {model.version} is archived already", fields={"status": [model.status]}
        )
    at = timezone.now()
    _archive(model, at=at, user=user)
    _registry_event(station=station, kind="model.archived", model=model, at=at, user=user)
    _adopt(version, model)
    return model


def _adopt(target: ModelVersion, source: ModelVersion) -> None:
    """The caller's instance shows the committed state too."""
    if target is not source:
        for field in ModelVersion._meta.concrete_fields:
            setattr(target, field.attname, getattr(source, field.attname))


# -- alerts -----------------------------------------------------------------------------------


def mes_context(station: Station, at: dt.datetime) -> dict:
    """The unit at the station at `at` (point in time), its VIN, work order and firmware."""
    visit = (
        StationVisit.objects.filter(station=station, arrived_at__lte=at)
        .filter(Q(left_at__isnull=True) | Q(left_at__gt=at))
        .select_related("unit__work_order")
        .first()
    )
    if visit is None:
        return {"unit": None, "vin": "", "work_order": None, "firmware": {}}
    unit = visit.unit
    return {
        "unit": unit,
        "vin": unit.vin or "",
        "work_order": unit.work_order,
        "firmware": unit_firmware(unit, at),
    }


def unit_firmware(unit: Unit, at: dt.datetime) -> dict[str, str]:
    """Component → version flashed last at or before `at`."""
    firmware: dict[str, str] = {}
    flashes = FirmwareFlash.objects.filter(unit=unit, flashed_at__lte=at).order_by("flashed_at")
    for component, version in flashes.values_list("component", "version"):
        firmware[component] = version
    return firmware


def _number(value: object) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _signal_values(triggering: dict) -> dict[str, float | None]:
    """Signal name → value; a missing or non-numeric value (NaN before a signal's first
    sample) is null."""
    return {str(signal): _number(value) for signal, value in triggering.items()}


def _explanation_rows(explanation: list[dict]) -> list[dict]:
    """The explanation in its documented shape: feature, its signal, value, z, share (numbers
    or null)."""
    return [
        {
            "feature": str(row.get("feature", "")),
            "signal": str(row["signal"]) if row.get("signal") is not None else None,
            "value": _number(row.get("value")),
            "z": _number(row.get("z")),
            "share": _number(row.get("share")),
        }
        for row in explanation
        if isinstance(row, dict)
    ]


def alert_payload(alert: DefectAlert) -> dict:
    """The alert as published on NATS and pushed to browsers: the original Aegis core
    (`station_id`, `anomaly_score`, `trigger_torque_nm`, `timestamp` in epoch ms) and the rest."""
    torque = (alert.triggering or {}).get("torque")
    return {
        "alert": alert.pk,
        "station_id": alert.station.code,
        "anomaly_score": alert.score,
        "trigger_torque_nm": torque,
        "timestamp": int(alert.ts.timestamp() * 1000),
        "ts": alert.ts.isoformat(),
        "seq": alert.seq,
        "line": alert.station.line_id,
        "unit": alert.unit.serial if alert.unit else None,
        "vin": alert.vin or None,
        "work_order": alert.work_order.external_id if alert.work_order else None,
        "firmware": alert.firmware,
        "model_version": alert.model_version.version if alert.model_version else None,
        "source": alert.source,
        "threshold": alert.threshold,
        "triggering": alert.triggering,
        "explanation": alert.explanation,
        "status": alert.status,
        "raised_at": alert.created_at.isoformat(),
        "rule": alert.rule,
        "chart": alert.chart,
        "signal": alert.signal,
        "spc": _spc_details(alert) if alert.source == AlertSource.SPC else None,
    }


def _spc_details(alert: DefectAlert) -> dict:
    """What an SPC alert's rule saw: the rule by number and name, the point and the lines of
    the chart it fired on."""
    limits = alert.control_limits
    number = int(alert.rule.removeprefix("nelson_"))
    spread = alert.chart in (SpcChartName.R, SpcChartName.MR)
    centre, ucl, lcl = (
        (limits.range_centre, limits.range_ucl, limits.range_lcl)
        if spread
        else (limits.centre, limits.ucl, limits.lcl)
    )
    return {
        "rule": number,
        "rule_name": spc.RULE_NAMES[number],
        "chart": alert.chart,
        "signal": alert.signal,
        "subgroup_size": limits.subgroup_size,
        "value": alert.score,
        "line": alert.threshold,
        "centre": centre,
        "ucl": ucl,
        "lcl": lcl,
        "sigma": limits.sigma,
        "limits": limits.pk,
        "baseline_start": limits.baseline_start.isoformat(),
        "baseline_end": limits.baseline_end.isoformat(),
    }


@transaction.atomic
def raise_alert(
    *,
    station: Station,
    ts: dt.datetime,
    seq: int = 0,
    score: float,
    threshold: float,
    model_version: ModelVersion | None = None,
    triggering: dict | None = None,
    explanation: list[dict] | None = None,
    unit: Unit | None = None,
    vin: str | None = None,
    work_order: WorkOrder | None = None,
    firmware: dict | None = None,
    source: str | None = None,
    rule: str | None = None,
    chart: str | None = None,
    signal: str | None = None,
    control_limits: ControlLimits | None = None,
) -> DefectAlert:
    """Record the alert of a triggering sample and queue its publication. Raising it again
    for the same sample (a redelivered message, a restarted scorer) returns the first alert
    and publishes nothing more. The unit, VIN, work order and firmware are the MES's at the
    station at `ts` unless the caller knows them.

    `source` is "model" with a model version, "baseline" without, and "spc" for an SPC rule,
    which names the `rule` (nelson_1 … nelson_8), the `chart`, the `signal` and the
    `control_limits`; an SPC alert is one per sample, signal, chart and rule. Left out, the
    source follows from what is given."""
    if timezone.is_naive(ts):
        raise InvalidInput("timestamps must carry a time zone", fields={"ts": ["naive datetime"]})
    score = _finite("score", score)
    threshold = _finite("threshold", threshold)
    source = _alert_source(
        source,
        model_version=model_version,
        rule=rule,
        chart=chart,
        signal=signal,
        control_limits=control_limits,
    )
    existing = DefectAlert.objects.filter(
        station=station, ts=ts, seq=seq, signal=signal, chart=chart, rule=rule
    ).first()
    if existing is not None:
        return existing
    if unit is None:
        context = mes_context(station, ts)
    else:
        context = {
            "unit": unit,
            "vin": unit.vin or "",
            "work_order": unit.work_order,
            "firmware": unit_firmware(unit, ts),
        }
    try:
        with transaction.atomic():
            alert = DefectAlert.objects.create(
                station=station,
                ts=ts,
                seq=seq,
                unit=context["unit"],
                vin=vin if vin is not None else context["vin"],
                work_order=work_order or context["work_order"],
                firmware=_json_safe(firmware if firmware is not None else context["firmware"]),
                score=score,
                threshold=threshold,
                model_version=model_version,
                source=source,
                triggering=_signal_values(triggering or {}),
                explanation=_explanation_rows(explanation or []),
                rule=rule,
                chart=chart,
                signal=signal,
                control_limits=control_limits,
            )
    except IntegrityError as error:
        if _constraint(error) == "foresight_alert_once_per_sample":  # a concurrent raise
            return DefectAlert.objects.get(
                station=station, ts=ts, seq=seq, signal=signal, chart=chart, rule=rule
            )
        raise
    audit_record(action=AuditAction.CREATE, instance=alert)
    outbox_enqueue(
        station=station,
        kind="alert.raised",
        subject=f"{ALERT_SUBJECT_PREFIX}.{station.code}",
        payload=alert_payload(alert),
    )
    return alert


def _alert_source(
    source: str | None,
    *,
    model_version: ModelVersion | None,
    rule: str | None,
    chart: str | None,
    signal: str | None,
    control_limits: ControlLimits | None,
) -> str:
    """The alert's source, checked against what names it (the constraints hold it as well)."""
    spc_fields = {"rule": rule, "chart": chart, "signal": signal, "control_limits": control_limits}
    if source is None:
        if any(value is not None for value in spc_fields.values()):
            source = AlertSource.SPC
        else:
            source = AlertSource.MODEL if model_version is not None else AlertSource.BASELINE
    if source not in AlertSource.values:
        raise InvalidInput(
            f"an alert's source is {', '.join(AlertSource.values)}, not {source!r}",
            fields={"source": [f"one of {', '.join(AlertSource.values)}"]},
        )
    errors: dict[str, list[str]] = {}
    if source == AlertSource.SPC:
        if rule not in SPC_RULES:
            errors["rule"] = ["nelson_1 … nelson_8"]
        if chart not in SpcChartName.values:
            errors["chart"] = [f"one of {', '.join(SpcChartName.values)}"]
        if not signal:
            errors["signal"] = ["the charted signal"]
        if control_limits is None:
            errors["control_limits"] = ["the limits the rule judged against"]
        if model_version is not None:
            errors["model_version"] = ["an SPC alert has no model"]
    else:
        errors.update(
            {name: ["only for SPC alerts"] for name, value in spc_fields.items() if value}
        )
        if (source == AlertSource.MODEL) != (model_version is not None):
            errors["model_version"] = ["a model alert has its model, a baseline alert none"]
    if errors:
        raise InvalidInput(f"not a valid {source} alert", fields=errors)
    return source


def _noted(existing: str, note: str) -> str:
    """Notes add up: the acknowledgement's note stays when the resolution adds its own."""
    return "\n".join(text for text in (existing.strip(), note.strip()) if text)


def _locked_alert(alert: DefectAlert) -> DefectAlert:
    return (
        DefectAlert.objects.select_for_update(of=("self",))
        .select_related("station", "unit", "work_order", "model_version")
        .get(pk=alert.pk)
    )


@transaction.atomic
def acknowledge(*, alert: DefectAlert, user=None, note: str = "") -> DefectAlert:
    """Someone has seen the alert and is on it."""
    current = _locked_alert(alert)
    if current.status != AlertStatus.OPEN:
        raise TransitionRefused(
            f"alert {current.pk} is {current.status}; only an open alert is acknowledged",
            fields={"status": [current.status]},
        )
    before = snapshot(current)
    current.status = AlertStatus.ACKNOWLEDGED
    current.acknowledged_at = timezone.now()
    current.acknowledged_by = _person(user)
    current.note = _noted(current.note, note)
    current.save(update_fields=["status", "acknowledged_at", "acknowledged_by", "note"])
    audit_record(action=AuditAction.UPDATE, instance=current, before=before)
    _tell_browsers(current)
    return current


@transaction.atomic
def resolve(*, alert: DefectAlert, feedback: str, note: str = "", user=None) -> DefectAlert:
    """Close the alert saying whether the unit really was defective: the training label.
    Resolving an open alert acknowledges it at the same instant."""
    if feedback not in AlertFeedback.values:
        raise InvalidInput(
            f"feedback is {' or '.join(AlertFeedback.values)}",
            fields={"feedback": [f"one of {', '.join(AlertFeedback.values)}"]},
        )
    current = _locked_alert(alert)
    if current.status == AlertStatus.RESOLVED:
        raise TransitionRefused(
            f"alert {current.pk} is resolved already ({current.feedback})",
            fields={"status": [current.status]},
        )
    before = snapshot(current)
    now = timezone.now()
    person = _person(user)
    if current.acknowledged_at is None:
        current.acknowledged_at, current.acknowledged_by = now, person
    current.status = AlertStatus.RESOLVED
    current.feedback = feedback
    current.resolved_at, current.resolved_by = now, person
    current.note = _noted(current.note, note)
    current.save(
        update_fields=[
            "status",
            "feedback",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "resolved_by",
            "note",
        ]
    )
    audit_record(action=AuditAction.UPDATE, instance=current, before=before)
    _tell_browsers(current)
    return current


def _tell_browsers(alert: DefectAlert) -> None:
    """After the commit, the alert with its new status to its station, line and plant: open
    alert pages refresh the row, boards their counts (the event type of a raised alert)."""
    payload = alert_payload(alert)
    for group in (f"station.{alert.station.code}", f"line.{alert.station.line_id}", PLANT_GROUP):
        broadcast_on_commit("defect.alert", payload, group=group)


# -- SPC: control limits and violations --------------------------------------------------------


def control_limits_in_use(station_ids: Iterable[int] | None = None) -> list[spc.Limits]:
    """The active limits (of some stations, or all) as the scorer's `SpcMonitor` takes them."""
    rows = ControlLimits.objects.filter(active=True).order_by("station_id", "signal")
    if station_ids is not None:
        rows = rows.filter(station_id__in=list(station_ids))
    return [_limits_of(row) for row in rows]


def _limits_of(row: ControlLimits) -> spc.Limits:
    return spc.Limits(
        subgroup_size=row.subgroup_size,
        centre=row.centre,
        sigma=row.sigma,
        ucl=row.ucl,
        lcl=row.lcl,
        range_centre=row.range_centre,
        range_ucl=row.range_ucl,
        range_lcl=row.range_lcl,
        baseline_samples=row.baseline_samples,
        baseline_points=row.baseline_points,
        rules=spc.parse_rules(row.rules),
        interval=row.interval,
        id=row.pk,
        station_id=row.station_id,
        signal=row.signal,
    )


def baseline_values(
    *,
    station: Station,
    signal: str,
    start: dt.datetime,
    end: dt.datetime,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The signal's stored samples in the range, in (ts, seq) order (samples without it left
    out); `progress(read, total)` hears of each chunk read."""
    from foresight import training  # the web tier imports this module; only baselines read

    training.check_range(start, end)
    total = training.range_sample_count(station_id=station.pk, start=start, end=end)
    parts, read = [], 0
    for chunk in training.telemetry_chunks(
        station_id=station.pk, start=start, end=end, signals=[signal]
    ):
        column = chunk.values[signal]
        parts.append(column[np.isfinite(column)])
        read += len(chunk)
        if progress is not None:
            progress(read, total)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def control_limits_from_baseline(
    *,
    station: Station,
    signal: str,
    start: dt.datetime,
    end: dt.datetime,
    subgroup_size: int = 1,
    interval: int = 0,
    rules: str = "all",
    user=None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ControlLimits, bool]:
    """Compute a station signal's limits from its stored telemetry over [start, end] (a period
    judged normal) and make them the active ones: subgroups of `subgroup_size` samples (1:
    individuals), one starting every `interval` samples (0: back to back), alerts for `rules`
    ("1,2,5,6" or "all"). Returns the limits and whether they are new (the same baseline and
    settings computed again change nothing)."""
    try:
        chosen = spc.parse_rules(rules)
    except spc.SpcError as error:
        raise InvalidInput(str(error), fields={"rules": ["numbers 1 to 8, or all"]}) from None
    if not isinstance(subgroup_size, int) or not (
        subgroup_size == 1 or subgroup_size in spc.CONSTANTS
    ):
        raise InvalidInput(
            f"the subgroup size is 1 (I-MR) or 2 to {spc.MAX_SUBGROUP} (X̄-R), not {subgroup_size}",
            fields={"subgroup_size": [f"1 to {spc.MAX_SUBGROUP}"]},
        )
    if not isinstance(interval, int) or interval < 0 or (0 < interval < subgroup_size):
        raise InvalidInput(
            f"a subgroup of {subgroup_size} starts every {subgroup_size} or more samples, not "
            f"every {interval}",
            fields={"interval": [f"0 (back to back) or at least {subgroup_size}"]},
        )
    values = baseline_values(
        station=station, signal=signal, start=start, end=end, progress=progress
    )
    if values.shape[0] == 0:
        raise InvalidInput(
            f"station {station.code} has no numeric {signal!r} samples from {start.isoformat()} "
            f"to {end.isoformat()}",
            fields={"signal": ["no samples in the range"]},
        )
    try:
        limits = replace(spc.compute_limits(values, subgroup_size, interval=interval), rules=chosen)
    except spc.SpcError as error:
        raise InvalidInput(str(error), fields={"start": [str(error)]}) from None
    return control_limits_activate(
        station=station,
        signal=signal,
        limits=limits,
        baseline_start=start,
        baseline_end=end,
        baseline_points_outside=spc.points_outside(values, limits),
        user=user,
    )


_LIMIT_FIELDS = (
    "subgroup_size",
    "centre",
    "sigma",
    "ucl",
    "lcl",
    "range_centre",
    "range_ucl",
    "range_lcl",
    "baseline_samples",
    "baseline_points",
)


@transaction.atomic
def control_limits_activate(
    *,
    station: Station,
    signal: str,
    limits: spc.Limits,
    baseline_start: dt.datetime,
    baseline_end: dt.datetime,
    baseline_points_outside: int = 0,
    user=None,
) -> tuple[ControlLimits, bool]:
    """Store limits as the station signal's active ones, replacing the previous (kept,
    inactive). Returns the active limits and whether they are new: the same limits from the
    same baseline are already active and nothing changes. The scorers reload them at once."""
    if timezone.is_naive(baseline_start) or timezone.is_naive(baseline_end):
        raise InvalidInput(
            "timestamps must carry a time zone", fields={"baseline_start": ["naive datetime"]}
        )
    station = _lock_station(station.pk)
    current = ControlLimits.objects.filter(station=station, signal=signal, active=True).first()
    wanted = {name: getattr(limits, name) for name in _LIMIT_FIELDS}
    wanted["rules"] = spc.rules_text(limits.rules)
    wanted["interval"] = limits.every
    if (
        current is not None
        and all(getattr(current, name) == value for name, value in wanted.items())
        and (current.baseline_start, current.baseline_end) == (baseline_start, baseline_end)
    ):
        return current, False
    at = timezone.now()
    if current is not None:
        _deactivate(current, at=at)
    try:
        with transaction.atomic():
            row = ControlLimits.objects.create(
                station=station,
                signal=signal,
                chart=SpcChart.I_MR if limits.subgroup_size == 1 else SpcChart.XBAR_R,
                baseline_start=baseline_start,
                baseline_end=baseline_end,
                baseline_points_outside=baseline_points_outside,
                computed_by=_person(user),
                computed_at=at,
                **wanted,
            )
    except IntegrityError as error:
        raise InvalidInput(
            f"limits refused by the database ({_constraint(error)})",
            fields={"limits": [str(_constraint(error))]},
        ) from None
    audit_record(action=AuditAction.CREATE, instance=row)
    _spc_event(
        station=station, kind="spc.limits_activated", row=row, at=at, user=user, replaced=current
    )
    return row, True


@transaction.atomic
def control_limits_deactivate(*, station: Station, signal: str, user=None) -> ControlLimits:
    """Stop charting a station's signal: its active limits become inactive (kept, with the
    alerts they raised)."""
    station = _lock_station(station.pk)
    current = ControlLimits.objects.filter(station=station, signal=signal, active=True).first()
    if current is None:
        raise TransitionRefused(
            f"station {station.code} has no active control limits for {signal!r}",
            fields={"signal": ["no active limits"]},
        )
    at = timezone.now()
    _deactivate(current, at=at)
    _spc_event(station=station, kind="spc.limits_deactivated", row=current, at=at, user=user)
    return current


def _deactivate(row: ControlLimits, *, at: dt.datetime) -> None:
    before = snapshot(row)
    row.active = False
    row.deactivated_at = at
    row.save(update_fields=["active", "deactivated_at"])
    audit_record(action=AuditAction.UPDATE, instance=row, before=before)


def _spc_event(
    *,
    station: Station,
    kind: str,
    row: ControlLimits,
    at: dt.datetime,
    user=None,
    replaced: ControlLimits | None = None,
) -> None:
    """A registry event: the relay rewrites the station's KV entry in `foresight_models`, and
    the scorers watching it reload the station's models and limits."""
    person = _person(user)
    outbox_enqueue(
        station=station,
        kind=kind,
        subject=REGISTRY_SUBJECT,
        payload={
            "signal": row.signal,
            "limits": row.pk,
            "active": row.active,
            "chart": row.chart,
            "subgroup_size": row.subgroup_size,
            "interval": row.interval,
            "rules": row.rules,
            "centre": row.centre,
            "ucl": row.ucl,
            "lcl": row.lcl,
            "replaced": replaced.pk if replaced else None,
            "by": person.get_username() if person else None,
            "at": at.isoformat(),
            "models": {**station_models(station), "updated_at": at.isoformat()},
        },
    )


def raise_spc_violation(*, violation: spc.Violation) -> DefectAlert:
    """The defect alert of an SPC rule that fired (once per sample, signal, chart and rule):
    `score` is the charted point, `threshold` the line the rule tested."""
    station = Station.objects.get(pk=violation.station_id)
    limits = ControlLimits.objects.get(pk=violation.limits_id)
    spread = violation.chart in (SpcChartName.R, SpcChartName.MR)
    centre, ucl = (limits.range_centre, limits.range_ucl) if spread else (limits.centre, limits.ucl)
    sigma = (ucl - centre) / 3  # one sigma of the charted point: a zone
    return raise_alert(
        station=station,
        ts=dt.datetime.fromtimestamp(violation.ts_ms / 1000, dt.UTC),
        seq=violation.seq,
        score=violation.value,
        threshold=violation.line,
        triggering=violation.triggering,
        explanation=[
            {
                "feature": f"{violation.signal}.{violation.chart}@{violation.subgroup_size}",
                "signal": violation.signal,
                "value": violation.value,
                "z": (violation.value - violation.centre) / sigma if sigma > 0 else None,
                "share": 1.0,
            }
        ],
        source=AlertSource.SPC,
        rule=violation.rule_code,
        chart=violation.chart,
        signal=violation.signal,
        control_limits=limits,
    )

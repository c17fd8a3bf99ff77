"""Foresight's records: the model registry, the score time series and defect alerts.

- `ModelVersion`: one trained detector of one station — its ONNX artifact (file store, sha256),
  feature spec, training statistics and threshold — moving candidate → shadow → production →
  archived. The database allows at most one production model per station.
- `Score`: one row per scored sample and model (production, shadow or the baseline), written
  with COPY by the scorer; plain ids, no foreign keys, as for telemetry samples.
- `ControlLimits`: the SPC control limits of one station's signal (X̄-R or I-MR) computed from
  a baseline period; at most one set per station and signal is active (foresight/spc.py).
- `DefectAlert`: one alert per triggering sample, with what the MES knew about the unit there,
  the explanation of the score, and what a person said about it (the training label). An alert
  is raised by a model, by the statistical baseline, or by an SPC rule (`source` "spc", with the
  rule, chart, signal and limits that fired; one alert per sample and rule).

Writes go through `foresight.registry`; its invariants are constraints here as well.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce

from foresight import artifacts
from mes.models import Station, Unit, WorkOrder

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
version_validator = RegexValidator(
    VERSION_PATTERN,
    "Versions are 1-100 letters, digits, '.', '-' or '_' (they appear in URLs).",
)
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

# A score row of the statistical baseline (no model) carries this model version id.
BASELINE_MODEL_VERSION_ID = 0


class RealField(models.FloatField):
    """A 4-byte float (PostgreSQL `real`): scores need ~7 digits, and the score table is the
    widest-growing one after telemetry."""

    def db_type(self, connection) -> str:
        return "real"


class ModelStatus(models.TextChoices):
    CANDIDATE = "candidate"
    SHADOW = "shadow"
    PRODUCTION = "production"
    ARCHIVED = "archived"


class ModelVersion(models.Model):
    """A trained detector of one station and where it stands in its lifecycle."""

    version = models.CharField(max_length=100, unique=True, validators=[version_validator])
    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="model_versions")
    kind = models.CharField(
        max_length=32,
        validators=[RegexValidator(KIND_PATTERN, "a detector kind such as pca_t2q")],
        help_text="Detector kind: pca_t2q, isolation_forest, supervised, …",
    )
    feature_spec = models.JSONField(help_text="The feature spec the model was trained on.")
    feature_names = models.JSONField(
        default=list, help_text="Names of the model's input features, in input order."
    )
    feature_mean = models.JSONField(
        default=list, help_text="Training mean per feature (NaN filling, explanations, drift)."
    )
    feature_std = models.JSONField(default=list, help_text="Training standard deviation.")
    threshold = models.FloatField(help_text="Scores at or above it are anomalous.")
    training_start = models.DateTimeField()
    training_end = models.DateTimeField(help_text="Inclusive, like training_start.")
    metrics = models.JSONField(default=dict, blank=True)
    artifact_path = models.CharField(
        max_length=500, help_text="ONNX file, relative to FORESIGHT_ARTIFACT_DIR."
    )
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the ONNX bytes (hex).")
    status = models.CharField(
        max_length=16, choices=ModelStatus.choices, default=ModelStatus.CANDIDATE
    )
    notes = models.TextField(blank=True)
    previous_production = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The production model this one replaced: what a rollback brings back.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    promoted_at = models.DateTimeField(
        null=True, blank=True, help_text="When it last became shadow or production."
    )
    archived_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("promote_modelversion", "Can promote and archive Foresight models"),
            ("rollback_modelversion", "Can roll back a station's production model"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ModelStatus.values), name="foresight_model_status_valid"
            ),
            # The scorer loads "the" production model of a station: never two.
            models.UniqueConstraint(
                fields=["station"],
                condition=Q(status=ModelStatus.PRODUCTION),
                name="foresight_one_production_per_station",
            ),
            models.CheckConstraint(
                condition=Q(version__regex=VERSION_PATTERN), name="foresight_model_version_format"
            ),
            models.CheckConstraint(
                condition=Q(kind__regex=KIND_PATTERN), name="foresight_model_kind_format"
            ),
            models.CheckConstraint(
                condition=Q(sha256__regex=SHA256_PATTERN), name="foresight_model_sha256_format"
            ),
            models.CheckConstraint(
                condition=Q(training_end__gte=F("training_start")),
                name="foresight_model_training_range_ordered",
            ),
            # Each status carries the timestamps of how it got there.
            models.CheckConstraint(
                condition=(
                    Q(status=ModelStatus.CANDIDATE, archived_at__isnull=True)
                    | Q(
                        status__in=[ModelStatus.SHADOW, ModelStatus.PRODUCTION],
                        promoted_at__isnull=False,
                        archived_at__isnull=True,
                    )
                    | Q(status=ModelStatus.ARCHIVED, archived_at__isnull=False)
                ),
                name="foresight_model_status_timestamps",
            ),
            models.CheckConstraint(
                condition=~Q(previous_production=F("id")),
                name="foresight_model_does_not_replace_itself",
            ),
        ]
        indexes = [
            models.Index(fields=["station", "status"], name="foresight_model_station_status")
        ]

    def __str__(self) -> str:
        return self.version

    def load_artifact(self) -> bytes:
        """The ONNX bytes, verified against the recorded sha256 (ArtifactCorrupt if not)."""
        return artifacts.load(self.artifact_path, self.sha256)


class Score(models.Model):
    """One sample of one station scored by one model (or by the baseline, model id 0).

    Written with COPY at the sample rate: plain ids, no foreign keys. The key makes a
    redelivered sample harmless and lets shadow models score the same samples.
    """

    pk = models.CompositePrimaryKey("station_id", "ts", "seq", "model_version_id")
    station_id = models.IntegerField()
    ts = models.DateTimeField()
    seq = models.IntegerField(default=0)
    model_version_id = models.BigIntegerField(
        help_text=f"ModelVersion id; {BASELINE_MODEL_VERSION_ID} for the statistical baseline."
    )
    score = RealField()
    shadow = models.BooleanField(default=False, help_text="Scored by a shadow model.")

    class Meta:
        db_table = "foresight_score"

    def __str__(self) -> str:
        return f"station {self.station_id} @ {self.ts.isoformat()} #{self.seq}: {self.score:.3f}"


class SpcChart(models.TextChoices):
    """A pair of control charts: the location chart and the spread chart."""

    XBAR_R = "xbar_r", "X̄-R (subgroup means and ranges)"
    I_MR = "i_mr", "I-MR (individuals and moving ranges)"


class ControlLimits(models.Model):
    """The SPC control limits of one station's signal, from a baseline period.

    `centre`, `ucl`, `lcl` belong to the location chart (X̄ or I), `range_*` to the spread chart
    (R or MR). Stored limits are never edited: new limits for a station's signal are a new row
    that replaces the active one (which keeps its history and the alerts it raised).
    """

    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="control_limits")
    signal = models.CharField(max_length=64)
    chart = models.CharField(max_length=8, choices=SpcChart.choices)
    subgroup_size = models.PositiveSmallIntegerField(
        help_text="Consecutive samples per subgroup: 1 for individuals (I-MR), 2-10 for X̄-R."
    )
    interval = models.PositiveIntegerField(
        help_text="A subgroup (an individual) starts every this many samples of the signal; "
        "equal to the subgroup size, subgroups are back to back."
    )
    centre = models.FloatField(help_text="Centre line of the X̄ (or I) chart.")
    sigma = models.FloatField(
        help_text="Process standard deviation estimated from the ranges: R̄/d2 (or MR̄/1.128)."
    )
    ucl = models.FloatField(help_text="Upper control limit of the X̄ (or I) chart.")
    lcl = models.FloatField(help_text="Lower control limit of the X̄ (or I) chart.")
    range_centre = models.FloatField(help_text="R̄ (or MR̄): centre line of the spread chart.")
    range_ucl = models.FloatField(help_text="Upper control limit of the R (or MR) chart.")
    range_lcl = models.FloatField(help_text="Lower control limit of the R (or MR) chart.")
    baseline_start = models.DateTimeField()
    baseline_end = models.DateTimeField(help_text="Inclusive, like baseline_start.")
    baseline_samples = models.PositiveIntegerField(help_text="Samples of the signal used.")
    baseline_points = models.PositiveIntegerField(help_text="Subgroups (or individuals) charted.")
    baseline_points_outside = models.PositiveIntegerField(
        default=0,
        help_text="Baseline points beyond these limits on either chart: a baseline that was not "
        "in control itself.",
    )
    rules = models.CharField(
        max_length=15,
        default="1,2,3,4,5,6,7,8",
        help_text="The Nelson rules that raise alerts, e.g. 1,2,5,6 (rule 1 on both charts).",
    )
    active = models.BooleanField(default=True)
    computed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    computed_at = models.DateTimeField()
    deactivated_at = models.DateTimeField(
        null=True, blank=True, help_text="When newer limits replaced these or SPC was stopped."
    )

    class Meta:
        verbose_name = "control limits"
        verbose_name_plural = "control limits"
        ordering = ["-computed_at", "-id"]
        constraints = [
            # The live scorer charts a signal against "the" active limits: never two.
            models.UniqueConstraint(
                fields=["station", "signal"],
                condition=Q(active=True),
                name="foresight_spc_one_active_per_signal",
            ),
            models.CheckConstraint(
                condition=Q(chart=SpcChart.I_MR, subgroup_size=1)
                | Q(chart=SpcChart.XBAR_R, subgroup_size__gte=2, subgroup_size__lte=10),
                name="foresight_spc_chart_matches_subgroup",
            ),
            models.CheckConstraint(
                condition=Q(sigma__gt=0, lcl__lt=F("centre"), centre__lt=F("ucl"))
                & Q(range_lcl__gte=0, range_lcl__lte=F("range_centre"))
                & Q(range_centre__lt=F("range_ucl")),
                name="foresight_spc_limits_ordered",
            ),
            models.CheckConstraint(
                condition=Q(baseline_end__gte=F("baseline_start")),
                name="foresight_spc_baseline_range_ordered",
            ),
            models.CheckConstraint(
                condition=Q(rules__regex=r"^[1-8](,[1-8]){0,7}$"),
                name="foresight_spc_rules_format",
            ),
            models.CheckConstraint(
                condition=Q(interval__gte=F("subgroup_size")),
                name="foresight_spc_interval_holds_a_subgroup",
            ),
            models.CheckConstraint(
                condition=Q(active=True, deactivated_at__isnull=True)
                | Q(active=False, deactivated_at__isnull=False),
                name="foresight_spc_deactivated_when_inactive",
            ),
        ]
        indexes = [
            models.Index(fields=["station", "signal", "-computed_at"], name="foresight_spc_history")
        ]

    def __str__(self) -> str:
        kind = "I-MR" if self.subgroup_size == 1 else f"X̄-R n={self.subgroup_size}"
        return f"{self.station.code}.{self.signal} {kind} #{self.pk}"


class AlertStatus(models.TextChoices):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class AlertFeedback(models.TextChoices):
    TRUE_DEFECT = "true_defect", "True defect"
    FALSE_ALARM = "false_alarm", "False alarm"


class AlertSource(models.TextChoices):
    MODEL = "model"
    BASELINE = "baseline"
    SPC = "spc", "SPC"


class SpcChartName(models.TextChoices):
    """The chart an SPC rule fired on."""

    XBAR = "xbar", "X̄"
    R = "r", "R"
    I = "i", "I"  # noqa: E741 - the individuals chart is called I
    MR = "mr", "MR"


SPC_RULES = [f"nelson_{rule}" for rule in range(1, 9)]


class DefectAlert(models.Model):
    """A predicted defect: the score of one sample crossed the threshold (one per episode), or
    an SPC rule fired on a station's signal (`source` "spc": `score` is the charted point,
    `threshold` the line the rule tested)."""

    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="defect_alerts")
    ts = models.DateTimeField(help_text="Timestamp of the triggering sample.")
    seq = models.IntegerField(default=0)
    unit = models.ForeignKey(
        Unit, on_delete=models.PROTECT, null=True, blank=True, related_name="defect_alerts"
    )
    vin = models.CharField(max_length=17, blank=True)
    work_order = models.ForeignKey(
        WorkOrder, on_delete=models.PROTECT, null=True, blank=True, related_name="defect_alerts"
    )
    firmware = models.JSONField(
        default=dict, blank=True, help_text='{"EPS": "4.2.1", …} of the unit at ts'
    )
    score = models.FloatField()
    threshold = models.FloatField()
    model_version = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="alerts",
        help_text="Empty when the statistical baseline raised it.",
    )
    source = models.CharField(max_length=16, choices=AlertSource.choices)
    triggering = models.JSONField(
        default=dict, blank=True, help_text="Signal values of the triggering sample."
    )
    explanation = models.JSONField(
        default=list,
        blank=True,
        help_text='What drove the score: [{"feature", "value", "z", "share"}, …]',
    )
    # SPC alerts only (NULL otherwise): what fired, where, against which limits.
    rule = models.CharField(  # noqa: DJ001 - NULL: not an SPC alert
        max_length=16, null=True, blank=True, help_text="SPC: nelson_1 … nelson_8."
    )
    chart = models.CharField(  # noqa: DJ001 - NULL: not an SPC alert
        max_length=8, null=True, blank=True, choices=SpcChartName.choices
    )
    signal = models.CharField(  # noqa: DJ001 - NULL: not an SPC alert
        max_length=64, null=True, blank=True, help_text="SPC: the charted signal."
    )
    control_limits = models.ForeignKey(
        ControlLimits,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="alerts",
        help_text="SPC: the limits the point was judged against.",
    )
    status = models.CharField(max_length=16, choices=AlertStatus.choices, default=AlertStatus.OPEN)
    feedback = models.CharField(max_length=16, choices=AlertFeedback.choices, blank=True)
    note = models.TextField(blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-ts", "-id"]
        permissions = [
            ("acknowledge_defectalert", "Can acknowledge defect alerts"),
            ("resolve_defectalert", "Can resolve defect alerts with feedback"),
        ]
        constraints = [
            # A sample raises at most one alert, however often the scorer sees it again; an SPC
            # alert is one per sample, signal, chart and rule (rules fire independently).
            models.UniqueConstraint(
                F("station"),
                F("ts"),
                F("seq"),
                Coalesce("signal", Value("")),
                Coalesce("chart", Value("")),
                Coalesce("rule", Value("")),
                name="foresight_alert_once_per_sample",
            ),
            models.CheckConstraint(
                condition=Q(status__in=AlertStatus.values), name="foresight_alert_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(source=AlertSource.MODEL, model_version__isnull=False)
                | Q(source__in=[AlertSource.BASELINE, AlertSource.SPC], model_version__isnull=True),
                name="foresight_alert_source_matches_model",
            ),
            models.CheckConstraint(
                # IS NOT NULL spelt out: `rule IN (…)` of a NULL rule is NULL, which a CHECK
                # lets through.
                condition=Q(
                    source=AlertSource.SPC,
                    rule__isnull=False,
                    rule__in=SPC_RULES,
                    chart__isnull=False,
                    chart__in=SpcChartName.values,
                    signal__isnull=False,
                    control_limits__isnull=False,
                )
                | (
                    ~Q(source=AlertSource.SPC)
                    & Q(
                        rule__isnull=True,
                        chart__isnull=True,
                        signal__isnull=True,
                        control_limits__isnull=True,
                    )
                ),
                name="foresight_alert_spc_names_its_rule",
            ),
            # Feedback is the resolution: only a resolved alert has it, and it must have it.
            models.CheckConstraint(
                condition=Q(status=AlertStatus.RESOLVED, feedback__in=AlertFeedback.values)
                | (~Q(status=AlertStatus.RESOLVED) & Q(feedback="")),
                name="foresight_alert_feedback_only_when_resolved",
            ),
            models.CheckConstraint(
                condition=(
                    Q(
                        status=AlertStatus.OPEN,
                        acknowledged_at__isnull=True,
                        resolved_at__isnull=True,
                    )
                    | Q(
                        status=AlertStatus.ACKNOWLEDGED,
                        acknowledged_at__isnull=False,
                        resolved_at__isnull=True,
                    )
                    | Q(
                        status=AlertStatus.RESOLVED,
                        acknowledged_at__isnull=False,
                        resolved_at__isnull=False,
                    )
                ),
                name="foresight_alert_status_timestamps",
            ),
        ]
        indexes = [
            # The alert list: newest first, by status (the board's open alerts), by station
            # (the unique constraint's index), or the whole plant.
            models.Index(F("status"), F("ts").desc(), name="foresight_alert_status_ts"),
            models.Index(F("ts").desc(), name="foresight_alert_ts"),
        ]

    def __str__(self) -> str:
        return f"alert {self.pk} {self.station.code} @ {self.ts:%Y-%m-%d %H:%M:%S}"

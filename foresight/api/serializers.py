"""Shapes of Foresight's API: read representations, and one small input per operation
(mes/api/serializers.py conventions: references by code, instants with their offset)."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from rest_framework import serializers

from foresight.models import AlertFeedback, DefectAlert, ModelStatus, ModelVersion

# At most this many buckets per series in one score chart, and the widest range it covers.
MAX_POINTS = 5000
DEFAULT_POINTS = 500
DEFAULT_RANGE = dt.timedelta(hours=1)
MAX_RANGE = dt.timedelta(days=7)


def _slug(field: str, **kwargs) -> serializers.SlugRelatedField:
    return serializers.SlugRelatedField(slug_field=field, read_only=True, **kwargs)


# -- reads ------------------------------------------------------------------------------------


class ModelVersionSerializer(serializers.ModelSerializer):
    station = _slug("code", help_text="Station code.")
    line = serializers.IntegerField(source="station.line_id", read_only=True, help_text="Line id.")
    previous_production = _slug(
        "version",
        allow_null=True,
        help_text="The production model this one replaced (what a rollback brings back).",
    )
    created_by = _slug("username", allow_null=True)
    promoted_by = _slug("username", allow_null=True)
    archived_by = _slug("username", allow_null=True)
    feature_names = serializers.ListField(child=serializers.CharField(), read_only=True)
    feature_mean = serializers.ListField(
        child=serializers.FloatField(allow_null=True), read_only=True
    )
    feature_std = serializers.ListField(
        child=serializers.FloatField(allow_null=True), read_only=True
    )
    feature_spec = serializers.DictField(read_only=True)
    metrics = serializers.DictField(read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "version",
            "station",
            "line",
            "kind",
            "status",
            "threshold",
            "feature_spec",
            "feature_names",
            "feature_mean",
            "feature_std",
            "training_start",
            "training_end",
            "metrics",
            "sha256",
            "notes",
            "previous_production",
            "created_by",
            "created_at",
            "promoted_by",
            "promoted_at",
            "archived_by",
            "archived_at",
        ]


class ExplanationSerializer(serializers.Serializer):
    feature = serializers.CharField()
    signal = serializers.CharField(allow_null=True, help_text="The signal the feature is of.")
    value = serializers.FloatField(allow_null=True)
    z = serializers.FloatField(allow_null=True)
    share = serializers.FloatField(allow_null=True, help_text="Share of the total squared z.")


class DefectAlertSerializer(serializers.ModelSerializer):
    station = _slug("code", help_text="Station code.")
    line = serializers.IntegerField(source="station.line_id", read_only=True, help_text="Line id.")
    unit = _slug("serial", allow_null=True, help_text="Unit serial.")
    work_order = _slug("external_id", allow_null=True, help_text="Work order external id.")
    model_version = _slug("version", allow_null=True, help_text="Empty for the baseline.")
    firmware = serializers.DictField(child=serializers.CharField(), read_only=True)
    triggering = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        read_only=True,
        help_text="Signal values of the triggering sample (torque included).",
    )
    explanation = ExplanationSerializer(many=True, read_only=True)
    acknowledged_by = _slug("username", allow_null=True)
    resolved_by = _slug("username", allow_null=True)

    class Meta:
        model = DefectAlert
        fields = [
            "id",
            "station",
            "line",
            "ts",
            "seq",
            "unit",
            "vin",
            "work_order",
            "firmware",
            "score",
            "threshold",
            "model_version",
            "source",
            "rule",
            "chart",
            "signal",
            "control_limits",
            "triggering",
            "explanation",
            "status",
            "feedback",
            "note",
            "acknowledged_by",
            "acknowledged_at",
            "resolved_by",
            "resolved_at",
            "created_at",
        ]


class ScorePointSerializer(serializers.Serializer):
    ts = serializers.DateTimeField(help_text="Start of the bucket.")
    max = serializers.FloatField(allow_null=True, help_text="Highest score in the bucket.")
    mean = serializers.FloatField(allow_null=True)
    samples = serializers.IntegerField(help_text="Scored samples in the bucket.")


class ScoreSeriesSerializer(serializers.Serializer):
    model_version = serializers.CharField(allow_null=True, help_text="Empty for the baseline.")
    source = serializers.CharField(help_text="model or baseline.")
    shadow = serializers.BooleanField()
    threshold = serializers.FloatField(allow_null=True)
    points = ScorePointSerializer(many=True)


class ScoreChartSerializer(serializers.Serializer):
    station = serializers.CharField(help_text="Station code.")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    bucket_seconds = serializers.FloatField(help_text="Width of each bucket.")
    series = ScoreSeriesSerializer(many=True)


# -- inputs -----------------------------------------------------------------------------------


class NoInputSerializer(serializers.Serializer):
    """The operation takes no body (`{}`)."""


class PromoteInputSerializer(serializers.Serializer):
    to = serializers.ChoiceField(
        choices=[ModelStatus.SHADOW, ModelStatus.PRODUCTION],
        help_text="shadow: scored beside production, raises no alerts; production: the "
        "station's model (the one it replaces is archived).",
    )


class AcknowledgeInputSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=2000, required=False, default="", allow_blank=True)


class ResolveInputSerializer(serializers.Serializer):
    feedback = serializers.ChoiceField(
        choices=AlertFeedback.choices,
        help_text="Was the unit really defective? This is the label training learns from.",
    )
    note = serializers.CharField(max_length=2000, required=False, default="", allow_blank=True)


class ScoreQuerySerializer(serializers.Serializer):
    start = serializers.DateTimeField(
        required=False, help_text="From (inclusive); one hour before `end` when left out."
    )
    end = serializers.DateTimeField(required=False, help_text="Until (inclusive); now by default.")
    model = serializers.CharField(
        max_length=100, required=False, help_text="Only this model version's scores."
    )
    limit = serializers.IntegerField(
        min_value=10,
        max_value=MAX_POINTS,
        default=DEFAULT_POINTS,
        help_text=f"At most this many buckets per series (10 to {MAX_POINTS}).",
    )

    def validate(self, attrs: dict) -> dict:
        end = attrs.get("end") or timezone.now()
        start = attrs.get("start") or end - DEFAULT_RANGE
        if end < start:
            raise serializers.ValidationError({"end": ["must not be before start"]})
        if end - start > MAX_RANGE:
            raise serializers.ValidationError(
                {"start": [f"at most {MAX_RANGE.days} days from start to end"]}
            )
        return {**attrs, "start": start, "end": end}

"""Shapes of the telemetry API: the query of each chart endpoint and what it answers
(mes/api/serializers.py conventions: references by code, instants with their offset)."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from rest_framework import serializers

from foresight.api.serializers import ScoreChartSerializer
from mes.api.serializers import InstantField
from telemetry import selectors

DEFAULT_RANGE = dt.timedelta(hours=1)
SIGNAL_NAME = r"^[a-z][a-z0-9_]{0,63}$"


# -- queries ----------------------------------------------------------------------------------


class SeriesQuerySerializer(serializers.Serializer):
    start = InstantField(
        required=False, help_text="From (inclusive), with its time zone; an hour before `end`."
    )
    end = InstantField(required=False, help_text="Until (inclusive), with its time zone; now.")
    signal = serializers.ListField(
        child=serializers.RegexField(SIGNAL_NAME, max_length=64),
        source="signals",
        required=False,
        max_length=selectors.MAX_SIGNALS,
        help_text="Signals to return (repeat the parameter); the station's declared signals "
        "when left out.",
    )
    points = serializers.IntegerField(
        min_value=2,
        max_value=selectors.MAX_POINTS,
        default=selectors.DEFAULT_POINTS,
        help_text=f"At most this many buckets per signal (2 to {selectors.MAX_POINTS}): the "
        "chart's width in pixels.",
    )

    def validate(self, attrs: dict) -> dict:
        end = attrs.get("end") or timezone.now()
        try:
            start = attrs.get("start") or end - DEFAULT_RANGE
        except OverflowError:
            raise serializers.ValidationError({"end": ["too early"]}) from None
        if end < start:
            raise serializers.ValidationError({"end": ["must not be before start"]})
        if end - start > selectors.MAX_RANGE:
            raise serializers.ValidationError(
                {"end": [f"at most {selectors.MAX_RANGE.days} days after start"]}
            )
        return {**attrs, "start": start, "end": end}


class TraceQuerySerializer(serializers.Serializer):
    vin = serializers.CharField(
        max_length=64, help_text="The unit's VIN, or its serial for a unit without one."
    )
    at = InstantField(required=False, help_text="The instant asked about; now when left out.")
    window = serializers.ChoiceField(
        choices=selectors.TRACE_WINDOWS,
        default=selectors.DEFAULT_TRACE_WINDOW,
        help_text="Seconds of telemetry and scores either side of the instant.",
    )
    points = serializers.IntegerField(
        min_value=2,
        max_value=selectors.MAX_POINTS,
        default=selectors.DEFAULT_POINTS,
        help_text="At most this many buckets per chart series.",
    )

    def validate_vin(self, value: str) -> str:
        if "\x00" in value:
            raise serializers.ValidationError("no NUL characters")
        return value

    def validate_at(self, value: dt.datetime) -> dt.datetime:
        # The window around it must be a representable instant too.
        if (
            not dt.datetime.min.replace(year=2)
            < value.replace(tzinfo=None)
            < dt.datetime(9999, 1, 1)
        ):
            raise serializers.ValidationError("between the years 2 and 9998")
        return value


# -- series -----------------------------------------------------------------------------------


class SeriesPointSerializer(serializers.Serializer):
    ts = serializers.DateTimeField(help_text="Start of the bucket.")
    min = serializers.FloatField(allow_null=True, help_text="Lowest value in the bucket.")
    max = serializers.FloatField(allow_null=True, help_text="Highest value in the bucket.")
    mean = serializers.FloatField(allow_null=True)
    samples = serializers.IntegerField(help_text="Samples in the bucket holding the signal.")


class SignalSeriesSerializer(serializers.Serializer):
    signal = serializers.CharField()
    unit = serializers.CharField(help_text="Engineering unit the station declares; may be empty.")
    points = SeriesPointSerializer(many=True)


class SeriesChartSerializer(serializers.Serializer):
    station = serializers.CharField(help_text="Station code.")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    bucket_seconds = serializers.FloatField(help_text="Width of each bucket.")
    source = serializers.ChoiceField(
        choices=["samples", "rollups"],
        help_text="samples: raw samples; rollups: 1-minute roll-ups (ranges over two hours), "
        "and the samples not rolled up yet.",
    )
    series = SignalSeriesSerializer(many=True)


# -- the VIN trace ----------------------------------------------------------------------------


class TraceWorkOrderSerializer(serializers.Serializer):
    external_id = serializers.CharField()
    status = serializers.CharField()
    product = serializers.CharField(source="product.code")
    line = serializers.CharField(source="line.code", help_text="Line code.")
    quantity = serializers.IntegerField()
    released_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    cancelled_at = serializers.DateTimeField(allow_null=True)


class TraceUnitSerializer(serializers.Serializer):
    serial = serializers.CharField()
    vin = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    work_order = TraceWorkOrderSerializer()


class TraceVisitSerializer(serializers.Serializer):
    station = serializers.CharField(source="station.code", help_text="Station code.")
    station_name = serializers.CharField(source="station.name")
    arrived_at = serializers.DateTimeField()
    left_at = serializers.DateTimeField(allow_null=True, help_text="Null while it is there.")


class TraceFlashSerializer(serializers.Serializer):
    component = serializers.CharField()
    version = serializers.CharField()
    flashed_at = serializers.DateTimeField()
    station = serializers.CharField(source="station.code", allow_null=True, default=None)


class TraceQualityEventSerializer(serializers.Serializer):
    defect = serializers.CharField(source="defect.code")
    defect_name = serializers.CharField(source="defect.name")
    severity = serializers.CharField()
    source = serializers.CharField()
    found_at = serializers.DateTimeField()
    station = serializers.CharField(source="station.code", allow_null=True, default=None)
    description = serializers.CharField()


class TraceAlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    station = serializers.CharField(source="station.code")
    ts = serializers.DateTimeField(help_text="Instant of the triggering sample.")
    seq = serializers.IntegerField()
    score = serializers.FloatField()
    threshold = serializers.FloatField()
    source = serializers.CharField(help_text="model, baseline or spc.")
    model_version = serializers.CharField(
        source="model_version.version", allow_null=True, default=None
    )
    rule = serializers.CharField(allow_null=True)
    chart = serializers.CharField(allow_null=True)
    signal = serializers.CharField(allow_null=True)
    triggering = serializers.DictField(child=serializers.FloatField(allow_null=True))
    status = serializers.CharField()
    feedback = serializers.CharField()


class SampleRowSerializer(serializers.Serializer):
    ts = serializers.DateTimeField()
    seq = serializers.IntegerField()
    vin = serializers.CharField(allow_null=True, help_text="The unit there at ts (null: none).")
    serial = serializers.CharField(allow_null=True)
    signals = serializers.DictField(child=serializers.FloatField(allow_null=True))


class SignalNameSerializer(serializers.Serializer):
    name = serializers.CharField()
    unit = serializers.CharField()


class TraceTelemetrySerializer(serializers.Serializer):
    station = serializers.CharField(source="station.code")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    signals = serializers.SerializerMethodField()
    samples = SampleRowSerializer(source="rows", many=True)
    truncated = serializers.BooleanField(
        help_text=f"The window held more samples than the {selectors.MAX_TRACE_ROWS} closest "
        "to the instant listed here (the series cover all of them)."
    )
    series = SeriesChartSerializer()
    scores = ScoreChartSerializer()

    def get_signals(self, telemetry) -> list[dict]:
        return SignalNameSerializer(
            [{"name": n, "unit": telemetry.units.get(n, "")} for n in telemetry.signals],
            many=True,
        ).data


class VinTraceSerializer(serializers.Serializer):
    unit = TraceUnitSerializer()
    at = serializers.DateTimeField()
    window = serializers.IntegerField(help_text="Seconds either side of the instant.")
    life_start = serializers.DateTimeField(
        allow_null=True, help_text="First arrival at a station; null: never at one."
    )
    life_end = serializers.DateTimeField(
        allow_null=True, help_text="Last departure (now while it is at a station)."
    )
    in_life = serializers.BooleanField(help_text="`at` lies between life_start and life_end.")
    station = serializers.CharField(
        source="station.code", allow_null=True, default=None, help_text="Where it was at `at`."
    )
    visit = TraceVisitSerializer(allow_null=True)
    previous_visit = TraceVisitSerializer(
        allow_null=True, help_text="Between stations: the one it left last."
    )
    next_visit = TraceVisitSerializer(
        allow_null=True, help_text="Between stations: the one it reached next."
    )
    firmware = serializers.DictField(
        child=serializers.CharField(), help_text="Component → version valid at `at`."
    )
    visits = TraceVisitSerializer(many=True)
    flashes = TraceFlashSerializer(many=True)
    quality_events = TraceQualityEventSerializer(many=True)
    alerts = TraceAlertSerializer(many=True)
    telemetry = TraceTelemetrySerializer(
        allow_null=True, help_text="At the station it was at; null between stations."
    )

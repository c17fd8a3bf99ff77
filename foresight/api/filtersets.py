"""Query parameters of Foresight's lists, in the conventions of mes/filtersets.py: references
by the codes the plant uses (station code, model version, unit serial), lines by id, instants
in ISO 8601 (UTC without an offset)."""

from __future__ import annotations

from django_filters import rest_framework as filters

from foresight.models import (
    AlertFeedback,
    AlertSource,
    AlertStatus,
    DefectAlert,
    ModelStatus,
    ModelVersion,
)
from mes.filtersets import IdFilter, InstantFilter


class ModelVersionFilterSet(filters.FilterSet):
    station = filters.CharFilter(field_name="station__code", help_text="Station code.")
    line = IdFilter(field_name="station__line_id", help_text="Line id.")
    status = filters.MultipleChoiceFilter(choices=ModelStatus.choices)
    kind = filters.CharFilter(help_text="Detector kind, e.g. pca_t2q.")

    class Meta:
        model = ModelVersion
        fields = ["station", "line", "status", "kind"]


class DefectAlertFilterSet(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=AlertStatus.choices)
    station = filters.CharFilter(field_name="station__code", help_text="Station code.")
    line = IdFilter(field_name="station__line_id", help_text="Line id.")
    since = InstantFilter(
        field_name="ts", lookup_expr="gte", help_text="Raised by samples at or after this instant."
    )
    until = InstantFilter(
        field_name="ts", lookup_expr="lte", help_text="Raised by samples at or before this instant."
    )
    source = filters.ChoiceFilter(choices=AlertSource.choices)
    feedback = filters.ChoiceFilter(choices=AlertFeedback.choices)
    model_version = filters.CharFilter(
        field_name="model_version__version", help_text="Model version."
    )
    unit = filters.CharFilter(field_name="unit__serial", help_text="Unit serial.")
    vin = filters.CharFilter()

    class Meta:
        model = DefectAlert
        fields = [
            "status",
            "station",
            "line",
            "since",
            "until",
            "source",
            "feedback",
            "model_version",
            "unit",
            "vin",
        ]

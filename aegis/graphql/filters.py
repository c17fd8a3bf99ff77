"""Filter arguments of the lists: the REST API's FilterSets (mes/filtersets.py,
foresight/api/filtersets.py) behind GraphQL input types, so a filter means the same thing over
REST and GraphQL (references by the plant's codes, lines by id, instants with their offset)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import strawberry
from django.db.models import QuerySet
from django_filters import FilterSet

from aegis.graphql.types import (
    AlertFeedback,
    AlertSource,
    AlertStatus,
    ModelStatus,
    UnitStatus,
    WorkOrderStatus,
)
from mes.errors import InvalidInput


def filtered(filterset_class: type[FilterSet], queryset: QuerySet, values: dict[str, Any]):
    """`queryset` narrowed by the FilterSet given `values` (None and unset values are left
    out); InvalidInput with the FilterSet's messages when it refuses them."""
    data: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value is strawberry.UNSET:
            continue
        if isinstance(value, list):
            data[name] = [getattr(item, "value", item) for item in value]
        elif isinstance(value, dt.datetime):
            data[name] = value.isoformat()
        else:
            data[name] = no_nul(getattr(value, "value", value))
    filterset = filterset_class(data=_QueryDict(data), queryset=queryset)
    if not filterset.is_valid():
        errors = {field: [str(m) for m in messages] for field, messages in filterset.errors.items()}
        raise InvalidInput("the filter is not valid", fields=errors)
    return filterset.qs


class _QueryDict(dict):
    """What django-filter reads form data through: lists for its multiple-choice filters."""

    def getlist(self, key, default=None):
        value = self.get(key, default)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]


def no_nul(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a lookup with it can match nothing.
    if value is not None and "\x00" in value:
        raise InvalidInput("text cannot contain NUL characters", fields={"filter": ["NUL"]})
    return value


@strawberry.input(description="Stations: all of them unless narrowed.")
class StationFilter:
    line: strawberry.ID | None = strawberry.field(default=None, description="Line id.")
    code: str | None = None
    station_type: list[str] | None = strawberry.field(
        default=None, description="tightening, flashing, alignment, leak_test, inspection, …"
    )


@strawberry.input(description="Work orders (newest first).")
class WorkOrderFilter:
    status: list[WorkOrderStatus] | None = None
    line: strawberry.ID | None = strawberry.field(default=None, description="Line id.")
    product: str | None = strawberry.field(default=None, description="Product code.")
    due_after: dt.datetime | None = None
    due_before: dt.datetime | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None


@strawberry.input(description="Units (by serial).")
class UnitFilter:
    serial: str | None = None
    vin: str | None = None
    work_order: str | None = strawberry.field(default=None, description="External id.")
    status: list[UnitStatus] | None = None


@strawberry.input(description="Defect alerts (newest first).")
class AlertFilter:
    status: list[AlertStatus] | None = None
    station: str | None = strawberry.field(default=None, description="Station code.")
    line: strawberry.ID | None = strawberry.field(default=None, description="Line id.")
    since: dt.datetime | None = strawberry.field(
        default=None, description="Raised by samples at or after this instant."
    )
    until: dt.datetime | None = strawberry.field(
        default=None, description="Raised by samples at or before this instant."
    )
    source: AlertSource | None = None
    feedback: AlertFeedback | None = None
    model_version: str | None = None
    unit: str | None = strawberry.field(default=None, description="Unit serial.")
    vin: str | None = None


@strawberry.input(description="Foresight model versions (newest first).")
class ModelFilter:
    station: str | None = strawberry.field(default=None, description="Station code.")
    line: strawberry.ID | None = strawberry.field(default=None, description="Line id.")
    status: list[ModelStatus] | None = None
    kind: str | None = strawberry.field(default=None, description="e.g. pca_t2q.")


def values_of(filter_input: object | None) -> dict:
    """An input's fields as FilterSet parameters: the same names, in snake_case."""
    if filter_input is None:
        return {}
    return dict(vars(filter_input))

"""The alerts page (`/alerts/`): defect alerts newest first, filtered, paginated, live.

Filters live in the query string (`?status=open&line=2&range=8h`), so every view of the list
is a link someone can send. They are translated into the REST API's own filterset
(foresight/api/filtersets.py), so the page and `GET /api/v1/foresight/alerts/` select the same
alerts. Times are shown and typed in the plant's time zone. Acknowledge and Resolve post to the
REST endpoints from static/aegis/alerts.js with the session and its CSRF token; the buttons
appear only for roles holding those permissions, and the endpoints check them again.

`?id=<alert>` renders the page with that one alert: alerts.js fetches it to insert a row that
has just been raised (or to refresh one that changed) with the markup the server renders.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import urlencode

from django import forms
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from aegis.ui.board import plant_timezone
from aegis.ui.navigation import ALERTS, page
from foresight.api.filtersets import DefectAlertFilterSet
from foresight.api.selectors import alert_list
from foresight.models import AlertSource, AlertStatus, DefectAlert
from mes.models import Line, Station

PAGE_SIZE = 25
ACTIVE = "active"  # open or acknowledged: what still needs someone
STATUS_CHOICES = [
    ("", "Any status"),
    (ACTIVE, "Open or acknowledged"),
    (AlertStatus.OPEN, "Open"),
    (AlertStatus.ACKNOWLEDGED, "Acknowledged"),
    (AlertStatus.RESOLVED, "Resolved"),
]
RANGES = {
    "1h": ("Last hour", dt.timedelta(hours=1)),
    "8h": ("Last 8 hours", dt.timedelta(hours=8)),
    "24h": ("Last 24 hours", dt.timedelta(hours=24)),
    "7d": ("Last 7 days", dt.timedelta(days=7)),
    "30d": ("Last 30 days", dt.timedelta(days=30)),
}
CUSTOM = "custom"
RANGE_CHOICES = [
    ("", "Any time"),
    *((key, label) for key, (label, _) in RANGES.items()),
    (CUSTOM, "From … to …"),
]
LOCAL_INPUT = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> sends


class AlertFilterForm(forms.Form):
    status = forms.ChoiceField(choices=STATUS_CHOICES, required=False)
    station = forms.ChoiceField(required=False)
    line = forms.ChoiceField(required=False)
    range = forms.ChoiceField(choices=RANGE_CHOICES, required=False, label="Time range")
    since = forms.DateTimeField(required=False, input_formats=[LOCAL_INPUT, "%Y-%m-%dT%H:%M:%S"])
    until = forms.DateTimeField(required=False, input_formats=[LOCAL_INPUT, "%Y-%m-%dT%H:%M:%S"])
    id = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args, stations: list[Station], lines: list[Line], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["station"].choices = [("", "Every station")] + [
            (station.code, f"{station.code} · {station.name}") for station in stations
        ]
        self.fields["line"].choices = [("", "Every line")] + [
            (str(line.pk), line.name) for line in lines
        ]

    def clean(self) -> dict:
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if not cleaned.get("range") and (since or until):
            cleaned["range"] = CUSTOM  # a hand-made link with from/to and no range
        if since and until and since > until:
            raise forms.ValidationError("The start of the time range is after its end.")
        return cleaned


@dataclass
class AlertRow:
    """One alert as the page shows it."""

    alert: DefectAlert
    zone: dt.tzinfo

    @property
    def id(self) -> int:
        return self.alert.pk

    @property
    def local_ts(self) -> dt.datetime:
        return timezone.localtime(self.alert.ts, self.zone)

    @property
    def trace_url(self) -> str | None:
        if not self.alert.vin:
            return None
        instant = self.alert.ts.astimezone(dt.UTC).isoformat(timespec="milliseconds")
        return "/trace/?" + urlencode({"vin": self.alert.vin, "at": instant.replace("+00:00", "Z")})

    @property
    def firmware(self) -> list[tuple[str, str]]:
        return sorted((self.alert.firmware or {}).items())

    @property
    def ratio(self) -> float | None:
        """Score over threshold: above 1 the model (or rule) saw a defect coming."""
        if not self.alert.threshold:
            return None
        return self.alert.score / self.alert.threshold

    @property
    def raised_by(self) -> str:
        alert = self.alert
        if alert.source == AlertSource.SPC:
            rule = (alert.rule or "").removeprefix("nelson_")
            chart = alert.get_chart_display() if alert.chart else ""
            return f"SPC: Nelson rule {rule} on the {chart} chart of {alert.signal}"
        if alert.model_version is not None:
            return f"model {alert.model_version.version}"
        return "statistical baseline"

    @property
    def explanation(self) -> list[dict]:
        """The features that drove the score, largest share first: `share` is the feature's
        part of the sample's squared deviation from normal (shares add up to 1)."""
        rows = [row for row in self.alert.explanation or [] if isinstance(row, dict)]
        explained = [
            {
                "feature": row.get("feature") or "?",
                "signal": row.get("signal"),
                "value": row.get("value"),
                "z": row.get("z"),
                "share": row.get("share"),
                "percent": round(100 * min(1.0, abs(row.get("share") or 0.0))),
            }
            for row in rows
        ]
        return sorted(explained, key=lambda row: row["percent"], reverse=True)

    @property
    def triggering(self) -> list[tuple[str, float | None]]:
        return sorted((self.alert.triggering or {}).items())


def _filterset_data(cleaned: dict, *, now: dt.datetime) -> dict:
    """The page's filters in the REST filterset's terms (instants in UTC)."""
    data: dict = {}
    status = cleaned.get("status")
    if status == ACTIVE:
        data["status"] = [AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED]
    elif status:
        data["status"] = [status]
    if cleaned.get("station"):
        data["station"] = cleaned["station"]
    if cleaned.get("line"):
        data["line"] = cleaned["line"]
    chosen = cleaned.get("range")
    if chosen in RANGES:
        data["since"] = (now - RANGES[chosen][1]).astimezone(dt.UTC).isoformat()
    elif chosen == CUSTOM:
        for name in ("since", "until"):
            if cleaned.get(name):
                data[name] = cleaned[name].astimezone(dt.UTC).isoformat()
    return data


def _query(cleaned: dict, **changes) -> str:
    """The query string of these filters (empty ones left out), with `changes` applied."""
    values = {
        name: value for name, value in {**cleaned, **changes}.items() if value not in (None, "")
    }
    for name in ("since", "until"):
        if isinstance(values.get(name), dt.datetime):
            values[name] = values[name].strftime(LOCAL_INPUT)
    if values.get("range") != CUSTOM:
        values.pop("since", None)
        values.pop("until", None)
    return urlencode(values)


@page(ALERTS.permission)
def alerts_page(request: HttpRequest) -> HttpResponse:
    zone = plant_timezone()
    stations = list(Station.objects.order_by("line_id", "position"))
    lines = list(Line.objects.order_by("area__site__code", "area__code", "code"))
    with timezone.override(zone):  # datetime-local inputs are the plant's wall-clock times
        form = AlertFilterForm(request.GET or None, stations=stations, lines=lines)
        valid = form.is_valid() if form.is_bound else True
    cleaned = form.cleaned_data if form.is_bound and valid else {}
    selected = _filterset_data(cleaned, now=timezone.now())
    alerts = DefectAlert.objects.none()
    if valid:
        filterset = DefectAlertFilterSet(selected, queryset=alert_list())
        alerts = filterset.qs if filterset.is_valid() else alerts
        if cleaned.get("id"):
            alerts = alerts.filter(pk=cleaned["id"])
    current = Paginator(alerts, PAGE_SIZE).get_page(request.GET.get("page"))
    user = request.user
    return render(
        request,
        "ui/alerts.html",
        {
            "form": form,
            "page": current,
            "rows": [AlertRow(alert, zone) for alert in current.object_list],
            "timezone": zone,
            "query": _query({key: value for key, value in cleaned.items() if key != "id"}),
            # What alerts.js needs to decide whether a live alert belongs on this page.
            "live_filter": {
                "status": [str(status) for status in selected.get("status", [])],
                "station": selected.get("station", ""),
                "line": selected.get("line", ""),
                "until": selected.get("until", ""),
                "single": bool(cleaned.get("id")),
            },
            "can_acknowledge": user.has_perm("foresight.acknowledge_defectalert"),
            "can_resolve": user.has_perm("foresight.resolve_defectalert"),
        },
        status=200 if valid else 400,
    )

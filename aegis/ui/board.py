"""The plant board (`/`): every line's stations with what is at each now, live.

The first render comes from the database (the MES state the relay's `station.state` events
carry, the latest Foresight score, the alerts nobody has resolved); static/aegis/board.js then
applies the websocket events to the same tiles. Visitors get the sign-in form instead.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib.auth.forms import AuthenticationForm
from django.db import connection
from django.db.models import Count, Max, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from aegis.ui.navigation import PLANT, page
from foresight.api.selectors import BASELINE_THRESHOLD
from foresight.models import AlertStatus, DefectAlert
from mes.models import Site
from mes.relay import StationNow, station_now

# The latest production score of each station (shadow models' scores are not what alerts).
# The key (station_id, ts, …) makes this one backward index step per station.
LATEST_SCORES_SQL = """
SELECT st.id, sc.ts, sc.score, sc.model_version_id, mv.version, mv.threshold
FROM mes_station st
JOIN LATERAL (
    SELECT s.ts, s.score, s.model_version_id FROM foresight_score s
    WHERE s.station_id = st.id AND NOT s.shadow
    ORDER BY s.ts DESC LIMIT 1
) sc ON true
LEFT JOIN foresight_modelversion mv ON mv.id = sc.model_version_id
"""

STATE_LABELS = {
    "alert": "Alert",
    "down": "Down",
    "occupied": "Occupied",
    "idle": "Idle",
}


@dataclass
class Score:
    ts: dt.datetime
    value: float
    threshold: float
    model_version: str | None  # None: the statistical baseline

    @property
    def above(self) -> bool:
        return self.value >= self.threshold

    @property
    def percent_of_threshold(self) -> int:
        """For the bar: the score as a share of its threshold, capped at 150 %."""
        if self.threshold <= 0:
            return 0
        return max(0, min(150, round(100 * self.value / self.threshold)))


@dataclass
class Tile:
    station: StationNow
    score: Score | None = None
    open_alerts: int = 0
    acknowledged_alerts: int = 0
    latest_alert_ts: dt.datetime | None = None

    @property
    def code(self) -> str:
        return self.station.code

    @property
    def state(self) -> str:
        """What the tile says first: an open alert, then a downtime, then whether a unit is
        there. Both an alert and a downtime are shown besides, whichever leads."""
        return "alert" if self.open_alerts else self.station.state["state"]

    @property
    def state_label(self) -> str:
        return STATE_LABELS[self.state]

    @property
    def sparkline_signal(self) -> dict | None:
        """The station's first declared signal: what its sparkline draws."""
        return self.station.signals[0] if self.station.signals else None

    @property
    def firmware(self) -> list[tuple[str, str]]:
        return sorted(self.station.state["firmware"].items())

    @property
    def arrived_at(self) -> dt.datetime | None:
        return _instant(self.station.state["arrived_at"])

    @property
    def down_since(self) -> dt.datetime | None:
        downtime = self.station.state["downtime"]
        return _instant(downtime["started_at"]) if downtime else None


def _instant(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


@dataclass
class BoardLine:
    line_id: int
    code: str
    name: str
    area_name: str
    site_name: str
    tiles: list[Tile] = field(default_factory=list)


def plant_timezone(zones: Iterable[str] | None = None) -> zoneinfo.ZoneInfo:
    """The zone pages show times in: the sites' zone when they share one (`zones`, or every
    site's), UTC otherwise."""
    if zones is None:
        zones = Site.objects.values_list("timezone", flat=True).distinct()[:2]
    zones = set(zones)
    if len(zones) == 1:
        try:
            return zoneinfo.ZoneInfo(zones.pop())
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return zoneinfo.ZoneInfo("UTC")


def latest_scores() -> dict[int, Score]:
    """Station id → its latest production (or baseline) score and the threshold it is
    judged against."""
    with connection.cursor() as cursor:
        cursor.execute(LATEST_SCORES_SQL)
        rows = cursor.fetchall()
    return {
        station_id: Score(
            ts=ts,
            value=score,
            threshold=threshold if threshold is not None else BASELINE_THRESHOLD,
            model_version=version,
        )
        for station_id, ts, score, _model_id, version, threshold in rows
    }


def unresolved_alerts() -> dict[int, dict]:
    """Station id → counts of its open and acknowledged alerts and the newest one's instant."""
    rows = (
        DefectAlert.objects.filter(status__in=[AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED])
        .values("station_id")
        .annotate(
            open=Count("id", filter=Q(status=AlertStatus.OPEN)),
            acknowledged=Count("id", filter=Q(status=AlertStatus.ACKNOWLEDGED)),
            latest=Max("ts"),
        )
        .order_by()
    )
    return {row["station_id"]: row for row in rows}


def board_lines(*, with_scores: bool = True, with_alerts: bool = True) -> list[BoardLine]:
    """The plant's lines in order, each with its stations' tiles (four queries at most)."""
    scores = latest_scores() if with_scores else {}
    alerts = unresolved_alerts() if with_alerts else {}
    lines: dict[int, BoardLine] = {}
    for now in station_now():
        line = lines.get(now.line_id)
        if line is None:
            line = lines[now.line_id] = BoardLine(
                line_id=now.line_id,
                code=now.line_code,
                name=now.line_name,
                area_name=now.area_name,
                site_name=now.site_name,
            )
        counts = alerts.get(now.station_id, {})
        line.tiles.append(
            Tile(
                station=now,
                score=scores.get(now.station_id),
                open_alerts=counts.get("open", 0),
                acknowledged_alerts=counts.get("acknowledged", 0),
                latest_alert_ts=counts.get("latest"),
            )
        )
    return list(lines.values())


@page(PLANT.permission)
def _plant_board(request: HttpRequest) -> HttpResponse:
    user = request.user
    lines = board_lines(
        with_scores=user.has_perm("foresight.view_score"),
        with_alerts=user.has_perm("foresight.view_defectalert"),
    )
    return render(
        request,
        "ui/board.html",
        {
            "lines": lines,
            "timezone": plant_timezone(
                tile.station.timezone for line in lines for tile in line.tiles
            ),
        },
    )


def plant_board(request: HttpRequest) -> HttpResponse:
    """`/`: the board for signed-in users, the sign-in form for visitors."""
    if not request.user.is_authenticated:
        return render(request, "home_signed_out.html", {"form": AuthenticationForm(request)})
    return _plant_board(request)

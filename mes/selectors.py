"""Reads of the MES."""

from __future__ import annotations

from django.db.models import Prefetch

from mes.models import Line, Site, Station


def plant_overview() -> list[Site]:
    """Sites with their areas, lines and stations in plant order, in four queries."""
    return list(
        Site.objects.prefetch_related(
            "areas",
            Prefetch("areas__lines", queryset=Line.objects.order_by("code")),
            Prefetch("areas__lines__stations", queryset=Station.objects.order_by("position")),
        )
    )

"""The ISA-95 equipment hierarchy: site → area → line → station."""

from __future__ import annotations

import zoneinfo

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

code_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$",
    "Codes are 1-32 letters, digits, '-' or '_' (they appear in NATS subjects and URLs).",
)


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone")


class Site(models.Model):
    code = models.CharField(max_length=32, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_timezone],
        help_text="IANA zone the site's shifts and calendars are defined in.",
    )

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class Area(models.Model):
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="areas")
    code = models.CharField(max_length=32, validators=[code_validator])
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["site__code", "code"]
        constraints = [
            models.UniqueConstraint(fields=["site", "code"], name="mes_area_code_unique_per_site")
        ]

    def __str__(self) -> str:
        return f"{self.site.code}/{self.name}"


class Line(models.Model):
    area = models.ForeignKey(Area, on_delete=models.PROTECT, related_name="lines")
    code = models.CharField(max_length=32, validators=[code_validator])
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["area__site__code", "area__code", "code"]
        constraints = [
            models.UniqueConstraint(fields=["area", "code"], name="mes_line_code_unique_per_area")
        ]

    def __str__(self) -> str:
        return self.name


class Station(models.Model):
    """A work position on a line. Its code is plant-wide: PLCs and NATS subjects use it."""

    line = models.ForeignKey(Line, on_delete=models.PROTECT, related_name="stations")
    code = models.CharField(max_length=32, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    position = models.PositiveSmallIntegerField(help_text="Order of the station along its line.")
    station_type = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["line_id", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["line", "position"], name="mes_station_position_unique_per_line"
            )
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"

"""The MES's truth: ISA-95 equipment, products and routes, work orders, units and where they
were, firmware, shifts, downtime, counts and quality events.

Wrong states are made impossible in the database, not only in Python: check constraints for
values, exclusion constraints (range types with GiST, no btree_gist needed) for overlaps in
time, unique constraints for identities. Writes go through `mes.services`.
"""

from __future__ import annotations

import zoneinfo

from django.conf import settings
from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import RangeOperators
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import F, Func, Q, Value

code_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$",
    "Codes are 1-32 letters, digits, '-' or '_' (they appear in NATS subjects and URLs).",
)

# ISO 3779 transliteration and the North-American check digit (position 9) weights.
_VIN_VALUES = {
    **{str(digit): digit for digit in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
VIN_PATTERN = r"^[A-HJ-NPR-Z0-9]{17}$"


def vin_check_digit(vin: str) -> str:
    total = sum(_VIN_VALUES[char] * weight for char, weight in zip(vin, _VIN_WEIGHTS, strict=True))
    remainder = total % 11
    return "X" if remainder == 10 else str(remainder)


def validate_vin(value: str) -> None:
    """17 characters without I, O or Q, and the check digit at position 9 must match."""
    if len(value) != 17 or not RegexValidator(VIN_PATTERN).regex.match(value):
        raise ValidationError("A VIN is 17 characters: digits and capitals except I, O and Q.")
    expected = vin_check_digit(value)
    if value[8] != expected:
        raise ValidationError(f"VIN check digit is {value[8]!r}, expected {expected!r}.")


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone")


def _time_range(start: str, end: str):
    """[start, end) with an open end as 'infinity': an open visit overlaps everything later."""
    return Func(
        F(start),
        Func(F(end), Value("infinity"), function="COALESCE", output_field=models.DateTimeField()),
        Value("[)"),
        function="tstzrange",
    )


def _same(field: str):
    """Equality usable in a GiST exclusion without btree_gist: a one-point int8 range."""
    return Func(F(field), F(field), Value("[]"), function="int8range")


class TimestampedModel(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


# -- equipment ------------------------------------------------------------------------------


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
    # OEE settings (docs/oee.md). Stops shorter than the threshold are small stops, a
    # performance loss; longer ones are downtime, an availability loss.
    microstop_seconds = models.PositiveIntegerField(
        default=120,
        help_text="Unplanned stops shorter than this are small stops (performance loss), "
        "not downtime (availability loss). A station may set its own.",
    )
    startup_seconds = models.PositiveIntegerField(
        default=0,
        help_text="Scrap made within this many seconds after production (re)starts counts as "
        "startup rejects; 0: every reject is a production reject.",
    )

    class Meta:
        ordering = ["area__site__code", "area__code", "code"]
        permissions = [("view_oee", "Can view OEE, downtime Pareto, MTBF and MTTR")]
        constraints = [
            models.UniqueConstraint(fields=["area", "code"], name="mes_line_code_unique_per_area")
        ]

    def __str__(self) -> str:
        return self.name


class StationType(models.TextChoices):
    TIGHTENING = "tightening", "Tightening / torque"
    FLASHING = "flashing", "ECU flashing"
    ALIGNMENT = "alignment", "Alignment"
    LEAK_TEST = "leak_test", "Leak test"
    INSPECTION = "inspection", "End-of-line inspection"
    ASSEMBLY = "assembly", "Assembly"
    MARRIAGE = "marriage", "Body marriage"
    TEST = "test", "Functional test"


class CountSource(models.TextChoices):
    """Where a station's OEE counts come from (docs/oee.md)."""

    REPORTED = "reported", "Reported counts (API, webhook, simulator)"
    VISITS = "visits", "Completed station visits"
    TELEMETRY = "telemetry", "Part counter signal in telemetry"


signal_name_validator = RegexValidator(r"^[a-z][a-z0-9_]{0,63}$", "lower_snake_case signal names")


class Station(models.Model):
    """A work position on a line. Its code is plant-wide: PLCs and NATS subjects use it."""

    line = models.ForeignKey(Line, on_delete=models.PROTECT, related_name="stations")
    code = models.CharField(max_length=32, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    position = models.PositiveSmallIntegerField(help_text="Order of the station along its line.")
    station_type = models.CharField(max_length=32, choices=StationType.choices)
    # OEE settings (docs/oee.md).
    microstop_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="This station's small-stop threshold; the line's if empty."
    )
    count_source = models.CharField(
        max_length=16,
        choices=CountSource.choices,
        default=CountSource.REPORTED,
        help_text="Which records count this station's output for OEE.",
    )
    count_signal = models.CharField(
        max_length=64,
        blank=True,
        validators=[signal_name_validator],
        help_text="Telemetry counts: the PLC's cumulative counter of parts made (good and bad).",
    )
    reject_signal = models.CharField(
        max_length=64,
        blank=True,
        validators=[signal_name_validator],
        help_text="Telemetry counts: the PLC's cumulative counter of rejected parts (optional).",
    )

    class Meta:
        ordering = ["line_id", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["line", "position"], name="mes_station_position_unique_per_line"
            ),
            models.CheckConstraint(
                condition=~Q(count_source="telemetry") | ~Q(count_signal=""),
                name="mes_station_telemetry_counts_need_a_signal",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class StationSignal(models.Model):
    """A signal a station's PLC produces (e.g. torque in N·m) and its nominal range."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="signals")
    name = models.CharField(
        max_length=64,
        validators=[RegexValidator(r"^[a-z][a-z0-9_]{0,63}$", "lower_snake_case signal names")],
    )
    unit = models.CharField(max_length=16, help_text="Engineering unit, e.g. N·m, bar, °C.")
    nominal_min = models.FloatField(null=True, blank=True)
    nominal_max = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["station_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["station", "name"], name="mes_signal_unique"),
            models.CheckConstraint(
                condition=Q(nominal_min__isnull=True)
                | Q(nominal_max__isnull=True)
                | Q(nominal_min__lte=F("nominal_max")),
                name="mes_signal_nominal_range_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.station.code}.{self.name} [{self.unit}]"


# -- products and routes --------------------------------------------------------------------


class Product(models.Model):
    code = models.CharField(max_length=32, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class Route(models.Model):
    """How a product is built on a line: its ordered operations with ideal cycle times."""

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="routes")
    line = models.ForeignKey(Line, on_delete=models.PROTECT, related_name="routes")
    ideal_cycle_time_s = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        help_text="Ideal time between two units leaving the line (the OEE performance basis).",
    )

    class Meta:
        ordering = ["product__code", "line_id"]
        constraints = [
            models.UniqueConstraint(fields=["product", "line"], name="mes_route_unique"),
            models.CheckConstraint(
                condition=Q(ideal_cycle_time_s__gt=0), name="mes_route_cycle_time_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.product.code} on {self.line.code}"


class RouteOperation(models.Model):
    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="operations")
    sequence = models.PositiveSmallIntegerField()
    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="operations")
    name = models.CharField(max_length=200)
    ideal_cycle_time_s = models.DecimalField(max_digits=8, decimal_places=2)

    class Meta:
        ordering = ["route_id", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["route", "sequence"], name="mes_operation_sequence"),
            models.UniqueConstraint(fields=["route", "station"], name="mes_operation_station"),
            models.CheckConstraint(
                condition=Q(ideal_cycle_time_s__gt=0), name="mes_operation_cycle_time_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.sequence}. {self.name} @ {self.station.code}"


# -- work orders and units ------------------------------------------------------------------


class WorkOrderStatus(models.TextChoices):
    PLANNED = "planned"
    RELEASED = "released"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class WorkOrder(TimestampedModel):
    external_id = models.CharField(max_length=64, unique=True)
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="work_orders")
    line = models.ForeignKey(Line, on_delete=models.PROTECT, related_name="work_orders")
    quantity = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    due_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=WorkOrderStatus.choices, default=WorkOrderStatus.PLANNED
    )
    released_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("release_workorder", "Can release work orders"),
            ("start_workorder", "Can start work orders"),
            ("complete_workorder", "Can complete work orders"),
            ("cancel_workorder", "Can cancel work orders"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="mes_wo_quantity_positive"),
            # Each status carries the timestamps of the steps that led to it, and no others.
            models.CheckConstraint(
                condition=(
                    Q(
                        status="planned",
                        released_at__isnull=True,
                        started_at__isnull=True,
                        completed_at__isnull=True,
                        cancelled_at__isnull=True,
                    )
                    | Q(
                        status="released",
                        released_at__isnull=False,
                        started_at__isnull=True,
                        completed_at__isnull=True,
                        cancelled_at__isnull=True,
                    )
                    | Q(
                        status="in_progress",
                        released_at__isnull=False,
                        started_at__isnull=False,
                        completed_at__isnull=True,
                        cancelled_at__isnull=True,
                    )
                    | Q(
                        status="completed",
                        released_at__isnull=False,
                        started_at__isnull=False,
                        completed_at__isnull=False,
                        cancelled_at__isnull=True,
                    )
                    | Q(status="cancelled", completed_at__isnull=True, cancelled_at__isnull=False)
                ),
                name="mes_wo_status_timestamps",
            ),
            models.CheckConstraint(
                condition=Q(started_at__isnull=True) | Q(started_at__gte=F("released_at")),
                name="mes_wo_started_after_release",
            ),
            models.CheckConstraint(
                condition=Q(completed_at__isnull=True) | Q(completed_at__gte=F("started_at")),
                name="mes_wo_completed_after_start",
            ),
        ]
        indexes = [models.Index(fields=["status", "line"])]

    def __str__(self) -> str:
        return self.external_id


class UnitStatus(models.TextChoices):
    PLANNED = "planned"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    SCRAPPED = "scrapped"


class Unit(TimestampedModel):
    """One physical unit built for a work order: its serial, and its VIN when it is a vehicle."""

    serial = models.CharField(max_length=64, unique=True)
    vin = models.CharField(
        max_length=17, unique=True, null=True, blank=True, validators=[validate_vin]
    )
    work_order = models.ForeignKey(WorkOrder, on_delete=models.PROTECT, related_name="units")
    status = models.CharField(max_length=16, choices=UnitStatus.choices, default=UnitStatus.PLANNED)

    class Meta:
        ordering = ["serial"]
        constraints = [
            models.CheckConstraint(
                condition=Q(vin__isnull=True) | Q(vin__regex=VIN_PATTERN),
                name="mes_unit_vin_format",
            ),
        ]

    def __str__(self) -> str:
        return self.vin or self.serial


class StationVisit(models.Model):
    """A unit at a station from `arrived_at` until `left_at` (open while it is there).

    This is the history the telemetry join reads: the database refuses two visits overlapping
    at one station, and one unit at two stations at once.
    """

    unit = models.ForeignKey(Unit, on_delete=models.PROTECT, related_name="visits")
    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="visits")
    arrived_at = models.DateTimeField()
    left_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["arrived_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(left_at__isnull=True) | Q(left_at__gt=F("arrived_at")),
                name="mes_visit_leaves_after_arriving",
            ),
            ExclusionConstraint(
                name="mes_visit_no_overlap_at_station",
                index_type="gist",
                expressions=[
                    (_same("station_id"), RangeOperators.EQUAL),
                    (_time_range("arrived_at", "left_at"), RangeOperators.OVERLAPS),
                ],
            ),
            ExclusionConstraint(
                name="mes_visit_unit_in_one_place",
                index_type="gist",
                expressions=[
                    (_same("unit_id"), RangeOperators.EQUAL),
                    (_time_range("arrived_at", "left_at"), RangeOperators.OVERLAPS),
                ],
            ),
        ]
        indexes = [models.Index(fields=["station", "arrived_at"])]

    def __str__(self) -> str:
        return f"{self.unit} @ {self.station.code} from {self.arrived_at:%Y-%m-%d %H:%M:%S}"


class FirmwareFlash(models.Model):
    unit = models.ForeignKey(Unit, on_delete=models.PROTECT, related_name="firmware_flashes")
    station = models.ForeignKey(
        Station, on_delete=models.PROTECT, null=True, blank=True, related_name="firmware_flashes"
    )
    component = models.CharField(max_length=64, help_text="ECU or component, e.g. EPS, BCM.")
    version = models.CharField(max_length=64)
    flashed_at = models.DateTimeField()

    class Meta:
        ordering = ["flashed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["unit", "component", "flashed_at"], name="mes_flash_unique_instant"
            )
        ]
        indexes = [models.Index(fields=["unit", "flashed_at"])]

    def __str__(self) -> str:
        return f"{self.unit} {self.component} {self.version}"


# -- shifts ---------------------------------------------------------------------------------


class ShiftPattern(models.Model):
    """A repeating shift calendar for a line, in its site's local time."""

    line = models.ForeignKey(Line, on_delete=models.PROTECT, related_name="shift_patterns")
    name = models.CharField(max_length=100)

    class Meta:
        ordering = ["line_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["line", "name"], name="mes_shift_pattern_unique")
        ]

    def __str__(self) -> str:
        return f"{self.line.code} {self.name}"


class ShiftTemplate(models.Model):
    """One shift of a pattern: local start and end wall-clock times (end may be next day)."""

    pattern = models.ForeignKey(ShiftPattern, on_delete=models.CASCADE, related_name="templates")
    name = models.CharField(max_length=50)
    starts = models.TimeField()
    ends = models.TimeField(help_text="Earlier than `starts` means the next day.")
    weekdays = models.CharField(
        max_length=7,
        default="1234567",
        validators=[RegexValidator(r"^[1-7]{1,7}$", "ISO weekdays 1 (Mon) to 7 (Sun)")],
    )
    breaks = models.JSONField(
        default=list,
        blank=True,
        help_text='Planned stops: [{"name": "Lunch", "starts": "12:00", "minutes": 30}] local.',
    )

    class Meta:
        ordering = ["pattern_id", "starts"]
        constraints = [
            models.UniqueConstraint(fields=["pattern", "name"], name="mes_shift_template_unique"),
            models.CheckConstraint(
                condition=~Q(starts=F("ends")), name="mes_shift_template_nonempty"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.starts:%H:%M}-{self.ends:%H:%M}"


class Shift(models.Model):
    """A concrete shift on a line, in absolute time (so a DST night is 7 or 9 hours long)."""

    line = models.ForeignKey(Line, on_delete=models.PROTECT, related_name="shifts")
    template = models.ForeignKey(
        ShiftTemplate, on_delete=models.SET_NULL, null=True, blank=True, related_name="shifts"
    )
    name = models.CharField(max_length=50)
    business_date = models.DateField(help_text="Local date the shift belongs to.")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()

    class Meta:
        ordering = ["starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=F("starts_at")), name="mes_shift_ends_after_start"
            ),
            ExclusionConstraint(
                name="mes_shift_no_overlap_on_line",
                index_type="gist",
                expressions=[
                    (_same("line_id"), RangeOperators.EQUAL),
                    (_time_range("starts_at", "ends_at"), RangeOperators.OVERLAPS),
                ],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.line.code} {self.name} {self.business_date}"


class ShiftBreak(models.Model):
    """A planned stop inside a shift (it does not count against availability)."""

    shift = models.ForeignKey(Shift, on_delete=models.CASCADE, related_name="breaks")
    name = models.CharField(max_length=50)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()

    class Meta:
        ordering = ["starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=F("starts_at")), name="mes_break_ends_after_start"
            ),
            ExclusionConstraint(
                name="mes_break_no_overlap_in_shift",
                index_type="gist",
                expressions=[
                    (_same("shift_id"), RangeOperators.EQUAL),
                    (_time_range("starts_at", "ends_at"), RangeOperators.OVERLAPS),
                ],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.starts_at:%H:%M}"


# -- downtime, counts, quality --------------------------------------------------------------


class LossCategory(models.TextChoices):
    """The availability losses of the six big losses an unplanned stop can be (docs/oee.md)."""

    BREAKDOWN = "breakdown", "Breakdown"
    SETUP = "setup", "Setup and adjustment"


class DowntimeReason(models.Model):
    """A node of the reason-code tree (e.g. `MECH` → `MECH.CONVEYOR` → `MECH.CONVEYOR.BELT`)."""

    code = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children"
    )
    planned = models.BooleanField(
        default=False, help_text="Planned stops (changeover, maintenance) are not losses."
    )
    loss_category = models.CharField(
        max_length=16,
        choices=LossCategory.choices,
        blank=True,
        help_text="Which of the six big losses an unplanned stop of this reason is; "
        "empty: as its parent (a breakdown at the root).",
    )

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class DowntimeEvent(TimestampedModel):
    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="downtimes")
    reason = models.ForeignKey(
        DowntimeReason, on_delete=models.PROTECT, null=True, blank=True, related_name="events"
    )
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    planned = models.BooleanField(default=False)
    comment = models.TextField(blank=True)
    reported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gt=F("started_at")),
                name="mes_downtime_ends_after_start",
            ),
            ExclusionConstraint(
                name="mes_downtime_no_overlap_at_station",
                index_type="gist",
                expressions=[
                    (_same("station_id"), RangeOperators.EQUAL),
                    (_time_range("started_at", "ended_at"), RangeOperators.OVERLAPS),
                ],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.station.code} down from {self.started_at:%Y-%m-%d %H:%M}"


class ScrapReason(models.Model):
    code = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class ProductionCount(TimestampedModel):
    """Good and scrap units a station reported for an interval."""

    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="counts")
    work_order = models.ForeignKey(
        WorkOrder, on_delete=models.PROTECT, null=True, blank=True, related_name="counts"
    )
    interval_start = models.DateTimeField()
    interval_end = models.DateTimeField()
    good = models.PositiveIntegerField(default=0)
    scrap = models.PositiveIntegerField(default=0)
    scrap_reason = models.ForeignKey(
        ScrapReason, on_delete=models.PROTECT, null=True, blank=True, related_name="counts"
    )

    class Meta:
        ordering = ["-interval_start"]
        constraints = [
            models.CheckConstraint(
                condition=Q(interval_end__gt=F("interval_start")),
                name="mes_count_interval_positive",
            ),
            models.CheckConstraint(
                condition=Q(good__gte=0) & Q(scrap__gte=0), name="mes_count_non_negative"
            ),
            models.CheckConstraint(
                condition=Q(scrap=0) | Q(scrap_reason__isnull=False),
                name="mes_count_scrap_has_reason",
            ),
            ExclusionConstraint(
                name="mes_count_no_overlap_at_station",
                index_type="gist",
                expressions=[
                    (_same("station_id"), RangeOperators.EQUAL),
                    (_time_range("interval_start", "interval_end"), RangeOperators.OVERLAPS),
                ],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.station.code} {self.good} good / {self.scrap} scrap"


class DefectCode(models.Model):
    code = models.CharField(max_length=64, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Severity(models.TextChoices):
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


class DetectionSource(models.TextChoices):
    OPERATOR = "operator"
    INSPECTION = "inspection"
    TEST_RIG = "test_rig"
    FORESIGHT = "foresight"
    CUSTOMER = "customer"
    LEGACY_MES = "legacy_mes"


class QualityEvent(TimestampedModel):
    """A defect found on a unit: the labels Foresight learns from."""

    unit = models.ForeignKey(Unit, on_delete=models.PROTECT, related_name="quality_events")
    defect = models.ForeignKey(DefectCode, on_delete=models.PROTECT, related_name="events")
    station = models.ForeignKey(
        Station, on_delete=models.PROTECT, null=True, blank=True, related_name="quality_events"
    )
    found_at = models.DateTimeField()
    severity = models.CharField(max_length=16, choices=Severity.choices)
    source = models.CharField(max_length=16, choices=DetectionSource.choices)
    detected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["-found_at"]
        indexes = [models.Index(fields=["defect", "found_at"])]

    def __str__(self) -> str:
        return f"{self.defect} on {self.unit}"


# -- integration: tokens, webhooks, audit, outbox --------------------------------------------


class ApiToken(models.Model):
    """A bearer token for machines: stored as a SHA-256 digest, expiring, revocable."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to recognise a token.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("created_at")), name="mes_token_expires_later"
            )
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class WebhookIntegration(models.Model):
    """A legacy MES allowed to push events, with its signing secrets (two during rotation)."""

    name = models.CharField(max_length=100, unique=True, validators=[code_validator])
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="webhook_integrations",
        help_text="Machine account the integration's writes are recorded under.",
    )
    secret = models.CharField(max_length=128)
    previous_secret = models.CharField(
        max_length=128, blank=True, help_text="Still accepted while senders switch over."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WebhookInboxEvent(models.Model):
    """Every accepted webhook event, once: a repeat of the same event id gets this response."""

    integration = models.ForeignKey(
        WebhookIntegration, on_delete=models.PROTECT, related_name="events"
    )
    event_id = models.CharField(max_length=128)
    event_type = models.CharField(max_length=64)
    received_at = models.DateTimeField(auto_now_add=True)
    payload = models.JSONField()
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()

    class Meta:
        ordering = ["-received_at"]
        permissions = [("post_mes_webhook", "Can post legacy-MES webhooks")]
        constraints = [
            models.UniqueConstraint(fields=["integration", "event_id"], name="mes_inbox_event_once")
        ]

    def __str__(self) -> str:
        return f"{self.integration} {self.event_id}"


class AuditAction(models.TextChoices):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class AuditEntry(models.Model):
    """Who changed what, when, from where, with the record before and after. Append-only: a
    database trigger refuses UPDATE and DELETE on this table."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        # The trail outlives the account and its rows are never rewritten (append-only).
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150)
    source = models.CharField(max_length=16)  # api, admin, webhook, system, command
    action = models.CharField(max_length=8, choices=AuditAction.choices)
    model = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["model", "object_id"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.model}"


class OutboxMessage(models.Model):
    """A MES state change to publish on NATS, written in the transaction that made it.

    The relay publishes unpublished rows in id order per station, so consumers see each
    station's changes in the order they were committed, even after a NATS outage.
    """

    station_code = models.CharField(max_length=32)
    subject = models.CharField(max_length=200)
    kind = models.CharField(max_length=32)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["id"],
                name="mes_outbox_pending",
                condition=Q(published_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.subject}"

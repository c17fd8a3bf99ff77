"""Telemetry storage: one row per PLC sample, joined with the MES state of its own instant.

The table is written with COPY by the ingest workers and read by dashboards, traceability
and Foresight. Its key (station, ts, seq) makes a redelivered message harmless. On a server
with TimescaleDB it becomes a hypertable (see telemetry/migrations and docs/telemetry.md).
"""

from __future__ import annotations

from django.db import models


class Sample(models.Model):
    """One station instant: every signal the PLC sampled then, and who/what was there.

    `station_id`, `unit_id`, `work_order_id`, `product_id` and `shift_id` are plain ids, not
    foreign keys: COPY at 100k rows/s cannot afford a foreign-key check per row, and MES rows
    are never deleted (they are PROTECTed).
    """

    pk = models.CompositePrimaryKey("station_id", "ts", "seq")
    station_id = models.IntegerField()
    ts = models.DateTimeField()
    seq = models.IntegerField(default=0, help_text="Orders samples of one station at one ts.")
    # Enrichment: the MES state valid at `ts` (NULL when no unit was at the station).
    unit_id = models.BigIntegerField(null=True)
    vin = models.CharField(max_length=17, null=True)  # noqa: DJ001 - NULL: no unit there
    serial = models.CharField(max_length=64, null=True)  # noqa: DJ001 - NULL: no unit there
    work_order_id = models.BigIntegerField(null=True)
    product_id = models.BigIntegerField(null=True)
    shift_id = models.BigIntegerField(null=True)
    firmware = models.JSONField(null=True, help_text='{"EPS": "v2.1.4", …} valid at ts')
    # The signals, by name: {"torque": 43.21, "angle": 31.0}.
    signals = models.JSONField()

    class Meta:
        db_table = "telemetry_sample"
        indexes = [
            models.Index(fields=["vin", "ts"], name="telemetry_sample_vin_ts"),
            models.Index(fields=["unit_id", "ts"], name="telemetry_sample_unit_ts"),
            models.Index(fields=["ts"], name="telemetry_sample_ts"),
        ]

    def __str__(self) -> str:
        return f"station {self.station_id} @ {self.ts.isoformat()} #{self.seq}"


class SignalRollup(models.Model):
    """One minute of one signal at one station: what dashboards and SPC charts read."""

    pk = models.CompositePrimaryKey("station_id", "signal", "bucket")
    station_id = models.IntegerField()
    signal = models.CharField(max_length=64)
    bucket = models.DateTimeField(help_text="Start of the minute (UTC).")
    samples = models.IntegerField()
    mean = models.FloatField()
    minimum = models.FloatField()
    maximum = models.FloatField()
    stddev = models.FloatField(null=True, help_text="Sample standard deviation; NULL for n=1.")

    class Meta:
        db_table = "telemetry_rollup_1m"
        indexes = [models.Index(fields=["bucket"], name="telemetry_rollup_bucket")]

    def __str__(self) -> str:
        return f"station {self.station_id} {self.signal} {self.bucket:%Y-%m-%d %H:%M}"


class RollupWatermark(models.Model):
    """Up to where the roll-ups are complete; refreshes recompute a look-back window before it."""

    name = models.CharField(max_length=32, primary_key=True)
    complete_until = models.DateTimeField()

    class Meta:
        db_table = "telemetry_rollup_watermark"

    def __str__(self) -> str:
        return f"{self.name} until {self.complete_until.isoformat()}"

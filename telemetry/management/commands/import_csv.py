import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mes.audit import audit_context
from mes.errors import MesError
from mes.models import Station, StationType
from telemetry.importing import (
    AUDIT_SOURCE,
    DEFAULT_BATCH_ROWS,
    DEFAULT_WRITERS,
    MAX_BATCH_ROWS,
    MAX_WRITERS,
    HistorianImport,
    ImportRefused,
    ImportReport,
    describe_span,
    import_station_create,
    line_for_new_station,
    read_header,
    station_signals_declare,
    timezone_named,
)

PROGRESS_EVERY_S = 2.0


class Command(BaseCommand):
    help = (
        "Import a historian CSV export as one station's telemetry, through the same path as live "
        "data: every row is joined with the MES state valid at its own instant (unit/VIN, work "
        "order, product, firmware, shift) and stored with the ingest worker's idempotent COPY, "
        "so importing the same file again stores nothing new and says how many samples were "
        "already there. The file has one header line, one timestamp column (ts, timestamp, time "
        "or datetime, else the first column; ISO 8601, epoch s/ms/µs/ns by magnitude, or common "
        "historian formats) and one column per signal (`torque [N·m]` gives the unit). Naive "
        "timestamps are UTC unless --timezone names the zone. Empty cells are missing values, "
        "not zero. Samples sharing a timestamp get seq 0, 1, 2… in file order. The file is "
        "streamed in batches, with progress every few seconds. See docs/telemetry.md."
    )

    def add_arguments(self, parser):
        parser.add_argument("station", metavar="STATION", help="station code, e.g. ST5")
        parser.add_argument(
            "file", metavar="FILE", type=Path, help="the CSV export (a .gz file is decompressed)"
        )
        parser.add_argument(
            "--sep",
            default=None,
            help="field separator, e.g. ';' or '\\t' (default: the most frequent of , ; tab | "
            "in the header line). With a separator other than ',' decimal commas (43,21) are read",
        )
        parser.add_argument(
            "--timestamp-column",
            metavar="NAME",
            default=None,
            help="the timestamp column (default: the one named ts, timestamp, time or datetime, "
            "in any case, else the first column)",
        )
        parser.add_argument(
            "--timestamp-format",
            metavar="FORMAT",
            default=None,
            help="a strptime format for timestamps auto-detection cannot read or could read two "
            "ways, e.g. '%%d/%%m/%%Y %%H:%%M:%%S'",
        )
        parser.add_argument(
            "--timezone",
            metavar="TZ",
            default=None,
            help="IANA zone of naive timestamps, e.g. Europe/Berlin (default UTC). Timestamps "
            "with an offset and epoch numbers are absolute already",
        )
        parser.add_argument(
            "--encoding", default="utf-8-sig", help="text encoding (default UTF-8, BOM allowed)"
        )
        parser.add_argument(
            "--create-station",
            action="store_true",
            help="create the station when the MES does not know it (audited), after the last "
            "station of --line",
        )
        parser.add_argument(
            "--line",
            metavar="CODE",
            default=None,
            help="line of a station created by --create-station: LINE, or SITE/AREA/LINE where "
            "line codes repeat (needed unless the plant has exactly one line)",
        )
        parser.add_argument(
            "--station-name", default="", help="name of a created station (default its code)"
        )
        parser.add_argument(
            "--station-type",
            default=StationType.ASSEMBLY,
            choices=StationType.values,
            help="type of a created station (default assembly)",
        )
        parser.add_argument(
            "--no-declare-signals",
            action="store_true",
            help="do not declare the file's signal columns as station signals (by default the "
            "ones the station does not declare yet are declared, audited, with the unit the "
            "header gives, when their names are lower_snake_case)",
        )
        parser.add_argument(
            "--skip-bad-rows",
            action="store_true",
            help="skip rows with an unreadable timestamp, text in a signal column, an infinite "
            "value or too many cells, count them and show the first ten (default: stop at the "
            "first one, naming its line and column)",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="read the whole file as an import would (timestamps, values, MES state) and "
            "report, storing and creating nothing; the station must exist",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_ROWS,
            help=f"rows per COPY batch (default {DEFAULT_BATCH_ROWS}, at most {MAX_BATCH_ROWS})",
        )
        parser.add_argument(
            "--writers",
            type=int,
            default=DEFAULT_WRITERS,
            help=f"PostgreSQL sessions storing batches side by side (default {DEFAULT_WRITERS}, "
            f"at most {MAX_WRITERS})",
        )

    def handle(self, *args, **options):
        path: Path = options["file"]
        try:
            timezone_named(options["timezone"])
            read_header(
                path,
                sep=options["sep"],
                encoding=options["encoding"],
                timestamp_column=options["timestamp_column"],
            )
            with audit_context(user=None, source=AUDIT_SOURCE):
                station = self._station(options)
            importer = HistorianImport(
                station=station,
                path=path,
                sep=options["sep"],
                timestamp_column=options["timestamp_column"],
                timestamp_format=options["timestamp_format"],
                timezone=options["timezone"],
                encoding=options["encoding"],
                batch_rows=options["batch_size"],
                skip_bad_rows=options["skip_bad_rows"],
                writers=options["writers"],
                check_only=options["check"],
                progress=None
                if options["verbosity"] == 0
                else self._progress_printer(
                    every_batch=options["verbosity"] >= 2, checking=options["check"]
                ),
            )
        except (ImportRefused, MesError) as error:
            raise CommandError(str(error)) from error
        self._introduce(station, path, options)
        try:
            report = importer.run()
        except ImportRefused as error:
            stored = importer.report.stored
            if stored:
                raise CommandError(
                    f"{error} ({stored:,} samples before it were stored; importing the corrected "
                    "file again stores the rest and skips those)"
                ) from error
            raise CommandError(f"{error} (nothing stored)") from error
        if options["check"]:
            self._summary(path, report, checked=True)
            return
        if not options["no_declare_signals"] and report.signals:
            with audit_context(user=None, source=AUDIT_SOURCE):
                report.declared = station_signals_declare(station=station, signals=report.signals)
        self._summary(path, report)

    def _station(self, options) -> Station:
        code = options["station"]
        station = Station.objects.select_related("line__area__site").filter(code=code).first()
        if station is not None:
            return station
        if options["check"]:
            raise ImportRefused(f"unknown station {code!r}: --check reads for an existing station")
        if not options["create_station"]:
            raise ImportRefused(
                f"unknown station {code!r}: give --create-station (and --line) to create it"
            )
        line = line_for_new_station(options["line"])
        station = import_station_create(
            code=code,
            line=line,
            name=options["station_name"],
            station_type=options["station_type"],
        )
        self.stdout.write(f"created station {station.code} on line {line.code} (audited)")
        return Station.objects.select_related("line__area__site").get(pk=station.pk)

    def _introduce(self, station: Station, path: Path, options) -> None:
        self.stdout.write(f"importing {path} into station {station.code} ({station.name})")
        site_zone = station.line.area.site.timezone
        if options["timezone"] is None and site_zone not in ("UTC", "Etc/UTC"):
            self.stdout.write(
                f"  naive timestamps are read as UTC; the site's zone is {site_zone}: give "
                f"--timezone {site_zone} if the historian wrote local times"
            )
        self.stdout.flush()

    def _progress_printer(self, *, every_batch: bool, checking: bool):
        started = time.perf_counter()
        last = [started]

        def progress(report: ImportReport) -> None:
            now = time.perf_counter()
            if not every_batch and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            rate = report.rows / (now - started) if now > started else 0.0
            done = (
                f"{report.samples:,} samples ready"
                if checking
                else f"{report.stored:,} stored, {report.already_there:,} already there"
            )
            self.stdout.write(
                f"  {report.rows:,} rows read, {done}, {report.skipped:,} skipped — "
                f"{rate:,.0f} rows/s"
            )
            self.stdout.flush()

        return progress

    def _summary(self, path: Path, r: ImportReport, *, checked: bool = False) -> None:
        out = self.stdout.write
        skipped = (
            f"{r.skipped:,} skipped ({r.without_values:,} without any value, {r.bad_rows:,} bad) "
            f"in {r.seconds:,.1f} s ({r.rows_per_second:,.0f} rows/s)"
        )
        if checked:
            out(
                f"checked {path.name} for station {r.station}: {r.rows:,} rows read, "
                f"{r.samples:,} samples ready, {skipped}; nothing stored"
            )
        else:
            out(
                f"imported {path.name} into station {r.station}: {r.rows:,} rows read, "
                f"{r.stored:,} samples stored, {r.already_there:,} already there, {skipped}"
            )
        separator = {"\t": "tab"}.get(r.separator, repr(r.separator))
        out(
            f"  {describe_span(r)}; timestamps in column {r.timestamp_column!r} "
            f"read as {r.timestamp_format}; separator {separator}"
            + ("; decimal commas" if r.decimal_comma else "")
        )
        signals = ", ".join(f"{n} [{u}]" if u else n for n, u in r.signals.items())
        out(f"  signals: {signals}")
        if r.declared:
            out(f"  declared on the station (audited): {', '.join(r.declared)}")
        for header, why in r.ignored_columns.items():
            out(f"  ignored column {header!r}: {why}")
        if r.read_twice:
            out(
                "  the file is not in time order: it was read a second time with every "
                "timestamp in memory so that equal timestamps get distinct seqs"
            )
        for example in r.bad_examples:
            out(f"  skipped {example}")
        if r.bad_rows > len(r.bad_examples):
            out(f"  … and {r.bad_rows - len(r.bad_examples):,} more bad rows")
        if r.older_than_retention:
            hours = settings.TELEMETRY_RETENTION_HOURS
            out(
                f"warning: {r.older_than_retention:,} samples are older than the telemetry "
                f"retention ({hours} h): retention upkeep deletes them; raise "
                "AEGIS_TELEMETRY_RETENTION_HOURS to keep them"
            )

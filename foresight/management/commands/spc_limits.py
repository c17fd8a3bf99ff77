import time

from django.core.management.base import BaseCommand, CommandError

from foresight import registry, spc, training
from mes.audit import audit_context
from mes.errors import MesError
from mes.models import Station

PROGRESS_EVERY_S = 2.0
# Beyond the ~1 % of points an in-control baseline puts outside its own limits (rule 1 on both
# charts), a baseline is suspect.
SUSPECT_SHARE = 0.03


class Command(BaseCommand):
    help = (
        "Compute the SPC control limits of one station's signal from its stored telemetry over "
        "--start … --end (ISO 8601 instants, both inclusive; naive ones are UTC), a period "
        "judged normal, and make them the signal's active limits: the live scorer then charts "
        "the signal against them and raises a defect alert (source spc) for each Nelson rule "
        "that fires. --subgroup 1 (the default) charts individuals (I-MR); 2 to 10 charts means "
        "and ranges of that many consecutive samples (X̄-R). The previous active limits of the "
        "signal are kept, inactive; computing the same baseline again changes nothing. "
        "--deactivate stops charting the signal. Audited; see docs/spc.md."
    )

    def add_arguments(self, parser):
        parser.add_argument("--station", required=True, metavar="S", help="station code, e.g. 5")
        parser.add_argument("--signal", required=True, metavar="X", help="signal, e.g. torque")
        parser.add_argument(
            "--start", metavar="T1", help="first instant of the baseline, e.g. 2026-11-22T06:00Z"
        )
        parser.add_argument("--end", metavar="T2", help="last instant of the baseline (inclusive)")
        parser.add_argument(
            "--subgroup",
            type=int,
            default=1,
            metavar="N",
            help=f"samples per subgroup: 1 for I-MR (default), 2 to {spc.MAX_SUBGROUP} for X̄-R",
        )
        parser.add_argument(
            "--every",
            type=int,
            default=0,
            metavar="K",
            help="chart one subgroup (or individual) every K samples of the signal: the first N "
            "of each K (default: back to back). At telemetry rates this sets how many points "
            "a minute the chart gets, and so its false alarms; see docs/spc.md",
        )
        parser.add_argument(
            "--rules",
            default="all",
            metavar="LIST",
            help="the Nelson rules that raise alerts, e.g. 1,2,5,6 (default all: 1 to 8; rule "
            "1 covers both charts). Each rule adds false alarms on a process in control: see "
            "docs/spc.md for the measured rates",
        )
        parser.add_argument(
            "--deactivate",
            action="store_true",
            help="stop charting the signal (its active limits become inactive); no baseline",
        )

    def handle(self, *args, **options):
        station = Station.objects.filter(code=options["station"]).first()
        if station is None:
            raise CommandError(f"unknown station {options['station']!r}")
        signal = options["signal"]
        try:
            with audit_context(user=None, source="command"):
                if options["deactivate"]:
                    limits = registry.control_limits_deactivate(station=station, signal=signal)
                    self.stdout.write(f"stopped charting {station.code}.{signal} ({limits})")
                    return
                if not options["start"] or not options["end"]:
                    raise CommandError("--start and --end give the baseline period")
                start = training.parse_instant(options["start"], name="start")
                end = training.parse_instant(options["end"], name="end")
                quiet = options["verbosity"] == 0
                if not quiet:
                    self.stdout.write(
                        f"reading {station.code}.{signal} from "
                        f"{training.describe_range(start, end)}"
                    )
                limits, new = registry.control_limits_from_baseline(
                    station=station,
                    signal=signal,
                    start=start,
                    end=end,
                    subgroup_size=options["subgroup"],
                    interval=options["every"],
                    rules=options["rules"],
                    progress=None if quiet else self._progress(),
                )
        except MesError as error:
            raise CommandError(error.detail) from error
        if quiet:
            return
        location, spread = ("X̄", "R") if limits.subgroup_size > 1 else ("I", "MR")
        kind = "I-MR" if limits.subgroup_size == 1 else f"X̄-R, subgroups of {limits.subgroup_size}"
        if limits.interval > limits.subgroup_size:
            kind += f", one every {limits.interval} samples"
        self.stdout.write(
            f"{'activated' if new else 'unchanged, already active:'} limits #{limits.pk} of "
            f"{station.code}.{signal} ({kind}) from {limits.baseline_samples:,} samples, "
            f"{limits.baseline_points:,} points, rules {limits.rules}\n"
            f"  {location} chart: centre {limits.centre:.6g}, UCL {limits.ucl:.6g}, "
            f"LCL {limits.lcl:.6g} (process sigma {limits.sigma:.6g})\n"
            f"  {spread} chart: centre {limits.range_centre:.6g}, UCL {limits.range_ucl:.6g}, "
            f"LCL {limits.range_lcl:.6g}"
        )
        outside = limits.baseline_points_outside
        share = outside / limits.baseline_points
        line = (
            f"  {outside} of {limits.baseline_points:,} baseline points lie beyond these limits "
            f"({share:.1%}; a process in control puts about 1% there)"
        )
        if share > SUSPECT_SHARE:
            self.stdout.write(
                self.style.WARNING(
                    f"{line}: the baseline was not in control itself; look at those periods "
                    f"and consider a cleaner baseline"
                )
            )
        else:
            self.stdout.write(line)

    def _progress(self):
        last = [-PROGRESS_EVERY_S]

        def progress(read: int, total: int) -> None:
            now = time.monotonic()
            if read < total and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            share = read / total if total else 1.0
            self.stdout.write(f"  {share:4.0%}  {read:,} of {total:,} samples read")
            self.stdout.flush()

        return progress

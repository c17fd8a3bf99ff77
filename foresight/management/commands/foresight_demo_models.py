from django.core.management.base import BaseCommand, CommandError

from foresight import demo, training
from mes.errors import MesError


class Command(BaseCommand):
    help = (
        "Demo plant only: give every station of the demo plant (manage.py seed_demo) that has "
        "no production Foresight model one, so the simulator's faults raise model alerts. The "
        "simulator's generator runs the stations' lines offline for a simulated half hour of "
        "normal running (no faults; no MES records), the samples are stored as the stations' "
        "telemetry just before now, and a pca_t2q model per station is trained on them with "
        "the normal training code (windows of 2 s and 10 s at the live simulator's "
        f"{demo.RATE_VARIABLE}, default {demo.DEFAULT_RATE_HZ:g} Hz), registered and promoted "
        "to production (audited as the system). Idempotent: stations with a production model "
        "are left alone, unless it is a demo model made for another sampling rate. `make run` "
        "runs it while the processes start, when it starts the demo plant with the simulator. "
        'See docs/foresight.md, "Demo models".'
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--rate-hz",
            type=float,
            default=None,
            help=f"sampling rate of the live simulator the models must fit (default: "
            f"{demo.RATE_VARIABLE}, else {demo.DEFAULT_RATE_HZ:g})",
        )
        parser.add_argument(
            "--until",
            default=None,
            metavar="INSTANT",
            help="the simulated history ends just before this ISO 8601 instant (default: now; "
            "`make run` gives the instant before it starts the live simulator)",
        )
        parser.add_argument(
            "--minutes",
            type=float,
            default=None,
            help=f"simulated minutes of normal running to train on (default "
            f"{demo.HISTORY_MINUTES:g}; less above 50 Hz: at most "
            f"{demo.MAX_HISTORY_SAMPLES:,} samples per station)",
        )

    def handle(self, *args, rate_hz, minutes, until, **options):
        if not demo.demo_stations():
            raise CommandError("the demo plant is not there: run manage.py seed_demo first")
        quiet = options["verbosity"] == 0

        def say(message: str) -> None:
            if not quiet:
                self.stdout.write(message)
                self.stdout.flush()

        try:
            now = training.parse_instant(until, name="until") if until else None
            report = demo.demo_models_ensure(rate_hz=rate_hz, minutes=minutes, now=now, say=say)
        except MesError as error:
            raise CommandError(str(error)) from error
        if not report.trained:
            say(
                f"every demo station has a production model ({len(report.ready)} stations): "
                "nothing to do"
            )
            return
        seconds = sum(report.seconds.values())
        say(
            f"{len(report.trained)} demo models in production in {seconds:.1f} s "
            f"(history {report.seconds['history']:.1f} s, training {report.seconds['training']:.1f}"
            f" s; {report.samples_stored:,} samples at {report.rate_hz:g} Hz)"
        )

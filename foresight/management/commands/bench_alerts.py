import orjson
from django.core.management.base import BaseCommand, CommandError

from aegis.embedded.servers import NATS_SYNC_INTERVAL
from foresight import bench
from telemetry import bench as ingest_bench

TARGET_P99_MS = 250.0  # the target at 20,000 samples/s, printed beside the result


class Command(BaseCommand):
    help = (
        "Measure publish → alert at a websocket client: on a nats-server of its own, start "
        "daphne, the Foresight scorer and an ingest worker, publish 20,000 samples/s of "
        "background telemetry from a throwaway plant, inject an obvious fault every half "
        "second, and time each from just before its publish to the defect.alert a signed-in "
        "websocket receives. With --scorers N the stations are scored by N partitioned scorer "
        "processes. Prints a summary, or with --json one JSON object (keys "
        "alert_latency_p50_ms, alert_latency_p99_ms, background_samples_per_s, "
        "alerts_expected, alerts_received, cpu_seconds, scorer_cpu_us_per_sample, "
        "scorer_lag_max_s, …). Everything the run creates is removed afterwards. See "
        "docs/benchmarks.md."
    )

    def add_arguments(self, parser):
        defaults = bench.AlertBenchSizes()
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--rate",
            type=int,
            default=defaults.rate,
            help="background samples/s (default %(default)s)",
        )
        parser.add_argument(
            "--seconds",
            type=float,
            default=defaults.seconds,
            help="length of the run (default %(default)s)",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=defaults.interval_s,
            help="seconds between injected faults (default %(default)s)",
        )
        parser.add_argument(
            "--stations", type=int, default=defaults.stations, help="stations (default %(default)s)"
        )
        parser.add_argument(
            "--scorers",
            type=int,
            default=defaults.scorers,
            help="scorer processes, each scoring one partition of the stations "
            "(default %(default)s)",
        )
        parser.add_argument(
            "--sync-interval",
            default=defaults.sync_interval,
            help="the nats-server's sync_interval: 'always' (default, every message on disk "
            "before it is acknowledged and delivered, as the product runs) or a duration such "
            "as '2m' (the server's default) to see how much of the latency is the disk's",
        )

    def handle(self, *args, **options):
        sizes = bench.AlertBenchSizes(
            stations=options["stations"],
            rate=options["rate"],
            seconds=options["seconds"],
            interval_s=options["interval"],
            scorers=options["scorers"],
            sync_interval=options["sync_interval"],
        )
        if not NATS_SYNC_INTERVAL.fullmatch(sizes.sync_interval):
            raise CommandError("--sync-interval must be 'always' or a duration such as 2m or 10s")
        if not 1 <= sizes.scorers <= min(8, sizes.stations):
            raise CommandError("--scorers must be 1-8 and at most --stations")
        if not 1 <= sizes.stations <= 500 or sizes.rate < sizes.stations * 20:
            raise CommandError("--stations must be 1-500 and --rate at least 20 per station")
        if sizes.seconds <= sizes.warmup_seconds + sizes.interval_s or sizes.interval_s <= 0:
            raise CommandError(
                f"--seconds must exceed the {sizes.warmup_seconds:g} s warm-up plus one interval"
            )
        stream = self.stderr if options["json"] else self.stdout
        ingest_bench.migrate_if_needed(stream.write)

        def progress(line: str) -> None:
            stream.write(line)
            stream.flush()

        try:
            result = bench.run(sizes, progress)
        except RuntimeError as error:
            raise CommandError(str(error)) from error
        if options["json"]:
            self.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
            return
        p99 = result["alert_latency_p99_ms"]
        verdict = "met" if p99 is not None and p99 <= TARGET_P99_MS else "MISSED"
        self.stdout.write(
            f"background {result['background_samples_per_s']:,.0f} samples/s; alerts "
            f"{result['alerts_received']} of {result['alerts_expected']} received "
            f"({result['alerts_unexpected']} unexpected)"
        )
        if p99 is not None:
            self.stdout.write(
                f"publish → websocket: p50 {result['alert_latency_p50_ms']:.1f} ms, p99 "
                f"{p99:.1f} ms, max {result['alert_latency_max_ms']:.1f} ms "
                f"(target p99 ≤ {TARGET_P99_MS:g} ms: {verdict})"
            )
        else:
            self.stdout.write(f"no alert arrived (target p99 ≤ {TARGET_P99_MS:g} ms: {verdict})")
        cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["cpu_seconds"].items())
        self.stdout.write(
            f"{result['scorers']} scorer(s): {result['scorer_cpu_us_per_sample']:.1f} µs CPU per "
            f"sample; backlog mean {result['scorer_lag_mean_s']:.2f} s, max "
            f"{result['scorer_lag_max_s']:.2f} s of traffic; publish → stream ack p99 "
            f"{result['publish_ack_p99_ms']:.1f} ms (sync_interval {sizes.sync_interval})\n"
            f"CPU seconds over the {result['seconds']:.0f} s run: {cpu}"
        )

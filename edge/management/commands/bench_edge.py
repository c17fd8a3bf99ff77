"""`manage.py bench_edge`: disk buffer throughput against the raw write floor (docs/edge.md)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from edge import bench


class Command(BaseCommand):
    help = (
        "Measure the edge bridge's disk buffer on this machine's disk: appends with group "
        "fsync and with an fsync per record, replay after a restart, each against a raw "
        "os.write floor in the same run; and the bytes per sample on disk. Writes only in a "
        "temporary directory (under --directory if given) and deletes it."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--directory", type=Path, help="where to write (the buffer's disk)")
        parser.add_argument("--records", type=int, default=2000)
        parser.add_argument("--batch", type=int, default=100, help="samples per record")
        parser.add_argument("--signals", type=int, default=4, help="signals per sample")

    def handle(self, *args, directory, records, batch, signals, **options) -> None:
        results = bench.run(directory=directory, records=records, batch=batch, signals=signals)
        floor = results[0].per_second
        self.stdout.write(f"{records} records of {batch} samples, {signals} signals each")
        for result in results:
            self.stdout.write(
                f"{result.what:55} {result.per_second:>12,.0f} samples/s "
                f"({result.per_second / floor:.2f} x floor)"
            )
        self.stdout.write("bytes on disk per sample:")
        for sample_signals in (1, 4, 16):
            for sample_batch in (1, 10, 100, 500):
                size = bench.bytes_per_sample(signals=sample_signals, batch=sample_batch)
                self.stdout.write(
                    f"  {sample_signals:>2} signals, {sample_batch:>3} per message: {size:6.1f}"
                )

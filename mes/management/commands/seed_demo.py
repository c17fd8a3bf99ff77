import time

from django.conf import settings
from django.core.management.base import BaseCommand

from mes.demo import seed_demo


class Command(BaseCommand):
    help = (
        "Create the demo plant: site DEMO with lines L1 (vehicles with VINs, stations 1-6) and "
        "L2 (battery packs, stations 7-12) of tightening, flashing, alignment, leak-test and "
        "inspection stations with their signals; products and routes with ideal cycle times; "
        "three shifts with breaks from a week ago to two weeks ahead; work orders with units; "
        "and one demo user per role. Idempotent: it only adds what is missing. Passwords are "
        "generated once and kept in <AEGIS_DATA_DIR>/demo-credentials.json (mode 0600); "
        "existing accounts with a demo user's name that it did not create are left untouched."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-users", action="store_true", help="no demo users")

    def handle(self, *args, no_users: bool = False, **options):
        started = time.monotonic()

        def progress(message: str) -> None:
            self.stdout.write(f"  [{time.monotonic() - started:5.1f} s] {message}")

        report = seed_demo(
            credentials_file=settings.DATA_DIR / "demo-credentials.json",
            users=not no_users,
            progress=progress,
        )
        created = ", ".join(f"{count} {name}" for name, count in sorted(report.created.items()))
        self.stdout.write(f"demo plant ready ({created or 'nothing new'} created)")
        if no_users:
            return
        self.stdout.write("demo users (username / password / role):")
        for credential in report.credentials:
            self.stdout.write(
                f"  {credential.username:<11} {credential.password:<18} {credential.role}"
            )
        for username in report.untouched_users:
            self.stdout.write(
                self.style.WARNING(f"  {username:<11} exists already and was left untouched")
            )

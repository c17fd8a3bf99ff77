from django.conf import settings
from django.core.management.base import BaseCommand

from mes.services import demo_plant_create, demo_users_create


class Command(BaseCommand):
    help = (
        "Create the demo plant (site DEMO, line L1, stations 1-6) and one demo user per role. "
        "Idempotent: run it any number of times; passwords are generated once and kept in "
        "<AEGIS_DATA_DIR>/demo-credentials.json (mode 0600). Existing accounts with a demo "
        "user's name that this command did not create are left untouched."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-users", action="store_true", help="create the plant only, no demo users"
        )

    def handle(self, *args, no_users: bool = False, **options):
        plant = demo_plant_create()
        self.stdout.write(
            f"demo plant: site {plant.site.code}, line {plant.line.code}, "
            f"{len(plant.stations)} stations ({plant.created} objects created)"
        )
        if no_users:
            return
        users = demo_users_create(credentials_file=settings.DATA_DIR / "demo-credentials.json")
        self.stdout.write("demo users (username / password / role):")
        for credential in users.credentials:
            self.stdout.write(
                f"  {credential.username:<11} {credential.password:<18} {credential.role}"
            )
        for username in users.untouched:
            self.stdout.write(
                self.style.WARNING(f"  {username:<11} exists already and was left untouched")
            )

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from aegis import jetstream


class Command(BaseCommand):
    help = (
        "Create or update the JetStream streams, durable consumers and KV buckets Aegis uses "
        "(declared in aegis/jetstream.py). Idempotent; run on every deploy. Replicas come from "
        "AEGIS_NATS_REPLICAS (3 on a cluster)."
    )

    def handle(self, *args, **options):
        async def run() -> list[str]:
            client = await jetstream.connect("nats-setup", allow_reconnect=False)
            try:
                return await jetstream.provision(
                    client.jetstream(), replicas=settings.NATS_STREAM_REPLICAS
                )
            finally:
                await client.close()

        try:
            report = asyncio.run(run())
        except Exception as error:
            raise CommandError(
                f"NATS provisioning failed: {type(error).__name__}: {error}"
            ) from error
        for line in report:
            self.stdout.write(line)

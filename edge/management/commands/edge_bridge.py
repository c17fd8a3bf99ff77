"""`manage.py edge_bridge --config edge.yaml`: the edge bridge process (docs/edge.md)."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand, CommandError

from edge.config import EdgeConfigError, build_sources, load


class Command(BaseCommand):
    help = (
        "Bridge PLCs to Aegis: read OPC UA subscriptions, MQTT topics (plain JSON and "
        "Sparkplug B) and Modbus TCP registers as edge.yaml maps them, keep every sample in a "
        "durable disk buffer through network outages and restarts, and publish it to the "
        "TELEMETRY stream of JetStream exactly once per sample. Serves /metrics and /healthz "
        "on http.port. Stops on SIGTERM/SIGINT after writing the samples in hand to disk. "
        "Runs with DJANGO_SETTINGS_MODULE=aegis.settings.edge on a box without a database."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--config", required=True, help="path of edge.yaml (docs/edge.md)")
        parser.add_argument(
            "--check",
            action="store_true",
            help="validate the config and build the sources, then exit (0 when valid)",
        )

    def handle(self, *args, config: str, check: bool, **options) -> None:
        from edge.bridge import Bridge

        try:
            edge_config = load(config)
            sources = build_sources(edge_config)
        except EdgeConfigError as error:
            raise CommandError(str(error)) from error
        if check:
            self.stdout.write(
                f"{config}: valid; {len(sources)} sources: "
                + ", ".join(source.name for source in sources)
            )
            return
        asyncio.run(Bridge(edge_config, sources).serve())

"""Telemetry: JetStream ingest, point-in-time MES enrichment, storage, dead letters, simulator."""

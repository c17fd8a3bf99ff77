"""Celery tasks of the telemetry app; thin wrappers over telemetry.upkeep."""

from __future__ import annotations

from celery import shared_task

from telemetry import upkeep


@shared_task(name="telemetry.rollups_refresh")
def rollups_refresh() -> dict:
    result = upkeep.rollups_refresh()
    return {key: str(value) for key, value in result.items()}


@shared_task(name="telemetry.retention_enforce")
def retention_enforce() -> dict:
    result = upkeep.retention_enforce()
    return {key: str(value) for key, value in result.items()}

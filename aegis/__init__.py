"""Aegis: a Django MES fusing PLC telemetry with live MES state to predict defects."""

from aegis.celery import app as celery_app

__all__ = ["celery_app"]

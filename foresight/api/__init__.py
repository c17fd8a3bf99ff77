"""Foresight's REST API under /api/v1/foresight/: the model registry, alerts and scores.

See docs/api.md and docs/foresight.md.
"""

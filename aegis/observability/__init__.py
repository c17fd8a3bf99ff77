"""Logs, metrics and request ids for every Aegis process."""

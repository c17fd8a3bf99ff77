"""Retry delays shared by the long-running services (relay, ingest, scorer)."""

from __future__ import annotations


class Backoff:
    """Delays after consecutive failures: initial, doubled each time, capped."""

    def __init__(self, initial_s: float = 0.5, cap_s: float = 10.0) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap_s, self.initial_s * 2**self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0

"""Stopping long-running asyncio services (`outbox_relay`, `ingest`) on signals.

SIGTERM (docker stop, honcho), SIGINT (Ctrl-C) and SIGHUP (the terminal of `make run` closed)
all mean the same: finish the work in hand, then stop.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

logger = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopsOnSignals:
    """Mixin: `_handle_signals()` in the running loop routes the stop signals to
    `request_stop()`, logging `stopping_event`; `_release_signals()` gives them back."""

    stopping_event = "service.stopping"

    def request_stop(self) -> None:  # pragma: no cover - every service defines it
        raise NotImplementedError

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _release_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        logger.info(self.stopping_event, signal=signal.Signals(signum).name)
        self.request_stop()

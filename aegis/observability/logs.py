"""structlog configured once for Django, Celery and the stream workers.

Every line is one JSON object on stdout (or a coloured line with AEGIS_LOG_FORMAT=console),
carrying request_id/user_id for web requests and task_id for Celery tasks.
"""

from __future__ import annotations

import structlog

_SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(*, level: str, output: str) -> dict:
    """Configure structlog and return the matching Django LOGGING dict."""
    renderer = (
        structlog.processors.JSONRenderer()
        if output == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
                "foreign_pre_chain": _SHARED_PROCESSORS,
            }
        },
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "structured"},
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            "django.server": {"level": "WARNING"},
            "django_structlog": {"level": level},
            "daphne": {"level": "WARNING"},
        },
    }

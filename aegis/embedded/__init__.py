"""Embedded real servers (PostgreSQL, NATS with JetStream, Redis) for laptops and tests."""

from aegis.embedded.runtime import (
    SERVICE_URL_VARIABLES,
    EmbeddedServices,
    default_data_dir,
    use_embedded_services,
)
from aegis.embedded.servers import EmbeddedServerError

__all__ = [
    "SERVICE_URL_VARIABLES",
    "EmbeddedServerError",
    "EmbeddedServices",
    "default_data_dir",
    "use_embedded_services",
]

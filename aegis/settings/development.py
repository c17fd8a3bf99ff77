"""A laptop: embedded servers for every unset service URL, data under ./var (AEGIS_DATA_DIR)."""

import os

from aegis.embedded import default_data_dir, use_embedded_services
from aegis.settings import environment as env
from aegis.settings.secret_key import persistent_secret_key

os.environ.setdefault("AEGIS_DEBUG", "true")
# A malformed URL fails here, before any embedded server starts for the others.
for _variable, _schemes in (
    ("AEGIS_DATABASE_URL", ("postgres", "postgresql", "postgis")),
    ("AEGIS_NATS_URL", ("nats", "tls")),
    ("AEGIS_REDIS_URL", ("redis", "rediss")),
):
    if env.raw(_variable):
        env.service_url(_variable, _schemes)
use_embedded_services(
    default_data_dir(), nats_sync_interval=env.string("AEGIS_NATS_SYNC_INTERVAL", "always")
)

from aegis.settings.base import *  # noqa: E402,F403
from aegis.settings.base import DATA_DIR  # noqa: E402

SECRET_KEY = env.raw("AEGIS_SECRET_KEY") or persistent_secret_key(DATA_DIR)
# Static files are served from the source folders; nothing to collect on a laptop.
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

"""The edge box: only `manage.py edge_bridge`. No database, no embedded servers, no web app.

The bridge reads its own config file (edge.yaml, docs/edge.md); Django here only runs the
command and configures the logs.
"""

import os
import secrets

from aegis.settings import environment as env

# Nothing on an edge box signs anything; Django still wants a key to start.
SECRET_KEY = os.environ.get("AEGIS_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["edge"]
DATABASES: dict = {}
USE_TZ = True
TIME_ZONE = "UTC"

LOG_LEVEL = env.choice("AEGIS_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOG_FORMAT = env.choice("AEGIS_LOG_FORMAT", "json", ("json", "console"))

from aegis.observability.logs import configure_logging  # noqa: E402

LOGGING = configure_logging(level=LOG_LEVEL, output=LOG_FORMAT)

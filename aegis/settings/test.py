"""The test session: its own embedded servers in a private temporary data directory.

They never touch `make run`'s ./var and are deleted when the session ends. Set the service URLs
to run the tests against external servers instead.
"""

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from aegis.embedded import SERVICE_URL_VARIABLES, use_embedded_services

if not all(os.environ.get(variable) for variable in SERVICE_URL_VARIABLES.values()):
    use_embedded_services(
        Path(tempfile.mkdtemp(prefix="aegis-test-")),
        nats_sync_interval="2m",
        delete_on_exit=True,
    )
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _metrics_dir = tempfile.mkdtemp(prefix="aegis-test-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    _owner = os.getpid()

    def _remove_metrics_dir() -> None:
        if os.getpid() == _owner:  # not in forked children
            shutil.rmtree(_metrics_dir, ignore_errors=True)

    atexit.register(_remove_metrics_dir)
os.environ.setdefault("AEGIS_LOG_FORMAT", "console")
os.environ.setdefault("AEGIS_LOG_LEVEL", "warning")
os.environ.setdefault("AEGIS_SECRET_KEY", secrets.token_urlsafe(50))

from aegis.settings.base import *  # noqa: F403

SECRET_KEY = os.environ["AEGIS_SECRET_KEY"]
DEBUG = False
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
READINESS_CACHE_SECONDS = 0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast user fixtures

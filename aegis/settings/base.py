"""Settings shared by every flavour; each value comes from the environment (see README).

The flavour modules (development, test, production) decide where the service URLs come from
before importing this module: embedded servers when unset (development, test) or required
explicitly (production).
"""

from __future__ import annotations

from pathlib import Path

from aegis.settings import environment as env

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATA_DIR = Path(env.string("AEGIS_DATA_DIR", str(BASE_DIR / "var"))).expanduser().resolve()

DEBUG = env.boolean("AEGIS_DEBUG", False)
ALLOWED_HOSTS = env.string_list("AEGIS_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.string_list("AEGIS_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_structlog",
    "aegis",
    "mes",
    "telemetry",
    "foresight",
    "reporting",
    "edge",
]

MIDDLEWARE = [
    "aegis.observability.middleware.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_structlog.middlewares.RequestMiddleware",
    "aegis.observability.middleware.RequestIdHeaderMiddleware",
]

ROOT_URLCONF = "aegis.urls"
ASGI_APPLICATION = "aegis.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# -- servers ----------------------------------------------------------------------------------

DATABASES = {"default": env.database("AEGIS_DATABASE_URL")}
DATABASES["default"].update(
    {
        "CONN_MAX_AGE": env.integer("AEGIS_DB_CONN_MAX_AGE", 60, minimum=0),
        "CONN_HEALTH_CHECKS": True,
        # Options from the URL's query string (sslmode, sslrootcert, …) are kept.
        "OPTIONS": {
            "connect_timeout": env.integer("AEGIS_DB_CONNECT_TIMEOUT", 5, minimum=1),
            "application_name": "aegis",
            **DATABASES["default"].get("OPTIONS", {}),
        },
    }
)

REDIS_URL = env.service_url("AEGIS_REDIS_URL", ("redis", "rediss")).geturl()
NATS_URL = env.service_url("AEGIS_NATS_URL", ("nats", "tls")).geturl()
NATS_CREDENTIALS_FILE = env.raw("AEGIS_NATS_CREDS")
NATS_TLS_CA_FILE = env.raw("AEGIS_NATS_TLS_CA")
NATS_TLS_CERT_FILE = env.raw("AEGIS_NATS_TLS_CERT")
NATS_TLS_KEY_FILE = env.raw("AEGIS_NATS_TLS_KEY")
NATS_CONNECT_TIMEOUT_S = env.integer("AEGIS_NATS_CONNECT_TIMEOUT", 5, minimum=1)
# JetStream stream replicas: 1 on one host, 3 on a cluster spread over failure domains.
NATS_STREAM_REPLICAS = env.integer("AEGIS_NATS_REPLICAS", 1, minimum=1, maximum=5)
# fsync policy of the embedded nats-server: "always" (fsync before each ack) or a duration.
NATS_SYNC_INTERVAL = env.string("AEGIS_NATS_SYNC_INTERVAL", "always")
TELEMETRY_RETENTION_HOURS = env.integer("AEGIS_TELEMETRY_RETENTION_HOURS", 24, minimum=1)
# Telemetry ingest workers (docs/telemetry-payloads.md): a batch closes at this many messages
# or after this wait, whichever comes first.
INGEST_BATCH_SIZE = env.integer("AEGIS_INGEST_BATCH_SIZE", 500, minimum=1, maximum=10_000)
INGEST_BATCH_WAIT_MS = env.integer("AEGIS_INGEST_BATCH_WAIT_MS", 250, minimum=1, maximum=60_000)
# Foresight's ONNX model files (foresight/artifacts.py): every web, worker and scorer process
# must see the same directory (one host's disk, or a shared volume).
FORESIGHT_ARTIFACT_DIR = (
    Path(env.string("AEGIS_FORESIGHT_ARTIFACT_DIR", str(DATA_DIR / "foresight" / "artifacts")))
    .expanduser()
    .resolve()
)
# A station without a model is scored by a running baseline; its alerts are off by default: on
# the demo plant's cyclic signals it raised about 75 alerts a minute. Train a model instead.
FORESIGHT_BASELINE_ALERTS = env.boolean("AEGIS_FORESIGHT_BASELINE_ALERTS", False)
# Scorer I of N (`manage.py foresight --partition` overrides it); docs/foresight.md, Partitions.
FORESIGHT_PARTITION = env.string("AEGIS_FORESIGHT_PARTITION", "1/1")
# The read-only PostgreSQL role of ODBC/JDBC reporting clients (`manage.py reporting_role`).
AEGIS_REPORTING_ROLE = env.string("AEGIS_REPORTING_ROLE", "aegis_reporting")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "aegis",
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py 8 times out every read after 5 s by default, which is exactly how long
            # channels-redis blocks in BZPOPMIN waiting for a message: an idle websocket's
            # consumer would die every few seconds. Reads may take a little longer than that
            # block; a dead Redis is still noticed within 15 s.
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
            "prefix": "aegis:channels",
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TIMEZONE = "UTC"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# -- auth -------------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

REST_FRAMEWORK = {
    # Machines send `Authorization: Bearer <token>` (POST /api/v1/auth/token); browsers use
    # their session, with CSRF enforced by DRF. The first class answers 401 with its challenge.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "mes.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "mes.api.pagination.LimitOffsetPages",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "mes.api.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "mes.api.throttling.UserThrottle",
        "mes.api.throttling.AnonymousThrottle",
    ],
    # Requests per period ("600/min", "20/s", "50000/day"), counted in Redis so every web
    # process shares them; checked when the API loads (mes/api/throttling.py).
    "DEFAULT_THROTTLE_RATES": {
        "user": env.string("AEGIS_API_THROTTLE_USER", "1200/min"),
        "anon": env.string("AEGIS_API_THROTTLE_ANON", "60/min"),
        "token": env.string("AEGIS_API_THROTTLE_TOKEN", "10/min"),
    },
    # Proxies in front of Aegis that append to X-Forwarded-For. 0 trusts only the socket's
    # address, so a client cannot pick its own identity to escape the throttles.
    "NUM_PROXIES": env.integer("AEGIS_API_NUM_PROXIES", 0, minimum=0, maximum=10),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

# The committed schema (docs/openapi.yaml) is diffed by the tests, so nothing here may depend
# on the environment.
SPECTACULAR_SETTINGS = {
    "TITLE": "Aegis MES API",
    "DESCRIPTION": (
        "The MES of Aegis: plant, products and routes, work orders, units and VINs, station "
        "visits, firmware, shifts, downtime, counts and quality events. Reads are lists and "
        "details with filters; writes are operations. Authenticate with "
        "`Authorization: Bearer <token>` (POST /api/v1/auth/token) or a browser session. "
        "See docs/api.md."
    ),
    "VERSION": "1.0.0",
    "SERVERS": [{"url": "/", "description": "the Aegis server that serves this schema"}],
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "ENUM_NAME_OVERRIDES": {
        "WorkOrderStatusEnum": "mes.models.WorkOrderStatus",
        "UnitStatusEnum": "mes.models.UnitStatus",
        "StationTypeEnum": "mes.models.StationType",
        "SeverityEnum": "mes.models.Severity",
        "DetectionSourceEnum": "mes.models.DetectionSource",
        "AuditActionEnum": "mes.models.AuditAction",
    },
    # Swagger UI and Redoc from the drf-spectacular-sidecar package: no CDN on a plant network.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# /readyz reuses a result this long, so probes and open browser tabs cannot hammer the servers.
READINESS_CACHE_SECONDS = env.integer("AEGIS_READINESS_CACHE_SECONDS", 2, minimum=0)

# Legacy-MES webhook (mes/webhooks): body limit and allowed clock difference.
WEBHOOK_MAX_BODY_BYTES = env.integer("AEGIS_WEBHOOK_MAX_BODY_BYTES", 256 * 1024, minimum=1024)
WEBHOOK_TOLERANCE_SECONDS = env.integer("AEGIS_WEBHOOK_TOLERANCE_SECONDS", 300, minimum=30)

# Bearer token required by /metrics when set (scrapers send `Authorization: Bearer …`).
METRICS_TOKEN = env.raw("AEGIS_METRICS_TOKEN")

# -- i18n, static -----------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env.string("AEGIS_STATIC_ROOT", str(DATA_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- logging ----------------------------------------------------------------------------------

LOG_LEVEL = env.choice("AEGIS_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOG_FORMAT = env.choice("AEGIS_LOG_FORMAT", "json", ("json", "console"))
DJANGO_STRUCTLOG_CELERY_ENABLED = True
DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = True

from aegis.observability.logs import configure_logging  # noqa: E402

LOGGING = configure_logging(level=LOG_LEVEL, output=LOG_FORMAT)

"""A plant: every server URL and the secret key must be given; HTTPS hardening on."""

from aegis.settings import environment as env

for _variable, _why in (
    ("AEGIS_DATABASE_URL", "PostgreSQL/TimescaleDB server"),
    ("AEGIS_NATS_URL", "NATS server with JetStream"),
    ("AEGIS_REDIS_URL", "Redis server"),
):
    env.required(_variable, f"the {_why}; production never starts embedded servers")

from aegis.settings.base import *  # noqa: E402,F403

for _variable in (
    "AEGIS_SECRET_KEY",
    "AEGIS_DATABASE_URL",
    "AEGIS_NATS_URL",
    "AEGIS_REDIS_URL",
    "AEGIS_METRICS_TOKEN",
):
    if "change-me" in (env.raw(_variable) or ""):
        raise env.SettingError(_variable, "still holds a change-me placeholder from .env.example")

SECRET_KEY = env.required("AEGIS_SECRET_KEY", "a random string of at least 50 characters")
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
    raise env.SettingError("AEGIS_SECRET_KEY", "must be at least 50 random characters")
DEBUG = env.boolean("AEGIS_DEBUG", False)
ALLOWED_HOSTS = env.string_list("AEGIS_ALLOWED_HOSTS", [])
if not ALLOWED_HOSTS:
    raise env.SettingError("AEGIS_ALLOWED_HOSTS", "is required (comma-separated host names)")

# Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.boolean("AEGIS_SECURE_SSL_REDIRECT", True)
# Probes reach the container over plain HTTP inside the plant network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.integer("AEGIS_HSTS_SECONDS", 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.boolean("AEGIS_HSTS_PRELOAD", True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
STORAGES["staticfiles"] = {  # noqa: F405
    "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
}

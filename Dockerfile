# The Aegis application image: one image for every Aegis process (daphne, Celery worker and
# beat, stream workers); docker-compose.yml picks the process with `command`.
# Classic Dockerfile syntax only (no BuildKit features), so Debian's docker-compose 1.29 builds it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=aegis.settings.production \
    AEGIS_DATA_DIR=/var/lib/aegis \
    AEGIS_STATIC_ROOT=/app/staticfiles

# A fixed uid/gid: the compose file's tmpfs metrics volume is mounted with this owner.
RUN groupadd --gid 10001 aegis \
    && useradd --uid 10001 --gid aegis --no-create-home --home-dir /var/lib/aegis \
        --shell /usr/sbin/nologin aegis \
    && install -d -o aegis -g aegis -m 0750 /var/lib/aegis /var/lib/aegis/beat /var/lib/aegis/artifacts \
    && install -d -o aegis -g aegis -m 0750 /run/aegis-metrics

WORKDIR /app

# Dependencies first, so editing the code does not reinstall them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The code stays owned by root: the aegis user can read it but not change it.
COPY . .

# Static files are collected into the image, where whitenoise serves them from.
# The production settings refuse to load without a secret key, allowed hosts and the three server
# URLs. collectstatic uses none of them: it connects to no server and signs nothing. The values
# below are throwaway placeholders that exist only in this RUN step's environment, so they are
# neither baked into the image's configuration nor used at runtime, where compose supplies the
# real ones.
RUN AEGIS_SECRET_KEY=build-time-only-collectstatic-placeholder-never-used-at-runtime \
    AEGIS_ALLOWED_HOSTS=build.invalid \
    AEGIS_DATABASE_URL=postgresql://build:build@build.invalid:5432/build \
    AEGIS_NATS_URL=nats://build.invalid:4222 \
    AEGIS_REDIS_URL=redis://build.invalid:6379/0 \
    python manage.py collectstatic --noinput --verbosity 0

USER aegis
EXPOSE 8000

# Liveness of the web process. The slim image has no curl, so a short Python probe does it.
# Non-web containers from this image turn the check off in docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "http://127.0.0.1:8000/healthz"]

CMD ["daphne", "--bind", "0.0.0.0", "--port", "8000", "--proxy-headers", "--verbosity", "0", "aegis.asgi:application"]

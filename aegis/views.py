from __future__ import annotations

import hmac
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from aegis.health import check_dependencies_cached
from aegis.observability.metrics import READINESS_FAILURES, exposition
from aegis.tasks import last_heartbeat


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches no dependency, so it never flaps with them."""
    return JsonResponse({"status": "ok"})


def _celery_status() -> dict[str, object]:
    try:
        beat = last_heartbeat()
    except Exception as error:  # noqa: BLE001 - Redis being down is reported by its own check
        return {"status": "unknown", "detail": str(error)}
    if beat is None:
        return {"status": "unknown", "detail": "no worker heartbeat recorded yet"}
    age = time.time() - beat["at"]
    return {
        "status": "ok" if age < 120 else "stale",
        "last_heartbeat_age_s": round(age, 1),
        "worker": beat["worker"],
    }


def _bearer_token_valid(request: HttpRequest) -> bool:
    if not settings.METRICS_TOKEN:
        return False
    supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(supplied.encode(), settings.METRICS_TOKEN.encode())


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: PostgreSQL, NATS and Redis each answer; 503 naming the ones that do not.

    Anyone (a load balancer, an orchestrator) gets each dependency's status; signed-in users
    and holders of the metrics token also get latencies, versions and errors. Celery's
    heartbeat is reported but does not decide readiness: the web tier serves while workers
    restart.
    """
    statuses = check_dependencies_cached(settings.READINESS_CACHE_SECONDS)
    down = sorted(name for name, status in statuses.items() if not status.ok)
    for name in down:
        READINESS_FAILURES.labels(name).inc()
    detailed = request.user.is_authenticated or _bearer_token_valid(request)
    body = {
        "status": "ok" if not down else "unavailable",
        "down": down,
        "checks": {
            name: status.as_dict() if detailed else {"status": status.as_dict()["status"]}
            for name, status in statuses.items()
        },
    }
    if detailed:
        body["celery"] = _celery_status()
    return JsonResponse(body, status=503 if down else 200)


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition for every Aegis process on this host (bearer token if configured)."""
    if settings.METRICS_TOKEN and not _bearer_token_valid(request):
        return JsonResponse({"detail": "a valid bearer token is required"}, status=401)
    payload, content_type = exposition()
    return HttpResponse(payload, content_type=content_type)

from __future__ import annotations

import time

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from aegis.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS

# Clients choose the method word; only these become label values (bounded cardinality).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _ResponseObserver:
    """Middleware that looks at each response, under WSGI and ASGI alike (no thread hop)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def observe(self, request, response, started: float) -> None:
        raise NotImplementedError

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self.observe(request, response, started)
        return response

    async def __acall__(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        self.observe(request, response, started)
        return response


class RequestMetricsMiddleware(_ResponseObserver):
    """Counts and times every request by route name (not raw path, to bound label cardinality)."""

    def observe(self, request, response, started: float) -> None:
        match = getattr(request, "resolver_match", None)
        route = "unmatched" if match is None else (match.view_name or match.route or "unnamed")
        method = request.method if request.method in KNOWN_METHODS else "other"
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)


class RequestIdHeaderMiddleware(_ResponseObserver):
    """Returns the request id that django-structlog logged as `X-Request-ID`, for support calls."""

    def observe(self, request, response, started: float) -> None:
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id:
            response["X-Request-ID"] = request_id

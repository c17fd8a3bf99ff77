from __future__ import annotations

import time

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from aegis.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS


def _route(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return match.view_name or match.route or "unnamed"


class RequestMetricsMiddleware:
    """Counts and times every request by route name (not raw path, to bound label cardinality)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def _observe(self, request, response, started: float) -> None:
        route = _route(request)
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._observe(request, response, started)
        return response

    async def __acall__(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        self._observe(request, response, started)
        return response


class RequestIdHeaderMiddleware:
    """Returns the request id that django-structlog logged as `X-Request-ID`, for support calls."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    @staticmethod
    def _tag(response):
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id:
            response["X-Request-ID"] = request_id
        return response

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self._tag(self.get_response(request))

    async def __acall__(self, request):
        return self._tag(await self.get_response(request))

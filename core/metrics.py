"""`/metrics` in Prometheus's text format, and the count of commands by outcome.

With PROMETHEUS_MULTIPROC_DIR set (dev.py and deployments set it: docs/running.md) every process
of the host writes its metrics to files there and the scrape sums them, whichever process answers
it; without it, a scrape sees only the process that answers (tests). The page names no user and
no center, but it shows load and faults: only a Bearer METRICS_TOKEN or an address in
METRICS_ALLOWED_IPS may read it, anyone else gets the same 404 as an unknown URL.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import Http404, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.multiprocess import MultiProcessCollector

COMMANDS = PromCounter(
    "bros_commands",
    "Commands by outcome: HTTP API POST/PUT/PATCH/DELETE (via http), WebSocket publish and position frames (via ws).",
    ["via", "outcome"],
)
# A WebSocket error frame's code as a command outcome (the names HTTP statuses get above).
FRAME_OUTCOMES = {
    "bad_request": "invalid",
    "too_large": "invalid",
    "forbidden": "forbidden",
    "unknown_stream": "not_found",
    "rate_limited": "rate_limited",
    "internal": "error",
}

_COMMAND_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def command_outcome(status: int) -> str:
    """Name an API command's result by its status (protocol §4's error classes)."""
    if status < 400:
        return "ok"
    return {
        400: "invalid",
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        409: "refused",
        413: "invalid",
        422: "invalid",
        429: "rate_limited",
        503: "unavailable",
    }.get(status, "error" if status >= 500 else "invalid")


class CommandMetricsMiddleware:
    """Count every API command by outcome: one counter increment per request (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def _count(request, response) -> None:
        if request.method in _COMMAND_METHODS and request.path.startswith("/api/"):
            COMMANDS.labels("http", command_outcome(response.status_code)).inc()

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        response = self.get_response(request)
        self._count(request, response)
        return response

    async def _acall(self, request):
        response = await self.get_response(request)
        self._count(request, response)
        return response


def _client_allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return True
    if settings.METRICS_ALLOWED_IPS:
        try:
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            return False
        return any(address in network for network in settings.METRICS_ALLOWED_IPS)
    return False


def metrics_view(request):
    """The metrics of every process of this host (multi-process mode) or of this process."""
    if not _client_allowed(request):
        raise Http404("Not found.")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

"""The WebSocket handshake's Origin check: the page must come from this very site.

Channels' `AllowedHostsOriginValidator` compares only the Origin's host with ALLOWED_HOSTS, so a
page on another port or scheme of an allowed host (`http://127.0.0.1:9999`) could open a socket
with the user's cookies. Here the whole origin must match: the scheme the socket came in on
(ws → http, wss → https), and the host and port of the request's own Host header (itself checked
against ALLOWED_HOSTS), or be listed in CSRF_TRUSTED_ORIGINS (pages served by a TLS-terminating
proxy on another scheme or port).
"""

from __future__ import annotations

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def origin_allowed(scope) -> bool:
    """Whether the handshake's Origin is this site's (or a trusted one)."""
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or origin == "null":
        return False
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    if not host:
        return False
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    return origin.lower() == f"{scheme}://{host}".lower()


class SameOriginValidator:
    """ASGI middleware: refuse (HTTP 403, before accept) a WebSocket from another origin.

    `__call__` returns the inner application's coroutine instead of awaiting it: no frame of its
    own stays alive for the socket's lifetime (memory per idle connection, docs/benchmarks.md).
    """

    def __init__(self, application):
        self.application = application

    def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return WebsocketDenier()(scope, receive, send)
        return self.application(scope, receive, send)

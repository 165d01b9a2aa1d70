"""The handshake's Origin must be this very site: scheme, host and port (issue: port was ignored)."""

import pytest

from realtime.origin import origin_allowed
from realtime.tests.wsclient import WsClients, in_thread, session_cookie


def scope(origin, host="bros.example.com:8443", scheme="wss"):
    headers = [(b"host", host.encode())] if host else []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "scheme": scheme, "headers": headers}


@pytest.fixture
def sites(settings):
    settings.ALLOWED_HOSTS = ["bros.example.com", "127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://bros.example.com"]


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("https://bros.example.com:8443", "bros.example.com:8443", "wss"),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws"),
        ("HTTP://127.0.0.1:8000", "127.0.0.1:8000", None),  # the communicator sends no scheme: ws
        ("https://bros.example.com", "internal:8000", "ws"),  # a trusted origin behind a TLS proxy
    ],
)
def test_origin_of_this_site_or_a_trusted_one_is_allowed(sites, origin, host, scheme):
    """The page's own origin (any case), or one listed in CSRF_TRUSTED_ORIGINS, may open a socket."""
    assert origin_allowed(scope(origin, host, scheme))


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://127.0.0.1:9999", "127.0.0.1:8000", "ws"),  # another port of an allowed host
        ("http://bros.example.com:8443", "bros.example.com:8443", "wss"),  # the wrong scheme
        ("https://evil.example", "bros.example.com:8443", "wss"),
        ("https://bros.example.com.evil.example", "bros.example.com:8443", "wss"),
        ("http://evil.example:80", "evil.example:80", "ws"),  # a host outside ALLOWED_HOSTS
        ("null", "127.0.0.1:8000", "ws"),
        (None, "127.0.0.1:8000", "ws"),
        ("http://127.0.0.1:8000", None, "ws"),  # no Host header
    ],
)
def test_origin_of_another_site_port_or_scheme_is_refused(sites, origin, host, scheme):
    """Another port or scheme of an allowed host, a foreign host, or no Origin/Host: refused."""
    assert not origin_allowed(scope(origin, host, scheme))


async def test_handshake_from_another_port_of_the_same_host_is_refused(demo_tx):
    """A logged-in user's socket opened by a page on another port is refused before accept."""
    clients = WsClients()
    try:
        cookie = await in_thread(session_cookie, await clients.user("dispatch-gangnam"))
        assert not (await clients.attempt(cookie=cookie, origin="http://localhost:9999"))[0]
        assert not (await clients.attempt(cookie=cookie, origin="https://localhost"))[0]
        assert (await clients.attempt(cookie=cookie, origin="http://localhost"))[0]
    finally:
        await clients.shutdown()

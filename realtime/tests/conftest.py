"""Fixtures shared by the real-time tests that drive the ASGI app over Channels' communicator."""

import pytest

from realtime.tests.wsclient import WsClients


@pytest.fixture
def fast_password_hashing(settings):
    """Every transactional test reloads the demo accounts: hash their password cheaply (nobody types it here)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
async def ws(fast_password_hashing, demo_tx):
    """Connections to the real ASGI app; at the end they are closed and this loop's hub stopped.

    Test modules that need other settings for their sockets define their own `ws`.
    """
    clients = WsClients()
    yield clients
    await clients.shutdown()

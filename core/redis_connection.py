"""This process's Redis client, shared by every app (thread-safe; it pools its connections)."""

from __future__ import annotations

import threading

import redis
from django.conf import settings
from redis.driver_info import DriverInfo

# What every client of ours tells Redis it is (CLIENT SETINFO). Resolved once: unless given one,
# redis-py resolves its version from package metadata, a walk of sys.path, for each new connection
# (20-25 ms seen holding the event loop as the hub's pool grew under load).
DRIVER_INFO = DriverInfo()

_lock = threading.Lock()
_client: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """Return this process's Redis client, built from settings.REDIS_URL on first use."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = redis.Redis.from_url(settings.REDIS_URL, health_check_interval=30, driver_info=DRIVER_INFO)
    return _client

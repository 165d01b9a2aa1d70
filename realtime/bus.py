"""The Redis pub/sub bus between processes: one channel per stream, one shared client per process.

Publishers (services, on commit) write each event's encoded frame once; every server process
subscribes once per stream it has local subscribers for (design.md, "Fan-out is designed per
process"). A message is `<seq>\n<frame>` so a hub can check ordering without decoding the frame.
"""

from __future__ import annotations

import threading

import redis
from django.conf import settings

_lock = threading.Lock()
_client: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """Return this process's Redis client (thread-safe; it pools its connections)."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = redis.Redis.from_url(settings.REDIS_URL, health_check_interval=30)
    return _client


def channel_for(stream: str) -> str:
    return f"{settings.REDIS_PREFIX}:stream:{stream}"


def message_for(seq: int | None, frame: str) -> bytes:
    return f"{seq or 0}\n{frame}".encode()

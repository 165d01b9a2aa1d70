"""The Redis pub/sub bus between processes: one channel per stream, one shared client per process.

Publishers (services, on commit) write each event's encoded frame once; every server process
subscribes once per stream it has local subscribers for (design.md, "Fan-out is designed per
process"). A message is `<seq>\n<frame>` so a hub can check ordering without decoding the frame.
"""

from __future__ import annotations

import logging
import threading

import redis
from django.conf import settings

from core.redis_connection import get_redis  # noqa: F401  (the bus's client; callers import it from here)

logger = logging.getLogger(__name__)


# What an unreachable Redis raises (refused, reset, timed out): an outage, not a bug.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class RedisUnavailable(Exception):
    """A request that cannot be served without Redis: the HTTP API answers 503 with Retry-After."""

    retry_after = 10  # seconds; long enough not to hammer a restarting Redis

    def __init__(self, message: str = "This is unavailable for a moment; try again shortly."):
        super().__init__(message)
        self.message = message


def channel_for(stream: str) -> str:
    return f"{settings.REDIS_PREFIX}:stream:{stream}"


def message_for(seq: int | None, frame: str) -> bytes:
    return f"{seq or 0}\n{frame}".encode()


class RedisHealth:
    """Whether this process last found Redis reachable, so an outage is logged once, not per call.

    Callers that catch `REDIS_DOWN` report it with `down(error)`; a call that then succeeds reports
    `up()`. The first report of each kind in a row logs one line; the others are silent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    def down(self, error: BaseException) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        logger.error(
            "Redis is down (%s: %s); events wait in the outbox, positions come from PostgreSQL.",
            type(error).__name__,
            error,
        )

    def up(self) -> None:
        if not self._down:  # the common case: no lock taken
            return
        with self._lock:
            if not self._down:
                return
            self._down = False
        logger.info("Redis is back.")


redis_health = RedisHealth()

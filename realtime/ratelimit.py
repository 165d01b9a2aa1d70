"""Publish rate limits per user and per API token, shared by every process through Redis.

A limit kept per connection let a client open more sockets to send more messages; this one is a
token bucket per publisher (`user:<id>` or `token:<id>`), refilled at REALTIME_PUBLISH_RATE per
second up to REALTIME_PUBLISH_BURST, updated atomically by one Lua call whichever process serves
the publish. While Redis is down publishes are not limited (PostgreSQL, which stores them, is the
source of truth; the outage is logged by `realtime.bus`).
"""

from __future__ import annotations

import math
import time

from django.conf import settings

from realtime.bus import REDIS_DOWN, get_redis

_TAKE = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""

_script = None


class RateLimited(Exception):
    """Too many publishes: the HTTP API answers 429 with Retry-After, the socket `rate_limited`."""

    def __init__(self, wait: float):
        super().__init__("Too many publishes; slow down.")
        self.retry_after = max(1, math.ceil(wait))


def take_publish(owner: str) -> None:
    """Take one publish from `owner`'s bucket ("user:<id>" / "token:<id>"), or raise RateLimited."""
    global _script
    client = get_redis()
    if _script is None:
        _script = client.register_script(_TAKE)
    key = f"{settings.REDIS_PREFIX}:rate:publish:{owner}"
    args = [settings.REALTIME_PUBLISH_RATE, settings.REALTIME_PUBLISH_BURST, time.time()]
    try:
        wait = float(_script(keys=[key], args=args, client=client))
    except REDIS_DOWN:
        return
    if wait > 0:
        raise RateLimited(wait)

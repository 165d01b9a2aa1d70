"""Rate limits per user and per API token, shared by every process through Redis.

A limit kept per connection let a client open more sockets to send more messages; these are token
buckets per caller (`user:<id>` or `token:<id>`) and per allowance: publishes (WebSocket and
`POST /publish`, REALTIME_PUBLISH_RATE per second up to REALTIME_PUBLISH_BURST) and HTTP commands
(API_COMMAND_RATE, API_COMMAND_BURST). Each take is one atomic Lua call, whichever process serves
the request. While Redis is down nothing is limited (PostgreSQL, which stores the changes, is the
source of truth; the outage is logged by `realtime.bus`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import wraps

from django.conf import settings

from core.api_auth import caller_of
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


@dataclass(frozen=True)
class Allowance:
    """One kind of bucket: its Redis key part, the settings naming its rate and burst, its refusal."""

    name: str
    rate_setting: str
    burst_setting: str
    message: str


PUBLISHES = Allowance("publish", "REALTIME_PUBLISH_RATE", "REALTIME_PUBLISH_BURST", "Too many publishes; slow down.")
COMMANDS = Allowance("command", "API_COMMAND_RATE", "API_COMMAND_BURST", "Too many commands; slow down.")


class RateLimited(Exception):
    """Over an allowance: the HTTP API answers 429 with Retry-After, the socket `rate_limited`."""

    def __init__(self, wait: float, message: str = PUBLISHES.message):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(wait))


def take(allowance: Allowance, owner: str) -> None:
    """Take one from `owner`'s bucket ("user:<id>" / "token:<id>") of `allowance`, or raise RateLimited."""
    global _script
    client = get_redis()
    if _script is None:
        _script = client.register_script(_TAKE)
    key = f"{settings.REDIS_PREFIX}:rate:{allowance.name}:{owner}"
    args = [getattr(settings, allowance.rate_setting), getattr(settings, allowance.burst_setting), time.time()]
    try:
        wait = float(_script(keys=[key], args=args, client=client))
    except REDIS_DOWN:
        return
    if wait > 0:
        raise RateLimited(wait, allowance.message)


def take_publish(owner: str) -> None:
    """Take one publish from `owner`'s bucket, or raise RateLimited."""
    take(PUBLISHES, owner)


def limit_commands(endpoint):
    """Make an HTTP command endpoint take one from its caller's command allowance first (429 past it).

    Goes outside `idempotent`: a replayed retry costs the caller as much as the first call.
    """

    @wraps(endpoint)
    def wrapper(request, *args, **kwargs):
        take(COMMANDS, caller_of(request).owner)
        return endpoint(request, *args, **kwargs)

    return wrapper

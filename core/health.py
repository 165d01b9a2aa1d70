"""`GET /healthz`: whether this process reaches PostgreSQL and Redis, for a load balancer's checks.

No authentication and no session: the answer names no user, center or setting, only "ok" or
"down" per service. It is cheap (`SELECT 1` and a Redis `PING`, concurrently) and bounded: each
probe gets a short timeout, so a hung service makes the check answer "down" instead of hanging it.

Only PostgreSQL decides the status. Without it a process can serve nothing (503: the balancer
takes it out of rotation). Without Redis it still serves every page and command from PostgreSQL
(live updates wait in the outbox until Redis is back, docs/realtime.md); and since every process
shares the one Redis, failing the check on it would take them all out at once. So Redis down is
still 200, with `"redis": "down"` for whoever watches.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from core.redis_connection import DRIVER_INFO

DATABASE_TIMEOUT = 2.0  # seconds; a balancer checks every few seconds with a similar timeout
REDIS_TIMEOUT = 1.0

_probes: dict[str, redis.Redis] = {}
_probes_lock = threading.Lock()

# The probes' own threads: a hung service holds at most one of them per check (see `_probe`), never
# the event loop's default executor, which the hub's reads use.
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")
_in_flight: dict[str, Future] = {}  # touched only from the event loop's thread


def _redis_probe() -> redis.Redis:
    """A Redis client with short timeouts, one per process and URL (the shared one waits longer)."""
    url = settings.REDIS_URL
    with _probes_lock:
        if url not in _probes:
            _probes[url] = redis.Redis.from_url(
                url,
                socket_connect_timeout=REDIS_TIMEOUT,
                socket_timeout=REDIS_TIMEOUT,
                retry_on_timeout=False,
                driver_info=DRIVER_INFO,
            )
        return _probes[url]


def _database_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:  # any failure to answer is "down"; the balancer needs no more
        return False
    finally:
        connection.close()  # this thread is not a request's: give the connection back now


def _redis_answers() -> bool:
    try:
        return bool(_redis_probe().ping())
    except (redis.RedisError, OSError):
        return False


async def _probe(name: str, check, timeout: float) -> str:
    """Run `check` in a probe thread for at most `timeout` seconds: "ok" if it answered True.

    While the previous run of the same check still hangs, the answer is "down" at once: a balancer
    checking every second must not pile up threads behind a service that does not answer.
    """
    previous = _in_flight.get(name)
    if previous is not None and not previous.done():
        return "down"
    _in_flight[name] = future = _executor.submit(check)
    try:
        answered = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        answered = False
    return "ok" if answered else "down"


@csrf_exempt  # it changes nothing: a POST is refused as a method (405), not as a forgery (403)
@never_cache
@require_safe
async def healthz(request):
    """Answer 200 while PostgreSQL answers (naming Redis's state too), else 503."""
    db, redis_state = await asyncio.gather(
        _probe("db", _database_answers, DATABASE_TIMEOUT), _probe("redis", _redis_answers, REDIS_TIMEOUT)
    )
    return JsonResponse({"db": db, "redis": redis_state}, status=200 if db == "ok" else 503)

"""Live rider positions: validate GPS fixes, coalesce them per rider, batch them per center per second.

Positions are the one high-rate, ephemeral stream (protocol §1, §3 "Positions"). The hot path is
Redis only:

- `accept_fixes` keeps at most one fix per rider per second. One Lua script per fix checks the
  rider's last kept fix and stores the new one atomically, because several server processes (and
  threads) take fixes of the same rider at once. The latest fix of every rider of a center lives
  in one hash; the riders that moved since the last batch are marked in the center's dirty set.
- `publish_position_batches` runs once a second in every server process. Per center and unix
  second one process wins the tick, takes the dirty set atomically and publishes one
  `rider.positions` frame (no `seq`) on the bus, encoded once. The winner also writes the riders'
  latest position columns and the history samples with a constant number of queries.

Redis keys (`P` is `settings.REDIS_PREFIX`, read at call time):

    P:pos:latest:<center>   hash   rider id -> position JSON (protocol shape)
    P:pos:dirty:<center>    set    rider ids moved since the center's last batch
    P:pos:sample:<center>   hash   rider id -> position JSON due for a PositionSample row
    P:pos:centers           set    centers with a non-empty dirty set
    P:pos:rider:<rider>     hash   kept / sampled: µs timestamps of the last kept and sampled fix
    P:pos:tick:<center>:<s> string the claim of unix second s's batch of the center (NX, 1.5 s)

PostgreSQL stays the source of truth when Redis is unreachable: `current_positions` falls back to
the riders' stored `last_*` columns, and fixes are refused with `PositionsUnavailable` (the rider
app keeps them and posts them again). The outage is logged once (`realtime.bus.redis_health`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from core.access import Access, Role
from realtime.bus import REDIS_DOWN, RedisUnavailable, channel_for, get_redis, message_for, redis_health
from realtime.outbox import format_ts
from riders.models import PositionSample, Rider

logger = logging.getLogger(__name__)

MAX_FUTURE = timedelta(seconds=30)
MAX_AGE = timedelta(minutes=10)
MIN_INTERVAL_US = 1_000_000
SAMPLE_INTERVAL_US = 15_000_000
# Longer than MAX_AGE: once a rider's guard expires, every fix parse_fix lets through is newer.
RIDER_STATE_TTL_MS = 15 * 60 * 1000
TICK_TTL_MS = 1500
LATEST_TTL_MS = 24 * 60 * 60 * 1000
MAX_TS_LENGTH = 40
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIX_FIELDS = frozenset({"type", "lat", "lng", "accuracy", "heading", "speed", "ts"})

_scripts: dict[str, object] = {}
_async_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # asyncio client -> name -> script

# KEYS: rider state, latest hash, dirty set, sample hash, dirty centers.
# ARGV: fix µs, rider id, position JSON, center, min interval µs, sample interval µs, state TTL ms,
#       latest TTL ms.
_ACCEPT_FIX = """
local ts = tonumber(ARGV[1])
local kept = redis.call('HGET', KEYS[1], 'kept')
if kept and ts < tonumber(kept) + tonumber(ARGV[5]) then
    return 0
end
redis.call('HSET', KEYS[1], 'kept', ARGV[1])
local sampled = redis.call('HGET', KEYS[1], 'sampled')
if not sampled or ts >= tonumber(sampled) + tonumber(ARGV[6]) then
    redis.call('HSET', KEYS[1], 'sampled', ARGV[1])
    redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[4])
return 1
"""

# KEYS: dirty set, tick claim, latest hash, sample hash, dirty centers.  ARGV: center, tick TTL ms.
# Returns nil if another process has this second's batch, else {latest JSONs, sample JSONs}.
# A center with nothing dirty claims no tick, so a fix arriving later that second still goes out.
_TAKE_BATCH = """
local riders = redis.call('SMEMBERS', KEYS[1])
if #riders == 0 then
    redis.call('SREM', KEYS[5], ARGV[1])
    return {{}, {}}
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
    return nil
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[5], ARGV[1])
local latest = {}
for i = 1, #riders do
    local position = redis.call('HGET', KEYS[3], riders[i])
    if position then
        latest[#latest + 1] = position
    end
end
local samples = redis.call('HVALS', KEYS[4])
redis.call('DEL', KEYS[4])
return {latest, samples}
"""


class InvalidFix(ValueError):
    """A GPS fix that breaks protocol §3 "Positions"; the message says which field and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fix:
    lat: float
    lng: float
    accuracy: float | None = None
    heading: float | None = None
    speed: float | None = None
    ts: datetime


def _number(data: dict, name: str, *, low: float | None = None, high: float | None = None, required: bool = False):
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidFix(f"{name} is required")
        return None
    # bool is an int to Python, never a coordinate to us.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFix(f"{name} must be a number")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any double (strict JSON already refuses those)
        raise InvalidFix(f"{name} must be a finite number") from None
    if not math.isfinite(value):
        raise InvalidFix(f"{name} must be a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidFix(f"{name} must be between {low} and {high}" if high is not None else f"{name} must be ≥ {low}")
    return value


def _timestamp(value: object, *, now: datetime) -> datetime:
    if value is None:
        return now
    if not isinstance(value, str) or len(value) > MAX_TS_LENGTH:
        raise InvalidFix("ts must be an ISO 8601 string")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidFix("ts must be an ISO 8601 string") from None
    if ts.tzinfo is None:
        raise InvalidFix("ts needs a time zone (e.g. a trailing Z)")
    if ts > now + MAX_FUTURE:
        raise InvalidFix("ts is in the future")
    if ts < now - MAX_AGE:
        raise InvalidFix("stale")
    return ts.astimezone(UTC)


def parse_fix(data: dict, *, now: datetime) -> Fix:
    """Return the fix described by a `position` frame (with or without its "type"), or raise InvalidFix.

    `ts` is optional (the fix is then taken as of `now`); it may be at most 30 s ahead of `now`
    and at most 10 minutes behind it.
    """
    if not isinstance(data, dict):
        raise InvalidFix("a position must be an object")
    unknown = set(data) - FIX_FIELDS
    if unknown:
        raise InvalidFix(f"unknown field {sorted(map(str, unknown))[0]}")
    if "type" in data and data["type"] != "position":
        raise InvalidFix("type must be position")
    return Fix(
        lat=_number(data, "lat", low=-90, high=90, required=True),
        lng=_number(data, "lng", low=-180, high=180, required=True),
        accuracy=_number(data, "accuracy", low=0),
        heading=_number(data, "heading", low=0, high=360),
        speed=_number(data, "speed", low=0),
        ts=_timestamp(data.get("ts"), now=now),
    )


def position_data(rider_id: int, fix: Fix) -> dict:
    """Return the position object of protocol §3 for a rider's fix."""
    return {
        "rider": rider_id,
        "lat": fix.lat,
        "lng": fix.lng,
        "accuracy": fix.accuracy,
        "heading": fix.heading,
        "speed": fix.speed,
        "ts": format_ts(fix.ts),
    }


def _key(*parts: object) -> str:
    return ":".join([settings.REDIS_PREFIX, "pos", *map(str, parts)])


def _script(name: str, source: str):
    """Return the registered Lua script (one per process; redis-py reloads it after a flush).

    Callers pass `client=` when running it, so it always runs on the bus's current client.
    """
    script = _scripts.get(name)
    if script is None:
        script = _scripts[name] = get_redis().register_script(source)
    return script


def _async_script(client, name: str, source: str):
    """The Lua script registered on an asyncio client (each event loop's hub has its own client)."""
    scripts = _async_scripts.setdefault(client, {})
    script = scripts.get(name)
    if script is None:
        script = scripts[name] = client.register_script(source)
    return script


def _micros(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


class PositionsUnavailable(RedisUnavailable):
    """Redis, which takes the live fixes, is unreachable: the fixes were not kept; send them later."""

    def __init__(self):
        super().__init__("Live positions are unavailable for a moment; send these fixes again later.")


def accept_fixes(*, rider_id: int, center_code: str, fixes: list[Fix]) -> int:
    """Keep at most one fix per rider per second and mark the rider for its center's next batch.

    A fix is kept only if it is at least 1 s after the rider's last kept fix (so older and
    duplicate fixes are dropped); the fixes of one call are taken in time order. Each fix is one
    atomic script call, all of them sent in one round trip. Return how many fixes were kept.
    Raise `PositionsUnavailable` (keeping none) when Redis is unreachable.
    """
    if not fixes:
        return 0
    with _fixes_redis():
        return _accept_fixes(rider_id, center_code, fixes)


async def accept_fixes_async(*, rider_id: int, center_code: str, fixes: list[Fix], redis) -> int:
    """`accept_fixes` on an asyncio Redis client (`redis`), for the event loop: no thread hop per fix.

    A rider's socket sends a fix every few seconds; 1,500 riders handed to worker threads one by one
    kept the GIL moving between them and a busy event loop (docs/benchmarks.md, shift profile).
    """
    if not fixes:
        return 0
    keys, calls = _accept_calls(rider_id, center_code, fixes)
    accept = _async_script(redis, "accept", _ACCEPT_FIX)
    with _fixes_redis():
        kept = 0
        for args in calls:  # a socket's frame carries one fix
            kept += int(await accept(keys=keys, args=args))
    return kept


@contextlib.contextmanager
def _fixes_redis():
    """Taking fixes: Redis unreachable is `PositionsUnavailable`, reported once per outage (`redis_health`)."""
    try:
        yield
    except REDIS_DOWN as exc:
        redis_health.down(exc)
        raise PositionsUnavailable from exc
    redis_health.up()


def _accept_fixes(rider_id: int, center_code: str, fixes: list[Fix]) -> int:
    keys, calls = _accept_calls(rider_id, center_code, fixes)
    accept = _script("accept", _ACCEPT_FIX)
    redis = get_redis()
    if len(calls) == 1:
        # The WebSocket case: one EVALSHA, without the pipeline's script-existence check.
        return int(accept(keys=keys, args=calls[0], client=redis))
    pipe = redis.pipeline(transaction=False)
    for args in calls:
        accept(keys=keys, args=args, client=pipe)
    return sum(int(kept) for kept in pipe.execute())


def _accept_calls(rider_id: int, center_code: str, fixes: list[Fix]) -> tuple[list[str], list[list]]:
    """The accept script's keys, and its arguments per fix in time order."""
    keys = [
        _key("rider", rider_id),
        _key("latest", center_code),
        _key("dirty", center_code),
        _key("sample", center_code),
        _key("centers"),
    ]
    calls = []
    for fix in sorted(fixes, key=lambda f: f.ts):
        position = json.dumps(position_data(rider_id, fix), separators=(",", ":"))
        calls.append(
            [
                _micros(fix.ts),
                rider_id,
                position,
                center_code,
                MIN_INTERVAL_US,
                SAMPLE_INTERVAL_US,
                RIDER_STATE_TTL_MS,
                LATEST_TTL_MS,
            ]
        )
    return keys, calls


class NotARider(Exception):
    """Positions come from riders only (not staff, not API tokens)."""

    message = "Only riders send positions."


class TooManyFixes(Exception):
    """More fixes in one call than the caller allows."""


@dataclass(frozen=True, slots=True)
class FixesTaken:
    """What became of a rider's fixes: `accepted` kept, `dropped` valid but coalesced, `errors` by index."""

    accepted: int
    dropped: int
    errors: list[tuple[int, str]]


def take_rider_fixes(
    access: Access | None, entries: list, *, max_entries: int | None = None, now: datetime | None = None
) -> FixesTaken:
    """A rider's GPS fixes from the HTTP buffer (`POST /positions`); a socket's `position` frame goes
    through `take_rider_fixes_async`, which checks them the same way.

    Refuses callers that are not riders (`NotARider`), then more than `max_entries` fixes
    (`TooManyFixes`); checks each entry (`parse_fix`) and offers the valid ones to the rider's
    center (`accept_fixes`). Invalid entries are reported by index, not fatal to the others.
    """
    rider_id, center_code, fixes, errors = _check_rider_fixes(access, entries, max_entries, now)
    accepted = accept_fixes(rider_id=rider_id, center_code=center_code, fixes=fixes)
    return FixesTaken(accepted=accepted, dropped=len(fixes) - accepted, errors=errors)


async def take_rider_fixes_async(access: Access | None, entries: list, *, redis) -> FixesTaken:
    """`take_rider_fixes` on the event loop, for a socket's `position` frame (`redis`: an asyncio client)."""
    rider_id, center_code, fixes, errors = _check_rider_fixes(access, entries, None, None)
    accepted = await accept_fixes_async(rider_id=rider_id, center_code=center_code, fixes=fixes, redis=redis)
    return FixesTaken(accepted=accepted, dropped=len(fixes) - accepted, errors=errors)


def _check_rider_fixes(
    access: Access | None, entries: list, max_entries: int | None, now: datetime | None
) -> tuple[int, str, list[Fix], list[tuple[int, str]]]:
    """The rider, their center, the valid fixes and the errors by index (see `take_rider_fixes`)."""
    if access is None or access.role != Role.RIDER or access.rider_id is None or not access.centers:
        raise NotARider(NotARider.message)
    if max_entries is not None and len(entries) > max_entries:
        raise TooManyFixes(f"At most {max_entries} positions per request.")
    now = now or timezone.now()
    fixes, errors = [], []
    for index, entry in enumerate(entries):
        try:
            fixes.append(parse_fix(entry, now=now))
        except InvalidFix as exc:
            errors.append((index, str(exc)))
    (center_code,) = access.centers
    return access.rider_id, center_code, fixes, errors


def record_fix(
    *,
    rider_id: int,
    center_code: str,
    lat: float,
    lng: float,
    ts: datetime,
    accuracy: float | None = None,
    heading: float | None = None,
    speed: float | None = None,
) -> bool:
    """Offer one trusted fix (e.g. from the simulator, unvalidated); return whether it was kept."""
    fix = Fix(lat=lat, lng=lng, accuracy=accuracy, heading=heading, speed=speed, ts=ts)
    return accept_fixes(rider_id=rider_id, center_code=center_code, fixes=[fix]) == 1


def forget_position(*, rider_id: int, center_code: str) -> None:
    """Drop a rider's live position from the center (e.g. at the end of a shift)."""
    pipe = get_redis().pipeline(transaction=True)
    pipe.hdel(_key("latest", center_code), rider_id)
    pipe.srem(_key("dirty", center_code), rider_id)
    pipe.execute()


def _positions_frame(center_code: str, positions: list[dict], now: datetime) -> str:
    stream = f"positions:{center_code}"
    frame = {
        "type": "event",
        "stream": stream,
        "event": "rider.positions",
        "ts": format_ts(now),
        "data": {"positions": positions},
    }
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def _decode(raw: list[bytes]) -> list[dict]:
    return sorted((json.loads(item) for item in raw), key=lambda position: position["rider"])


def current_positions(center_code: str) -> list[dict]:
    """Return the latest position of every rider of the center, by rider id.

    Live from Redis; while Redis is unreachable, the positions last stored in PostgreSQL.
    """
    live = live_positions(center_code)
    return stored_positions(center_code) if live is None else live


def live_positions(center_code: str) -> list[dict] | None:
    """The latest position of every rider of the center known to Redis, by rider id; None if Redis is down."""
    try:
        raw = get_redis().hvals(_key("latest", center_code))
    except REDIS_DOWN as exc:
        redis_health.down(exc)
        return None
    redis_health.up()
    return _decode(raw)


def rider_position(rider, *, center_code: str) -> dict | None:
    """The latest position of one rider (protocol shape), or None if none is known.

    One Redis read (the rider's field of the center's latest hash); while Redis is unreachable,
    the position last stored on the rider row (no query: `rider` is already loaded).
    """
    try:
        raw = get_redis().hget(_key("latest", center_code), str(rider.pk))
    except REDIS_DOWN as exc:
        redis_health.down(exc)
        if rider.last_lat is None or rider.last_lng is None or rider.last_position_at is None:
            return None
        return _stored(rider.pk, rider.last_lat, rider.last_lng, rider.last_accuracy, rider.last_position_at)
    redis_health.up()
    return json.loads(raw) if raw else None


def stored_positions(center_code: str) -> list[dict]:
    """The positions of the center's on-duty riders as last stored in PostgreSQL (the once-a-second batch).

    The protocol shape, by rider id; heading and speed are not stored, so they are null.
    """
    rows = (
        Rider.objects.filter(
            center__code=center_code,
            on_duty=True,
            last_lat__isnull=False,
            last_lng__isnull=False,
            last_position_at__isnull=False,
        )
        .order_by("pk")
        .values_list("pk", "last_lat", "last_lng", "last_accuracy", "last_position_at")
    )
    return [_stored(*row) for row in rows]


def _stored(pk: int, lat: float, lng: float, accuracy: float | None, at: datetime) -> dict:
    """A position stored on a rider row, in the protocol's shape (heading and speed are not stored)."""
    return {
        "rider": pk,
        "lat": lat,
        "lng": lng,
        "accuracy": accuracy,
        "heading": None,
        "speed": None,
        "ts": format_ts(at),
    }


def positions_snapshot_frame(center_code: str, *, now: datetime | None = None) -> str:
    """Return the encoded `rider.positions` frame with every rider of the center (a new subscriber's first)."""
    return _positions_frame(center_code, current_positions(center_code), now or timezone.now())


def publish_position_batches(*, now: datetime | None = None) -> int:
    """Publish this second's `rider.positions` batch of each center with moved riders; return how many.

    Every server process calls this once a second; per center and unix second only one of them
    wins and publishes. The winner then stores the riders' latest positions and due history
    samples. An unreachable Redis publishes nothing and is logged once per outage; database errors
    are logged and never raised, since the live batch has already gone out.
    """
    try:
        published = _publish_position_batches(now or timezone.now())
    except REDIS_DOWN as exc:
        redis_health.down(exc)  # once per outage, not a traceback a second in every process
        return 0
    redis_health.up()
    return published


def _publish_position_batches(now: datetime) -> int:
    second = int(now.timestamp())
    redis = get_redis()
    take = _script("take", _TAKE_BATCH)
    published = 0
    for raw_center in sorted(redis.smembers(_key("centers"))):
        center_code = raw_center.decode()
        keys = [
            _key("dirty", center_code),
            _key("tick", center_code, second),
            _key("latest", center_code),
            _key("sample", center_code),
            _key("centers"),
        ]
        batch = take(keys=keys, args=[center_code, TICK_TTL_MS], client=redis)
        if batch is None:
            continue
        latest, samples = _decode(batch[0]), _decode(batch[1])
        if latest:
            frame = _positions_frame(center_code, latest, now)
            redis.publish(channel_for(f"positions:{center_code}"), message_for(None, frame))
            published += 1
        if latest or samples:
            _store_positions(latest, samples)
    return published


def _store_positions(latest: list[dict], samples: list[dict]) -> None:
    """Write the riders' latest position columns and their history samples: two statements.

    Plain SQL over arrays, not `bulk_update`/`bulk_create`: with 300 fixes a second the ORM built
    a CASE expression per rider and field, a quarter of a server process's CPU in the shift
    benchmark (docs/benchmarks.md), in a thread holding the GIL the event loop needs.
    """
    if not connection.in_atomic_block:
        # The hub calls this from a long-lived thread, outside Django's request cycle.
        close_old_connections()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if latest:
                cursor.execute(_UPDATE_LATEST, _columns(latest, ("rider", "lat", "lng", "accuracy", "ts")))
            if samples:
                fields = ("rider", "lat", "lng", "accuracy", "heading", "speed", "ts")
                cursor.execute(_INSERT_SAMPLES, _columns(samples, fields))
    except Exception:
        logger.exception("Could not store %d rider positions", len(latest))


def _columns(positions: list[dict], fields: tuple[str, ...]) -> list[list]:
    """The positions as one array per field (timestamps parsed), for `unnest`."""
    return [
        [datetime.fromisoformat(p["ts"]) for p in positions] if name == "ts" else [p[name] for p in positions]
        for name in fields
    ]


# A slower batch of the previous second must not overwrite a newer position; unknown riders are skipped.
_UPDATE_LATEST = f"""
    UPDATE {Rider._meta.db_table} AS r
    SET last_lat = v.lat, last_lng = v.lng, last_accuracy = v.accuracy, last_position_at = v.at
    FROM unnest(%s::bigint[], %s::float8[], %s::float8[], %s::float8[], %s::timestamptz[])
        AS v(id, lat, lng, accuracy, at)
    WHERE r.id = v.id AND (r.last_position_at IS NULL OR r.last_position_at < v.at)
"""
_INSERT_SAMPLES = f"""
    INSERT INTO {PositionSample._meta.db_table} (rider_id, lat, lng, accuracy, heading, speed, recorded_at)
    SELECT v.rider, v.lat, v.lng, v.accuracy, v.heading, v.speed, v.at
    FROM unnest(%s::bigint[], %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::float8[],
        %s::timestamptz[]) AS v(rider, lat, lng, accuracy, heading, speed, at)
    JOIN {Rider._meta.db_table} AS r ON r.id = v.rider
"""

"""Assignment suggestions: on-duty riders ranked for a shop, each with the reason it is where it is.

design.md: "Assignment suggestions explain themselves: '1.2 km · 2 active · GPS 4 s ago'" and "a
rider whose GPS is older than ~45 s is greyed with 'last seen'". `suggest_riders` is the ranking
and its source of truth: the delivery drawer shows its best riders (through
`deliveries.selectors.suggested_riders`). The assign dialog opens without a round trip, so the
page carries `rider_board_rows` and ranks on the client with the same weights (`scoring_params`)
in static/deliveries/suggest.js, a copy held to this module by the shared vectors in
riders/tests/vectors/ranking.json (docs/shared-rules.md).

A rider's position is the newer of the live fix in Redis (`current_positions`, always up to date)
and the `last_*` columns (written by the once-a-second batch, so they may lag; they are all that is
left once the live hash has expired). Both functions cost one query and one Redis read, whatever
the number of riders. While Redis is unreachable only the columns are left, and every position
counts as stale: nobody can tell where the riders are now.

Ranking: every rider gets a score in km-equivalents; lower is better.

    fresh GPS      distance to the shop + LOAD_PENALTY_KM × active deliveries
    stale GPS      STALE_TIER_KM + the same
    no position    NO_POSITION_TIER_KM + LOAD_PENALTY_KM × active deliveries

so fresh riders come first, then stale ones, then riders without any position, each group by
distance and load; equal scores go by name, then id. The score alone orders the list, so a client
can sort by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from realtime.outbox import format_ts
from riders.models import Rider
from riders.positions import live_positions

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG); haversine error at city scale is far below GPS noise
# An active delivery is ≈ 5 minutes of riding the rider must finish first (about 1.5 km in city traffic).
LOAD_PENALTY_KM = 1.5
# A stale fix says where the rider was, not where they are: after every fresh rider (no distance
# on Earth exceeds 20,016 km, so a tier step of 100,000 km keeps the groups apart for any load).
STALE_TIER_KM = 100_000.0
# A rider with no position at all cannot be judged on distance: after every rider with one.
NO_POSITION_TIER_KM = 200_000.0
# Seconds after which a GPS fix counts as stale (design.md: "older than ~45 s is greyed").
DEFAULT_GPS_STALE_SECONDS = 45.0
# Below this the distance is not worth a decimal ("< 0.1 km"): GPS noise alone is tens of metres.
NEAR_KM = 0.1


@dataclass(frozen=True)
class Suggestion:
    rider_id: int
    name: str
    status: str
    load: int
    distance_km: float | None  # None: no known position
    gps_age_s: float | None  # None: no position or no time for it
    stale: bool  # GPS older than the stale threshold, or missing
    score: float  # km-equivalents, lower is better (see the module docstring)
    reason: str  # "1.2 km · 2 active · GPS 4 s ago"


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Return the great-circle distance between two points in km."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlambda = phi2 - phi1, math.radians(lng2 - lng1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def gps_stale_seconds() -> float:
    """The stale-GPS threshold: `settings.RIDER_GPS_STALE_SECONDS`, 45 s by default (read at call time)."""
    return float(getattr(settings, "RIDER_GPS_STALE_SECONDS", DEFAULT_GPS_STALE_SECONDS))


def scoring_params() -> dict:
    """The ranking weights, JSON-able, for a client that ranks the board rows itself.

    With the time zone "last seen 12:04" is written in: settings.TIME_ZONE, like the server's
    reasons, not whatever zone the dispatcher's browser is set to.
    """
    return {
        "load_penalty_km": LOAD_PENALTY_KM,
        "stale_tier_km": STALE_TIER_KM,
        "no_position_tier_km": NO_POSITION_TIER_KM,
        "gps_stale_seconds": gps_stale_seconds(),
        "near_km": NEAR_KM,
        "time_zone": settings.TIME_ZONE,
    }


def rider_status(*, on_duty: bool, load: int) -> str:
    """`Rider.status` from plain values (the queries here fetch values, not model instances)."""
    if not on_duty:
        return Rider.Status.OFFLINE.value
    return (Rider.Status.BUSY if load else Rider.Status.AVAILABLE).value


def score(*, distance_km: float | None, load: int, stale: bool) -> float:
    """Return the ranking score of a rider (km-equivalents, lower is better)."""
    penalty = LOAD_PENALTY_KM * load
    if distance_km is None:
        return NO_POSITION_TIER_KM + penalty
    return (STALE_TIER_KM if stale else 0.0) + distance_km + penalty


def format_distance(distance_km: float | None) -> str:
    if distance_km is None:
        return "no GPS"
    if distance_km < NEAR_KM:
        return f"< {NEAR_KM:.1f} km"
    return f"{distance_km:.1f} km"


def format_load(load: int) -> str:
    return "idle" if load == 0 else f"{load} active"


def format_gps(*, position_at: datetime | None, age_s: float | None, stale: bool, now: datetime) -> str:
    """ "GPS 4 s ago" / "GPS 3 min ago" when fresh, "last seen 12:04" (local time) when stale."""
    if position_at is None or age_s is None:
        return "GPS time unknown"
    if stale:
        tz = timezone.get_default_timezone()  # settings.TIME_ZONE, whatever zone a request activated
        seen, today = position_at.astimezone(tz), now.astimezone(tz)
        if seen.date() == today.date():
            return f"last seen {seen:%H:%M}"
        return f"last seen {seen.day} {seen:%b %H:%M}"
    if age_s < 60:
        return f"GPS {int(age_s)} s ago"
    if age_s < 3600:
        return f"GPS {int(age_s // 60)} min ago"
    return f"GPS {int(age_s // 3600)} h ago"


def format_reason(
    *, distance_km: float | None, load: int, position_at: datetime | None, age_s: float | None, stale: bool, now
) -> str:
    """Return the reason line of a suggestion, e.g. "1.2 km · 2 active · GPS 4 s ago"."""
    parts = [format_distance(distance_km), format_load(load)]
    if distance_km is not None:  # "no GPS" already says everything about the position
        parts.append(format_gps(position_at=position_at, age_s=age_s, stale=stale, now=now))
    return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class _Position:
    lat: float | None
    lng: float | None
    at: datetime | None


def _live_positions(center_code: str) -> dict[int, dict] | None:
    """Live positions by rider id, or None while Redis is unreachable."""
    live = live_positions(center_code)
    return None if live is None else {int(p["rider"]): p for p in live}


def _parse_ts(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        ts = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return ts if ts.tzinfo is not None else None


def _position(row: dict, live: dict | None) -> _Position:
    """The newer of the live fix and the stored columns (the live one wins a tie: it is never older)."""
    stored = _Position(row["last_lat"], row["last_lng"], row["last_position_at"])
    if stored.lat is None or stored.lng is None:
        stored = _Position(None, None, None)
    if live is None or live.get("lat") is None or live.get("lng") is None:
        return stored
    fresh = _Position(float(live["lat"]), float(live["lng"]), _parse_ts(live.get("ts")))
    if stored.at is not None and (fresh.at is None or stored.at > fresh.at):
        return stored
    return fresh


def _age_s(position: _Position, now: datetime) -> float | None:
    if position.at is None:
        return None
    # A phone clock may run a little ahead (fixes are accepted up to 30 s in the future).
    return max(0.0, (now - position.at).total_seconds())


_FIELDS = ("id", "name", "on_duty", "load", "last_lat", "last_lng", "last_position_at")


def suggest_riders(
    *,
    center_code: str,
    lat: float,
    lng: float,
    now: datetime | None = None,
    limit: int | None = None,
    positions: dict[int, dict] | None = None,
) -> list[Suggestion]:
    """Return the center's on-duty riders ranked best first for a pickup at (`lat`, `lng`).

    `positions` maps rider id to a live position (the shape of `current_positions`); without it
    the center's live positions are read from Redis once. One database query in all.
    """
    now = now or timezone.now()
    threshold = gps_stale_seconds()
    live = _live_positions(center_code) if positions is None else positions
    all_stale = live is None
    live = live or {}
    rows = Rider.objects.filter(center__code=center_code, on_duty=True).order_by().values(*_FIELDS)
    suggestions = []
    for row in rows:
        position = _position(row, live.get(row["id"]))
        age = _age_s(position, now)
        stale = all_stale or age is None or age > threshold
        distance = None if position.lat is None else haversine_km(position.lat, position.lng, lat, lng)
        load = row["load"]
        suggestions.append(
            Suggestion(
                rider_id=row["id"],
                name=row["name"],
                status=rider_status(on_duty=row["on_duty"], load=load),
                load=load,
                distance_km=distance,
                gps_age_s=age,
                stale=stale,
                score=score(distance_km=distance, load=load, stale=stale),
                reason=format_reason(
                    distance_km=distance, load=load, position_at=position.at, age_s=age, stale=stale, now=now
                ),
            )
        )
    suggestions.sort(key=lambda s: (s.score, s.name, s.rider_id))
    return suggestions if limit is None else suggestions[: max(0, limit)]


def rider_board_rows(*, center_code: str, now: datetime | None = None) -> list[dict]:
    """Return every rider of the center, on and off duty, by name, for the riders panel (JSON-able).

    Each row: id, name, status, load, vehicle, lat, lng, gps_age_s (0.1 s), stale, last_seen (ISO
    8601 UTC or None), version. One database query and one Redis read.
    """
    now = now or timezone.now()
    threshold = gps_stale_seconds()
    live = _live_positions(center_code)
    all_stale = live is None
    live = live or {}
    rows = Rider.objects.filter(center__code=center_code).order_by("name", "id").values(*_FIELDS, "vehicle", "version")
    board = []
    for row in rows:
        position = _position(row, live.get(row["id"]))
        age = _age_s(position, now)
        board.append(
            {
                "id": row["id"],
                "name": row["name"],
                "status": rider_status(on_duty=row["on_duty"], load=row["load"]),
                "load": row["load"],
                "vehicle": row["vehicle"],
                "lat": position.lat,
                "lng": position.lng,
                "gps_age_s": None if age is None else round(age, 1),
                "stale": all_stale or age is None or age > threshold,
                "last_seen": None if position.at is None else format_ts(position.at),
                "version": row["version"],
            }
        )
    return board

"""Reads of riders that more than one caller needs."""

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import QuerySet

from riders.models import PositionSample, Rider


def center_riders(center_code: str) -> QuerySet[Rider]:
    """Every rider of a center, on duty or not, by name: the riders panel, its stream and its API."""
    return Rider.objects.filter(center__code=center_code).select_related("center").order_by("name", "pk")


def rider_by_id(rider_id: int) -> Rider | None:
    return Rider.objects.select_related("center").filter(pk=rider_id).first()


# Great-circle distance (haversine, metres) from the previous sample (prev_lat, prev_lng) to this one.
_STEP_METRES = """2 * 6371000 * ASIN(LEAST(1, SQRT(
    POWER(SIN(RADIANS(lat - prev_lat) / 2), 2)
    + COS(RADIANS(lat)) * COS(RADIANS(prev_lat)) * POWER(SIN(RADIANS(lng - prev_lng) / 2), 2)
)))"""

# Great-circle distance between consecutive samples, summed in PostgreSQL.
_DISTANCE_SQL = f"""
    SELECT COALESCE(SUM({_STEP_METRES}), 0)
    FROM (
        SELECT lat, lng, LAG(lat) OVER w AS prev_lat, LAG(lng) OVER w AS prev_lng
        FROM {PositionSample._meta.db_table}
        WHERE rider_id = %s AND recorded_at >= %s
        WINDOW w AS (ORDER BY recorded_at)
    ) steps
    WHERE prev_lat IS NOT NULL
"""


def distance_travelled(*, rider_id: int, since: datetime) -> float:
    """Metres between the rider's stored position samples since `since`: one query."""
    with connection.cursor() as cursor:
        cursor.execute(_DISTANCE_SQL, [rider_id, since])
        return float(cursor.fetchone()[0])


# Samples are stored every 15 s while a rider is tracked (riders.positions.SAMPLE_INTERVAL_US); a
# longer silence means the rider was off duty or out of reach, and does not count as active time.
ACTIVE_GAP_SECONDS = 300

_TRAVEL_SQL = f"""
    SELECT r.id, r.name, COALESCE(SUM({_STEP_METRES}), 0),
        COALESCE(SUM(EXTRACT(EPOCH FROM recorded_at - prev_at))
            FILTER (WHERE recorded_at - prev_at <= make_interval(secs => %s)), 0)
    FROM (
        SELECT s.rider_id, lat, lng, recorded_at,
            LAG(lat) OVER w AS prev_lat, LAG(lng) OVER w AS prev_lng, LAG(recorded_at) OVER w AS prev_at
        FROM {PositionSample._meta.db_table} s
        JOIN {Rider._meta.db_table} sr ON sr.id = s.rider_id
        WHERE sr.center_id = ANY(%s) AND s.recorded_at >= %s AND s.recorded_at < %s
        WINDOW w AS (PARTITION BY s.rider_id ORDER BY s.recorded_at)
    ) steps
    JOIN {Rider._meta.db_table} r ON r.id = steps.rider_id
    WHERE prev_lat IS NOT NULL
    GROUP BY r.id, r.name
"""


@dataclass(frozen=True)
class Travel:
    rider_id: int
    name: str
    metres: float
    active_seconds: float


def travel_by_rider(*, center_ids, since: datetime, until: datetime) -> list[Travel]:
    """Distance and active time of every rider of the centers with samples in [since, until): one query.

    Active time is the sum of the gaps between consecutive samples of at most ACTIVE_GAP_SECONDS.
    """
    with connection.cursor() as cursor:
        cursor.execute(_TRAVEL_SQL, [ACTIVE_GAP_SECONDS, list(center_ids), since, until])
        return [Travel(pk, name, float(metres), float(seconds)) for pk, name, metres, seconds in cursor.fetchall()]

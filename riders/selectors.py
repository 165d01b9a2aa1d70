"""Reads of riders that more than one caller needs."""

from datetime import datetime

from django.db import connection
from django.db.models import QuerySet

from riders.models import PositionSample, Rider


def center_riders(center_code: str) -> QuerySet[Rider]:
    """Every rider of a center, on duty or not, by name: the riders panel, its stream and its API."""
    return Rider.objects.filter(center__code=center_code).select_related("center").order_by("name", "pk")


def rider_by_id(rider_id: int) -> Rider | None:
    return Rider.objects.select_related("center").filter(pk=rider_id).first()


# Great-circle distance between consecutive samples (haversine, metres), summed in PostgreSQL.
_DISTANCE_SQL = f"""
    SELECT COALESCE(SUM(2 * 6371000 * ASIN(LEAST(1, SQRT(
        POWER(SIN(RADIANS(lat - prev_lat) / 2), 2)
        + COS(RADIANS(lat)) * COS(RADIANS(prev_lat)) * POWER(SIN(RADIANS(lng - prev_lng) / 2), 2)
    )))), 0)
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

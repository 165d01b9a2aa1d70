"""Reads behind the reports page: how a day (or a range of days) went, computed in PostgreSQL.

Every figure is one query over the deliveries created in the period, whatever their number, so the
page costs the same number of queries for a quiet Tuesday and for New Year's Eve. An order belongs
to the period its delivery was created in (the same moment the order was taken); the period is in
local time (settings.TIME_ZONE). How each figure is computed is written down in docs/reports.md.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import ExtractHour
from django.utils import timezone

from deliveries.models import Delivery, Order, TimelineEntry
from riders.selectors import travel_by_rider

Status = Delivery.Status
EXCEPTIONS_SHOWN = 200  # rows of late and cancelled deliveries on the page; the CSV has them all
CSV_CHUNK = 2000  # rows per query of a CSV export: memory stays flat whatever the period holds


@dataclass(frozen=True)
class Period:
    """Local days `first`..`last` (inclusive) of the centers with ids `center_ids`."""

    first: date
    last: date
    center_ids: tuple[int, ...]

    @property
    def since(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.first, time.min))

    @property
    def until(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.last + timedelta(days=1), time.min))

    def deliveries(self) -> QuerySet[Delivery]:
        return Delivery.objects.filter(
            center_id__in=self.center_ids, created_at__gte=self.since, created_at__lt=self.until
        )


def _delivered_on_time() -> Q:
    return Q(status=Status.DELIVERED, delivered_at__lte=F("order__promised_at"))


def _delivered_late() -> Q:
    return Q(status=Status.DELIVERED, delivered_at__gt=F("order__promised_at"))


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _reassigned() -> Exists:
    return Exists(TimelineEntry.objects.filter(delivery=OuterRef("pk"), action="reassigned"))


def summary(period: Period, *, now: datetime) -> dict:
    """Orders, deliveries by (current) final state, on-time share, late, cancelled, reassigned: one query.

    On time means delivered at or before the promised time; the share is of the delivered ones.
    A delivery still open past its promise counts as `overdue`.
    """
    figures = period.deliveries().aggregate(
        orders=Count("pk"),
        **{status: Count("pk", filter=Q(status=status)) for status in Status.values},
        on_time=Count("pk", filter=_delivered_on_time()),
        late=Count("pk", filter=_delivered_late()),
        overdue=Count("pk", filter=Q(status__in=Delivery.OPEN_STATUSES, order__promised_at__lt=now)),
        reassigned=Count("pk", filter=_reassigned()),
    )
    figures["on_time_share"] = _share(figures["on_time"], figures[Status.DELIVERED])
    return figures


STAGES = (
    ("created_assigned", "Created → assigned", "first_assigned_at - d.created_at"),
    ("assigned_picked_up", "Assigned → picked up", "d.picked_up_at - d.assigned_at"),
    ("picked_up_delivered", "Picked up → delivered", "d.delivered_at - d.picked_up_at"),
    ("promised_actual", "Delivered vs promised", "d.delivered_at - o.promised_at"),
)


def _stages_sql() -> str:
    seconds = ",\n".join(f"EXTRACT(EPOCH FROM {interval}) AS {key}" for key, _label, interval in STAGES)
    figures = ",\n".join(
        f"percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY {key}), COUNT({key})" for key, _l, _i in STAGES
    )
    # The first assignment, not the last: a reassignment must not shorten the wait for a rider.
    # MATERIALIZED: each duration is computed once per delivery, not once per aggregate using it.
    return f"""
        WITH stage AS MATERIALIZED (
            SELECT {seconds}
            FROM (
                SELECT d.*, (
                    SELECT MIN(t.at) FROM {TimelineEntry._meta.db_table} t
                    WHERE t.delivery_id = d.id AND t.action IN ('assigned', 'reassigned')
                ) AS first_assigned_at
                FROM {Delivery._meta.db_table} d
                WHERE d.center_id = ANY(%s) AND d.created_at >= %s AND d.created_at < %s
            ) d
            JOIN {Order._meta.db_table} o ON o.id = d.order_id
        )
        SELECT {figures} FROM stage
    """


@dataclass(frozen=True)
class Stage:
    key: str
    label: str
    median_minutes: float | None
    p90_minutes: float | None
    count: int


def stages(period: Period) -> list[Stage]:
    """Median and 90th percentile of each stage, in minutes, over the deliveries that went through it: one query.

    "Delivered vs promised" is negative when a delivery arrived early.
    """
    with connection.cursor() as cursor:
        cursor.execute(_stages_sql(), [list(period.center_ids), period.since, period.until])
        row = cursor.fetchone()
    result = []
    for index, (key, label, _interval) in enumerate(STAGES):
        percentiles, count = row[2 * index], row[2 * index + 1]
        median, p90 = percentiles if percentiles else (None, None)
        result.append(
            Stage(
                key=key,
                label=label,
                median_minutes=None if median is None else median / 60,
                p90_minutes=None if p90 is None else p90 / 60,
                count=count,
            )
        )
    return result


def by_hour(period: Period) -> list[dict]:
    """Orders, delivered, late and cancelled per local hour of day (all 24 hours, summed over the days): one query."""
    rows = (
        period.deliveries()
        .annotate(hour=ExtractHour("created_at", tzinfo=zoneinfo.ZoneInfo(settings.TIME_ZONE)))
        .values("hour")
        .annotate(
            orders=Count("pk"),
            delivered=Count("pk", filter=Q(status=Status.DELIVERED)),
            late=Count("pk", filter=_delivered_late()),
            cancelled=Count("pk", filter=Q(status=Status.CANCELLED)),
        )
        .order_by("hour")
    )
    found = {row["hour"]: row for row in rows}
    hours = []
    for hour in range(24):
        row = found.get(hour, {"orders": 0, "delivered": 0, "late": 0, "cancelled": 0})
        hours.append(
            {
                "hour": hour,
                "orders": row["orders"],
                "delivered": row["delivered"],
                "late": row["late"],
                "cancelled": row["cancelled"],
                "late_share": _share(row["late"], row["delivered"]),
            }
        )
    return hours


def by_rider(period: Period) -> list[dict]:
    """Per rider: deliveries delivered and cancelled on them, on-time share, distance and active hours: two queries.

    A delivery counts for its last rider (the one who carried it, after any reassignment). Riders
    of the centers with a position sample in the period but no delivery are listed too.
    """
    counts = (
        period.deliveries()
        .filter(rider__isnull=False)
        .values("rider_id", "rider__name")
        .annotate(
            delivered=Count("pk", filter=Q(status=Status.DELIVERED)),
            on_time=Count("pk", filter=_delivered_on_time()),
            cancelled=Count("pk", filter=Q(status=Status.CANCELLED)),
            open=Count("pk", filter=Q(status__in=Delivery.OPEN_STATUSES)),
        )
    )
    riders = {
        row["rider_id"]: {
            "rider_id": row["rider_id"],
            "name": row["rider__name"],
            "delivered": row["delivered"],
            "on_time": row["on_time"],
            "cancelled": row["cancelled"],
            "open": row["open"],
        }
        for row in counts
    }
    empty = {"delivered": 0, "on_time": 0, "cancelled": 0, "open": 0}
    for travel in travel_by_rider(center_ids=period.center_ids, since=period.since, until=period.until):
        rider = riders.setdefault(travel.rider_id, {"rider_id": travel.rider_id, "name": travel.name, **empty})
        rider["metres"], rider["active_seconds"] = travel.metres, travel.active_seconds
    result = []
    for rider in riders.values():
        rider.setdefault("metres", 0.0)
        rider.setdefault("active_seconds", 0.0)
        rider["on_time_share"] = _share(rider["on_time"], rider["delivered"])
        rider["km"], rider["active_hours"] = rider["metres"] / 1000, rider["active_seconds"] / 3600
        result.append(rider)
    return sorted(result, key=lambda r: (r["name"], r["rider_id"]))


def exceptions(period: Period, *, now: datetime) -> QuerySet:
    """Late, overdue and cancelled deliveries, oldest first, with reason and who cancelled: one query.

    Rows are dicts (`values()`), so a CSV of any size reads them in chunks (see `exception_chunks`).
    """
    cancelled_by = TimelineEntry.objects.filter(delivery=OuterRef("pk"), action="cancelled").order_by("-at", "-pk")
    reassignments = (
        TimelineEntry.objects.filter(delivery=OuterRef("pk"), action="reassigned")
        .order_by()
        .values("delivery")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        period.deliveries()
        .filter(
            _delivered_late()
            | Q(status=Status.CANCELLED)
            | Q(status__in=Delivery.OPEN_STATUSES, order__promised_at__lt=now)
        )
        .annotate(
            cancelled_by=Subquery(cancelled_by.values("actor_label")[:1]),
            reassignments=Subquery(reassignments),
        )
        .values(
            "pk",
            "order_id",
            "status",
            "created_at",
            "delivered_at",
            "cancelled_at",
            "center__code",
            "shop__name",
            "rider__name",
            "order__customer_name",
            "order__address",
            "order__promised_at",
            "order__cancel_reason",
            "cancelled_by",
            "reassignments",
        )
        .order_by("pk")
    )


def exception_chunks(period: Period, *, now: datetime, size: int = CSV_CHUNK) -> Iterator[list[dict]]:
    """The exceptions in lists of `size`, one keyset query per list: flat memory for any number of rows."""
    after = 0
    while True:
        chunk = list(exceptions(period, now=now).filter(pk__gt=after)[:size])
        if not chunk:
            return
        yield chunk
        after = chunk[-1]["pk"]

"""Shift replay: a center's board as it was at a moment T, rebuilt from durable records alone.

Which deliveries existed at T, and the status, rider and version each had then, come from the
timeline entries written up to T; the row window, urgency, order and counts from the board's own
rules (`selectors.board_window` / `board_counts` over a `BoardSource` of those annotations); rider
positions from the stored position samples; the event list from the timeline. Nothing reads the
live state (a delivery's current status, Redis), so a replay works for any day whose records are
retained, and the same records always give the same board.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import BigIntegerField, CharField, F, Max, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.utils import timezone

from core.models import Center
from deliveries.board import WINDOW_MAX
from deliveries.models import Delivery, Source, TimelineEntry
from deliveries.selectors import (
    BOARD_RANGES,
    URGENCY_LATE,
    URGENCY_NOT_PICKED_UP,
    URGENCY_UNASSIGNED,
    BoardFilter,
    BoardSource,
    board_counts,
    board_window,
)
from riders.models import PositionSample
from riders.suggestions import gps_stale_seconds

ROWS_SHOWN = WINDOW_MAX
EVENTS_BEFORE = timedelta(minutes=30)  # the event list: what happened in the half hour up to T
EVENTS_SHOWN = 50
POSITION_WINDOW = timedelta(minutes=5)  # a rider without a sample in the 5 minutes up to T is not on the map
ASSIGNMENT_ACTIONS = ("assigned", "reassigned", "unassigned")  # the entries that set or clear the rider
# The board shows urgency by colour only; a table row written out for screen readers and print says it.
URGENCY_LABELS = {
    URGENCY_LATE: "Late",
    URGENCY_NOT_PICKED_UP: "Not picked up by ready time",
    URGENCY_UNASSIGNED: "Unassigned too long",
}


@dataclass(frozen=True)
class ReplayRow:
    """One board row as it was at T."""

    id: int
    order_id: int
    shop: str
    address: str
    status: str
    rider_id: int | None
    rider_name: str
    version: int | None
    urgency: int
    created_at: datetime
    promised_at: datetime

    @property
    def status_label(self) -> str:
        return Delivery.Status(self.status).label

    @property
    def urgency_label(self) -> str:
        return URGENCY_LABELS.get(self.urgency, "")


@dataclass(frozen=True)
class RiderAt:
    """Where a rider was last sampled at or before T (within POSITION_WINDOW)."""

    id: int
    name: str
    lat: float
    lng: float
    at: datetime
    stale: bool


@dataclass(frozen=True)
class ReplayEvent:
    """One timeline entry in the event list: who did what, when, to which order."""

    at: datetime
    delivery_id: int
    order_id: int
    actor_label: str
    source: str
    action: str
    from_status: str
    to_status: str
    rider_name: str
    reason: str

    @property
    def source_label(self) -> str:
        return Source(self.source).label if self.source in Source.values else self.source


@dataclass(frozen=True)
class BoardAt:
    at: datetime
    rows: list[ReplayRow]
    counts: dict[str, int]
    riders: list[RiderAt]
    events: list[ReplayEvent]

    @property
    def chip_counts(self) -> list[tuple[str, str, int]]:
        """Each status with its label and count, then late and needing attention, as the board's chips."""
        statuses = [(value, label, self.counts[value]) for value, label in Delivery.Status.choices]
        extra = [("late", "Late"), ("attention", "Needs attention")]
        return [*statuses, *((name, label, self.counts[name]) for name, label in extra)]


def _entries_up_to(at: datetime) -> QuerySet[TimelineEntry]:
    """The timeline entries of the outer delivery written at or before `at`, the latest first."""
    return TimelineEntry.objects.filter(delivery=OuterRef("pk"), at__lte=at).order_by("-at", "-pk")


def deliveries_as_of(at: datetime, *, since: datetime) -> QuerySet[Delivery]:
    """Deliveries that existed at `at`, annotated with `status_at`, `rider_at`, `rider_name_at`, `version_at`.

    A delivery exists from its first timeline entry ("created"). Its status at `at` is the `to_status`
    of its latest entry up to `at`; its rider the one named by its latest assignment entry
    (assigned / reassigned set it, unassigned clears it; cancelling and delivering keep it, as the
    services do); its version the one that entry recorded. The first filter only spares the
    subqueries deliveries that cannot be on a board covering `since`..`at` (created after `at`, or
    created and closed before `since`): the state itself comes from the timeline alone.
    """
    closed_before = Q(delivered_at__lt=since) | Q(cancelled_at__lt=since)
    entries = _entries_up_to(at)
    assignment = entries.filter(action__in=ASSIGNMENT_ACTIONS)
    rider_id = Cast(KeyTextTransform("rider", "detail"), BigIntegerField())  # absent on "unassigned": NULL
    return (
        Delivery.objects.filter(created_at__lte=at)
        .filter(Q(created_at__gte=since) | ~closed_before)
        .annotate(
            status_at=Subquery(entries.exclude(to_status="").values("to_status")[:1], output_field=CharField()),
            version_at=Subquery(entries.values("version")[:1]),
            rider_at=Subquery(assignment.annotate(rider=rider_id).values("rider")[:1], output_field=BigIntegerField()),
            rider_name_at=Subquery(
                assignment.annotate(name=KeyTextTransform("rider_name", "detail")).values("name")[:1],
                output_field=CharField(),
            ),
        )
        .filter(status_at__isnull=False)
    )


def board_at(center: Center, at: datetime, *, board: BoardFilter | None = None) -> BoardAt:
    """The board of `center` as it was at `at`: rows, counts, rider positions and recent events.

    `board` is what the dispatcher would have been looking at (default: the board's default view,
    last 4 h plus open, most urgent first). Four queries whatever the number of deliveries.
    """
    board = board or BoardFilter()
    source = BoardSource(
        deliveries=deliveries_as_of(at, since=at - BOARD_RANGES[board.range]), status="status_at", rider="rider_at"
    )
    deliveries = board_window(center_code=center.code, board=board, offset=0, limit=ROWS_SHOWN, now=at, source=source)
    rows = [
        ReplayRow(
            id=d.pk,
            order_id=d.order_id,
            shop=d.shop.name,
            address=d.order.address,
            status=d.status_at,
            rider_id=d.rider_at,
            rider_name=d.rider_name_at or "",
            version=d.version_at,
            urgency=d.urgency,
            created_at=d.created_at,
            promised_at=d.order.promised_at,
        )
        for d in deliveries
    ]
    counts = board_counts(center_code=center.code, board=board, now=at, source=source)
    return BoardAt(at=at, rows=rows, counts=counts, riders=riders_at(center, at), events=events_before(center, at))


def riders_at(center: Center, at: datetime) -> list[RiderAt]:
    """Each rider of `center` with a position sample in the POSITION_WINDOW up to `at`: the latest one. One query."""
    samples = (
        PositionSample.objects.filter(rider__center=center, recorded_at__gt=at - POSITION_WINDOW, recorded_at__lte=at)
        .order_by("rider_id", "-recorded_at")
        .distinct("rider_id")
        .values("rider_id", "lat", "lng", "recorded_at", name=F("rider__name"))
    )
    stale_after = timedelta(seconds=gps_stale_seconds())
    riders = [
        RiderAt(
            id=s["rider_id"],
            name=s["name"],
            lat=s["lat"],
            lng=s["lng"],
            at=s["recorded_at"],
            stale=at - s["recorded_at"] > stale_after,
        )
        for s in samples
    ]
    return sorted(riders, key=lambda r: (r.name, r.id))


def _event(entry: TimelineEntry) -> ReplayEvent:
    return ReplayEvent(
        at=entry.at,
        delivery_id=entry.delivery_id,
        order_id=entry.delivery.order_id,
        actor_label=entry.actor_label,
        source=entry.source,
        action=entry.action,
        from_status=entry.from_status,
        to_status=entry.to_status,
        rider_name=str(entry.detail.get("rider_name", "")),
        reason=str(entry.detail.get("reason", "")),
    )


def events_before(center: Center, at: datetime, *, limit: int = EVENTS_SHOWN) -> list[ReplayEvent]:
    """The center's timeline entries in the EVENTS_BEFORE up to `at`, newest first. One query."""
    entries = (
        TimelineEntry.objects.filter(delivery__center=center, at__gt=at - EVENTS_BEFORE, at__lte=at)
        .select_related("delivery")
        .order_by("-at", "-pk")[:limit]
    )
    return [_event(entry) for entry in entries]


@dataclass(frozen=True)
class DeliveryAt:
    """A delivery as it was at T, with its timeline up to T (oldest first)."""

    delivery: Delivery
    status: str
    rider_name: str
    events: list[ReplayEvent]

    @property
    def status_label(self) -> str:
        return Delivery.Status(self.status).label


def delivery_at(center: Center, delivery_id: int, at: datetime) -> DeliveryAt | None:
    """One delivery of `center` and its timeline up to `at`; None if it did not exist then. Two queries."""
    delivery = Delivery.objects.select_related("order", "shop").filter(pk=delivery_id, center=center).first()
    if delivery is None:
        return None
    entries = list(delivery.timeline.filter(at__lte=at).order_by("at", "pk"))
    if not entries:
        return None
    for entry in entries:
        entry.delivery = delivery
    status = next(e.to_status for e in reversed(entries) if e.to_status)
    assignment = next((e for e in reversed(entries) if e.action in ASSIGNMENT_ACTIONS), None)
    rider_name = str(assignment.detail.get("rider_name", "")) if assignment else ""
    return DeliveryAt(delivery=delivery, status=status, rider_name=rider_name, events=[_event(e) for e in entries])


def shift_span(center: Center, day: date) -> tuple[datetime, datetime]:
    """The first and last timeline entries of `center` on local `day`, or the whole day when it had none.

    Never later than now: the replay does not reach into the future.
    """
    start = timezone.make_aware(datetime.combine(day, time.min))
    end = timezone.make_aware(datetime.combine(day + timedelta(days=1), time.min))
    span = TimelineEntry.objects.filter(delivery__center=center, at__gte=start, at__lt=end).aggregate(
        first=Min("at"), last=Max("at")
    )
    first, last = span["first"] or start, span["last"] or end
    return first, min(last, timezone.now())

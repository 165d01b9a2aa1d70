"""Reads of orders and deliveries that more than one caller needs, with their joins done once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.conf import settings
from django.db.models import (
    Case,
    CharField,
    Count,
    DateTimeField,
    ExpressionWrapper,
    F,
    Func,
    IntegerField,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.lookups import Contains
from django.utils import timezone

from core import strict_input
from core.models import Center
from deliveries.models import Delivery, Order, Shop
from riders.models import Rider
from riders.suggestions import Suggestion, suggest_riders


def start_of_today() -> datetime:
    """Local midnight (settings.TIME_ZONE): the operations day starts there."""
    return timezone.make_aware(datetime.combine(timezone.localdate(), time.min))


def in_window(since: datetime, *, via: str = "", status: str = "status") -> Q:
    """The deliveries (or, `via="delivery__"`, the orders) an operations view covers.

    Everything created since `since` plus everything still open, however old: an order from
    yesterday that is still on the road is today's work. The one home of that rule. `status` names
    the field holding the delivery's status (the replay's status at a past moment is an annotation).
    """
    return Q(created_at__gte=since) | Q(**{f"{via}{status}__in": Delivery.OPEN_STATUSES})


def deliveries_with_related() -> QuerySet[Delivery]:
    return Delivery.objects.select_related("order", "center", "shop", "rider")


def delivery_rider_and_center(delivery_id: int) -> tuple[int | None, str] | None:
    """A delivery's rider id and center code (who may see it), or None if there is no such delivery."""
    return Delivery.objects.filter(pk=delivery_id).values_list("rider_id", "center__code").first()


def todays_deliveries(*, center_code: str, status: str | None = None) -> QuerySet[Delivery]:
    """Today's deliveries of a center plus any still open from before, newest first."""
    deliveries = deliveries_with_related().filter(center__code=center_code)
    deliveries = deliveries.filter(in_window(start_of_today()))
    if status:
        deliveries = deliveries.filter(status=status)
    return deliveries.order_by("-created_at", "-pk")


def todays_orders(*, center_code: str) -> QuerySet[Order]:
    """Today's orders of a center plus any still open from before, newest first."""
    orders = Order.objects.select_related("center", "shop", "delivery").filter(center__code=center_code)
    orders = orders.filter(in_window(start_of_today(), via="delivery__"))
    return orders.order_by("-created_at", "-pk")


def delivery_with_timeline(delivery_id: int) -> Delivery | None:
    return deliveries_with_related().prefetch_related("timeline").filter(pk=delivery_id).first()


def order_with_delivery(order_id: int) -> Order | None:
    return (
        Order.objects.select_related("center", "shop", "delivery__center", "delivery__shop", "delivery__rider")
        .filter(pk=order_id)
        .first()
    )


def suggested_riders(*, delivery: Delivery, limit: int, now: datetime | None = None) -> list[Suggestion]:
    """Return the best riders to (re)assign `delivery` to, by the server's ranking, its current rider left out.

    Nothing once the delivery is picked up or closed: it can no longer be assigned. `delivery`
    needs its shop and center loaded. One query and one Redis read.
    """
    if delivery.status not in (Delivery.Status.WAITING, Delivery.Status.ASSIGNED):
        return []
    ranked = suggest_riders(
        center_code=delivery.center.code, lat=delivery.shop.lat, lng=delivery.shop.lng, now=now, limit=limit + 1
    )
    return [s for s in ranked if s.rider_id != delivery.rider_id][:limit]


def rider_with_center(rider_id: int) -> Rider:
    return Rider.objects.select_related("center").get(pk=rider_id)


def centers_by_code(codes: list[str]) -> QuerySet[Center]:
    return Center.objects.filter(code__in=codes).order_by("code")


def active_shops(*, center_code: str) -> QuerySet[Shop]:
    return Shop.objects.filter(center__code=center_code, is_active=True).order_by("name")


def active_shops_of(center_codes: list[str]) -> QuerySet[Shop]:
    """The active shops of several centers with their center, by center then name (one query)."""
    return (
        Shop.objects.filter(center__code__in=center_codes, is_active=True)
        .select_related("center")
        .order_by("center__code", "name")
    )


def shop_by_id(shop_id: int) -> Shop | None:
    return Shop.objects.select_related("center").filter(pk=shop_id).first()


# -- the dispatcher board ------------------------------------------------------------------------

MAX_ID = 2**63 - 1  # PostgreSQL's bigint: no id is larger
URGENCY_LATE = 3  # past the promised time and not delivered
URGENCY_NOT_PICKED_UP = 2  # the shop's ready time passed and nobody picked it up
URGENCY_UNASSIGNED = 1  # waiting for a rider longer than settings.SLA_UNASSIGNED_MINUTES
URGENCY_NONE = 0

BOARD_RANGES = {"4h": timedelta(hours=4), "12h": timedelta(hours=12), "24h": timedelta(hours=24)}
BOARD_SORTS = ("urgent", "newest")


@dataclass(frozen=True)
class BoardSource:
    """Where the board reads deliveries and their state.

    Live, the deliveries' own `status` and `rider_id` columns; in a shift replay
    (`deliveries.replay`), the deliveries that existed at a past moment, annotated with the status
    and rider they had then. The board's rules (window, rider filter, urgency, order, counts) read
    the state only through these names, so the replay applies the very same rules.
    """

    deliveries: QuerySet[Delivery] | None = None  # None: every delivery
    status: str = "status"
    rider: str = "rider_id"

    def queryset(self) -> QuerySet[Delivery]:
        return Delivery.objects.all() if self.deliveries is None else self.deliveries


LIVE = BoardSource()


@dataclass(frozen=True)
class BoardFilter:
    """What a dispatcher is looking at; parsed from the page URL, so it survives reloads and links."""

    statuses: tuple[str, ...] = ()
    rider: int | None = None
    unassigned: bool = False
    search: str = ""
    range: str = "4h"
    sort: str = "urgent"
    late_only: bool = False

    @classmethod
    def from_query(cls, query) -> BoardFilter:
        statuses = tuple(s for s in query.getlist("status") if s in Delivery.Status.values)
        rider_text = query.get("rider", "")
        return cls(
            statuses=statuses,
            rider=_id_in(rider_text),
            unassigned=rider_text == "none",
            search=query.get("q", "").replace("\x00", "").strip()[:100],
            range=query.get("range") if query.get("range") in BOARD_RANGES else "4h",
            sort=query.get("sort") if query.get("sort") in BOARD_SORTS else "urgent",
            late_only=query.get("late") == "1",
        )

    def shown(self, source: BoardSource = LIVE) -> Q:
        """The status and lateness filters, applied to deliveries annotated with urgency."""
        condition = Q()
        if self.statuses:
            condition &= Q(**{f"{source.status}__in": self.statuses})
        if self.late_only:
            condition &= Q(urgency=URGENCY_LATE)
        return condition


def _id_in(text: str) -> int | None:
    """The id typed in the URL or the search ("42"), or None for anything else ("none", "²", "x").

    A number beyond any id is taken as MAX_ID, which matches nothing, instead of overflowing a query.
    """
    try:
        return strict_input.whole_number(text, maximum=MAX_ID)
    except strict_input.StrictInputError:
        return None


def _with_urgency(deliveries: QuerySet[Delivery], now: datetime, *, status: str = "status") -> QuerySet[Delivery]:
    """Annotate `urgency` (0–3, see URGENCY_*) and `open_first` as of `now`; `status` names the status field."""
    open_statuses = {f"{status}__in": Delivery.OPEN_STATUSES}
    ready_at = ExpressionWrapper(
        F("created_at") + F("shop__prep_minutes") * Value(timedelta(minutes=1)), output_field=DateTimeField()
    )
    unassigned_since = now - timedelta(minutes=settings.SLA_UNASSIGNED_MINUTES)
    return deliveries.annotate(
        ready_at=ready_at,
        urgency=Case(
            When(**open_statuses, order__promised_at__lt=now, then=Value(URGENCY_LATE)),
            When(
                **{f"{status}__in": (Delivery.Status.WAITING, Delivery.Status.ASSIGNED)},
                ready_at__lt=now,
                then=Value(URGENCY_NOT_PICKED_UP),
            ),
            When(**{status: Delivery.Status.WAITING}, created_at__lt=unassigned_since, then=Value(URGENCY_UNASSIGNED)),
            default=Value(URGENCY_NONE),
            output_field=IntegerField(),
        ),
        open_first=Case(When(**open_statuses, then=Value(1)), default=Value(0), output_field=IntegerField()),
    )


MIN_PHONE_DIGITS = 3
PHONE_SEARCH = re.compile(r"[0-9 ()+-]+")


class Digits(Func):
    """The digits of a text column only (PostgreSQL), so "01012345678" finds "010-1234-5678"."""

    function = "REGEXP_REPLACE"
    template = "%(function)s(%(expressions)s, '[^0-9]', '', 'g')"
    output_field = CharField()


def phone_digits_match(phone_field: str, text: str) -> Q | None:
    """Phones (in `phone_field`) holding the digits typed, whatever the dashes or spaces on either side.

    None unless the text looks like (part of) a phone number with at least MIN_PHONE_DIGITS digits:
    "Teheran-ro 152" searches addresses, not phones. The board and the admin search both use it.
    """
    digits = re.sub(r"[^0-9]", "", text)
    if len(digits) < MIN_PHONE_DIGITS or not PHONE_SEARCH.fullmatch(text.strip()):
        return None
    return Q(Contains(Digits(F(phone_field)), digits))


def order_search(text: str, *, via: str = "", address: bool = False) -> Q | None:
    """What a search box means for orders, reached through `via` ("order__" from a delivery).

    "#1234" is that order number and nothing else; other text matches the number, the phone's digits
    (dashes ignored), the customer's name and, with `address`, the address. None: nothing can match.
    """
    number = _id_in(text.lstrip("#").strip())
    if text.startswith("#"):
        return Q(**{f"{via}pk": number}) if number is not None else None
    condition = Q(**{f"{via}customer_name__icontains": text})
    if address:
        condition |= Q(**{f"{via}address__icontains": text})
    if number is not None:
        condition |= Q(**{f"{via}pk": number})
    phone = phone_digits_match(f"{via}customer_phone", text)
    if phone is not None:
        condition |= phone
    return condition


def _search(deliveries: QuerySet[Delivery], text: str) -> QuerySet[Delivery]:
    """The board's search: order number, phone, address, customer name."""
    if not text:
        return deliveries
    condition = order_search(text, via="order__", address=True)
    return deliveries.filter(condition) if condition is not None else deliveries.none()


def board_base(
    *, center_code: str, board: BoardFilter, now: datetime, source: BoardSource = LIVE
) -> QuerySet[Delivery]:
    """The deliveries the board covers before the status filter: the range (plus all open), rider, search."""
    since = now - BOARD_RANGES[board.range]
    deliveries = source.queryset().filter(center__code=center_code).filter(in_window(since, status=source.status))
    if board.rider is not None:
        deliveries = deliveries.filter(**{source.rider: board.rider})
    elif board.unassigned:
        deliveries = deliveries.filter(**{f"{source.rider}__isnull": True})
    return _search(deliveries, board.search)


def board_window(
    *, center_code: str, board: BoardFilter, offset: int, limit: int, now: datetime, source: BoardSource = LIVE
):
    """One window of board rows, ordered as the dispatcher chose, with urgency annotated."""
    deliveries = _with_urgency(
        board_base(center_code=center_code, board=board, now=now, source=source), now, status=source.status
    ).filter(board.shown(source))
    if board.sort == "urgent":
        deliveries = deliveries.order_by("-urgency", "-open_first", "order__promised_at", "-pk")
    else:
        deliveries = deliveries.order_by("-created_at", "-pk")
    return list(deliveries.select_related("order", "shop", "rider")[offset : offset + limit])


def board_counts(*, center_code: str, board: BoardFilter, now: datetime, source: BoardSource = LIVE) -> dict[str, int]:
    """Counts per status (ignoring the status filter), late and needing attention, and the filtered total."""
    deliveries = _with_urgency(
        board_base(center_code=center_code, board=board, now=now, source=source), now, status=source.status
    )
    per_status = {status: Count("pk", filter=Q(**{source.status: status})) for status in Delivery.Status.values}
    return deliveries.aggregate(
        **per_status,
        all=Count("pk"),
        late=Count("pk", filter=Q(urgency=URGENCY_LATE)),
        attention=Count("pk", filter=Q(urgency__gt=URGENCY_NONE)),
        total=Count("pk", filter=board.shown(source)),
    )


LATE_IDS_LIMIT = 500


def late_delivery_ids(*, center_code: str, now: datetime) -> list[int]:
    """Ids of the center's open deliveries past their promised time, whatever the board's filters.

    The late alert compares these with the ones the dispatcher acknowledged, so a delivery that
    closes while another goes late still raises the alert.
    """
    late = Delivery.objects.filter(
        center__code=center_code, status__in=Delivery.OPEN_STATUSES, order__promised_at__lt=now
    )
    return list(late.order_by("order__promised_at").values_list("pk", flat=True)[:LATE_IDS_LIMIT])


def centers_overview(*, now: datetime) -> list[dict]:
    """Per center: today's (and open) deliveries per status, late ones, riders on duty / busy / stale.

    Two grouped queries for all centers together, never one per center.
    """
    from riders.models import Rider

    today = start_of_today()
    per_status = {status: Count("pk", filter=Q(status=status)) for status in Delivery.Status.values}
    deliveries = (
        Delivery.objects.filter(in_window(today))
        .values("center__code")
        .annotate(
            **per_status,
            late=Count("pk", filter=Q(status__in=Delivery.OPEN_STATUSES, order__promised_at__lt=now)),
        )
    )
    stale_before = now - timedelta(seconds=settings.RIDER_GPS_STALE_SECONDS)
    riders = Rider.objects.values("center__code").annotate(
        # Prefixed: an annotation named like a field (on_duty) would shadow it in the filters.
        n_on_duty=Count("pk", filter=Q(on_duty=True)),
        n_busy=Count("pk", filter=Q(on_duty=True, load__gt=0)),
        n_stale=Count(
            "pk", filter=Q(on_duty=True) & (Q(last_position_at__isnull=True) | Q(last_position_at__lt=stale_before))
        ),
        n_total=Count("pk"),
    )
    by_center = {c.code: {"code": c.code, "name": c.name} for c in Center.objects.order_by("code")}
    empty = dict.fromkeys([*Delivery.Status.values, "late"], 0)
    for code in by_center:
        by_center[code]["deliveries"] = dict(empty)
        by_center[code]["riders"] = {"on_duty": 0, "busy": 0, "stale": 0, "total": 0}
    for row in deliveries:
        code = row.pop("center__code")
        if code in by_center:
            by_center[code]["deliveries"] = row
    for row in riders:
        code = row.pop("center__code")
        if code in by_center:
            by_center[code]["riders"] = {key.removeprefix("n_"): value for key, value in row.items()}
    return list(by_center.values())


# -- the call center ------------------------------------------------------------------------------

CUSTOMER_MIN_DIGITS = 8  # a whole phone number, not the first digits typed
CUSTOMER_HISTORY_DAYS = 180
CUSTOMER_SUGGESTIONS = 5
TODAYS_ORDERS_SHOWN = 200


def customer_history(*, phone: str, center_codes: list[str], limit: int = CUSTOMER_SUGGESTIONS) -> list[dict]:
    """The names and places a caller's phone ordered to before (newest first, each once), in the agent's centers.

    Matched on the digits alone, so "010 1234 5678" finds "010-1234-5678". Looks back
    CUSTOMER_HISTORY_DAYS through the centers' recent-orders index; one query.
    """
    digits = re.sub(r"[^0-9]", "", phone or "")
    if len(digits) < CUSTOMER_MIN_DIGITS or len(digits) > 30:
        return []
    since = timezone.now() - timedelta(days=CUSTOMER_HISTORY_DAYS)
    rows = (
        Order.objects.filter(center__code__in=center_codes, created_at__gte=since)
        .annotate(phone_digits=Digits(F("customer_phone")))
        .filter(phone_digits=digits)
        .order_by("-created_at", "-pk")
        .values("pk", "customer_name", "address", "lat", "lng", "created_at")[:50]
    )
    seen, found = set(), []
    for row in rows:
        place = (row["customer_name"], row["address"], row["lat"], row["lng"])
        if place not in seen:
            seen.add(place)
            found.append(row)
        if len(found) == limit:
            break
    return found


def recent_orders_of(*, phone: str, shop_id: int, since: datetime) -> list[Order]:
    """Orders from the same phone (its digits) at the same shop since `since`: possible duplicates."""
    digits = re.sub(r"[^0-9]", "", phone or "")
    if not digits:
        return []
    return list(
        Order.objects.filter(shop_id=shop_id, created_at__gte=since)
        .annotate(phone_digits=Digits(F("customer_phone")))
        .filter(phone_digits=digits)
        .order_by("-created_at", "-pk")
    )


def _search_orders(orders: QuerySet[Order], text: str) -> QuerySet[Order]:
    """The call center's search: order number, phone or customer name."""
    if not text:
        return orders
    condition = order_search(text)
    return orders.filter(condition) if condition is not None else orders.none()


def call_center_orders(*, center_codes: list[str], search: str = "", limit: int = TODAYS_ORDERS_SHOWN) -> list[Order]:
    """Today's orders (and older ones still open) of the agent's centers, newest first, with shop and rider.

    One query whatever the number of rows.
    """
    orders = Order.objects.filter(center__code__in=center_codes).filter(in_window(start_of_today(), via="delivery__"))
    orders = _search_orders(orders, search)
    return list(orders.select_related("center", "shop", "delivery__rider").order_by("-created_at", "-pk")[:limit])


def order_for_page(order_id: int) -> Order | None:
    """An order with its center, shop, delivery, rider and the delivery's timeline (two queries)."""
    order = (
        Order.objects.select_related("center", "shop", "delivery__rider", "delivery__center", "delivery__shop")
        .prefetch_related("delivery__timeline")
        .filter(pk=order_id)
        .first()
    )
    return order

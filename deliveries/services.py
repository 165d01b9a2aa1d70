"""Commands on orders and deliveries: each one transaction that also writes its timeline and events.

Lock order, everywhere: order → delivery → riders (by id) → stream counters (by name, in `emit`).
Every command takes the actor (a user, an API token's `TokenActor`, or None for the system:
simulator, tasks), checks its right on the center with `access.authorize`, refuses illegal
transitions and stale versions with `CommandRefused`, bumps `version` and emits its events in the same transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from core import access
from core.actors import TokenActor, actor_label, user_of
from core.exceptions import InvalidTransition, StaleVersion
from core.retention import delete_in_batches
from deliveries import selectors
from deliveries.models import Delivery, Order, Shop, Source, TimelineEntry
from deliveries.schemas import OrderInput
from deliveries.selectors import in_window, start_of_today
from realtime.events import (
    assignment_new_event,
    assignment_revoked_event,
    delivery_event,
    order_event,
    rider_status_event,
)
from realtime.outbox import emit
from riders.models import Rider
from riders.suggestions import haversine_km

Status = Delivery.Status

_SOURCE_BY_ROLE = {
    access.Role.HQ: Source.DISPATCHER,
    access.Role.DISPATCHER: Source.DISPATCHER,
    access.Role.CALLCENTER: Source.CALLCENTER,
    access.Role.RIDER: Source.RIDER,
}


def source_for(actor) -> str:
    """The timeline source implied by who acts (the system when nobody does)."""
    if actor is None:
        return Source.SYSTEM
    if isinstance(actor, TokenActor):
        return Source.API
    return _SOURCE_BY_ROLE.get(access.access_for(actor).role, Source.ADMIN)


def _record(delivery, *, actor, via, source, action, from_status="", to_status="", detail=None) -> None:
    """Write a timeline entry for a change already made to `delivery` (its version already bumped)."""
    TimelineEntry.objects.create(
        delivery=delivery,
        actor=user_of(actor),
        actor_label=actor_label(actor, via),
        source=source or source_for(actor),
        action=action,
        from_status=from_status,
        to_status=to_status,
        detail=detail or {},
        version=delivery.version,
    )


def last_change(delivery) -> dict | None:
    """Who changed the delivery last, and when: shown with a stale-version refusal."""
    entry = delivery.timeline.order_by("-at", "-pk").first()
    if entry is None:
        return None
    return {
        "by": entry.actor_label,
        "source": entry.source,
        "action": entry.action,
        "at": entry.at.isoformat(),
    }


# The delivery statuses each command starts from, and its refusal from any other ({status}: the current one).
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "cancel": (Delivery.OPEN_STATUSES, "The order is already {status}."),
    "assign": ((Status.WAITING, Status.ASSIGNED), "A {status} delivery cannot be assigned."),
    "unassign": ((Status.ASSIGNED,), "Only an assigned delivery can be unassigned; this one is {status}."),
    "pick_up": ((Status.ASSIGNED,), "Only an assigned delivery can be picked up; this one is {status}."),
    "deliver": ((Status.PICKED_UP,), "Only a picked-up delivery can be delivered; this one is {status}."),
}


def _require_transition(command: str, delivery, *, expected_version: int | None, entity=None) -> None:
    """Refuse a stale version of `entity` (default: the delivery), then a status `command` cannot start from."""
    entity = entity or delivery
    if expected_version is not None and expected_version != entity.version:
        raise StaleVersion(
            f"It changed since you looked (version {expected_version}, now {entity.version}).",
            entity=entity,
            changed_by=last_change(delivery),
        )
    allowed, refusal = TRANSITIONS[command]
    if delivery.status not in allowed:
        raise InvalidTransition(refusal.format(status=delivery.get_status_display().lower()), entity=entity)


_LOCK_DELIVERY_BY = {
    column: f"SELECT id FROM {Delivery._meta.db_table} WHERE {column} = %s FOR NO KEY UPDATE"
    for column in ("id", "order_id")
}


def _lock_delivery(delivery_id: int | None = None, *, order_id: int | None = None) -> Delivery:
    """Lock a delivery (by its id or its order's), then read it with its order, center, shop and rider.

    The lock is taken by a query without joins and the relations are read by the next one: after
    waiting for a lock PostgreSQL re-checks only the locked row, so rows joined by the locking query
    may predate the wait (a new `rider_id` beside a missing `rider`). Lock with one query, read with
    the next, everywhere.
    """
    column, value = ("order_id", order_id) if order_id is not None else ("id", delivery_id)
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_DELIVERY_BY[column], [value])
        row = cursor.fetchone()
    if row is None:
        raise Delivery.DoesNotExist("Delivery matching query does not exist.")
    (pk,) = row
    delivery = Delivery.objects.select_related("order", "center", "shop", "rider").get(pk=pk)
    # The order's center and shop are the delivery's: reuse them instead of loading them again.
    delivery.order.center, delivery.order.shop = delivery.center, delivery.shop
    delivery.order.delivery = delivery
    return delivery


def _lock_order(*, order_id: int | None = None, delivery_id: int | None = None) -> None:
    """Lock an order (before its delivery, as everywhere); `_lock_delivery` then reads it fresh.

    The join to find it by its delivery only matches on `order_id`, which never changes.
    """
    lookup = {"pk": order_id} if order_id is not None else {"delivery__pk": delivery_id}
    Order.objects.select_for_update(of=("self",), no_key=True).values_list("pk", flat=True).get(**lookup)


def _lock_riders(*rider_ids: int | None, center) -> dict[int, Rider]:
    """Lock riders in id order; a locking query returns each row as it is after the wait.

    `center` is the delivery's: riders of that center get it without another query.
    """
    ids = sorted({pk for pk in rider_ids if pk is not None})
    riders = Rider.objects.select_for_update(no_key=True).filter(pk__in=ids).order_by("pk")
    locked = {}
    for rider in riders:
        if rider.center_id == center.pk:
            rider.center = center
        locked[rider.pk] = rider
    return locked


def _change_load(rider: Rider, delta: int, *, actor, via: str) -> None:
    rider.load += delta
    rider.version += 1
    rider.changed_by, rider.changed_at = actor_label(actor, via), timezone.now()
    rider.save(update_fields=["load", "version", "changed_by", "changed_at"])


@transaction.atomic
def create_order(
    *,
    actor,
    shop_id: int,
    customer_name: str,
    customer_phone: str,
    address: str,
    items: list,
    lat: float | None = None,
    lng: float | None = None,
    note: str = "",
    promised_at: datetime | None = None,
    source: str | None = None,
    via: str = "",
) -> Order:
    """Take an order for a shop and create its waiting delivery in the shop's center. Locks nothing.

    The input rules are `OrderInput`'s (deliveries/schemas.py), shared with the API and the forms.
    """
    order_input = OrderInput.clean(
        customer_name=customer_name,
        customer_phone=customer_phone,
        address=address,
        lat=lat,
        lng=lng,
        items=items,
        note=note,
        promised_at=promised_at,
    )
    shop = Shop.objects.select_related("center").filter(pk=shop_id, is_active=True).first()
    if shop is None:
        raise ValidationError({"shop": "No such shop."})
    access.authorize(actor, "orders.create", center_code=shop.center.code)
    fields = order_input.model_dump(mode="json", exclude={"promised_at"})
    promised_at = order_input.promised_at or timezone.now() + timedelta(minutes=settings.SLA_DEFAULT_PROMISE_MINUTES)
    order = Order.objects.create(
        center=shop.center,
        shop=shop,
        promised_at=promised_at,
        created_by=user_of(actor),
        **fields,
    )
    delivery = Delivery.objects.create(order=order, center=shop.center, shop=shop)
    order.delivery = delivery
    delivery.order = order
    _record(
        delivery,
        actor=actor,
        via=via,
        source=source,
        action="created",
        to_status=Status.WAITING,
    )
    emit(
        [
            order_event("order.created", order),
            delivery_event("delivery.created", delivery),
        ]
    )
    return order


def take_phone_order(
    *,
    actor,
    shop_id: int | None,
    fields: dict,
    confirm_outside_area: bool = False,
    confirm_duplicate: bool = False,
    via: str = "",
) -> Order:
    """Take an order on the phone (the call-center form): `create_order` after the intake's own checks.

    Every refusal comes at once as `ValidationError({field: [message]})`: `OrderInput`'s rules, a
    shop the agent takes orders for, a point on the map, the point inside the shop's center's
    service area (CENTER_SERVICE_RADIUS_KM around its map centre) unless `confirm_outside_area`,
    and no order from the same phone at the same shop in the last ORDER_DUPLICATE_MINUTES
    unless `confirm_duplicate`. A shop outside the agent's centers reads like a missing one.
    """
    errors: dict[str, list[str]] = {}
    order_input = None
    try:
        order_input = OrderInput.clean(**fields)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    shop = selectors.shop_by_id(shop_id) if shop_id is not None else None
    if shop is None or not shop.is_active or not access.can_take_orders(actor, shop.center.code):
        errors["shop"] = ["Choose the shop the customer orders from."]
        shop = None
    # The place and the phone are checked even when other fields are refused: every message at once.
    lat, lng = (None, None) if "lat" in errors or "lng" in errors else (fields.get("lat"), fields.get("lng"))
    if lat is None and "lat" not in errors:
        errors["lat"] = ["Put the address on the map: click it, drag the pin, or type lat and lng."]
    elif lat is not None and shop is not None and not confirm_outside_area:
        distance = haversine_km(lat, lng, shop.center.lat, shop.center.lng)
        if distance > settings.CENTER_SERVICE_RADIUS_KM:
            errors["area"] = [
                f"This point is {distance:.1f} km from the centre of {shop.center.name}, outside its "
                f"{settings.CENTER_SERVICE_RADIUS_KM:g} km service area. Check it, or confirm delivery outside "
                "the area."
            ]
    if "customer_phone" not in errors and shop is not None and not confirm_duplicate:
        since = timezone.now() - timedelta(minutes=settings.ORDER_DUPLICATE_MINUTES)
        earlier = selectors.recent_orders_of(phone=fields["customer_phone"], shop_id=shop.pk, since=since)
        if earlier:
            listed = ", ".join(
                f"#{o.pk} at {timezone.localtime(o.created_at):%H:%M} ({o.customer_name})" for o in earlier[:3]
            )
            errors["duplicate"] = [
                f"This phone ordered from {shop.name} in the last {settings.ORDER_DUPLICATE_MINUTES} minutes: "
                f"{listed}. Take it again only if the customer wants a second order."
            ]
    if errors:
        raise ValidationError(errors)
    return create_order(actor=actor, shop_id=shop.pk, **order_input.model_dump(), via=via)


@transaction.atomic
def cancel_order(
    *,
    actor,
    order_id: int,
    reason: str,
    expected_version: int | None = None,
    source=None,
    via: str = "",
) -> Order:
    """Cancel an order and its delivery before it is delivered. Locks the order, delivery, rider."""
    reason = (reason or "").strip()
    if "\x00" in reason:
        raise ValidationError({"reason": "Contains a NUL character."})
    if not reason:
        raise ValidationError({"reason": "Say why the order is cancelled."})
    if len(reason) > 200:
        raise ValidationError({"reason": "At most 200 characters."})
    _lock_order(order_id=order_id)
    delivery = _lock_delivery(order_id=order_id)
    order = delivery.order
    access.authorize(actor, "orders.cancel", center_code=order.center.code)
    _require_transition("cancel", delivery, expected_version=expected_version, entity=order)
    previous_status, previous_rider = delivery.status, delivery.rider
    events = []
    if previous_rider is not None:
        rider = _lock_riders(previous_rider.pk, center=delivery.center)[previous_rider.pk]
        _change_load(rider, -1, actor=actor, via=via)
        delivery.rider = rider
        events.append(rider_status_event(rider))
    now = timezone.now()
    order.status, order.cancel_reason, order.version = (
        Order.Status.CANCELLED,
        reason,
        order.version + 1,
    )
    order.save(update_fields=["status", "cancel_reason", "version"])
    delivery.status, delivery.cancelled_at, delivery.version = (
        Status.CANCELLED,
        now,
        delivery.version + 1,
    )
    delivery.save(update_fields=["status", "cancelled_at", "version", "updated_at"])
    _record(
        delivery,
        actor=actor,
        via=via,
        source=source,
        action="cancelled",
        from_status=previous_status,
        to_status=Status.CANCELLED,
        detail={"reason": reason},
    )
    events += [
        order_event("order.cancelled", order),
        delivery_event("delivery.cancelled", delivery),
    ]
    if previous_rider is not None:
        events.append(
            assignment_revoked_event(
                delivery,
                rider=delivery.rider,
                reason="cancelled",
                was_picked_up=previous_status == Status.PICKED_UP,
                cancel_reason=reason,
            )
        )
    emit(events)
    return order


@transaction.atomic
def assign_delivery(
    *,
    actor,
    delivery_id: int,
    rider_id: int,
    expected_version: int | None = None,
    source=None,
    via: str = "",
) -> Delivery:
    """Assign (or reassign) a waiting or assigned delivery to an on-duty rider of its center.

    Locks the delivery, then the previous and the new rider in id order.
    """
    delivery = _lock_delivery(delivery_id)
    access.authorize(actor, "deliveries.assign", center_code=delivery.center.code)
    _require_transition("assign", delivery, expected_version=expected_version)
    if delivery.rider_id == rider_id:
        raise InvalidTransition(f"It is already assigned to {delivery.rider.name}.", entity=delivery)
    riders = _lock_riders(delivery.rider_id, rider_id, center=delivery.center)
    new_rider = riders.get(rider_id)
    if new_rider is None or new_rider.center_id != delivery.center_id:
        raise ValidationError({"rider": "No such rider in this center."})
    if not new_rider.on_duty:
        raise InvalidTransition(f"{new_rider.name} is off duty.", entity=delivery)
    old_rider = riders.get(delivery.rider_id) if delivery.rider_id else None
    events = []
    if old_rider is not None:
        _change_load(old_rider, -1, actor=actor, via=via)
        events.append(rider_status_event(old_rider))
    _change_load(new_rider, +1, actor=actor, via=via)
    events.append(rider_status_event(new_rider))
    previous_status = delivery.status
    delivery.rider, delivery.status, delivery.assigned_at = (
        new_rider,
        Status.ASSIGNED,
        timezone.now(),
    )
    delivery.version += 1
    delivery.save(update_fields=["rider", "status", "assigned_at", "version", "updated_at"])
    _record(
        delivery,
        actor=actor,
        via=via,
        source=source,
        action="reassigned" if old_rider else "assigned",
        from_status=previous_status,
        to_status=Status.ASSIGNED,
        detail={"rider": new_rider.pk, "rider_name": new_rider.name}
        | ({"previous_rider": old_rider.pk, "previous_rider_name": old_rider.name} if old_rider else {}),
    )
    events += [
        delivery_event("delivery.assigned", delivery),
        assignment_new_event(delivery),
    ]
    if old_rider is not None:
        events.append(assignment_revoked_event(delivery, rider=old_rider, reason="reassigned"))
    emit(events)
    return delivery


@transaction.atomic
def unassign_delivery(
    *,
    actor,
    delivery_id: int,
    expected_version: int | None = None,
    source=None,
    via: str = "",
) -> Delivery:
    """Take an assigned (not yet picked-up) delivery back to waiting. Locks the delivery and rider."""
    delivery = _lock_delivery(delivery_id)
    access.authorize(actor, "deliveries.unassign", center_code=delivery.center.code)
    _require_transition("unassign", delivery, expected_version=expected_version)
    rider = _lock_riders(delivery.rider_id, center=delivery.center)[delivery.rider_id]
    _change_load(rider, -1, actor=actor, via=via)
    delivery.rider, delivery.status, delivery.assigned_at = None, Status.WAITING, None
    delivery.version += 1
    delivery.save(update_fields=["rider", "status", "assigned_at", "version", "updated_at"])
    _record(
        delivery,
        actor=actor,
        via=via,
        source=source,
        action="unassigned",
        from_status=Status.ASSIGNED,
        to_status=Status.WAITING,
        detail={"previous_rider": rider.pk, "previous_rider_name": rider.name},
    )
    emit(
        [
            delivery_event("delivery.unassigned", delivery),
            rider_status_event(rider),
            assignment_revoked_event(delivery, rider=rider, reason="unassigned"),
        ]
    )
    return delivery


@transaction.atomic
def pick_up_delivery(
    *,
    actor,
    delivery_id: int,
    expected_version: int | None = None,
    source=None,
    via: str = "",
) -> Delivery:
    """Mark an assigned delivery picked up (its rider, or a dispatcher). Locks the delivery."""
    delivery = _lock_delivery(delivery_id)
    access.authorize(actor, "deliveries.pickup", center_code=delivery.center.code, rider_id=delivery.rider_id)
    _require_transition("pick_up", delivery, expected_version=expected_version)
    delivery.status, delivery.picked_up_at = Status.PICKED_UP, timezone.now()
    delivery.version += 1
    delivery.save(update_fields=["status", "picked_up_at", "version", "updated_at"])
    _record(
        delivery,
        actor=actor,
        via=via,
        source=source,
        action="picked_up",
        from_status=Status.ASSIGNED,
        to_status=Status.PICKED_UP,
    )
    emit([delivery_event("delivery.picked_up", delivery)])
    return delivery


@transaction.atomic
def deliver_delivery(
    *,
    actor,
    delivery_id: int,
    expected_version: int | None = None,
    source=None,
    via: str = "",
) -> Delivery:
    """Mark a picked-up delivery delivered and its order done. Locks the order, delivery, rider."""
    _lock_order(delivery_id=delivery_id)
    delivery = _lock_delivery(delivery_id)
    order = delivery.order
    access.authorize(actor, "deliveries.deliver", center_code=delivery.center.code, rider_id=delivery.rider_id)
    _require_transition("deliver", delivery, expected_version=expected_version)
    rider = _lock_riders(delivery.rider_id, center=delivery.center)[delivery.rider_id]
    _change_load(rider, -1, actor=actor, via=via)
    delivery.rider = rider
    delivery.status, delivery.delivered_at = Status.DELIVERED, timezone.now()
    delivery.version += 1
    delivery.save(update_fields=["status", "delivered_at", "version", "updated_at"])
    order.status, order.version = Order.Status.DELIVERED, order.version + 1
    order.save(update_fields=["status", "version"])
    order.delivery = delivery
    _record(
        delivery,
        actor=actor,
        via=via,
        source=source,
        action="delivered",
        from_status=Status.PICKED_UP,
        to_status=Status.DELIVERED,
    )
    emit(
        [
            delivery_event("delivery.delivered", delivery),
            order_event("order.updated", order),
            rider_status_event(rider),
        ]
    )
    return delivery


# ---------------------------------------------------------------------------------------------
# Shops (admin). Lock order: shop → orders → deliveries, each by id.
# ---------------------------------------------------------------------------------------------

SHOP_FIELDS = ("center_id", "name", "address", "phone", "lat", "lng", "prep_minutes", "is_active")
# What today's rows and drawers show of their shop (delivery events carry only the name).
SHOP_FIELDS_SHOWN_WITH_DELIVERIES = ("name", "address", "lat", "lng")


def _check_may_manage_shops(actor) -> None:
    access.authorize(actor, "shops.manage")


def _refresh_shop_deliveries(shop: Shop, *, renamed: bool, actor, changed: list[str]) -> list:
    """Bump today's deliveries of `shop` (and, if it was renamed, their orders) and return their events.

    Boards render a delivery's shop (name, address, place) in its row: `delivery.updated` with a
    new version is what makes them re-read it. Each bump is a `shop_changed` timeline entry, as every
    other version change is, so the timeline (and the shift replay built from it) knows every
    version. Locks the orders (on a rename), then the deliveries, by id.
    """
    today = Delivery.objects.filter(in_window(start_of_today()), shop=shop)
    ids = list(today.order_by("pk").values_list("pk", "order_id"))
    if not ids:
        return []
    delivery_ids, order_ids = [d for d, _ in ids], [o for _, o in ids]
    if renamed:
        list(Order.objects.select_for_update(no_key=True).filter(pk__in=order_ids).order_by("pk").values_list("pk"))
    list(Delivery.objects.select_for_update(no_key=True).filter(pk__in=delivery_ids).order_by("pk").values_list("pk"))
    Delivery.objects.filter(pk__in=delivery_ids).update(version=F("version") + 1, updated_at=timezone.now())
    if renamed:
        Order.objects.filter(pk__in=order_ids).update(version=F("version") + 1)
    events, entries = [], []
    label, source = actor_label(actor, ""), source_for(actor)
    detail = {"shop": shop.name, "fields": changed}
    for delivery in Delivery.objects.select_related("order", "center", "shop", "rider").filter(pk__in=delivery_ids):
        delivery.order.center, delivery.order.shop, delivery.order.delivery = delivery.center, delivery.shop, delivery
        events.append(delivery_event("delivery.updated", delivery))
        if renamed:
            events.append(order_event("order.updated", delivery.order))
        entries.append(
            TimelineEntry(
                delivery=delivery,
                actor=user_of(actor),
                actor_label=label,
                source=source,
                action="shop_changed",
                detail=detail,
                version=delivery.version,
            )
        )
    TimelineEntry.objects.bulk_create(entries)
    return events


@transaction.atomic
def save_shop(
    *,
    actor,
    shop_id: int | None = None,
    center_id: int,
    name: str,
    address: str,
    lat: float,
    lng: float,
    phone: str = "",
    prep_minutes: int = 15,
    is_active: bool = True,
    expected_version: int | None = None,
) -> Shop:
    """Add a shop (`shop_id` None) or change one. Locks the shop, then its orders and deliveries of today.

    A change to what delivery rows show of the shop bumps each of today's deliveries of the shop
    with `delivery.updated` and a `shop_changed` timeline entry (and, on a rename, each order with
    `order.updated`), so open boards and integrations see it. A shop with open deliveries cannot
    move to another center: they would stay behind in the old one.
    """
    _check_may_manage_shops(actor)
    values = {
        "center_id": center_id,
        "name": name,
        "address": address,
        "phone": phone,
        "lat": lat,
        "lng": lng,
        "prep_minutes": prep_minutes,
        "is_active": is_active,
    }
    if shop_id is None:
        shop = Shop(**values)
        shop.full_clean(exclude=["version"])
        shop.save()
        return shop
    shop = Shop.objects.select_for_update(no_key=True).get(pk=shop_id)
    if expected_version is not None and expected_version != shop.version:
        raise StaleVersion(
            f"The shop changed since you looked (version {expected_version}, now {shop.version}).", entity=shop
        )
    changed = [field for field, value in values.items() if getattr(shop, field) != value]
    if not changed:
        return shop
    if "center_id" in changed and shop.deliveries.filter(status__in=Delivery.OPEN_STATUSES).exists():
        raise InvalidTransition(f"{shop.name} has open deliveries: it cannot move to another center now.", entity=shop)
    for field in changed:
        setattr(shop, field, values[field])
    shop.full_clean(exclude=["version"])
    shop.version += 1
    shop.save(update_fields=[*changed, "version"])
    if any(field in SHOP_FIELDS_SHOWN_WITH_DELIVERIES for field in changed):
        shown = [field for field in changed if field in SHOP_FIELDS_SHOWN_WITH_DELIVERIES]
        emit(_refresh_shop_deliveries(shop, renamed="name" in changed, actor=actor, changed=shown))
    return shop


def prune_timeline(*, before: datetime) -> int:
    """Delete timeline entries written before `before`: the audit trail, pruned only if a setting asks."""
    return delete_in_batches(TimelineEntry.objects.filter(at__lt=before))

"""Specification of the order and delivery services (deliveries/services.py).

Every success runs through `verify_action` (Zulip's verify_action): the events a command emits
validate against their schemas, continue their streams' seqs without a gap, and applying them to
the old state gives the new state. Every refusal runs inside `refused`, which checks that nothing
changed: no event, no timeline entry, no version, status, rider or load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db.models import Max
from django.utils import timezone

from core.exceptions import InvalidTransition, StaleVersion
from core.models import StaffProfile
from deliveries.models import Delivery, Order, TimelineEntry
from deliveries.services import (
    assign_delivery,
    cancel_order,
    create_order,
    deliver_delivery,
    pick_up_delivery,
    unassign_delivery,
)
from realtime.events import EVENT_SCHEMAS, delivery_data, order_data, rider_data
from realtime.models import Event, Stream
from riders.models import Rider
from riders.services import set_rider_duty

# ---------------------------------------------------------------------------------------------
# verify_action: run a command, check its events against the old and the new state.
# ---------------------------------------------------------------------------------------------


def current_delivery(pk: int) -> Delivery:
    return Delivery.objects.select_related("order", "center", "shop", "rider").get(pk=pk)


def current_order(pk: int) -> Order:
    return Order.objects.select_related("center", "shop", "delivery").get(pk=pk)


def current_rider(pk: int) -> Rider:
    return Rider.objects.select_related("center", "user").get(pk=pk)


def serialized(kind: str, pk: int) -> dict:
    """The entity as it is in the database now, in the shape events carry it."""
    if kind == "delivery":
        return delivery_data(current_delivery(pk)).model_dump(mode="json")
    if kind == "order":
        return order_data(current_order(pk)).model_dump(mode="json")
    return rider_data(current_rider(pk)).model_dump(mode="json")


def entities_in(event: Event) -> list[tuple[str, dict]]:
    """The (kind, payload) of every entity an event carries."""
    name, data = event.name, event.data
    if name.startswith("delivery."):
        return [("delivery", data)]
    if name in ("order.created", "order.updated", "order.cancelled"):
        return [("order", data)]
    if name == "rider.status":
        return [("rider", data)]
    if name == "assignment.new":
        return [("delivery", data["delivery"]), ("order", data["order"])]
    if name == "assignment.revoked":
        return [("delivery", data["delivery"])]
    return []


# The stored fields a client sees (besides `version`), per entity kind: any change to them is a change.
TRACKED_FIELDS = {
    "delivery": (Delivery, ("status", "rider_id", "assigned_at", "picked_up_at", "delivered_at", "cancelled_at")),
    "order": (Order, ("status", "cancel_reason", "promised_at", "address", "items", "note")),
    "rider": (Rider, ("on_duty", "load", "center_id", "name", "vehicle")),
}


def all_rows() -> dict[tuple[str, int], tuple[int, tuple]]:
    """Every delivery, order and rider as (version, tracked fields), by (kind, id)."""
    rows = {}
    for kind, (model, fields) in TRACKED_FIELDS.items():
        for pk, version, *values in model.objects.values_list("pk", "version", *fields):
            rows[(kind, pk)] = (version, tuple(values))
    return rows


def max_id(model) -> int:
    return model.objects.aggregate(m=Max("id"))["m"] or 0


@dataclass
class Action:
    """What a command returned, and the events and timeline entries it wrote."""

    result: Any
    events: list[Event]  # ordered by stream, then seq
    timeline: list[TimelineEntry]

    @property
    def streams(self) -> dict[str, list[str]]:
        """Event names per stream, in seq order."""
        by_stream: dict[str, list[str]] = {}
        for event in self.events:
            by_stream.setdefault(event.stream, []).append(event.name)
        return by_stream

    def event(self, name: str) -> Event:
        (event,) = [e for e in self.events if e.name == name]
        return event


def verify_action(command: Callable[[], Any]) -> Action:
    """Run `command`; check that its events validate and that applying them gives the new state."""
    last_event, last_entry = max_id(Event), max_id(TimelineEntry)
    heads = dict(Stream.objects.values_list("name", "head"))
    old_rows = all_rows()

    result = command()

    events = list(Event.objects.filter(id__gt=last_event).order_by("stream", "seq"))
    assert events, "a command that changes something emits events"
    for event in events:
        EVENT_SCHEMAS[event.name].model_validate(event.data)  # raises if the payload is off-schema

    # Each stream continues from its old head with no gap, and its head moved with it.
    seqs: dict[str, list[int]] = {}
    for event in events:
        seqs.setdefault(event.stream, []).append(event.seq)
    for stream, stream_seqs in seqs.items():
        start = heads.get(stream, 0)
        assert stream_seqs == list(range(start + 1, start + 1 + len(stream_seqs))), stream
        assert Stream.objects.get(name=stream).head == start + len(stream_seqs), stream

    # Applying the events to the old state gives the new state: every entity an event carries is
    # carried exactly as the database now holds it (so any order of application converges)...
    carried: set[tuple[str, int]] = set()
    for event in events:
        for kind, payload in entities_in(event):
            carried.add((kind, payload["id"]))
            assert payload == serialized(kind, payload["id"]), f"{event.name} carries a stale {kind}"

    # ...and every entity that changed moved by exactly one version (new ones start at 1) and is in
    # an event: no change without its event, no change a client could take for the old version.
    new_rows = all_rows()
    changed = {key for key, row in new_rows.items() if old_rows.get(key) != row}
    for key in changed:
        old_version = old_rows[key][0] if key in old_rows else 0
        assert new_rows[key][0] == old_version + 1, f"{key} changed without moving exactly one version"
    assert changed <= carried, f"changed without an event: {changed - carried}"

    timeline = list(TimelineEntry.objects.filter(id__gt=last_entry).order_by("pk"))
    return Action(result=result, events=events, timeline=timeline)


def state_fingerprint() -> dict:
    return {
        "events": max_id(Event),
        "timeline": max_id(TimelineEntry),
        "heads": dict(Stream.objects.values_list("name", "head")),
        "orders": sorted(Order.objects.values_list("pk", "status", "version", "cancel_reason")),
        "deliveries": sorted(
            Delivery.objects.values_list(
                "pk", "status", "version", "rider_id", "assigned_at", "picked_up_at", "delivered_at", "cancelled_at"
            )
        ),
        "riders": sorted(Rider.objects.values_list("pk", "on_duty", "load", "version")),
    }


@contextmanager
def refused(exception: type[Exception]) -> Iterator[pytest.ExceptionInfo]:
    """Expect the command to raise `exception` and to change nothing at all."""
    before = state_fingerprint()
    with pytest.raises(exception) as info:
        yield info
    assert state_fingerprint() == before, "a refused command changed something"


# ---------------------------------------------------------------------------------------------
# Factories, built on the real services.
# ---------------------------------------------------------------------------------------------

ORDER_INPUT = {
    "customer_name": "Park Jiho",
    "customer_phone": "010-2345-6789",
    "address": "Teheran-ro 212, Seoul",
    "lat": 37.5012,
    "lng": 127.0396,
    "items": [{"name": "Fried chicken", "qty": 2}, {"name": "Cola", "qty": 1}],
    "note": "Ring twice",
}


def make_order(demo, *, actor: str | None = "callcenter", center: str = "gangnam", **overrides) -> Order:
    """Place an order through `create_order` (as `actor`, a username; None for the system)."""
    fields = {"shop_id": demo.shop(center).pk, **ORDER_INPUT, **overrides}
    return create_order(actor=demo.user(actor) if actor else None, **fields)


def on_duty_rider(demo, center: str = "gangnam", number: int = 1) -> Rider:
    rider = demo.rider(center, number)
    if not rider.on_duty:
        set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    return demo.rider(center, number)


def waiting_delivery(demo, center: str = "gangnam") -> Delivery:
    return current_delivery(make_order(demo, center=center).delivery.pk)


def assigned_delivery(demo, *, rider: int = 1, center: str = "gangnam") -> Delivery:
    delivery = waiting_delivery(demo, center)
    assign_delivery(
        actor=demo.user(f"dispatch-{center}"),
        delivery_id=delivery.pk,
        rider_id=on_duty_rider(demo, center, rider).pk,
    )
    return current_delivery(delivery.pk)


def picked_up_delivery(demo, *, rider: int = 1, center: str = "gangnam") -> Delivery:
    delivery = assigned_delivery(demo, rider=rider, center=center)
    pick_up_delivery(actor=delivery.rider.user, delivery_id=delivery.pk)
    return current_delivery(delivery.pk)


def delivered_delivery(demo, *, rider: int = 1, center: str = "gangnam") -> Delivery:
    delivery = picked_up_delivery(demo, rider=rider, center=center)
    deliver_delivery(actor=delivery.rider.user, delivery_id=delivery.pk)
    return current_delivery(delivery.pk)


def cancelled_delivery(demo, *, center: str = "gangnam") -> Delivery:
    delivery = waiting_delivery(demo, center)
    cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="Customer changed their mind")
    return current_delivery(delivery.pk)


def user_without_profile():
    return get_user_model().objects.create_user("no-profile", password="x", first_name="Nobody")


def timeline_row(entry: TimelineEntry) -> tuple:
    return (entry.actor, entry.actor_label, entry.source, entry.action, entry.from_status, entry.to_status)


def active_load(rider: Rider) -> int:
    """What a rider's `load` must equal: their assigned and picked-up deliveries."""
    return Delivery.objects.filter(rider=rider, status__in=Delivery.ACTIVE_STATUSES).count()


# ---------------------------------------------------------------------------------------------
# create_order
# ---------------------------------------------------------------------------------------------


def test_create_order_places_order_with_waiting_delivery_in_shop_center(demo):
    """Creating an order stores the cleaned input, the default promise and a waiting delivery, both at version 1."""
    shop = demo.shop("gangnam")
    before = timezone.now()

    action = verify_action(lambda: make_order(demo, customer_name="  Park Jiho  "))

    order = current_order(action.result.pk)
    delivery = current_delivery(order.delivery.pk)
    assert (order.status, order.version, order.center.code, order.shop, order.created_by) == (
        Order.Status.PLACED,
        1,
        "gangnam",
        shop,
        demo.user("callcenter"),
    )
    assert order.customer_name == "Park Jiho"
    assert order.items == ORDER_INPUT["items"]
    promise = timedelta(minutes=settings.SLA_DEFAULT_PROMISE_MINUTES)
    assert before + promise <= order.promised_at <= order.created_at + promise
    assert (delivery.status, delivery.version, delivery.center.code, delivery.shop, delivery.rider) == (
        Delivery.Status.WAITING,
        1,
        "gangnam",
        shop,
        None,
    )
    assert delivery.assigned_at is delivery.picked_up_at is delivery.delivered_at is delivery.cancelled_at is None


def test_create_order_emits_order_created_and_delivery_created(demo):
    """Creating an order emits order.created on orders:<center> and delivery.created on deliveries:<center>."""
    action = verify_action(lambda: make_order(demo))

    assert action.streams == {"orders:gangnam": ["order.created"], "deliveries:gangnam": ["delivery.created"]}
    assert action.event("order.created").data["id"] == action.result.pk
    assert action.event("delivery.created").data["id"] == action.result.delivery.pk


def test_create_order_records_callcenter_timeline_entry(demo):
    """An order taken by the call center starts its timeline with 'created' from the call center."""
    action = verify_action(lambda: make_order(demo))

    (entry,) = action.timeline
    assert entry.delivery_id == action.result.delivery.pk
    assert timeline_row(entry) == (demo.user("callcenter"), "Call Center", "callcenter", "created", "", "waiting")


@pytest.mark.parametrize(
    ("username", "center", "label", "source"),
    [
        ("dispatch-mapo", "mapo", "Dispatch Mapo", "dispatcher"),
        ("hq", "songpa", "HQ Ops", "dispatcher"),
        ("admin", "gangnam", "Admin", "dispatcher"),
    ],
)
def test_create_order_by_dispatcher_or_hq_records_dispatcher_source(demo, username, center, label, source):
    """Dispatchers take orders for their own center and HQ (superusers too) for any; the source is 'dispatcher'."""
    action = verify_action(lambda: make_order(demo, actor=username, center=center))

    assert action.result.center.code == center
    assert action.streams == {f"orders:{center}": ["order.created"], f"deliveries:{center}": ["delivery.created"]}
    (entry,) = action.timeline
    assert timeline_row(entry) == (demo.user(username), label, source, "created", "", "waiting")


def test_create_order_by_callcenter_serves_every_center(demo):
    """Call-center staff take orders for every center."""
    for center in ("gangnam", "mapo", "songpa"):
        action = verify_action(lambda center=center: make_order(demo, center=center))
        assert action.result.center.code == center


def test_create_order_without_actor_records_system_source(demo):
    """An order placed by the system (actor None) is labelled 'system' with source 'system'."""
    action = verify_action(lambda: make_order(demo, actor=None))

    assert action.result.created_by is None
    (entry,) = action.timeline
    assert timeline_row(entry) == (None, "system", "system", "created", "", "waiting")


def test_create_order_through_integration_records_its_source_and_label(demo):
    """An integration's order carries the given source and `via` label in its timeline."""
    action = verify_action(lambda: make_order(demo, actor=None, source="api", via="Baemin integration"))

    (entry,) = action.timeline
    assert timeline_row(entry) == (None, "Baemin integration", "api", "created", "", "waiting")


def test_create_order_keeps_given_promised_time(demo):
    """A promised time in the future is kept as given."""
    promised = timezone.now() + timedelta(hours=2)

    action = verify_action(lambda: make_order(demo, promised_at=promised))

    assert current_order(action.result.pk).promised_at == promised


def test_create_order_emits_promised_time_as_stored(demo):
    """An order promised in another time zone emits the same promised_at as the stored order serializes to."""
    promised = timezone.now().astimezone(ZoneInfo("Asia/Seoul")) + timedelta(hours=1)

    verify_action(lambda: make_order(demo, promised_at=promised))


def test_create_order_accepts_order_without_coordinates(demo):
    """An order may leave out both lat and lng."""
    action = verify_action(lambda: make_order(demo, lat=None, lng=None))

    assert (action.result.lat, action.result.lng) == (None, None)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"customer_name": ""}, "customer_name"),
        ({"customer_name": "   "}, "customer_name"),
        ({"customer_name": "K" * 101}, "customer_name"),
        ({"customer_phone": "call me"}, "customer_phone"),
        ({"customer_phone": ""}, "customer_phone"),
        ({"address": " "}, "address"),
        ({"address": "A" * 201}, "address"),
        ({"items": []}, "items"),
        ({"items": "chicken"}, "items"),
        ({"items": [{"name": "Fried chicken", "qty": 0}]}, "items"),
        ({"items": [{"name": "Fried chicken", "qty": 100}]}, "items"),
        ({"items": [{"name": "", "qty": 1}]}, "items"),
        ({"items": [{"qty": 1}]}, "items"),
        ({"items": [{"name": "Fried chicken", "qty": 1, "price": 18000}]}, "items"),
        ({"lat": 37.5, "lng": None}, "lat"),
        ({"lat": None, "lng": 127.0}, "lat"),
        ({"lat": 91.0, "lng": 127.0}, "lat"),
        ({"lat": 37.5, "lng": 181.0}, "lat"),
        ({"lat": float("nan"), "lng": 127.0}, "lat"),
        ({"note": "N" * 501}, "note"),
        ({"shop_id": 0}, "shop"),
        ({"promised_at": timezone.now() - timedelta(hours=1)}, "promised_at"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_create_order_refuses_bad_input(demo, overrides, field):
    """Creating an order with bad input raises ValidationError naming the field, and changes nothing."""
    with refused(ValidationError) as info:
        make_order(demo, **overrides)

    assert field in info.value.message_dict


def test_create_order_reports_every_bad_field_at_once(demo):
    """All bad fields are reported together, not only the first."""
    with refused(ValidationError) as info:
        make_order(demo, customer_name="", customer_phone="x", address="", items=[], lat=1.0, lng=None)

    assert set(info.value.message_dict) == {"customer_name", "customer_phone", "address", "items", "lat"}


def test_create_order_refuses_phone_too_long_for_the_database(demo):
    """A phone number longer than 30 characters raises ValidationError on customer_phone."""
    phone = "+8210" + "1" * 26  # 31 characters, matches PHONE
    with refused(ValidationError) as info:
        make_order(demo, customer_phone=phone)

    assert "customer_phone" in info.value.message_dict


@pytest.mark.parametrize(
    ("username", "center"),
    [
        ("dispatch-mapo", "gangnam"),
        ("rider-gangnam-01", "gangnam"),
    ],
)
def test_create_order_refuses_user_without_right_on_center(demo, username, center):
    """A dispatcher of another center or a rider cannot take an order (PermissionDenied)."""
    with refused(PermissionDenied):
        make_order(demo, actor=username, center=center)


def test_create_order_refuses_user_without_profile(demo):
    """A user with no staff profile cannot take orders."""
    with refused(PermissionDenied):
        create_order(actor=user_without_profile(), shop_id=demo.shop().pk, **ORDER_INPUT)


def test_create_order_refuses_anonymous_user(demo):
    """An anonymous user cannot take orders."""
    with refused(PermissionDenied):
        create_order(actor=AnonymousUser(), shop_id=demo.shop().pk, **ORDER_INPUT)


def test_create_order_by_user_with_long_full_name_succeeds(demo):
    """A user whose full name exceeds 150 characters can still take an order."""
    user = get_user_model().objects.create_user("long-name", first_name="F" * 100, last_name="L" * 100)
    StaffProfile.objects.create(user=user, role=StaffProfile.Role.HQ)

    action = verify_action(lambda: create_order(actor=user, shop_id=demo.shop().pk, **ORDER_INPUT))

    assert action.timeline[0].actor == user


# ---------------------------------------------------------------------------------------------
# cancel_order
# ---------------------------------------------------------------------------------------------


def test_cancel_order_cancels_waiting_order_and_delivery(demo):
    """Cancelling a waiting order cancels it and its delivery, each one version up, with the reason kept."""
    delivery = waiting_delivery(demo)

    action = verify_action(
        lambda: cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="  Customer left  ")
    )

    order, after = current_order(delivery.order_id), current_delivery(delivery.pk)
    assert (order.status, order.cancel_reason, order.version) == (Order.Status.CANCELLED, "Customer left", 2)
    assert (after.status, after.version, after.rider) == (Delivery.Status.CANCELLED, 2, None)
    assert after.cancelled_at is not None
    assert action.result.pk == order.pk


def test_cancel_order_of_waiting_delivery_emits_order_and_delivery_events(demo):
    """Cancelling a waiting order emits order.cancelled and delivery.cancelled, and no rider event."""
    delivery = waiting_delivery(demo)

    action = verify_action(lambda: cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="x"))

    assert action.streams == {"orders:gangnam": ["order.cancelled"], "deliveries:gangnam": ["delivery.cancelled"]}


def test_cancel_order_records_cancellation_in_timeline(demo):
    """Cancelling records 'cancelled' from the old status, by the actor, with the reason."""
    delivery = assigned_delivery(demo)

    action = verify_action(
        lambda: cancel_order(actor=demo.user("dispatch-gangnam"), order_id=delivery.order_id, reason="Shop closed")
    )

    (entry,) = action.timeline
    assert timeline_row(entry) == (
        demo.user("dispatch-gangnam"),
        "Dispatch Gangnam",
        "dispatcher",
        "cancelled",
        "assigned",
        "cancelled",
    )
    assert entry.detail == {"reason": "Shop closed"}


def test_cancel_order_of_assigned_delivery_frees_rider_and_tells_them(demo):
    """Cancelling an assigned order lowers the rider's load and sends them assignment.revoked (not picked up)."""
    delivery = assigned_delivery(demo)
    rider = current_rider(delivery.rider_id)

    action = verify_action(
        lambda: cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="Customer moved")
    )

    after = current_rider(rider.pk)
    assert (after.load, after.version, after.status) == (0, rider.version + 1, Rider.Status.AVAILABLE)
    assert action.streams == {
        "riders:gangnam": ["rider.status"],
        "orders:gangnam": ["order.cancelled"],
        "deliveries:gangnam": ["delivery.cancelled"],
        f"user:{rider.user_id}": ["assignment.revoked"],
    }
    revoked = action.event("assignment.revoked").data
    assert (revoked["reason"], revoked["was_picked_up"], revoked["delivery"]["id"]) == ("cancelled", False, delivery.pk)
    assert revoked["cancel_reason"] == "Customer moved"


def test_cancel_order_of_picked_up_delivery_tells_rider_it_was_picked_up(demo):
    """Cancelling a picked-up order frees the rider and says the food was already picked up."""
    delivery = picked_up_delivery(demo)

    action = verify_action(lambda: cancel_order(actor=demo.user("hq"), order_id=delivery.order_id, reason="Refund"))

    assert current_rider(delivery.rider_id).load == 0
    assert current_delivery(delivery.pk).status == Delivery.Status.CANCELLED
    assert action.event("assignment.revoked").data["was_picked_up"] is True
    (entry,) = action.timeline
    assert (entry.source, entry.from_status, entry.to_status) == ("dispatcher", "picked_up", "cancelled")


def test_cancel_order_with_current_version_succeeds(demo):
    """A cancel carrying the order's current version goes through."""
    delivery = waiting_delivery(demo)

    verify_action(
        lambda: cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="x", expected_version=1)
    )

    assert current_order(delivery.order_id).status == Order.Status.CANCELLED


def test_cancel_order_refuses_delivered_order(demo):
    """Cancelling a delivered order raises InvalidTransition with the current order."""
    delivery = delivered_delivery(demo)

    with refused(InvalidTransition) as info:
        cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="Too late")

    assert info.value.entity.pk == delivery.order_id
    assert info.value.entity.status == Order.Status.DELIVERED


def test_cancel_order_refuses_cancelling_twice(demo):
    """Cancelling an already cancelled order raises InvalidTransition."""
    delivery = cancelled_delivery(demo)

    with refused(InvalidTransition):
        cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="Again")


def test_cancel_order_refuses_stale_version(demo):
    """Cancelling with a version one behind raises StaleVersion naming who changed the order last."""
    delivery = delivered_delivery(demo)
    rider = current_rider(delivery.rider_id)

    with refused(StaleVersion) as info:
        cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="x", expected_version=1)

    assert (info.value.entity.pk, info.value.entity.version) == (delivery.order_id, 2)
    assert (info.value.changed_by["by"], info.value.changed_by["action"]) == (rider.name, "delivered")


@pytest.mark.parametrize("username", ["dispatch-mapo", "rider-gangnam-01"])
def test_cancel_order_refuses_user_without_right_on_center(demo, username):
    """A dispatcher of another center or a rider cannot cancel an order (PermissionDenied)."""
    delivery = waiting_delivery(demo)

    with refused(PermissionDenied):
        cancel_order(actor=demo.user(username), order_id=delivery.order_id, reason="x")


def test_cancel_order_refuses_user_without_profile(demo):
    """A user with no staff profile cannot cancel an order."""
    delivery = waiting_delivery(demo)

    with refused(PermissionDenied):
        cancel_order(actor=user_without_profile(), order_id=delivery.order_id, reason="x")


@pytest.mark.parametrize("reason", ["", "   ", None, "R" * 201])
def test_cancel_order_refuses_missing_or_long_reason(demo, reason):
    """Cancelling without a reason (or with one over 200 characters) raises ValidationError on 'reason'."""
    delivery = waiting_delivery(demo)

    with refused(ValidationError) as info:
        cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason=reason)

    assert "reason" in info.value.message_dict


# ---------------------------------------------------------------------------------------------
# assign_delivery
# ---------------------------------------------------------------------------------------------


def test_assign_delivery_assigns_waiting_delivery_to_on_duty_rider(demo):
    """Assigning a waiting delivery sets its rider and assigned_at and makes the rider busy, each one version up."""
    delivery = waiting_delivery(demo)
    rider = on_duty_rider(demo)

    action = verify_action(
        lambda: assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=rider.pk)
    )

    after = current_delivery(delivery.pk)
    assert (after.status, after.rider, after.version) == (Delivery.Status.ASSIGNED, rider, delivery.version + 1)
    assert after.assigned_at is not None
    assert current_order(delivery.order_id).version == 1  # the order itself did not change
    rider_after = current_rider(rider.pk)
    assert (rider_after.load, rider_after.version, rider_after.status) == (1, rider.version + 1, Rider.Status.BUSY)
    assert action.result.pk == delivery.pk


def test_assign_delivery_emits_delivery_rider_and_private_assignment_events(demo):
    """Assigning emits delivery.assigned, the rider's rider.status, and assignment.new on the rider's user stream."""
    delivery = waiting_delivery(demo)
    rider = on_duty_rider(demo)

    action = verify_action(
        lambda: assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=rider.pk)
    )

    assert action.streams == {
        "deliveries:gangnam": ["delivery.assigned"],
        "riders:gangnam": ["rider.status"],
        f"user:{rider.user_id}": ["assignment.new"],
    }
    new = action.event("assignment.new").data
    assert (new["delivery"]["id"], new["delivery"]["rider"], new["order"]["id"]) == (
        delivery.pk,
        rider.pk,
        delivery.order_id,
    )


def test_assign_delivery_records_assignment_in_timeline(demo):
    """Assigning records 'assigned' waiting → assigned by the dispatcher, naming the rider."""
    delivery = waiting_delivery(demo)
    rider = on_duty_rider(demo)

    action = verify_action(
        lambda: assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=rider.pk)
    )

    (entry,) = action.timeline
    assert timeline_row(entry) == (
        demo.user("dispatch-gangnam"),
        "Dispatch Gangnam",
        "dispatcher",
        "assigned",
        "waiting",
        "assigned",
    )
    assert entry.detail == {"rider": rider.pk, "rider_name": rider.name}


def test_assign_delivery_reassigns_to_another_rider(demo):
    """Reassigning moves the delivery and one unit of load from the old rider to the new, each one version up."""
    delivery = assigned_delivery(demo, rider=1)
    old, new = current_rider(delivery.rider_id), on_duty_rider(demo, number=2)

    action = verify_action(
        lambda: assign_delivery(
            actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=new.pk, expected_version=2
        )
    )

    after = current_delivery(delivery.pk)
    assert action.result.rider == new
    assert (after.status, after.rider, after.version) == (Delivery.Status.ASSIGNED, new, 3)
    assert after.assigned_at > delivery.assigned_at
    old_after, new_after = current_rider(old.pk), current_rider(new.pk)
    assert (old_after.load, old_after.version, old_after.status) == (0, old.version + 1, Rider.Status.AVAILABLE)
    assert (new_after.load, new_after.version, new_after.status) == (1, new.version + 1, Rider.Status.BUSY)


def test_assign_delivery_reassignment_tells_both_riders(demo):
    """Reassigning emits both riders' status (old first), assignment.new to the new, assignment.revoked to the old."""
    delivery = assigned_delivery(demo, rider=1)
    old, new = current_rider(delivery.rider_id), on_duty_rider(demo, number=2)

    action = verify_action(
        lambda: assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=new.pk)
    )

    assert action.streams == {
        "deliveries:gangnam": ["delivery.assigned"],
        "riders:gangnam": ["rider.status", "rider.status"],
        f"user:{new.user_id}": ["assignment.new"],
        f"user:{old.user_id}": ["assignment.revoked"],
    }
    statuses = [e.data["id"] for e in action.events if e.name == "rider.status"]
    assert statuses == [old.pk, new.pk]
    revoked = action.event("assignment.revoked").data
    assert (revoked["reason"], revoked["was_picked_up"]) == ("reassigned", False)


def test_assign_delivery_records_reassignment_in_timeline(demo):
    """Reassigning records 'reassigned' assigned → assigned, naming both riders."""
    delivery = assigned_delivery(demo, rider=1)
    old, new = current_rider(delivery.rider_id), on_duty_rider(demo, number=2)

    action = verify_action(lambda: assign_delivery(actor=demo.user("hq"), delivery_id=delivery.pk, rider_id=new.pk))

    (entry,) = action.timeline
    assert timeline_row(entry) == (demo.user("hq"), "HQ Ops", "dispatcher", "reassigned", "assigned", "assigned")
    assert entry.detail == {
        "rider": new.pk,
        "rider_name": new.name,
        "previous_rider": old.pk,
        "previous_rider_name": old.name,
    }


def test_assign_delivery_by_hq_in_any_center(demo):
    """HQ dispatches every center."""
    delivery = waiting_delivery(demo, "mapo")
    rider = on_duty_rider(demo, "mapo")

    action = verify_action(lambda: assign_delivery(actor=demo.user("hq"), delivery_id=delivery.pk, rider_id=rider.pk))

    assert current_delivery(delivery.pk).rider == rider
    assert set(action.streams) == {"deliveries:mapo", "riders:mapo", f"user:{rider.user_id}"}


def test_assign_delivery_without_actor_records_system_source(demo):
    """The system (actor None) may assign; the timeline says 'system'."""
    delivery = waiting_delivery(demo)
    rider = on_duty_rider(demo)

    action = verify_action(lambda: assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk))

    (entry,) = action.timeline
    assert timeline_row(entry) == (None, "system", "system", "assigned", "waiting", "assigned")


@pytest.mark.parametrize("factory", [picked_up_delivery, delivered_delivery, cancelled_delivery])
def test_assign_delivery_refuses_delivery_past_assignment(demo, factory):
    """Assigning a picked-up, delivered or cancelled delivery raises InvalidTransition with the current delivery."""
    delivery = factory(demo)
    rider = on_duty_rider(demo, number=3)

    with refused(InvalidTransition) as info:
        assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=rider.pk)

    assert (info.value.entity.pk, info.value.entity.status) == (delivery.pk, delivery.status)


def test_assign_delivery_refuses_same_rider_again(demo):
    """Assigning a delivery to the rider who already has it raises InvalidTransition."""
    delivery = assigned_delivery(demo)

    with refused(InvalidTransition):
        assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=delivery.rider_id)


def test_assign_delivery_refuses_off_duty_rider(demo):
    """Assigning to an off-duty rider raises InvalidTransition."""
    delivery = waiting_delivery(demo)
    rider = demo.rider("gangnam", 5)
    assert not rider.on_duty

    with refused(InvalidTransition):
        assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=rider.pk)


def test_assign_delivery_refuses_stale_version(demo):
    """Reassigning with a version one behind raises StaleVersion naming the dispatcher who changed it last."""
    delivery = assigned_delivery(demo, rider=1)
    other = on_duty_rider(demo, number=2)

    with refused(StaleVersion) as info:
        assign_delivery(actor=demo.user("hq"), delivery_id=delivery.pk, rider_id=other.pk, expected_version=1)

    entity = info.value.entity
    assert (entity.pk, entity.version, entity.rider_id) == (delivery.pk, 2, delivery.rider_id)
    assert info.value.changed_by["by"] == "Dispatch Gangnam"
    assert (info.value.changed_by["source"], info.value.changed_by["action"]) == ("dispatcher", "assigned")


@pytest.mark.parametrize("username", ["dispatch-mapo", "callcenter", "rider-gangnam-01"])
def test_assign_delivery_refuses_user_who_does_not_dispatch_center(demo, username):
    """Another center's dispatcher, the call center and a rider cannot assign (PermissionDenied)."""
    delivery = waiting_delivery(demo)
    rider = on_duty_rider(demo)

    with refused(PermissionDenied):
        assign_delivery(actor=demo.user(username), delivery_id=delivery.pk, rider_id=rider.pk)


def test_assign_delivery_refuses_user_without_profile(demo):
    """A user with no staff profile cannot assign."""
    delivery = waiting_delivery(demo)
    rider = on_duty_rider(demo)

    with refused(PermissionDenied):
        assign_delivery(actor=user_without_profile(), delivery_id=delivery.pk, rider_id=rider.pk)


def test_assign_delivery_refuses_rider_of_another_center(demo):
    """Assigning a gangnam delivery to a mapo rider raises ValidationError on 'rider'."""
    delivery = waiting_delivery(demo)
    rider = on_duty_rider(demo, "mapo")

    with refused(ValidationError) as info:
        assign_delivery(actor=demo.user("hq"), delivery_id=delivery.pk, rider_id=rider.pk)

    assert "rider" in info.value.message_dict


def test_assign_delivery_refuses_unknown_rider(demo):
    """Assigning to a rider id that does not exist raises ValidationError on 'rider'."""
    delivery = waiting_delivery(demo)

    with refused(ValidationError) as info:
        assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=10**9)

    assert "rider" in info.value.message_dict


# ---------------------------------------------------------------------------------------------
# unassign_delivery
# ---------------------------------------------------------------------------------------------


def test_unassign_delivery_returns_delivery_to_waiting(demo):
    """Unassigning clears the rider and assigned_at, the delivery waits again, and the rider's load drops."""
    delivery = assigned_delivery(demo)
    rider = current_rider(delivery.rider_id)

    verify_action(
        lambda: unassign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, expected_version=2)
    )

    after = current_delivery(delivery.pk)
    assert (after.status, after.rider, after.assigned_at, after.version) == (Delivery.Status.WAITING, None, None, 3)
    rider_after = current_rider(rider.pk)
    assert (rider_after.load, rider_after.version, rider_after.status) == (0, rider.version + 1, "available")


def test_unassign_delivery_emits_delivery_rider_and_revocation_events(demo):
    """Unassigning emits delivery.unassigned, the rider's rider.status and assignment.revoked to the rider."""
    delivery = assigned_delivery(demo)
    rider = current_rider(delivery.rider_id)

    action = verify_action(lambda: unassign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk))

    assert action.streams == {
        "deliveries:gangnam": ["delivery.unassigned"],
        "riders:gangnam": ["rider.status"],
        f"user:{rider.user_id}": ["assignment.revoked"],
    }
    revoked = action.event("assignment.revoked").data
    assert (revoked["reason"], revoked["was_picked_up"], revoked["delivery"]["rider"]) == ("unassigned", False, None)


def test_unassign_delivery_records_unassignment_in_timeline(demo):
    """Unassigning records 'unassigned' assigned → waiting, naming the previous rider."""
    delivery = assigned_delivery(demo)
    rider = current_rider(delivery.rider_id)

    action = verify_action(lambda: unassign_delivery(actor=demo.user("hq"), delivery_id=delivery.pk))

    (entry,) = action.timeline
    assert timeline_row(entry) == (demo.user("hq"), "HQ Ops", "dispatcher", "unassigned", "assigned", "waiting")
    assert entry.detail == {"previous_rider": rider.pk, "previous_rider_name": rider.name}


@pytest.mark.parametrize("factory", [waiting_delivery, picked_up_delivery, delivered_delivery, cancelled_delivery])
def test_unassign_delivery_refuses_delivery_not_assigned(demo, factory):
    """Unassigning a waiting, picked-up, delivered or cancelled delivery raises InvalidTransition."""
    delivery = factory(demo)

    with refused(InvalidTransition) as info:
        unassign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk)

    assert info.value.entity.status == delivery.status


def test_unassign_delivery_refuses_stale_version(demo):
    """Unassigning with a version one behind raises StaleVersion naming who changed it last."""
    delivery = assigned_delivery(demo, rider=1)
    assign_delivery(actor=demo.user("hq"), delivery_id=delivery.pk, rider_id=on_duty_rider(demo, number=2).pk)

    with refused(StaleVersion) as info:
        unassign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, expected_version=2)

    assert info.value.entity.version == 3
    assert (info.value.changed_by["by"], info.value.changed_by["action"]) == ("HQ Ops", "reassigned")


@pytest.mark.parametrize("username", ["dispatch-mapo", "callcenter", "rider-gangnam-01"])
def test_unassign_delivery_refuses_user_who_does_not_dispatch_center(demo, username):
    """Another center's dispatcher, the call center and even the delivery's own rider cannot unassign."""
    delivery = assigned_delivery(demo, rider=1)

    with refused(PermissionDenied):
        unassign_delivery(actor=demo.user(username), delivery_id=delivery.pk)


# ---------------------------------------------------------------------------------------------
# pick_up_delivery
# ---------------------------------------------------------------------------------------------


def test_pick_up_delivery_by_its_rider(demo):
    """The delivery's rider picks it up: picked_up_at is set, one version up; the rider's load is unchanged."""
    delivery = assigned_delivery(demo)
    rider = current_rider(delivery.rider_id)

    action = verify_action(lambda: pick_up_delivery(actor=rider.user, delivery_id=delivery.pk, expected_version=2))

    after = current_delivery(delivery.pk)
    assert (after.status, after.rider, after.version) == (Delivery.Status.PICKED_UP, rider, 3)
    assert after.picked_up_at >= after.assigned_at
    rider_after = current_rider(rider.pk)
    assert (rider_after.load, rider_after.version) == (1, rider.version)
    assert action.streams == {"deliveries:gangnam": ["delivery.picked_up"]}
    (entry,) = action.timeline
    assert timeline_row(entry) == (rider.user, rider.name, "rider", "picked_up", "assigned", "picked_up")


def test_pick_up_delivery_by_dispatcher(demo):
    """A dispatcher of the center may mark a delivery picked up for its rider; the source is 'dispatcher'."""
    delivery = assigned_delivery(demo)

    action = verify_action(lambda: pick_up_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk))

    assert current_delivery(delivery.pk).status == Delivery.Status.PICKED_UP
    (entry,) = action.timeline
    assert (entry.actor_label, entry.source) == ("Dispatch Gangnam", "dispatcher")


@pytest.mark.parametrize("factory", [waiting_delivery, picked_up_delivery, delivered_delivery, cancelled_delivery])
def test_pick_up_delivery_refuses_delivery_not_assigned(demo, factory):
    """Picking up a waiting, picked-up, delivered or cancelled delivery raises InvalidTransition."""
    delivery = factory(demo)

    with refused(InvalidTransition):
        pick_up_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk)


def test_pick_up_delivery_refuses_another_riders_delivery(demo):
    """A rider cannot pick up a delivery assigned to someone else (PermissionDenied)."""
    delivery = assigned_delivery(demo, rider=1)
    other = on_duty_rider(demo, number=2)

    with refused(PermissionDenied):
        pick_up_delivery(actor=other.user, delivery_id=delivery.pk)


def test_pick_up_delivery_refuses_rider_on_waiting_delivery(demo):
    """A rider cannot pick up a waiting delivery nobody assigned to them (PermissionDenied)."""
    delivery = waiting_delivery(demo)
    rider = on_duty_rider(demo)

    with refused(PermissionDenied):
        pick_up_delivery(actor=rider.user, delivery_id=delivery.pk)


@pytest.mark.parametrize("username", ["dispatch-mapo", "callcenter"])
def test_pick_up_delivery_refuses_staff_who_do_not_dispatch_center(demo, username):
    """Another center's dispatcher and the call center cannot mark a pickup."""
    delivery = assigned_delivery(demo)

    with refused(PermissionDenied):
        pick_up_delivery(actor=demo.user(username), delivery_id=delivery.pk)


def test_pick_up_delivery_refuses_stale_version(demo):
    """Picking up with a version one behind raises StaleVersion naming the dispatcher who assigned it."""
    delivery = assigned_delivery(demo)

    with refused(StaleVersion) as info:
        pick_up_delivery(actor=delivery.rider.user, delivery_id=delivery.pk, expected_version=1)

    assert (info.value.entity.pk, info.value.entity.version) == (delivery.pk, 2)
    assert info.value.changed_by["by"] == "Dispatch Gangnam"


# ---------------------------------------------------------------------------------------------
# deliver_delivery
# ---------------------------------------------------------------------------------------------


def test_deliver_delivery_completes_delivery_and_order(demo):
    """Delivering sets delivered_at, marks the order delivered and frees the rider, each one version up."""
    delivery = picked_up_delivery(demo)
    rider = current_rider(delivery.rider_id)

    action = verify_action(lambda: deliver_delivery(actor=rider.user, delivery_id=delivery.pk, expected_version=3))

    after = current_delivery(delivery.pk)
    assert (after.status, after.rider, after.version) == (Delivery.Status.DELIVERED, rider, 4)
    assert after.delivered_at >= after.picked_up_at
    order = current_order(delivery.order_id)
    assert (order.status, order.version) == (Order.Status.DELIVERED, 2)
    rider_after = current_rider(rider.pk)
    assert (rider_after.load, rider_after.version, rider_after.status) == (0, rider.version + 1, "available")
    assert action.result.pk == delivery.pk


def test_deliver_delivery_emits_delivery_order_and_rider_events(demo):
    """Delivering emits delivery.delivered, order.updated and the rider's rider.status."""
    delivery = picked_up_delivery(demo)

    action = verify_action(lambda: deliver_delivery(actor=delivery.rider.user, delivery_id=delivery.pk))

    assert action.streams == {
        "deliveries:gangnam": ["delivery.delivered"],
        "orders:gangnam": ["order.updated"],
        "riders:gangnam": ["rider.status"],
    }


def test_deliver_delivery_records_delivery_in_timeline(demo):
    """Delivering records 'delivered' picked_up → delivered by the rider."""
    delivery = picked_up_delivery(demo)
    rider = current_rider(delivery.rider_id)

    action = verify_action(lambda: deliver_delivery(actor=rider.user, delivery_id=delivery.pk))

    (entry,) = action.timeline
    assert timeline_row(entry) == (rider.user, rider.name, "rider", "delivered", "picked_up", "delivered")


def test_deliver_delivery_by_hq(demo):
    """HQ may mark any center's delivery delivered; the source is 'dispatcher'."""
    delivery = picked_up_delivery(demo, center="songpa")

    action = verify_action(lambda: deliver_delivery(actor=demo.user("hq"), delivery_id=delivery.pk))

    assert current_delivery(delivery.pk).status == Delivery.Status.DELIVERED
    assert action.timeline[0].source == "dispatcher"


@pytest.mark.parametrize("factory", [waiting_delivery, assigned_delivery, delivered_delivery, cancelled_delivery])
def test_deliver_delivery_refuses_delivery_not_picked_up(demo, factory):
    """Delivering a waiting, assigned, delivered or cancelled delivery raises InvalidTransition."""
    delivery = factory(demo)

    with refused(InvalidTransition):
        deliver_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk)


def test_deliver_delivery_refuses_another_riders_delivery(demo):
    """A rider cannot deliver someone else's delivery (PermissionDenied)."""
    delivery = picked_up_delivery(demo, rider=1)
    other = on_duty_rider(demo, number=2)

    with refused(PermissionDenied):
        deliver_delivery(actor=other.user, delivery_id=delivery.pk)


@pytest.mark.parametrize("username", ["dispatch-mapo", "callcenter"])
def test_deliver_delivery_refuses_staff_who_do_not_dispatch_center(demo, username):
    """Another center's dispatcher and the call center cannot mark a delivery delivered."""
    delivery = picked_up_delivery(demo)

    with refused(PermissionDenied):
        deliver_delivery(actor=demo.user(username), delivery_id=delivery.pk)


def test_deliver_delivery_refuses_stale_version(demo):
    """Delivering with a version one behind raises StaleVersion naming the rider who picked it up."""
    delivery = picked_up_delivery(demo)

    with refused(StaleVersion) as info:
        deliver_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, expected_version=2)

    assert (info.value.entity.pk, info.value.entity.version) == (delivery.pk, 3)
    assert (info.value.changed_by["by"], info.value.changed_by["source"]) == (delivery.rider.name, "rider")


@pytest.mark.parametrize(
    "command",
    [
        lambda pk: assign_delivery(actor=None, delivery_id=pk, rider_id=1),
        lambda pk: unassign_delivery(actor=None, delivery_id=pk),
        lambda pk: pick_up_delivery(actor=None, delivery_id=pk),
        lambda pk: deliver_delivery(actor=None, delivery_id=pk),
        lambda pk: cancel_order(actor=None, order_id=pk, reason="x"),
    ],
    ids=["assign", "unassign", "pick_up", "deliver", "cancel"],
)
def test_delivery_commands_refuse_unknown_id(demo, command):
    """A command on an id that does not exist raises ObjectDoesNotExist and changes nothing."""
    with refused(ObjectDoesNotExist):
        command(10**9)


# ---------------------------------------------------------------------------------------------
# Rider load bookkeeping
# ---------------------------------------------------------------------------------------------


def test_rider_load_follows_assign_reassign_deliver_and_cancel(demo):
    """A rider's load always equals their assigned and picked-up deliveries, through every command."""
    dispatcher = demo.user("dispatch-gangnam")
    first, second = on_duty_rider(demo, number=1), on_duty_rider(demo, number=2)
    a, b = waiting_delivery(demo), waiting_delivery(demo)

    def loads() -> tuple[int, int]:
        riders = (current_rider(first.pk), current_rider(second.pk))
        assert [r.load for r in riders] == [active_load(r) for r in riders]
        return riders[0].load, riders[1].load

    verify_action(lambda: assign_delivery(actor=dispatcher, delivery_id=a.pk, rider_id=first.pk))
    assert loads() == (1, 0)
    verify_action(lambda: assign_delivery(actor=dispatcher, delivery_id=b.pk, rider_id=first.pk))
    assert loads() == (2, 0)
    verify_action(lambda: assign_delivery(actor=dispatcher, delivery_id=a.pk, rider_id=second.pk))
    assert loads() == (1, 1)
    verify_action(lambda: pick_up_delivery(actor=second.user, delivery_id=a.pk))
    assert loads() == (1, 1)
    verify_action(lambda: deliver_delivery(actor=second.user, delivery_id=a.pk))
    assert loads() == (1, 0)
    verify_action(lambda: cancel_order(actor=demo.user("callcenter"), order_id=b.order_id, reason="Closed"))
    assert loads() == (0, 0)
    assert (current_rider(first.pk).status, current_rider(second.pk).status) == ("available", "available")


def test_rider_load_drops_when_delivery_is_unassigned_or_reassigned_back(demo):
    """Unassigning and reassigning back and forth never leaves load behind."""
    dispatcher = demo.user("dispatch-gangnam")
    first, second = on_duty_rider(demo, number=1), on_duty_rider(demo, number=2)
    delivery = waiting_delivery(demo)

    for rider in (first, second, first):
        verify_action(lambda rider=rider: assign_delivery(actor=dispatcher, delivery_id=delivery.pk, rider_id=rider.pk))
    assert (current_rider(first.pk).load, current_rider(second.pk).load) == (1, 0)
    verify_action(lambda: unassign_delivery(actor=dispatcher, delivery_id=delivery.pk))
    assert (current_rider(first.pk).load, current_rider(second.pk).load) == (0, 0)
    assert current_delivery(delivery.pk).version == 5

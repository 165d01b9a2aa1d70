"""Services authorize every actor themselves: an API token is refused outside its commands and centers.

The services are called directly here, without the HTTP API, so these refusals cannot come from it.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from core.actors import TokenActor
from core.services import save_center
from deliveries import services
from deliveries.models import Delivery, TimelineEntry
from deliveries.services import save_shop
from deliveries.tests.test_services import (
    ORDER_INPUT,
    assigned_delivery,
    current_delivery,
    on_duty_rider,
    picked_up_delivery,
    refused,
    waiting_delivery,
)
from riders.services import set_rider_duty, update_rider_profile


def token(*commands: str, streams: tuple[str, ...] = ("orders:gangnam", "deliveries:gangnam")) -> TokenActor:
    return TokenActor(token_id=1, name="shop-pos", commands=frozenset(commands), streams=streams)


def last_entry(delivery_id: int) -> TimelineEntry:
    return TimelineEntry.objects.filter(delivery_id=delivery_id).latest("pk")


def test_token_without_the_create_command_is_refused_by_create_order(demo):
    """A token lacking "orders.create" cannot create an order, even with the center in its streams."""
    with refused(PermissionDenied):
        services.create_order(actor=token("orders.cancel"), shop_id=demo.shop().pk, **ORDER_INPUT)


def test_token_for_another_center_is_refused_by_create_order(demo):
    """A token scoped to orders:mapo cannot create an order for a Gangnam shop."""
    with refused(PermissionDenied):
        services.create_order(
            actor=token("orders.create", streams=("orders:mapo",)), shop_id=demo.shop().pk, **ORDER_INPUT
        )


def test_token_scoped_to_deliveries_only_is_refused_by_create_order(demo):
    """The order commands need the orders stream of the center, not the deliveries stream."""
    with refused(PermissionDenied):
        services.create_order(
            actor=token("orders.create", streams=("deliveries:gangnam",)), shop_id=demo.shop().pk, **ORDER_INPUT
        )


def test_token_in_scope_creates_an_order_shown_as_the_token(demo):
    """A token with "orders.create" on orders:* creates the order; the timeline names it, source api."""
    order = services.create_order(
        actor=token("orders.create", streams=("orders:*",)), shop_id=demo.shop().pk, **ORDER_INPUT
    )
    entry = last_entry(order.delivery.pk)
    assert (order.created_by, entry.actor, entry.actor_label, entry.source) == (None, None, "API token shop-pos", "api")


def test_token_cancel_is_refused_outside_its_scope_and_runs_inside(demo):
    """cancel_order refuses a token without "orders.cancel" or without the center, and accepts one with both."""
    delivery = waiting_delivery(demo)
    for outsider in (token("orders.create"), token("orders.cancel", streams=("orders:songpa",))):
        with refused(PermissionDenied):
            services.cancel_order(actor=outsider, order_id=delivery.order_id, reason="Shop closed")
    services.cancel_order(actor=token("orders.cancel"), order_id=delivery.order_id, reason="Shop closed")
    assert current_delivery(delivery.pk).status == Delivery.Status.CANCELLED


def run_delivery_command(name: str, actor, demo) -> Delivery:
    """Bring a delivery to the state `name` needs and run that command as `actor`."""
    if name == "deliveries.assign":
        delivery = waiting_delivery(demo)
        return services.assign_delivery(actor=actor, delivery_id=delivery.pk, rider_id=on_duty_rider(demo).pk)
    if name == "deliveries.unassign":
        return services.unassign_delivery(actor=actor, delivery_id=assigned_delivery(demo).pk)
    if name == "deliveries.pickup":
        return services.pick_up_delivery(actor=actor, delivery_id=assigned_delivery(demo).pk)
    return services.deliver_delivery(actor=actor, delivery_id=picked_up_delivery(demo).pk)


DELIVERY_COMMANDS = ["deliveries.assign", "deliveries.unassign", "deliveries.pickup", "deliveries.deliver"]


@pytest.mark.parametrize("command", DELIVERY_COMMANDS)
def test_token_without_the_command_is_refused_by_the_delivery_service(demo, command):
    """A token holding every delivery command but this one is refused by the service for it."""
    others = [c for c in DELIVERY_COMMANDS if c != command]
    with pytest.raises(PermissionDenied, match="token"):
        run_delivery_command(command, token(*others), demo)


@pytest.mark.parametrize("command", DELIVERY_COMMANDS)
def test_token_for_another_center_is_refused_by_the_delivery_service(demo, command):
    """A token with the command but only deliveries:mapo is refused on a Gangnam delivery."""
    with pytest.raises(PermissionDenied, match="token"):
        run_delivery_command(command, token(command, streams=("deliveries:mapo", "orders:gangnam")), demo)


@pytest.mark.parametrize("command", DELIVERY_COMMANDS)
def test_token_in_scope_runs_the_delivery_command_as_itself(demo, command):
    """A token with the command on deliveries:gangnam runs it; the timeline shows the token, source api."""
    delivery = run_delivery_command(command, token(command, streams=("deliveries:*",)), demo)
    entry = last_entry(delivery.pk)
    assert (entry.actor, entry.actor_label, entry.source) == (None, "API token shop-pos", "api")


def test_refused_delivery_command_changes_nothing(demo):
    """A token refused by assign_delivery leaves deliveries, riders, timeline and events untouched."""
    delivery, rider = waiting_delivery(demo), on_duty_rider(demo)
    with refused(PermissionDenied):
        services.assign_delivery(actor=token("deliveries.unassign"), delivery_id=delivery.pk, rider_id=rider.pk)


def test_token_duty_change_needs_the_duty_command_on_the_riders_stream(demo):
    """set_rider_duty refuses a token without "riders.duty" on riders:<center> and accepts one with it."""
    rider = demo.rider()
    for outsider in (token("deliveries.assign", streams=("riders:*",)), token("riders.duty", streams=("riders:mapo",))):
        with refused(PermissionDenied):
            set_rider_duty(actor=outsider, rider_id=rider.pk, on_duty=not rider.on_duty)
    updated = set_rider_duty(
        actor=token("riders.duty", streams=("riders:gangnam",)), rider_id=rider.pk, on_duty=not rider.on_duty
    )
    assert (updated.on_duty, updated.changed_by) == (not rider.on_duty, "API token shop-pos")


EVERYTHING = token(
    "riders.manage", "shops.manage", "centers.manage", streams=("*",)
)  # a token claiming every management command, on every stream


def test_no_token_may_manage_shops_or_centers(demo):
    """Shops and centers are HQ users' business: save_shop and save_center refuse any token."""
    shop, center = demo.shop(), demo.center()
    with refused(PermissionDenied):
        save_shop(
            actor=EVERYTHING,
            shop_id=shop.pk,
            center_id=shop.center_id,
            name="Renamed",
            address=shop.address,
            lat=shop.lat,
            lng=shop.lng,
        )
    with refused(PermissionDenied):
        save_center(actor=EVERYTHING, center_id=center.pk, code=center.code, name="Renamed", lat=1.0, lng=1.0)


def test_token_manages_riders_only_of_the_centers_it_covers(demo):
    """update_rider_profile refuses a token scoped to riders:mapo on a Gangnam rider, accepts riders:gangnam."""
    rider = demo.rider()
    profile = {"rider_id": rider.pk, "name": "Renamed", "phone": rider.phone, "vehicle": rider.vehicle}
    with refused(PermissionDenied):
        update_rider_profile(actor=token("riders.manage", streams=("riders:mapo",)), **profile)
    updated = update_rider_profile(actor=token("riders.manage", streams=("riders:gangnam",)), **profile)
    assert (updated.name, updated.changed_by) == ("Renamed", "API token shop-pos")

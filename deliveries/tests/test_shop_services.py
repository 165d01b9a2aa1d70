"""Specification of `save_shop` (deliveries/services.py): shops edited in the admin, told to open boards."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from core.exceptions import InvalidTransition, StaleVersion
from deliveries.models import Delivery, Shop
from deliveries.selectors import in_window, start_of_today
from deliveries.services import SHOP_FIELDS, save_shop
from deliveries.tests.test_services import make_order, refused, state_fingerprint, verify_action


def fields_of(shop: Shop, **changes) -> dict:
    return {**{field: getattr(shop, field) for field in SHOP_FIELDS}, **changes}


def todays_deliveries_of(shop: Shop) -> set[int]:
    return set(Delivery.objects.filter(in_window(start_of_today()), shop=shop).values_list("pk", flat=True))


def test_save_shop_rename_updates_todays_deliveries_and_orders(demo):
    """A renamed shop bumps each of its deliveries of today (delivery.updated) and their orders (order.updated)."""
    shop = demo.shop("gangnam")
    orders = [make_order(demo), make_order(demo)]

    action = verify_action(
        lambda: save_shop(actor=demo.user("hq"), shop_id=shop.pk, **fields_of(shop, name="Renamed Shop"))
    )

    updated = {e.data["id"] for e in action.events if e.name == "delivery.updated"}
    assert updated == todays_deliveries_of(shop) >= {order.delivery.pk for order in orders}
    assert {e.stream for e in action.events} == {"deliveries:gangnam", "orders:gangnam"}
    assert {e.data["shop_name"] for e in action.events} == {"Renamed Shop"}
    assert Shop.objects.get(pk=shop.pk).version == shop.version + 1


def test_save_shop_moved_place_updates_deliveries_only(demo):
    """A shop moved on the map bumps its deliveries (rows show its place) but not its orders."""
    shop = demo.shop("gangnam")
    make_order(demo)

    action = verify_action(lambda: save_shop(actor=None, shop_id=shop.pk, **fields_of(shop, lat=shop.lat + 0.001)))

    assert set(action.streams) == {"deliveries:gangnam"}
    assert set(action.streams["deliveries:gangnam"]) == {"delivery.updated"}


def test_save_shop_change_no_row_shows_emits_nothing(demo):
    """A change of what no delivery shows (preparation time) bumps the shop's version only."""
    shop = demo.shop("gangnam")
    make_order(demo)
    before = state_fingerprint()

    saved = save_shop(actor=None, shop_id=shop.pk, **fields_of(shop, prep_minutes=shop.prep_minutes + 5))

    assert state_fingerprint() == before
    assert (saved.version, Shop.objects.get(pk=shop.pk).prep_minutes) == (shop.version + 1, shop.prep_minutes + 5)


def test_save_shop_creates_shop(demo):
    """A new shop starts at version 1 in its center."""
    shop = save_shop(
        actor=demo.user("hq"),
        center_id=demo.center("mapo").pk,
        name="New Shop",
        address="Mapo-daero 1",
        lat=37.55,
        lng=126.95,
    )
    assert (shop.center.code, shop.version, shop.is_active) == ("mapo", 1, True)


def test_save_shop_refuses_move_to_another_center_with_open_deliveries(demo):
    """A shop with open deliveries stays in its center: they would be left behind."""
    shop = demo.shop("gangnam")
    make_order(demo)
    with refused(InvalidTransition):
        save_shop(actor=None, shop_id=shop.pk, **fields_of(shop, center_id=demo.center("mapo").pk))
    assert Shop.objects.get(pk=shop.pk).center.code == "gangnam"


@pytest.mark.parametrize("username", ["dispatch-gangnam", "callcenter"])
def test_save_shop_refuses_anyone_but_hq(demo, username):
    """Only HQ manages shops."""
    shop = demo.shop("gangnam")
    with refused(PermissionDenied):
        save_shop(actor=demo.user(username), shop_id=shop.pk, **fields_of(shop, name="Renamed Shop"))
    assert Shop.objects.get(pk=shop.pk).name == shop.name


def test_save_shop_refuses_stale_version(demo):
    """An edit based on an older version of the shop is refused."""
    shop = demo.shop("gangnam")
    save_shop(actor=None, shop_id=shop.pk, **fields_of(shop, phone="02-555-0000"))
    with refused(StaleVersion):
        save_shop(actor=None, shop_id=shop.pk, **fields_of(shop, name="Renamed Shop"), expected_version=shop.version)


def test_save_shop_refuses_duplicate_name_in_center(demo):
    """Two shops of one center cannot share a name."""
    shop, other = demo.shop("gangnam", 0), demo.shop("gangnam", 1)
    with refused(ValidationError):
        save_shop(actor=None, shop_id=shop.pk, **fields_of(shop, name=other.name))

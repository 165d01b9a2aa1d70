"""The call center's pages in headless Chromium against a live ASGI server: intake, today's orders, the order page."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from core.models import ApiToken
from deliveries import services
from deliveries.models import Order
from riders import positions

from . import test_board as board
from .test_board import live, row, take_order

browse = board.browse  # the board tests' fixture: a logged-in page on the live server

pytestmark = pytest.mark.browser

ORDERS = "/orders/"
PHONE = "010-4242-1717"


def phone_field(page):
    return page.locator("#id_customer_phone")


def type_order_with_keyboard(page, demo, *, phone: str = PHONE, shop_index: int = 0) -> None:
    """Fill the intake form from the phone field on with Tab and typing only (no mouse), ready to submit."""
    center = demo.center("gangnam")
    expect(phone_field(page)).to_be_focused()
    page.keyboard.type(phone)
    page.keyboard.press("Tab")
    expect(page.locator("#id_customer_name")).to_be_focused()
    page.keyboard.type("Yoon Doyun")
    page.keyboard.press("Tab")
    expect(page.locator("#id_shop")).to_be_focused()
    page.keyboard.type(demo.shop("gangnam", shop_index).name[:10])
    page.keyboard.press("Tab")
    page.keyboard.type("Gangnam-daero 396, Seoul")
    page.keyboard.press("Tab")
    page.keyboard.type(f"{center.lat + 0.004:.5f}")
    page.keyboard.press("Tab")
    page.keyboard.type(f"{center.lng + 0.003:.5f}")
    page.keyboard.press("Tab")
    expect(page.locator("[name=item_name]").first).to_be_focused()
    page.keyboard.type("Spicy chicken")
    page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("2")


def test_agent_takes_an_order_with_the_keyboard_only_and_it_appears_live_on_the_board(browse, demo_tx):
    """Phone first, Tab through, Enter: the order number and link show, the form is reset with focus on
    the phone, and the order appears on an open dispatcher board and in today's orders without reload."""
    dispatcher = browse("dispatch-gangnam")
    live(dispatcher)
    page = browse("callcenter", ORDERS)
    live(page)
    expect(page.locator(".orders-table .empty")).to_contain_text("No orders yet today")

    type_order_with_keyboard(page, demo_tx)
    page.keyboard.press("Enter")

    expect(page.locator("#taken")).to_contain_text("taken for Yoon Doyun")
    order = Order.objects.get(customer_phone=PHONE)
    expect(page.locator("#taken a")).to_have_attribute("href", f"/orders/{order.pk}/")
    expect(phone_field(page)).to_be_focused()
    expect(phone_field(page)).to_have_value("")
    expect(page.locator("[name=item_name]")).to_have_count(1)
    expect(page.locator(f"#order-{order.pk}")).to_contain_text("Yoon Doyun")
    assert order.items == [{"name": "Spicy chicken", "qty": 2}]

    expect(row(dispatcher, order.delivery)).to_be_visible()
    board.shot(page, "call-center-intake")


def test_known_phone_offers_the_previous_address_and_fills_it_in(browse, demo_tx):
    """Typing a known caller's number offers their earlier name and address; Enter on it fills the form and the pin."""
    take_order(demo_tx, phone=PHONE, name="Jang Hajun", address="Dosan-daero 1, Seoul", lat=37.52, lng=127.03)
    page = browse("callcenter", ORDERS)
    live(page)

    page.keyboard.type(PHONE)
    suggestion = page.locator(".use-customer")
    expect(suggestion).to_contain_text("Dosan-daero 1, Seoul")
    page.keyboard.press("Tab")
    expect(suggestion).to_be_focused()
    page.keyboard.press("Enter")

    expect(page.locator("#id_customer_name")).to_have_value("Jang Hajun")
    expect(page.locator("#id_address")).to_have_value("Dosan-daero 1, Seoul")
    expect(page.locator("#id_lat")).to_have_value("37.52")
    expect(page.locator("#id_shop")).to_be_focused()
    expect(page.locator("#intake-map .leaflet-marker-icon")).to_have_count(1)


def test_duplicate_within_ten_minutes_warns_and_can_be_confirmed(browse, demo_tx):
    """The same phone and shop again: a warning names the earlier order; ticking the box takes the second one."""
    earlier = take_order(demo_tx, phone=PHONE)
    page = browse("callcenter", ORDERS)
    live(page)
    type_order_with_keyboard(page, demo_tx)
    page.keyboard.press("Enter")

    expect(page.locator("#err-duplicate")).to_contain_text(f"#{earlier.order_id} at")
    confirm = page.locator("#id_confirm_duplicate")
    expect(confirm).to_be_focused()
    expect(page.locator("#id_customer_name")).to_have_value("Yoon Doyun")  # nothing typed is lost
    assert Order.objects.filter(customer_phone=PHONE).count() == 1

    page.keyboard.press("Space")
    page.get_by_role("button", name=re.compile("Take order")).press("Enter")

    expect(page.locator("#taken")).to_contain_text("taken for Yoon Doyun")
    assert Order.objects.filter(customer_phone=PHONE).count() == 2


def test_validation_errors_keep_what_was_typed(browse, demo_tx):
    """A wrong phone and an item without a name: messages beside them, focus on the first, all else kept."""
    page = browse("callcenter", ORDERS)
    live(page)
    type_order_with_keyboard(page, demo_tx, phone="12-ab")
    page.locator("[name=item_name]").fill("")
    page.get_by_role("button", name=re.compile("Take order")).click()

    expect(page.locator("#err-phone")).to_contain_text("Enter a phone number like")
    expect(page.locator("#err-items")).to_contain_text('Each item needs a "name"')
    expect(phone_field(page)).to_be_focused()
    expect(phone_field(page)).to_have_value("12-ab")
    expect(page.locator("#id_customer_name")).to_have_value("Yoon Doyun")
    expect(page.locator("#id_address")).to_have_value("Gangnam-daero 396, Seoul")
    expect(page.locator("#id_shop option:checked")).to_have_text(demo_tx.shop("gangnam").name)
    assert not Order.objects.exists()


def test_double_submit_creates_one_order(browse, demo_tx):
    """The same rendered form sent twice at once (one key) takes one order."""
    page = browse("callcenter", ORDERS)
    live(page)
    type_order_with_keyboard(page, demo_tx)
    statuses = page.evaluate(
        """async () => {
          const form = document.getElementById("intake");
          const send = () => fetch(form.action, {method: "POST", body: new FormData(form)});
          const answers = await Promise.all([send(), send()]);
          return answers.map((r) => r.status);
        }"""
    )
    assert statuses == [201, 201]
    assert Order.objects.filter(customer_phone=PHONE).count() == 1


def _cancel_with_token(live_server_url: str, order_id: int, reason: str) -> int:
    raw, digest = ApiToken.generate()
    ApiToken.objects.create(
        name="Customer app", digest=digest, hint=raw[:12], commands=["orders.cancel"], streams=["orders:gangnam"]
    )
    request = urllib.request.Request(
        f"{live_server_url}/api/v1/orders/{order_id}/cancel",
        data=json.dumps({"reason": reason}).encode(),
        headers={"Authorization": f"Bearer {raw}", "Content-Type": "application/json", "Idempotency-Key": "c-1"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def test_cancel_through_the_api_shows_the_banner_on_an_open_order_page_and_reaches_the_board(
    browse, demo_tx, live_server_url
):
    """A customer-app cancel (cancel-scoped token) turns the open order page into a cancelled one with a
    banner naming the reason and the token, at once, and the dispatcher's row shows it cancelled."""
    delivery = take_order(demo_tx)
    dispatcher = browse("dispatch-gangnam")
    live(dispatcher)
    page = browse("callcenter", f"/orders/{delivery.order_id}/")
    live(page)
    expect(page.locator("#open-cancel")).to_be_visible()

    assert _cancel_with_token(live_server_url, delivery.order_id, "Customer found it too slow") == 200

    banner = page.locator("#cancel-banner")
    expect(banner).to_contain_text("Customer found it too slow")
    expect(banner).to_contain_text("API token Customer app")
    expect(banner).to_have_attribute("role", "alert")
    expect(page.locator("#order-status")).to_have_text("Cancelled")
    expect(page.locator("#open-cancel")).to_have_count(0)
    expect(row(dispatcher, delivery)).to_have_attribute("data-status", "cancelled")
    board.shot(page, "call-center-order-cancelled")


def test_agent_cancel_after_pick_up_warns_that_the_rider_must_be_called(browse, demo_tx):
    """After pick-up the cancel dialog says the rider is on the way and must be called; the reason is required."""
    delivery = take_order(demo_tx)
    rider = board.rider_on_duty(demo_tx, 1)
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)
    services.pick_up_delivery(actor=None, delivery_id=delivery.pk)
    page = browse("callcenter", f"/orders/{delivery.order_id}/")
    live(page)

    page.locator("#open-cancel").click()
    dialog = page.locator("#cancel-dialog")
    expect(dialog.locator("#cancel-picked-up")).to_be_visible()
    expect(dialog.locator("#cancel-picked-up")).to_contain_text(rider.name)
    expect(page.locator("#cancel-reason")).to_be_focused()
    page.locator("#confirm-cancel").click()  # no reason typed: refused beside the field
    expect(page.locator("#cancel-error")).to_have_text("Say why the order is cancelled.")

    page.locator("#cancel-reason").fill("Wrong address")
    page.locator("#confirm-cancel").click()

    expect(page.locator("#cancel-banner")).to_contain_text("Wrong address")
    expect(page.locator("#cancel-banner")).to_contain_text("Call Center")
    expect(dialog).not_to_be_visible()


def test_another_centers_staff_and_riders_cannot_read_the_order(browse, demo_tx):
    """A mapo dispatcher and a rider get the same 404 as for a missing order."""
    delivery = take_order(demo_tx)
    for username in ("dispatch-mapo", "rider-gangnam-01"):
        page = browse(username, f"/orders/{delivery.order_id}/")
        assert page.response.status == 404
        assert "Kim Minjun" not in page.content() and delivery.order.customer_phone not in page.content()


def test_todays_orders_update_live_and_search_narrows_them(browse, demo_tx):
    """An order taken elsewhere and its assignment reach the open list without reload; search finds by phone."""
    page = browse("callcenter", ORDERS)
    live(page)
    delivery = take_order(demo_tx, phone="010-9090-1212", name="Lim Eunwoo")
    listed = page.locator(f"#order-{delivery.order_id}")
    expect(listed).to_contain_text("Waiting")

    rider = board.rider_on_duty(demo_tx, 2)
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)
    expect(listed).to_contain_text("Assigned")
    expect(listed).to_contain_text(rider.name)

    other = take_order(demo_tx, phone="010-3434-5656", name="Kang Jimin")
    expect(page.locator(f"#order-{other.order_id}")).to_be_visible()
    page.locator("h2#list-title").click()  # focus out of every field: "/" is then the search shortcut
    page.keyboard.press("/")
    expect(page.locator("#order-search")).to_be_focused()
    page.keyboard.type("01090901212")
    expect(page.locator(f"#order-{other.order_id}")).to_have_count(0)
    expect(listed).to_be_visible()


def test_order_page_follows_the_order_to_pick_up_and_shows_the_rider_and_eta(browse, demo_tx):
    """Assigned then picked up while the page is open: status and rider change live, then the map shows
    the rider and the page gives the straight-line ETA."""
    center = demo_tx.center("gangnam")
    delivery = take_order(demo_tx, lat=center.lat, lng=center.lng)
    page = browse("callcenter", f"/orders/{delivery.order_id}/")
    live(page)
    expect(page.locator("#order-rider")).to_have_text("Not assigned yet")

    rider = board.rider_on_duty(demo_tx, 3)
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)
    expect(page.locator("#order-status")).to_have_text("Assigned")
    expect(page.locator("#order-rider")).to_contain_text(rider.name)
    positions.record_fix(
        rider_id=rider.pk, center_code="gangnam", lat=center.lat + 2 / 111.195, lng=center.lng, ts=timezone.now()
    )
    services.pick_up_delivery(actor=None, delivery_id=delivery.pk)

    expect(page.locator("#order-status")).to_have_text("Picked up")
    expect(page.locator("#eta")).to_contain_text(f"{rider.name} is 2.0 km away in a straight line: about 6 min.")
    expect(page.locator("#order-map .leaflet-interactive")).to_have_count(2)  # the rider and the drop-off
    expect(page.locator("#timeline li")).to_have_count(3)

"""The rider page on a phone-sized headless Chromium against a live ASGI server, with a dispatcher board beside it.

Geolocation is emulated (`context.set_geolocation`), the network is cut with `context.set_offline`
plus the socket proxy (Chromium's offline emulation leaves WebSockets alone).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from deliveries import services
from deliveries.models import Delivery, TimelineEntry
from riders.models import Rider
from riders.services import set_rider_duty

from .conftest import WAIT, SocketProxy
from .test_board import OFFSITE, live, log_in, row, shot, take_order, wait_until_disconnected

pytestmark = pytest.mark.browser

SLOW = 25_000  # ms: waits that include a reconnect back-off
PHONE = {"width": 360, "height": 740}
SEOUL = {"latitude": 37.4979, "longitude": 127.0276, "accuracy": 8}

expect.set_options(timeout=WAIT)


@pytest.fixture
def phone(browser, live_server_url, demo_tx):
    """Return `phone(user, path="/rider/", proxy=None)` (a rider's phone) and `phone.desk(user, path)` (a desktop)."""
    contexts, pages = [], []

    def open_(username: str, path: str, *, proxy: SocketProxy | None = None, **options):
        context = browser.new_context(base_url=live_server_url, **options)
        context.set_default_timeout(WAIT)
        context.route(OFFSITE, lambda route: route.abort())
        contexts.append(context)
        log_in(context, username)
        page = context.new_page()
        page.js_errors = []
        page.on("pageerror", lambda error: page.js_errors.append(str(error)))
        pages.append(page)
        if proxy is not None:
            page.route_web_socket("**/ws/v1/", proxy.handle)
        page.response = page.goto(path)
        return page

    def phone_(username: str, path: str = "/rider/", *, proxy: SocketProxy | None = None, located: bool = True):
        return open_(
            username,
            path,
            proxy=proxy,
            viewport=PHONE,
            is_mobile=True,
            has_touch=True,
            geolocation=SEOUL,
            permissions=["geolocation"] if located else [],
            service_workers="allow",
        )

    phone_.desk = lambda username, path: open_(username, path, viewport={"width": 1280, "height": 720})
    yield phone_
    errors = [error for page in pages for error in page.js_errors]
    for context in contexts:
        context.close()
    wait_until_disconnected()
    assert not errors, f"JavaScript errors on the page: {errors}"


# Headless pages are always visible: emulate the page going to the background and back.
HIDE = """() => {
  Object.defineProperty(document, "hidden", { value: true, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
SHOW = """() => {
  Object.defineProperty(document, "hidden", { value: false, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def rider_live(page) -> None:
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")


def card(page, delivery: Delivery):
    return page.locator(f"#assignment-{delivery.pk}")


def tap(page, delivery: Delivery, label: str) -> None:
    card(page, delivery).get_by_role("button", name=label).click()


def assigned(demo, rider: Rider, **fields) -> Delivery:
    return services.assign_delivery(
        actor=demo.user("dispatch-gangnam"), delivery_id=take_order(demo, **fields).pk, rider_id=rider.pk
    )


def on_duty(demo, number: int = 1) -> Rider:
    return set_rider_duty(actor=None, rider_id=demo.rider("gangnam", number).pk, on_duty=True)


def actions_of(delivery: Delivery) -> list[str]:
    return list(TimelineEntry.objects.filter(delivery=delivery).order_by("at", "pk").values_list("action", flat=True))


def board_position(board, rider: Rider):
    return board.evaluate(f"() => {{ const r = __board.riders.get({rider.pk}); return r && [r.lat, r.lng]; }}")


def test_rider_goes_on_duty_gets_an_assignment_and_its_taps_reach_the_board(phone, demo_tx):
    """On duty, the board's riders panel and map show the rider; an assignment appears; both taps reach the board."""
    rider = demo_tx.rider("gangnam", 1)
    board = phone.desk("dispatch-gangnam", "/dispatch/gangnam/")
    live(board)
    page = phone(rider.user.username)
    rider_live(page)
    expect(page.locator("h1")).to_have_count(1)
    expect(page.locator("#no-active")).to_be_visible()
    expect(page.locator("#rider-chat #chat-panel")).to_be_visible()  # the center chat, open in the page

    page.get_by_role("button", name="Start shift").click()
    expect(page.locator("#duty-state")).to_have_text("On duty")
    expect(page.locator("#tracking")).to_have_attribute("data-state", "on")
    expect(board.locator(f"#riders li[data-rider='{rider.pk}']")).to_have_class(re.compile(r"\bavailable\b"))
    board.wait_for_function(f"() => __board.riders.get({rider.pk})?.lat === {SEOUL['latitude']}")
    page.evaluate(HIDE)  # the phone's screen goes to another app: no pretending to track
    expect(page.locator("#tracking")).to_have_attribute("data-state", "paused")
    expect(page.locator("#tracking")).to_contain_text("Tracking paused")
    page.evaluate(SHOW)
    page.context.set_geolocation({"latitude": 37.4990, "longitude": 127.0280, "accuracy": 6})
    expect(page.locator("#tracking")).to_have_attribute("data-state", "on")

    delivery = assigned(demo_tx, rider, address="Nonhyeon-ro 5, Seoul", note="Leave at the door")
    expect(card(page, delivery)).to_be_visible()
    expect(page.locator("#alerts")).to_contain_text(f"New delivery #{delivery.order_id}")
    expect(card(page, delivery)).to_contain_text("Nonhyeon-ro 5, Seoul")
    expect(card(page, delivery)).to_contain_text("Leave at the door")
    expect(card(page, delivery).get_by_role("link", name="Call 010-2000-3000")).to_have_attribute(
        "href", "tel:01020003000"
    )
    expect(card(page, delivery).get_by_role("link", name="Navigate to the customer (maps app)")).to_have_attribute(
        "href", "geo:0,0?q=Nonhyeon-ro%205%2C%20Seoul"
    )
    expect(row(board, delivery)).to_have_attribute("data-status", "assigned")
    shot(page, "rider-assignment")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling

    tap(page, delivery, "Picked up")
    expect(card(page, delivery)).to_contain_text("sending in a few seconds")
    expect(row(board, delivery)).to_have_attribute("data-status", "picked_up")
    tap(page, delivery, "Delivered")
    expect(row(board, delivery)).to_have_attribute("data-status", "delivered")
    expect(card(page, delivery)).to_have_count(0)
    expect(page.locator(f"#history-{delivery.pk}")).to_contain_text("Delivered")
    expect(page.locator("#count-delivered")).to_have_text("1")
    assert actions_of(delivery)[-2:] == ["picked_up", "delivered"]


def test_rider_offline_queue_survives_reload_and_is_applied_once_in_order(phone, demo_tx):
    """Offline, taps queue and fixes buffer, and the page reloads from the service worker; back online, every
    action is applied once and in order, a tap on an order cancelled meanwhile is explained, the fixes reach the map.
    """
    rider = on_duty(demo_tx)
    first, second, doomed = (assigned(demo_tx, rider) for _ in range(3))
    board = phone.desk("dispatch-gangnam", "/dispatch/gangnam/")
    live(board)
    proxy = SocketProxy()
    page = phone(rider.user.username, proxy=proxy)
    rider_live(page)
    page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    expect(page.locator("#tracking")).to_have_attribute("data-state", "on")

    page.context.set_offline(True)
    proxy.refusing = True
    proxy.drop(code=4002)
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "offline")
    expect(page.locator("#stale-note")).to_be_visible()
    tap(page, first, "Picked up")
    expect(card(page, first).get_by_role("button", name="Delivered")).to_be_visible()  # after the undo window
    tap(page, first, "Delivered")
    tap(page, second, "Picked up")
    tap(page, doomed, "Picked up")
    fixes = [(37.5000, 127.0300), (37.5010, 127.0310), (37.5020, 127.0320)]
    for lat, lng in fixes:
        page.wait_for_timeout(1100)  # the page keeps at most one fix a second
        page.context.set_geolocation({"latitude": lat, "longitude": lng, "accuracy": 5})
    page.wait_for_function("async () => (await __rider.store.count('fixes')) >= 3")
    expect(page.locator("#queue-state")).to_have_text("4 actions waiting to send")
    expect(page.locator("#conn-state")).to_have_text("Offline — 4 actions queued")
    services.cancel_order(actor=None, order_id=doomed.order_id, reason="Customer called")

    page.reload()  # no network: the service worker's copy, with the queue from IndexedDB
    expect(page.locator("#rider-app")).to_have_attribute("data-served", "cache")
    expect(page.locator("#stale-note")).to_be_visible()
    expect(card(page, second)).to_be_visible()
    expect(page.locator("#queue-state")).to_have_text("4 actions waiting to send")
    assert Delivery.objects.get(pk=first.pk).status == "assigned"

    page.context.set_offline(False)
    proxy.refusing = False
    expect(page.locator("#queue-state")).to_be_hidden(timeout=SLOW)
    expect(page.locator("#refusals")).to_contain_text(f"order #{doomed.order_id}")
    expect(page.locator("#refusals")).to_contain_text("cancelled")
    expect(card(page, doomed)).to_have_count(0)
    expect(card(page, first)).to_have_count(0)
    expect(card(page, second)).to_have_attribute("data-status", "picked_up")
    rider_live(page)
    expect(page.locator("#stale-note")).to_be_hidden()
    assert actions_of(first) == ["created", "assigned", "picked_up", "delivered"]
    assert actions_of(second) == ["created", "assigned", "picked_up"]
    assert actions_of(doomed) == ["created", "assigned", "cancelled"]
    stamps = [
        TimelineEntry.objects.get(delivery=d, action=a).at
        for d, a in ((first, "picked_up"), (first, "delivered"), (second, "picked_up"))
    ]
    assert stamps == sorted(stamps)
    board.wait_for_function(f"() => __board.riders.get({rider.pk})?.lat === {fixes[-1][0]}", timeout=SLOW)
    assert page.evaluate("() => __rider.store.count('fixes')") == 0


def test_rider_undo_stops_a_tap_and_rider_sees_only_own_pages(phone, demo_tx):
    """Undo keeps a tap from being sent (a later tap is the barrier); a reassignment is announced and leaves the
    list; other riders' deliveries and staff pages stay shut."""
    rider, other = on_duty(demo_tx, 1), on_duty(demo_tx, 2)
    undone, sent = assigned(demo_tx, rider), assigned(demo_tx, rider)
    foreign = assigned(demo_tx, other)
    page = phone(rider.user.username)
    rider_live(page)
    expect(card(page, foreign)).to_have_count(0)

    tap(page, undone, "Picked up")
    card(page, undone).get_by_role("button", name="Undo").click()
    expect(card(page, undone).get_by_role("button", name="Picked up")).to_be_visible()
    tap(page, sent, "Picked up")
    expect(card(page, sent).get_by_role("button", name="Delivered")).to_be_visible(timeout=SLOW)
    expect(page.locator("#queue-state")).to_be_hidden()
    # Sent in order: had the undone tap been sent, it would have gone first.
    assert Delivery.objects.get(pk=sent.pk).status == "picked_up"
    assert Delivery.objects.get(pk=undone.pk).status == "assigned"

    services.assign_delivery(actor=demo_tx.user("dispatch-gangnam"), delivery_id=undone.pk, rider_id=other.pk)
    expect(card(page, undone)).to_have_count(0)
    expect(page.locator("#alerts")).to_contain_text(f"Order #{undone.order_id} was given to another rider")

    page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    page.get_by_role("button", name="Log out").click()  # a shared phone: the next user gets no cached rider page
    page.wait_for_url("**/accounts/login/**")
    assert page.evaluate("() => caches.has('bros-rider-v1')") is False

    log_in(page.context, rider.user.username)
    api = page.context.request
    assert api.get(f"/api/v1/deliveries/{foreign.pk}").status == 404
    for path in ("/dispatch/gangnam/", "/dispatch/", "/orders/"):
        assert page.goto(path).status == 403


def test_rider_without_location_permission_sees_tracking_paused(phone, demo_tx):
    """On duty with location denied, the page says tracking is paused and why, instead of pretending."""
    rider = on_duty(demo_tx)
    page = phone(rider.user.username, located=False)
    expect(page.locator("#tracking")).to_have_attribute("data-state", "denied")
    expect(page.locator("#tracking")).to_contain_text("Tracking paused: location permission is denied")

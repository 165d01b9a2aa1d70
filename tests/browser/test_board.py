"""The dispatcher board in headless Chromium against a live ASGI server.

Data is committed by the real services in the test process (or the HTTP API through a logged-in
browser session) and reaches the pages through the outbox, Redis, the hub and the consumer.
"""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from playwright.sync_api import expect

from core.models import StaffProfile
from deliveries import services
from deliveries.models import Delivery, Order
from riders import positions
from riders.models import Rider
from riders.services import set_rider_duty

from .conftest import WAIT, SocketProxy

pytestmark = pytest.mark.browser

BOARD = "/dispatch/gangnam/"
SLOW = 25_000  # ms: waits that include a reconnect back-off
OFFSITE = re.compile(r"^https?://(?!127\.0\.0\.1[:/]|localhost[:/])")
MAX_DOM_ROWS = 100
ROW_H = 36

expect.set_options(timeout=WAIT)


# -- fixtures and helpers ------------------------------------------------------------------------------------


def log_in(context, username: str) -> str:
    """Log the browser context in through the login form (no page rendered); return its CSRF token."""
    context.request.get("/accounts/login/")
    token = next(c["value"] for c in context.cookies() if c["name"] == "csrftoken")
    response = context.request.post(
        "/accounts/login/",
        form={"username": username, "password": "demo", "csrfmiddlewaretoken": token},
        max_redirects=0,
    )
    assert response.status == 302, response.text()
    return next(c["value"] for c in context.cookies() if c["name"] == "csrftoken")


def wait_until_disconnected(timeout: float = 10.0) -> None:
    """Wait until the live server let go of every socket (the next test's streams start afresh)."""
    from realtime.presence import presence_snapshot

    deadline = time.monotonic() + timeout
    while presence_snapshot()["connections"] and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def browse(browser, live_server_url, demo_tx):
    """Return `browse(user, path=BOARD, proxy=None)`: a logged-in page at `path` (its response in `.response`)."""
    contexts, pages = [], []

    def session(username: str):
        context = browser.new_context(base_url=live_server_url, viewport={"width": 1280, "height": 720})
        context.set_default_timeout(WAIT)
        context.route(OFFSITE, lambda route: route.abort())  # map tiles and the like: the tests stay offline
        contexts.append(context)
        context.csrf = log_in(context, username)
        return context

    def browse_(username: str, path: str = BOARD, *, proxy: SocketProxy | None = None):
        page = session(username).new_page()
        page.js_errors = []
        page.on("pageerror", lambda error: page.js_errors.append(str(error)))
        page.on(
            "console",
            lambda m: m.type == "error" and m.text.startswith("realtime:") and page.js_errors.append(m.text),
        )
        pages.append(page)
        if proxy is not None:
            page.route_web_socket("**/ws/v1/", proxy.handle)
        page.response = page.goto(path)
        return page

    browse_.session = session
    yield browse_
    errors = [error for page in pages for error in page.js_errors]
    for context in contexts:
        context.close()
    wait_until_disconnected()
    assert not errors, f"JavaScript errors on the page: {errors}"


def live(page) -> None:
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")


def row(page, delivery: Delivery):
    return page.locator(f"#delivery-{delivery.pk}")


def take_order(demo, *, center: str = "gangnam", phone: str = "010-2000-3000", **fields) -> Delivery:
    """Take an order through the real service (committed at once); return its delivery."""
    order = services.create_order(
        actor=None,
        shop_id=demo.shop(center).pk,
        customer_name=fields.pop("name", "Kim Minjun"),
        customer_phone=phone,
        address=fields.pop("address", "Teheran-ro 1, Seoul"),
        items=[{"name": "Fried chicken", "qty": 1}],
        **fields,
    )
    return order.delivery


def phone_without(number: int) -> str:
    """A valid phone number whose digits cannot contain `number` (so a search for it never matches)."""
    digit = next(d for d in "123456789" if d not in str(number))
    return f"0{digit}{digit}-{digit * 4}-{digit * 4}"


def rider_on_duty(demo, number: int, *, km_from_shop: float | None = None) -> Rider:
    """Start a rider's shift; with `km_from_shop`, give it a fresh GPS fix that far north of the first shop."""
    rider = demo.rider("gangnam", number)
    set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    if km_from_shop is not None:
        shop = demo.shop()
        positions.record_fix(
            rider_id=rider.pk,
            center_code="gangnam",
            lat=shop.lat + km_from_shop / 111.0,
            lng=shop.lng,
            ts=timezone.now(),
        )
    return Rider.objects.get(pk=rider.pk)


def promise_passed(delivery: Delivery) -> None:
    """Move the order's promised time into the past (the service refuses a past promise)."""
    Order.objects.filter(pk=delivery.order_id).update(promised_at=timezone.now() - timedelta(minutes=1))


def another_dispatcher(demo):
    """A second dispatcher of gangnam, so a conflict names someone other than the page's user."""
    user = get_user_model().objects.create_user(
        "dispatch-gangnam-2", password="demo", first_name="Park", last_name="Jiwoo"
    )
    profile = StaffProfile.objects.create(user=user, role=StaffProfile.Role.DISPATCHER)
    profile.centers.set([demo.center("gangnam")])
    return user


def open_assign_dialog(page, delivery: Delivery):
    row(page, delivery).locator("[data-action=assign]").click()
    dialog = page.locator("#assign-dialog")
    expect(dialog).to_have_attribute("open", "")
    return dialog


def selected_rider(dialog) -> int:
    return int(dialog.locator(".candidates [role=option][aria-selected=true]").get_attribute("data-rider"))


def shot(page, name: str) -> None:
    """Save a screenshot for a human to look at when BOARD_SCREENSHOTS names a folder (never committed)."""
    folder = os.environ.get("BOARD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


# -- live rows -----------------------------------------------------------------------------------------------


def test_board_shows_delivery_created_through_api_live(browse, demo_tx):
    """An order taken through POST /api/v1/orders shows up on an open board at once, with its counts."""
    existing = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    expect(row(page, existing)).to_be_visible()
    expect(page.locator("[data-count=waiting]")).to_have_text("1")
    page.evaluate("() => { window.__notReloaded = true; }")
    callcenter = browse.session("callcenter")

    response = callcenter.request.post(
        "/api/v1/orders",
        data={
            "shop": demo_tx.shop().pk,
            "customer_name": "Lee Jimin",
            "customer_phone": "010-3333-4444",
            "address": "Yeoksam-ro 7, Seoul",
            "items": [{"name": "Bibimbap", "qty": 2}],
        },
        headers={"X-CSRFToken": callcenter.csrf},
    )

    assert response.status == 201, response.text()
    created = Delivery.objects.get(pk=response.json()["delivery"]["id"])
    expect(row(page, created)).to_have_attribute("data-status", "waiting")
    expect(row(page, created).locator(".c-addr")).to_have_text("Yeoksam-ro 7, Seoul")
    expect(page.locator("[data-count=waiting]")).to_have_text("2")
    expect(page.locator("#total")).to_have_text("2 deliveries")
    assert page.evaluate("() => window.__notReloaded") is True


def test_board_assignment_in_dialog_updates_other_dispatchers_board(browse, demo_tx):
    """Assigning with ArrowDown + Enter in one board shows the rider and 'Assigned' live on another."""
    nearest = rider_on_duty(demo_tx, 1, km_from_shop=0.1)
    second = rider_on_duty(demo_tx, 2, km_from_shop=1.5)
    delivery = take_order(demo_tx)
    board_a, board_b = browse("dispatch-gangnam"), browse("hq")
    live(board_a), live(board_b)
    expect(row(board_b, delivery).locator(".c-status")).to_have_text("Waiting")

    dialog = open_assign_dialog(board_a, delivery)
    options = dialog.locator(".candidates [role=option]")
    expect(options).to_have_count(2)
    assert [int(o) for o in options.evaluate_all("os => os.map(o => o.dataset.rider)")] == [nearest.pk, second.pk]
    expect(options.first.locator(".reason")).to_contain_text("GPS")
    board_a.keyboard.press("ArrowDown")
    assert selected_rider(dialog) == second.pk
    board_a.keyboard.press("Enter")

    expect(dialog).not_to_have_attribute("open", "")
    theirs = row(board_b, delivery)
    expect(theirs).to_have_attribute("data-status", "assigned")
    expect(theirs).to_have_attribute("data-rider", str(second.pk))
    expect(theirs.locator(".c-rider")).to_have_text(second.name)
    expect(theirs.locator(".c-status")).to_have_text("Assigned")
    expect(theirs.locator("[data-action=assign]")).to_have_text("Reassign")
    expect(board_b.locator("[data-count=assigned]")).to_have_text("1")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.rider_id, delivery.version) == ("assigned", second.pk, 2)
    shot(board_b, "board-after-assignment")


def test_board_stale_assignment_shows_conflict_and_overwrites_nothing(browse, demo_tx):
    """Enter on a dialog opened before another dispatcher assigned shows who changed it; their rider stays."""
    theirs = rider_on_duty(demo_tx, 1, km_from_shop=0.1)
    rider_on_duty(demo_tx, 2, km_from_shop=1.5)
    other = another_dispatcher(demo_tx)
    delivery = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    dialog = open_assign_dialog(page, delivery)

    services.assign_delivery(actor=other, delivery_id=delivery.pk, rider_id=theirs.pk)
    expect(row(page, delivery)).to_have_attribute("data-version", "2")  # the page heard it; the dialog is still open
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")

    conflict = dialog.locator(".conflict")
    expect(conflict).to_be_visible()
    expect(conflict).to_contain_text("changed since you looked")
    expect(conflict).to_contain_text("Park Jiwoo")
    expect(dialog).to_have_attribute("open", "")
    delivery.refresh_from_db()
    assert (delivery.rider_id, delivery.version) == (theirs.pk, 2)
    expect(row(page, delivery).locator(".c-rider")).to_have_text(theirs.name)


def test_board_assign_dialog_works_from_keyboard_and_closes_with_escape(browse, demo_tx):
    """Rows take ArrowDown and 'a'; the dialog starts focused in its list, moves with arrows, closes with Esc."""
    rider_on_duty(demo_tx, 1, km_from_shop=0.1)
    rider_on_duty(demo_tx, 2, km_from_shop=1.0)
    rider_on_duty(demo_tx, 3, km_from_shop=2.0)
    delivery = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)

    page.focus("#viewport")
    page.keyboard.press("ArrowDown")
    expect(row(page, delivery)).to_be_focused()
    page.keyboard.press("a")
    dialog = page.locator("#assign-dialog")
    expect(dialog).to_have_attribute("open", "")
    expect(dialog.locator(".candidates")).to_be_focused()
    options = dialog.locator(".candidates [role=option]")
    first, second, third = (int(o) for o in options.evaluate_all("os => os.map(o => o.dataset.rider)"))
    assert selected_rider(dialog) == first
    for key, expected in (("ArrowDown", second), ("ArrowDown", third), ("ArrowDown", third), ("ArrowUp", second)):
        page.keyboard.press(key)
        assert selected_rider(dialog) == expected
    expect(dialog.locator("[aria-selected=true]")).to_have_count(1)
    page.keyboard.press("Escape")

    expect(dialog).not_to_have_attribute("open", "")
    expect(row(page, delivery)).to_be_focused()  # focus goes back where it was
    page.keyboard.press("Enter")  # on the row: the details drawer
    drawer = page.locator("#drawer")
    expect(drawer).to_be_visible()
    expect(drawer.locator(".timeline li")).to_have_count(1)
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.version) == ("waiting", 1)


# -- htmx does the swapping ----------------------------------------------------------------------------------


HTMX_LOG = """() => {
  const log = (window.__htmx = { sent: [], settled: [], outOfBand: [], errors: [] });
  document.body.addEventListener('htmx:error', (e) => log.errors.push(e.detail.errorInfo.error));
  document.body.addEventListener('htmx:beforeSend', (e) => log.sent.push(e.target.id));
  document.body.addEventListener('htmx:afterSettle', (e) => log.settled.push(e.target.id));
  document.body.addEventListener('htmx:oobBeforeSwap', (e) => log.outOfBand.push(e.detail.target.id));
}"""


def htmx_log(page) -> dict:
    return page.evaluate("() => window.__htmx")


def test_board_rows_are_fetched_and_swapped_by_htmx_with_counts_out_of_band(browse, demo_tx):
    """A live event makes htmx fetch /rows/ (HX-Request) and swap the window, the counts, the total and the height."""
    take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    page.evaluate(HTMX_LOG)
    requests = []
    page.on("request", lambda request: "/rows/" in request.url and requests.append(request))

    created = take_order(demo_tx)

    expect(row(page, created)).to_be_visible()
    expect(page.locator("[data-count=waiting]")).to_have_text("2")
    expect(page.locator("#total")).to_have_text("2 deliveries")
    assert page.evaluate("() => document.getElementById('spacer').offsetHeight") == 2 * ROW_H
    log = htmx_log(page)
    assert "rows" in log["sent"] and "rows" in log["settled"], log
    assert {"count-waiting", "count-late", "count-attention", "total", "spacer"} <= set(log["outOfBand"]), log
    assert log["errors"] == []  # e.g. htmx:oobErrorNoTarget: an out-of-band element the page does not have
    assert requests and all(r.headers.get("hx-request") == "true" for r in requests)
    assert all(r.headers.get("hx-target") == "rows" for r in requests)


def wait_for_held(page, held: list, count: int) -> None:
    """Wait (bounded) until `count` routed requests are held: Playwright hands them over while the test waits."""
    deadline = time.monotonic() + WAIT / 1000
    while len(held) < count and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert len(held) == count, held


def test_board_keeps_one_rows_request_in_flight_and_sends_the_last_ask_after_it(browse, demo_tx):
    """Asks for rows while a request is in flight become one follow-up request, sent when the first one lands."""
    take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    page.evaluate(HTMX_LOG)
    held = []
    page.route("**/rows/**", lambda route: held.append(route))

    page.evaluate("() => { for (let i = 0; i < 5; i++) window.__board.loadWindow({ force: true }); }")
    page.wait_for_function("() => window.__htmx.sent.length === 1")
    assert htmx_log(page)["sent"] == ["rows"]  # the other four were queued, all in the same task
    wait_for_held(page, held, 1)
    held[0].continue_()

    page.wait_for_function("() => window.__htmx.sent.length === 2")
    wait_for_held(page, held, 2)
    held[1].continue_()
    page.wait_for_function("() => window.__htmx.settled.filter((id) => id === 'rows').length === 2")

    # The follow-up leaves in the task that applies the first response; after the second, none is left.
    assert htmx_log(page)["sent"] == ["rows", "rows"]
    assert len(held) == 2


def test_board_keeps_the_keyboard_focus_on_its_row_across_a_refresh(browse, demo_tx):
    """A row chosen with the arrow keys stays focused when a live refresh swaps the window around it."""
    delivery = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    page.focus("#viewport")
    page.keyboard.press("ArrowDown")
    expect(row(page, delivery)).to_be_focused()

    created = take_order(demo_tx)
    expect(row(page, created)).to_be_visible()  # the window was swapped

    expect(row(page, delivery)).to_be_focused()


def test_board_drawer_and_its_live_refresh_are_loaded_by_htmx(browse, demo_tx):
    """The details drawer is fetched by htmx (HX-Request) into #drawer, on opening and when its delivery changes."""
    rider = rider_on_duty(demo_tx, 1)
    delivery = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    page.evaluate(HTMX_LOG)
    requests = []
    page.on("request", lambda request: "/deliveries/" in request.url and requests.append(request))

    row(page, delivery).locator("[data-action=detail]").click()
    expect(page.locator("#drawer .drawer-body")).to_have_attribute("data-version", "1")
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)
    expect(page.locator("#drawer .drawer-body")).to_have_attribute("data-version", "2")

    assert len(requests) >= 2
    assert all(r.headers.get("hx-request") == "true" and r.headers.get("hx-target") == "drawer" for r in requests)
    # htmx settles just after the swap the expect above saw: wait for its event, then check it.
    page.wait_for_function("() => window.__htmx.settled.filter((id) => id === 'drawer').length >= 2")
    assert htmx_log(page)["settled"].count("drawer") >= 2


# -- filters and search --------------------------------------------------------------------------------------


def test_board_status_filter_and_search_live_in_url_and_survive_reload(browse, demo_tx):
    """A status chip and a search narrow the rows, show in the URL, and stay after a reload."""
    rider = rider_on_duty(demo_tx, 1)
    wanted = take_order(demo_tx)
    phone = phone_without(wanted.order_id)
    other = take_order(demo_tx, phone=phone)
    assigned = take_order(demo_tx, phone=phone)
    services.assign_delivery(actor=None, delivery_id=assigned.pk, rider_id=rider.pk)
    page = browse("dispatch-gangnam")
    live(page)
    rows = page.locator("#rows .row[data-id]")
    expect(rows).to_have_count(3)

    assigned_chip = page.get_by_role("button", name=re.compile(r"^Assigned \d+$"))
    expect(assigned_chip).to_have_attribute("aria-pressed", "false")
    assigned_chip.click()

    expect(page).to_have_url(re.compile(r"\?status=assigned(&|$)"))
    expect(rows).to_have_count(1)
    expect(row(page, assigned)).to_be_visible()
    expect(page.locator("[data-count=waiting]")).to_have_text("2")  # chip counts ignore the status filter
    expect(page.locator("#total")).to_have_text("1 delivery")
    page.reload()
    live(page)
    expect(assigned_chip).to_have_attribute("aria-pressed", "true")
    expect(rows).to_have_count(1)

    assigned_chip.click()
    expect(assigned_chip).to_have_attribute("aria-pressed", "false")
    expect(rows).to_have_count(3)
    page.fill("input[name=q]", f"#{wanted.order_id}")

    expect(page).to_have_url(re.compile(rf"\?q=%23{wanted.order_id}(&|$)"))
    expect(rows).to_have_count(1)
    expect(row(page, wanted)).to_be_visible()
    expect(row(page, other)).to_have_count(0)
    page.reload()
    live(page)
    expect(page.locator("input[name=q]")).to_have_value(f"#{wanted.order_id}")
    expect(rows).to_have_count(1)
    expect(row(page, wanted)).to_be_visible()


def test_board_map_returns_to_the_whole_center_after_drawer_and_dialog_close(browse, demo_tx):
    """The map shows a delivery while its drawer or assign dialog is open, and the whole center after."""
    delivery = take_order(demo_tx)
    rider_on_duty(demo_tx, 1, km_from_shop=1.0)
    page = browse("dispatch-gangnam")
    live(page)
    the_map = page.locator("#map.leaflet-container")
    expect(the_map).to_have_attribute("aria-label", "Map of riders")
    showing_delivery = re.compile(rf"order #{delivery.order_id}$")

    row(page, delivery).locator("[data-action=detail]").click()
    expect(the_map).to_have_attribute("aria-label", showing_delivery)
    page.keyboard.press("Escape")
    expect(page.locator("#drawer")).to_be_hidden()
    expect(the_map).to_have_attribute("aria-label", "Map of riders")

    dialog = open_assign_dialog(page, delivery)
    expect(the_map).to_have_attribute("aria-label", showing_delivery)
    page.keyboard.press("Escape")
    expect(dialog).not_to_have_attribute("open", "")
    expect(the_map).to_have_attribute("aria-label", "Map of riders")


# -- late deliveries -----------------------------------------------------------------------------------------


def refresh_by_new_order(page, demo) -> Delivery:
    """Commit an unrelated order and wait until the board re-read its window (counts included)."""
    delivery = take_order(demo)
    expect(row(page, delivery)).to_be_visible()
    return delivery


def test_board_highlights_late_delivery_and_alert_is_acknowledged(browse, demo_tx):
    """A delivery past its promise turns urgency-3 with 'late' and raises the badge; a click acknowledges it."""
    delivery = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    refresh_by_new_order(page, demo_tx)
    badge = page.locator("#late-alert")
    expect(badge).to_be_hidden()

    promise_passed(delivery)
    refresh_by_new_order(page, demo_tx)

    expect(row(page, delivery)).to_have_class(re.compile(r"\burgency-3\b"))
    expect(row(page, delivery).locator(".c-age")).to_contain_text("late")
    expect(page.locator("[data-count=late]")).to_have_text("1")
    expect(badge).to_be_visible()
    expect(badge.locator(".count")).to_have_text("1")
    assert page.locator("#rows .row[data-id]").first.get_attribute("id") == f"delivery-{delivery.pk}"
    shot(page, "board-late")
    badge.click()
    expect(badge).to_be_hidden()
    refresh_by_new_order(page, demo_tx)
    expect(badge).to_be_hidden()


def test_board_alerts_delivery_late_since_page_load(browse, demo_tx):
    """A delivery that turns late after the page opened raises the badge on the very first refresh."""
    delivery = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)

    promise_passed(delivery)
    refresh_by_new_order(page, demo_tx)

    expect(row(page, delivery)).to_have_class(re.compile(r"\burgency-3\b"))
    expect(page.locator("#late-alert")).to_be_visible(timeout=2000)


def test_board_alerts_new_late_delivery_after_another_late_one_closed(browse, demo_tx):
    """When a known late delivery is delivered and another turns late, the badge still rises."""
    rider = rider_on_duty(demo_tx, 1)
    known_late = take_order(demo_tx)
    services.assign_delivery(actor=None, delivery_id=known_late.pk, rider_id=rider.pk)
    services.pick_up_delivery(actor=None, delivery_id=known_late.pk)
    promise_passed(known_late)
    newly_late = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    refresh_by_new_order(page, demo_tx)

    services.deliver_delivery(actor=None, delivery_id=known_late.pk)
    expect(row(page, known_late)).to_have_attribute("data-status", "delivered")
    promise_passed(newly_late)
    refresh_by_new_order(page, demo_tx)

    expect(row(page, newly_late)).to_have_class(re.compile(r"\burgency-3\b"))
    expect(page.locator("#late-alert")).to_be_visible(timeout=2000)


def test_board_clearing_search_raises_no_late_alarm(browse, demo_tx):
    """Widening the filters shows more late deliveries but none is 'newly late': no badge, no beep."""
    late = take_order(demo_tx, address="Yeoksam-ro 7, Seoul")
    promise_passed(late)
    take_order(demo_tx)
    page = browse("dispatch-gangnam", f"{BOARD}?q=Teheran")
    live(page)
    refresh_by_new_order(page, demo_tx)  # late: 0 within this search

    page.fill("input[name=q]", "")

    expect(row(page, late)).to_be_visible()
    expect(page.locator("[data-count=late]")).to_have_text("1")
    expect(page.locator("#late-alert")).to_be_hidden(timeout=2000)


def test_board_alerts_delivery_turning_late_without_any_event(browse, demo_tx):
    """A promise that passes while nothing else happens still counts as late and raises the badge."""
    delivery = take_order(demo_tx, promised_at=timezone.now() + timedelta(seconds=8))
    page = browse("dispatch-gangnam")
    live(page)
    refresh_by_new_order(page, demo_tx)
    expect(row(page, delivery)).not_to_have_class(re.compile(r"\burgency-3\b"))

    expect(row(page, delivery)).to_have_class(re.compile(r"\burgency-3\b"), timeout=SLOW)  # the page's own clock

    expect(page.locator("[data-count=late]")).to_have_text("1", timeout=3000)
    expect(page.locator("#late-alert")).to_be_visible(timeout=1000)


def test_board_open_drawer_follows_live_changes(browse, demo_tx):
    """The details drawer of a delivery another dispatcher assigns shows the new rider and version."""
    rider = rider_on_duty(demo_tx, 1)
    delivery = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    row(page, delivery).locator("[data-action=detail]").click()
    drawer = page.locator("#drawer .drawer-body")
    expect(drawer).to_contain_text("not assigned")

    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)

    expect(row(page, delivery)).to_have_attribute("data-status", "assigned")
    expect(drawer).to_have_attribute("data-version", "2", timeout=3000)
    expect(drawer).to_contain_text(rider.name)


# -- access --------------------------------------------------------------------------------------------------


def test_board_refuses_foreign_center_to_dispatcher(browse, demo_tx):
    """A gangnam dispatcher opening mapo's board gets 403 and sees none of its deliveries."""
    mapo = take_order(demo_tx, center="mapo")
    page = browse("dispatch-gangnam", "/dispatch/mapo/")
    assert page.response.status == 403
    expect(page.locator(".row[data-id]")).to_have_count(0)
    assert f"#{mapo.order_id}" not in page.content()


# -- losing the network --------------------------------------------------------------------------------------


STATE_LOG = """() => {
  window.__states = [];
  const badge = document.getElementById("conn-state");
  new MutationObserver(() => {
    if (window.__states.at(-1) !== badge.dataset.state) window.__states.push(badge.dataset.state);
  }).observe(badge, { attributes: true, attributeFilter: ["data-state"] });
}"""


def test_board_recovers_after_network_loss(browse, demo_tx):
    """Offline, then HTTP back (Polling), then the socket back (Resynced, Live): deliveries made meanwhile show up."""
    proxy = SocketProxy()
    page = browse("dispatch-gangnam", proxy=proxy)
    live(page)
    page.evaluate(STATE_LOG)

    page.context.set_offline(True)
    proxy.refusing = True  # offline emulation does not close or refuse WebSockets in Chromium
    proxy.drop(code=4002)
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#conn-state")).to_have_text("Reconnecting…")
    missed = [take_order(demo_tx), take_order(demo_tx)]
    page.wait_for_timeout(500)  # let the board try (and fail) while it is offline
    expect(row(page, missed[0])).to_have_count(0)

    page.context.set_offline(False)  # HTTP works again, the socket is still refused: the client polls
    for delivery in missed:
        expect(row(page, delivery)).to_be_visible(timeout=SLOW)
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "polling")
    expect(page.locator("[data-count=waiting]")).to_have_text("2")
    proxy.refusing = False

    expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=SLOW)
    states = page.evaluate("() => window.__states")
    assert states[0] == "reconnecting" and states[-2:] == ["resynced", "live"], states
    assert "polling" in states, states
    after = take_order(demo_tx)
    expect(row(page, after)).to_be_visible()
    expect(page.locator("[data-count=waiting]")).to_have_text("3")


def test_board_loads_rows_scrolled_to_while_offline_once_back(browse, demo_tx):
    """Rows scrolled to while offline are loaded once the connection is back, without script errors."""
    with transaction.atomic():
        for _ in range(100):
            take_order(demo_tx)
    proxy = SocketProxy()
    page = browse("dispatch-gangnam", proxy=proxy)
    live(page)
    page.context.set_offline(True)
    proxy.refusing = True
    proxy.drop(code=4002)
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "reconnecting")

    page.evaluate("() => { document.getElementById('viewport').scrollTop = 80 * 36; }")
    page.wait_for_timeout(500)  # the window fetch fails at once while offline
    errors = list(page.js_errors)
    page.js_errors.clear()  # judged here rather than by the fixture
    page.context.set_offline(False)
    proxy.refusing = False
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=SLOW)

    page.wait_for_function(WINDOW_COVERS, timeout=3000)
    assert not errors


# -- the virtual list ----------------------------------------------------------------------------------------


ROW_WATCH = """() => {
  window.__maxRows = document.querySelectorAll('.row[data-id]').length;
  new MutationObserver(() => {
    window.__maxRows = Math.max(window.__maxRows, document.querySelectorAll('.row[data-id]').length);
  }).observe(document.getElementById('rows'), { childList: true, subtree: true });
}"""

WINDOW_COVERS = """() => {
  const viewport = document.getElementById('viewport');
  const win = document.querySelector('#rows .window');
  const first = Math.floor(viewport.scrollTop / 36);
  const last = Math.min(Number(win.dataset.total), first + Math.ceil(viewport.clientHeight / 36));
  const offset = Number(win.dataset.offset);
  return offset <= first && offset + win.querySelectorAll('.row[data-id]').length >= last;
}"""

TOP_ROW = """() => {
  const viewport = document.getElementById('viewport');
  const box = viewport.getBoundingClientRect();
  const hit = document.elementFromPoint(box.left + 40, box.top + 2)?.closest('.row[data-id]');
  return {
    scrollTop: viewport.scrollTop,
    rows: document.querySelectorAll('.row[data-id]').length,
    offset: Number(document.querySelector('#rows .window').dataset.offset),
    top: hit ? Number(hit.dataset.id) : null,
  };
}"""


def test_board_keeps_at_most_100_dom_rows_while_scrolling_1000(browse, demo_tx):
    """Scrolling through 1,000 deliveries never puts more than 100 rows in the DOM; the rows match the scroll."""
    shop = demo_tx.shop()
    with transaction.atomic():  # one commit: the setup is quick and the page opens on a settled stream
        newest_first = [
            services.create_order(
                actor=None,
                shop_id=shop.pk,
                customer_name=f"Customer {n}",
                customer_phone="010-2000-3000",
                address=f"Teheran-ro {n}, Seoul",
                items=[{"name": "Kimbap", "qty": 1}],
            ).delivery.pk
            for n in range(1000)
        ][::-1]
    page = browse("dispatch-gangnam", f"{BOARD}?sort=newest")
    live(page)
    page.evaluate(ROW_WATCH)
    expect(page.locator("#total")).to_have_text("1000 deliveries")
    assert page.evaluate("() => document.getElementById('spacer').offsetHeight") == 1000 * ROW_H
    height = page.evaluate("() => document.getElementById('viewport').clientHeight")

    for target in [*range(0, 1000 * ROW_H, 1300), 4000, 1000 * ROW_H]:  # steps down, a jump back, the end
        page.evaluate("y => { document.getElementById('viewport').scrollTop = y; }", target)
        page.wait_for_function(WINDOW_COVERS)
        shown = page.evaluate(TOP_ROW)
        index = (shown["scrollTop"] + 2) // ROW_H  # the row under the viewport's top edge (+2 px)
        assert shown["rows"] <= MAX_DOM_ROWS, shown
        assert shown["top"] == newest_first[index], (shown, index)
        assert shown["offset"] <= index < shown["offset"] + shown["rows"], shown

    assert index >= 1000 - height // ROW_H - 1  # the last step reached the end of the list
    last = page.locator(f"#delivery-{newest_first[-1]}")
    expect(last).to_be_in_viewport()
    assert page.evaluate("() => window.__maxRows") <= MAX_DOM_ROWS

"""axe-core over every page of every role: no serious or critical violation.

axe-core comes bundled with axe-playwright-python (no download at run time). To check a new page,
add it to PAGES; a page that needs a state (an open drawer, a dialog) gets its own test below.
"""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from deliveries import services

from . import test_board as board
from .conftest import WAIT
from .test_board import live, row, take_order

browse = board.browse  # the board tests' fixture: a logged-in page on the live server

pytestmark = pytest.mark.browser

BLOCKING = {"serious", "critical"}

# (user, path, status): every page of every role. None logs nobody in. Pages that need an id or a
# state (an order, an open dialog) have their own test below.
PAGES = [
    (None, "/accounts/login/", 200),
    ("dispatch-gangnam", "/dispatch/gangnam/", 200),
    ("dispatch-gangnam", "/dispatch/gangnam/replay/", 200),
    ("hq", "/dispatch/gangnam/replay/?t=2999-01-01T00:00", 200),  # clamped to now: rows of every status, a notice
    ("hq", "/dispatch/gangnam/replay/?date=2026-02-30", 400),
    ("hq", "/dispatch/", 200),
    ("hq", "/dispatch/mapo/", 200),
    ("callcenter", "/orders/", 200),
    ("hq", "/reports/", 200),
    ("dispatch-gangnam", "/reports/", 200),
    ("hq", "/ops/", 200),
    ("rider-gangnam-01", "/rider/", 200),
    ("dispatch-gangnam", "/dispatch/mapo/", 403),
    ("dispatch-gangnam", "/no-such-page/", 404),
    ("hq", "/dev/server-error/", 500),
    # The admin role's pages (Django admin, with the project's own admin pages and forms).
    ("admin", "/admin/", 200),
    ("admin", "/admin/deliveries/delivery/", 200),
    ("admin", "/admin/riders/rider/", 200),
    ("admin", "/admin/riders/rider/add/", 200),
    ("admin", "/admin/realtime/webhook/", 200),
    ("admin", "/admin/realtime/webhook/add/", 200),
    ("admin", "/admin/realtime/webhookdelivery/", 200),
    ("admin", "/admin/core/apitoken/add/", 200),
]

_axe = Axe()


def deliveries_of_every_status(demo) -> None:
    """Rows in each status (their colours differ), in gangnam and mapo, and a rider on duty."""
    rider = board.rider_on_duty(demo, 1, km_from_shop=1.0)
    take_order(demo), take_order(demo, center="mapo")
    assigned, picked_up, delivered, cancelled = (take_order(demo) for _ in range(4))
    for delivery in (assigned, picked_up, delivered):
        services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)
    for delivery in (picked_up, delivered):
        services.pick_up_delivery(actor=None, delivery_id=delivery.pk)
    services.deliver_delivery(actor=None, delivery_id=delivered.pk)
    services.cancel_order(actor=None, order_id=cancelled.order_id, reason="Customer changed their mind")


def blocking_violations(page) -> str:
    """axe-core's serious and critical violations on the page as it is now, as a readable report ('' if none)."""
    results = _axe.run(page)
    blocking = [v for v in results.response["violations"] if v["impact"] in BLOCKING]
    return "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']}\n    " + "\n    ".join(n["html"][:200] for n in v["nodes"][:5])
        for v in blocking
    )


def open_as(browser, browse, live_server_url, user, path):
    if user is not None:
        return browse(user, path)
    context = browser.new_context(base_url=live_server_url)
    context.set_default_timeout(WAIT)
    page = context.new_page()
    page.response = page.goto(path)
    return page


@pytest.mark.parametrize(("user", "path", "status"), PAGES, ids=[f"{u}:{p}" for u, p, _ in PAGES])
def test_page_has_no_serious_accessibility_violation(browser, browse, live_server_url, demo_tx, user, path, status):
    """axe-core finds no serious or critical violation on the page, which has exactly one <h1>."""
    deliveries_of_every_status(demo_tx)  # pages with rows, not only empty states
    page = open_as(browser, browse, live_server_url, user, path)
    assert page.response.status == status
    expect(page.locator("h1")).to_have_count(1)
    page.wait_for_load_state("load")
    assert blocking_violations(page) == ""


def test_board_with_drawer_and_assign_dialog_open_has_no_serious_violation(browse, demo_tx):
    """The board's drawer and assign dialog, open, pass axe-core too."""
    delivery = take_order(demo_tx)
    board.rider_on_duty(demo_tx, 1, km_from_shop=1.0)
    page = browse("dispatch-gangnam")
    live(page)
    expect(page.locator("#map.leaflet-container")).to_have_count(1)
    row(page, delivery).locator("[data-action=detail]").click()
    expect(page.locator("#drawer .drawer-body")).to_be_visible()
    assert blocking_violations(page) == ""
    page.locator("#drawer [data-action=assign]").click()
    expect(page.locator("#assign-dialog [role=option]")).to_have_count(1)
    assert blocking_violations(page) == ""


def test_order_page_live_cancelled_and_with_cancel_dialog_has_no_serious_violation(browse, demo_tx):
    """The call center's order page: picked up (map and ETA), its cancel dialog open, and cancelled (banner)."""
    rider = board.rider_on_duty(demo_tx, 1, km_from_shop=1.0)
    delivery = take_order(demo_tx)
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)
    services.pick_up_delivery(actor=None, delivery_id=delivery.pk)
    page = browse("callcenter", f"/orders/{delivery.order_id}/")
    expect(page.locator("h1")).to_have_count(1)
    page.wait_for_load_state("load")
    assert blocking_violations(page) == ""
    page.locator("#open-cancel").click()
    expect(page.locator("#cancel-dialog")).to_be_visible()
    assert blocking_violations(page) == ""
    cancelled = take_order(demo_tx)
    services.cancel_order(actor=None, order_id=cancelled.order_id, reason="Customer changed their mind")
    page = browse("callcenter", f"/orders/{cancelled.order_id}/")
    expect(page.locator("#cancel-banner")).to_be_visible()
    assert blocking_violations(page) == ""


def test_chat_panel_open_with_messages_has_no_serious_violation(browse, demo_tx):
    """The chat panel, open on the board with a message in the room and on the rider's phone page."""
    dispatcher = browse("dispatch-gangnam")
    dispatcher.click("#chat-toggle")
    expect(dispatcher.locator("#chat-room-title")).to_have_text("# Gangnam")
    dispatcher.fill("#chat-input", "Rain on Teheran-ro: expect delays")
    dispatcher.click("#chat-send")
    expect(dispatcher.locator("#chat-messages li")).to_have_count(1)
    assert blocking_violations(dispatcher) == ""
    rider = browse("rider-gangnam-01", "/rider/")
    rider.set_viewport_size({"width": 360, "height": 740})
    expect(rider.locator("#chat-messages li")).to_have_count(1)
    assert blocking_violations(rider) == ""

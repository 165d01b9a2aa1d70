"""The shift replay in headless Chromium against the live ASGI server: scrub, play, and a delivery's timeline at T.

The shift is written by the real services in the test process, each step at a chosen moment of the
last hour (the test process's clock is set; the server keeps the real one, so the moments are past).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from deliveries import services
from riders.models import PositionSample
from riders.services import set_rider_duty

from . import test_board as board
from .conftest import WAIT
from .test_accessibility import blocking_violations
from .test_board import shot, take_order

browse = board.browse  # the board tests' fixture: a logged-in page on the live server

pytestmark = pytest.mark.browser

PLAY_WAIT = 30_000  # ms: five minutes of shift at 60× is five seconds, on a loaded machine


@pytest.fixture
def past_shift(demo_tx, monkeypatch):
    """Order A created 40 min ago, then assigned (+5 min), picked up (+10), delivered (+20); order B at +15."""
    real_now = timezone.now
    base = (real_now() - timedelta(minutes=40)).replace(microsecond=0)
    moment = {"now": base}
    monkeypatch.setattr(timezone, "now", lambda: moment["now"])

    def at(minutes: int) -> None:
        moment["now"] = base + timedelta(minutes=minutes)

    rider = demo_tx.rider("gangnam", 1)
    set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    for minute in range(1, 21, 2):  # sampled positions, as `riders.positions` stores them
        PositionSample.objects.create(
            rider=rider, lat=37.50 + minute / 1000, lng=127.03, recorded_at=base + timedelta(minutes=minute)
        )
    a = take_order(demo_tx)
    at(5)
    services.assign_delivery(actor=None, delivery_id=a.pk, rider_id=rider.pk)
    at(10)
    services.pick_up_delivery(actor=None, delivery_id=a.pk)
    at(15)
    b = take_order(demo_tx, name="Lee Seoyeon")
    at(20)
    services.deliver_delivery(actor=None, delivery_id=a.pk)
    monkeypatch.setattr(timezone, "now", real_now)
    return base, a, b, rider


@pytest.fixture
def far_browser(browser, live_server_url):
    """`open(user, path)`: a logged-in page in a browser whose time zone and locale are not the deployment's."""
    contexts, errors = [], []

    def open_(username: str, path: str):
        context = browser.new_context(
            base_url=live_server_url,
            timezone_id="America/Los_Angeles",
            locale="de-DE",
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(WAIT)
        context.route(board.OFFSITE, lambda route: route.abort())
        contexts.append(context)
        board.log_in(context, username)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.response = page.goto(path)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_replay_scrubs_plays_and_opens_a_timeline_up_to_the_moment(far_browser, past_shift):
    """Scrubbing to the end and back, then playing at 60×, changes rows and events; a row opens its timeline at T."""
    base, a, b, rider = past_shift
    t = (base + timedelta(minutes=2)).isoformat()
    page = far_browser("dispatch-gangnam", f"/dispatch/gangnam/replay/?t={t.replace('+', '%2B')}")
    assert page.response.status == 200
    row_a, row_b = page.locator(f"#replay-delivery-{a.pk}"), page.locator(f"#replay-delivery-{b.pk}")
    expect(row_a).to_have_attribute("data-status", "waiting")
    expect(row_b).to_have_count(0)
    expect(page.locator("#replay-events li")).to_have_count(1)

    scrubber = page.get_by_label("Moment in the shift")
    expect(scrubber).to_be_visible()
    scrubber.focus()
    page.keyboard.press("End")  # the last record of the day: A delivered, B waiting
    expect(row_a).to_have_attribute("data-status", "delivered")
    expect(row_b).to_have_attribute("data-status", "waiting")
    expect(page.locator("#replay-events li[data-action=delivered]")).to_have_count(1)
    expect(page.locator(f".riders li[data-rider='{rider.pk}']")).to_contain_text(rider.name)
    end = timezone.localtime(base + timedelta(minutes=20))  # the deployment's time zone, not the browser's
    expect(page.locator("#replay-date")).to_have_value(end.date().isoformat())
    expect(page.locator("#replay-time")).to_have_value(end.strftime("%H:%M:%S"))
    shot(page, "replay-end")

    page.keyboard.press("Home")  # the shift's first record: A just ordered, no position yet
    expect(row_a).to_have_attribute("data-status", "waiting")
    expect(row_b).to_have_count(0)
    expect(page.get_by_text("No rider sent a position in the 5 minutes before this moment.")).to_be_visible()

    page.get_by_label("60×").check()
    page.get_by_role("button", name="Play").click()
    expect(page.get_by_role("button", name="Pause")).to_have_attribute("aria-pressed", "true")
    expect(row_a).to_have_attribute("data-status", "assigned", timeout=PLAY_WAIT)
    expect(row_a).to_have_attribute("data-rider", str(rider.pk))
    expect(page.locator("#replay-events li[data-action=assigned]")).to_have_count(1)
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Play")).to_have_attribute("aria-pressed", "false")

    page.get_by_role("link", name=f"Timeline of order {a.order_id}").click()
    timeline = page.locator("#replay-timeline")
    expect(timeline.get_by_role("heading", name=f"Order #{a.order_id}")).to_be_visible()
    expect(timeline.locator("li strong", has_text="created")).to_have_count(1)
    expect(timeline.locator("li strong", has_text="delivered")).to_have_count(0)
    expect(timeline).to_be_focused()
    shot(page, "replay-timeline")
    assert blocking_violations(page) == ""  # after the swaps, with the timeline open


def test_replay_refused_moment_in_the_form_says_why(browse, demo_tx):
    """A day typed wrong comes back as a 400 with the message beside the form and the fields marked."""
    page = browse("dispatch-gangnam", "/dispatch/gangnam/replay/?date=2026-02-30&time=10:00")
    assert page.response.status == 400
    expect(page.get_by_role("alert")).to_have_text("Enter a day as YYYY-MM-DD.")
    expect(page.locator("#replay-date")).to_have_attribute("aria-invalid", "true")

"""The HQ overview (`/dispatch/`) in headless Chromium against a live ASGI server."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from . import test_board as board
from .test_board import live, promise_passed, rider_on_duty, row, shot, take_order

browse = board.browse  # the board tests' fixture: a logged-in page on the live server

pytestmark = pytest.mark.browser

OVERVIEW = "/dispatch/"
HAS_LATE = re.compile(r"\bhas-late\b")


def card(page, center: str):
    return page.locator(f".center-card[data-center={center}]")


def test_overview_shows_every_center_and_updates_live(browse, demo_tx):
    """HQ sees a card per center with counts; a new mapo order, a late songpa one and a shift update them live."""
    take_order(demo_tx), take_order(demo_tx)
    page = browse("hq", OVERVIEW)
    live(page)
    expect(page.locator(".center-card")).to_have_count(3)
    expect(page.locator(".center-card h2")).to_have_text(["Gangnam", "Mapo", "Songpa"])
    expect(card(page, "gangnam").locator("[data-count=waiting]")).to_have_text("2")
    expect(card(page, "mapo").locator("[data-count=waiting]")).to_have_text("0")
    expect(card(page, "songpa")).not_to_have_class(HAS_LATE)

    take_order(demo_tx, center="mapo")
    expect(card(page, "mapo").locator("[data-count=waiting]")).to_have_text("1")

    late = take_order(demo_tx, center="songpa")
    promise_passed(late)
    take_order(demo_tx, center="songpa")  # any event of the center refreshes the cards
    expect(card(page, "songpa").locator("[data-count=late]")).to_have_text("1")
    expect(card(page, "songpa")).to_have_class(HAS_LATE)
    expect(card(page, "songpa").locator("[data-count=waiting]")).to_have_text("2")

    rider_on_duty(demo_tx, 1)
    expect(card(page, "gangnam").locator("[data-riders=on_duty]")).to_have_text("1")
    expect(card(page, "gangnam").locator("[data-riders=stale]")).to_have_text("1")  # on duty without GPS
    expect(card(page, "gangnam").locator("[data-count=waiting]")).to_have_text("2")
    shot(page, "overview")


def test_overview_cards_are_reloaded_by_htmx(browse, demo_tx):
    """A center's event makes htmx fetch the cards partial (HX-Request) and swap #cards for it."""
    page = browse("hq", OVERVIEW)
    live(page)
    page.evaluate(board.HTMX_LOG)
    requests = []
    page.on("request", lambda request: "/overview/cards/" in request.url and requests.append(request))

    take_order(demo_tx, center="mapo")

    expect(card(page, "mapo").locator("[data-count=waiting]")).to_have_text("1")
    assert requests and all(r.headers.get("hx-request") == "true" for r in requests)
    assert "cards" in board.htmx_log(page)["sent"]
    take_order(demo_tx, center="mapo")  # the swapped-in cards still answer the next refresh
    expect(card(page, "mapo").locator("[data-count=waiting]")).to_have_text("2")


def test_overview_card_opens_that_centers_board_for_hq(browse, demo_tx):
    """From the overview HQ opens any center's board, which shows that center's deliveries live."""
    mapo = take_order(demo_tx, center="mapo")
    gangnam = take_order(demo_tx)
    page = browse("hq", OVERVIEW)
    live(page)

    card(page, "mapo").locator("h2 a").click()

    page.wait_for_url("**/dispatch/mapo/")
    live(page)
    expect(row(page, mapo)).to_be_visible()
    expect(row(page, gangnam)).to_have_count(0)
    later = take_order(demo_tx, center="mapo")
    expect(row(page, later)).to_be_visible()
    page.select_option(".center-switch select", "songpa")
    page.wait_for_url("**/dispatch/songpa/")
    live(page)
    expect(page.locator("#total")).to_have_text("0 deliveries")


@pytest.mark.parametrize("username", ["dispatch-gangnam", "callcenter"])
def test_overview_is_refused_to_non_hq(browse, demo_tx, username):
    """Dispatchers and call-center staff get 403 for the overview."""
    page = browse(username, OVERVIEW)
    assert page.response.status == 403
    expect(page.locator(".center-card")).to_have_count(0)

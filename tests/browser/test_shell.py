"""The page shell in Chromium: keyboard use of the skip link and the navigation, landing after login."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from . import test_board as board
from .conftest import WAIT

browse = board.browse  # the board tests' fixture: a logged-in page on the live server

pytestmark = pytest.mark.browser


def test_keyboard_user_skips_to_content_and_uses_the_boards_menu(browse, demo_tx):
    """Tab reaches "Skip to content" first; the Boards menu opens with Enter, closes with Escape, and navigates."""
    page = browse("hq", "/dispatch/")
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()

    nav = page.get_by_role("navigation", name="Pages")
    menu, summary = nav.locator(".nav-menu"), nav.locator(".nav-menu summary")
    summary.focus()
    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("open", "")
    expect(nav.get_by_role("link", name="Mapo")).to_be_visible()
    page.keyboard.press("Escape")
    expect(menu).not_to_have_attribute("open", "")
    expect(summary).to_be_focused()

    page.keyboard.press("Enter")
    nav.get_by_role("link", name="Mapo").click()
    page.wait_for_url("**/dispatch/mapo/")
    expect(summary).to_have_class("current")
    expect(nav.locator('a[href="/dispatch/mapo/"]')).to_have_attribute("aria-current", "page")  # in the closed menu


@pytest.mark.parametrize(
    ("username", "landing"),
    [
        ("hq", "/dispatch/"),
        ("callcenter", "/orders/"),
        ("dispatch-mapo", "/dispatch/mapo/"),
        ("rider-mapo-02", "/rider/"),
    ],
)
def test_login_form_lands_each_role_on_its_page(browser, live_server_url, demo_tx, username, landing):
    """Logging in through the form lands each role on its page, marked current in the navigation."""
    context = browser.new_context(base_url=live_server_url)
    context.set_default_timeout(WAIT)
    context.route(board.OFFSITE, lambda route: route.abort())
    try:
        page = context.new_page()
        page.goto("/")
        page.fill("#id_username", username)
        page.fill("#id_password", "demo")
        page.click("button[type=submit]")
        page.wait_for_url(f"**{landing}")
        expect(page.locator(f'.site-nav a[href="{landing}"]')).to_have_attribute("aria-current", "page")
    finally:
        context.close()
    board.wait_until_disconnected()

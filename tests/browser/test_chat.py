"""The chat panel in headless Chromium: a dispatcher on the board and a rider on their phone page talk live."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from playwright.sync_api import expect

from chat.selectors import rooms_for
from tests.support import take_order

from .conftest import WAIT, SocketProxy
from .test_board import BOARD, browse, shot  # noqa: F401  (the fixture)

pytestmark = pytest.mark.browser

expect.set_options(timeout=WAIT)

HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1"> javascript:alert(1)'


def messages(page):
    return page.locator("#chat-messages .chat-text")


def say(page, text: str) -> None:
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")
    expect(page.locator("#chat-input")).to_have_value("")


def test_dispatcher_and_rider_chat_live_and_find_the_history_after_reloading(browse, demo_tx):  # noqa: F811
    order = take_order(demo_tx)
    dispatcher = browse("dispatch-gangnam", BOARD)
    rider = browse("rider-gangnam-01", "/rider/")
    rider.set_viewport_size({"width": 390, "height": 800})  # the rider's phone

    # The rider's panel is inline and open on the center room; the dispatcher opens theirs.
    expect(rider.locator("#chat-room-title")).to_have_text("# Gangnam")
    expect(rider.locator("#chat-empty")).to_be_visible()
    dispatcher.click("#chat-toggle")
    expect(dispatcher.locator("#chat-room-title")).to_have_text("# Gangnam")
    expect(dispatcher.locator("#chat-input")).to_be_focused()

    say(dispatcher, f"Rain on Teheran-ro, see #{order.pk} and https://example.com/map. {HOSTILE}")
    first = messages(rider).first
    expect(first).to_contain_text("Rain on Teheran-ro")
    expect(first).to_contain_text("<img src=x")  # shown as text, never as markup
    assert rider.locator("#chat-messages img").count() == 0
    link = first.locator("a[href='https://example.com/map']")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    assert first.locator("a.chat-delivery").count() == 0  # a rider cannot open deliveries of the board
    assert first.locator("a[href^='javascript']").count() == 0
    expect(rider.locator("#chat-messages .chat-role").first).to_have_text("Dispatcher")
    expect(first).to_contain_text(f"#{order.pk}")
    # For the dispatcher `#<order>` opens that order's delivery in the board's drawer.
    dispatcher.locator("#chat-messages a.chat-delivery").click()
    expect(dispatcher.locator("#drawer h2")).to_contain_text(f"Order #{order.pk}")
    assert dispatcher.url.endswith(BOARD)

    say(rider, "On my way, 5 minutes")
    expect(messages(dispatcher).last).to_have_text("On my way, 5 minutes")
    shot(dispatcher, "chat-board")
    shot(rider, "chat-rider-phone")
    expect(dispatcher.locator("#chat-messages .chat-role").last).to_have_text("Rider")

    # With the panel closed, a new message shows as an unread badge and chimes.
    dispatcher.click("#chat-close")
    say(rider, "At the shop now")
    expect(dispatcher.locator("#chat-total")).to_have_text("1")
    expect(dispatcher.locator("#chat-panel")).to_have_attribute("data-chimes", "1")
    room_badge = dispatcher.locator("#chat-rooms .chat-room[aria-current=true] .chat-badge")
    expect(room_badge).to_have_text("1")
    dispatcher.click("#chat-toggle")
    # Read on opening: the room's own badge (the toggle and its total are hidden while open) clears
    # once the server has the read position, so the reload below cannot overtake it.
    expect(room_badge).to_be_hidden()

    for page in (dispatcher, rider):
        page.reload()
        if page is dispatcher:
            expect(page.locator("#chat-total")).to_be_hidden()  # still read after the reload
            page.click("#chat-toggle")
        expect(messages(page)).to_have_count(3)
        expect(messages(page).nth(0)).to_contain_text("Rain on Teheran-ro")
        expect(messages(page).nth(1)).to_have_text("On my way, 5 minutes")
        expect(messages(page).nth(2)).to_have_text("At the shop now")
    assert dispatcher.evaluate("document.body.dataset.pwned") is None
    assert rider.evaluate("document.body.dataset.pwned") is None


def test_a_message_arriving_after_the_panel_closed_stays_unread_while_the_earlier_read_is_saved(browse, demo_tx):  # noqa: F811
    """The panel saves what was seen a moment later (one request for a burst of messages). A message
    that arrives after the panel closed, before that moment, was never seen: it stays unread, and the
    saved read position stops at the message the dispatcher did see."""
    from realtime.services import publish_event
    from realtime.streams import parse_stream

    author = demo_tx.user("rider-gangnam-01")

    def rider_says(text: str) -> None:
        publish_event(actor=author, stream=parse_stream("chat:gangnam"), event="chat.message", data={"text": text})

    dispatcher = browse.session("dispatch-gangnam").new_page()
    dispatcher.clock.install()  # the read waits on a timer: the test holds it
    dispatcher.goto(BOARD)
    dispatcher.click("#chat-toggle")
    expect(dispatcher.locator("#chat-empty")).to_be_visible()
    dispatcher.clock.pause_at(datetime.now() + timedelta(seconds=1))

    rider_says("Seen before closing")
    expect(messages(dispatcher).last).to_have_text("Seen before closing")
    dispatcher.click("#chat-close")
    rider_says("Sent after closing")
    expect(dispatcher.locator("#chat-total")).to_have_text("1")  # the seen one is read already

    with dispatcher.expect_response("**/chat/chat%3Agangnam/read") as response:
        dispatcher.clock.run_for(1000)
    assert response.value.json()["unread"] == 1
    expect(dispatcher.locator("#chat-total")).to_have_text("1")
    dispatcher.clock.resume()
    dispatcher.reload()
    expect(dispatcher.locator("#chat-total")).to_have_text("1")  # the server kept it unread too


def test_closed_panel_counts_unread_without_building_the_room_list_until_opened(browse, demo_tx):  # noqa: F811
    """A dispatcher's closed panel holds no room buttons (one per rider: hundreds in a real center),
    yet its badge counts unread messages; opening it builds the list with the room's own badge."""
    dispatcher = browse("dispatch-gangnam", BOARD)
    rider = browse("rider-gangnam-01", "/rider/")
    expect(rider.locator("#chat-room-title")).to_have_text("# Gangnam")
    say(rider, "Flat tyre, ten minutes late")

    expect(dispatcher.locator("#chat-total")).to_have_text("1")
    assert dispatcher.locator("#chat-rooms .chat-room").count() == 0
    dispatcher.click("#chat-toggle")
    rooms = rooms_for(demo_tx.user("dispatch-gangnam"))  # the center's room, a DM per rider and colleague
    assert len(rooms) > demo_tx.center().riders.count()
    expect(dispatcher.locator("#chat-rooms .chat-room")).to_have_count(len(rooms))
    expect(messages(dispatcher).last).to_have_text("Flat tyre, ten minutes late")


def test_rider_pages_back_through_history_and_sends_over_http_while_the_socket_is_down(browse, demo_tx):  # noqa: F811
    from realtime.services import publish_event
    from realtime.streams import parse_stream

    author = demo_tx.user("dispatch-gangnam")
    for i in range(1, 121):
        publish_event(actor=author, stream=parse_stream("chat:gangnam"), event="chat.message", data={"text": f"m{i}"})
    proxy = SocketProxy()
    proxy.refusing = True  # the panel's socket cannot connect: it polls and sends over HTTP
    context = browse.session("rider-gangnam-01")
    context.route_web_socket("**/ws/v1/?panel=chat", proxy.handle)
    rider = context.new_page()
    rider.set_viewport_size({"width": 390, "height": 800})
    rider.goto("/rider/")

    expect(messages(rider)).to_have_count(50)
    expect(messages(rider).first).to_have_text("m71")
    for count, oldest in [(100, "m21"), (120, "m1")]:
        rider.locator("#chat-log").evaluate("log => log.scrollTop = 0")
        expect(messages(rider)).to_have_count(count)
        expect(messages(rider).first).to_have_text(oldest)
    expect(messages(rider).last).to_have_text("m120")

    say(rider, "Sent while the socket is down")
    expect(messages(rider).last).to_have_text("Sent while the socket is down")
    expect(rider.locator("#chat-error")).to_be_hidden()
    assert proxy.routes == []  # nothing went over a socket

"""The real-time client (`static/realtime/client.js`) in headless Chromium against a live ASGI server.

Frames the server would never send on its own (duplicates, gaps, stale versions) are injected into
the page's socket through Playwright, so each client rule of protocol.md §3 is exercised directly;
the rest goes through the real services, outbox, Redis, hub and consumer.
"""

from __future__ import annotations

import secrets
import time
from contextlib import contextmanager

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings

from deliveries.services import create_order
from realtime import outbox
from realtime.bus import channel_for, get_redis, message_for
from realtime.models import Event, Stream
from realtime.reconcile import publish_reconcile_frames
from realtime.services import publish_event
from realtime.streams import parse_stream

from .conftest import SocketProxy

pytestmark = pytest.mark.browser

DELIVERIES = "deliveries:gangnam"
SLOW = 20_000  # ms: waits that include a reconnect back-off


# -- helpers --------------------------------------------------------------------------------------


def a_private_stream() -> str:
    """The stream of a new user, which no other test has written to (HQ may follow any user's stream).

    The user must exist: streams of unknown users are refused.
    """
    user = get_user_model().objects.create_user(f"private-{secrets.token_hex(6)}")
    return f"user:{user.pk}"


def notice(stream: str, text: str = "Rain on Teheran-ro") -> int:
    """Commit a notice on `stream` through the real service; return its seq."""
    return publish_event(actor=None, stream=parse_stream(stream), event="notice", data={"text": text}).seq


def take_order(demo) -> int:
    """Take an order through the real service; return its delivery's id."""
    order = create_order(
        actor=None,
        shop_id=demo.shop().pk,
        customer_name="Kim Minjun",
        customer_phone="010-1234-5678",
        address="Teheran-ro 1, Seoul",
        items=[{"name": "Fried chicken", "qty": 1}],
    )
    return order.delivery.pk


@contextmanager
def publishing_lost():
    """Commit events whose publish never reaches Redis: only the stream's history has them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outbox, "publish", lambda events: True)
        yield


def frame_of(stream: str, seq: int) -> dict:
    """The `event` frame of a committed event, as the server sends it."""
    return outbox.frame_dict(Event.objects.get(stream=stream, seq=seq))


def seqs(page, stream: str) -> list[int]:
    return page.evaluate("s => __seen.filter(e => e.stream === s).map(e => e.seq)", stream)


def wait_for_seqs(page, stream: str, expected: list[int], timeout: int = 10_000) -> None:
    """Wait until the page applied as many events of `stream` as expected, then compare them exactly."""
    page.wait_for_function(
        "([s, n]) => __seen.filter(e => e.stream === s).length >= n", arg=[stream, len(expected)], timeout=timeout
    )
    assert seqs(page, stream) == expected


def wait_for_state(page, state: str, timeout: int = 10_000) -> None:
    page.wait_for_function("s => __rt.state === s", arg=state, timeout=timeout)


def states_after(page, first: str) -> list[str]:
    """The client's states from the last time it entered `first` on."""
    states = page.evaluate("() => __states")
    return states[len(states) - 1 - states[::-1].index(first) :]


def wait_until(page, condition, timeout: float = 10.0) -> None:
    """Wait for a condition on the test's side (e.g. frames the proxy saw), letting Playwright relay meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(50)


def event_fetches(page, stream: str) -> list[str]:
    return [url for url in page.api_requests if f"/streams/{stream}/events?" in url.replace("%3A", ":")]


# -- the test page ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_testpage_is_hidden_unless_enabled(client, demo):
    """The client test page is a 404 unless DEBUG or REALTIME_TEST_PAGE is on."""
    client.force_login(demo.user("hq"))
    with override_settings(ROOT_URLCONF="realtime.tests.browser_urls", DEBUG=False, REALTIME_TEST_PAGE=False):
        assert client.get("/dev/realtime-test/").status_code == 404
    with override_settings(ROOT_URLCONF="realtime.tests.browser_urls", DEBUG=False, REALTIME_TEST_PAGE=True):
        response = client.get("/dev/realtime-test/")
    assert response.status_code == 200
    assert b"/static/realtime/client." in response.content  # hashed or not, depending on the storage


def test_client_shows_live_after_snapshot_and_subscribe(open_page, tmp_path):
    """A page loads the snapshot, subscribes from its head and shows Live in an aria-live badge."""
    proxy = SocketProxy()
    page = open_page([DELIVERIES], proxy=proxy)

    badge = page.wait_for_selector("#connection-state[data-state=live]")
    assert badge.inner_text() == "Live"
    assert badge.get_attribute("aria-live") == "polite"
    (reset,) = page.evaluate("() => __resets")
    assert reset["reason"] == "initial"
    (subscribe,) = proxy.frames("subscribe")
    assert subscribe["since"] == reset["head"] and subscribe["epoch"] == reset["epoch"]
    page.screenshot(path=tmp_path / "realtime-test-page.png", full_page=True)


# -- live events --------------------------------------------------------------------------------------


def test_client_applies_committed_events_in_order(open_page, demo_tx):
    """Deliveries created by the real service appear on the page once each, in seq order."""
    page = open_page([DELIVERIES])
    wait_for_state(page, "live")

    first, second = take_order(demo_tx), take_order(demo_tx)

    wait_for_seqs(page, DELIVERIES, [1, 2])
    seen = page.evaluate("() => __seen")
    assert [(e["event"], e["id"], e["version"]) for e in seen] == [
        ("delivery.created", first, 1),
        ("delivery.created", second, 1),
    ]
    page.wait_for_selector(f"#log li[data-seq='2']:has-text('{second}')")


def test_client_publish_resolves_with_ack(open_page):
    """`publish` sends a chat message, resolves with the server's ack, and the message comes back as the next event."""
    page = open_page(["chat:gangnam"])
    wait_for_state(page, "live")

    ack = page.evaluate("() => __rt.publish('chat:gangnam', 'chat.message', {text: 'On my way', client_msg_id: 'm1'})")

    assert (ack["type"], ack["stream"], ack["seq"]) == ("ack", "chat:gangnam", 1)
    wait_for_seqs(page, "chat:gangnam", [1])
    assert Event.objects.get(stream="chat:gangnam", seq=1).data["client_msg_id"] == "m1"


def test_client_drops_duplicate_frames(open_page):
    """An event with seq <= the last applied one is dropped, whether it comes from the hub or the socket."""
    stream, proxy = a_private_stream(), SocketProxy()
    page = open_page([stream], proxy=proxy)
    wait_for_state(page, "live")
    notice(stream)
    notice(stream)
    wait_for_seqs(page, stream, [1, 2])

    proxy.inject(frame_of(stream, 2))
    proxy.inject(frame_of(stream, 1))
    get_redis().publish(
        channel_for(stream), message_for(2, outbox.encode_frame(Event.objects.get(stream=stream, seq=2)))
    )
    notice(stream)

    wait_for_seqs(page, stream, [1, 2, 3])


def test_client_fills_gap_over_http_before_applying_event(open_page):
    """An event beyond last + 1 makes the client fetch the missing range over HTTP and apply it first."""
    stream, proxy = a_private_stream(), SocketProxy()
    page = open_page([stream], proxy=proxy)
    wait_for_state(page, "live")
    notice(stream)
    wait_for_seqs(page, stream, [1])
    with publishing_lost():
        notice(stream)
    notice(stream)

    proxy.inject(frame_of(stream, 3))

    wait_for_seqs(page, stream, [1, 2, 3])
    assert any("since=1&" in url for url in event_fetches(page, stream))
    notice(stream)  # the hub fills 2 and 3 before 4: the client drops them as duplicates
    wait_for_seqs(page, stream, [1, 2, 3, 4])


def test_stream_lost_publish_reaches_page_in_order(open_page):
    """An event whose publish was lost still reaches the page, before the next one, with no duplicate."""
    stream = a_private_stream()
    page = open_page([stream])
    wait_for_state(page, "live")

    with publishing_lost():
        notice(stream)
    notice(stream)

    wait_for_seqs(page, stream, [1, 2])


def test_client_fetches_events_behind_ping_heads(open_page):
    """A server ping whose heads are beyond the last applied seq makes the client fetch the rest; it answers pong."""
    stream, proxy = a_private_stream(), SocketProxy()
    page = open_page([stream], proxy=proxy)
    wait_for_state(page, "live")
    notice(stream)
    wait_for_seqs(page, stream, [1])
    with publishing_lost():
        notice(stream)  # the last event of a burst: no later event reveals its loss

    proxy.inject({"type": "ping", "heads": {stream: 2}})

    wait_for_seqs(page, stream, [1, 2])
    assert {"type": "pong"} in proxy.sent


def test_client_drops_stale_entity_versions(open_page, demo_tx):
    """An event carrying an entity older than the version the page shows is never handed to the page."""
    proxy = SocketProxy()
    page = open_page([DELIVERIES], proxy=proxy)
    wait_for_state(page, "live")
    delivery = take_order(demo_tx)
    wait_for_seqs(page, DELIVERIES, [1])
    created = frame_of(DELIVERIES, 1)

    proxy.inject({**created, "seq": 2, "event": "delivery.updated", "data": {**created["data"], "version": 0}})
    proxy.inject({**created, "seq": 3, "event": "delivery.updated", "data": {**created["data"], "version": 2}})

    wait_for_seqs(page, DELIVERIES, [1, 3])
    assert page.evaluate("() => __seen.map(e => e.version)") == [1, 2]
    assert page.evaluate("() => __subs['deliveries:gangnam'].last") == 3
    assert page.evaluate(f"() => __seen.every(e => e.id === {delivery})")


def test_client_passes_ephemeral_batches_through(open_page):
    """Frames of a positions stream carry no seq: every batch reaches the page as it comes."""
    proxy = SocketProxy()
    page = open_page(["positions:gangnam"], proxy=proxy)
    wait_for_state(page, "live")
    page.wait_for_function("() => __seen.some(e => e.event === 'rider.positions')")
    (subscribe,) = proxy.frames("subscribe")
    assert "since" not in subscribe
    assert page.evaluate("() => __resets") == []
    batch = {
        "type": "event",
        "stream": "positions:gangnam",
        "event": "rider.positions",
        "ts": "2026-11-21T18:02:03.512Z",
    }

    proxy.inject({**batch, "data": {"positions": []}})
    proxy.inject({**batch, "data": {"positions": []}})

    page.wait_for_function("() => __seen.length === 3")
    assert seqs(page, "positions:gangnam") == [None, None, None]


def test_client_without_snapshot_starts_from_subscribed_head(open_page):
    """With snapshot: false the client loads nothing and applies only events after `subscribed.head`."""
    stream, proxy = a_private_stream(), SocketProxy()
    notice(stream)
    page = open_page([stream], proxy=proxy, snapshot="0")
    wait_for_state(page, "live")
    (subscribe,) = proxy.frames("subscribe")
    assert "since" not in subscribe

    notice(stream)

    wait_for_seqs(page, stream, [2])
    assert page.evaluate("() => __resets") == []


def test_client_reports_forbidden_streams(open_page):
    """A stream the user may not read is reported as an error; the others go Live."""
    page = open_page([DELIVERIES, "deliveries:mapo"], user="dispatch-gangnam")
    wait_for_state(page, "live")
    page.wait_for_function("() => __errors.length === 1")
    assert page.evaluate("() => __errors.map(e => e.stream)") == ["deliveries:mapo"]

    page = open_page([DELIVERIES, "deliveries:mapo"], user="dispatch-gangnam", snapshot="0")
    wait_for_state(page, "live")
    page.wait_for_function("() => __errors.length === 1")
    assert page.evaluate("() => __errors[0]") == {
        "stream": "deliveries:mapo",
        "code": "forbidden",
        "message": "not allowed",
    }


# -- losing the socket ---------------------------------------------------------------------------------


def test_client_resumes_with_since_after_drop(open_page):
    """After a 4001 close the client resubscribes with since + epoch, gets what it missed and shows Resynced."""
    stream, proxy = a_private_stream(), SocketProxy()
    page = open_page([stream], proxy=proxy)
    wait_for_state(page, "live")
    notice(stream)
    wait_for_seqs(page, stream, [1])
    (subscribe,) = proxy.frames("subscribe")

    proxy.drop(code=4001)
    notice(stream)
    notice(stream)

    wait_for_seqs(page, stream, [1, 2, 3], timeout=SLOW)
    wait_for_state(page, "live")
    assert states_after(page, "reconnecting")[-2:] == ["resynced", "live"]
    resubscribe = proxy.frames("subscribe")[-1]
    assert resubscribe["since"] >= 1 and resubscribe["epoch"] == subscribe["epoch"]
    notice(stream)
    wait_for_seqs(page, stream, [1, 2, 3, 4])


def test_client_polls_while_socket_is_down(open_page):
    """While no socket can be opened the client polls /events (state Polling), and stops once it is back."""
    stream, proxy = a_private_stream(), SocketProxy()
    page = open_page([stream], proxy=proxy, poll="500")
    wait_for_state(page, "live")
    notice(stream)
    wait_for_seqs(page, stream, [1])

    proxy.refusing = True
    proxy.drop()
    notice(stream)
    notice(stream)

    wait_for_seqs(page, stream, [1, 2, 3])
    wait_for_state(page, "polling")
    assert page.inner_text("#connection-state") == "Polling"
    proxy.refusing = False
    wait_for_state(page, "live", timeout=SLOW)
    assert states_after(page, "reconnecting")[-2:] == ["resynced", "live"]
    polls = len(event_fetches(page, stream))
    page.wait_for_timeout(1500)  # three poll intervals: none may happen with the socket back
    assert len(event_fetches(page, stream)) == polls
    notice(stream)
    wait_for_seqs(page, stream, [1, 2, 3, 4])


def test_client_catches_up_after_offline(open_page, demo_tx):
    """Events committed while the browser is offline show up after it comes back: in order, once, then Resynced."""
    stream, proxy = a_private_stream(), SocketProxy()
    page = open_page([stream, DELIVERIES], proxy=proxy)
    wait_for_state(page, "live")
    notice(stream)
    wait_for_seqs(page, stream, [1])

    page.context.set_offline(True)
    proxy.refusing = True  # offline emulation does not close or refuse WebSockets in Chromium
    proxy.drop(code=4002)
    wait_for_state(page, "reconnecting")
    notice(stream)
    notice(stream)
    delivery = take_order(demo_tx)
    wait_until(page, lambda: any(stream in url for url in page.failed_api_requests))  # a poll, offline
    assert page.evaluate("() => __rt.state") == "reconnecting"
    assert seqs(page, stream) == [1]
    page.context.set_offline(False)
    proxy.refusing = False

    wait_for_seqs(page, stream, [1, 2, 3], timeout=SLOW)
    wait_for_seqs(page, DELIVERIES, [1])
    wait_for_state(page, "live")
    assert states_after(page, "reconnecting")[-2:] == ["resynced", "live"]
    assert page.evaluate("() => __seen.find(e => e.stream === 'deliveries:gangnam').id") == delivery


# -- reset and reconcile -----------------------------------------------------------------------------------


def test_client_reloads_snapshot_on_reset(open_page, demo_tx):
    """A resume the server refuses (the stream's epoch changed) reloads the snapshot and continues from its head."""
    page = open_page([DELIVERIES])
    wait_for_state(page, "live")
    take_order(demo_tx)
    wait_for_seqs(page, DELIVERIES, [1])

    Stream.objects.filter(name=DELIVERIES).update(epoch="restored")
    page.evaluate("() => __rt.reconnect()")

    page.wait_for_function("() => __resets.length === 2")
    reset = page.evaluate("() => __resets[1]")
    assert (reset["reason"], reset["epoch"], reset["head"], reset["items"]) == ("history_expired", "restored", 1, 1)
    page.wait_for_selector("#resets li[data-reason=history_expired]")
    wait_for_state(page, "live", timeout=SLOW)
    take_order(demo_tx)
    wait_for_seqs(page, DELIVERIES, [1, 2])


def test_client_reloads_snapshot_when_polling_finds_reset(open_page):
    """A poll answered with `reset: true` reloads the snapshot; polling then continues from its head."""
    stream, proxy = a_private_stream(), SocketProxy()
    page = open_page([stream], proxy=proxy, poll="500")
    wait_for_state(page, "live")
    notice(stream)
    wait_for_seqs(page, stream, [1])

    proxy.refusing = True
    proxy.drop()
    Stream.objects.filter(name=stream).update(epoch="restored")

    page.wait_for_function("() => __resets.some(r => r.reason === 'history')")
    notice(stream)
    wait_for_seqs(page, stream, [1, 2])
    assert page.evaluate("() => __resets.at(-1).epoch") == "restored"


def test_client_reconcile_fetches_missing_events(open_page, demo_tx):
    """A reconcile frame with a head beyond the last applied seq makes the client fetch the missing events."""
    page = open_page([DELIVERIES])
    wait_for_state(page, "live")
    with publishing_lost():
        delivery = take_order(demo_tx)

    publish_reconcile_frames()

    wait_for_seqs(page, DELIVERIES, [1])
    assert page.evaluate("() => __seen[0].id") == delivery
    assert page.evaluate("() => __reconciles") == []  # once caught up, every version matches


def test_client_reconcile_reports_stale_versions(open_page, demo_tx):
    """A reconcile frame listing a version other than the one shown hands that id to onReconcile."""
    proxy = SocketProxy()
    page = open_page([DELIVERIES], proxy=proxy)
    wait_for_state(page, "live")
    stale, current = take_order(demo_tx), take_order(demo_tx)
    wait_for_seqs(page, DELIVERIES, [1, 2])
    epoch = Stream.objects.get(name=DELIVERIES).epoch

    proxy.inject(
        {"type": "reconcile", "stream": DELIVERIES, "epoch": epoch, "head": 2, "versions": {stale: 3, current: 1}}
    )

    page.wait_for_function("() => __reconciles.length === 1")
    assert page.evaluate("() => __reconciles[0]") == {"stream": DELIVERIES, "head": 2, "stale": [str(stale)]}


def test_client_pings_silent_server_and_replaces_dead_socket(open_page):
    """After a silence the client pings; when nothing answers it drops the socket and resumes on a new one."""
    stream, proxy = a_private_stream(), SocketProxy()
    page = open_page([stream], proxy=proxy, silence="1000", ping_timeout="3000")
    wait_for_state(page, "live")

    wait_until(page, lambda: proxy.frames("ping") and proxy.frames("pong", received=True))
    assert page.evaluate("() => __rt.state") == "live"  # the server answered
    proxy.current.silent = True
    notice(stream)

    page.wait_for_function("() => __states.includes('resynced')", timeout=SLOW)
    assert len(proxy.routes) == 2
    assert proxy.frames("subscribe")[-1]["since"] == 0
    wait_for_seqs(page, stream, [1])

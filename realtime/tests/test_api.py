"""HTTP side of the real-time protocol (protocol.md §2, §4): snapshot, events and publish.

Snapshot reads run in their own REPEATABLE READ transaction, which cannot start inside a test's
rollback transaction: tests that read a snapshot successfully use the transactional database
(`demo_tx`); refusals are answered before any read and use the faster `demo`.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from core.models import IdempotencyRecord
from deliveries import services as deliveries_services
from deliveries.models import Delivery, Order
from realtime import outbox
from realtime.bus import channel_for, get_redis, message_for
from realtime.events import DeliveryData, OrderData, RiderData, delivery_data, order_data, rider_data
from realtime.models import Event, Stream
from realtime.streams import parse_stream
from realtime.tests.wsclient import WsClients, in_thread, publish_marker
from riders.models import Rider
from riders.positions import current_positions, record_fix
from riders.services import set_rider_duty
from tests.support import bearer, make_token, take_order

API = "/api/v1"
CENTERS = ("gangnam", "mapo", "songpa")
CENTER_NAMESPACES = ("deliveries", "orders", "riders", "positions", "chat")


# --- helpers -------------------------------------------------------------------------------


def logged_in(demo, username: str) -> Client:
    client = Client()
    client.force_login(demo.user(username))
    return client


def post_json(client, url: str, body, **headers):
    return client.post(url, body, content_type="application/json", headers=headers)


def publish_body(stream: str = "chat:gangnam", event: str = "chat.message", data=None) -> dict:
    namespace, room = stream.split(":")
    return {"namespace": namespace, "room": room, "event": event, "data": {"text": "hello"} if data is None else data}


def snapshot_url(stream: str) -> str:
    return f"{API}/streams/{stream}/snapshot"


def events_url(stream: str, **query) -> str:
    params = "&".join(f"{key}={value}" for key, value in query.items())
    return f"{API}/streams/{stream}/events" + (f"?{params}" if params else "")


def position(stream: str) -> tuple[str, int]:
    return outbox.stream_position(stream)


def notices(count: int, stream: str = "broadcast:all") -> list[Event]:
    from realtime.services import publish_event

    return [
        publish_event(actor=None, stream=parse_stream(stream), event="notice", data={"text": f"notice {i}"})
        for i in range(count)
    ]


def user_room(demo, username: str) -> str:
    return f"user:{demo.user(username).pk}"


# --- GET /streams/{stream}/snapshot: content -----------------------------------------------


def test_snapshot_deliveries_lists_todays_and_open_deliveries_newest_first(demo_tx):
    """deliveries:<c> holds today's deliveries and older open ones, newest first, as DeliveryData, with head."""
    older_open, older_done, *today = (take_order(demo_tx) for _ in range(5))
    take_order(demo_tx, center="mapo")
    rider = set_rider_duty(actor=None, rider_id=demo_tx.rider("gangnam", 1).pk, on_duty=True)
    done = older_done.delivery.pk
    deliveries_services.assign_delivery(actor=None, delivery_id=done, rider_id=rider.pk)
    deliveries_services.pick_up_delivery(actor=None, delivery_id=done)
    deliveries_services.deliver_delivery(actor=None, delivery_id=done)
    yesterday = timezone.now() - timedelta(days=1, hours=1)
    Delivery.objects.filter(pk__in=[older_open.delivery.pk, done]).update(created_at=yesterday)

    response = logged_in(demo_tx, "dispatch-gangnam").get(snapshot_url("deliveries:gangnam"))

    assert response.status_code == 200
    body = response.json()
    epoch, head = position("deliveries:gangnam")
    assert (body["stream"], body["epoch"], body["head"]) == ("deliveries:gangnam", epoch, head)
    assert head == Event.objects.filter(stream="deliveries:gangnam").count()
    expected = [o.delivery.pk for o in reversed(today)] + [older_open.delivery.pk]
    assert [item["id"] for item in body["items"]] == expected
    stored = Delivery.objects.select_related("order", "center", "shop", "rider").in_bulk(expected)
    assert body["items"] == [delivery_data(stored[pk]).model_dump(mode="json") for pk in expected]
    for item in body["items"]:
        DeliveryData.model_validate(item)


def test_snapshot_orders_lists_todays_orders_newest_first(demo_tx):
    """orders:<c> holds the center's orders of today, newest first, as OrderData."""
    orders = [take_order(demo_tx) for _ in range(3)]
    take_order(demo_tx, center="songpa")

    body = logged_in(demo_tx, "callcenter").get(snapshot_url("orders:gangnam")).json()

    assert body["head"] == position("orders:gangnam")[1] == 3
    assert [item["id"] for item in body["items"]] == [o.pk for o in reversed(orders)]
    stored = Order.objects.select_related("center", "shop", "delivery").in_bulk([o.pk for o in orders])
    assert body["items"] == [order_data(stored[o.pk]).model_dump(mode="json") for o in reversed(orders)]
    for item in body["items"]:
        OrderData.model_validate(item)


def test_snapshot_riders_lists_every_rider_of_the_center(demo_tx):
    """riders:<c> holds each of the center's riders as RiderData, with the stream's head."""
    set_rider_duty(actor=None, rider_id=demo_tx.rider("gangnam", 2).pk, on_duty=True)

    body = logged_in(demo_tx, "dispatch-gangnam").get(snapshot_url("riders:gangnam")).json()

    riders = Rider.objects.filter(center__code="gangnam").select_related("center")
    assert body["head"] == position("riders:gangnam")[1] == 1
    assert sorted(item["id"] for item in body["items"]) == sorted(r.pk for r in riders)
    by_id = {item["id"]: item for item in body["items"]}
    assert all(by_id[r.pk] == rider_data(r).model_dump(mode="json") for r in riders)
    assert by_id[demo_tx.rider("gangnam", 2).pk]["on_duty"] is True
    for item in body["items"]:
        RiderData.model_validate(item)


def test_snapshot_chat_holds_the_latest_messages_oldest_first(demo_tx):
    """chat:<c> holds its latest 50 messages (from the chat table), oldest first, ending at head."""
    from realtime.services import publish_event

    stream = parse_stream("chat:gangnam")
    for i in range(52):
        publish_event(actor=None, stream=stream, event="chat.message", data={"text": f"message {i}"})

    body = logged_in(demo_tx, "rider-gangnam-01").get(snapshot_url("chat:gangnam")).json()

    assert body["head"] == 52
    assert [item["seq"] for item in body["items"]] == list(range(3, 53))
    events = Event.objects.filter(stream="chat:gangnam", seq__gte=3).order_by("seq")
    assert [(i["seq"], i["data"]) for i in body["items"]] == [(e.seq, e.data) for e in events]
    assert body["items"][-1]["data"]["text"] == "message 51"


def test_snapshot_user_holds_the_users_own_events(demo_tx):
    """user:<self> holds the user's private events (a rider's assignment.new)."""
    rider = set_rider_duty(actor=None, rider_id=demo_tx.rider("gangnam", 3).pk, on_duty=True)
    order = take_order(demo_tx)
    deliveries_services.assign_delivery(actor=None, delivery_id=order.delivery.pk, rider_id=rider.pk)
    stream = f"user:{rider.user_id}"

    body = logged_in(demo_tx, "rider-gangnam-03").get(snapshot_url(stream)).json()

    assert (body["stream"], body["head"]) == (stream, 1)
    assert [(item["event"], item["data"]["delivery"]["id"]) for item in body["items"]] == [
        ("assignment.new", order.delivery.pk)
    ]


def test_snapshot_broadcast_holds_the_notices(demo_tx):
    """broadcast:all holds the notices, for every role."""
    notices(2)
    body = logged_in(demo_tx, "callcenter").get(snapshot_url("broadcast:all")).json()
    assert body["head"] == 2
    assert [item["data"]["text"] for item in body["items"]] == ["notice 0", "notice 1"]
    assert [item["event"] for item in body["items"]] == ["notice", "notice"]


def test_snapshot_positions_has_current_positions_without_epoch_or_head(demo):
    """positions:<c> is ephemeral: epoch and head are null, items are the riders' current positions."""
    rider = demo.rider("gangnam", 4)
    record_fix(rider_id=rider.pk, center_code="gangnam", lat=37.5, lng=127.03, ts=timezone.now())

    response = logged_in(demo, "dispatch-gangnam").get(snapshot_url("positions:gangnam"))

    assert response.status_code == 200
    body = response.json()
    assert (body["stream"], body["epoch"], body["head"]) == ("positions:gangnam", None, None)
    assert body["items"] == current_positions("gangnam")
    mine = [p for p in body["items"] if p["rider"] == rider.pk]
    assert [(p["lat"], p["lng"]) for p in mine] == [(37.5, 127.03)]
    assert not Stream.objects.filter(name="positions:gangnam").exists()


# --- GET /streams/{stream}/snapshot: authorization ------------------------------------------


ALLOWED = {
    "hq": [f"{ns}:{c}" for ns in CENTER_NAMESPACES for c in CENTERS] + ["broadcast:all", "user:SELF", "user:OTHER"],
    "dispatch-gangnam": [f"{ns}:gangnam" for ns in CENTER_NAMESPACES] + ["broadcast:all", "user:SELF"],
    "callcenter": [f"{ns}:{c}" for ns in ("orders", "deliveries") for c in CENTERS] + ["broadcast:all", "user:SELF"],
    "rider-gangnam-01": ["chat:gangnam", "broadcast:all", "user:SELF"],
}

REFUSED = [
    ("dispatch-gangnam", "deliveries:mapo"),
    ("dispatch-gangnam", "orders:songpa"),
    ("dispatch-gangnam", "riders:mapo"),
    ("dispatch-gangnam", "positions:mapo"),
    ("dispatch-gangnam", "chat:mapo"),
    ("dispatch-gangnam", "user:OTHER"),
    ("callcenter", "riders:gangnam"),
    ("callcenter", "positions:gangnam"),
    ("callcenter", "chat:nowhere"),
    ("callcenter", "user:OTHER"),
    ("rider-gangnam-01", "deliveries:gangnam"),
    ("rider-gangnam-01", "orders:gangnam"),
    ("rider-gangnam-01", "riders:gangnam"),
    ("rider-gangnam-01", "positions:gangnam"),
    ("rider-gangnam-01", "chat:mapo"),
    ("rider-gangnam-01", "user:OTHER"),
]


def concrete(demo, username: str, stream: str) -> str:
    """Replace the placeholders: user:SELF is the caller's room, user:OTHER somebody else's."""
    other = "dispatch-mapo" if username != "dispatch-mapo" else "hq"
    return stream.replace("user:SELF", user_room(demo, username)).replace("user:OTHER", user_room(demo, other))


@pytest.mark.parametrize("username", list(ALLOWED))
def test_snapshot_answers_every_stream_the_role_may_read(demo_tx, username):
    """Each role reads exactly the streams protocol §2 lets it subscribe to (HQ: every stream)."""
    client = logged_in(demo_tx, username)
    statuses = {}
    for stream in ALLOWED[username]:
        name = concrete(demo_tx, username, stream)
        statuses[stream] = client.get(snapshot_url(name)).status_code
    assert statuses == dict.fromkeys(ALLOWED[username], 200)


@pytest.mark.parametrize(("username", "stream"), REFUSED)
def test_snapshot_refuses_streams_outside_the_role(demo, username, stream):
    """A stream the role may not subscribe to is 403 with a JSON detail, and creates no stream row."""
    name = concrete(demo, username, stream)
    response = logged_in(demo, username).get(snapshot_url(name))
    assert response.status_code == 403
    assert response.json() == {"detail": "not allowed"}
    assert not Stream.objects.filter(name=name).exists()


@pytest.mark.parametrize("url", [snapshot_url, lambda s: events_url(s, since=0)], ids=["snapshot", "events"])
def test_snapshot_unknown_center_refusal_matches_foreign_center(demo, url):
    """For a dispatcher, an unknown center and a foreign one (with history) are refused identically."""
    take_order(demo, center="mapo")
    client = logged_in(demo, "dispatch-gangnam")
    foreign = client.get(url("deliveries:mapo"))
    unknown = client.get(url("deliveries:nowhere"))
    assert foreign.status_code == unknown.status_code == 403
    assert foreign.json() == unknown.json()
    assert foreign["Content-Type"] == unknown["Content-Type"]


@pytest.mark.parametrize(
    "stream",
    [
        "deliveries",
        "deliveries:",
        "deliveries:Gangnam",
        "deliveries:gang nam",
        "deliveries:gangnam:x",
        "nope:gangnam",
        "user:abc",
        "user:0",
        "broadcast:gangnam",
        ":gangnam",
        "deliveries:" + "a" * 51,
    ],
)
def test_snapshot_malformed_stream_is_404(demo, stream):
    """A name that is not a stream of the protocol is 404 (even for HQ), with a JSON detail."""
    response = logged_in(demo, "hq").get(snapshot_url(stream))
    assert response.status_code == 404
    assert set(response.json()) == {"detail"}


def test_snapshot_anonymous_is_401(demo, client):
    """Without a session or token the snapshot is 401, for an existing stream as for any other."""
    for stream in ("deliveries:gangnam", "broadcast:all", "positions:gangnam"):
        response = client.get(snapshot_url(stream))
        assert response.status_code == 401
        assert set(response.json()) == {"detail"}


def test_snapshot_token_reads_only_its_scoped_streams(demo_tx, client):
    """A token reads the streams it is scoped to (200) and no other (403)."""
    _, raw = make_token(streams=["deliveries:gangnam", "chat:*"])
    for stream in ("deliveries:gangnam", "chat:gangnam", "chat:mapo"):
        assert client.get(snapshot_url(stream), headers=bearer(raw)).status_code == 200, stream
    for stream in ("deliveries:mapo", "orders:gangnam", "broadcast:all", "positions:gangnam"):
        response = client.get(snapshot_url(stream), headers=bearer(raw))
        assert response.status_code == 403, stream
        assert response.json() == {"detail": "not allowed"}


def test_snapshot_revoked_token_is_401(demo, client):
    """A revoked token no longer reads anything."""
    _, raw = make_token(streams=["*"], revoked=True)
    assert client.get(snapshot_url("deliveries:gangnam"), headers=bearer(raw)).status_code == 401


# --- GET /streams/{stream}/events -----------------------------------------------------------


def test_events_returns_the_events_after_since_in_order(demo):
    """Events after `since` come in seq order as protocol event objects, with epoch, head and reset false."""
    rows = notices(5)
    epoch, head = position("broadcast:all")

    response = logged_in(demo, "dispatch-gangnam").get(events_url("broadcast:all", since=2, epoch=epoch))

    assert response.status_code == 200
    body = response.json()
    assert body == {
        "stream": "broadcast:all",
        "epoch": epoch,
        "head": head,
        "events": [outbox.frame_dict(row) for row in rows[2:]],
        "reset": False,
    }
    assert [e["seq"] for e in body["events"]] == [3, 4, 5]
    assert set(body["events"][0]) == {"type", "stream", "seq", "event", "ts", "data"}


def test_events_since_zero_returns_the_whole_history(demo):
    """since=0 with the current epoch gives every event from seq 1."""
    notices(3)
    epoch, _ = position("broadcast:all")
    body = logged_in(demo, "hq").get(events_url("broadcast:all", since=0, epoch=epoch)).json()
    assert ([e["seq"] for e in body["events"]], body["reset"]) == ([1, 2, 3], False)


def test_events_since_head_is_empty_without_reset(demo):
    """A client that is up to date gets no events and no reset, also on a stream never written."""
    notices(2)
    client = logged_in(demo, "hq")
    epoch, head = position("broadcast:all")
    body = client.get(events_url("broadcast:all", since=head, epoch=epoch)).json()
    assert (body["events"], body["reset"], body["head"]) == ([], False, 2)
    fresh_epoch, _ = position("chat:songpa")
    body = client.get(events_url("chat:songpa", since=0, epoch=fresh_epoch)).json()
    assert (body["events"], body["reset"], body["head"]) == ([], False, 0)


def test_events_wrong_epoch_resets(demo):
    """An epoch other than the stream's gives reset true, no events, and the current epoch and head."""
    notices(3)
    epoch, head = position("broadcast:all")
    body = logged_in(demo, "hq").get(events_url("broadcast:all", since=1, epoch="not-" + epoch)).json()
    assert body == {"stream": "broadcast:all", "epoch": epoch, "head": head, "events": [], "reset": True}


def test_events_without_epoch_resets(demo):
    """Without an epoch `since` cannot be trusted: reset true, with the epoch to continue in."""
    notices(2)
    epoch, head = position("broadcast:all")
    body = logged_in(demo, "hq").get(events_url("broadcast:all", since=1)).json()
    assert (body["events"], body["reset"], body["epoch"], body["head"]) == ([], True, epoch, head)


def test_events_since_beyond_head_resets(demo):
    """A `since` past the head (a restored database) gives reset true and no events."""
    notices(2)
    epoch, head = position("broadcast:all")
    body = logged_in(demo, "hq").get(events_url("broadcast:all", since=head + 1, epoch=epoch)).json()
    assert (body["events"], body["reset"], body["head"]) == ([], True, head)


def test_events_pruned_history_resets(demo):
    """When history no longer holds since+1 the answer is reset; from the oldest kept event on it is exact."""
    notices(5)
    epoch, _ = position("broadcast:all")
    Event.objects.filter(stream="broadcast:all", seq__lte=2).delete()
    client = logged_in(demo, "hq")
    for since in (0, 1):
        body = client.get(events_url("broadcast:all", since=since, epoch=epoch)).json()
        assert (body["events"], body["reset"], body["head"]) == ([], True, 5), since
    body = client.get(events_url("broadcast:all", since=2, epoch=epoch)).json()
    assert ([e["seq"] for e in body["events"]], body["reset"]) == ([3, 4, 5], False)


def test_events_fully_pruned_history_resets(demo):
    """With every event pruned, any since below the head resets; since == head is still exact."""
    notices(3)
    epoch, _ = position("broadcast:all")
    outbox.prune_history(before=timezone.now() + timedelta(seconds=1))
    client = logged_in(demo, "hq")
    assert client.get(events_url("broadcast:all", since=2, epoch=epoch)).json()["reset"] is True
    body = client.get(events_url("broadcast:all", since=3, epoch=epoch)).json()
    assert (body["events"], body["reset"], body["head"]) == ([], False, 3)


def test_events_limit_is_respected_and_pages_follow_with_since(demo):
    """`limit` caps the page; asking again from the last seq returns the rest, without gap or duplicate."""
    notices(7)
    epoch, head = position("broadcast:all")
    client = logged_in(demo, "hq")
    seen, since, pages = [], 0, 0
    while True:
        body = client.get(events_url("broadcast:all", since=since, epoch=epoch, limit=3)).json()
        assert body["reset"] is False
        assert len(body["events"]) <= 3
        if not body["events"]:
            break
        seen += [e["seq"] for e in body["events"]]
        since, pages = body["events"][-1]["seq"], pages + 1
    assert seen == list(range(1, head + 1))
    assert pages == 3


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"since": -1},
        {"since": "abc"},
        {"since": 1.5},
        {"since": 0, "limit": 0},
        {"since": 0, "limit": 1001},
        {"since": 0, "limit": "x"},
    ],
    ids=["missing", "negative", "text", "fraction", "limit-0", "limit-too-big", "limit-text"],
)
def test_events_invalid_query_is_422(demo, query):
    """A missing or invalid `since` (or `limit`) is 422 with a JSON detail, never a 500."""
    response = logged_in(demo, "hq").get(events_url("broadcast:all", **query))
    assert response.status_code == 422
    assert "detail" in response.json()


def test_events_ephemeral_stream_is_404(demo):
    """positions:<c> keeps no history: its events are 404 for a caller who may read it."""
    response = logged_in(demo, "dispatch-gangnam").get(events_url("positions:gangnam", since=0))
    assert response.status_code == 404
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize(("username", "stream"), REFUSED)
def test_events_refuses_streams_outside_the_role(demo, username, stream):
    """The events endpoint authorizes like the snapshot: 403 with the same detail."""
    response = logged_in(demo, username).get(events_url(concrete(demo, username, stream), since=0))
    assert response.status_code == 403
    assert response.json() == {"detail": "not allowed"}


def test_events_allows_what_snapshot_allows(demo):
    """Every logged stream a role may read answers its events (200)."""
    for username, streams in ALLOWED.items():
        client = logged_in(demo, username)
        for stream in streams:
            if stream.startswith("positions:"):
                continue
            response = client.get(events_url(concrete(demo, username, stream), since=0))
            assert response.status_code == 200, (username, stream)


def test_events_anonymous_malformed_and_token_scope(demo, client):
    """Anonymous is 401, a malformed name 404, a token reads only its scoped streams."""
    assert client.get(events_url("broadcast:all", since=0)).status_code == 401
    assert logged_in(demo, "hq").get(events_url("deliveries:Gangnam", since=0)).status_code == 404
    _, raw = make_token(streams=["deliveries:gangnam"])
    assert client.get(events_url("deliveries:gangnam", since=0), headers=bearer(raw)).status_code == 200
    assert client.get(events_url("deliveries:mapo", since=0), headers=bearer(raw)).status_code == 403
    _, revoked = make_token("old", streams=["*"], revoked=True)
    assert client.get(events_url("deliveries:gangnam", since=0), headers=bearer(revoked)).status_code == 401


# --- parity: HTTP events == WebSocket replay -----------------------------------------------


@pytest.fixture
async def ws(demo_tx):
    clients = WsClients()
    yield clients
    await clients.shutdown()


def http_events(username: str, stream: str, **query) -> dict:
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    response = client.get(events_url(stream, **query))
    assert response.status_code == 200, response.content
    return response.json()


def create_orders(demo, count: int) -> None:
    for _ in range(count):
        take_order(demo)


@pytest.mark.parametrize("since", [0, 2, 5])
async def test_events_equal_the_websocket_replay(ws, demo_tx, monkeypatch, since):
    """For one stream and since, the HTTP events are exactly the event frames of the WebSocket replay."""
    await in_thread(create_orders, demo_tx, 5)
    epoch, head = await in_thread(position, "deliveries:gangnam")
    calls = []
    read_history = outbox.read_history

    def spy(stream, **kwargs):
        calls.append((stream, kwargs["since"], kwargs["epoch"]))
        return read_history(stream, **kwargs)

    monkeypatch.setattr(outbox, "read_history", spy)

    body = await in_thread(http_events, "dispatch-gangnam", "deliveries:gangnam", since=since, epoch=epoch)
    client = await ws.connect("dispatch-gangnam")
    subscribed = await client.subscribe("deliveries:gangnam", since=since, epoch=epoch)
    replay = await client.events(head - since)

    assert subscribed["recovered"] is True
    assert (subscribed["epoch"], subscribed["head"]) == (body["epoch"], body["head"]) == (epoch, head)
    assert body["reset"] is False
    assert replay == body["events"]
    assert [e["seq"] for e in replay] == list(range(since + 1, head + 1))
    assert await client.barrier() == []
    # One code path: both sides asked outbox.read_history the same question.
    assert calls == [("deliveries:gangnam", since, epoch)] * 2


@pytest.mark.parametrize("case", ["wrong-epoch", "pruned", "beyond-head"])
async def test_events_reset_matches_the_websocket_reset(ws, demo_tx, case):
    """Where HTTP answers reset, the WebSocket answers subscribed (not recovered) then reset, same epoch and head."""
    await in_thread(create_orders, demo_tx, 4)
    epoch, head = await in_thread(position, "deliveries:gangnam")
    since = {"wrong-epoch": 1, "pruned": 1, "beyond-head": head + 3}[case]
    if case == "wrong-epoch":
        epoch = "x" + epoch
    if case == "pruned":
        await in_thread(lambda: Event.objects.filter(stream="deliveries:gangnam", seq__lte=2).delete())

    body = await in_thread(http_events, "dispatch-gangnam", "deliveries:gangnam", since=since, epoch=epoch)
    client = await ws.connect("dispatch-gangnam")
    subscribed = await client.subscribe("deliveries:gangnam", since=since, epoch=epoch)
    reset = await client.recv()

    assert (body["reset"], body["events"]) == (True, [])
    assert subscribed["recovered"] is False
    assert reset == {
        "type": "reset",
        "stream": "deliveries:gangnam",
        "epoch": body["epoch"],
        "head": body["head"],
        "reason": "history_expired",
    }
    assert await client.barrier() == []


# --- POST /publish: sessions ------------------------------------------------------------------


def test_publish_dispatcher_chat_of_own_center_is_logged_with_server_author(demo):
    """A dispatcher's chat message is 202 {stream, seq}; the Event row carries the server-filled author."""
    user = demo.user("dispatch-gangnam")
    client = logged_in(demo, "dispatch-gangnam")
    before = position("chat:gangnam")[1]

    response = post_json(
        client, f"{API}/publish", publish_body(data={"text": "Rain on Teheran-ro", "client_msg_id": "m1"})
    )

    assert response.status_code == 202
    assert response.json() == {"stream": "chat:gangnam", "seq": before + 1}
    event = Event.objects.get(stream="chat:gangnam", seq=before + 1)
    assert event.name == "chat.message"
    assert event.data["text"] == "Rain on Teheran-ro"
    assert event.data["client_msg_id"] == "m1"
    assert event.data["author_id"] == user.pk
    assert event.data["author_name"] == (user.get_full_name() or user.username)
    assert event.data["id"] and event.data["sent_at"]
    assert position("chat:gangnam")[1] == before + 1


def test_publish_author_fields_in_data_do_not_override_the_server(demo):
    """Author fields sent by the client are not trusted: the stored author is the caller."""
    user = demo.user("rider-gangnam-01")
    body = publish_body(data={"text": "hi", "author_id": 1, "author_name": "HQ", "id": "forged"})
    response = post_json(logged_in(demo, "rider-gangnam-01"), f"{API}/publish", body)
    assert response.status_code == 202
    data = Event.objects.get(stream="chat:gangnam", seq=response.json()["seq"]).data
    assert (data["author_id"], data["author_name"]) == (user.pk, user.get_full_name() or user.username)
    assert data["id"] != "forged"


@pytest.mark.parametrize(
    ("username", "stream", "event", "data"),
    [
        ("dispatch-gangnam", "chat:gangnam", "chat.message", {"text": "hi"}),
        ("rider-gangnam-01", "chat:gangnam", "chat.message", {"text": "hi"}),
        ("hq", "chat:mapo", "chat.message", {"text": "hi"}),
        ("hq", "broadcast:all", "notice", {"text": "Heavy snow: expect delays", "level": "warning"}),
        ("dispatch-gangnam", "user:RIDER-GANGNAM", "notice", {"text": "Come back to the center"}),
        ("dispatch-gangnam", "user:RIDER-GANGNAM", "chat.message", {"text": "Call me"}),
    ],
)
def test_publish_session_allowed_by_role_is_202(demo, username, stream, event, data):
    """Each role publishes where protocol §2 allows it: 202 with the stream and its new seq."""
    stream = stream.replace("user:RIDER-GANGNAM", user_room(demo, "rider-gangnam-05"))
    before = position(stream)[1]
    response = post_json(logged_in(demo, username), f"{API}/publish", publish_body(stream, event, data))
    assert response.status_code == 202
    assert response.json() == {"stream": stream, "seq": before + 1}
    assert Event.objects.filter(stream=stream, seq=before + 1, name=event).exists()


@pytest.mark.parametrize(
    ("username", "stream", "event"),
    [
        ("dispatch-gangnam", "chat:mapo", "chat.message"),
        ("dispatch-gangnam", "chat:nowhere", "chat.message"),
        ("dispatch-gangnam", "broadcast:all", "notice"),
        ("dispatch-gangnam", "user:RIDER-MAPO", "notice"),
        ("dispatch-gangnam", "user:HQ", "notice"),
        ("callcenter", "chat:gangnam", "chat.message"),
        ("callcenter", "broadcast:all", "notice"),
        ("rider-gangnam-01", "chat:mapo", "chat.message"),
        ("rider-gangnam-01", "broadcast:all", "notice"),
        ("rider-gangnam-01", "user:RIDER-GANGNAM", "chat.message"),
    ],
)
def test_publish_session_outside_role_is_403(demo, username, stream, event):
    """Publishing where the role may not is 403; nothing is logged."""
    stream = stream.replace("user:RIDER-MAPO", user_room(demo, "rider-mapo-01"))
    stream = stream.replace("user:RIDER-GANGNAM", user_room(demo, "rider-gangnam-05"))
    stream = stream.replace("user:HQ", user_room(demo, "hq"))
    events = Event.objects.count()
    data = {"text": "hi"}
    response = post_json(logged_in(demo, username), f"{API}/publish", publish_body(stream, event, data))
    assert response.status_code == 403
    assert set(response.json()) == {"detail"}
    assert Event.objects.count() == events


def test_publish_anonymous_is_401(demo, client):
    """Without a session or token publishing is 401 and logs nothing."""
    events = Event.objects.count()
    response = post_json(client, f"{API}/publish", publish_body())
    assert response.status_code == 401
    assert Event.objects.count() == events


def test_publish_session_without_csrf_is_403(demo):
    """A browser session must send the CSRF token with a publish."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(demo.user("dispatch-gangnam"))
    events = Event.objects.count()
    assert post_json(client, f"{API}/publish", publish_body()).status_code == 403
    assert Event.objects.count() == events


# --- POST /publish: tokens --------------------------------------------------------------------


def test_publish_token_in_scope_is_202_authored_by_the_token(demo, client):
    """A token with the publish command and chat:gangnam publishes there; the author names the token."""
    _, raw = make_token("pos-gangnam", commands=["publish"], streams=["chat:gangnam"])
    response = post_json(client, f"{API}/publish", publish_body(), **bearer(raw))
    assert response.status_code == 202
    assert response.json()["stream"] == "chat:gangnam"
    data = Event.objects.get(stream="chat:gangnam", seq=response.json()["seq"]).data
    assert (data["author_id"], data["author_name"]) == (None, "API token pos-gangnam")


@pytest.mark.parametrize(
    ("stream", "event"),
    [("chat:mapo", "chat.message"), ("broadcast:all", "notice"), ("orders:gangnam", "order.notice")],
)
def test_publish_token_outside_its_streams_is_403(demo, client, stream, event):
    """A token publishing to another room or namespace than its scope is 403."""
    _, raw = make_token(commands=["publish"], streams=["chat:gangnam"])
    events = Event.objects.count()
    data = {"text": "hi"}
    response = post_json(client, f"{API}/publish", publish_body(stream, event, data), **bearer(raw))
    assert response.status_code == 403
    assert Event.objects.count() == events


def test_publish_token_without_publish_command_is_403(demo, client):
    """A token scoped to the stream but without the "publish" command is 403."""
    _, raw = make_token(commands=["orders.create"], streams=["chat:gangnam"])
    events = Event.objects.count()
    assert post_json(client, f"{API}/publish", publish_body(), **bearer(raw)).status_code == 403
    assert Event.objects.count() == events


def test_publish_revoked_token_is_401(demo, client):
    """A revoked token is 401, even with the right scope."""
    _, raw = make_token(commands=["publish"], streams=["chat:gangnam"], revoked=True)
    events = Event.objects.count()
    assert post_json(client, f"{API}/publish", publish_body(), **bearer(raw)).status_code == 401
    assert Event.objects.count() == events


def test_publish_token_order_notice_to_its_orders_stream_is_202(demo, client):
    """A token scoped to orders:gangnam may publish the publishable order.notice there."""
    _, raw = make_token(commands=["publish"], streams=["orders:gangnam"])
    body = publish_body("orders:gangnam", "order.notice", {"text": "Shop closes at 22:00"})
    response = post_json(client, f"{API}/publish", body, **bearer(raw))
    assert response.status_code == 202
    assert Event.objects.get(stream="orders:gangnam", seq=response.json()["seq"]).name == "order.notice"


# --- POST /publish: what can never be published ------------------------------------------------


def delivery_payload(demo) -> dict:
    order = take_order(demo)
    return delivery_data(order.delivery).model_dump(mode="json")


@pytest.mark.parametrize(
    ("stream", "event", "status"),
    [
        ("deliveries:gangnam", "delivery.created", 403),  # HQ may not publish to deliveries at all
        ("orders:gangnam", "order.created", 403),
        ("riders:gangnam", "rider.status", 403),
        ("chat:gangnam", "delivery.created", 422),  # HQ may publish to chat, but not that event
        ("broadcast:all", "delivery.assigned", 422),
        ("positions:gangnam", "rider.positions", 403),
    ],
)
def test_publish_domain_event_by_hq_is_refused(demo, stream, event, status):
    """HQ cannot publish a domain event: 403 where it may not publish at all, 422 where the event isn't publishable."""
    data = delivery_payload(demo)
    events = Event.objects.count()
    response = post_json(logged_in(demo, "hq"), f"{API}/publish", publish_body(stream, event, data))
    assert response.status_code == status
    assert Event.objects.count() == events


@pytest.mark.parametrize(
    ("stream", "event"),
    [
        ("deliveries:gangnam", "delivery.created"),
        ("orders:gangnam", "order.created"),
        ("riders:gangnam", "rider.status"),
        ("chat:gangnam", "assignment.new"),
        ("positions:gangnam", "rider.positions"),
        ("broadcast:all", "chat.message"),
        ("chat:gangnam", "no.such.event"),
    ],
)
def test_publish_domain_event_by_unrestricted_token_is_422(demo, client, stream, event):
    """Even a token scoped to every stream cannot publish a domain (or unknown) event: 422, nothing logged."""
    _, raw = make_token(commands=["publish"], streams=["*"])
    data = delivery_payload(demo)
    events = Event.objects.count()
    response = post_json(client, f"{API}/publish", publish_body(stream, event, data), **bearer(raw))
    assert response.status_code == 422
    assert "detail" in response.json()
    assert Event.objects.count() == events


@pytest.mark.parametrize(
    ("stream", "event", "data"),
    [
        ("chat:gangnam", "chat.message", {}),
        ("chat:gangnam", "chat.message", {"text": ""}),
        ("chat:gangnam", "chat.message", {"text": 5}),
        ("chat:gangnam", "chat.message", {"text": "x" * 2001}),
        ("chat:gangnam", "chat.message", {"text": "hi", "client_msg_id": "c" * 101}),
        ("broadcast:all", "notice", {}),
        ("broadcast:all", "notice", {"text": "hi", "level": "apocalyptic"}),
        ("broadcast:all", "notice", {"text": "hi", "colour": "red"}),
    ],
)
def test_publish_data_not_matching_the_schema_is_422(demo, stream, event, data):
    """Data that does not fit the event's schema is 422 with a JSON detail; nothing is logged."""
    events = Event.objects.count()
    response = post_json(logged_in(demo, "hq"), f"{API}/publish", publish_body(stream, event, data))
    assert response.status_code == 422
    assert "detail" in response.json()
    assert Event.objects.count() == events


@pytest.mark.parametrize(
    ("stream", "event", "data"),
    [
        ("chat:gangnam", "chat.message", {"text": "a\x00b"}),
        ("chat:gangnam", "chat.message", {"text": "hi", "client_msg_id": "m\x001"}),
        ("broadcast:all", "notice", {"text": "a\x00b"}),
    ],
    ids=["chat-text", "chat-client-msg-id", "notice-text"],
)
def test_publish_data_with_nul_character_is_422(demo, stream, event, data):
    """A NUL character (valid JSON, not storable text) in the data is 422, not a 500; nothing is logged."""
    client = Client(raise_request_exception=False)
    client.force_login(demo.user("hq"))
    events = Event.objects.count()
    response = post_json(client, f"{API}/publish", publish_body(stream, event, data))
    assert response.status_code == 422
    assert Event.objects.count() == events


@pytest.mark.parametrize(
    "body",
    [
        {"namespace": "nope", "room": "gangnam", "event": "chat.message", "data": {"text": "hi"}},
        {"namespace": "chat", "room": "Gangnam", "event": "chat.message", "data": {"text": "hi"}},
        {"namespace": "chat", "room": "", "event": "chat.message", "data": {"text": "hi"}},
        {"namespace": "chat", "room": "gang:nam", "event": "chat.message", "data": {"text": "hi"}},
        {"namespace": "user", "room": "abc", "event": "notice", "data": {"text": "hi"}},
        {"namespace": "broadcast", "room": "gangnam", "event": "notice", "data": {"text": "hi"}},
        {"namespace": "chat" * 10, "room": "gangnam", "event": "chat.message", "data": {"text": "hi"}},
        {"namespace": "chat", "room": "g" * 51, "event": "chat.message", "data": {"text": "hi"}},
        {"namespace": "chat", "room": "gangnam", "event": "chat.message", "data": ["hi"]},
        {"namespace": "chat", "room": "gangnam", "event": "chat.message"},
        {"room": "gangnam", "event": "chat.message", "data": {"text": "hi"}},
    ],
)
def test_publish_malformed_request_is_422(demo, body):
    """A malformed namespace, room or body is 422 with a JSON detail; nothing is logged."""
    events = Event.objects.count()
    response = post_json(logged_in(demo, "hq"), f"{API}/publish", body)
    assert response.status_code == 422
    assert "detail" in response.json()
    assert Event.objects.count() == events


def test_publish_data_over_64_kib_is_413(demo):
    """Event data over 64 KiB is 413 with a JSON detail; nothing is logged."""
    events = Event.objects.count()
    data = {"text": "hi", "padding": "x" * (64 * 1024)}
    response = post_json(logged_in(demo, "hq"), f"{API}/publish", publish_body(data=data))
    assert response.status_code == 413
    assert set(response.json()) == {"detail"}
    assert Event.objects.count() == events


def test_publish_body_over_the_request_limit_is_413(demo, settings):
    """A body over Django's request size limit is 413 JSON, not a 500."""
    events = Event.objects.count()
    data = {"text": "hi", "padding": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)}
    response = post_json(logged_in(demo, "hq"), f"{API}/publish", publish_body(data=data))
    assert response.status_code == 413
    assert set(response.json()) == {"detail"}
    assert Event.objects.count() == events


# --- POST /publish: idempotency and delivery ----------------------------------------------------


def test_publish_idempotency_key_repeat_returns_the_same_seq_once(demo):
    """A retry with the same Idempotency-Key answers the first seq and logs one event."""
    client = logged_in(demo, "dispatch-gangnam")
    body = publish_body(data={"text": "only once"})
    first = post_json(client, f"{API}/publish", body, **{"Idempotency-Key": "k-1"})
    events = Event.objects.count()
    second = post_json(client, f"{API}/publish", body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert Event.objects.count() == events
    assert Event.objects.filter(stream="chat:gangnam", data__text="only once").count() == 1
    assert IdempotencyRecord.objects.filter(key="k-1").count() == 1


def test_publish_idempotency_key_reused_for_another_body_is_422(demo):
    """The same Idempotency-Key with a different body is refused, and logs nothing."""
    client = logged_in(demo, "dispatch-gangnam")
    assert post_json(client, f"{API}/publish", publish_body(), **{"Idempotency-Key": "k-2"}).status_code == 202
    events = Event.objects.count()
    other = publish_body(data={"text": "something else"})
    assert post_json(client, f"{API}/publish", other, **{"Idempotency-Key": "k-2"}).status_code == 422
    assert Event.objects.count() == events


def test_publish_reaches_the_bus_after_commit(demo, django_capture_on_commit_callbacks):
    """The published event goes out on the stream's bus channel as `<seq>\\n<frame>` and is marked published."""
    pubsub = get_redis().pubsub()
    pubsub.subscribe(channel_for("chat:gangnam"))
    try:
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
        with django_capture_on_commit_callbacks(execute=True):
            response = post_json(logged_in(demo, "dispatch-gangnam"), f"{API}/publish", publish_body())
            marker = publish_marker("chat:gangnam")  # Redis delivers in publish order: nothing came before it
            assert pubsub.get_message(timeout=2)["data"] == message_for(0, json.dumps(marker))
        message = pubsub.get_message(timeout=2)
    finally:
        pubsub.close()
    assert response.status_code == 202
    event = Event.objects.get(stream="chat:gangnam", seq=response.json()["seq"])
    assert message["type"] == "message"
    seq, _, frame = message["data"].partition(b"\n")
    assert int(seq) == event.seq
    assert json.loads(frame) == outbox.frame_dict(event)  # the same object the history serves
    assert event.published_at is not None

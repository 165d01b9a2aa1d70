"""The WebSocket protocol consumer (protocol.md §2–§3) through the real ASGI application: handshake,
every client frame and error code, authorization per role, resume and reset, the hub's exactness
over a lossy bus, heartbeat and idle timeout, and slow clients."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

import realtime.hub
from realtime import consumers, outbox
from realtime.bus import channel_for, get_redis, message_for
from realtime.consumers import FrameSender
from realtime.models import Event
from realtime.tests.wsclient import (
    NoticeWriter,
    StallableApp,
    emit_notices,
    in_thread,
    publish_marker,
    session_cookie,
)
from riders.models import Rider

DISPATCHER = "dispatch-gangnam"
RIDER = "rider-gangnam-01"
OTHER_RIDER = "rider-gangnam-02"
MAPO_RIDER = "rider-mapo-01"
CALLCENTER = "callcenter"
HQ = "hq"
BROADCAST = "broadcast:all"


@pytest.fixture
def lossy_bus(monkeypatch):
    """Make the bus lose every event `drop(event)` picks: the outbox skips publishing it (in-process).

    The hub runs in this process, so this is the layer losing messages; history still has them.
    """
    dropped: list[int] = []
    original = outbox.publish

    def install(drop):
        def publish(events):
            dropped.extend(e.seq for e in events if drop(e))
            return original([e for e in events if not drop(e)])

        monkeypatch.setattr(outbox, "publish", publish)
        return dropped

    return install


def rider_pk(username: str) -> int:
    return Rider.objects.get(user__username=username).pk


def publish_by_hand(stream: str, seqs: list[int]) -> None:
    """Put the stored events `seqs` of `stream` on the bus in exactly this order (repeats allowed)."""
    rows = {e.seq: e for e in Event.objects.filter(stream=stream, seq__in=set(seqs))}
    redis = get_redis()
    for seq in seqs:
        redis.publish(channel_for(stream), message_for(seq, outbox.encode_frame(rows[seq])))


def is_error(frame: dict, code: str, id=None) -> bool:
    return frame["type"] == "error" and frame["code"] == code and frame["id"] == id and bool(frame["message"])


# -- handshake --------------------------------------------------------------------------------------


async def test_handshake_anonymous_is_rejected(ws):
    """A handshake without a valid session (none, an unknown key) is refused before accept (HTTP 403 on a server)."""
    accepted, client = await ws.attempt()
    assert not accepted
    assert await client.ended()
    accepted, _ = await ws.attempt(cookie="sessionid=not-a-session")
    assert not accepted


async def test_handshake_inactive_user_is_rejected(ws):
    """The session of a user deactivated after logging in no longer opens a socket."""
    user = await ws.user(OTHER_RIDER)
    cookie = await in_thread(session_cookie, user)
    assert (await ws.attempt(cookie=cookie))[0]
    await in_thread(type(user).objects.filter(pk=user.pk).update, is_active=False)
    accepted, _ = await ws.attempt(cookie=cookie)
    assert not accepted


async def test_handshake_bad_origin_is_rejected(ws):
    """A logged-in user's handshake from a foreign Origin (or none) is refused before accept."""
    cookie = await in_thread(session_cookie, await ws.user(DISPATCHER))
    for origin in ("http://evil.example", "http://localhost.evil.example", "null", None):
        accepted, _ = await ws.attempt(cookie=cookie, origin=origin)
        assert not accepted, origin
    assert (await ws.attempt(cookie=cookie))[0]


async def test_handshake_logged_in_user_is_accepted(ws):
    """Every role's session opens the socket, and the connection answers a ping."""
    for username in (DISPATCHER, RIDER, CALLCENTER, HQ):
        client = await ws.connect(username)
        assert await client.alive(), username


async def test_an_idle_subscribed_socket_runs_in_its_own_connection_task_only(ws):
    """No receive task, stop waiter or writer per socket: each was ~1 kB of every idle connection."""
    first = await ws.connect(HQ)
    assert (await first.subscribe(BROADCAST))["type"] == "subscribed"  # the hub and its tasks exist now
    before = len(asyncio.all_tasks())
    for _ in range(5):
        client = await ws.connect(HQ)
        assert (await client.subscribe(BROADCAST))["type"] == "subscribed"
    assert len(asyncio.all_tasks()) - before == 5  # the server's (here the communicator's) task per socket


async def test_a_client_closed_by_the_server_ends_its_connection_task_normally(ws, settings):
    """`close_soon` ends the receive loop by cancelling the connection's task; the app still returns normally."""
    client = await ws.connect(HQ)
    assert (await client.subscribe(BROADCAST))["type"] == "subscribed"
    (consumer,) = [c for c in realtime.hub.get_hub().connections if c.user.username == HQ]
    consumer.close_soon(consumers.CLOSE_IDLE)
    assert (await client.communicator.receive_output(timeout=5))["code"] == consumers.CLOSE_IDLE
    await client.communicator.wait(timeout=5)  # raises if the application ended with an exception
    assert consumer not in realtime.hub.get_hub().connections


async def test_handshake_nothing_is_subscribed_automatically(ws):
    """Neither `user:<self>` nor `broadcast:all` is subscribed unasked: nothing arrives until subscribed."""
    idle = await ws.connect(RIDER)
    listening = await ws.connect(RIDER)
    own = f"user:{idle.user.pk}"
    for stream in (own, BROADCAST):
        assert (await listening.subscribe(stream))["type"] == "subscribed"
    hq, dispatcher = await ws.connect(HQ), await ws.connect(DISPATCHER)
    assert (await hq.publish(BROADCAST, "notice", {"text": "Storm warning"}))["type"] == "ack"
    assert (await dispatcher.publish(own, "notice", {"text": "Come to the hub"}))["type"] == "ack"
    received = await listening.events(2)
    assert sorted(e["stream"] for e in received) == sorted([own, BROADCAST])
    # The hub hands an event to all its subscribers at once: `idle` would have been handed both by now.
    assert await idle.barrier() == []


# -- subscribe / unsubscribe -------------------------------------------------------------------------


async def test_subscribe_without_since_reports_head_then_only_newer_events(ws):
    """`subscribed` carries epoch, head and recovered=false; only events after head follow, in order."""
    await in_thread(emit_notices, 3)
    epoch, head = await in_thread(outbox.stream_position, BROADCAST)
    client = await ws.connect(DISPATCHER)
    reply = await client.subscribe(BROADCAST, id="s1")
    assert reply == {
        "type": "subscribed",
        "id": "s1",
        "stream": BROADCAST,
        "epoch": epoch,
        "head": head,
        "recovered": False,
    }
    assert await client.barrier() == []
    seqs = await in_thread(emit_notices, 2, text="later")
    events = await client.events(2)
    assert [e["seq"] for e in events] == seqs == [head + 1, head + 2]
    assert events[0]["stream"] == BROADCAST and events[0]["event"] == "notice"
    assert events[0]["data"] == {"text": "later 0", "level": "info"}
    assert events[0]["ts"].endswith("Z")
    assert await client.barrier() == []


async def test_subscribe_twice_is_idempotent(ws):
    """A second subscribe to the same stream gets no second `subscribed`, and each event comes once."""
    client = await ws.connect(DISPATCHER)
    assert (await client.subscribe(BROADCAST))["type"] == "subscribed"
    await client.send({"type": "subscribe", "id": "again", "stream": BROADCAST})
    assert await client.barrier() == []
    seqs = await in_thread(emit_notices, 3)
    assert [e["seq"] for e in await client.events(3)] == seqs
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []


async def test_unsubscribe_acknowledges_and_stops_events(ws):
    """`unsubscribe` answers `unsubscribed`; later events of the stream no longer arrive."""
    client, witness = await ws.connect(DISPATCHER), await ws.connect(HQ)
    for connection in (client, witness):
        await connection.subscribe(BROADCAST)
    await in_thread(emit_notices, 1)
    await client.events(1)
    reply = await client.request({"type": "unsubscribe", "id": "u1", "stream": BROADCAST})
    assert reply == {"type": "unsubscribed", "id": "u1", "stream": BROADCAST}
    await in_thread(emit_notices, 2)
    assert [e["seq"] for e in await witness.events(3)] == [1, 2, 3]
    # The hub hands an event to all the stream's subscribers at once: `client` would have it by now.
    assert await client.barrier() == []


async def test_unsubscribe_then_subscribe_again_resumes_live_events(ws):
    """After unsubscribing, subscribing again works: a fresh `subscribed`, then new events."""
    client = await ws.connect(DISPATCHER)
    await client.subscribe(BROADCAST)
    await client.request({"type": "unsubscribe", "id": "u1", "stream": BROADCAST})
    await in_thread(emit_notices, 2)
    reply = await client.subscribe(BROADCAST)
    assert reply["type"] == "subscribed" and reply["head"] == 2
    assert await client.barrier() == []
    await in_thread(emit_notices, 1)
    assert [e["seq"] for e in await client.events(1)] == [3]


async def test_unsubscribe_of_a_stream_not_subscribed_still_answers(ws):
    """Unsubscribing from a stream the connection never subscribed to answers `unsubscribed`."""
    client = await ws.connect(DISPATCHER)
    reply = await client.request({"type": "unsubscribe", "id": "u9", "stream": "deliveries:gangnam"})
    assert reply == {"type": "unsubscribed", "id": "u9", "stream": "deliveries:gangnam"}


# -- publish ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("author", [DISPATCHER, RIDER])
async def test_publish_chat_message_is_acked_and_delivered_with_its_seq(ws, author):
    """A chat message to the own center's chat is acked with its seq and reaches chat subscribers."""
    watcher = await ws.connect(DISPATCHER)
    sub = await watcher.subscribe("chat:gangnam")
    client = await ws.connect(author)
    ack = await client.publish(
        "chat:gangnam", "chat.message", {"text": "Rain on Teheran-ro", "client_msg_id": "m1"}, id="p1"
    )
    assert ack == {"type": "ack", "id": "p1", "stream": "chat:gangnam", "seq": sub["head"] + 1}
    (event,) = await watcher.events(1)
    assert event["stream"] == "chat:gangnam" and event["event"] == "chat.message" and event["seq"] == ack["seq"]
    data = event["data"]
    assert data["text"] == "Rain on Teheran-ro" and data["client_msg_id"] == "m1"
    assert data["author_id"] == client.user.pk and data["id"]


async def test_publish_notice_to_broadcast_by_hq_reaches_subscribers(ws):
    """HQ's notice on `broadcast:all` is acked and every subscriber of it receives the event."""
    rider, dispatcher = await ws.connect(RIDER), await ws.connect(DISPATCHER)
    for client in (rider, dispatcher):
        await client.subscribe(BROADCAST)
    hq = await ws.connect(HQ)
    ack = await hq.publish(BROADCAST, "notice", {"text": "Storm from 18:00", "level": "urgent"})
    assert ack["type"] == "ack" and ack["stream"] == BROADCAST
    for client in (rider, dispatcher):
        (event,) = await client.events(1)
        assert event["seq"] == ack["seq"] and event["data"] == {"text": "Storm from 18:00", "level": "urgent"}


async def test_publish_dispatcher_to_own_centers_rider_reaches_the_rider(ws):
    """A dispatcher may publish to `user:<rider of own center>`; the rider's private stream receives it."""
    rider = await ws.connect(RIDER)
    own = f"user:{rider.user.pk}"
    assert (await rider.subscribe(own))["type"] == "subscribed"
    dispatcher = await ws.connect(DISPATCHER)
    ack = await dispatcher.publish(own, "notice", {"text": "Pick up at Sinsa Pizza"})
    assert ack["type"] == "ack" and ack["stream"] == own
    (event,) = await rider.events(1)
    assert event["seq"] == ack["seq"] and event["event"] == "notice"


async def test_publish_unpublishable_event_or_invalid_data_is_bad_request(ws):
    """A publish of an event clients may not publish, or with data off its schema, is `bad_request`."""
    client = await ws.connect(HQ)
    cases = [
        ("chat:gangnam", "delivery.created", {"id": 1}),  # domain events come from the services only
        ("chat:gangnam", "notice", {"text": "wrong stream for a notice"}),
        ("chat:gangnam", "chat.message", {"text": ""}),
        ("chat:gangnam", "chat.message", {"text": 5}),
        ("chat:gangnam", "chat.message", {"text": "x" * 2001}),
        (BROADCAST, "notice", {"text": "hi", "level": "panic"}),
        (BROADCAST, "notice", {"text": "hi", "extra": 1}),
    ]
    for stream, event, data in cases:
        reply = await client.publish(stream, event, data, id="p1")
        assert is_error(reply, "bad_request", "p1"), (stream, event, data, reply)
    assert await client.alive()


# -- position --------------------------------------------------------------------------------------


async def test_position_by_rider_is_silent_and_reaches_positions_subscribers_in_a_batch(ws):
    """A rider's `position` gets no reply; a `positions:<center>` subscriber gets it in a `rider.positions` batch."""
    watcher = await ws.connect(DISPATCHER)
    reply = await watcher.subscribe("positions:gangnam", id="s1")
    assert reply == {"type": "subscribed", "id": "s1", "stream": "positions:gangnam", "recovered": False}
    snapshot = await watcher.recv()
    assert snapshot["type"] == "event" and snapshot["event"] == "rider.positions" and "seq" not in snapshot
    rider = await ws.connect(RIDER)
    pk = await in_thread(rider_pk, RIDER)
    await rider.send(
        {"type": "position", "lat": 37.4979, "lng": 127.0276, "accuracy": 8.5, "heading": 90, "speed": 4.2}
    )
    assert await rider.barrier() == []
    mine = []
    while not mine:  # the next batch with this rider (at most one batch per second)
        batch = await watcher.recv(timeout=3)
        assert batch["type"] == "event" and batch["stream"] == "positions:gangnam", batch
        assert batch["event"] == "rider.positions" and "seq" not in batch
        mine = [p for p in batch["data"]["positions"] if p["rider"] == pk]
    assert mine == [
        {
            "rider": pk,
            "lat": 37.4979,
            "lng": 127.0276,
            "accuracy": 8.5,
            "heading": 90,
            "speed": 4.2,
            "ts": mine[0]["ts"],
        }
    ]


async def test_position_frames_are_taken_on_the_event_loop_without_a_worker_thread(ws, monkeypatch):
    """A fix goes to Redis from the event loop: 1,500 riders' fixes handed to worker threads one by one
    kept the GIL moving between them and the loop (docs/benchmarks.md, the shift's profile)."""
    from riders.positions import current_positions

    def no_thread(*args, **kwargs):
        raise AssertionError("a position frame went to a worker thread")

    rider = await ws.connect(RIDER)
    pk = await in_thread(rider_pk, RIDER)
    monkeypatch.setattr(consumers.asyncio, "to_thread", no_thread)
    await rider.send({"type": "position", "lat": 37.4979, "lng": 127.0276})
    assert await rider.barrier() == []
    monkeypatch.undo()
    assert [p["lat"] for p in await in_thread(current_positions, "gangnam") if p["rider"] == pk] == [37.4979]


async def test_position_while_redis_is_unreachable_is_refused_with_a_retry_later(ws, monkeypatch):
    """With Redis down the fix is not kept: `internal`, saying to send it again (the rider page keeps it)."""
    import redis.asyncio

    import riders.streams

    rider = await ws.connect(RIDER)
    unreachable = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    monkeypatch.setattr(riders.streams, "get_hub", lambda: type("Hub", (), {"redis": unreachable})())
    reply = await rider.request({"type": "position", "id": "f1", "lat": 37.5, "lng": 127.0})
    assert is_error(reply, "internal", "f1") and "again later" in reply["message"], reply
    assert await rider.alive()
    await unreachable.aclose()


async def test_position_by_non_rider_is_forbidden(ws):
    """Only riders send positions: a dispatcher's, HQ's or the call center's `position` is `forbidden`."""
    for username in (DISPATCHER, HQ, CALLCENTER):
        client = await ws.connect(username)
        assert is_error(await client.request({"type": "position", "lat": 37.5, "lng": 127.0}), "forbidden"), username
        assert await client.alive()


async def test_position_invalid_fix_is_bad_request(ws):
    """A rider's position outside the protocol's ranges, ill-typed or in the future is answered `bad_request`."""
    rider = await ws.connect(RIDER)
    in_a_minute = (timezone.now() + timedelta(seconds=60)).isoformat()
    fixes = [
        {"lat": 91, "lng": 127.0},
        {"lat": -90.5, "lng": 127.0},
        {"lat": "37.5", "lng": 127.0},
        {"lat": True, "lng": 127.0},
        {"lng": 127.0},
        {"lat": 37.5, "lng": 180.5},
        {"lat": 37.5, "lng": -181},
        {"lat": 37.5, "lng": 127.0, "ts": in_a_minute},
        {"lat": 37.5, "lng": 127.0, "ts": "yesterday"},
        {"lat": 37.5, "lng": 127.0, "altitude": 12},
    ]
    for fix in fixes:
        assert is_error(await rider.request({"type": "position", **fix}), "bad_request"), fix
    assert await rider.alive()


# -- ping / pong -----------------------------------------------------------------------------------


async def test_ping_is_answered_with_pong_and_the_same_id(ws):
    """A client `ping` gets `pong` echoing its id."""
    client = await ws.connect(DISPATCHER)
    assert await client.request({"type": "ping", "id": "k1"}) == {"type": "pong", "id": "k1"}


async def test_pong_gets_no_reply(ws):
    """A client `pong` is a sign of life only: nothing is sent back."""
    client = await ws.connect(DISPATCHER)
    await client.send({"type": "pong"})
    assert await client.barrier() == []


# -- errors ----------------------------------------------------------------------------------------

BAD_REQUESTS = {
    "not-json": ("{nope", None),
    "json-array": ("[1, 2]", None),
    "json-string": ('"ping"', None),
    "binary-frame": (b'{"type": "ping", "id": "k"}', None),
    "unknown-type": ({"type": "hello", "id": "x"}, "x"),
    "missing-type": ({"id": "x"}, "x"),
    "type-not-string": ({"type": 7, "id": "x"}, "x"),
    "since-negative": ({"type": "subscribe", "id": "x", "stream": BROADCAST, "since": -1}, "x"),
    "since-string": ({"type": "subscribe", "id": "x", "stream": BROADCAST, "since": "5"}, "x"),
    "since-float": ({"type": "subscribe", "id": "x", "stream": BROADCAST, "since": 1.5}, "x"),
    "since-bool": ({"type": "subscribe", "id": "x", "stream": BROADCAST, "since": True}, "x"),
    "epoch-not-string": ({"type": "subscribe", "id": "x", "stream": BROADCAST, "since": 0, "epoch": 7}, "x"),
    "id-not-string": ({"type": "ping", "id": 5}, None),
    "id-too-long": ({"type": "ping", "id": "k" * 101}, None),
    "publish-without-data": ({"type": "publish", "id": "x", "stream": "chat:gangnam", "event": "chat.message"}, "x"),
    "publish-without-event": ({"type": "publish", "id": "x", "stream": "chat:gangnam", "data": {"text": "a"}}, "x"),
    "publish-data-not-object": (
        {"type": "publish", "id": "x", "stream": "chat:gangnam", "event": "chat.message", "data": "hi"},
        "x",
    ),
}


async def test_error_bad_request_for_malformed_frames(ws):
    """Each malformed frame is answered `bad_request` (echoing a valid id), and the socket stays usable after it."""
    client = await ws.connect(DISPATCHER)
    for case, (frame, reply_id) in BAD_REQUESTS.items():
        reply = await client.request(frame)
        assert is_error(reply, "bad_request", reply_id), (case, reply)
        assert await client.alive(), case


async def test_error_bad_request_for_missing_or_ill_typed_stream(ws):
    """A frame whose `stream` is missing or not a string is `bad_request` (a missing or ill-typed field)."""
    client = await ws.connect(DISPATCHER)
    frames = [
        {"type": "subscribe", "id": "x"},
        {"type": "subscribe", "id": "x", "stream": 42},
        {"type": "unsubscribe", "id": "x", "stream": ["deliveries:gangnam"]},
        {"type": "publish", "id": "x", "event": "chat.message", "data": {"text": "a"}},
    ]
    replies = [await client.request(frame) for frame in frames]
    assert all(is_error(reply, "bad_request", "x") for reply in replies), replies


async def test_error_bad_request_for_unhashable_type(ws):
    """A frame whose `type` is a JSON array or object is `bad_request` (ill-typed field), not `internal`."""
    client = await ws.connect(DISPATCHER)
    replies = [await client.request({"type": kind, "id": "x"}) for kind in (["subscribe"], {"name": "ping"})]
    assert all(is_error(reply, "bad_request", "x") for reply in replies), replies


UNKNOWN_STREAMS = [
    "nope",
    "deliveries:",
    "deliveries:UPPER",
    "deliveries:-gangnam",
    "user:abc",
    "user:0",
    "user:-1",
    "broadcast:gangnam",
    "orders:a:b",
    ":gangnam",
    "tracking:gangnam",
    "",
]


async def test_error_unknown_stream_on_subscribe(ws):
    """A subscribe (even by HQ) to a name that is not a stream of the protocol is answered `unknown_stream`."""
    client = await ws.connect(HQ)
    for stream in UNKNOWN_STREAMS:
        assert is_error(await client.subscribe(stream, id="x"), "unknown_stream", "x"), stream
    assert await client.alive()


async def test_error_unknown_stream_on_publish_and_unsubscribe(ws):
    """Publish and unsubscribe with a name that is not a stream are answered `unknown_stream` too."""
    client = await ws.connect(HQ)
    assert is_error(await client.publish("chat:Gangnam", "chat.message", {"text": "a"}, id="p"), "unknown_stream", "p")
    reply = await client.request({"type": "unsubscribe", "id": "u", "stream": "nope"})
    assert is_error(reply, "unknown_stream", "u")
    assert await client.alive()


async def test_error_rate_limited_beyond_the_publish_burst(ws, settings):
    """Publishing faster than the allowance: the first REALTIME_PUBLISH_BURST are acked, the rest `rate_limited`."""
    settings.REALTIME_PUBLISH_BURST = 20
    settings.REALTIME_PUBLISH_RATE = 0.001  # no refill during the test: exact counts
    client = await ws.connect(DISPATCHER)
    for i in range(25):
        frame = {"type": "publish", "id": f"p{i}", "stream": "chat:gangnam", "event": "chat.message"}
        await client.send(frame | {"data": {"text": f"message {i}"}})
    replies = [await client.recv() for _ in range(25)]
    assert [r["type"] for r in replies[:20]] == ["ack"] * 20
    assert all(is_error(r, "rate_limited", f"p{i}") for i, r in enumerate(replies[20:], start=20)), replies[20:]
    assert await client.alive()


async def test_error_too_large_for_a_frame_over_64_kib(ws):
    """A frame over 64 KiB is answered `too_large` (or the socket closed with 1009)."""
    client = await ws.connect(DISPATCHER)
    await client.send(json.dumps({"type": "ping", "id": "big", "pad": "x" * (64 * 1024)}))
    reply = await client.communicator.receive_output(timeout=5)
    if reply["type"] == "websocket.close":
        assert reply.get("code") == 1009
        return
    frame = json.loads(reply["text"])
    assert is_error(frame, "too_large"), frame
    assert await client.alive()


async def test_error_frame_of_exactly_64_kib_is_accepted(ws):
    """A frame of exactly 64 KiB is still processed."""
    client = await ws.connect(DISPATCHER)
    head = '{"type":"ping","id":"edge","pad":"'
    text = head + "x" * (64 * 1024 - len(head) - 2) + '"}'
    assert len(text.encode()) == 64 * 1024
    assert await client.request(text) == {"type": "pong", "id": "edge"}


async def test_error_too_large_counts_bytes_not_characters(ws):
    """A frame of 30,000 Hangul syllables (90 KB of UTF-8) is over 64 KiB and answered `too_large`."""
    client = await ws.connect(DISPATCHER)
    text = json.dumps({"type": "ping", "id": "wide", "pad": "가" * 30_000}, ensure_ascii=False)
    assert len(text.encode()) > 64 * 1024 > len(text)
    assert is_error(await client.request(text), "too_large")


async def test_error_internal_when_the_handler_fails(ws, monkeypatch):
    """An unexpected failure is answered `internal` with the frame's id, no details; the socket stays usable."""

    def explode(**kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr("realtime.services.publish_event", explode)
    client = await ws.connect(DISPATCHER)
    reply = await client.publish("chat:gangnam", "chat.message", {"text": "hello"}, id="p1")
    assert is_error(reply, "internal", "p1") and "secret" not in reply["message"]
    assert await client.alive()


async def test_error_bad_request_for_nul_in_published_text(ws):
    """Text with a NUL character (which PostgreSQL cannot store) is bad input: `bad_request`, not `internal`."""
    client = await ws.connect(HQ)
    cases = [
        ("chat:gangnam", "chat.message", {"text": "a\x00b"}),
        ("chat:gangnam", "chat.message", {"text": "ok", "client_msg_id": "m\x00"}),
        (BROADCAST, "notice", {"text": "\x00"}),
    ]
    for stream, event, data in cases:
        reply = await client.publish(stream, event, data, id="p1")
        assert is_error(reply, "bad_request", "p1"), (data, reply)
    assert await client.alive()


# -- authorization (protocol §2) -------------------------------------------------------------------


async def subscribe_outcome(client, stream: str) -> str:
    """Return "ok" if the subscribe was accepted (the positions snapshot read), else the error code."""
    reply = await client.subscribe(stream)
    if reply["type"] != "subscribed":
        return reply["code"]
    assert reply["stream"] == stream
    if stream.startswith("positions:"):
        assert (await client.recv())["event"] == "rider.positions"
    return "ok"


async def publish_outcome(client, stream: str) -> str:
    """Return "ok" if a publish of the stream's kind of event was acked, else the error code."""
    namespace = stream.split(":")[0]
    event = {"chat": "chat.message", "orders": "order.notice"}.get(namespace, "notice")
    reply = await client.publish(stream, event, {"text": "hello"})
    return "ok" if reply["type"] == "ack" else reply["code"]


SUBSCRIBE_RULES = {
    DISPATCHER: {
        "ok": [
            "deliveries:gangnam",
            "orders:gangnam",
            "riders:gangnam",
            "positions:gangnam",
            "chat:gangnam",
            "user:{self}",
            BROADCAST,
        ],
        "forbidden": [
            "deliveries:mapo",
            "orders:mapo",
            "riders:mapo",
            "positions:mapo",
            "chat:mapo",
            "user:{other}",
            "deliveries:nowhere",
        ],
    },
    CALLCENTER: {
        "ok": [
            "orders:gangnam",
            "orders:mapo",
            "deliveries:gangnam",
            "deliveries:songpa",
            "chat:gangnam",  # read-only (PUBLISH_RULES)
            "user:{self}",
            BROADCAST,
        ],
        "forbidden": ["riders:gangnam", "positions:gangnam", "chat:nowhere", "user:{other}"],
    },
    RIDER: {
        "ok": ["chat:gangnam", "user:{self}", BROADCAST],
        "forbidden": [
            "chat:mapo",
            "deliveries:gangnam",
            "orders:gangnam",
            "riders:gangnam",
            "positions:gangnam",
            "user:{other}",
        ],
    },
    HQ: {
        "ok": [
            *(
                f"{ns}:{c}"
                for ns in ("deliveries", "orders", "riders", "positions", "chat")
                for c in ("gangnam", "mapo")
            ),
            "user:{self}",
            "user:{other}",
            BROADCAST,
        ],
        "forbidden": [],
    },
}


@pytest.mark.parametrize("username", list(SUBSCRIBE_RULES))
async def test_subscribe_authorization_per_role(ws, username):
    """Each role may subscribe exactly to the streams of protocol §2; others are `forbidden`."""
    client = await ws.connect(username)
    other = await ws.user(OTHER_RIDER)
    names = {"self": client.user.pk, "other": other.pk}
    rules = SUBSCRIBE_RULES[username]
    outcomes = {s: await subscribe_outcome(client, s.format(**names)) for s in rules["ok"] + rules["forbidden"]}
    expected = {s: "ok" for s in rules["ok"]} | {s: "forbidden" for s in rules["forbidden"]}
    assert outcomes == expected
    assert await client.alive()


PUBLISH_RULES = {
    DISPATCHER: {
        "ok": ["chat:gangnam", "user:{own_rider}"],
        "forbidden": ["chat:mapo", "user:{mapo_rider}", "user:{self}", BROADCAST, "orders:gangnam", "chat:nowhere"],
    },
    RIDER: {"ok": ["chat:gangnam"], "forbidden": ["chat:mapo", BROADCAST, "user:{own_rider}", "orders:gangnam"]},
    CALLCENTER: {"ok": [], "forbidden": ["chat:gangnam", BROADCAST, "orders:gangnam", "user:{own_rider}"]},
    HQ: {"ok": ["chat:gangnam", "chat:mapo", BROADCAST], "forbidden": ["user:{own_rider}", "orders:gangnam"]},
}


@pytest.mark.parametrize("username", list(PUBLISH_RULES))
async def test_publish_authorization_per_role(ws, username):
    """Each role may publish exactly to the streams of protocol §2; others are `forbidden`."""
    client = await ws.connect(username)
    own_rider, mapo_rider = await ws.user(OTHER_RIDER), await ws.user(MAPO_RIDER)
    names = {"self": client.user.pk, "own_rider": own_rider.pk, "mapo_rider": mapo_rider.pk}
    rules = PUBLISH_RULES[username]
    outcomes = {s: await publish_outcome(client, s.format(**names)) for s in rules["ok"] + rules["forbidden"]}
    expected = {s: "ok" for s in rules["ok"]} | {s: "forbidden" for s in rules["forbidden"]}
    assert outcomes == expected
    assert await client.alive()


async def test_refusal_for_an_unknown_center_looks_like_one_for_a_foreign_center(ws):
    """A dispatcher's refusal of `deliveries:nowhere` is the very frame of `deliveries:mapo` (no existence leak)."""
    client = await ws.connect(DISPATCHER)
    unknown = await client.subscribe("deliveries:nowhere", id="x")
    foreign = await client.subscribe("deliveries:mapo", id="x")
    assert unknown == foreign and is_error(unknown, "forbidden", "x")
    unknown = await client.publish("chat:nowhere", "chat.message", {"text": "a"}, id="p")
    foreign = await client.publish("chat:mapo", "chat.message", {"text": "a"}, id="p")
    assert unknown == foreign and is_error(unknown, "forbidden", "p")


# -- resume and reset ------------------------------------------------------------------------------


async def test_resume_with_current_epoch_replays_since_then_goes_live(ws):
    """`since` in the current epoch: recovered=true, then exactly since+1..head in order, then live events."""
    await in_thread(emit_notices, 6)
    epoch, head = await in_thread(outbox.stream_position, BROADCAST)
    client = await ws.connect(DISPATCHER)
    reply = await client.subscribe(BROADCAST, since=2, epoch=epoch, id="r1")
    assert reply == {
        "type": "subscribed",
        "id": "r1",
        "stream": BROADCAST,
        "epoch": epoch,
        "head": 6,
        "recovered": True,
    }
    replay = await client.events(4)
    assert [e["seq"] for e in replay] == [3, 4, 5, 6]
    assert [e["data"]["text"] for e in replay] == ["notice 2", "notice 3", "notice 4", "notice 5"]
    assert await client.barrier() == []
    await in_thread(emit_notices, 2)
    assert [e["seq"] for e in await client.events(2)] == [7, 8]
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []


async def test_resume_at_head_recovers_with_nothing_to_replay(ws):
    """`since` equal to the head: recovered=true and no replay, then live events."""
    await in_thread(emit_notices, 3)
    epoch, head = await in_thread(outbox.stream_position, BROADCAST)
    client = await ws.connect(DISPATCHER)
    reply = await client.subscribe(BROADCAST, since=head, epoch=epoch)
    assert reply["recovered"] is True and reply["head"] == head
    assert await client.barrier() == []
    await in_thread(emit_notices, 1)
    assert [e["seq"] for e in await client.events(1)] == [head + 1]


@pytest.mark.parametrize("epoch", ["0badc0de", None], ids=["wrong-epoch", "no-epoch"])
async def test_resume_with_another_epoch_resets(ws, epoch):
    """`since` read in another epoch (or without one): recovered=false, then `reset` with the current epoch and head."""
    await in_thread(emit_notices, 4)
    current, head = await in_thread(outbox.stream_position, BROADCAST)
    client = await ws.connect(DISPATCHER)
    reply = await client.subscribe(BROADCAST, since=2, epoch=epoch, id="r1")
    assert reply == {
        "type": "subscribed",
        "id": "r1",
        "stream": BROADCAST,
        "epoch": current,
        "head": head,
        "recovered": False,
    }
    reset = await client.recv()
    assert reset == {"type": "reset", "stream": BROADCAST, "epoch": current, "head": head, "reason": "history_expired"}
    assert await client.barrier() == []
    await in_thread(emit_notices, 1)
    assert [e["seq"] for e in await client.events(1)] == [head + 1]


async def test_resume_beyond_head_resets(ws):
    """`since` beyond the head (a client from the future, e.g. a restored database) gets `reset`."""
    await in_thread(emit_notices, 3)
    epoch, head = await in_thread(outbox.stream_position, BROADCAST)
    client = await ws.connect(DISPATCHER)
    reply = await client.subscribe(BROADCAST, since=head + 5, epoch=epoch)
    assert reply["recovered"] is False and reply["head"] == head
    assert (await client.recv())["type"] == "reset"
    assert await client.barrier() == []


def prune_through(stream: str, seq: int) -> int:
    """Delete the stream's events up to `seq` (what pruning old history does)."""
    return Event.objects.filter(stream=stream, seq__lte=seq).delete()[0]


async def test_resume_older_than_retained_history_resets(ws):
    """`since` whose next event was pruned gets `reset`; `since` at the oldest retained boundary still recovers."""
    await in_thread(emit_notices, 10)
    assert await in_thread(prune_through, BROADCAST, 5) == 5
    epoch, head = await in_thread(outbox.stream_position, BROADCAST)
    client = await ws.connect(DISPATCHER)
    reply = await client.subscribe(BROADCAST, since=3, epoch=epoch)
    assert reply["recovered"] is False and reply["head"] == 10
    assert (await client.recv())["type"] == "reset"
    await client.request({"type": "unsubscribe", "id": "u", "stream": BROADCAST})
    reply = await client.subscribe(BROADCAST, since=5, epoch=epoch)
    assert reply["recovered"] is True
    assert [e["seq"] for e in await client.events(5)] == [6, 7, 8, 9, 10]
    assert await client.barrier() == []


@pytest.mark.parametrize("chunk", [500, 7], ids=["one-read", "chunked-replay"])
@pytest.mark.parametrize("warm", [False, True], ids=["first-subscriber", "feed-already-live"])
async def test_resume_during_concurrent_commits_is_gapless_and_duplicate_free(ws, monkeypatch, chunk, warm):
    """Resuming while a writer commits continuously yields since+1..final head exactly once each, in order."""
    monkeypatch.setattr(realtime.hub, "REPLAY_CHUNK", chunk)
    since = 40
    epoch, start = await in_thread(outbox.stream_position, BROADCAST)
    assert start == 0
    if warm:  # another connection of this process already keeps the stream's feed live
        other = await ws.connect(HQ)
        await other.subscribe(BROADCAST)
    client = await ws.connect(DISPATCHER)
    writer = NoticeWriter(BROADCAST).start()
    try:
        await writer.wait_for(since + 60)
        reply = await client.subscribe(BROADCAST, since=since, epoch=epoch)
        await writer.wait_for(reply["head"] + 150)  # keep committing during and after the replay
    finally:
        final = await writer.stop()
    assert reply["recovered"] is True and reply["head"] >= since + 60
    assert final >= reply["head"] + 150
    seqs = await client.seqs_until(BROADCAST, final)
    assert seqs == list(range(since + 1, final + 1))
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []
    if warm:
        assert await other.seqs_until(BROADCAST, final) == list(range(1, final + 1))


# -- exactness over a lossy bus (gap fill, duplicates, order) ---------------------------------------


async def test_gap_fill_when_the_bus_loses_every_third_event(ws, lossy_bus, settings):
    """The layer loses every third event: the subscriber still gets every seq once, in order, from history."""
    settings.REALTIME_HEADS_INTERVAL = 60  # only gap fill may heal here, not the periodic heads check
    client = await ws.connect(DISPATCHER)
    await client.subscribe(BROADCAST)
    dropped = lossy_bus(lambda event: event.seq % 3 == 0)
    await in_thread(emit_notices, 31)
    assert dropped == list(range(3, 31, 3))
    assert await client.seqs_until(BROADCAST, 31) == list(range(1, 32))
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []


async def test_gap_fill_delivers_the_lost_last_event_of_a_burst(ws, lossy_bus, settings):
    """The last event of a burst is lost: the hub's heads check delivers it without waiting for a later event."""
    settings.REALTIME_HEADS_INTERVAL = 0.5  # before the hub starts (first connect)
    client = await ws.connect(DISPATCHER)
    await client.subscribe(BROADCAST)
    dropped = lossy_bus(lambda event: event.seq == 5)
    await in_thread(emit_notices, 5)
    assert dropped == [5]
    assert await client.seqs_until(BROADCAST, 5, timeout=3) == [1, 2, 3, 4, 5]
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []


async def test_gap_fill_when_the_bus_loses_every_event(ws, lossy_bus, settings):
    """With the bus down entirely, the heads check alone delivers every event, once each, in order."""
    settings.REALTIME_HEADS_INTERVAL = 0.3
    client = await ws.connect(DISPATCHER)
    await client.subscribe(BROADCAST)
    lossy_bus(lambda event: True)
    await in_thread(emit_notices, 12)
    assert await client.seqs_until(BROADCAST, 12, timeout=3) == list(range(1, 13))
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []


async def test_bus_duplicates_and_reordering_are_delivered_once_in_order(ws, lossy_bus, settings):
    """Messages published twice and out of order (k+1 before k) reach the client once each, in seq order."""
    settings.REALTIME_HEADS_INTERVAL = 60  # only the hand-published messages may drive delivery
    client = await ws.connect(DISPATCHER)
    await client.subscribe(BROADCAST)
    await in_thread(emit_notices, 1)
    assert [e["seq"] for e in await client.events(1)] == [1]
    lossy_bus(lambda event: True)
    assert await in_thread(emit_notices, 2) == [2, 3]
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []  # 2 and 3 never reached the bus
    await in_thread(publish_by_hand, BROADCAST, [1, 3, 2, 3, 2, 1])
    assert [e["seq"] for e in await client.events(2)] == [2, 3]
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []  # the repeats were dropped
    assert await in_thread(emit_notices, 2) == [4, 5]
    await in_thread(publish_by_hand, BROADCAST, [4, 4, 5, 4, 5])
    assert [e["seq"] for e in await client.events(2)] == [4, 5]
    marker = await in_thread(publish_marker, BROADCAST)
    assert await client.frames_until(marker) == []


async def test_bus_out_of_order_live_events_reach_late_joiner_once(ws, lossy_bus, settings):
    """A connection that joined with `since` while messages arrive reordered still sees each seq once, in order."""
    settings.REALTIME_HEADS_INTERVAL = 60
    first = await ws.connect(HQ)
    await first.subscribe(BROADCAST)
    lossy_bus(lambda event: True)
    await in_thread(emit_notices, 6)
    epoch, _ = await in_thread(outbox.stream_position, BROADCAST)
    late = await ws.connect(DISPATCHER)
    assert (await late.subscribe(BROADCAST, since=2, epoch=epoch))["recovered"] is True
    assert [e["seq"] for e in await late.events(4)] == [3, 4, 5, 6]
    await in_thread(publish_by_hand, BROADCAST, [6, 2, 5, 1, 3, 4])
    assert [e["seq"] for e in await first.events(6)] == [1, 2, 3, 4, 5, 6]
    marker = await in_thread(publish_marker, BROADCAST)
    assert await late.frames_until(marker) == []  # it had 3..6 from its replay already
    assert await first.frames_until(marker) == []
    await in_thread(emit_notices, 1)  # the hub heals with a later event (here published by hand)
    await in_thread(publish_by_hand, BROADCAST, [7])
    assert [e["seq"] for e in await late.events(1)] == [7]
    assert [e["seq"] for e in await first.events(1)] == [7]


# -- heartbeat -------------------------------------------------------------------------------------


async def test_heartbeat_ping_carries_heads_of_own_logged_streams_only(ws, settings):
    """Server pings carry the heads of the connection's logged streams: not ephemeral ones, not other connections'."""
    settings.REALTIME_PING_INTERVAL = 0.3
    client = await ws.connect(DISPATCHER)
    own = f"user:{client.user.pk}"
    for stream in ("deliveries:gangnam", "positions:gangnam", own):
        assert await subscribe_outcome(client, stream) == "ok"
    other = await ws.connect(HQ)
    await other.subscribe(BROADCAST)
    await in_thread(emit_notices, 2, stream=own)
    await in_thread(emit_notices, 3)
    assert [e["seq"] for e in await client.events(2)] == [1, 2]
    expected = {"deliveries:gangnam": 0, own: 2}
    for _ in range(20):
        frame = await client.recv(timeout=2, pings=True)
        assert frame["type"] == "ping" and set(frame) == {"type", "heads"}, frame
        if frame["heads"] == expected:
            break
        assert set(frame["heads"]) == set(expected)
    else:
        raise AssertionError("no ping with the current heads")


async def test_heartbeat_pings_one_slot_of_sockets_per_step_and_each_socket_once_per_interval(settings, monkeypatch):
    """The pings of an interval are spread over its steps (no burst of all sockets' pings and pongs
    at once); idle checks still cover every socket, and the access re-check precedes each interval.
    The heads are read once per interval, not at every step."""
    settings.REALTIME_PING_INTERVAL = 4.0
    monkeypatch.setattr(consumers, "HEARTBEAT_STEP", 1.0)
    step, rechecks = [0], []

    async def recheck_access(hub):
        rechecks.append(step[0])

    monkeypatch.setattr(consumers, "recheck_access", recheck_access)

    class Connection:
        def __init__(self, serial):
            self.serial, self.pinged_at, self.idle_checked_at = serial, [], []

        def tick(self, now, heads, logged=frozenset(), pings=None):
            (self.idle_checked_at if heads is None else self.pinged_at).append(step[0])

    class Hub:
        connections = {Connection(serial) for serial in range(1, 13)}
        feeds = {"deliveries:gangnam": SimpleNamespace(logged=True)}
        heads_read_at: list[int] = []

        def every(self, interval, action, *, name):
            self.interval, self.action = interval, action

        async def heads_of(self, names):
            self.heads_read_at.append(step[0])
            return {"deliveries:gangnam": 7}

    hub = Hub()
    consumers._start_heartbeat(hub)
    assert hub.interval == 1.0
    for step[0] in range(8):  # two intervals of 4 steps
        await hub.action()

    pinged_per_step = [sum(s in c.pinged_at for c in hub.connections) for s in range(8)]
    assert pinged_per_step == [3] * 8
    for connection in hub.connections:
        first, second = connection.pinged_at
        assert second == first + 4
        # The ~5 s idle check (every 4 steps here) covers each socket that was not pinged then.
        assert {0, 4} <= set(connection.pinged_at + connection.idle_checked_at)
        assert set(connection.idle_checked_at) <= {0, 4}
    assert rechecks == [0, 4]
    assert hub.heads_read_at == [0, 4]  # once per interval, not at every step

    settings.REALTIME_PING_INTERVAL = 600.0  # a long interval: at most HEARTBEAT_SLOTS steps
    consumers._start_heartbeat(hub)
    assert hub.interval == 600.0 / consumers.HEARTBEAT_SLOTS


async def test_heartbeat_ping_leaves_out_a_stream_until_its_subscribe_is_answered(ws, settings, monkeypatch):
    """Pings sent while a resume is being read carry no head for that stream: the replay, not a fetch, follows.

    (A ping before `subscribed` used to carry the head, so a client following the rules fetched over
    HTTP what the replay was about to send, or reloaded its snapshot twice when history had expired.)
    """
    settings.REALTIME_PING_INTERVAL = 0.2
    await in_thread(emit_notices, 5)
    epoch, _ = await in_thread(outbox.stream_position, BROADCAST)
    client = await ws.connect(DISPATCHER)
    assert (await client.subscribe("deliveries:gangnam"))["type"] == "subscribed"
    release = threading.Event()
    read_history = outbox.read_history

    def held_read(*args, **kwargs):
        release.wait(5)
        return read_history(*args, **kwargs)

    monkeypatch.setattr(outbox, "read_history", held_read)
    await client.send({"type": "subscribe", "id": "r", "stream": BROADCAST, "since": 2, "epoch": epoch})
    try:
        pings = [await client.recv(pings=True) for _ in range(2)]  # sent while the replay is held
    finally:
        release.set()
    assert [set(ping["heads"]) for ping in pings] == [{"deliveries:gangnam"}] * 2
    reply = await client.recv()
    assert (reply["type"], reply["recovered"]) == ("subscribed", True)
    assert [e["seq"] for e in await client.events(3)] == [3, 4, 5]
    while BROADCAST not in (ping := await client.recv(pings=True))["heads"]:
        assert ping["type"] == "ping"
    assert ping["heads"][BROADCAST] == 5


async def test_heartbeat_in_slices_pings_every_socket_with_its_own_heads(ws, settings, monkeypatch):
    """Ticked one socket per slice, every socket still gets its ping, with the heads of its own
    streams: the ping frame shared by sockets with the same streams is never another set's."""
    monkeypatch.setattr(consumers, "HEARTBEAT_SLICE", 1)
    settings.REALTIME_PING_INTERVAL = 0.3
    await in_thread(emit_notices, 2)
    same = [await ws.connect(HQ) for _ in range(2)]
    for client in same:
        await client.subscribe(BROADCAST)
    other = await ws.connect(DISPATCHER)
    await other.subscribe("deliveries:gangnam")
    expected = [{BROADCAST: 2}, {BROADCAST: 2}, {"deliveries:gangnam": 0}]
    for client, heads in zip([*same, other], expected, strict=True):
        frame = await client.recv(timeout=2, pings=True)
        while frame["type"] != "ping":
            frame = await client.recv(timeout=2, pings=True)
        assert frame["heads"] == heads


async def test_heartbeat_closes_a_silent_client_and_keeps_one_that_answers(ws, settings):
    """Past the idle timeout a client that sent nothing is closed (4002); one answering pings stays open."""
    settings.REALTIME_PING_INTERVAL = 0.25
    settings.REALTIME_IDLE_TIMEOUT = idle = 1.5
    silent = await ws.connect(RIDER)
    answering = await ws.connect(DISPATCHER)
    loop = asyncio.get_running_loop()
    start, pings = loop.time(), 0
    while loop.time() - start < 2 * idle + 0.5:  # well past the idle timeout of both
        frame = await answering.recv(timeout=2, pings=True)
        assert frame["type"] == "ping"
        pings += 1
        await answering.send({"type": "pong"})
    assert pings >= 5
    assert await silent.closed(timeout=2) == 4002
    assert await answering.alive() and not answering.finished


# -- slow clients ----------------------------------------------------------------------------------


async def never_returns(message):
    await asyncio.Event().wait()


async def test_frame_sender_put_beyond_limit_calls_on_overflow():
    """A sender whose socket never drains accepts `limit` frames, then refuses and reports the overflow."""
    overflows = []
    sender = FrameSender(never_returns, limit=4, on_overflow=overflows.append)
    assert sender.put("frame 0")
    await asyncio.sleep(0)  # the writer takes frame 0 and blocks sending it: it is no longer queued
    assert [sender.put(f"frame {i}") for i in range(1, 5)] == [True] * 4
    assert overflows == []
    assert sender.put("one too many") is False
    assert overflows == ["too slow"]
    await sender.stop()


async def test_frame_sender_wait_for_room_waits_while_queue_over_half_full():
    """`wait_for_room` returns at once with room, and times out while a stalled queue stays over half full."""
    sender = FrameSender(never_returns, limit=4, on_overflow=lambda reason: None)
    await sender.wait_for_room(timeout=0.1)
    for i in range(4):
        sender.put(f"frame {i}")
    with pytest.raises(TimeoutError):
        await sender.wait_for_room(timeout=0.1)
    await sender.stop()


async def test_frame_sender_sends_frames_in_order():
    """A sender on a reading socket writes every frame once, in the order queued."""
    sent = []

    async def send(message):
        sent.append(message)

    sender = FrameSender(send, limit=3, on_overflow=lambda reason: None)
    for batch in range(4):
        for i in range(3):
            assert sender.put(f"{batch}.{i}")
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [m["text"] for m in sent] == [f"{b}.{i}" for b in range(4) for i in range(3)]
    assert {m["type"] for m in sent} == {"websocket.send"} and sender.frames_sent == 12
    await sender.stop()


async def test_frame_sender_writes_at_once_through_the_servers_write_and_keeps_order_when_it_pushes_back():
    """With the server's synchronous write (the uvicorn protocol's extension) frames skip `send`;
    once the socket pushes back, `send` takes over and later frames queue behind it, in order."""
    wire, waiting = [], asyncio.Event()
    writable = True

    def write_now(text):
        if writable:
            wire.append(text)
        return writable

    async def send(message):  # the server's send: waits while the socket is not writable
        await waiting.wait()
        wire.append(message["text"])

    sender = FrameSender(send, limit=10, on_overflow=lambda reason: None, write_now=write_now)
    assert sender.put("a") and sender.put("b")
    assert wire == ["a", "b"] and sender.frames_sent == 2  # no task, no `send`
    writable = False
    assert sender.put("c")  # `send` waits with it
    writable = True
    assert sender.put("d")  # writable again, but "c" is still waiting: "d" queues behind it
    assert wire == ["a", "b"]
    waiting.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert wire == ["a", "b", "c", "d"] and sender.frames_sent == 4
    assert sender.put("e") and wire[-1] == "e"  # the writer is done: straight to the wire again
    await sender.stop()


async def test_slow_client_is_closed_with_4001_while_a_reading_client_gets_everything(ws, settings):
    """A client that stops reading is closed with 4001 once its queue is full; a reader of the stream misses nothing."""
    settings.REALTIME_QUEUE_LIMIT = 5
    settings.REALTIME_HEADS_INTERVAL = 60  # no batch fills: one frame per bus message
    app = StallableApp()
    slow = await ws.connect(HQ, app=app)
    reader = await ws.connect(DISPATCHER)
    for client in (slow, reader):
        assert (await client.subscribe(BROADCAST))["type"] == "subscribed"
    app.stall()
    await in_thread(emit_notices, 50)
    assert await reader.seqs_until(BROADCAST, 50) == list(range(1, 51))
    assert await slow.closed() == 4001
    assert await reader.alive()


def test_the_uvicorn_protocol_releases_exactly_the_consumers_unresponsive_closes():
    """The protocol class cannot import the consumer (it loads before Django): its copy of the close
    codes for clients that will not answer a close frame must stay the consumer's."""
    from realtime import consumers, uvicorn_protocol

    assert {consumers.CLOSE_TOO_SLOW, consumers.CLOSE_IDLE} == uvicorn_protocol.UNRESPONSIVE_CLOSE_CODES

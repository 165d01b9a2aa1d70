"""Chat over the WebSocket: publish acks with the stored seq, live delivery, limits, unread across tabs."""

import pytest

from chat.access import dm_stream
from chat.models import ChatMessage
from realtime.tests.test_api import API, logged_in, post_json
from realtime.tests.test_consumer import is_error
from realtime.tests.wsclient import WsClients, in_thread

ROOM = "chat:gangnam"


@pytest.fixture
async def ws(demo_tx):
    clients = WsClients()
    yield clients
    await clients.shutdown()


async def publish_to_own_room(client, data: dict, id: str = "p") -> tuple[dict, dict]:
    """Publish on a stream the client follows: the ack and the event come in either order."""
    await client.send({"type": "publish", "id": id, "stream": ROOM, "event": "chat.message", "data": data})
    frames = [await client.recv(), await client.recv()]
    (ack,) = [f for f in frames if f["type"] == "ack"]
    (event,) = [f for f in frames if f["type"] == "event"]
    return ack, event


def _stored(stream: str) -> list[tuple[int, str]]:
    return list(ChatMessage.objects.filter(stream=stream).order_by("seq").values_list("seq", "text"))


async def test_a_published_message_is_acked_with_its_stored_seq_and_reaches_the_room(ws):
    rider = await ws.connect("rider-gangnam-01")
    dispatcher = await ws.connect("dispatch-gangnam")
    assert (await rider.subscribe(ROOM))["type"] == "subscribed"

    ack = await dispatcher.publish(ROOM, "chat.message", {"text": "Rain on Teheran-ro", "client_msg_id": "c1"}, id="p1")
    (event,) = await rider.events(1)

    assert ack == {"type": "ack", "id": "p1", "stream": ROOM, "seq": 1}
    assert (event["seq"], event["data"]["text"], event["data"]["author_role"]) == (
        1,
        "Rain on Teheran-ro",
        "dispatcher",
    )
    assert await in_thread(_stored, ROOM) == [(1, "Rain on Teheran-ro")]


async def test_a_retried_publish_is_acked_with_the_first_seq_and_delivered_once(ws):
    rider = await ws.connect("rider-gangnam-01")
    assert (await rider.subscribe(ROOM))["type"] == "subscribed"

    first, event = await publish_to_own_room(rider, {"text": "at the shop", "client_msg_id": "r1"})
    again = await rider.publish(ROOM, "chat.message", {"text": "at the shop", "client_msg_id": "r1"})

    assert first["seq"] == again["seq"] == event["seq"] == 1
    assert await rider.barrier() == []  # no second event
    assert await in_thread(_stored, ROOM) == [(1, "at the shop")]


async def test_refused_publishes_store_nothing(ws):
    rider_mapo = await ws.connect("rider-mapo-01")
    callcenter = await ws.connect("callcenter")
    dm = await in_thread(lambda: dm_stream(*_ids("dispatch-gangnam", "rider-gangnam-01")))

    assert is_error(await rider_mapo.publish(ROOM, "chat.message", {"text": "hi"}, id="a"), "forbidden", "a")
    assert is_error(await rider_mapo.subscribe(ROOM, id="b"), "forbidden", "b")
    assert is_error(await callcenter.publish(ROOM, "chat.message", {"text": "hi"}, id="c"), "forbidden", "c")
    assert is_error(await rider_mapo.subscribe(dm, id="d"), "forbidden", "d")
    assert is_error(await rider_mapo.publish(ROOM, "chat.message", {"text": "x" * 2001}, id="e"), "forbidden", "e")
    assert (await callcenter.subscribe(ROOM))["type"] == "subscribed"  # reading is allowed
    assert await in_thread(_stored, ROOM) == []


async def test_publishing_beyond_the_allowance_is_rate_limited(ws, settings):
    settings.REALTIME_PUBLISH_BURST = 2
    settings.REALTIME_PUBLISH_RATE = 0.001  # no refill during the test
    rider = await ws.connect("rider-gangnam-01")

    replies = [await rider.publish(ROOM, "chat.message", {"text": f"m{i}"}, id=f"p{i}") for i in range(3)]

    assert [r["type"] for r in replies[:2]] == ["ack", "ack"]
    assert is_error(replies[2], "rate_limited", "p2")
    assert await in_thread(_stored, ROOM) == [(1, "m0"), (2, "m1")]


def _ids(*usernames: str) -> list[int]:
    from django.contrib.auth import get_user_model

    users = dict(get_user_model().objects.filter(username__in=usernames).values_list("username", "pk"))
    return [users[name] for name in usernames]


async def test_unread_counts_follow_the_user_in_every_tab(ws, demo_tx):
    """Two sessions of one rider both hear a direct message come in, and both hear it read in one of them."""
    dispatcher_id, rider_id = await in_thread(_ids, "dispatch-gangnam", "rider-gangnam-01")
    dm, own = dm_stream(dispatcher_id, rider_id), f"user:{rider_id}"
    tabs = [await ws.connect("rider-gangnam-01"), await ws.connect("rider-gangnam-01")]
    for tab in tabs:
        assert (await tab.subscribe(own))["type"] == "subscribed"
    dispatcher = await ws.connect("dispatch-gangnam")

    assert (await dispatcher.publish(dm, "chat.message", {"text": "come back"}))["seq"] == 1
    for tab in tabs:
        (event,) = await tab.events(1)
        assert (event["event"], event["data"]) == ("chat.unread", {"stream": dm, "unread": 1, "last_read": 0})

    def read_in_one_tab():
        return post_json(logged_in(demo_tx, "rider-gangnam-01"), f"{API}/chat/{dm}/read", {"seq": 1}).json()

    assert (await in_thread(read_in_one_tab))["unread"] == 0
    for tab in tabs:
        (event,) = await tab.events(1)
        assert event["data"] == {"stream": dm, "unread": 0, "last_read": 1}

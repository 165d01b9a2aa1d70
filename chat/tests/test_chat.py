"""Chat messages: stored with their event, idempotent, authorized like streams, paged, counted unread."""

from datetime import timedelta

import pytest
import redis
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from chat.access import dm_stream
from chat.models import ChatMessage, ChatRead
from realtime import outbox
from realtime.bus import channel_for
from realtime.models import Event
from realtime.services import NotPublishable, publish_event
from realtime.streams import parse_stream
from realtime.tests.test_api import API, logged_in, post_json, publish_body
from tests.support import bearer, make_token

ROOM = "chat:gangnam"


def send(demo, username: str, text: str = "hello", stream: str = ROOM, client_msg_id: str | None = None) -> Event:
    data = {"text": text} | ({"client_msg_id": client_msg_id} if client_msg_id else {})
    actor = demo.user(username)
    return publish_event(actor=actor, stream=parse_stream(stream), event="chat.message", data=data)


def rider_dm(demo, number: int = 1) -> str:
    return dm_stream(demo.user("dispatch-gangnam").pk, demo.rider("gangnam", number).user_id)


# -- storage and atomicity -----------------------------------------------------------------------


def test_a_message_is_stored_with_its_event_at_the_same_seq(demo):
    event = send(demo, "dispatch-gangnam", "Rain on Teheran-ro", client_msg_id="m1")

    message = ChatMessage.objects.get(stream=ROOM)
    stored = Event.objects.get(stream=ROOM, seq=event.seq)
    assert (message.seq, message.text, message.author_role) == (event.seq, "Rain on Teheran-ro", "dispatcher")
    assert stored.data["id"] == message.uuid and stored.data["author_role"] == "dispatcher"
    assert stored.data["author_name"] == "Dispatch Gangnam"


def test_a_message_whose_transaction_fails_leaves_neither_message_nor_event(demo):
    head_before = outbox.stream_position(ROOM)[1]
    with pytest.raises(RuntimeError), transaction.atomic():
        send(demo, "dispatch-gangnam", "lost with the transaction")
        raise RuntimeError("the command failed after storing")

    assert not ChatMessage.objects.filter(stream=ROOM).exists()
    assert not Event.objects.filter(stream=ROOM).exists()
    assert outbox.stream_position(ROOM)[1] == head_before


def test_a_retry_with_the_same_client_msg_id_returns_the_first_seq_and_stores_one_message(demo):
    first = send(demo, "rider-gangnam-01", "on my way", client_msg_id="retry-1")
    again = send(demo, "rider-gangnam-01", "on my way", client_msg_id="retry-1")
    other = send(demo, "rider-gangnam-02", "me too", client_msg_id="retry-1")  # another author's id

    assert again.seq == first.seq and other.seq == first.seq + 1
    assert ChatMessage.objects.filter(stream=ROOM).count() == 2
    assert Event.objects.filter(stream=ROOM).count() == 2


def test_http_retry_with_the_same_client_msg_id_answers_the_same_seq(demo):
    client = logged_in(demo, "dispatch-gangnam")
    body = publish_body(ROOM, data={"text": "socket was down", "client_msg_id": "h1"})
    first, second = post_json(client, f"{API}/publish", body), post_json(client, f"{API}/publish", body)

    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert ChatMessage.objects.filter(stream=ROOM).count() == 1


def test_text_is_limited_to_2000_characters_without_nul(demo):
    client = logged_in(demo, "dispatch-gangnam")
    for text in ["x" * 2001, "", "nul\x00inside"]:
        answer = post_json(client, f"{API}/publish", publish_body(ROOM, data={"text": text}))
        assert answer.status_code == 422, text
    assert post_json(client, f"{API}/publish", publish_body(ROOM, data={"text": "x" * 2000})).status_code == 202
    assert ChatMessage.objects.filter(stream=ROOM).count() == 1


def test_hostile_text_is_stored_and_sent_verbatim_for_the_client_to_escape(demo):
    """The server keeps text as typed; every renderer (panel, admin) escapes it."""
    hostile = '<img src=x onerror="alert(1)"> <a href="javascript:alert(2)">x</a>'
    send(demo, "dispatch-gangnam", hostile)
    page = logged_in(demo, "hq").get(f"{API}/chat/{ROOM}/messages").json()
    assert page["messages"][0]["data"]["text"] == hostile

    admin = logged_in(demo, "admin").get("/admin/chat/chatmessage/")
    assert admin.status_code == 200
    assert b"<img src=x" not in admin.content and b"&lt;img src=x" in admin.content


# -- who may read and write ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "stream", "read", "write"),
    [
        ("dispatch-gangnam", ROOM, True, True),
        ("rider-gangnam-01", ROOM, True, True),
        ("hq", ROOM, True, True),
        ("callcenter", ROOM, True, False),  # reads the room's delay news, does not write there
        ("dispatch-mapo", ROOM, False, False),  # foreign center
        ("rider-mapo-01", ROOM, False, False),  # a rider reading another center's room
    ],
)
def test_center_room_rights(demo, username, stream, read, write):
    client = logged_in(demo, username)
    assert client.get(f"{API}/chat/{stream}/messages").status_code == (200 if read else 403)
    assert client.get(f"{API}/streams/{stream}/snapshot").status_code == (200 if read else 403)
    status = post_json(client, f"{API}/publish", publish_body(stream)).status_code
    assert status == (202 if write else 403)


def test_a_conversation_is_readable_only_by_its_two_users(demo):
    stream = rider_dm(demo)
    send(demo, "dispatch-gangnam", "come back to the center", stream=stream)
    for username in ["dispatch-gangnam", "rider-gangnam-01"]:
        assert logged_in(demo, username).get(f"{API}/chat/{stream}/messages").status_code == 200
    for username in ["rider-gangnam-02", "hq", "dispatch-mapo", "callcenter"]:
        client = logged_in(demo, username)
        assert client.get(f"{API}/chat/{stream}/messages").status_code == 403, username
        assert client.get(f"{API}/streams/{stream}/snapshot").status_code == 403, username
        assert post_json(client, f"{API}/publish", publish_body(stream)).status_code == 403, username
    assert ChatMessage.objects.filter(stream=stream).count() == 1


def test_a_conversation_needs_a_pair_that_may_talk(demo):
    """A rider talks with the dispatchers of their center only; staff with staff sharing a center."""
    riders = dm_stream(demo.rider("gangnam", 1).user_id, demo.rider("gangnam", 2).user_id)
    foreign = dm_stream(demo.user("dispatch-mapo").pk, demo.rider("gangnam", 1).user_id)
    rider_hq = dm_stream(demo.user("hq").pk, demo.rider("gangnam", 1).user_id)
    staff = dm_stream(demo.user("dispatch-gangnam").pk, demo.user("callcenter").pk)
    for stream, username in [(riders, "rider-gangnam-01"), (foreign, "dispatch-mapo"), (rider_hq, "hq")]:
        with pytest.raises(PermissionDenied):
            send(demo, username, stream=stream)
    assert send(demo, "callcenter", "customer asks about #12", stream=staff).seq == 1


def test_malformed_and_non_chat_streams_are_404(demo):
    client = logged_in(demo, "hq")
    hq, dispatcher = demo.user("hq").pk, demo.user("dispatch-gangnam").pk
    for stream in [f"dm:{max(hq, dispatcher)}-{min(hq, dispatcher)}", "dm:5-5", "chat:Gangnam", "deliveries:gangnam"]:
        assert client.get(f"{API}/chat/{stream}/messages").status_code == 404, stream


def test_an_api_token_can_neither_read_nor_write_a_conversation(demo, client):
    stream = rider_dm(demo)
    send(demo, "dispatch-gangnam", "private", stream=stream)
    _, raw = make_token("bot", commands=["publish"], streams=["*"])
    for url in [
        f"{API}/chat/{stream}/messages",
        f"{API}/streams/{stream}/snapshot",
        f"{API}/streams/{stream}/events?since=0",
    ]:
        assert client.get(url, headers=bearer(raw)).status_code == 403, url
    body = publish_body(stream, data={"text": "hi"})
    assert client.post(f"{API}/publish", body, content_type="application/json", headers=bearer(raw)).status_code == 422
    with pytest.raises(NotPublishable):
        publish_event(actor=None, stream=parse_stream(stream), event="chat.message", data={"text": "hi"})
    assert client.get(f"{API}/chat/{ROOM}/messages", headers=bearer(raw)).status_code == 200  # rooms are fine


# -- history pages ---------------------------------------------------------------------------------


def _fill(demo, count: int) -> None:
    actor = demo.user("dispatch-gangnam")
    for i in range(1, count + 1):
        publish_event(actor=actor, stream=parse_stream(ROOM), event="chat.message", data={"text": f"m{i}"})


def _page(client, **query) -> tuple[list[int], bool]:
    answer = client.get(f"{API}/chat/{ROOM}/messages", query)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    return [m["seq"] for m in body["messages"]], body["more"]


def test_history_pages_walk_back_with_no_gap_or_overlap(demo):
    _fill(demo, 120)
    client = logged_in(demo, "rider-gangnam-01")

    assert _page(client) == (list(range(71, 121)), True)
    assert _page(client, before=71) == (list(range(21, 71)), True)
    assert _page(client, before=21) == (list(range(1, 21)), False)
    assert _page(client, before=1) == ([], False)
    assert _page(client, before=51, limit=50) == (list(range(1, 51)), False)  # exactly the rest
    assert _page(client, before=10_000, limit=3) == ([118, 119, 120], True)


def test_history_page_bounds_are_checked(demo):
    client = logged_in(demo, "rider-gangnam-01")
    for query in [{"before": 0}, {"limit": 0}, {"limit": 201}, {"before": "x"}, {"before": 2**60}]:
        assert client.get(f"{API}/chat/{ROOM}/messages", query).status_code == 422, query


def test_the_snapshot_is_the_latest_50_messages_from_postgresql_after_the_event_window(demo):
    _fill(demo, 60)
    outbox.prune_history(before=Event.objects.order_by("-ts").first().ts + timedelta(seconds=1))
    assert not Event.objects.filter(stream=ROOM).exists()  # the event window has passed

    snapshot = logged_in(demo, "dispatch-gangnam").get(f"{API}/streams/{ROOM}/snapshot").json()
    assert snapshot["head"] == 60
    assert [f["seq"] for f in snapshot["items"]] == list(range(11, 61))
    assert snapshot["items"][-1]["data"]["text"] == "m60"


def test_retention_setting_prunes_only_when_set(demo, settings):
    from chat.tasks import prune_messages

    _fill(demo, 2)
    ChatMessage.objects.filter(seq=1).update(sent_at=ChatMessage.objects.get(seq=1).sent_at - timedelta(days=40))
    settings.CHAT_RETENTION_DAYS = None
    assert prune_messages() == 0
    settings.CHAT_RETENTION_DAYS = 30
    assert prune_messages() == 1
    assert list(ChatMessage.objects.values_list("seq", flat=True)) == [2]


# -- unread counts ---------------------------------------------------------------------------------


def _rooms(client) -> dict[str, dict]:
    return {r["stream"]: r for r in client.get(f"{API}/chat/rooms").json()["rooms"]}


def test_unread_counts_come_from_others_and_clear_on_read(demo):
    rider = logged_in(demo, "rider-gangnam-01")
    dm = rider_dm(demo)
    send(demo, "dispatch-gangnam", "one")
    send(demo, "rider-gangnam-01", "mine does not count")
    send(demo, "dispatch-gangnam", "two")
    send(demo, "dispatch-gangnam", "direct", stream=dm)

    rooms = _rooms(rider)
    assert (rooms[ROOM]["unread"], rooms[dm]["unread"]) == (2, 1)
    assert rooms[dm]["peer"]["role"] == "dispatcher" and rooms[ROOM]["can_write"]

    answer = post_json(rider, f"{API}/chat/{ROOM}/read", {"seq": 2})
    assert answer.json() == {"stream": ROOM, "unread": 1, "last_read": 2}
    post_json(rider, f"{API}/chat/{ROOM}/read", {"seq": 1})  # never backwards
    assert post_json(rider, f"{API}/chat/{ROOM}/read", {"seq": 99}).json()["last_read"] == 3  # not past the head
    assert _rooms(rider)[ROOM]["unread"] == 0
    assert ChatRead.objects.get(stream=ROOM).last_read_seq == 3


def test_reading_tells_the_users_other_tabs_on_their_user_stream(demo):
    rider_user = demo.rider("gangnam", 1).user
    send(demo, "dispatch-gangnam", "hello")
    post_json(logged_in(demo, "rider-gangnam-01"), f"{API}/chat/{ROOM}/read", {"seq": 1})

    (event,) = Event.objects.filter(stream=f"user:{rider_user.pk}", name="chat.unread")
    assert event.data == {"stream": ROOM, "unread": 0, "last_read": 1}


def test_a_direct_message_tells_the_recipient_their_unread_count(demo):
    dm = rider_dm(demo)
    rider_user = demo.rider("gangnam", 1).user
    send(demo, "dispatch-gangnam", "first", stream=dm)
    send(demo, "dispatch-gangnam", "second", stream=dm)

    events = Event.objects.filter(stream=f"user:{rider_user.pk}", name="chat.unread").order_by("seq")
    assert [e.data["unread"] for e in events] == [1, 2]
    sender = demo.user("dispatch-gangnam")
    assert not Event.objects.filter(stream=f"user:{sender.pk}").exists()


def test_read_marks_and_rooms_refuse_what_the_user_may_not_read(demo):
    client = logged_in(demo, "rider-mapo-01")
    assert post_json(client, f"{API}/chat/{ROOM}/read", {"seq": 1}).status_code == 403
    for body in [{"seq": -1}, {"seq": "1"}, {}, {"seq": True}]:
        assert post_json(client, f"{API}/chat/chat:mapo/read", body).status_code == 422, body
    assert ROOM not in _rooms(client) and "chat:mapo" in _rooms(client)


def test_callcenter_sees_its_centers_rooms_read_only(demo):
    rooms = _rooms(logged_in(demo, "callcenter"))
    assert rooms[ROOM]["can_write"] is False


def test_the_rooms_list_takes_a_fixed_number_of_queries(demo, django_assert_max_num_queries):
    client = logged_in(demo, "dispatch-gangnam")
    client.get(f"{API}/chat/rooms")
    with django_assert_max_num_queries(10):
        assert client.get(f"{API}/chat/rooms").status_code == 200


# -- Redis outage ----------------------------------------------------------------------------------


def test_a_message_sent_while_redis_is_down_is_stored_and_reaches_the_room_when_it_returns(
    demo, redis_outage, settings, django_capture_on_commit_callbacks
):
    url = redis_outage._url
    listener = redis.Redis.from_url(url).pubsub()
    listener.subscribe(channel_for(ROOM))
    listener.get_message(timeout=5)  # the subscribe confirmation

    client = logged_in(demo, "rider-gangnam-01")
    with django_capture_on_commit_callbacks(execute=True):
        answer = post_json(client, f"{API}/publish", publish_body(ROOM, data={"text": "Redis is down"}))
    assert answer.status_code == 202
    assert ChatMessage.objects.get(stream=ROOM).text == "Redis is down"
    assert Event.objects.get(stream=ROOM).published_at is None

    redis_outage.end()
    assert outbox.republish_unpublished(older_than=timedelta(seconds=-1)) >= 1
    message = listener.get_message(timeout=5)
    listener.close()
    assert message is not None and b'"text":"Redis is down"' in message["data"]
    assert Event.objects.get(stream=ROOM).published_at is not None


def test_two_racing_sends_with_one_client_msg_id_store_one_message(demo_tx):
    """A retry that races the first send (two sockets, or socket then HTTP) still makes one message."""
    import threading

    from django.db import connection

    barrier, seqs = threading.Barrier(2), []

    def send_once():
        try:
            barrier.wait()
            seqs.append(send(demo_tx, "rider-gangnam-01", "once", client_msg_id="race").seq)
        finally:
            connection.close()

    threads = [threading.Thread(target=send_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert seqs == [1, 1]
    assert ChatMessage.objects.filter(stream=ROOM).count() == 1
    assert Event.objects.filter(stream=ROOM).count() == 1


def test_admin_finds_messages_by_room_author_words_and_day(demo):
    send(demo, "dispatch-gangnam", "Rain on Teheran-ro")
    send(demo, "rider-mapo-01", "Flat tyre", stream="chat:mapo")
    admin = logged_in(demo, "admin")

    def found(**query) -> bool:
        page = admin.get("/admin/chat/chatmessage/", query)
        assert page.status_code == 200
        return b"Rain on Teheran-ro" in page.content, b"Flat tyre" in page.content

    assert found(q="chat:gangnam") == (True, False)
    assert found(q="rider-mapo-01") == (False, True)
    assert found(q="tyre") == (False, True)
    today = timezone.localtime(ChatMessage.objects.first().sent_at)  # the admin's days are local (TIME_ZONE)
    assert found(sent_at__year=today.year, sent_at__month=today.month, sent_at__day=today.day) == (True, True)
    assert found(kind="dm") == (False, False)
    assert admin.get("/admin/chat/chatmessage/add/").status_code == 403  # browse only


def test_sending_a_message_takes_a_bounded_number_of_queries(demo, django_assert_max_num_queries):
    client = logged_in(demo, "rider-gangnam-01")
    post_json(client, f"{API}/publish", publish_body(ROOM, data={"text": "warm-up"}))
    # session, user, access (3), center, earlier client_msg_id, head, event, message: 10, plus 6 savepoints.
    with django_assert_max_num_queries(16):
        answer = post_json(client, f"{API}/publish", publish_body(ROOM, data={"text": "hi", "client_msg_id": "q1"}))
    assert answer.status_code == 202


def test_a_conversation_closes_when_the_rider_moves_to_another_center(demo):
    from riders.models import Rider

    stream = rider_dm(demo)
    send(demo, "dispatch-gangnam", "before the move", stream=stream)
    Rider.objects.filter(user__username="rider-gangnam-01").update(center=demo.center("mapo"))

    for username in ["dispatch-gangnam", "rider-gangnam-01"]:
        client = logged_in(demo, username)
        assert client.get(f"{API}/chat/{stream}/messages").status_code == 403, username
        assert post_json(client, f"{API}/publish", publish_body(stream)).status_code == 403, username
    rooms = _rooms(logged_in(demo, "rider-gangnam-01"))
    assert stream not in rooms and "chat:mapo" in rooms

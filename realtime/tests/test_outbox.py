"""The outbox's promises (protocol §1): gapless per-stream seqs in commit order, events commit with
their change or not at all, publish after commit, and a sweep for publishes that never happened."""

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from deliveries.services import create_order
from realtime import outbox
from realtime.bus import channel_for, get_redis, message_for
from realtime.events import NoticeData, build
from realtime.models import Event, Stream
from realtime.tests.wsclient import publish_marker

WRITERS = 8
ORDERS_PER_WRITER = 6


def order_kwargs(demo):
    return {
        "actor": None,
        "shop_id": demo.shop("gangnam").pk,
        "customer_name": "Kim Jimin",
        "customer_phone": "010-1234-5678",
        "address": "Teheran-ro 1",
        "items": [{"name": "Chicken", "qty": 1}],
    }


def head_of(stream: str) -> int:
    return Stream.objects.filter(name=stream).values_list("head", flat=True).first() or 0


def seqs_of(stream: str, after: int = 0) -> list[int]:
    return list(Event.objects.filter(stream=stream, seq__gt=after).order_by("seq").values_list("seq", flat=True))


def notice(stream="broadcast:all", text="hello"):
    return build(stream, "notice", NoticeData(text=text))


def waiting_for_a_lock() -> bool:
    """Whether a connection to the test database is waiting for a lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def in_thread(target, *args):
    """Run `target` in a thread with its own database connection, closed at the end."""
    errors = []

    def run():
        try:
            target(*args)
        except Exception as exc:  # surfaced by the test
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_emit_concurrent_writers_get_unique_consecutive_seqs(demo_tx):
    """N writers creating orders in one center at once: every committed event has a unique, consecutive seq."""
    start = {name: head_of(name) for name in ("orders:gangnam", "deliveries:gangnam")}
    kwargs = order_kwargs(demo_tx)
    barrier = threading.Barrier(WRITERS)

    def writer():
        barrier.wait()
        for _ in range(ORDERS_PER_WRITER):
            create_order(**kwargs)

    threads = [in_thread(writer) for _ in range(WRITERS)]
    for thread, errors in threads:
        thread.join(60)
        assert not errors, errors
    total = WRITERS * ORDERS_PER_WRITER
    for name, before in start.items():
        assert seqs_of(name, after=before) == list(range(before + 1, before + total + 1))
        assert head_of(name) == before + total


def test_emit_rolled_back_command_leaves_no_event_and_no_gap(demo):
    """A command whose transaction rolls back leaves no event, and the next one takes the next seq."""
    before = head_of("orders:gangnam")
    with pytest.raises(RuntimeError), transaction.atomic():
        create_order(**order_kwargs(demo))
        raise RuntimeError("the caller fails after the service")
    assert head_of("orders:gangnam") == before
    assert seqs_of("orders:gangnam", after=before) == []
    create_order(**order_kwargs(demo))
    assert seqs_of("orders:gangnam", after=before) == [before + 1]


def test_emit_next_writer_waits_until_previous_commits(demo_tx):
    """No reader ever sees seq k+1 committed before k: the second writer waits for the first to commit."""
    stream = "broadcast:all"
    before = head_of(stream)
    first_emitted, release_first = threading.Event(), threading.Event()
    second_done = threading.Event()

    def first_writer():
        with transaction.atomic():
            outbox.emit([notice(stream, "first")])
            first_emitted.set()
            release_first.wait(10)

    def second_writer():
        first_emitted.wait(10)
        with transaction.atomic():
            outbox.emit([notice(stream, "second")])
        second_done.set()

    first, first_errors = in_thread(first_writer)
    second, second_errors = in_thread(second_writer)
    first_emitted.wait(10)
    deadline = time.monotonic() + 10
    while not waiting_for_a_lock():  # a barrier on the database's own state, not a guess
        assert time.monotonic() < deadline, "the second writer never waited for the first"
        time.sleep(0.01)
    # While the first transaction is open, the second waits for it without a seq: nothing is visible.
    assert not second_done.is_set()
    assert seqs_of(stream, after=before) == []
    release_first.set()
    first.join(10)
    second.join(10)
    assert not first_errors and not second_errors
    assert seqs_of(stream, after=before) == [before + 1, before + 2]
    texts = list(Event.objects.filter(stream=stream, seq__gt=before).order_by("seq").values_list("data", flat=True))
    assert [t["text"] for t in texts] == ["first", "second"]


def test_emit_reader_never_sees_a_gap_under_concurrent_commits(demo_tx):
    """A reader polling during concurrent commits always sees a gapless prefix of the stream."""
    stream = "broadcast:all"
    before = head_of(stream)
    stop = threading.Event()
    gaps: list[list[int]] = []

    def reader():
        while not stop.is_set():
            seen = seqs_of(stream, after=before)
            if seen != list(range(before + 1, before + 1 + len(seen))):
                gaps.append(seen)

    def writer():
        for i in range(15):
            with transaction.atomic():
                outbox.emit([notice(stream, f"n{i}")])
                time.sleep(0.001)  # widen the window between seq assignment and commit

    read_thread, read_errors = in_thread(reader)
    writers = [in_thread(writer) for _ in range(4)]
    for thread, errors in writers:
        thread.join(60)
        assert not errors
    stop.set()
    read_thread.join(10)
    assert not read_errors
    assert gaps == []
    assert seqs_of(stream, after=before) == list(range(before + 1, before + 61))


def test_emit_outside_a_transaction_is_refused(transactional_db):
    """Emitting outside the change's transaction is a programming error, refused loudly."""
    with pytest.raises(RuntimeError):
        outbox.emit([notice()])


def test_emit_orders_several_streams_in_one_call(demo):
    """One emit call can write several streams; each gets its own consecutive seqs."""
    with transaction.atomic():
        rows = outbox.emit([notice("broadcast:all", "a"), notice("user:1", "b"), notice("broadcast:all", "c")])
    by_stream = {}
    for row in rows:
        by_stream.setdefault(row.stream, []).append(row.seq)
    first = by_stream["broadcast:all"][0]
    assert by_stream["broadcast:all"] == [first, first + 1]
    assert len(by_stream["user:1"]) == 1


def test_emit_returns_each_event_as_stored_in_the_order_given(demo):
    """The rows emit returns (and publishes) are the stored ones: id, stream, seq, name, data, ts."""
    pending = [notice("user:1", "a"), notice("broadcast:all", "b"), notice("user:1", "c"), notice("user:1", "d")]
    with transaction.atomic():
        rows = outbox.emit(pending)
    assert [(row.stream, row.name) for row in rows] == [(e.stream, e.name) for e in pending]
    stored = {event.pk: event for event in Event.objects.filter(pk__in=[row.pk for row in rows])}
    assert [(r.stream, r.seq, r.name, r.data, r.ts) for r in rows] == [
        (stored[r.pk].stream, stored[r.pk].seq, stored[r.pk].name, stored[r.pk].data, stored[r.pk].ts) for r in rows
    ]
    user_seqs = [row.seq for row in rows if row.stream == "user:1"]
    assert user_seqs == list(range(user_seqs[0], user_seqs[0] + 3))
    assert Stream.objects.get(name="user:1").head == user_seqs[-1]


def test_stream_epoch_is_stable_across_writes(demo):
    """A stream's epoch is set once and does not change as events are appended."""
    with transaction.atomic():
        outbox.emit([notice("user:77", "a")])
    epoch = Stream.objects.get(name="user:77").epoch
    with transaction.atomic():
        outbox.emit([notice("user:77", "b")])
    assert Stream.objects.get(name="user:77").epoch == epoch
    assert Stream.objects.get(name="user:77").head == 2


def test_publish_on_commit_sends_the_encoded_frame_once(demo, django_capture_on_commit_callbacks):
    """After commit each event is published once, as `<seq>\\n<frame>` on its stream's channel."""
    pubsub = get_redis().pubsub()
    pubsub.subscribe(channel_for("orders:gangnam"))
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        order = create_order(**order_kwargs(demo))
    marker = publish_marker("orders:gangnam")  # Redis delivers in publish order: nothing came before it
    assert pubsub.get_message(timeout=2)["data"] == message_for(0, json.dumps(marker))
    for callback in callbacks:
        callback()
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    seq_text, frame_text = message["data"].decode().split("\n", 1)
    frame = json.loads(frame_text)
    event = Event.objects.get(stream="orders:gangnam", name="order.created", data__id=order.pk)
    assert int(seq_text) == frame["seq"] == event.seq
    assert frame["type"] == "event" and frame["stream"] == "orders:gangnam" and frame["event"] == "order.created"
    assert frame["data"]["id"] == order.pk and frame["data"]["version"] == 1
    assert frame["ts"].endswith("Z") and len(frame["ts"]) == len("2026-11-21T18:02:03.512Z")
    assert event.published_at is not None


def test_publish_failure_leaves_events_for_the_sweep(demo, django_capture_on_commit_callbacks, monkeypatch):
    """A publish that fails (Redis down) leaves the events unpublished; the sweep publishes them later."""

    def redis_down():
        raise ConnectionError("redis is down")

    monkeypatch.setattr(outbox, "get_redis", redis_down)
    with django_capture_on_commit_callbacks(execute=True):
        order = create_order(**order_kwargs(demo))
    events = Event.objects.filter(data__id=order.pk, name__in=["order.created", "delivery.created"])
    assert events.count() == 2 and all(e.published_at is None for e in events)

    monkeypatch.setattr(outbox, "get_redis", get_redis)
    assert outbox.republish_unpublished(older_than=timedelta(seconds=-1)) >= 2
    assert all(e.published_at is not None for e in events.all())
    assert outbox.republish_unpublished(older_than=timedelta(seconds=-1)) == 0


def test_sweep_skips_fresh_events_still_being_published(demo):
    """The sweep leaves events younger than its grace period to their own on-commit publish."""
    with transaction.atomic():
        outbox.emit([notice()])
    assert outbox.republish_unpublished(older_than=timedelta(minutes=5)) == 0


def test_prune_history_drops_old_events_and_keeps_the_head(demo):
    """Pruning deletes events past retention; the stream's head (and so the next seq) is kept."""
    with transaction.atomic():
        outbox.emit([notice("user:55", "old"), notice("user:55", "new")])
    Event.objects.filter(stream="user:55", seq=1).update(ts=timezone.now() - timedelta(days=2))
    assert outbox.prune_history(before=timezone.now() - timedelta(hours=25)) == 1
    assert seqs_of("user:55") == [2]
    with transaction.atomic():
        (row,) = outbox.emit([notice("user:55", "next")])
    assert row.seq == 3

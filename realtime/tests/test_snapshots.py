"""Snapshots (protocol §4): state and `head` read in one consistent database snapshot.

A client loads a snapshot and applies the events after its `head`. That is only exact if no event
at or below `head` is missing from the state and nothing in the state comes from an event after
it, even while other transactions keep committing.
"""

from __future__ import annotations

import threading

from django.db import connection

from deliveries.services import assign_delivery, create_order
from realtime import services
from realtime.models import Event
from realtime.snapshots import read_snapshot
from realtime.streams import parse_stream
from riders.services import set_rider_duty

STREAM = "deliveries:gangnam"
SNAPSHOTS = 40
MIN_ORDERS = 30


def order_kwargs(demo) -> dict:
    return {
        "actor": None,
        "shop_id": demo.shop("gangnam").pk,
        "customer_name": "Kim Jimin",
        "customer_phone": "010-1234-5678",
        "address": "Teheran-ro 1",
        "items": [{"name": "Chicken", "qty": 1}],
    }


def in_thread(target):
    """Run `target` in a thread with its own database connection, closed at the end."""
    errors: list[BaseException] = []

    def run():
        try:
            target()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def state_from_events(events: list[tuple[int, dict]], head: int) -> dict[int, tuple[int, str]]:
    """Delivery id -> (version, status) as the events up to `head` leave it."""
    state: dict[int, tuple[int, str]] = {}
    for seq, data in events:
        if seq <= head:
            state[data["id"]] = (data["version"], data["status"])
    return state


def test_read_snapshot_items_and_head_agree_under_concurrent_commits(demo_tx):
    """While orders are created and assigned, every snapshot holds exactly the state its events <= head describe."""
    kwargs = order_kwargs(demo_tx)
    riders = [set_rider_duty(actor=None, rider_id=demo_tx.rider("gangnam", n).pk, on_duty=True) for n in (1, 2, 3)]
    stop = threading.Event()
    created = threading.Semaphore(0)

    def writer():
        i = 0
        while not stop.is_set():
            order = create_order(**kwargs)
            if i % 2:  # every other delivery changes again: version and status move too
                assign_delivery(actor=None, delivery_id=order.delivery.pk, rider_id=riders[i % 3].pk)
            created.release()
            i += 1

    thread, errors = in_thread(writer)
    snapshots = []
    try:
        for _ in range(3):  # let the writer get going first
            assert created.acquire(timeout=30)
        for _ in range(SNAPSHOTS):
            snapshot = read_snapshot(parse_stream(STREAM))
            items = {item["id"]: (item["version"], item["status"]) for item in snapshot.items}
            snapshots.append((snapshot.head, items))
        for _ in range(MIN_ORDERS):  # the writer kept committing while we read
            assert created.acquire(timeout=30)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert not errors, errors

    events = list(Event.objects.filter(stream=STREAM).order_by("seq").values_list("seq", "data"))
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    for head, items in snapshots:
        assert items == state_from_events(events, head), f"snapshot at head {head} disagrees with its events"
    assert len({head for head, _ in snapshots}) > 1, "the writer never committed between two snapshots"


def test_read_snapshot_head_is_the_stream_head(demo_tx):
    """Without concurrent writers, a snapshot's head is the stream's last seq and every delivery is in it."""
    kwargs = order_kwargs(demo_tx)
    orders = [create_order(**kwargs) for _ in range(3)]
    snapshot = read_snapshot(parse_stream(STREAM))
    assert snapshot.head == Event.objects.filter(stream=STREAM).count() == 3
    assert [item["id"] for item in snapshot.items] == [o.delivery.pk for o in reversed(orders)]


def test_read_snapshot_of_a_new_stream_survives_its_first_event_committing_concurrently(demo_tx):
    """A snapshot of a never-written stream whose first event commits meanwhile is still answered, consistently."""
    stream = parse_stream("chat:songpa")
    committed = threading.Event()

    def first_message():
        services.publish_event(actor=None, stream=stream, event="chat.message", data={"text": "first"})
        committed.set()

    def commit_first_event_before_insert(execute, sql, params, many, context):
        # The snapshot has started (its SELECT found no counter row); the first event commits now.
        if sql.lstrip().startswith("INSERT") and "ON CONFLICT (name) DO NOTHING" in sql:
            thread, errors = in_thread(first_message)
            thread.join(30)
            assert committed.is_set() and not errors, errors
        return execute(sql, params, many, context)

    with connection.execute_wrapper(commit_first_event_before_insert):
        snapshot = read_snapshot(stream)
    assert snapshot.head in (0, 1)
    assert len(snapshot.items) == snapshot.head

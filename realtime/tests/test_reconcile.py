"""Reconciliation (design.md): every 2 minutes each logged center stream gets a `reconcile` frame.

A frame carries the stream's head and the version of every entity a client may hold, computed with
a constant number of queries per center stream (never per client or per entity), and reaches the
stream's WebSocket subscribers through the hub like any frame. Frames are read in their own
REPEATABLE READ transaction, so these tests use the transactional database.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import Center
from deliveries import services as deliveries_services
from deliveries.models import Delivery, Order
from realtime import outbox
from realtime.bus import channel_for, get_redis
from realtime.reconcile import publish_reconcile_frames, reconcile_frame
from realtime.snapshots import read_snapshot
from realtime.streams import parse_stream
from realtime.tasks import reconcile_streams
from realtime.tests.wsclient import WsClients, in_thread, publish_marker
from riders.models import Rider
from riders.services import set_rider_duty
from tests.support import take_order

NAMESPACES = ("deliveries", "orders", "riders")
FRAME_KEYS = {"type", "stream", "epoch", "head", "versions"}
# The counter row ensured before the snapshot, then BEGIN, SET TRANSACTION ISOLATION LEVEL, the
# head, the versions, COMMIT.
QUERIES_PER_FRAME = 6


def frame_of(namespace: str, center: str = "gangnam") -> dict:
    return json.loads(reconcile_frame(namespace, center))


def history_day(demo) -> dict[str, Order]:
    """Gangnam orders in every situation the frame must tell apart, plus one in mapo.

    today_waiting, today_assigned (v2), today_cancelled (v2), yesterday_open (still waiting: included),
    yesterday_done (delivered yesterday: excluded), mapo (another center: excluded).
    """
    rider = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 1).pk, on_duty=True)
    orders = {name: take_order(demo) for name in ("today_waiting", "today_assigned", "today_cancelled")}
    orders |= {name: take_order(demo) for name in ("yesterday_open", "yesterday_done")}
    orders["mapo"] = take_order(demo, center="mapo")
    deliveries_services.assign_delivery(actor=None, delivery_id=orders["today_assigned"].delivery.pk, rider_id=rider.pk)
    deliveries_services.cancel_order(actor=None, order_id=orders["today_cancelled"].pk, reason="customer")
    done = orders["yesterday_done"].delivery.pk
    deliveries_services.assign_delivery(actor=None, delivery_id=done, rider_id=rider.pk)
    deliveries_services.pick_up_delivery(actor=None, delivery_id=done)
    deliveries_services.deliver_delivery(actor=None, delivery_id=done)
    yesterday = timezone.now() - timedelta(days=1, hours=1)
    old = [orders["yesterday_open"].pk, orders["yesterday_done"].pk]
    Order.objects.filter(pk__in=old).update(created_at=yesterday)
    Delivery.objects.filter(order_id__in=old).update(created_at=yesterday)
    return orders


INCLUDED = ("today_waiting", "today_assigned", "today_cancelled", "yesterday_open")


# --- one frame ---------------------------------------------------------------------------------


def test_reconcile_frame_deliveries_has_head_and_versions_of_todays_and_open_deliveries(demo_tx):
    """deliveries:<c>: head is the stream head; versions are today's and still-open deliveries' (string ids)."""
    orders = history_day(demo_tx)
    frame = frame_of("deliveries")

    assert set(frame) == FRAME_KEYS
    epoch, head = outbox.stream_position("deliveries:gangnam")
    assert (frame["type"], frame["stream"], frame["epoch"], frame["head"]) == (
        "reconcile",
        "deliveries:gangnam",
        epoch,
        head,
    )
    deliveries = Delivery.objects.in_bulk([orders[name].delivery.pk for name in INCLUDED])
    assert frame["versions"] == {str(pk): d.version for pk, d in deliveries.items()}
    assert frame["versions"][str(orders["today_assigned"].delivery.pk)] == 2
    assert str(orders["yesterday_done"].delivery.pk) not in frame["versions"]
    assert str(orders["mapo"].delivery.pk) not in frame["versions"]


def test_reconcile_frame_orders_has_head_and_versions_of_todays_and_open_orders(demo_tx):
    """orders:<c>: head is the stream head; versions are today's orders and those with an open delivery."""
    orders = history_day(demo_tx)
    frame = frame_of("orders")

    assert set(frame) == FRAME_KEYS
    assert (frame["stream"], frame["head"]) == ("orders:gangnam", outbox.stream_position("orders:gangnam")[1])
    stored = Order.objects.in_bulk([orders[name].pk for name in INCLUDED])
    assert frame["versions"] == {str(pk): o.version for pk, o in stored.items()}
    assert frame["versions"][str(orders["today_cancelled"].pk)] == 2


def test_reconcile_frame_riders_has_head_and_every_riders_version(demo_tx):
    """riders:<c>: head is the stream head; versions cover every rider of the center."""
    set_rider_duty(actor=None, rider_id=demo_tx.rider("gangnam", 7).pk, on_duty=True)
    frame = frame_of("riders")

    assert set(frame) == FRAME_KEYS
    assert (frame["stream"], frame["head"]) == ("riders:gangnam", outbox.stream_position("riders:gangnam")[1])
    riders = Rider.objects.filter(center__code="gangnam")
    assert frame["versions"] == {str(r.pk): r.version for r in riders}
    assert len(frame["versions"]) == riders.count() == 20
    assert frame["versions"][str(demo_tx.rider("gangnam", 7).pk)] == 2


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_reconcile_frame_matches_the_snapshot(demo_tx, namespace):
    """A frame and a snapshot taken without writes in between name the same head and entity versions."""
    history_day(demo_tx)
    frame = frame_of(namespace)
    snapshot = read_snapshot(parse_stream(f"{namespace}:gangnam"))
    assert (frame["epoch"], frame["head"]) == (snapshot.epoch, snapshot.head)
    assert frame["versions"] == {str(item["id"]): item["version"] for item in snapshot.items}


def test_reconcile_frame_of_a_stream_never_written_has_head_zero(demo_tx):
    """A center stream with no event yet gets head 0 and the versions of what exists."""
    frame = frame_of("deliveries", "songpa")
    assert (frame["head"], frame["versions"]) == (0, {})
    assert frame["epoch"] == outbox.stream_position("deliveries:songpa")[0]


def queries_per_frame(namespace: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        reconcile_frame(namespace, "gangnam")
    return len(queries.captured_queries)


def test_reconcile_frame_query_count_does_not_grow_with_entities(demo_tx, django_assert_max_num_queries):
    """Each frame costs the same few queries with 10 deliveries as with 100."""
    for _ in range(10):
        take_order(demo_tx)
    for namespace in NAMESPACES:
        reconcile_frame(namespace, "gangnam")  # every stream has its counter row from now on
    with_10 = {namespace: queries_per_frame(namespace) for namespace in NAMESPACES}
    for _ in range(90):
        take_order(demo_tx)
    with_100 = {namespace: queries_per_frame(namespace) for namespace in NAMESPACES}

    assert with_100 == with_10
    for namespace in NAMESPACES:
        with django_assert_max_num_queries(QUERIES_PER_FRAME):
            frame = frame_of(namespace)
        assert len(frame["versions"]) == (20 if namespace == "riders" else 100)


# --- all frames, the task, the schedule --------------------------------------------------------


class Listener:
    """A Redis pub/sub subscriber of several streams' bus channels."""

    def __init__(self, streams: list[str]):
        self.pubsub = get_redis().pubsub()
        self.by_channel = {channel_for(s).encode(): s for s in streams}
        self.pubsub.subscribe(*self.by_channel)
        for _ in streams:
            assert self.pubsub.get_message(timeout=2)["type"] == "subscribe"

    def messages(self, count: int) -> list[tuple[str, bytes, dict]]:
        """The next `count` messages as (stream, seq, frame), then check that nothing else arrives."""
        received = [self._next() for _ in range(count)]
        # Redis delivers in publish order: a marker published now comes right after everything sent before it.
        marker = publish_marker(received[0][0])
        assert self._next() == (received[0][0], b"0", marker), "more messages than expected"
        return received

    def _next(self) -> tuple[str, bytes, dict]:
        message = self.pubsub.get_message(timeout=5)
        assert message is not None and message["type"] == "message", message
        seq, _, frame = message["data"].partition(b"\n")
        return self.by_channel[message["channel"]], seq, json.loads(frame)

    def close(self) -> None:
        self.pubsub.close()


def center_streams() -> list[str]:
    return [f"{namespace}:{code}" for code in Center.objects.values_list("code", flat=True) for namespace in NAMESPACES]


def test_publish_reconcile_frames_sends_one_frame_per_center_stream(demo_tx):
    """One frame per center and namespace (3 x centers), each on its own stream's channel, with seq 0."""
    history_day(demo_tx)
    Center.objects.create(code="jongno", name="Jongno", lat=37.57, lng=126.98)
    streams = center_streams()
    listener = Listener(streams)
    try:
        count = publish_reconcile_frames()
        received = listener.messages(count)
    finally:
        listener.close()

    assert count == 3 * Center.objects.count() == 12
    assert sorted(stream for stream, _, _ in received) == sorted(streams)
    for stream, seq, frame in received:
        assert seq == b"0"
        assert frame["type"] == "reconcile"
        assert frame["stream"] == stream
        assert set(frame) == FRAME_KEYS
        assert (frame["epoch"], frame["head"]) == outbox.stream_position(stream)
    gangnam = {stream: frame for stream, _, frame in received if stream.endswith(":gangnam")}
    assert len(gangnam["deliveries:gangnam"]["versions"]) == len(INCLUDED)
    assert len(gangnam["riders:gangnam"]["versions"]) == 20


def test_reconcile_streams_task_publishes_every_frame(demo_tx):
    """The Celery task (run eagerly) publishes every frame and returns how many."""
    take_order(demo_tx)
    listener = Listener(center_streams())
    try:
        result = reconcile_streams.apply()
        received = listener.messages(9)
    finally:
        listener.close()
    assert result.successful()
    assert result.get() == 9 == 3 * Center.objects.count()
    assert {stream for stream, _, _ in received} == set(center_streams())


def test_publish_reconcile_frames_query_count_is_constant_per_frame(demo_tx):
    """Publishing all frames costs the same number of queries with 10 deliveries per center as with 40."""

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            publish_reconcile_frames()
        return len(captured.captured_queries)

    for center in ("gangnam", "mapo", "songpa"):
        for _ in range(10):
            take_order(demo_tx, center=center)
    publish_reconcile_frames()  # every stream has its counter row from now on
    with_10 = queries()
    for center in ("gangnam", "mapo", "songpa"):
        for _ in range(30):
            take_order(demo_tx, center=center)
    assert queries() == with_10 <= 1 + 9 * QUERIES_PER_FRAME


def beat_schedule() -> dict[str, timedelta]:
    """The schedule Celery beat runs: task name -> interval, as the Celery app sees it."""
    from bros.celery import app

    return {entry["task"]: entry["schedule"] for entry in app.conf.beat_schedule.values()}


def test_beat_schedule_sweeps_the_outbox_and_prunes_history():
    """Beat runs the outbox sweep every few seconds and history pruning at least hourly."""
    schedule = beat_schedule()
    assert timedelta(0) < schedule["realtime.tasks.sweep_outbox"] <= timedelta(seconds=30)
    assert timedelta(0) < schedule["realtime.tasks.prune_history"] <= timedelta(hours=1)
    assert timedelta(hours=24) <= settings.EVENT_RETENTION


def test_beat_schedule_reconciles_every_two_minutes():
    """Beat runs realtime.tasks.reconcile_streams every 2 minutes."""
    from bros.celery import app

    assert beat_schedule().get("realtime.tasks.reconcile_streams") == timedelta(minutes=2)
    assert "realtime.tasks.reconcile_streams" in app.tasks


# --- through the hub to a WebSocket subscriber ---------------------------------------------------


@pytest.fixture
async def ws(demo_tx):
    clients = WsClients()
    yield clients
    await clients.shutdown()


def orders_in(demo, count: int, center: str = "gangnam") -> None:
    for _ in range(count):
        take_order(demo, center=center)


async def test_reconcile_frame_reaches_websocket_subscribers_of_the_stream(ws, demo_tx):
    """A subscriber of deliveries:gangnam gets that stream's reconcile frame, and no other stream's."""
    await in_thread(orders_in, demo_tx, 3)
    await in_thread(orders_in, demo_tx, 1, "mapo")
    client = await ws.connect("dispatch-gangnam")
    subscribed = await client.subscribe("deliveries:gangnam")

    count = await in_thread(publish_reconcile_frames)
    frame = await client.recv()

    assert count == 9
    assert set(frame) == FRAME_KEYS
    assert (frame["type"], frame["stream"]) == ("reconcile", "deliveries:gangnam")
    assert (frame["epoch"], frame["head"]) == (subscribed["epoch"], subscribed["head"])
    assert frame["head"] == 3
    assert len(frame["versions"]) == 3
    marker = await in_thread(publish_marker, "deliveries:gangnam")  # behind all nine frames on the bus
    assert await client.frames_until(marker) == []


async def test_reconcile_frames_reach_each_subscribed_stream_once_and_events_continue(ws, demo_tx):
    """Subscribed to three streams, a dispatcher gets one frame each; the next event still follows in order."""
    await in_thread(orders_in, demo_tx, 2)
    client = await ws.connect("dispatch-gangnam")
    heads = {}
    for namespace in NAMESPACES:
        subscribed = await client.subscribe(f"{namespace}:gangnam")
        heads[subscribed["stream"]] = subscribed["head"]

    await in_thread(publish_reconcile_frames)
    frames = [await client.recv() for _ in NAMESPACES]

    assert sorted(f["stream"] for f in frames) == sorted(heads)
    assert all(f["type"] == "reconcile" and f["head"] == heads[f["stream"]] for f in frames)
    marker = await in_thread(publish_marker, "riders:gangnam")  # behind all nine frames on the bus
    assert await client.frames_until(marker) == []
    # A reconcile frame is outside the sequence: the next events arrive as seq head + 1.
    await in_thread(orders_in, demo_tx, 1)
    events = [await client.recv() for _ in range(2)]
    assert {(e["type"], e["stream"], e["seq"]) for e in events} == {
        ("event", "deliveries:gangnam", heads["deliveries:gangnam"] + 1),
        ("event", "orders:gangnam", heads["orders:gangnam"] + 1),
    }

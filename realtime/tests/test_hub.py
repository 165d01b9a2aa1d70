"""The per-process fan-out hub (design.md, "Fan-out is designed per process") with fake subscribers:
one Redis subscription per stream however many local subscribers, each event encoded once and handed
to all, concurrent joins, leaving, and a slow subscriber that cannot hold up the others."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.conf import settings

import realtime.hub
from realtime import outbox
from realtime.bus import channel_for
from realtime.hub import Hub
from realtime.streams import parse_stream
from realtime.tests.wsclient import emit_notices, in_thread, publish_marker, release_db_connections

BROADCAST = "broadcast:all"
TIMEOUT = 5.0


class FakeSubscriber:
    """What the hub needs from a connection, recording what it is handed.

    With `limit`, it keeps at most that many frames and reports every later one as an overflow,
    like a connection whose queue is full. `on_wait` runs whenever the hub paces a replay.
    """

    def __init__(self, *, limit: int | None = None, on_wait=None):
        self.frames: list[str] = []
        self.overflows: list[str] = []
        self.limit = limit
        self.on_wait = on_wait

    def deliver(self, frame: str) -> None:
        if self.limit is not None and len(self.frames) >= self.limit:
            self.overflow("too slow")
            return
        self.frames.append(frame)

    async def wait_for_room(self) -> None:
        if self.on_wait is not None:
            await self.on_wait()

    def overflow(self, reason: str) -> None:
        self.overflows.append(reason)

    @property
    def decoded(self) -> list[dict]:
        return [json.loads(frame) for frame in self.frames]

    @property
    def seqs(self) -> list[int]:
        return [frame["seq"] for frame in self.decoded if frame["type"] == "event"]


@pytest.fixture
async def hub(transactional_db):
    """A started hub of this event loop (no heartbeat or presence), stopped at the end."""
    hub = Hub(redis_url=settings.REDIS_URL, heads_interval=60)
    hub.start()
    yield hub
    await hub.stop()
    await release_db_connections()


async def until(predicate, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def redis_subscribers(hub: Hub, stream: str) -> int:
    """How many Redis connections are subscribed to the stream's channel (PUBSUB NUMSUB)."""
    ((_, count),) = await hub.redis.pubsub_numsub(channel_for(stream))
    return count


async def join(hub: Hub, subscriber: FakeSubscriber, stream: str = BROADCAST, **kwargs) -> None:
    await hub.join(subscriber, parse_stream(stream), id=kwargs.pop("id", "s"), **kwargs)


async def test_hub_subscribers_of_one_stream_share_one_redis_subscription(hub):
    """Two local subscribers of a stream make one feed and one Redis subscription; both get each event."""
    first, second = FakeSubscriber(), FakeSubscriber()
    await join(hub, first)
    await join(hub, second)
    assert list(hub.feeds) == [BROADCAST] and len(hub.feeds[BROADCAST]) == 2
    assert await redis_subscribers(hub, BROADCAST) == 1
    other = FakeSubscriber()
    await join(hub, other, "chat:gangnam")
    assert sorted(hub.feeds) == [BROADCAST, "chat:gangnam"]
    assert await redis_subscribers(hub, "chat:gangnam") == 1
    await in_thread(emit_notices, 2)
    await until(lambda: len(first.seqs) == 2 and len(second.seqs) == 2)
    assert first.seqs == second.seqs == [1, 2] and other.seqs == []


async def test_hub_last_leave_unsubscribes_from_redis(hub):
    """The stream's Redis subscription stays while anyone is left and ends with the last leave; a new join renews it."""
    first, second = FakeSubscriber(), FakeSubscriber()
    await join(hub, first)
    await join(hub, second)
    await hub.leave(first, BROADCAST)
    assert len(hub.feeds[BROADCAST]) == 1 and await redis_subscribers(hub, BROADCAST) == 1
    await in_thread(emit_notices, 1)
    await until(lambda: second.seqs == [1])
    assert first.seqs == []
    await hub.leave(second, BROADCAST)
    assert hub.feeds == {}
    await until_async(lambda: redis_subscribers(hub, BROADCAST), 0)
    await hub.leave(second, BROADCAST)  # leaving twice is harmless
    again = FakeSubscriber()
    await join(hub, again)
    assert json.loads(again.frames[0])["head"] == 1
    await in_thread(emit_notices, 1)
    await until(lambda: again.seqs == [2])
    assert second.seqs == [1]


async def until_async(read, expected, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while await read() != expected:
            await asyncio.sleep(0.01)


async def test_hub_concurrent_first_joins_all_succeed_and_receive_the_next_event(hub):
    """Twenty simultaneous first joins of a stream all succeed on one subscription; each gets the next event once."""
    await in_thread(emit_notices, 3)
    subscribers = [FakeSubscriber() for _ in range(20)]
    await asyncio.gather(*(join(hub, s, id=f"s{i}") for i, s in enumerate(subscribers)))
    firsts = [s.decoded[0] for s in subscribers]
    assert [f["id"] for f in firsts] == [f"s{i}" for i in range(20)]
    assert {(f["type"], f["head"], f["recovered"]) for f in firsts} == {("subscribed", 3, False)}
    assert len(hub.feeds[BROADCAST]) == 20 and await redis_subscribers(hub, BROADCAST) == 1
    await in_thread(emit_notices, 1)
    marker = await in_thread(publish_marker, BROADCAST)  # once handed out, the hub has handled the event
    await until(lambda: all(s.decoded[-1] == marker for s in subscribers))
    assert all(len(s.frames) == 3 and s.seqs == [4] for s in subscribers)


async def test_hub_encodes_each_event_once_for_all_subscribers(hub, monkeypatch):
    """Every subscriber is handed the very same `str` object per event, also for an event filled from history."""
    subscribers = [FakeSubscriber() for _ in range(5)]
    for subscriber in subscribers:
        await join(hub, subscriber)
    original = outbox.publish
    monkeypatch.setattr(outbox, "publish", lambda events: original([e for e in events if e.seq != 2]))
    await in_thread(emit_notices, 3)  # seq 2 never reaches the bus: the hub fills it when 3 arrives
    await until(lambda: all(len(s.seqs) == 3 for s in subscribers))
    assert all(s.seqs == [1, 2, 3] for s in subscribers)
    for index in range(1, 4):
        frames = [s.frames[index] for s in subscribers]
        assert all(frame is frames[0] for frame in frames), index


async def test_hub_overflowing_subscriber_does_not_affect_others(hub):
    """A subscriber that overflows gets its overflow reports; the others still receive every event in order."""
    slow = FakeSubscriber(limit=3)  # `subscribed` and two events, then full
    others = [FakeSubscriber() for _ in range(3)]
    await join(hub, slow)
    for subscriber in others:
        await join(hub, subscriber)
    await in_thread(emit_notices, 10)
    await until(lambda: all(len(s.seqs) == 10 for s in others))
    assert all(s.seqs == list(range(1, 11)) for s in others)
    assert slow.seqs == [1, 2] and slow.overflows == ["too slow"] * 8
    await hub.leave(slow, BROADCAST)  # what the closing connection does next
    await in_thread(emit_notices, 1)
    await until(lambda: all(s.seqs[-1] == 11 for s in others))


async def test_hub_join_merges_events_arriving_during_a_chunked_replay(hub, monkeypatch):
    """Events committed between replay chunks reach the joiner once each, in order, merged with the replay."""
    monkeypatch.setattr(realtime.hub, "REPLAY_CHUNK", 5)
    live = FakeSubscriber()
    await join(hub, live)
    await in_thread(emit_notices, 20)
    await until(lambda: len(live.seqs) == 20)

    async def commit_meanwhile():
        """Between chunks: commit 3 events and let the hub hand them out (into the joiner's buffer)."""
        last = (await in_thread(emit_notices, 3))[-1]
        await until(lambda: live.seqs[-1] == last)

    epoch, _ = await in_thread(outbox.stream_position, BROADCAST)
    joiner = FakeSubscriber(on_wait=commit_meanwhile)
    await join(hub, joiner, since=3, epoch=epoch)
    head = json.loads(joiner.frames[0])["head"]
    assert json.loads(joiner.frames[0])["recovered"] is True and head == 20
    final = (await in_thread(emit_notices, 2))[-1]
    await until(lambda: joiner.seqs and joiner.seqs[-1] == final)
    assert final > 20 + 3  # events were committed during the replay
    assert joiner.seqs == list(range(4, final + 1))
    assert live.seqs == list(range(1, final + 1))


@pytest.mark.parametrize("since", [None, 0])
async def test_hub_failed_join_releases_the_feed(hub, monkeypatch, since):
    """A join whose database read fails raises, and leaves neither a feed nor a Redis subscription behind."""

    def broken(*args, **kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(outbox, "stream_position", broken)  # the feed's first read (without `since`, the only one)
    monkeypatch.setattr(outbox, "read_history", broken)
    with pytest.raises(RuntimeError):
        await join(hub, FakeSubscriber(), since=since)
    assert hub.feeds == {}
    await until_async(lambda: redis_subscribers(hub, BROADCAST), 0)


async def test_hub_join_without_since_on_a_live_feed_takes_the_hubs_position_and_reads_nothing(hub, monkeypatch):
    """A connection storm's subscribes cost no database read: `head` is the hub's position, later events follow."""
    first = FakeSubscriber()
    await join(hub, first)
    seqs = await in_thread(emit_notices, 3)
    await until(lambda: first.seqs == seqs)

    def no_read(*args, **kwargs):
        raise AssertionError("a join without since on a primed feed read the database")

    monkeypatch.setattr(outbox, "stream_position", no_read)
    monkeypatch.setattr(outbox, "read_history", no_read)
    second = FakeSubscriber()
    await join(hub, second, id="s2")
    monkeypatch.undo()
    epoch = first.decoded[0]["epoch"]
    subscribed = {"type": "subscribed", "id": "s2", "stream": BROADCAST, "epoch": epoch, "head": seqs[-1]}
    assert second.decoded == [{**subscribed, "recovered": False}]
    later = await in_thread(emit_notices, 2)
    await until(lambda: second.seqs == later)
    assert first.seqs == seqs + later
    assert second.overflows == first.overflows == []


async def test_bus_messages_read_together_are_delivered_in_one_loop_turn(hub):
    """A command's events, published in one pipeline, reach a subscriber in the same loop turn: one
    socket write for both (realtime.uvicorn_protocol writes once per socket per turn)."""
    from realtime.bus import message_for

    loop = asyncio.get_running_loop()
    turn, ticking = 0, True

    def tick():
        nonlocal turn
        turn += 1
        if ticking:
            loop.call_soon(tick)

    class TurnRecorder(FakeSubscriber):
        def __init__(self):
            super().__init__()
            self.turns: list[int] = []

        def deliver(self, frame: str) -> None:
            self.turns.append(turn)
            super().deliver(frame)

    subscriber = TurnRecorder()
    await join(hub, subscriber, "deliveries:gangnam")
    await join(hub, subscriber, "riders:gangnam")
    subscriber.frames.clear()
    subscriber.turns.clear()
    loop.call_soon(tick)
    for _ in range(3):  # three commands, one after the other
        count = len(subscriber.frames) + 2
        pipe = hub.redis.pipeline(transaction=False)
        pipe.publish(channel_for("deliveries:gangnam"), message_for(None, '{"type":"event","x":"delivery"}'))
        pipe.publish(channel_for("riders:gangnam"), message_for(None, '{"type":"event","x":"rider"}'))
        await pipe.execute()
        await until(lambda: len(subscriber.frames) == count)  # noqa: B023 (read at once)
    ticking = False
    pairs = [subscriber.turns[i : i + 2] for i in range(0, 6, 2)]
    assert all(first == second for first, second in pairs), subscriber.turns


async def test_hub_opens_new_redis_connections_without_reading_package_metadata(hub, package_metadata_reads):
    """The hub's pool grows under load, on the event loop: a connection must not walk sys.path."""
    pool = hub.redis.connection_pool
    connections = [await pool.get_connection() for _ in range(3)]  # at least two of them new
    try:
        for connection in connections:
            await connection.send_command("PING")
            assert await connection.read_response() in (b"PONG", "PONG")
    finally:
        for connection in connections:
            await pool.release(connection)
    assert package_metadata_reads == []

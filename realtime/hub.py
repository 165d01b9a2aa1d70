"""The per-process fan-out hub (design.md, "Fan-out is designed per process").

Each server process has one hub per event loop. It holds ONE Redis pub/sub subscription per
stream that has local subscribers, receives each event once, checks its `seq` once against the
stream's position, and hands the same encoded text to every local subscriber. Subscribers own
bounded queues and writer tasks (see `consumers.FrameSender`), so a slow socket never stalls the
hub.

Exactness, per logged stream:
- the hub delivers seqs contiguously: a duplicate is dropped, a gap is filled from the outbox
  history before anything later is delivered (the channel between processes may drop or reorder:
  two processes can publish k and k+1 in either order);
- a joining subscriber is registered before its history is read, so every event committed after
  that read reaches it through the hub; its buffer is merged with the replay by seq;
- every `heads_interval` the hub compares its position with the database heads, so the loss of
  the last event of a burst (or a Redis outage) is healed without waiting for a later event.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from django.conf import settings

from core.redis_connection import DRIVER_INFO
from realtime import frames, outbox
from realtime.bus import channel_for
from realtime.metrics import stats
from realtime.streams import StreamName

logger = logging.getLogger(__name__)

REPLAY_CHUNK = 500
FILL_YIELD_EVERY = 20
JOIN_BUFFER_LIMIT = 10_000
SUBSCRIBE_TIMEOUT = 5.0
_RECONCILE_START = '{"type":"reconcile",'
BUS_MESSAGES_PER_TURN = 64  # bus messages already read handled in one loop turn before yielding
METRICS_FLUSH_INTERVAL = 1.0  # seconds between handing the per-event counts to Prometheus

_db_read = database_sync_to_async  # reads run in the thread pool, never on the event loop


class Subscriber(Protocol):
    """What the hub needs from a connection. `deliver` never blocks and never raises."""

    def deliver(self, frame: str) -> None: ...

    async def wait_for_room(self) -> None: ...

    def overflow(self, reason: str) -> None: ...


@dataclass
class _Joiner:
    """A subscriber between registration and the end of its replay."""

    buffer: list[tuple[int, str]] | None = field(default_factory=list)
    upto: int = 0


class Feed:
    """One stream's local subscribers and the hub's position in it."""

    def __init__(self, stream: StreamName):
        self.stream = stream
        self.name = str(stream)
        self.logged = stream.logged
        self.live: set[Subscriber] = set()
        self.joining: dict[Subscriber, _Joiner] = {}
        self.epoch: str | None = None
        self.last_seq = 0
        self.primed = False
        self.early: list[tuple[int, str]] = []
        self.subscribed = asyncio.Event()
        self.lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self.live) + len(self.joining)

    def deliver(self, seq: int, frame: str) -> None:
        """Hand one frame to every local subscriber; `seq` 0 is a frame outside the sequence."""
        stats.delivered(frame, len(self.live) + len(self.joining), logged=seq > 0)
        for subscriber in self.live:
            subscriber.deliver(frame)
        if not self.joining:
            return
        for subscriber, joiner in list(self.joining.items()):
            if joiner.buffer is not None:
                joiner.buffer.append((seq, frame))
                if len(joiner.buffer) > JOIN_BUFFER_LIMIT:
                    subscriber.overflow("replay too slow")
            elif seq == 0:
                subscriber.deliver(frame)
            elif seq > joiner.upto:
                # The hub has caught up with what this subscriber replayed: it goes live.
                subscriber.deliver(frame)
                del self.joining[subscriber]
                self.live.add(subscriber)


async def _flush_metrics() -> None:
    stats.flush()


class Hub:
    def __init__(self, *, redis_url: str, heads_interval: float = 5.0):
        self.redis_url = redis_url
        self.heads_interval = heads_interval
        self.feeds: dict[str, Feed] = {}
        self.connections: set = set()
        self._by_channel: dict[bytes, Feed] = {}
        self._redis: aioredis.Redis | None = None
        self._pubsub = None
        self._pubsub_lock = asyncio.Lock()
        self._has_channels = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stop_actions: list[Callable[[], Awaitable[object]]] = []
        self.presence = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to Redis and start the reader and the heads check (synchronous: no await, no race)."""
        # A blocking pool: a thousand sockets connecting or dropping at once wait for a connection
        # for their presence writes instead of failing with MaxConnectionsError.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.redis_url, max_connections=64, timeout=10, driver_info=DRIVER_INFO
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._pubsub = self._redis.pubsub()
        self.spawn(self._read_bus(), name="hub-reader")
        self.every(self.heads_interval, self.check_heads, name="hub-heads")
        self.every(METRICS_FLUSH_INTERVAL, _flush_metrics, name="hub-metrics")

    def every(self, interval: float, action: Callable[[], Awaitable[object]], *, name: str) -> asyncio.Task:
        """Run `action` every `interval` seconds until the hub stops; a failure is logged, not fatal."""

        async def loop():
            while True:
                await asyncio.sleep(interval)
                try:
                    await action()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("%s failed", name)

        task = asyncio.create_task(loop(), name=name)
        self._tasks.append(task)
        return task

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    def spawn(self, coroutine, *, name: str) -> asyncio.Task:
        """Run a one-off task owned by the hub (cancelled when it stops)."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.append(task)
        return task

    def on_stop(self, action: Callable[[], Awaitable[object]]) -> None:
        self._stop_actions.append(action)

    async def stop(self) -> None:
        for action in self._stop_actions:
            try:
                await action()
            except Exception:
                logger.warning("hub stop action failed", exc_info=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    # -- joining and leaving -----------------------------------------------------------------

    async def join(self, subscriber: Subscriber, stream: StreamName, *, id, since=None, epoch=None) -> None:
        """Subscribe: send `subscribed`, the replay (or `reset`), then live events, with no gap or duplicate."""
        joiner = _Joiner()
        feed = await self._feed_for(stream, subscriber, joiner)
        try:
            if feed.logged and not feed.primed:
                await self._prime(feed)
            if feed.logged:
                upto = await self._replay(subscriber, feed, id=id, since=since, epoch=epoch)
            else:
                subscriber.deliver(frames.subscribed(id=id, stream=feed.name, epoch=None, head=None, recovered=False))
                for frame in await _db_read(self._initial_frames, thread_sensitive=False)(stream):
                    subscriber.deliver(frame)
                upto = 0
        except BaseException:
            feed.joining.pop(subscriber, None)
            await self._release_if_unused(feed)
            raise
        self._finish_join(feed, subscriber, joiner, upto)

    async def leave(self, subscriber: Subscriber, stream_name: str) -> None:
        feed = self.feeds.get(stream_name)
        if feed is None:
            return
        feed.live.discard(subscriber)
        feed.joining.pop(subscriber, None)
        await self._release_if_unused(feed)

    async def _replay(self, subscriber: Subscriber, feed: Feed, *, id, since, epoch) -> int:
        """Send `subscribed` and the history after `since`; return the last seq sent."""
        if since is None and feed.primed:
            # No history to send: the head is the hub's own position, which needs no database read
            # (a connection storm's subscribes were one read each). The subscriber is registered,
            # so every event after that position reaches it through the feed (protocol §3.4).
            subscriber.deliver(
                frames.subscribed(id=id, stream=feed.name, epoch=feed.epoch, head=feed.last_seq, recovered=False)
            )
            return feed.last_seq
        read = _db_read(outbox.read_history, thread_sensitive=False)
        history = await read(feed.name, since=since, epoch=epoch, limit=REPLAY_CHUNK)
        recovered = since is not None and not history.reset
        subscriber.deliver(
            frames.subscribed(id=id, stream=feed.name, epoch=history.epoch, head=history.head, recovered=recovered)
        )
        if history.reset:
            stats.reset_sent("history_expired")
            subscriber.deliver(
                frames.reset(stream=feed.name, epoch=history.epoch, head=history.head, reason="history_expired")
            )
            return history.head
        if not recovered:
            return history.head
        while True:
            for event in history.events:
                subscriber.deliver(outbox.encode_frame(event))
            if len(history.events) < REPLAY_CHUNK:
                return history.last_seq
            await subscriber.wait_for_room()
            history = await read(feed.name, since=history.last_seq, epoch=history.epoch, limit=REPLAY_CHUNK)
            if history.reset:  # pruned mid-replay: vanishingly rare, but never leave a gap
                stats.reset_sent("history_expired")
                subscriber.deliver(
                    frames.reset(stream=feed.name, epoch=history.epoch, head=history.head, reason="history_expired")
                )
                return history.head

    @staticmethod
    def _initial_frames(stream: StreamName) -> list[str]:
        """Current state an ephemeral stream's new subscriber gets first (positions)."""
        join_frames = stream.kind.join_frames
        return join_frames(stream.room) if join_frames else []

    def _finish_join(self, feed: Feed, subscriber: Subscriber, joiner: _Joiner, upto: int) -> None:
        """Merge what arrived during the replay, then go live (synchronous: nothing interleaves)."""
        buffered, joiner.buffer, joiner.upto = joiner.buffer or [], None, upto
        for seq, frame in buffered:
            if seq == 0 or not feed.logged:
                subscriber.deliver(frame)
            elif seq > joiner.upto:
                subscriber.deliver(frame)
                joiner.upto = seq
        if not feed.logged or feed.last_seq <= joiner.upto:
            if feed.last_seq < joiner.upto:
                return  # the hub is behind this subscriber; Feed.deliver promotes it on the next seq
            del feed.joining[subscriber]
            feed.live.add(subscriber)
        else:  # cannot happen while the hub delivers contiguously; never risk a silent gap
            logger.error("join of %s ended behind the hub (%s < %s)", feed.name, joiner.upto, feed.last_seq)
            subscriber.overflow("resync")

    # -- the bus -------------------------------------------------------------------------------

    async def _feed_for(self, stream: StreamName, subscriber: Subscriber, joiner: _Joiner) -> Feed:
        """Register a joiner on the stream's feed, subscribing this process to its channel if needed.

        The joiner is registered under the same lock that releases unused feeds, so a concurrent
        last `leave` cannot unsubscribe the feed it is joining.
        """
        name = str(stream)
        async with self._pubsub_lock:  # serialize (un)subscribe: concurrent first joins raced in redis-py
            feed = self.feeds.get(name)
            if feed is None:
                feed = self.feeds[name] = Feed(stream)
                channel = channel_for(name).encode()
                self._by_channel[channel] = feed
                try:
                    await self._pubsub.subscribe(channel)
                    self._has_channels.set()
                    await asyncio.wait_for(feed.subscribed.wait(), SUBSCRIBE_TIMEOUT)
                except BaseException:
                    del self.feeds[name], self._by_channel[channel]
                    await self._safe_unsubscribe(channel)
                    raise
            feed.joining[subscriber] = joiner
        return feed

    async def _prime(self, feed: Feed) -> None:
        """Take the database head as the starting position, then process what arrived meanwhile."""
        async with feed.lock:
            if feed.primed:
                return
            feed.epoch, feed.last_seq = await _db_read(outbox.stream_position, thread_sensitive=False)(feed.name)
            while feed.early:
                seq, frame = feed.early.pop(0)
                await self._accept(feed, seq, frame)
            feed.primed = True

    async def _release_if_unused(self, feed: Feed) -> None:
        async with self._pubsub_lock:
            if len(feed) or self.feeds.get(feed.name) is not feed:
                return
            channel = channel_for(feed.name).encode()
            del self.feeds[feed.name], self._by_channel[channel]
            await self._safe_unsubscribe(channel)

    async def _safe_unsubscribe(self, channel: bytes) -> None:
        try:
            await self._pubsub.unsubscribe(channel)
        except Exception:  # the connection is down; on reconnect redis-py subscribes only live channels
            logger.warning("unsubscribe from %s failed", channel, exc_info=True)

    async def _read_bus(self) -> None:
        backoff = 0.1
        handled = 0
        while True:
            await self._has_channels.wait()
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("Redis pub/sub failed; reconnecting in %.1fs", backoff, exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                asyncio.create_task(self.check_heads())  # heal what the outage swallowed
                continue
            if message is None:
                continue
            feed = self._by_channel.get(message["channel"])
            if feed is None:
                continue
            if message["type"] == "subscribe":
                feed.subscribed.set()
            elif message["type"] == "message":
                await self._on_message(feed, message["data"])
            # Messages already read from Redis are handled in the same loop turn, so the events of
            # one command, published together, reach each socket in one write at the turn's end
            # (realtime.uvicorn_protocol); every BUS_MESSAGES_PER_TURN it yields, so that a burst
            # cannot starve the rest of the loop. (Waiting for Redis ends the turn anyway.)
            handled += 1
            if handled >= BUS_MESSAGES_PER_TURN:
                handled = 0
                await asyncio.sleep(0)

    async def _on_message(self, feed: Feed, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        seq, frame = int(head), body.decode()
        if not feed.logged or seq == 0:
            if feed.logged and frame.startswith(_RECONCILE_START):
                self._check_reconcile(feed, frame)
            feed.deliver(0, frame)
        elif not feed.primed:
            feed.early.append((seq, frame))
        elif seq <= feed.last_seq:
            return  # a duplicate (the bus may repeat a message): delivered already
        elif seq == feed.last_seq + 1 and not feed.lock.locked():
            feed.last_seq = seq
            feed.deliver(seq, frame)
        else:
            async with feed.lock:
                await self._accept(feed, seq, frame)

    async def _accept(self, feed: Feed, seq: int, frame: str) -> None:
        """Deliver `seq` after filling any gap before it (caller holds the feed lock)."""
        if seq <= feed.last_seq:
            return
        if seq > feed.last_seq + 1:
            await self._fill(feed, upto=seq - 1)
            if seq <= feed.last_seq:
                return
        feed.last_seq = seq
        feed.deliver(seq, frame)

    def _check_reconcile(self, feed: Feed, frame: str) -> None:
        """Count a reconcile frame whose head is ahead of this hub (the ops monitor's mismatches).

        Nothing is filled here: the heads check heals the hub within REALTIME_HEADS_INTERVAL, and the
        clients fetch what they miss themselves (protocol §3.5). A frame that merely overtook an
        event's publish counts too; a steady rate means publishes are being lost.
        """
        reconcile = json.loads(frame)
        if feed.primed and reconcile.get("epoch") == feed.epoch and reconcile.get("head", 0) > feed.last_seq:
            stats.reconcile_mismatch()

    async def _fill(self, feed: Feed, *, upto: int) -> None:
        """Deliver the events after the hub's position up to `upto`, read from history."""
        read = _db_read(outbox.read_history, thread_sensitive=False)
        if feed.last_seq < upto:
            stats.gap_repaired()
        while feed.last_seq < upto:
            history = await read(feed.name, since=feed.last_seq, epoch=feed.epoch, limit=REPLAY_CHUNK)
            if history.reset:
                logger.error("history of %s cannot fill %s..%s: resetting subscribers", feed.name, feed.last_seq, upto)
                self._reset(feed, epoch=history.epoch, head=history.head)
                return
            if not history.events:
                return
            for n, event in enumerate(history.events, 1):
                feed.last_seq = event.seq
                feed.deliver(event.seq, outbox.encode_frame(event))
                if n % FILL_YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a long fill to thousands of sockets must not starve the loop

    async def check_heads(self) -> None:
        """Fill every logged feed up to its database head (lost last events, Redis outages).

        A stream whose epoch changed (its history was reset, e.g. a restored database) gets a
        `reset` frame: its new seqs would otherwise look like duplicates of the old ones.
        """
        names = [name for name, feed in self.feeds.items() if feed.logged and feed.primed]
        if not names:
            return
        positions = await _db_read(outbox.stream_positions, thread_sensitive=False)(names)
        for name, (epoch, head) in positions.items():
            feed = self.feeds.get(name)
            if feed is None or not feed.primed:
                continue
            if epoch != feed.epoch:
                logger.warning("history of %s was reset (epoch %s → %s)", name, feed.epoch, epoch)
                async with feed.lock:
                    self._reset(feed, epoch=epoch, head=head)
            elif head > feed.last_seq:
                async with feed.lock:
                    await self._fill(feed, upto=head)

    def _reset(self, feed: Feed, *, epoch: str, head: int) -> None:
        """Tell every subscriber the stream's history was reset; continue from its new head."""
        feed.epoch, feed.last_seq = epoch, head
        stats.reset_sent("history_reset")
        feed.deliver(0, frames.reset(stream=feed.name, epoch=epoch, head=head, reason="history_reset"))

    async def heads_of(self, names: list[str]) -> dict[str, int]:
        return await _db_read(outbox.stream_heads, thread_sensitive=False)(names)


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def get_hub() -> Hub:
    """Return this event loop's hub, starting it on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(redis_url=settings.REDIS_URL, heads_interval=settings.REALTIME_HEADS_INTERVAL)
        # In an empty context: the hub's tasks outlive the connection that may be starting it, and
        # must not log under its connection id (core.log_context).
        contextvars.Context().run(_start, hub)
    return hub


def _start(hub: Hub) -> None:
    hub.start()
    for hook in _start_hooks:
        hook(hub)


_start_hooks: list[Callable[[Hub], None]] = []


def on_hub_start(hook: Callable[[Hub], None]) -> Callable[[Hub], None]:
    """Register `hook(hub)` to run when a hub starts (periodic pings, position batches, presence)."""
    if hook not in _start_hooks:  # an app's ready() may run more than once (tests)
        _start_hooks.append(hook)
    return hook


async def stop_hub() -> None:
    hub = _hubs.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.stop()

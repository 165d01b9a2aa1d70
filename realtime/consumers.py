"""The protocol consumer for `/ws/v1/` (protocol.md §3): authenticate, authorize, relay. No business rules.

Unlike the textbook Channels consumer, a connection has no channel-layer channel of its own: the
process's hub (`realtime.hub`) receives each event once and hands the encoded text to every local
connection's `FrameSender`. Each sender has a bounded queue and its own writer task, so a client
that stops reading fills only its own queue and is closed with 4001; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import secrets
import socket
import time
from collections import deque

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from redis.exceptions import RedisError

from core import strict_input
from core.access import access_for, cached_access
from core.access_versions import parse_version, versions_key
from core.log_context import connection_id
from core.metrics import COMMANDS, FRAME_OUTCOMES
from realtime import frames, ratelimit, registry, services
from realtime.hub import Hub, get_hub, on_hub_start
from realtime.lean import Flag
from realtime.metrics import stats
from realtime.presence import Presence
from realtime.streams import UnknownStream, can_publish, can_subscribe, parse_stream, subscribe_verdict
from realtime.uvicorn_protocol import WRITE_TEXT

logger = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4001
CLOSE_IDLE = 4002
CLOSE_ACCESS_REVOKED = 4003
CLOSE_TOO_LARGE = 1009
CLOSE_TIMEOUT = 2.0
HEARTBEAT_SLICE = 250  # sockets ticked between two yields to the event loop
HEARTBEAT_STEP = 1.0  # s, at least: each step pings one slot of the sockets; every socket once per ping interval
HEARTBEAT_SLOTS = 20  # at most: a longer interval has longer steps (a 600 s one pings its first slot after 30 s)
MAX_ID_LENGTH = 100

_conn_ids = itertools.count(1)
PROCESS_ID = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class BadFrame(ValueError):
    """A client frame that breaks the protocol; answered with `error`, the socket stays open."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _parse_frame(text: str) -> dict:
    """The frame's JSON object, or BadFrame; its values are checked once its `id` is known."""
    try:
        frame = strict_input.parse_json(text)
    except strict_input.StrictInputError as exc:
        raise BadFrame("bad_request", str(exc)) from None
    except ValueError:
        raise BadFrame("bad_request", "Not JSON.") from None
    if not isinstance(frame, dict):
        raise BadFrame("bad_request", "A frame is a JSON object.")
    return frame


def _valid_id(frame_id: object) -> bool:
    return isinstance(frame_id, str) and len(frame_id) <= MAX_ID_LENGTH and strict_input.is_valid_text(frame_id)


class _Resume:
    """Await a coroutine that was already started and suspended on `pending` (see FrameSender.put)."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro, pending):
        self._coro, self._pending = coro, pending

    def __await__(self):
        pending = self._pending
        while True:
            try:
                yield pending  # what the coroutine waits for, handed to the task driving us
            except BaseException as exc:
                send = functools.partial(self._coro.throw, exc)
            else:
                send = functools.partial(self._coro.send, None)
            try:
                pending = send()
            except StopIteration as done:
                return done.value


class FrameSender:
    """A socket's bounded outgoing queue.

    While the socket keeps up, `put` writes at once: uvicorn's `send` completes without suspending
    when the transport is writable, so the frame goes out with no task switch — the cost that
    dominates fan-out to thousands of sockets. Only when a send has to wait (the client reads
    slowly) does a writer task take over, finishing that send and draining the queue behind it.
    The queue exists from then on only: an idle socket's sender is a few slots.
    """

    __slots__ = (
        "_send",
        "_write_now",
        "_queue",
        "_limit",
        "_on_overflow",
        "_room",
        "_writer",
        "_stopped",
        "frames_sent",
    )

    def __init__(self, send, *, limit: int, on_overflow, write_now=None):
        self._send = send
        # The server's synchronous write (realtime.uvicorn_protocol's scope extension), if it has
        # one: True when the frame went out, False when `send` must take it.
        self._write_now = write_now
        self._queue: deque[str] | None = None  # made when a send first has to wait
        self._limit = limit
        self._on_overflow = on_overflow
        self._room = Flag(True)
        self._writer: asyncio.Task | None = None
        self._stopped = False
        self.frames_sent = 0

    def put(self, frame: str) -> bool:
        """Send or queue a frame; False (and the overflow callback) if the client is too far behind."""
        if self._stopped:
            return False
        if self._writer is not None:  # a send is waiting: keep order behind it
            if len(self._queue) >= self._limit:
                self._on_overflow("too slow")
                return False
            self._queue.append(frame)
            if len(self._queue) > self._limit // 2:
                self._room.clear()
            return True
        if self._write_now is not None and self._write_now(frame):
            self.frames_sent += 1
            return True
        coroutine = self._send({"type": "websocket.send", "text": frame})
        try:
            pending = coroutine.send(None)
        except StopIteration:
            self.frames_sent += 1
            return True
        except Exception:  # the client went away; the receive loop sees the disconnect
            self._stopped = True
            return False
        if self._queue is None:
            self._queue = deque()
        self._writer = asyncio.ensure_future(self._drain(_Resume(coroutine, pending)))
        return True

    async def _drain(self, started) -> None:
        """Finish the send that had to wait, then everything queued behind it."""
        queue, send = self._queue, self._send
        try:
            await started
            self.frames_sent += 1
            while queue:
                frame = queue.popleft()
                if not self._room.is_set() and len(queue) <= self._limit // 2:
                    self._room.set()
                await send({"type": "websocket.send", "text": frame})
                self.frames_sent += 1
        except Exception:
            self._stopped = True
        finally:
            self._room.set()
            self._writer = None

    async def wait_for_room(self, timeout: float = 30.0) -> None:
        """Wait until the queue is at most half full (pacing for replays)."""
        await asyncio.wait_for(self._room.wait(), timeout)

    async def stop(self) -> None:
        self._stopped = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer


class ProtocolConsumer(AsyncConsumer):
    """One WebSocket connection speaking protocol v1."""

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.base_send = send
        self.serial = next(_conn_ids)  # also its heartbeat slot (`_start_heartbeat`)
        self.conn_id = f"{PROCESS_ID}-{self.serial}"
        connection_id.set(self.conn_id)  # for this connection's log lines (tasks below inherit it)
        self.counted_role: str | None = None
        self.user = scope.get("user")
        self.access_version = 0
        self.streams: set[str] = set()
        self.joining: set[str] = set()  # subscribed streams whose `subscribed` and replay are not sent yet
        self.hub: Hub | None = None
        self.sender: FrameSender | None = None
        self.last_seen = time.monotonic()
        self.unanswered_ping_since: float | None = None
        self.unread_after_ping = 0
        self._close_code: int | None = None
        # The receive loop runs in the server's own task for this connection: no task of its own,
        # no stop event and no asyncio.wait between them (~3 kB per idle socket, docs/benchmarks.md
        # "Memory per idle connection"). `_close` ends it by cancelling this task.
        self._receiving: asyncio.Task | None = asyncio.current_task()
        self._stopping = False
        try:
            await self._receive_loop(receive)
        except asyncio.CancelledError:
            # Ours (`_close`) is swallowed: the connection ends normally. Anyone else's goes on.
            if not self._stopping or self._receiving.uncancel() > 0:
                raise
        except Exception:
            logger.exception("connection %s failed", self.conn_id)
        finally:
            self._receiving = None
            await self._cleanup()
        # Returning ends the ASGI connection. If the client stopped reading, the close frame could
        # not be written and the transport still holds unsent frames: realtime.uvicorn_protocol
        # aborts it (plain uvicorn would wait for it to drain forever).

    # -- connection lifecycle ----------------------------------------------------------------

    async def _receive_loop(self, receive) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.connect":
                if not await self._accept():
                    return
            elif kind == "websocket.receive":
                await self._on_frame(message)
            elif kind == "websocket.disconnect":
                return

    async def _accept(self) -> bool:
        """Refuse (HTTP 403) a handshake without an authenticated active user; else accept."""
        user = self.user
        if user is None or not user.is_authenticated or not user.is_active:
            await self.base_send({"type": "websocket.close"})
            return False
        self.hub = get_hub()
        if "access_version" in self.scope and cached_access(user) is not None:
            # realtime.auth read both in the handshake's one thread hop, the version first.
            self.access_version, self.access = self.scope["access_version"], cached_access(user)
        else:
            # The version is read before the access, so a change in between is caught by the next check.
            self.access_version = await self._read_access_version()
            self.access = await database_sync_to_async(access_for)(user)
        await self.base_send({"type": "websocket.accept"})
        # Frames go straight to the server's send (bros.asgi.with_server_send); accept and close
        # keep going through the middleware stack.
        frame_send = self.scope.get("server_send", self.base_send)
        self.sender = FrameSender(
            frame_send,
            limit=settings.REALTIME_QUEUE_LIMIT,
            on_overflow=self.overflow,
            write_now=self.scope.get("extensions", {}).get(WRITE_TEXT),
        )
        self.hub.connections.add(self)
        self.counted_role = self.access.role or "none"
        stats.connected(self.counted_role)
        await self._presence(
            "connect", self.conn_id, user_id=user.pk, username=user.get_username(), role=self.access.role
        )
        return True

    async def _read_access_version(self) -> int:
        try:
            return parse_version(await self.hub.redis.hget(versions_key(), str(self.user.pk)))
        except RedisError:
            logger.warning("access version unreadable for %s", self.conn_id, exc_info=True)
            return 0

    async def _presence(self, method: str, *args, **kwargs) -> None:
        """Report to presence; a failed write is repaired by the process's next heartbeat."""
        presence = getattr(self.hub, "presence", None)
        if presence is None:
            return
        try:
            await getattr(presence, method)(*args, **kwargs)
        except RedisError:
            logger.warning("presence %s failed for %s", method, self.conn_id, exc_info=True)

    async def _cleanup(self) -> None:
        if self.counted_role is not None:
            stats.disconnected(self.counted_role)
            self.counted_role = None
        if self.hub is not None:
            self.hub.connections.discard(self)
            for stream in list(self.streams):
                await self.hub.leave(self, stream)
            self.streams.clear()
            await self._presence("disconnect", self.conn_id)
        if self.sender is not None:
            await self.sender.stop()

    def close_soon(self, code: int) -> None:
        """Close with `code`; if the client no longer reads, drop the connection instead."""
        if self._close_code is not None:
            return
        self._close_code = code
        asyncio.create_task(self._close(code))

    async def _close(self, code: int) -> None:
        if self.sender is not None:
            await self.sender.stop()
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(self.base_send({"type": "websocket.close", "code": code}), CLOSE_TIMEOUT)
        if self._receiving is not None:  # still receiving: end it (the client may never answer the close)
            self._stopping = True
            self._receiving.cancel()

    # -- what the hub calls ----------------------------------------------------------------------

    def deliver(self, frame: str) -> None:
        if self._close_code is not None:
            return
        if self.unanswered_ping_since is not None:
            # Frames after a ping the client has not answered are unread as far as we know; past
            # the queue bound the client is too slow even if the server's send never pushes back.
            self.unread_after_ping += 1
            if self.unread_after_ping > settings.REALTIME_QUEUE_LIMIT:
                self.overflow("too slow")
                return
        self.sender.put(frame)

    async def wait_for_room(self) -> None:
        try:
            await self.sender.wait_for_room()
        except TimeoutError:
            self.overflow("replay not read")
            raise

    def overflow(self, reason: str) -> None:
        logger.info("closing %s (%s): %s", self.conn_id, self.user, reason)
        self.close_soon(CLOSE_TOO_SLOW)

    def tick(
        self, now: float, heads: dict[str, int] | None, logged: frozenset[str] = frozenset(), pings: dict | None = None
    ) -> None:
        """Drop a silent client (4002) or one that no longer reads (4001); send `ping` with heads when asked.

        A `ping` is queued behind every frame sent before it, so a client that has not answered
        one within REALTIME_PONG_TIMEOUT has not read that far. This catches laggards also on servers
        whose `send` never pushes back (daphne buffers without limit).
        """
        if now - self.last_seen > settings.REALTIME_IDLE_TIMEOUT:
            self.close_soon(CLOSE_IDLE)
        elif (
            self.unanswered_ping_since is not None and now - self.unanswered_ping_since > settings.REALTIME_PONG_TIMEOUT
        ):
            self.overflow("too slow: ping not answered")
        elif heads is not None:
            # Not a stream still joining: its replay follows, so its head would make the client
            # fetch over HTTP what the replay is about to send (or reload an expired one twice).
            mine = {s: heads.get(s, 0) for s in self.streams if s in logged and s not in self.joining}
            # Sockets with the same streams share one frame text (`pings`, one per heartbeat), so
            # the server frames it once for all of them, as it does an event.
            key = frozenset(mine.items())
            frame = pings.get(key) if pings is not None else None
            if frame is None:
                frame = frames.dumps({"type": "ping", "heads": mine})
                if pings is not None:
                    pings[key] = frame
            self.deliver(frame)
            if self.unanswered_ping_since is None:
                self.unanswered_ping_since, self.unread_after_ping = now, 0

    async def reauthorize(self, user, lost: list[str], version: int) -> None:
        """Adopt the user's new access: leave each stream in `lost` with an `unsubscribed` frame.

        `user` is freshly read (None if it was deleted or deactivated: the socket closes with 4003).
        """
        self.access_version = version
        if user is None:
            self.close_soon(CLOSE_ACCESS_REVOKED)
            return
        self.user, self.access = user, access_for(user)
        for name in lost:
            if name in self.streams:
                self.streams.discard(name)
                await self.hub.leave(self, name)
                self.deliver(frames.dumps({"type": "unsubscribed", "id": None, "stream": name, "reason": "forbidden"}))
        if lost:
            await self._presence("set_streams", self.conn_id, sorted(self.streams))

    # -- client frames -------------------------------------------------------------------------

    async def _on_frame(self, message: dict) -> None:
        self.last_seen = time.monotonic()
        text = message.get("text")
        frame_id = None
        command = False  # a publish or an app frame (position): counted by outcome, like API commands
        try:
            if text is None:
                raise BadFrame("bad_request", "Frames must be JSON text.")
            # The limit is in bytes; only a frame of over a quarter of it in characters can exceed it.
            if len(text) > settings.REALTIME_MAX_FRAME // 4 and len(text.encode()) > settings.REALTIME_MAX_FRAME:
                raise BadFrame("too_large", "Frames are limited to 64 KiB.")
            frame = _parse_frame(text)
            frame_id = frame.get("id")
            if frame_id is not None and not _valid_id(frame_id):
                frame_id = None  # an id we cannot echo (a lone surrogate would make the reply unsendable)
                raise BadFrame(
                    "bad_request", f'"id" must be a string of valid Unicode of at most {MAX_ID_LENGTH} characters.'
                )
            try:
                strict_input.check_json(frame)
            except strict_input.StrictInputError as exc:
                raise BadFrame("bad_request", str(exc)) from None
            kind = frame.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None and isinstance(kind, str) and registry.frame_handler(kind) is not None:
                handler = ProtocolConsumer._app_frame
            if handler is None:
                raise BadFrame("bad_request", "Unknown frame type.")
            command = handler is ProtocolConsumer._publish or handler is ProtocolConsumer._app_frame
            await handler(self, frame, frame_id)
            if command:
                COMMANDS.labels("ws", "ok").inc()
        except BadFrame as bad:
            if command:
                COMMANDS.labels("ws", FRAME_OUTCOMES.get(bad.code, "invalid")).inc()
            self.deliver(frames.error(id=frame_id, code=bad.code, message=bad.message))
        except asyncio.CancelledError:
            raise
        except Exception:
            if command:
                COMMANDS.labels("ws", "error").inc()
            logger.exception("frame from %s failed", self.conn_id)
            self.deliver(frames.error(id=frame_id, code="internal", message="Something went wrong on our side."))

    def _stream_of(self, frame: dict):
        if not isinstance(frame.get("stream"), str):
            raise BadFrame("bad_request", '"stream" must be a string like "deliveries:gangnam".')
        try:
            return parse_stream(frame["stream"])
        except UnknownStream:
            raise BadFrame("unknown_stream", "No such stream.") from None

    async def _subscribe(self, frame: dict, frame_id) -> None:
        stream = self._stream_of(frame)
        since, epoch = frame.get("since"), frame.get("epoch")
        if since is not None and (type(since) is not int or since < 0):
            raise BadFrame("bad_request", '"since" must be a non-negative integer.')
        if epoch is not None and not isinstance(epoch, str):
            raise BadFrame("bad_request", '"epoch" must be a string.')
        allowed = subscribe_verdict(self.access, stream)
        if allowed is None:  # the rule needs the database (e.g. HQ and a center's existence)
            allowed = await database_sync_to_async(can_subscribe, thread_sensitive=False)(self.user, stream)
        if not allowed:
            raise BadFrame("forbidden", "not allowed")
        name = str(stream)
        if name in self.streams:
            return  # idempotent: one `subscribed`, no duplicate delivery
        self.streams.add(name)
        self.joining.add(name)
        try:
            await self.hub.join(self, stream, id=frame_id, since=since, epoch=epoch)
        except BaseException:
            self.streams.discard(name)
            raise
        finally:
            self.joining.discard(name)
        await self._presence("set_streams", self.conn_id, sorted(self.streams))

    async def _unsubscribe(self, frame: dict, frame_id) -> None:
        stream = self._stream_of(frame)
        name = str(stream)
        if name in self.streams:
            self.streams.discard(name)
            await self.hub.leave(self, name)
            await self._presence("set_streams", self.conn_id, sorted(self.streams))
        self.deliver(frames.dumps({"type": "unsubscribed", "id": frame_id, "stream": name}))

    async def _publish(self, frame: dict, frame_id) -> None:
        stream = self._stream_of(frame)
        event, data = frame.get("event"), frame.get("data")
        if not isinstance(event, str) or not isinstance(data, dict):
            raise BadFrame("bad_request", 'A publish needs "event" (string) and "data" (object).')
        try:
            await asyncio.to_thread(ratelimit.take_publish, f"user:{self.user.pk}")
        except ratelimit.RateLimited as exc:
            raise BadFrame("rate_limited", str(exc)) from None
        if not await database_sync_to_async(can_publish)(self.user, stream):
            raise BadFrame("forbidden", "not allowed")
        try:
            row = await database_sync_to_async(services.publish_event)(
                actor=self.user, stream=stream, event=event, data=data
            )
        except services.NotPublishable as exc:
            raise BadFrame("bad_request", str(exc)) from None
        self.deliver(frames.dumps({"type": "ack", "id": frame_id, "stream": str(stream), "seq": row.seq}))

    async def _app_frame(self, frame: dict, frame_id) -> None:
        """A frame type an app registered (riders' `position`), handled on the event loop."""
        handler = registry.frame_handler(frame["type"])
        fields = {k: v for k, v in frame.items() if k not in ("type", "id")}
        try:
            await handler(self.access, fields)
        except registry.FrameRefused as exc:
            raise BadFrame(exc.code, exc.message) from None

    async def _ping(self, frame: dict, frame_id) -> None:
        self.deliver(frames.dumps({"type": "pong", "id": frame_id}))

    async def _pong(self, frame: dict, frame_id) -> None:
        self.unanswered_ping_since = None  # it read everything sent before the ping

    _handlers = {
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "publish": _publish,
        "ping": _ping,
        "pong": _pong,
    }


def _reread_access(user_id: int, subscriptions: list[list[str]]) -> tuple[object | None, list[list[str]]]:
    """The user afresh (None if deleted or inactive) and, per socket's streams, those no longer readable."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return None, [[] for _ in subscriptions]
    access_for(user)  # read here, in a thread, and cached on the user for `reauthorize`
    return user, [[name for name in names if not can_subscribe(user, parse_stream(name))] for names in subscriptions]


async def recheck_access(hub: Hub) -> None:
    """Re-authorize the sockets of users whose access version moved; one Redis round trip for all.

    Only users whose version changed are read from the database, so a quiet tick costs one HMGET.
    """
    by_user: dict[int, list[ProtocolConsumer]] = {}
    for connection in hub.connections:
        if connection.user is not None and connection._close_code is None:
            by_user.setdefault(connection.user.pk, []).append(connection)
    if not by_user:
        return
    user_ids = list(by_user)
    try:
        versions = await hub.redis.hmget(versions_key(), [str(pk) for pk in user_ids])
    except RedisError:
        logger.warning("access versions unreadable; re-checking at the next tick", exc_info=True)
        return
    for user_id, raw in zip(user_ids, versions, strict=True):
        version = parse_version(raw)
        changed = [c for c in by_user[user_id] if c.access_version != version]
        if not changed:
            continue
        # The stream sets are copied here: the event loop may change them while the thread reads.
        user, lost = await database_sync_to_async(_reread_access)(user_id, [sorted(c.streams) for c in changed])
        for connection, streams in zip(changed, lost, strict=True):
            await connection.reauthorize(user, streams, version)


@on_hub_start
def _start_heartbeat(hub: Hub) -> None:
    """Ping every socket once per ping interval, a slot of them each step; drop idle clients every ~5 s.

    Pinging all sockets in one tick made a burst every 20 s: thousands of `ping` frames out, then
    thousands of `pong`s in, with the events and HTTP commands of that moment queued behind them
    (the shift benchmark's HTTP p99 halved without it: docs/benchmarks.md, "2026-12-04 night").
    So the interval is cut into at most `HEARTBEAT_SLOTS` steps of at least `HEARTBEAT_STEP` and
    each socket pings in the step of its slot (consecutive connections take consecutive slots).
    The access re-check runs once per interval, before its first step's pings.
    """
    interval = settings.REALTIME_PING_INTERVAL
    slots = max(1, min(HEARTBEAT_SLOTS, int(interval / HEARTBEAT_STEP)))
    step = interval / slots
    idle_check_every = max(1, round(min(5.0, interval) / step))  # steps
    steps = itertools.count()
    known: dict = {"streams": frozenset(), "heads": {}}

    async def heartbeat():
        n = next(steps)
        slot, check_idle = n % slots, n % idle_check_every == 0
        if slot == 0:
            # Before the pings, so that they no longer carry heads of streams just lost. A failure
            # must not stop the pings (clients answering only pings would then look idle).
            try:
                await recheck_access(hub)
            except Exception:
                logger.exception("access re-check failed; retried at the next ping interval")
        # Not per connection: which streams are logged, and their heads, read once per interval (as
        # when all sockets were pinged at once) or for a stream not read yet. A head read earlier in
        # the interval only lags: a client acts on a head above what it has applied, and the hub
        # itself checks its streams against the database every REALTIME_HEADS_INTERVAL.
        logged = frozenset(name for name, feed in hub.feeds.items() if feed.logged)
        if slot == 0 or not logged <= known["streams"]:
            known["heads"] = await hub.heads_of(list(logged)) if logged else {}
            known["streams"] = logged
        heads = known["heads"]
        now = time.monotonic()
        # In slices, yielding between them: ticking 5,000 sockets at once held every event behind
        # it (the p99 jump in docs/benchmarks.md, 2026-12-03), and sockets with the same streams
        # share one ping frame.
        pings: dict = {}
        for i, connection in enumerate(list(hub.connections)):
            if i and i % HEARTBEAT_SLICE == 0:
                await asyncio.sleep(0)
            if connection.serial % slots == slot:
                connection.tick(now, heads, logged, pings)
            elif check_idle:
                connection.tick(now, None)

    hub.every(step, heartbeat, name="hub-heartbeat")


@on_hub_start
def _start_presence(hub: Hub) -> None:
    """Register this process in presence and keep it alive (its connections vanish ≤45 s after a crash)."""
    hub.presence = Presence(
        hub.redis,
        process_id=PROCESS_ID,
        ttl=settings.REALTIME_PRESENCE_TTL,
        heartbeat_interval=settings.REALTIME_PRESENCE_HEARTBEAT,
    )

    async def start():
        try:
            await hub.presence.start()
        except RedisError:
            logger.warning("presence start failed; the heartbeat will retry", exc_info=True)

    hub.spawn(start(), name="presence-start")
    hub.every(hub.presence.heartbeat_interval, hub.presence.heartbeat, name="presence-heartbeat")
    hub.on_stop(hub.presence.stop)

"""Shared helpers for WebSocket tests of protocol v1 (`/ws/v1/`, protocol.md §3).

Every connection goes through the real ASGI application (`bros.asgi.application`): the origin
check, session authentication, the protocol consumer and this event loop's hub. Such tests need
the transactional database (the consumer reads it from other threads) and must stop the hub at
the end, so that the next test's event loop starts a fresh one. A fixture like this one does both:

    @pytest.fixture
    async def ws(demo_tx):
        clients = WsClients()
        yield clients
        await clients.shutdown()  # disconnects what is still open, stops the hub, frees DB connections

    async def test_something(ws):
        client = await ws.connect("dispatch-gangnam")
        assert (await client.subscribe("broadcast:all"))["type"] == "subscribed"
        await in_thread(emit_notices, 2)
        events = await client.events(2)
        assert await client.barrier() == []  # and nothing more is on its way

Server settings the hub reads when it starts (REALTIME_PING_INTERVAL, REALTIME_HEADS_INTERVAL) must
be overridden (pytest-django's `settings` fixture) before the first `connect` of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import threading

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections, transaction
from django.test import Client

from bros.asgi import application
from realtime.bus import channel_for, get_redis, message_for
from realtime.events import NoticeData, build
from realtime.hub import stop_hub
from realtime.outbox import emit

# The origin validator snapshots ALLOWED_HOSTS at import; "localhost" is in the default list.
ORIGIN = "http://localhost"
TIMEOUT = 5.0  # seconds: the bound of every wait for a frame the server owes us

_ids = itertools.count(1)


# -- running synchronous code ----------------------------------------------------------------------


async def in_thread(fn, /, *args, **kwargs):
    """Run `fn(*args, **kwargs)` in a worker thread (channels' `database_sync_to_async`).

    Not in asgiref's shared "thread-sensitive" thread: the consumer runs its database calls there,
    so a long writer in it would stall every connection of the test.
    """
    return await database_sync_to_async(functools.partial(fn, *args, **kwargs), thread_sensitive=False)()


def _close_db_connections(barrier: threading.Barrier | None = None) -> None:
    for conn in connections.all(initialized_only=True):
        conn.close()
    if barrier is not None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)


async def release_db_connections() -> None:
    """Return the database connections that worker threads still hold to the pool.

    After a test drives the consumer, asgiref's thread-sensitive thread and the loop's executor
    threads (the hub's reads) are left holding pooled connections that `database_sync_to_async`
    did not close (seen with channels 4.3.2 and asgiref 3.13); the test database then cannot be
    dropped at the end of the run ("being accessed by other users"). Close them explicitly, in the
    thread-sensitive thread and in every executor thread (a barrier makes each closer run in a
    thread of its own). Call it after the hub has stopped.
    """
    await sync_to_async(_close_db_connections, thread_sensitive=True)()
    executor = getattr(asyncio.get_running_loop(), "_default_executor", None)
    workers = getattr(executor, "_max_workers", 0)
    if workers:
        barrier = threading.Barrier(workers)
        closer = sync_to_async(_close_db_connections, thread_sensitive=False)
        await asyncio.gather(*(closer(barrier) for _ in range(workers)))


def user_named(username: str):
    return get_user_model().objects.get(username=username)


def session_cookie(user, backend: str | None = None) -> str:
    """Log `user` in (sync; through `backend`, default the first configured) and return the `Cookie` header value."""
    client = Client()
    client.force_login(user, backend=backend)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


def emit_notices(count: int, stream: str = "broadcast:all", text: str = "notice") -> list[int]:
    """Commit `count` notices on a logged stream, one transaction each (sync); return their seqs."""
    seqs = []
    for i in range(count):
        with transaction.atomic():
            (row,) = emit([build(stream, "notice", NoticeData(text=f"{text} {i}"))])
        seqs.append(row.seq)
    return seqs


def publish_marker(stream: str) -> dict:
    """Put a marker frame on `stream`'s bus channel behind every message published so far (sync); return it.

    The hub reads all its channels over one Redis connection in publish order and hands a message
    outside the sequence (seq 0) to the stream's subscribers as it is. So once a subscriber has the
    marker, the hub has handled every message published before it: what did not arrive by then
    will not arrive. (A ping barrier alone cannot show that: a message may still be on the bus.)
    """
    marker = {"type": "marker", "id": f"m{next(_ids)}"}
    get_redis().publish(channel_for(stream), message_for(0, json.dumps(marker)))
    return marker


class NoticeWriter:
    """Commits notices on a stream, one transaction each, in a worker thread until stopped.

    `start()` it, `await wait_for(n)` until n are committed, and `await stop()` for the last seq.
    """

    def __init__(self, stream: str = "broadcast:all", *, limit: int = 10_000):
        self.stream = stream
        self.limit = limit
        self.seqs: list[int] = []  # appended by the writer thread, read by the test
        self._stop = threading.Event()
        self._task: asyncio.Future | None = None

    def _run(self) -> int | None:
        while not self._stop.is_set() and len(self.seqs) < self.limit:
            self.seqs.extend(emit_notices(1, self.stream, text="writer"))
        return self.seqs[-1] if self.seqs else None

    def start(self) -> NoticeWriter:
        self._task = asyncio.ensure_future(in_thread(self._run))
        return self

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> None:
        """Wait until at least `count` notices are committed."""
        async with asyncio.timeout(timeout):
            while len(self.seqs) < count:
                assert not self._task.done(), "the writer stopped early"
                await asyncio.sleep(0.005)

    async def stop(self) -> int | None:
        """Stop writing; return the seq of the last notice committed."""
        self._stop.set()
        return await self._task


# -- the client side of one connection -------------------------------------------------------------


def handshake_headers(cookie: str | None = None, origin: str | None = ORIGIN) -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"localhost")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    return headers


class WsClient:
    """One connection: send protocol frames, read the server's, with bounded waits.

    Reads skip the server's heartbeat `ping` frames unless asked for them (`pings=True`), so tests
    stay correct whatever the ping interval is.
    """

    def __init__(self, communicator, user=None):
        self.communicator = communicator
        self.user = user

    # sending

    async def send(self, frame: dict | list | str | bytes) -> None:
        """Send a frame: a dict or list as JSON text, a str as text as is, bytes as a binary frame."""
        if isinstance(frame, bytes):
            await self.communicator.send_to(bytes_data=frame)
        elif isinstance(frame, str):
            await self.communicator.send_to(text_data=frame)
        else:
            await self.communicator.send_json_to(frame)

    # receiving

    async def recv(self, timeout: float = TIMEOUT, *, pings: bool = False) -> dict:
        """The next frame from the server (failing after `timeout`), skipping server pings unless asked."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = max(0.01, deadline - asyncio.get_running_loop().time())
            frame = await self.communicator.receive_json_from(timeout=left)
            if pings or frame.get("type") != "ping":
                return frame

    async def request(self, frame, timeout: float = TIMEOUT) -> dict:
        """Send a frame and return the server's next frame."""
        await self.send(frame)
        return await self.recv(timeout)

    async def subscribe(self, stream: str, *, since=None, epoch=None, id: str | None = None) -> dict:
        """Send `subscribe` and return the reply (`subscribed` or `error`)."""
        frame = {"type": "subscribe", "id": id or f"s{next(_ids)}", "stream": stream}
        if since is not None:
            frame["since"] = since
        if epoch is not None:
            frame["epoch"] = epoch
        return await self.request(frame)

    async def publish(self, stream: str, event: str, data: dict, *, id: str | None = None) -> dict:
        """Send `publish` and return the reply (`ack` or `error`)."""
        frame = {"type": "publish", "id": id or f"p{next(_ids)}", "stream": stream, "event": event, "data": data}
        return await self.request(frame)

    async def events(self, count: int, timeout: float = TIMEOUT) -> list[dict]:
        """The next `count` frames, each of which must be an `event`."""
        frames = [await self.recv(timeout) for _ in range(count)]
        assert [f["type"] for f in frames] == ["event"] * count, frames
        return frames

    async def seqs_until(self, stream: str, last: int, timeout: float = TIMEOUT) -> list[int]:
        """Read events of `stream` until one with seq `last` or beyond arrives; return every seq read.

        `timeout` bounds the wait for each next frame, not the whole run.
        """
        seqs: list[int] = []
        while not seqs or seqs[-1] < last:
            frame = await self.recv(timeout)
            assert frame["type"] == "event" and frame["stream"] == stream, frame
            seqs.append(frame["seq"])
        return seqs

    async def barrier(self, timeout: float = TIMEOUT) -> list[dict]:
        """Send `ping`; return every frame (server pings left out) that arrives before its `pong`.

        The server handles a connection's frames one at a time and sends its frames in order, so at
        the pong everything it had sent this connection before reading the ping has arrived: an
        empty list proves that nothing the server already produced is on its way. For events that
        may still be on the bus, wait for a `publish_marker` (or another subscriber's copy) first.
        """
        frame_id = f"b{next(_ids)}"
        await self.send({"type": "ping", "id": frame_id})
        before = []
        while (frame := await self.recv(timeout)) != {"type": "pong", "id": frame_id}:
            before.append(frame)
        return before

    async def frames_until(self, marker: dict, timeout: float = TIMEOUT) -> list[dict]:
        """Return every frame (server pings left out) that arrives before `marker` (see `publish_marker`)."""
        before = []
        while (frame := await self.recv(timeout)) != marker:
            before.append(frame)
        return before

    async def alive(self) -> bool:
        """Whether the connection still answers a `ping` with its `pong`."""
        frame_id = f"k{next(_ids)}"
        return await self.request({"type": "ping", "id": frame_id}) == {"type": "pong", "id": frame_id}

    async def closed(self, timeout: float = TIMEOUT) -> int | None:
        """Wait for the server to close the socket, skipping frames; return the close code."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = max(0.01, deadline - asyncio.get_running_loop().time())
            message = await self.communicator.receive_output(timeout=left)
            if message["type"] == "websocket.close":
                return message.get("code")

    async def ended(self, timeout: float = TIMEOUT) -> bool:
        """Whether the server side of the connection ends within `timeout`."""
        done, _ = await asyncio.wait({self.communicator.future}, timeout=timeout)
        return bool(done)

    @property
    def finished(self) -> bool:
        """Whether the server side of the connection has ended."""
        future = self.communicator._future
        return future is not None and future.done()

    async def disconnect(self) -> None:
        if not self.finished:
            await self.communicator.disconnect(timeout=TIMEOUT)


class StallableApp:
    """The ASGI application with a switch that makes its clients stop reading.

    WebsocketCommunicator's output queue is unbounded: a test that merely never reads never makes
    the server wait. After `stall()`, every `websocket.send` of a connection made through this app
    blocks, like a socket whose client stopped reading; closing messages still pass.
    """

    def __init__(self, app=application):
        self.app = app
        self._flowing: asyncio.Event | None = None

    @property
    def flowing(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def __call__(self, scope, receive, send):
        flowing = self.flowing

        async def gated_send(message):
            if message["type"] == "websocket.send":
                await flowing.wait()
            await send(message)

        return await self.app(scope, receive, gated_send)


class WsClients:
    """A communicator factory for one test; `shutdown()` disconnects them all and stops the hub."""

    def __init__(self):
        self.clients: list[WsClient] = []

    async def user(self, user_or_username):
        if isinstance(user_or_username, str):
            return await in_thread(user_named, user_or_username)
        return user_or_username

    async def attempt(
        self, user=None, *, origin: str | None = ORIGIN, cookie: str | None = None, app=None
    ) -> tuple[bool, WsClient]:
        """Open a connection (logged in as `user`, if given); return whether it was accepted, and it.

        A refusal before `accept` shows as (False, client) with nothing else sent by the server:
        over a real server, the handshake's HTTP 403.
        """
        user = await self.user(user) if user is not None else None
        if user is not None and cookie is None:
            cookie = await in_thread(session_cookie, user)
        communicator = WebsocketCommunicator(
            app or application, "/ws/v1/", headers=handshake_headers(cookie=cookie, origin=origin)
        )
        client = WsClient(communicator, user)
        self.clients.append(client)
        accepted, _ = await communicator.connect(timeout=TIMEOUT)
        return accepted, client

    async def connect(self, user, **kwargs) -> WsClient:
        """Open an accepted connection for `user` (a User or a username)."""
        accepted, client = await self.attempt(user, **kwargs)
        assert accepted, f"the handshake of {user} was refused"
        return client

    async def shutdown(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):  # a failed test may leave a broken connection behind
                await client.disconnect()
        self.clients.clear()
        await stop_hub()
        await release_db_connections()

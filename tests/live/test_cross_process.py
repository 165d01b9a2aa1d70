"""Works across processes (design.md "Scale-out", protocol §3): real uvicorn processes on one
PostgreSQL and one Redis. Commands committed anywhere reach subscribers on every process once and
in order; a client of a crashed process resumes on another with nothing lost; presence forgets a
killed process; heartbeats and slow-client handling hold over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from realtime.bus import get_redis
from realtime.presence import conns_key, presence_snapshot, proc_key
from tests.live.conftest import (
    RawWebSocket,
    bus_marker,
    create_orders,
    db,
    emit_notices,
    http_json,
    presence_of,
    server_tcp_state,
    stream_position,
)

DELIVERIES = "deliveries:gangnam"
BROADCAST = "broadcast:all"
PRESENCE_DEADLINE = 20  # seconds; the test servers run with a 4 s presence TTL (production: 45 s)


def seqs(events: list[dict]) -> list[int]:
    return [event["seq"] for event in events]


async def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll a synchronous `predicate` (in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


def order_body(shop_id: int, n: int) -> dict:
    return {
        "shop": shop_id,
        "customer_name": f"Cross-process {n}",
        "customer_phone": "010-5555-0000",
        "address": f"{n} Gangnam-daero",
        "items": [{"name": "Tteokbokki", "qty": 2}],
    }


def logged_events(stream: str, after: int) -> list[tuple[int, int]]:
    """(seq, delivery id) of the stream's stored events after `after`, in seq order."""
    from realtime.models import Event

    return [(e.seq, e.data["id"]) for e in Event.objects.filter(stream=stream, seq__gt=after).order_by("seq")]


async def test_cross_process_concurrent_commits_reach_every_process_gapless_in_commit_order(
    live_servers, demo_tx, session_cookie, ws_clients
):
    """Orders posted concurrently to both processes (and committed here) reach every subscriber in seq order, once."""
    a, b = await asyncio.to_thread(live_servers, 2)
    watcher = await db(session_cookie)("dispatch-gangnam")
    caller = await db(session_cookie)("callcenter")
    shop_id = (await db(demo_tx.shop)("gangnam")).pk
    clients = [await ws_clients(server, watcher) for server in (a, a, b, b)]
    head = (await clients[0].subscribe(DELIVERIES))["head"]
    for client in clients[1:]:
        assert (await client.subscribe(DELIVERIES))["head"] == head

    def post_orders(server, count: int) -> None:
        for n in range(count):
            status, body = http_json(server, "POST", "/api/v1/orders", body=order_body(shop_id, n), cookie=caller)
            assert status == 201, body

    await asyncio.gather(
        asyncio.to_thread(post_orders, a, 8), asyncio.to_thread(post_orders, b, 8), db(create_orders)(4)
    )
    stored = await db(logged_events)(DELIVERIES, head)
    assert [seq for seq, _ in stored] == list(range(head + 1, head + 21))
    for client in clients:
        events = await client.events(DELIVERIES, 20)
        assert [(e["seq"], e["data"]["id"]) for e in events] == stored
    marker = await bus_marker(DELIVERIES)
    assert await asyncio.gather(*(client.frames_until(marker) for client in clients)) == [[]] * 4


async def test_cross_process_client_of_a_killed_process_resumes_on_another(
    live_servers, demo_tx, session_cookie, ws_clients
):
    """After SIGKILL of its server, a client resumes on another process: every missed event, once, in order."""
    a, b = await asyncio.to_thread(live_servers, 2)
    cookie = await db(session_cookie)("dispatch-gangnam")
    client = await ws_clients(a, cookie)
    subscribed = await client.subscribe(DELIVERIES)
    epoch, head = subscribed["epoch"], subscribed["head"]
    on_b = await ws_clients(b, cookie)  # B's feed is live when the client resumes there
    await on_b.subscribe(DELIVERIES)
    await db(create_orders)(3)
    applied = seqs(await client.events(DELIVERIES, 3))
    assert applied == [head + 1, head + 2, head + 3]
    last = applied[-1]

    await asyncio.to_thread(a.kill)
    await asyncio.wait_for(client.closed.wait(), 10)
    await db(create_orders)(5)  # committed while the client has no connection

    # Keep committing while the client resumes: the replay must merge with live events exactly.
    committing = asyncio.ensure_future(db(create_orders)(20))
    resumed = await ws_clients(b, cookie)
    answer = await resumed.subscribe(DELIVERIES, id="r1", since=last, epoch=epoch)
    made_concurrently = len(await committing)
    assert answer["recovered"] is True
    assert answer["epoch"] == epoch
    assert answer["head"] >= last + 5

    _, final_head = await db(stream_position)(DELIVERIES)
    assert final_head == last + 5 + made_concurrently
    events = await resumed.events(DELIVERIES, final_head - last)
    assert seqs(events) == list(range(last + 1, final_head + 1))
    assert seqs(await on_b.events(DELIVERIES, final_head - head)) == list(range(head + 1, final_head + 1))
    marker = await bus_marker(DELIVERIES)
    assert await asyncio.gather(resumed.frames_until(marker), on_b.frames_until(marker)) == [[], []]


async def test_cross_process_killed_process_leaves_presence(live_servers, demo_tx, session_cookie, ws_clients):
    """Connections of a SIGKILLed process vanish from presence within the TTL; the other process's stay counted."""
    a, b = await asyncio.to_thread(live_servers, 2)
    user = await db(demo_tx.user)("dispatch-gangnam")
    cookie = await db(session_cookie)("dispatch-gangnam")
    for server, stream in ((a, DELIVERIES), (a, "chat:gangnam"), (b, DELIVERIES)):
        client = await ws_clients(server, cookie)
        await client.subscribe(stream)

    def both_registered():
        snapshot = presence_snapshot()
        by_pid = {p["pid"]: p for p in snapshot["processes"]}
        ready = by_pid.get(a.pid, {}).get("connections") == 2 and by_pid.get(b.pid, {}).get("connections") == 1
        return snapshot if ready and snapshot["by_stream"].get(DELIVERIES) == 2 else None

    before = await wait_until(both_registered, 10, what="presence of both processes")
    assert before["by_user"] == {str(user.pk): 3}
    assert before["by_stream"] == {"chat:gangnam": 1, DELIVERIES: 2}
    killed_id = next(p["id"] for p in before["processes"] if p["pid"] == a.pid)

    await asyncio.to_thread(a.kill)
    await wait_until(lambda: presence_of(a) is None, PRESENCE_DEADLINE, interval=1.0, what="the killed process gone")

    after = await asyncio.to_thread(presence_snapshot)
    assert [p["pid"] for p in after["processes"]] == [b.pid]
    assert after["connections"] == 1
    assert after["by_user"] == {str(user.pk): 1}
    assert after["by_stream"] == {DELIVERIES: 1}
    assert after["by_center"] == {"gangnam": 1}
    assert not get_redis().exists(proc_key(killed_id), conns_key(killed_id))


async def test_heartbeat_ping_carries_heads_of_the_subscribed_streams(
    live_servers, demo_tx, session_cookie, ws_clients
):
    """The server pings about every REALTIME_PING_INTERVAL with the current head of each logged subscribed stream."""
    (server,) = await asyncio.to_thread(live_servers, 1)
    cookie = await db(session_cookie)("dispatch-gangnam")
    client = await ws_clients(server, cookie)
    head = (await client.subscribe(DELIVERIES))["head"]
    broadcast_head = (await client.subscribe(BROADCAST, id="s2"))["head"]
    await client.subscribe("positions:gangnam", id="s3")  # ephemeral: no head in pings
    await db(create_orders)(1)

    pings = []
    deadline = time.monotonic() + 8
    while len(pings) < 3 and time.monotonic() < deadline:
        frame = await client.next(max(0.1, deadline - time.monotonic()), skip=("event",))
        if frame["type"] == "ping":
            pings.append(frame)
    assert len(pings) >= 3, f"{len(pings)} pings in 8 s with a 1 s interval"
    assert pings[-1]["heads"] == {DELIVERIES: head + 1, BROADCAST: broadcast_head}


async def test_heartbeat_silent_client_is_closed_after_the_idle_timeout(
    live_servers, demo_tx, session_cookie, ws_clients
):
    """A client that never answers pings is closed (4002) once REALTIME_IDLE_TIMEOUT has passed, and leaves presence."""
    (server,) = await asyncio.to_thread(live_servers, 1)
    cookie = await db(session_cookie)("dispatch-gangnam")
    client = await ws_clients(server, cookie, auto_pong=False)
    await client.subscribe(DELIVERIES)
    await wait_until(lambda: (presence_of(server) or {}).get("connections") == 1, 10, what="the client in presence")

    await asyncio.wait_for(client.closed.wait(), 15)
    assert client.close_code == 4002
    pings = [client.frames.get_nowait() for _ in range(client.frames.qsize())]
    assert any(frame["type"] == "ping" for frame in pings), "closed without having been pinged"
    await wait_until(lambda: (presence_of(server) or {}).get("connections") == 0, 10, what="the client gone")


async def test_heartbeat_client_answering_pongs_stays_connected(live_servers, demo_tx, session_cookie, ws_clients):
    """A client that only answers pings stays connected well past REALTIME_IDLE_TIMEOUT."""
    (server,) = await asyncio.to_thread(live_servers, 1)
    cookie = await db(session_cookie)("dispatch-gangnam")
    client = await ws_clients(server, cookie)
    await client.subscribe(DELIVERIES)

    await asyncio.sleep(6.5)  # over twice the idle timeout, answering only the server's pings
    assert not client.closed.is_set(), f"closed with {client.close_code}"
    await client.send({"type": "ping", "id": "k1"})
    await client.expect("pong", id="k1")


SLOW_BATCH, SLOW_TEXT, SLOW_QUEUE_LIMIT = 50, 1900, 200


def slow_event_count() -> int:
    """Enough ~2 KB frames to overflow what a client that reads nothing can absorb, with a margin.

    That is the kernel's send buffer (at most tcp_wmem's maximum), uvicorn's write buffer, the
    client's receive buffer and the server's queue of SLOW_QUEUE_LIMIT frames. The normal client
    reads each batch before the next is committed; a batch is well under the queue limit, so a
    heads-check fill (delivered at once) never overflows a client that keeps up.
    """
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
            send_buffer = int(wmem.read().split()[2])
    except (OSError, ValueError, IndexError):
        send_buffer = 4 * 1024 * 1024
    frame = SLOW_TEXT + 200
    capacity = send_buffer + 2 * 64 * 1024 + SLOW_QUEUE_LIMIT * frame
    batches = -(-int(capacity * 1.4) // (frame * SLOW_BATCH))
    return batches * SLOW_BATCH


SLOW_EVENTS = slow_event_count()


class SlowClientNotDropped(AssertionError):
    """The expected failure of the daphne variant (a precondition failing is a real failure)."""


class ConnectionNotReleased(AssertionError):
    """The expected failure of the TCP release test."""


class NoResetFrame(AssertionError):
    """The expected failure of the history reset test."""


async def _slow_client_setup(live_servers, session_cookie, kind="uvicorn"):
    (server,) = await asyncio.to_thread(
        live_servers,
        1,
        kind=kind,
        REALTIME_QUEUE_LIMIT=SLOW_QUEUE_LIMIT,
        REALTIME_IDLE_TIMEOUT=60,  # idleness must not be the reason
        REALTIME_PONG_TIMEOUT=3,  # a client that reads answers pings at once (the test clients do)
    )
    cookie = await db(session_cookie)("dispatch-gangnam")
    slow = await asyncio.to_thread(RawWebSocket, server, cookie)
    slow.send_text('{"type":"subscribe","id":"slow","stream":"broadcast:all"}')
    subscribed = await asyncio.to_thread(slow.recv_json)
    while subscribed["type"] == "ping":  # a heartbeat (every second here) may come first on a busy machine
        subscribed = await asyncio.to_thread(slow.recv_json)
    assert subscribed["type"] == "subscribed", subscribed
    return server, cookie, slow, subscribed["head"]


@pytest.mark.parametrize(
    "kind",
    [
        "uvicorn",
        "daphne",
    ],
)
async def test_slow_client_is_dropped_while_a_normal_client_gets_every_event(
    kind, live_servers, demo_tx, session_cookie, ws_clients
):
    """A client that stops reading is dropped; a normal client gets all events in order; the server stays responsive."""
    server, cookie, slow, head = await _slow_client_setup(live_servers, session_cookie, kind)
    try:
        normal = await ws_clients(server, cookie)
        assert (await normal.subscribe(BROADCAST))["head"] == head
        await wait_until(lambda: (presence_of(server) or {}).get("connections") == 2, 10, what="both in presence")

        received = []
        for _ in range(SLOW_EVENTS // SLOW_BATCH):  # a normal client keeps up with the producer
            await db(emit_notices)(SLOW_BATCH, batch=SLOW_BATCH, text_size=SLOW_TEXT)
            received += seqs(await normal.events(BROADCAST, SLOW_BATCH))
        assert received == list(range(head + 1, head + SLOW_EVENTS + 1))
        assert await normal.frames_until(await bus_marker(BROADCAST)) == []

        # The slow client was dropped by the server (and left presence); the normal one was not.
        try:
            await wait_until(lambda: (presence_of(server) or {}).get("connections") == 1, 8, what="slow client dropped")
        except AssertionError as exc:
            raise SlowClientNotDropped(str(exc)) from None
        assert server.log().count("too slow") == 1, server.log()[-3000:]
        assert not normal.closed.is_set()

        # The process stays responsive: a new client connects, pings, subscribes.
        probe = await ws_clients(server, cookie)
        await probe.send({"type": "ping", "id": "probe"})
        await probe.expect("pong", id="probe")
        assert (await probe.subscribe(BROADCAST))["head"] == head + SLOW_EVENTS

        # Read now: a gapless prefix of the stream, then the end of the connection (4001 or EOF).
        def drain() -> tuple[list[int], object]:
            got = []
            slow.sock.settimeout(15)
            try:
                while True:
                    frame = slow.recv_json()
                    # Heartbeats were queued between the events, and on daphne (which buffers
                    # everything) the bus marker above may reach this client before it is dropped.
                    if frame["type"] not in ("ping", "marker"):
                        got.append(frame["seq"])
            except (EOFError, ConnectionAbortedError, ConnectionResetError) as end:
                return got, end

        got, end = await asyncio.to_thread(drain)
        assert got == list(range(head + 1, head + len(got) + 1))
        if kind == "uvicorn":  # uvicorn's send pushes back, so the server stopped sending early;
            assert len(got) < SLOW_EVENTS  # daphne buffers everything before a laggard can be told
        if isinstance(end, ConnectionAbortedError):
            assert end.args[0] == 4001
    finally:
        slow.close()


async def test_slow_client_tcp_connection_is_released_while_it_still_reads_nothing(
    live_servers, demo_tx, session_cookie
):
    """Once the server drops a client that stopped reading, it releases the TCP connection without the client's help."""
    server, _, slow, _ = await _slow_client_setup(live_servers, session_cookie)
    try:
        await db(emit_notices)(SLOW_EVENTS, text_size=SLOW_TEXT)
        await wait_until(lambda: "too slow" in server.log(), 15, what="the slow client dropped")
        await wait_until(lambda: (presence_of(server) or {}).get("connections") == 0, 10, what="presence updated")

        def released():
            return server_tcp_state(server, slow.local_port) in (None, "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE")

        with contextlib.suppress(AssertionError):
            await wait_until(released, 5, interval=0.5, what="the TCP connection released")
        if not released():
            raise ConnectionNotReleased(
                f"server end of the dropped connection: {server_tcp_state(server, slow.local_port)}"
            )
    finally:
        slow.close()


def reset_history(stream: str) -> None:
    """Reset a stream's history as a restored database would: its events and counter row are gone."""
    from django.db import transaction

    from realtime.models import Event, Stream

    with transaction.atomic():
        Event.objects.filter(stream=stream).delete()
        Stream.objects.filter(name=stream).delete()


async def test_history_reset_while_connected_is_announced_with_reset(live_servers, demo_tx, session_cookie, ws_clients):
    """A live subscriber whose stream history is reset gets `reset` with the new epoch instead of silence."""
    (server,) = await asyncio.to_thread(live_servers, 1)
    cookie = await db(session_cookie)("dispatch-gangnam")
    client = await ws_clients(server, cookie)
    old_epoch = (await client.subscribe(DELIVERIES))["epoch"]
    await db(create_orders)(3)
    await client.events(DELIVERIES, 3)

    await db(reset_history)(DELIVERIES)
    await db(create_orders)(1)  # seq 1 of a new epoch
    new_epoch, head = await db(stream_position)(DELIVERIES)
    assert new_epoch != old_epoch and head == 1

    try:
        frame = await client.next(5)  # ten heads checks
    except AssertionError as exc:
        raise NoResetFrame(f"nothing after the reset: {exc}") from None
    assert frame["type"] == "reset", frame
    assert frame["epoch"] == new_epoch

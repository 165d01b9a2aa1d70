"""The chaos suite (issue 12; docs/realtime.md, "Chaos suite"): faults a deployment meets, each
under real server processes, real PostgreSQL and Redis, with simulated clients that follow the
protocol's client rules. After each scenario every client must have applied every stream's seqs
contiguously up to the database head, never lowered an entity's version, and show exactly what a
fresh snapshot shows (`Scenario.finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from realtime.presence import presence_snapshot
from tests.chaos.conftest import database_heads
from tests.live.conftest import RawWebSocket, bus_marker, db, emit_notices, http_json, presence_of

CENTER = "gangnam"
DELIVERIES, ORDERS = f"deliveries:{CENTER}", f"orders:{CENTER}"
STREAMS = [DELIVERIES, ORDERS]
BROADCAST = "broadcast:all"


def create_and_cancel(n: int, *, cancel_every: int = 2) -> int:
    """Create `n` orders and cancel every `cancel_every`-th (system actor); return the commands run."""
    from deliveries.models import Shop
    from deliveries.services import cancel_order, create_order

    shop = Shop.objects.filter(center__code=CENTER, is_active=True).order_by("name").first()
    commands = 0
    for i in range(n):
        order = create_order(
            actor=None,
            shop_id=shop.pk,
            customer_name=f"Chaos {i}",
            customer_phone="010-1234-5678",
            address=f"{i} Teheran-ro",
            items=[{"name": "Bibimbap", "qty": 1}],
        )
        commands += 1
        if i % cancel_every == cancel_every - 1:
            cancel_order(actor=None, order_id=order.pk, reason="chaos", expected_version=order.version)
            commands += 1
    return commands


class CommandWriter:
    """Steady commands (create, and cancel every other order) in a worker thread until stopped."""

    def __init__(self, pause: float = 0.02):
        self.pause = pause
        self.commands = 0
        self._stop = threading.Event()
        self._task: asyncio.Future | None = None

    def _run(self) -> int:
        while not self._stop.is_set():
            self.commands += create_and_cancel(2)
            self._stop.wait(self.pause)
        return self.commands

    def start(self) -> CommandWriter:
        self._task = asyncio.ensure_future(db(self._run)())
        return self

    async def wait_for(self, commands: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while self.commands < commands:
                assert not self._task.done(), "the writer stopped early"
                await asyncio.sleep(0.02)

    async def stop(self) -> int:
        self._stop.set()
        return await self._task


async def test_chaos_sigkill_of_the_process_holding_half_the_clients(chaos):
    """SIGKILL of one of two processes during steady commands: its clients resume on the other, nothing lost."""
    a, b = await chaos.servers(2)
    clients = await chaos.clients_on([[a, b], [b, a]] * 4, STREAMS)
    writer = CommandWriter().start()
    await writer.wait_for(20)
    await asyncio.to_thread(a.kill)
    await writer.wait_for(writer.commands + 20)
    await writer.stop()
    chaos.notes["reconnections"] = sum(len(c.close_codes) for c in clients)
    counts = await chaos.finish()
    assert chaos.notes["reconnections"] >= 4  # the killed process's clients reconnected
    assert counts["resets"] == 0


# No server pings (so no heads in them): clients cannot fill gaps from a ping's heads, so what
# they get is what the server processes deliver by themselves. The heartbeat pings its first slot
# of sockets one step (interval / 20) after the server starts: 3 minutes here.
QUIET = {"REALTIME_PING_INTERVAL": 3600, "REALTIME_IDLE_TIMEOUT": 3600}


def unpublished(streams) -> int:
    from realtime.models import Event

    return Event.objects.filter(stream__in=streams, published_at__isnull=True).count()


async def test_chaos_redis_restart_during_traffic(chaos):
    """Redis killed and restarted (all subscriptions and keys gone) during commands: every client converges."""
    a, b = await chaos.servers(2, **QUIET)  # no heads in pings: the servers must heal by themselves
    clients = await chaos.clients_on([[a, b], [b, a]] * 2, STREAMS)
    writer = CommandWriter().start()
    await writer.wait_for(10)
    await asyncio.to_thread(chaos.redis.restart, 1.0)
    await writer.wait_for(writer.commands + 20)
    await writer.stop()
    # The events committed while Redis was down were never published. The sweep publishes them
    # late, after the processes delivered them from history: nobody may get them twice.
    await db(age_events)(STREAMS, dict.fromkeys(STREAMS, 0), timedelta(seconds=10))
    chaos.notes["published late by the sweep"] = swept = await db(sweep)()
    assert swept > 0 and await db(unpublished)(STREAMS) == 0
    # A marker published before a process subscribed again (its back-off grows while Redis is away)
    # would never reach its clients: wait until both processes listen on the stream's channel.
    await wait_for(lambda: channel_subscribers(DELIVERIES) >= 2, 20, "both processes subscribed again")
    marker = await bus_marker(DELIVERIES)
    await asyncio.gather(*(client.saw(marker) for client in clients))
    counts = await chaos.finish()
    assert (counts["fetched"], counts["duplicates_dropped"]) == (0, 0)
    # Presence lived only in the lost Redis: the processes' heartbeats write their connections back.
    await wait_for(lambda: presence_snapshot()["connections"] == 4, 10, "presence rebuilt after the restart")
    assert all(client.connections == 1 for client in clients)  # and nobody was disconnected


def channel_subscribers(stream: str) -> int:
    """How many connections (one per server process) listen on the stream's bus channel."""
    from realtime.bus import channel_for, get_redis

    [(_, count)] = get_redis().pubsub_numsub(channel_for(stream))
    return count


def age_events(streams, after: dict[str, int], by: timedelta) -> int:
    """Make the events after `after[stream]` look `by` older, as if that much time had passed."""
    from django.db.models import F

    from realtime.models import Event

    return sum(Event.objects.filter(stream=stream, seq__gt=after[stream]).update(ts=F("ts") - by) for stream in streams)


def prune() -> int:
    from realtime.tasks import prune_history

    return prune_history()


async def test_chaos_client_offline_90s_while_300_events_resumes_by_replay(chaos):
    """A client offline "90 s" while 300 events commit resumes by replay: no reset, no HTTP fill."""
    (server,) = await chaos.servers(1, **QUIET)
    await chaos.client([server], STREAMS)  # a client that stays online alongside
    offline = await chaos.client([server], STREAMS)
    await offline.go_offline()
    before = await db(database_heads)(STREAMS)
    await db(create_and_cancel)(100)  # 100 creates, 50 cancels: 150 events on each stream, 300 in all
    # 90 s pass (the events are made 90 s old), and the hourly prune runs with the real retention.
    assert await db(age_events)(STREAMS, before, timedelta(seconds=90)) == 300
    await db(prune)()
    offline.go_online()
    await offline.wait_connected()
    await chaos.finish()
    for view in offline.views.values():
        assert (view.resets, view.fetched, view.received) == (0, 0, 150), view.name


async def test_chaos_client_offline_past_retention_gets_exactly_one_reset(chaos):
    """A client offline past the history's retention gets one reset per stream, reloads, and goes on live."""
    (server,) = await chaos.servers(1)
    offline = await chaos.client([server], STREAMS)
    await offline.go_offline()
    before = await db(database_heads)(STREAMS)
    await db(create_and_cancel)(10)
    await db(age_events)(STREAMS, {stream: 0 for stream in STREAMS}, timedelta(hours=26))
    assert await db(prune)() >= 30
    offline.go_online()
    await offline.wait_connected()
    await db(create_and_cancel)(4)  # live after the reset
    await chaos.finish()
    for view in offline.views.values():
        assert (view.reset_frames, view.resets) == (1, 1), view.name  # one `reset`, one snapshot reload
        assert view.runs[1][0] >= before[view.name] + 15  # reloaded at (or past) what was committed offline


def order_body(shop_id: int, n: int) -> dict:
    return {
        "shop": shop_id,
        "customer_name": f"Chaos {n}",
        "customer_phone": "010-5555-0000",
        "address": f"{n} Gangnam-daero",
        "items": [{"name": "Tteokbokki", "qty": 2}],
    }


def http_commands(servers, cookie: str, shop_id: int, n: int, *, offset: int = 0) -> list[int]:
    """Create `n` orders over HTTP, alternating servers, cancelling every other one; return the statuses."""
    statuses = []
    for i in range(n):
        server = servers[i % len(servers)]
        status, order = http_json(server, "POST", "/api/v1/orders", body=order_body(shop_id, offset + i), cookie=cookie)
        statuses.append(status)
        if status == 201 and i % 2:
            body = {"reason": "chaos", "version": order["version"]}
            other = servers[(i + 1) % len(servers)]
            status, _ = http_json(other, "POST", f"/api/v1/orders/{order['id']}/cancel", body=body, cookie=cookie)
            statuses.append(status)
    return statuses


async def test_chaos_pubsub_drops_duplicates_and_delays_messages(chaos):
    """The bus drops, duplicates and delays a fifth of the messages each: every event arrives once, in order."""
    faults = "drop=0.2,duplicate=0.2,delay=0.2,seed=12"
    a, b = await chaos.servers(2, REALTIME_BUS_FAULTS=faults, **QUIET)  # the servers alone must repair it
    clients = await chaos.clients_on([[a, b], [b, a]] * 3, STREAMS)
    caller = await chaos.cookie("callcenter")
    shop_id = (await db(chaos_shop)()).pk
    statuses, *_ = await asyncio.gather(
        asyncio.to_thread(http_commands, [a, b], caller, shop_id, 30),
        asyncio.to_thread(http_commands, [b, a], caller, shop_id, 30, offset=100),
        *(flap(client) for client in clients[:2]),  # resumes (replay merged with live) under the faults
    )
    assert set(statuses) == {200, 201}
    counts = await chaos.finish()
    assert (counts["fetched"], counts["duplicates_dropped"]) == (0, 0)  # no gap, no duplicate on any socket
    logs = a.log() + b.log()
    injected = {kind: logs.count(f"bus fault: {kind} ") for kind in ("dropped", "duplicated", "delayed")}
    chaos.notes["bus messages"] = ", ".join(f"{kind} {count}" for kind, count in injected.items())
    assert all(injected.values()), injected


async def flap(client, times: int = 3, pause: float = 0.3) -> None:
    """Drop the client's connection and bring it back `times` times (it resumes with `since`)."""
    for _ in range(times):
        await asyncio.sleep(pause)
        await client.go_offline()
        await asyncio.sleep(pause)
        client.go_online()
        await client.wait_connected()


def chaos_shop():
    from deliveries.models import Shop

    return Shop.objects.filter(center__code=CENTER, is_active=True).order_by("name").first()


def sweep() -> int:
    from realtime.tasks import sweep_outbox

    return sweep_outbox()


async def test_chaos_crash_between_commit_and_publish_is_delivered_by_the_sweep(chaos):
    """A process killed after a commit but before its publish: the outbox sweep delivers the events, once."""
    # The subscribers' process must not find the events by itself (heads check, pings): only the sweep.
    (crashing,), (server,) = await asyncio.gather(
        chaos.servers(1, REALTIME_BUS_FAULTS="crash"),
        chaos.servers(1, REALTIME_HEADS_INTERVAL=600, **QUIET),
    )
    clients = await chaos.clients_on([[server]] * 3, STREAMS)
    before = await db(database_heads)(STREAMS)
    caller = await chaos.cookie("callcenter")
    shop_id = (await db(chaos_shop)()).pk
    with contextlib.suppress(OSError):  # the process dies before it answers
        await asyncio.to_thread(
            http_json, crashing, "POST", "/api/v1/orders", body=order_body(shop_id, 1), cookie=caller
        )
    await asyncio.to_thread(crashing.process.wait, 10)
    assert await db(database_heads)(STREAMS) == {stream: head + 1 for stream, head in before.items()}
    assert await db(unpublished)(STREAMS) == 2

    marker = await bus_marker(DELIVERIES)
    for client in clients:
        await client.saw(marker)
        assert {s: v.last for s, v in client.views.items()} == before  # nothing arrived without the sweep

    await db(age_events)(STREAMS, before, timedelta(seconds=10))  # the sweep takes events older than 5 s
    assert await db(sweep)() == 2
    assert await db(unpublished)(STREAMS) == 0
    counts = await chaos.finish()
    assert (counts["received"], counts["fetched"]) == (6, 0)  # by the bus, after the sweep


async def test_chaos_client_that_stops_reading_is_dropped_others_unaffected_and_it_resumes(chaos):
    """A client that stops reading is closed (4001, others untouched); it reconnects and resumes by replay."""
    (server,) = await chaos.servers(1, REALTIME_QUEUE_LIMIT=200, REALTIME_PONG_TIMEOUT=6, REALTIME_IDLE_TIMEOUT=60)
    others = await chaos.clients_on([[server]] * 3, [BROADCAST])
    slow = await chaos.client([server], [BROADCAST], rcvbuf=4096)
    slow.stall()
    for _ in range(12):
        await db(emit_notices)(50, batch=50, text_size=1900)
    await wait_for(lambda: "too slow" in server.log(), 15, "the server to drop the slow client")
    assert all(client.connections == 1 and client.close_codes == [] for client in others)
    await db(emit_notices)(100)  # after the drop: the stalled client can only get these by resuming
    await chaos.check_clients(others)
    slow.resume_reading()
    await wait_for(lambda: slow.connections == 2, 15, "the stalled client to reconnect")
    await slow.wait_connected()
    chaos.notes["stalled client closed with"] = slow.close_codes[0]
    await chaos.finish()
    assert server.log().count("too slow") == 1
    assert slow.connections == 2 and slow.close_codes[0] in (4001, 1006), slow.close_codes
    assert slow.views[BROADCAST].resets == 0


async def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll a synchronous `predicate` (in a thread) until it holds; fail naming `what` after `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while not await asyncio.to_thread(predicate):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"waited {timeout}s for {what}") from None


async def reconcile_until_cancelled(pause: float = 0.2) -> None:
    """Publish the `reconcile` frames (the Celery beat task) again and again, while commands race."""
    from realtime.tasks import reconcile_streams

    while True:
        await db(reconcile_streams)()
        await asyncio.sleep(pause)


def riders_on_duty(count: int) -> list[int]:
    """Start the shift of the center's first `count` riders (system actor); return their ids."""
    from riders.models import Rider
    from riders.services import set_rider_duty

    riders = Rider.objects.filter(center__code=CENTER).order_by("pk")[:count]
    return [set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True).pk for rider in riders]


async def test_chaos_concurrent_writers_while_readers_poll(chaos):
    """Writers race on the same deliveries through two processes while readers only poll: each reader exact."""
    streams = [*STREAMS, f"riders:{CENTER}"]
    riders = await db(riders_on_duty)(4)
    a, b = await chaos.servers(2)
    await chaos.clients_on([[a, b], [b, a]] * 2, streams, mode="poll", poll_interval=0.2)
    await chaos.client([a, b], streams)
    caller, dispatch = await chaos.cookie("callcenter"), await chaos.cookie("dispatch-gangnam")
    shop_id = (await db(chaos_shop)()).pk

    def create(server, n):
        return http_json(server, "POST", "/api/v1/orders", body=order_body(shop_id, n), cookie=caller)

    def assign(server, delivery_id, rider, version):
        body = {"rider": rider, "version": version}
        return http_json(server, "POST", f"/api/v1/deliveries/{delivery_id}/assign", body=body, cookie=dispatch)

    def cancel(server, order):
        body = {"reason": "race", "version": order["version"]}
        return http_json(server, "POST", f"/api/v1/orders/{order['id']}/cancel", body=body, cookie=caller)[0]

    def race() -> tuple[list[int], list[int]]:
        """The racing commands, from threads (the event loop keeps reading meanwhile)."""
        with ThreadPoolExecutor(8) as pool:
            created = list(pool.map(create, [a, b] * 6, range(12)))
            assert {status for status, _ in created} == {201}
            orders = [order for _, order in created]
            # Two assigns of each delivery at once, to different riders through different processes.
            races = [
                pool.submit(assign, server, order["delivery"]["id"], riders[(i + k) % len(riders)], 1)
                for i, order in enumerate(orders)
                for k, server in enumerate((a, b))
            ]
            assigned = [race.result() for race in races]
            assert sorted(status for status, _ in assigned) == [200] * 12 + [409] * 12
            won = {body["id"]: body for status, body in assigned if status == 200}
            # Then a cancel of each order races a reassignment of its delivery (both legal alone): the
            # cancel always succeeds (a reassignment does not change the order), the reassignment may not.
            races = []
            for order in orders:
                delivery = won[order["delivery"]["id"]]
                rider = riders[(riders.index(delivery["rider"]) + 1) % len(riders)]
                races.append(pool.submit(assign, b, delivery["id"], rider, delivery["version"]))
                races.append(pool.submit(cancel, a, order))
            return [race.result() for race in races[1::2]], [race.result()[0] for race in races[0::2]]

    reconciling = asyncio.ensure_future(reconcile_until_cancelled())  # the safety net runs meanwhile
    try:
        cancels, reassigns = await asyncio.to_thread(race)
    finally:
        if reconciling.done():
            reconciling.result()  # it failed: say why
        reconciling.cancel()
    assert cancels == [200] * 12 and set(reassigns) <= {200, 409}, (cancels, reassigns)
    chaos.notes["racing commands"] = (
        f"assign pairs 12 won, 12 refused (409); cancels 12 won racing reassignments "
        f"{reassigns.count(200)} done, {reassigns.count(409)} refused (409)"
    )
    await chaos.finish()


async def test_chaos_tab_closed_without_a_clean_disconnect_leaves_presence(chaos):
    """Tabs gone without a close frame (reset, or silent) leave presence; the user's open tab keeps them online."""
    (server,) = await chaos.servers(1)
    user_id = str((await db(dispatcher)()).pk)
    tab = await chaos.client([server], STREAMS)
    cookie = await chaos.cookie()
    gone = []
    for _ in range(2):
        raw = await asyncio.to_thread(RawWebSocket, server, cookie)
        raw.send_text(f'{{"type":"subscribe","id":"s","stream":"{DELIVERIES}"}}')
        assert (await asyncio.to_thread(raw.recv_json))["type"] == "subscribed"
        gone.append(raw)

    def connections_of_user():
        return presence_snapshot()["by_user"].get(user_id)

    await wait_for(lambda: connections_of_user() == 3, 10, "three tabs in presence")
    reset, silent = gone
    reset.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()  # an RST, no close frame: the browser process was killed
    # `silent` stays open but sends nothing, not even pongs: the laptop lid closed. The idle
    # timeout (3 s here, 45 s in production) plus one tick ends it.
    window = float(server.env["REALTIME_IDLE_TIMEOUT"]) + float(server.env["REALTIME_PING_INTERVAL"]) + 5
    await wait_for(lambda: connections_of_user() == 1, window, "the closed tabs gone from presence")
    assert presence_of(server)["connections"] == 1
    silent.close()
    await db(create_and_cancel)(2)
    assert tab.close_codes == []
    await chaos.finish()


def dispatcher():
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username="dispatch-gangnam")

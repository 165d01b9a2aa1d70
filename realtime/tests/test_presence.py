"""Presence (protocol §3): who is connected per stream, user, role, center and server process, exact
across processes. Connections go through the real consumer and this event loop's hub, which keep
presence the way production does; other server processes are `Presence` objects built as the hub
builds its own. That a SIGKILLed server leaves presence is tested on real server processes
(tests/live/test_cross_process.py)."""

import asyncio
import os
import uuid

import pytest
import redis
import redis.asyncio
from asgiref.testing import ApplicationCommunicator
from django.conf import settings as django_settings
from django.test import Client
from django.urls import path
from ninja import NinjaAPI

from bros.asgi import application
from core.api_auth import API_AUTH
from core.models import ApiToken
from realtime.api_presence import router as presence_router
from realtime.bus import get_redis
from realtime.consumers import PROCESS_ID
from realtime.hub import get_hub
from realtime.presence import Presence, conns_key, presence_snapshot, proc_key, procs_key
from realtime.tests.wsclient import WsClients

DISPATCHER = "dispatch-gangnam"
TIMEOUT = 5.0

test_api = NinjaAPI(urls_namespace="test-presence", auth=API_AUTH, docs_url=None)
test_api.add_router("/ops", presence_router)
urlpatterns = [path("api/v1/", test_api.urls)]


@pytest.fixture(autouse=True)
def presence_prefix(settings):
    """Give each test its own presence keys, so processes of other tests never count."""
    settings.REDIS_PREFIX = prefix = f"{settings.REDIS_PREFIX}-presence-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = get_redis()
    leftovers = list(client.scan_iter(f"{prefix}:*"))  # only after a failure: a passing test cleans up
    if leftovers:
        client.delete(*leftovers)


@pytest.fixture
async def ws(settings, demo_tx):
    """Connections to the real ASGI app; at the end they are closed and this loop's hub stopped."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    clients = WsClients()
    yield clients
    await clients.shutdown()


def presence_like_the_hub(process_id: str) -> Presence:
    """Another server process's presence, built as `realtime.consumers._start_presence` builds it."""
    return Presence(
        redis.asyncio.Redis.from_url(django_settings.REDIS_URL),
        process_id=process_id,
        ttl=django_settings.REALTIME_PRESENCE_TTL,
        heartbeat_interval=django_settings.REALTIME_PRESENCE_HEARTBEAT,
    )


@pytest.fixture
async def other_processes():
    """Start other server processes' presence on demand; stop them (and their clients) at the end."""
    started: list[Presence] = []

    async def start() -> Presence:
        presence = presence_like_the_hub(f"other-{uuid.uuid4().hex[:8]}")
        await presence.start()
        started.append(presence)
        return presence

    yield start
    for presence in started:
        await presence.stop()
        await presence.redis.aclose()


def entry_of(snapshot: dict, process_id: str) -> dict | None:
    return next((p for p in snapshot["processes"] if p["id"] == process_id), None)


async def snapshot_after(*clients) -> dict:
    """The presence snapshot once the consumer has handled everything the clients sent.

    A ping barrier per client: the consumer handles a connection's frames one at a time, and a
    subscribe's presence write is part of handling it. The hub registers its process in a task of
    its own, so the snapshot is read again until this process is in it.
    """
    for client in clients:
        assert await client.barrier() == []
    async with asyncio.timeout(TIMEOUT):
        while entry_of(snapshot := presence_snapshot(), PROCESS_ID) is None:
            await asyncio.sleep(0.01)
    return snapshot


async def subscribed(client, *streams: str):
    for stream in streams:
        assert (await client.subscribe(stream))["type"] == "subscribed", stream
    return client


async def test_presence_counts_a_connection_per_stream_user_role_and_center(ws):
    """A connection with streams counts per stream, user, role and center, under its process with CPU and memory."""
    client = await ws.connect(DISPATCHER)
    own = f"user:{client.user.pk}"
    await subscribed(client, "deliveries:gangnam", "riders:gangnam", own, "broadcast:all")

    snapshot = await snapshot_after(client)

    assert snapshot["connections"] == 1
    assert snapshot["by_stream"] == {"broadcast:all": 1, "deliveries:gangnam": 1, "riders:gangnam": 1, own: 1}
    assert snapshot["by_user"] == {str(client.user.pk): 1}
    assert snapshot["by_role"] == {"dispatcher": 1}
    assert snapshot["by_center"] == {"gangnam": 1}
    [process] = snapshot["processes"]
    assert (process["id"], process["pid"], process["connections"]) == (PROCESS_ID, os.getpid(), 1)
    assert isinstance(process["cpu"], float) and process["cpu"] >= 0
    assert process["rss"] > 0


async def test_presence_counts_a_connection_that_has_not_subscribed_for_its_user_only(ws):
    """A connection that has not subscribed yet counts for its user and role, not for any stream."""
    client = await ws.connect("callcenter")

    snapshot = await snapshot_after(client)

    assert snapshot["connections"] == 1
    assert snapshot["by_user"] == {str(client.user.pk): 1}
    assert snapshot["by_role"] == {"callcenter": 1}
    assert (snapshot["by_stream"], snapshot["by_center"]) == ({}, {})


async def test_presence_unsubscribe_stops_counting_the_stream(ws):
    """Streams a connection unsubscribed from stop counting; the ones it subscribed to since count."""
    client = await subscribed(await ws.connect("hq"), "deliveries:gangnam", "orders:gangnam")
    for stream in ("deliveries:gangnam", "orders:gangnam"):
        await client.request({"type": "unsubscribe", "id": "u", "stream": stream})
    await subscribed(client, "chat:mapo")

    snapshot = await snapshot_after(client)

    assert snapshot["by_stream"] == {"chat:mapo": 1}
    assert snapshot["by_center"] == {"mapo": 1}


async def test_presence_by_center_counts_a_connection_once_per_center(ws):
    """A connection on several streams of one center counts once for that center."""
    hq = await ws.connect("hq")
    await subscribed(hq, "deliveries:gangnam", "riders:gangnam", "chat:gangnam", "orders:songpa")
    dispatcher = await subscribed(await ws.connect(DISPATCHER), "deliveries:gangnam")

    snapshot = await snapshot_after(hq, dispatcher)

    assert snapshot["by_center"] == {"gangnam": 2, "songpa": 1}


async def test_presence_disconnect_removes_the_connection(ws):
    """A closed connection leaves every count; the same user's other connection stays."""
    leaving = await subscribed(await ws.connect(DISPATCHER), "deliveries:gangnam")
    staying = await subscribed(await ws.connect(DISPATCHER), "chat:gangnam")
    await snapshot_after(leaving, staying)

    await leaving.disconnect()  # returns once the server side has finished, its cleanup included
    snapshot = await snapshot_after(staying)

    assert snapshot["connections"] == 1
    assert snapshot["by_stream"] == {"chat:gangnam": 1}
    assert snapshot["by_user"] == {str(staying.user.pk): 1}
    assert entry_of(snapshot, PROCESS_ID)["connections"] == 1


async def test_presence_counts_connections_of_all_processes_together(ws, other_processes):
    """Two server processes' connections add up, with one entry per process."""
    client = await subscribed(await ws.connect(DISPATCHER), "deliveries:gangnam")
    other = await other_processes()
    await other.connect("b", user_id=client.user.pk, username=DISPATCHER, role="dispatcher")
    await other.set_streams("b", ["deliveries:gangnam"])
    await other.connect("c", user_id=30, username="rider-gangnam-01", role="rider")
    await other.set_streams("c", ["chat:gangnam"])

    snapshot = await snapshot_after(client)

    assert snapshot["connections"] == 3
    assert {p["id"]: p["connections"] for p in snapshot["processes"]} == {PROCESS_ID: 1, other.process_id: 2}
    assert snapshot["by_stream"] == {"chat:gangnam": 1, "deliveries:gangnam": 2}
    assert snapshot["by_user"] == {str(client.user.pk): 2, "30": 1}
    assert snapshot["by_role"] == {"dispatcher": 2, "rider": 1}
    assert snapshot["by_center"] == {"gangnam": 3}


async def test_presence_server_shutdown_removes_the_process_and_its_connections(ws, other_processes):
    """The ASGI lifespan shutdown takes this process and its connections out of presence at once."""
    lifespan = ApplicationCommunicator(application, {"type": "lifespan"})
    await lifespan.send_input({"type": "lifespan.startup"})
    assert (await lifespan.receive_output(TIMEOUT))["type"] == "lifespan.startup.complete"
    client = await subscribed(await ws.connect(DISPATCHER), "deliveries:gangnam")
    other = await other_processes()
    await other.connect("c", user_id=3, username="u3", role="hq")
    await snapshot_after(client)

    await lifespan.send_input({"type": "lifespan.shutdown"})
    assert (await lifespan.receive_output(TIMEOUT))["type"] == "lifespan.shutdown.complete"
    snapshot = presence_snapshot()

    assert [p["id"] for p in snapshot["processes"]] == [other.process_id]
    assert snapshot["connections"] == 1
    client_redis = get_redis()
    assert not client_redis.exists(proc_key(PROCESS_ID), conns_key(PROCESS_ID))
    assert not client_redis.sismember(procs_key(), PROCESS_ID)


async def test_presence_heartbeat_keeps_the_process_past_its_ttl(ws, settings):
    """A process whose hub keeps heart-beating stays in presence longer than its key's TTL."""
    settings.REALTIME_PRESENCE_TTL = 1  # read when the hub starts (first connect)
    settings.REALTIME_PRESENCE_HEARTBEAT = 0.2
    client = await ws.connect(DISPATCHER)
    await snapshot_after(client)

    await asyncio.sleep(2 * settings.REALTIME_PRESENCE_TTL)  # the time that passes is what is tested

    assert entry_of(presence_snapshot(), PROCESS_ID)["connections"] == 1


async def test_presence_expired_process_is_collected_and_its_heartbeat_restores_it(ws):
    """A process whose key expired (a stalled event loop) is left out and collected; its next heartbeat restores it."""
    client = await subscribed(await ws.connect("hq"), "deliveries:mapo")
    await snapshot_after(client)
    redis_client = get_redis()
    redis_client.delete(proc_key(PROCESS_ID))  # what the TTL does after a long stall

    snapshot = presence_snapshot()
    assert (snapshot["processes"], snapshot["connections"]) == ([], 0)
    assert not redis_client.exists(conns_key(PROCESS_ID))
    assert not redis_client.sismember(procs_key(), PROCESS_ID)

    await get_hub().presence.heartbeat()  # what the hub runs every REALTIME_PRESENCE_HEARTBEAT

    snapshot = presence_snapshot()
    assert snapshot["connections"] == 1
    assert snapshot["by_stream"] == {"deliveries:mapo": 1}


async def test_presence_heartbeat_repairs_a_lost_connection_write(ws):
    """A connection whose Redis write was lost is written back by the process's next heartbeat."""
    first, second = await ws.connect("hq"), await ws.connect(DISPATCHER)
    await snapshot_after(first, second)
    lost = get_redis().hkeys(conns_key(PROCESS_ID))[0]
    get_redis().hdel(conns_key(PROCESS_ID), lost)  # as if that connection's HSET had failed
    assert presence_snapshot()["connections"] == 1

    await get_hub().presence.heartbeat()

    assert presence_snapshot()["by_user"] == {str(first.user.pk): 1, str(second.user.pk): 1}


async def test_presence_snapshot_makes_three_round_trips(other_processes, monkeypatch):
    """A snapshot costs three round trips to Redis however many processes and connections there are."""
    for index in range(4):
        server = await other_processes()
        for conn in range(5):
            await server.connect(f"c{conn}", user_id=index * 10 + conn + 1, username="u", role="dispatcher")
            await server.set_streams(f"c{conn}", ["deliveries:gangnam", "chat:gangnam"])
    dead = await other_processes()
    await dead.connect("x", user_id=99, username="u99", role="hq")
    get_redis().delete(proc_key(dead.process_id))
    round_trips = []
    single, batched = redis.Redis.execute_command, redis.client.Pipeline.execute

    def count_single(self, *args, **options):
        round_trips.append(args[0])
        return single(self, *args, **options)

    def count_batched(self, *args, **kwargs):
        round_trips.append("pipeline")
        return batched(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "execute_command", count_single)
    monkeypatch.setattr(redis.client.Pipeline, "execute", count_batched)

    snapshot = presence_snapshot()

    assert snapshot["connections"] == 20
    assert round_trips == ["SMEMBERS", "pipeline", "pipeline"]


@pytest.fixture
def api_client(settings):
    settings.ROOT_URLCONF = __name__
    return Client()


@pytest.fixture
def event_loop_runner():
    """Run coroutines on one private event loop from a synchronous (database) test."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def test_presence_api_gives_hq_the_snapshot(demo, api_client, event_loop_runner):
    """HQ gets the snapshot: processes and counts per stream, user, role and center."""
    hq = demo.user("hq")
    server = presence_like_the_hub("api-test")
    event_loop_runner(server.start())
    try:
        event_loop_runner(server.connect("c1", user_id=hq.pk, username="hq", role="hq"))
        event_loop_runner(server.set_streams("c1", ["deliveries:gangnam"]))
        api_client.force_login(hq)

        response = api_client.get("/api/v1/ops/presence")
    finally:
        event_loop_runner(server.stop())
        event_loop_runner(server.redis.aclose())

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"processes", "connections", "by_stream", "by_user", "by_role", "by_center"}
    [process] = body["processes"]
    assert set(process) >= {"id", "host", "pid", "connections", "cpu", "rss"}
    assert process["id"] == server.process_id
    assert body["connections"] == 1
    assert body["by_stream"] == {"deliveries:gangnam": 1}
    assert body["by_user"] == {str(hq.pk): 1}
    assert body["by_role"] == {"hq": 1}
    assert body["by_center"] == {"gangnam": 1}


@pytest.mark.parametrize("username", ["dispatch-gangnam", "callcenter", "rider-gangnam-01"])
def test_presence_api_refuses_other_roles(demo, api_client, username):
    """Dispatchers, call-center staff and riders get 403."""
    api_client.force_login(demo.user(username))

    response = api_client.get("/api/v1/ops/presence")

    assert response.status_code == 403
    assert "detail" in response.json()


def test_presence_api_refuses_api_tokens(demo, api_client):
    """An API token gets 403, even one allowed every stream: presence names staff."""
    raw, digest = ApiToken.generate()
    ApiToken.objects.create(name="ops", digest=digest, hint=raw[:12], commands=[], streams=["*"])

    response = api_client.get("/api/v1/ops/presence", headers={"Authorization": f"Bearer {raw}"})

    assert response.status_code == 403
    assert "detail" in response.json()


def test_presence_api_refuses_anonymous_callers(db, api_client):
    """A caller without session or token gets 401."""
    response = api_client.get("/api/v1/ops/presence")

    assert response.status_code == 401
    assert "detail" in response.json()


def count_pipelines(presence: Presence, fail: bool = False) -> list[int]:
    """Record the size of each pipeline this presence sends (one round trip each); `fail`: as if Redis were down."""
    sent: list[int] = []
    original = presence.redis.pipeline

    def pipeline(*args, **kwargs):
        pipe = original(*args, **kwargs)
        execute = pipe.execute

        async def counted_execute(*a, **k):
            sent.append(len(pipe.command_stack))
            if fail:
                raise redis.exceptions.ConnectionError("Redis is down (test)")
            return await execute(*a, **k)

        pipe.execute = counted_execute
        return pipe

    presence.redis.pipeline = pipeline
    return sent


async def test_presence_writes_of_connections_handled_together_share_one_round_trip(other_processes):
    """A storm's connects are written in one pipeline; each `connect` returns once Redis holds it."""
    presence = await other_processes()
    sent = count_pipelines(presence)
    await asyncio.gather(
        *(presence.connect(f"c{i}", user_id=i + 1, username=f"u{i}", role="dispatcher") for i in range(50))
    )
    assert sent == [1]  # one HSET of 50 fields
    stored = await presence.redis.hgetall(conns_key(presence.process_id))
    assert sorted(stored) == sorted(f"c{i}".encode() for i in range(50))

    await asyncio.gather(
        presence.set_streams("c0", ["deliveries:gangnam"]),
        presence.disconnect("c1"),
        presence.connect("c1", user_id=2, username="u1", role="dispatcher"),
        presence.connect("c50", user_id=51, username="u50", role="rider"),
        presence.disconnect("c50"),  # the latest state of a connection is what gets written
    )
    assert sent == [1, 2]  # one pipeline: an HSET and an HDEL
    stored = await presence.redis.hgetall(conns_key(presence.process_id))
    assert b"c50" not in stored and b"c1" in stored and len(stored) == 50
    assert b'"streams":["deliveries:gangnam"]' in stored[b"c0"]


async def test_presence_write_failure_reaches_every_waiting_connection_and_the_next_write_works(other_processes):
    presence = await other_processes()
    count_pipelines(presence, fail=True)
    results = await asyncio.gather(
        *(presence.connect(f"c{i}", user_id=i + 1, username=f"u{i}", role="hq") for i in range(3)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [redis.exceptions.ConnectionError] * 3
    del presence.redis.pipeline  # Redis is back
    await presence.connect("c3", user_id=4, username="u3", role="hq")
    assert await presence.redis.hkeys(conns_key(presence.process_id)) == [b"c3"]
    await presence.heartbeat()  # what the hub runs: it writes back the connections the failed write lost
    assert len(await presence.redis.hkeys(conns_key(presence.process_id))) == 4

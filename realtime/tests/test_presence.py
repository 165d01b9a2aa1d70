"""Presence (protocol §3): who is connected per stream, user, role, center and server process, exact
across processes, and a process that dies leaves presence within its TTL with nothing left behind."""

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from django.test import Client
from django.urls import path
from ninja import NinjaAPI

from core.api_auth import API_AUTH
from core.models import ApiToken
from realtime.api_presence import router as presence_router
from realtime.bus import get_redis
from realtime.presence import (
    Presence,
    connections_of_user,
    conns_key,
    is_user_online,
    presence_snapshot,
    proc_key,
    procs_key,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOLDER = Path(__file__).with_name("presence_holder.py")
KILL_DEADLINE = 10  # seconds; the holder's TTL is 2 s, the protocol allows 45 s (60 s at most)

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
async def processes():
    """Start Presence objects ("server processes") on demand; stop the ones still running at the end."""
    started: list[Presence] = []

    async def start(**kwargs) -> Presence:
        presence = Presence(**kwargs)
        await presence.start()
        started.append(presence)
        return presence

    yield start
    for presence in started:
        await presence.stop()


def entry_of(snapshot: dict, process_id: str) -> dict | None:
    return next((p for p in snapshot["processes"] if p["id"] == process_id), None)


async def test_presence_connect_is_counted_per_stream_user_role_and_center(processes):
    """A connection with streams appears in every count of the snapshot and under its process."""
    server = await processes()
    await server.connect("c1", user_id=12, username="dispatch-gangnam", role="dispatcher")
    await server.set_streams("c1", ["deliveries:gangnam", "riders:gangnam", "user:12", "broadcast:all"])

    snapshot = presence_snapshot()

    assert snapshot["connections"] == 1
    assert snapshot["by_stream"] == {
        "broadcast:all": 1,
        "deliveries:gangnam": 1,
        "riders:gangnam": 1,
        "user:12": 1,
    }
    assert snapshot["by_user"] == {"12": 1}
    assert snapshot["by_role"] == {"dispatcher": 1}
    assert snapshot["by_center"] == {"gangnam": 1}
    [process] = snapshot["processes"]
    assert process["id"] == server.process_id
    assert process["pid"] == os.getpid()
    assert process["connections"] == 1


async def test_presence_connect_without_streams_counts_the_user_only(processes):
    """A connection that has not subscribed yet counts for its user and role, not for any stream."""
    server = await processes()
    await server.connect("c1", user_id=7, username="callcenter", role="callcenter")

    snapshot = presence_snapshot()

    assert snapshot["connections"] == 1
    assert snapshot["by_user"] == {"7": 1}
    assert snapshot["by_role"] == {"callcenter": 1}
    assert snapshot["by_stream"] == {}
    assert snapshot["by_center"] == {}


async def test_presence_set_streams_replaces_the_connection_streams(processes):
    """Each set_streams call is the full list: streams left behind stop counting."""
    server = await processes()
    await server.connect("c1", user_id=3, username="hq", role="hq")
    await server.set_streams("c1", ["deliveries:gangnam", "orders:gangnam"])
    await server.set_streams("c1", ["chat:mapo"])

    snapshot = presence_snapshot()

    assert snapshot["by_stream"] == {"chat:mapo": 1}
    assert snapshot["by_center"] == {"mapo": 1}


async def test_presence_by_center_counts_a_connection_once_per_center(processes):
    """A connection on several streams of one center counts once for that center."""
    server = await processes()
    await server.connect("c1", user_id=3, username="hq", role="hq")
    await server.set_streams("c1", ["deliveries:gangnam", "positions:gangnam", "chat:gangnam", "orders:songpa"])
    await server.connect("c2", user_id=4, username="dispatch-gangnam", role="dispatcher")
    await server.set_streams("c2", ["deliveries:gangnam"])

    assert presence_snapshot()["by_center"] == {"gangnam": 2, "songpa": 1}


async def test_presence_set_streams_ignores_a_disconnected_connection(processes):
    """A subscribe that finishes after its socket closed does not bring the connection back."""
    server = await processes()
    await server.connect("c1", user_id=5, username="u5", role="dispatcher")
    await server.disconnect("c1")
    await server.set_streams("c1", ["deliveries:gangnam"])

    snapshot = presence_snapshot()

    assert snapshot["connections"] == 0
    assert snapshot["by_stream"] == {}


async def test_presence_disconnect_removes_the_connection(processes):
    """A disconnected connection leaves every count; the user's other connection stays."""
    server = await processes()
    await server.connect("c1", user_id=12, username="dispatch-gangnam", role="dispatcher")
    await server.connect("c2", user_id=12, username="dispatch-gangnam", role="dispatcher")
    await server.set_streams("c1", ["deliveries:gangnam"])
    await server.set_streams("c2", ["chat:gangnam"])
    await server.disconnect("c1")

    snapshot = presence_snapshot()

    assert snapshot["connections"] == 1
    assert snapshot["by_stream"] == {"chat:gangnam": 1}
    assert snapshot["by_user"] == {"12": 1}
    assert entry_of(snapshot, server.process_id)["connections"] == 1


async def test_presence_counts_connections_of_all_processes_together(processes):
    """Two server processes' connections add up, with one entry per process."""
    first = await processes()
    second = await processes()
    await first.connect("a", user_id=12, username="dispatch-gangnam", role="dispatcher")
    await first.set_streams("a", ["deliveries:gangnam"])
    await second.connect("b", user_id=12, username="dispatch-gangnam", role="dispatcher")
    await second.set_streams("b", ["deliveries:gangnam"])
    await second.connect("c", user_id=30, username="rider-gangnam-01", role="rider")
    await second.set_streams("c", ["chat:gangnam"])

    snapshot = presence_snapshot()

    assert snapshot["connections"] == 3
    assert {p["id"]: p["connections"] for p in snapshot["processes"]} == {first.process_id: 1, second.process_id: 2}
    assert snapshot["by_stream"] == {"chat:gangnam": 1, "deliveries:gangnam": 2}
    assert snapshot["by_user"] == {"12": 2, "30": 1}
    assert snapshot["by_role"] == {"dispatcher": 2, "rider": 1}
    assert snapshot["by_center"] == {"gangnam": 3}
    assert connections_of_user(12) == 2


async def test_presence_is_user_online_follows_connections(processes):
    """A user is online while any of their connections, on any process, is open."""
    first = await processes()
    second = await processes()
    assert not is_user_online(12)

    await first.connect("a", user_id=12, username="dispatch-gangnam", role="dispatcher")
    await second.connect("b", user_id=12, username="dispatch-gangnam", role="dispatcher")
    assert is_user_online(12)
    assert connections_of_user(12) == 2
    assert connections_of_user(13) == 0

    await first.disconnect("a")
    assert connections_of_user(12) == 1
    await second.disconnect("b")
    assert not is_user_online(12)


async def test_presence_stop_removes_the_process_and_its_connections(processes):
    """A process that shuts down cleanly leaves presence at once, with its keys deleted."""
    leaving = await processes()
    staying = await processes()
    await leaving.connect("a", user_id=1, username="u1", role="hq")
    await leaving.connect("b", user_id=2, username="u2", role="hq")
    await staying.connect("c", user_id=3, username="u3", role="hq")

    await leaving.stop()
    snapshot = presence_snapshot()

    assert [p["id"] for p in snapshot["processes"]] == [staying.process_id]
    assert snapshot["connections"] == 1
    client = get_redis()
    assert not client.exists(proc_key(leaving.process_id), conns_key(leaving.process_id))
    assert not client.sismember(procs_key(), leaving.process_id)


async def test_presence_heartbeat_records_cpu_and_memory(processes):
    """Each process reports its CPU percentage and resident memory for the ops monitor."""
    server = await processes()
    await server.heartbeat()

    [process] = presence_snapshot()["processes"]

    assert isinstance(process["cpu"], float)
    assert process["cpu"] >= 0
    assert process["rss"] > 0


async def test_presence_heartbeat_keeps_a_process_past_its_ttl(processes):
    """A process that keeps heart-beating stays in presence longer than its key's TTL."""
    server = await processes(ttl=1, heartbeat_interval=0.2)
    await server.connect("c1", user_id=1, username="u1", role="hq")
    beating = asyncio.create_task(server.keep_alive())
    try:
        await asyncio.sleep(2)
        assert presence_snapshot()["connections"] == 1
    finally:
        beating.cancel()


async def test_presence_expired_process_is_ignored_and_collected(processes):
    """A process whose key expired is left out of the snapshot and its hash and membership deleted."""
    silent = await processes(ttl=0.5, heartbeat_interval=0.1)
    await silent.connect("c1", user_id=1, username="u1", role="hq")
    client = get_redis()
    for _ in range(50):
        if not client.exists(proc_key(silent.process_id)):
            break
        await asyncio.sleep(0.1)

    snapshot = presence_snapshot()

    assert snapshot["processes"] == []
    assert snapshot["connections"] == 0
    assert not client.exists(conns_key(silent.process_id))
    assert not client.sismember(procs_key(), silent.process_id)


async def test_presence_heartbeat_restores_a_process_collected_during_a_stall(processes):
    """A process whose key expired (an event-loop stall) writes its connections back on its next heartbeat."""
    server = await processes()
    await server.connect("c1", user_id=1, username="u1", role="hq")
    await server.set_streams("c1", ["deliveries:mapo"])
    get_redis().delete(proc_key(server.process_id))  # what the TTL does after a long stall
    assert presence_snapshot()["connections"] == 0

    await server.heartbeat()

    snapshot = presence_snapshot()
    assert snapshot["connections"] == 1
    assert snapshot["by_stream"] == {"deliveries:mapo": 1}


async def test_presence_heartbeat_repairs_a_lost_connection_write(processes):
    """A connection whose Redis write was lost is written back by the next heartbeat."""
    server = await processes()
    await server.connect("c1", user_id=1, username="u1", role="hq")
    await server.connect("c2", user_id=2, username="u2", role="hq")
    get_redis().hdel(conns_key(server.process_id), "c2")  # as if that HSET had failed

    await server.heartbeat()

    assert presence_snapshot()["by_user"] == {"1": 1, "2": 1}


async def test_presence_snapshot_makes_three_round_trips(processes, monkeypatch):
    """A snapshot costs three round trips to Redis however many processes and connections there are."""
    for index in range(4):
        server = await processes()
        for conn in range(5):
            await server.connect(f"c{conn}", user_id=index * 10 + conn + 1, username="u", role="dispatcher")
            await server.set_streams(f"c{conn}", ["deliveries:gangnam", "chat:gangnam"])
    dead = await processes()
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


def test_presence_process_killed_with_sigkill_leaves_presence(presence_prefix):
    """A server process killed with SIGKILL drops out of presence once its key expires, its hash collected."""
    holder = subprocess.Popen(
        [
            sys.executable,
            str(HOLDER),
            "--connections=3",
            "--user=4242",
            "--stream=deliveries:gangnam",
            "--stream=chat:gangnam",
            "--ttl=2",
            "--heartbeat=0.5",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "bros.settings", "REDIS_PREFIX": presence_prefix},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        process_id = holder.stdout.readline().strip()
        assert process_id, f"the holder exited with {holder.poll()} before registering"

        snapshot = presence_snapshot()
        assert entry_of(snapshot, process_id)["connections"] == 3
        assert entry_of(snapshot, process_id)["pid"] == holder.pid
        assert snapshot["by_user"] == {"4242": 3}
        assert snapshot["by_stream"] == {"chat:gangnam": 3, "deliveries:gangnam": 3}

        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=5)
        deadline = time.monotonic() + KILL_DEADLINE
        while entry_of(snapshot, process_id) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
            snapshot = presence_snapshot()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()

    assert entry_of(snapshot, process_id) is None
    assert snapshot["connections"] == 0
    assert snapshot["by_user"] == {}
    assert snapshot["by_stream"] == {}
    client = get_redis()
    assert not client.exists(proc_key(process_id), conns_key(process_id))
    assert not client.sismember(procs_key(), process_id)


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
    server = Presence()
    event_loop_runner(server.start())
    try:
        event_loop_runner(server.connect("c1", user_id=hq.pk, username="hq", role="hq"))
        event_loop_runner(server.set_streams("c1", ["deliveries:gangnam"]))
        api_client.force_login(hq)

        response = api_client.get("/api/v1/ops/presence")
    finally:
        event_loop_runner(server.stop())

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

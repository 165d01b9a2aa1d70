"""The scale-out scenario, the same behind every balancer (tests/scaleout/test_*.py).

Three server processes behind a balancer; 30 protocol clients (`tests/chaos/client.py`) that reach
the servers only through it, over HTTP and WebSocket. They spread over all three; a command sent
through the balancer reaches every client on its socket; one process is SIGKILLed while commands
flow through the balancer, its clients reconnect through the balancer to the survivors and resume
with `since`/`epoch`, and every client ends with every event exactly once, in order
(`Scenario.finish`: the chaos suite's invariants).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from realtime.presence import presence_snapshot
from tests.chaos.conftest import database_heads
from tests.chaos.test_chaos import STREAMS, chaos_shop, order_body, wait_for
from tests.live.conftest import db, http_json

CLIENTS = 30
# No server pings (so no heads in them, and no idle timeout within the test): a client cannot heal a
# gap from a ping's heads, so what it gets is what the processes deliver, live or by resume.
QUIET = {"REALTIME_PING_INTERVAL": 3600, "REALTIME_IDLE_TIMEOUT": 3600}  # first pings after 3 min


class HttpCommands:
    """Orders created over the HTTP API through the balancer (every other one cancelled), until stopped.

    Each command carries an `Idempotency-Key` and is sent again with the same key after a 5xx or a
    broken connection (protocol §5.3): a request caught by the SIGKILL is retried, never doubled.
    """

    def __init__(self, proxy, cookie: str, shop_id: int):
        self.proxy, self.cookie, self.shop_id = proxy, cookie, shop_id
        self.commands = 0
        self.retries = 0
        self._stop = threading.Event()
        self._task: asyncio.Future | None = None

    def _post(self, path: str, body: dict) -> dict:
        key = uuid.uuid4().hex
        deadline = time.monotonic() + 15
        while True:
            try:
                status, answer = http_json(
                    self.proxy, "POST", path, body=body, cookie=self.cookie, headers={"Idempotency-Key": key}
                )
            except OSError as exc:
                status, answer = None, repr(exc)
            if status in (200, 201):
                self.commands += 1
                return answer
            assert status is None or status >= 500, f"POST {path} refused: {status} {answer}"
            assert time.monotonic() < deadline, f"POST {path} kept failing: {status} {answer}"
            self.retries += 1
            time.sleep(0.1)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            order = self._post("/api/v1/orders", order_body(self.shop_id, n))
            if n % 2:
                self._post(f"/api/v1/orders/{order['id']}/cancel", {"reason": "scale-out", "version": order["version"]})
            n += 1

    def start(self) -> HttpCommands:
        self._task = asyncio.ensure_future(asyncio.to_thread(self._run))
        return self

    async def wait_for(self, commands: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while self.commands < commands:
                if self._task.done():
                    self._task.result()  # it failed: say why
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop.set()
        await self._task


def connections_by_pid() -> dict[int, int]:
    """Live WebSocket connections per server process, as each process reports them in presence."""
    return {int(p["pid"]): p["connections"] for p in presence_snapshot()["processes"] if p["kind"] == "web"}


async def spread_kill_and_resume(chaos, proxy, servers, *, balancer_sessions=None) -> None:
    """Run the scenario through `proxy`; `balancer_sessions()`, when the balancer tells, is its
    count of open sessions per server pid, which must match each process's own count."""
    clients = await chaos.clients_on([[proxy]] * CLIENTS, STREAMS)  # HTTP and WebSocket through it only

    # Spread: every process holds some of the sockets.
    pids = {server.pid for server in servers}
    await wait_for(lambda: sum(connections_by_pid().values()) == CLIENTS, 10, "every socket in presence")
    spread = await asyncio.to_thread(connections_by_pid)
    assert set(spread) == pids and all(spread.values()), spread
    if balancer_sessions is not None:  # (a client's finished HTTP request may take a moment to leave it)
        await wait_for(lambda: balancer_sessions() == spread, 10, f"the balancer's sessions to be {spread}")
    chaos.notes["sockets per process"] = sorted(spread.values())

    # A command through the balancer reaches every client, live on its socket.
    caller = await chaos.cookie("callcenter")
    shop_id = (await db(chaos_shop)()).pk
    before = await db(database_heads)(STREAMS)
    order = order_body(shop_id, -1)
    status, _ = await asyncio.to_thread(http_json, proxy, "POST", "/api/v1/orders", body=order, cookie=caller)
    assert status == 201
    assert await db(database_heads)(STREAMS) == {stream: head + 1 for stream, head in before.items()}
    await chaos.check_clients(clients)
    for client in clients:
        assert [(view.received, view.fetched) for view in client.views.values()] == [(1, 0)] * len(STREAMS)

    # SIGKILL one process during steady commands sent through the balancer.
    killed, *survivors = servers
    commands = HttpCommands(proxy, caller, shop_id).start()
    await commands.wait_for(10)
    await asyncio.to_thread(killed.kill)
    await commands.wait_for(commands.commands + 20)
    await commands.stop()
    await asyncio.gather(*(client.wait_connected() for client in clients))
    chaos.notes["commands through the balancer"] = (
        f"{commands.commands + 1} ({commands.retries} retried with their key)"
    )

    # Every event committed before, during and after the outage arrived exactly once, in order,
    # on the sockets (live, or replayed on resume): nothing fetched over HTTP, no reset.
    counts = await chaos.finish()
    assert (counts["resets"], counts["fetched"]) == (0, 0), counts

    # The killed process's clients, and only they, reconnected: through the balancer, to the survivors.
    reconnected = [client for client in clients if client.connections > 1]
    assert len(reconnected) == spread[killed.pid], (len(reconnected), spread)
    assert all(client.connections == 2 for client in reconnected)
    alive = {server.pid for server in survivors}

    def survivors_hold_everyone() -> bool:
        now = connections_by_pid()
        return sum(now.get(pid, 0) for pid in alive) == CLIENTS

    await wait_for(survivors_hold_everyone, 10, "the survivors to hold every socket")
    if balancer_sessions is not None:

        def balancer_agrees() -> bool:
            sessions = balancer_sessions()
            return sessions[killed.pid] == 0 and sum(sessions[pid] for pid in alive) == CLIENTS

        await wait_for(balancer_agrees, 10, "the balancer to hold every session on the survivors")

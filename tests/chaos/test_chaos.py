"""The chaos suite (issue 12; docs/realtime.md, "Chaos suite"): faults a deployment meets, each
under real server processes, real PostgreSQL and Redis, with simulated clients that follow the
protocol's client rules. After each scenario every client must have applied every stream's seqs
contiguously up to the database head, never lowered an entity's version, and show exactly what a
fresh snapshot shows (`Scenario.finish`).
"""

from __future__ import annotations

import asyncio
import threading

from tests.live.conftest import db

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
    clients = [await chaos.client([server, a if server is b else b], STREAMS) for server in (a, b) * 4]
    writer = CommandWriter().start()
    await writer.wait_for(20)
    await asyncio.to_thread(a.kill)
    await writer.wait_for(writer.commands + 20)
    await writer.stop()
    counts = await chaos.finish()
    assert sum(len(c.close_codes) for c in clients) >= 4  # the killed process's clients reconnected
    assert counts["resets"] == 0

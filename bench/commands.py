"""How many domain commands per second the services sustain on ONE center.

Every command of a center bumps the same stream counter rows (`deliveries:<c>`, `orders:<c>`,
`riders:<c>`), which serializes their commits by design (gapless seqs in commit order). This
measures what that costs: W writer threads each run whole delivery lifecycles (create, assign,
pick up, deliver = 4 commands) against real PostgreSQL and Redis, for a bounded time.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bros_bench REDIS_URL=redis://127.0.0.1:6379/0 \
    SECRET_KEY=x DEBUG=1 .venv/bin/python bench/commands.py --writers 1 2 4 8 --seconds 10

The database must be migrated and seeded (`manage.py migrate && manage.py seed_demo`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bros.settings")
os.environ.setdefault("REDIS_PREFIX", "bros-bench-commands")

import django

django.setup()

from django.db import connection  # noqa: E402

from core.models import Center  # noqa: E402
from deliveries import services  # noqa: E402
from deliveries.models import Shop  # noqa: E402
from realtime.models import Event  # noqa: E402
from riders.models import Rider  # noqa: E402
from riders.services import set_rider_duty  # noqa: E402


def lifecycle(shop_id: int, rider_id: int, latencies: list[float]) -> None:
    def timed(command, **kwargs):
        start = time.perf_counter()
        result = command(actor=None, **kwargs)
        latencies.append(time.perf_counter() - start)
        return result

    order = timed(
        services.create_order,
        shop_id=shop_id,
        customer_name="Bench Kim",
        customer_phone="010-0000-0000",
        address="Teheran-ro 1",
        items=[{"name": "Chicken", "qty": 1}],
    )
    delivery_id = order.delivery.pk
    timed(services.assign_delivery, delivery_id=delivery_id, rider_id=rider_id)
    timed(services.pick_up_delivery, delivery_id=delivery_id)
    timed(services.deliver_delivery, delivery_id=delivery_id)


def run(writers: int, seconds: float, center: Center) -> dict:
    shops = list(Shop.objects.filter(center=center).values_list("pk", flat=True))
    riders = list(Rider.objects.filter(center=center).order_by("pk").values_list("pk", flat=True))
    for rider_id in riders:
        if not Rider.objects.get(pk=rider_id).on_duty:
            set_rider_duty(actor=None, rider_id=rider_id, on_duty=True)
    latencies: list[list[float]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []
    deadline = time.perf_counter() + seconds
    events_before = Event.objects.count()

    def writer(index: int) -> None:
        try:
            n = 0
            while time.perf_counter() < deadline:
                lifecycle(shops[n % len(shops)], riders[(index + n * writers) % len(riders)], latencies[index])
                n += 1
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    all_latencies = sorted(x for per in latencies for x in per)
    if errors:
        raise errors[0]
    return {
        "writers": writers,
        "commands": len(all_latencies),
        "commands_per_s": len(all_latencies) / elapsed,
        "events": Event.objects.count() - events_before,
        "p50_ms": statistics.median(all_latencies) * 1000,
        "p99_ms": all_latencies[int(len(all_latencies) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--center", default="gangnam")
    args = parser.parse_args()
    center = Center.objects.get(code=args.center)
    print(f"{'writers':>7} {'commands':>9} {'cmd/s':>8} {'events':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for writers in args.writers:
        r = run(writers, args.seconds, center)
        print(
            f"{r['writers']:>7} {r['commands']:>9} {r['commands_per_s']:>8.0f} {r['events']:>7} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}"
        )


if __name__ == "__main__":
    main()

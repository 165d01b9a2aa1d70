"""Time the reports page and its largest CSV for one center's day of 10,000 deliveries.

Run explicitly (it is no test of the suite): `pytest -q -s -p no:randomly bench/reports_day.py`.
The rows are bulk-inserted (10,000 deliveries, 20,000 timeline entries, 20,000 position samples of
10 riders) because going through the services would take minutes; the figures do not care.
"""

import time as clock
from datetime import date, datetime, time, timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from deliveries.models import Delivery, Order, TimelineEntry
from riders.models import PositionSample

DAY = date(2026, 1, 20)


def test_report_of_a_day_of_10000_deliveries(client, demo):
    shop = demo.shop("gangnam")
    riders = [demo.rider("gangnam", n) for n in range(1, 11)]
    start = timezone.make_aware(datetime.combine(DAY, time(8, 0)))
    orders, deliveries = [], []
    for n in range(10_000):
        at = start + timedelta(seconds=5 * n)
        orders.append(
            Order(
                center=shop.center,
                shop=shop,
                customer_name="=x" if n % 7 == 0 else "Kim",
                customer_phone="010",
                address="a",
                promised_at=at + timedelta(minutes=45),
                status="delivered" if n % 10 else "cancelled",
                cancel_reason="" if n % 10 else "gone",
            )
        )
    Order.objects.bulk_create(orders, batch_size=2000)
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(created_at=start)
    for n, o in enumerate(orders):
        at = start + timedelta(seconds=5 * n)
        done = n % 10 != 0
        deliveries.append(
            Delivery(
                order=o,
                center=shop.center,
                shop=shop,
                rider=riders[n % 10] if done else None,
                status="delivered" if done else "cancelled",
                assigned_at=at + timedelta(minutes=3),
                picked_up_at=at + timedelta(minutes=15),
                delivered_at=at + timedelta(minutes=30 + n % 30) if done else None,
                cancelled_at=None if done else at + timedelta(minutes=2),
            )
        )
    Delivery.objects.bulk_create(deliveries, batch_size=2000)
    # created_at is auto_now_add: move them all into the day by a single SQL update.
    with connection.cursor() as c:
        c.execute(
            "UPDATE deliveries_delivery SET created_at = %s + (id %% 10000) * interval '5 seconds'"
            " WHERE center_id = %s",
            [start, shop.center_id],
        )
    entries = []
    for n, d in enumerate(deliveries):
        at = start + timedelta(seconds=5 * n)
        entries.append(
            TimelineEntry(delivery=d, actor_label="system", source="system", action="created", to_status="waiting")
        )
        entries.append(
            TimelineEntry(
                delivery=d, actor_label="system", source="system", action="assigned" if n % 10 else "cancelled"
            )
        )
    TimelineEntry.objects.bulk_create(entries, batch_size=5000)
    with connection.cursor() as c:
        c.execute("UPDATE deliveries_timelineentry SET at = %s + interval '3 minutes'", [start])
    samples = [
        PositionSample(rider=r, lat=37.5 + k / 10000, lng=127.0, recorded_at=start + timedelta(seconds=15 * k))
        for r in riders
        for k in range(2000)
    ]
    PositionSample.objects.bulk_create(samples, batch_size=5000)
    with connection.cursor() as c:
        c.execute("ANALYZE")
    client.force_login(demo.user("hq"))
    client.get(reverse("reports"), {"from": DAY})
    times = []
    for _ in range(5):
        t = clock.perf_counter()
        r = client.get(reverse("reports"), {"from": DAY})
        times.append(clock.perf_counter() - t)
        assert r.status_code == 200
    assert b'data-figure="orders">10000<' in r.content
    with CaptureQueriesContext(connection) as q:
        client.get(reverse("reports"), {"from": DAY})
    for query in q.captured_queries:
        print(f"query {float(query['time']) * 1000:6.0f} ms", " ".join(query["sql"].split())[:90])
    t = clock.perf_counter()
    r = client.get(reverse("reports-csv", args=["exceptions"]), {"from": DAY})
    n = sum(chunk.count(b"\n") for chunk in r.streaming_content)
    csv_t = clock.perf_counter() - t
    median = sorted(times)[2]
    print(f"reports page: min {min(times) * 1000:.0f} ms, median {median * 1000:.0f} ms")
    print(f"exceptions CSV: {n} lines in {csv_t * 1000:.0f} ms")

"""A Redis outage (issue 12, bug 3): the board renders from PostgreSQL with every position stale.

Redis is made unreachable by pointing this process's bus at a closed port (`redis_outage`); the
shared Redis other test runs use keeps running.
"""

import json
import re
from datetime import timedelta

from django.test import Client
from django.utils import timezone

from riders.models import Rider
from tests.support import take_order


def fresh_rider(demo) -> Rider:
    """An on-duty gangnam rider whose stored position is 2 s old: fresh, were Redis up."""
    rider = demo.rider("gangnam", 3)
    Rider.objects.filter(pk=rider.pk).update(
        on_duty=True, last_lat=37.50, last_lng=127.03, last_position_at=timezone.now() - timedelta(seconds=2)
    )
    return rider


def dispatcher(demo) -> Client:
    client = Client()
    client.force_login(demo.user("dispatch-gangnam"))
    return client


def test_board_renders_from_postgres_with_every_position_stale_while_redis_is_down(demo, redis_outage):
    """The board page answers 200, says live GPS is unavailable, and marks even fresh positions stale."""
    rider = fresh_rider(demo)

    response = dispatcher(demo).get("/dispatch/gangnam/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Live GPS is unavailable" in html
    rows = json.loads(re.search(r'<script id="board-riders" type="application/json">(.*?)</script>', html, re.S)[1])
    (mine,) = [row for row in rows if row["id"] == rider.pk]
    assert (mine["lat"], mine["lng"], mine["stale"]) == (37.50, 127.03, True)
    assert all(row["stale"] for row in rows)


def test_board_says_nothing_about_gps_while_redis_is_up(demo, no_live_positions):
    """With Redis up there is no outage notice (the notice above is not always there)."""
    response = dispatcher(demo).get("/dispatch/gangnam/")

    assert response.status_code == 200
    assert "Live GPS is unavailable" not in response.content.decode()


def test_drawer_suggests_riders_as_stale_while_redis_is_down(demo, redis_outage):
    """The delivery drawer still ranks riders, from their stored positions, all shown as last seen."""
    fresh_rider(demo)
    delivery = take_order(demo).delivery

    response = dispatcher(demo).get(f"/dispatch/gangnam/deliveries/{delivery.pk}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "last seen" in html and "s ago" not in html

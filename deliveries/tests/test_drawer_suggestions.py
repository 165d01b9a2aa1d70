"""The delivery drawer shows the server's rider ranking (riders/suggestions.py through
selectors.suggested_riders), the source of truth the assign dialog's browser copy is held to by the
shared vectors."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from deliveries import selectors, services
from deliveries.models import Delivery
from riders.models import Rider
from riders.services import set_rider_duty
from tests.support import take_order

BOARD = "/dispatch/gangnam/"
KM_PER_DEGREE_LAT = 111.195
SUGGESTION = re.compile(
    r'<li class="suggestion[^"]*" data-rider="(\d+)">'
    r'<span class="name">[^<]*</span> <span class="reason">([^<]*)</span>'
)


# No live positions: the stored columns alone place the riders.
pytestmark = pytest.mark.usefixtures("no_live_positions")


def rider_near_shop(demo, number: int, *, km: float, load: int = 0, now=None) -> Rider:
    """Put a Gangnam rider on duty `km` north of the first shop with a fix 3 s before `now`."""
    rider = demo.rider("gangnam", number)
    set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    shop = demo.shop()
    Rider.objects.filter(pk=rider.pk).update(
        load=load,
        last_lat=shop.lat + km / KM_PER_DEGREE_LAT,
        last_lng=shop.lng,
        last_position_at=(now or timezone.now()) - timedelta(seconds=3),
    )
    return rider


def take_delivery(demo) -> Delivery:
    return take_order(demo).delivery


def drawer(client, demo, delivery: Delivery) -> str:
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(f"{BOARD}deliveries/{delivery.pk}/")
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def suggested(content: str) -> list[tuple[int, str]]:
    """(rider id, reason) of each suggestion in the drawer, in order; the GPS age is left out (it ticks)."""
    return [(int(pk), reason.rsplit(" · ", 1)[0]) for pk, reason in SUGGESTION.findall(content)]


# -- the selector --------------------------------------------------------------------------------------------


def test_suggested_riders_ranks_riders_for_the_delivery_shop(demo):
    """A waiting delivery gets the best riders for its shop, as suggest_riders ranks them, up to the limit."""
    now = timezone.now()
    far, near, middle = (rider_near_shop(demo, n, km=km, now=now) for n, km in ((1, 3.0), (2, 0.4), (3, 1.2)))
    got = selectors.suggested_riders(delivery=take_delivery(demo), limit=2, now=now)
    assert [(s.rider_id, s.reason) for s in got] == [
        (near.pk, "0.4 km · idle · GPS 3 s ago"),
        (middle.pk, "1.2 km · idle · GPS 3 s ago"),
    ]
    assert far.pk not in {s.rider_id for s in got}


def test_suggested_riders_leave_out_the_current_rider(demo):
    """An assigned delivery is offered the other riders (to reassign), still up to the limit."""
    near, middle, far = (rider_near_shop(demo, n, km=km) for n, km in ((1, 0.4), (2, 1.2), (3, 3.0)))
    delivery = services.assign_delivery(actor=None, delivery_id=take_delivery(demo).pk, rider_id=near.pk)
    assert [s.rider_id for s in selectors.suggested_riders(delivery=delivery, limit=2)] == [middle.pk, far.pk]


def test_suggested_riders_offer_nothing_once_picked_up(demo, django_assert_num_queries):
    """A picked-up delivery can no longer be assigned: no suggestions, and no query for them."""
    near = rider_near_shop(demo, 1, km=0.4)
    rider_near_shop(demo, 2, km=1.2)
    delivery = services.assign_delivery(actor=None, delivery_id=take_delivery(demo).pk, rider_id=near.pk)
    delivery = services.pick_up_delivery(actor=None, delivery_id=delivery.pk)
    with django_assert_num_queries(0):
        assert selectors.suggested_riders(delivery=delivery, limit=3) == []


# -- the drawer ----------------------------------------------------------------------------------------------


def test_drawer_lists_the_server_ranking_of_riders_with_reasons(client, demo):
    """A waiting delivery's drawer lists the three best riders for its shop as suggest_riders ranks them."""
    far = rider_near_shop(demo, 1, km=4.0)
    busy_near = rider_near_shop(demo, 2, km=0.5, load=2)
    near = rider_near_shop(demo, 3, km=0.4)
    middle = rider_near_shop(demo, 4, km=1.2)

    content = drawer(client, demo, take_delivery(demo))

    assert "Best riders now" in content
    assert suggested(content) == [
        (near.pk, "0.4 km · idle"),
        (middle.pk, "1.2 km · idle"),
        (busy_near.pk, "0.5 km · 2 active"),
    ]
    assert far.pk not in {pk for pk, _ in suggested(content)}
    assert re.search(r"0\.4 km · idle · GPS \d s ago", content)


def test_drawer_of_assigned_delivery_suggests_the_other_riders(client, demo):
    """An assigned delivery's drawer suggests riders to reassign it to, never its own rider."""
    near, middle = rider_near_shop(demo, 1, km=0.4), rider_near_shop(demo, 2, km=1.2)
    delivery = take_delivery(demo)
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=near.pk)

    content = drawer(client, demo, delivery)

    assert suggested(content) == [(middle.pk, "1.2 km · idle")]


def test_drawer_of_assigned_delivery_says_when_no_other_rider_is_on_duty(client, demo):
    """With its own rider the only one on duty, the drawer says there is no other rider."""
    only = rider_near_shop(demo, 1, km=0.4)
    delivery = take_delivery(demo)
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=only.pk)

    content = drawer(client, demo, delivery)

    assert suggested(content) == []
    assert "No other rider on duty." in content


def test_drawer_of_picked_up_delivery_suggests_no_riders(client, demo):
    """Once picked up a delivery cannot be reassigned: its drawer has no suggestions section."""
    rider = rider_near_shop(demo, 1, km=0.4)
    rider_near_shop(demo, 2, km=1.2)
    delivery = take_delivery(demo)
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)
    services.pick_up_delivery(actor=None, delivery_id=delivery.pk)

    content = drawer(client, demo, delivery)

    assert "Best riders now" not in content and suggested(content) == []


def test_drawer_query_count_does_not_grow_with_riders_on_duty(client, demo, django_assert_max_num_queries):
    """The suggestions cost one query whether 2 or 12 riders are on duty."""
    for number in (1, 2):
        rider_near_shop(demo, number, km=float(number))
    delivery = take_delivery(demo)
    drawer(client, demo, delivery)
    with CaptureQueriesContext(connection) as few:
        drawer(client, demo, delivery)
    for number in range(3, 13):
        rider_near_shop(demo, number, km=float(number))
    with django_assert_max_num_queries(len(few)):
        content = drawer(client, demo, delivery)
    assert len(suggested(content)) == 3

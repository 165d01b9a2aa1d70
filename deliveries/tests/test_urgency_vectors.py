"""The server's urgency (the SQL annotation the board sorts and counts by) against the shared vectors.

The browser's copy (static/deliveries/urgency.js) is checked against the same file in
tests/browser/test_vectors.py, so the colour a row ticks to and the place the server sorts it agree.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from django.test import override_settings

from deliveries import services
from deliveries.models import Delivery, Order, Shop
from deliveries.selectors import BoardFilter, board_counts, board_window, centers_overview, late_delivery_ids
from riders.services import set_rider_duty
from tests.support import take_order

VECTORS = json.loads((Path(__file__).parent / "vectors" / "urgency.json").read_text())
NOW = datetime.fromisoformat(VECTORS["now"])


def delivery_in(demo, case: dict, rider_id: int) -> Delivery:
    """Take an order and drive it to the case's status through the services, then date it as the case says."""
    order = take_order(demo)
    delivery_id = order.delivery.pk
    status = case["status"]
    if status in ("assigned", "picked_up", "delivered"):
        services.assign_delivery(actor=None, delivery_id=delivery_id, rider_id=rider_id)
    if status in ("picked_up", "delivered"):
        services.pick_up_delivery(actor=None, delivery_id=delivery_id)
    if status == "delivered":
        services.deliver_delivery(actor=None, delivery_id=delivery_id)
    if status == "cancelled":
        services.cancel_order(actor=None, order_id=order.pk, reason="Customer called")
    # The services stamp the real clock and refuse a past promise: the case's times are set afterwards.
    Delivery.objects.filter(pk=delivery_id).update(created_at=NOW - timedelta(seconds=case["created_s_ago"]))
    Order.objects.filter(pk=order.pk).update(promised_at=NOW + timedelta(seconds=case["promised_in_s"]))
    return Delivery.objects.get(pk=delivery_id)


def test_urgency_vectors_cover_every_level_and_status():
    """The vectors exercise each urgency level and each delivery status (a vector file that shrinks fails)."""
    cases = VECTORS["cases"]
    assert {case["urgency"] for case in cases} == {0, 1, 2, 3}
    assert {case["status"] for case in cases} == set(Delivery.Status.values)


def test_urgency_annotation_matches_every_vector(demo):
    """The board's SQL urgency gives each vector case its expected level, on rows made by the services."""
    Shop.objects.filter(pk=demo.shop().pk).update(prep_minutes=VECTORS["shop_prep_minutes"])
    rider = demo.rider("gangnam", 1)
    set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    by_id = {delivery_in(demo, case, rider.pk).pk: case for case in VECTORS["cases"]}

    with override_settings(SLA_UNASSIGNED_MINUTES=VECTORS["settings"]["sla_unassigned_minutes"]):
        rows = board_window(center_code="gangnam", board=BoardFilter(range="24h"), offset=0, limit=200, now=NOW)

    got = {by_id[row.pk]["name"]: row.urgency for row in rows if row.pk in by_id}
    assert got == {case["name"]: case["urgency"] for case in VECTORS["cases"]}
    # The browser is handed created, ready and promised times; ready is created + prep, as the vectors assume.
    prep = timedelta(minutes=VECTORS["shop_prep_minutes"])
    assert all(row.ready_at == row.created_at + prep for row in rows if row.pk in by_id)


def test_late_alert_counts_and_overview_agree_with_urgency_vectors(demo):
    """The other readers of "late" and "needs attention" (board counts, late alert, HQ overview) match the vectors."""
    Shop.objects.filter(pk=demo.shop().pk).update(prep_minutes=VECTORS["shop_prep_minutes"])
    rider = demo.rider("gangnam", 1)
    set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    level = {delivery_in(demo, case, rider.pk).pk: case["urgency"] for case in VECTORS["cases"]}
    late = {pk for pk, urgency in level.items() if urgency == 3}

    with override_settings(SLA_UNASSIGNED_MINUTES=VECTORS["settings"]["sla_unassigned_minutes"]):
        counts = board_counts(center_code="gangnam", board=BoardFilter(range="24h"), now=NOW)
        (gangnam,) = [center for center in centers_overview(now=NOW) if center["code"] == "gangnam"]

    assert counts["all"] == len(level)
    assert counts["late"] == len(late)
    assert counts["attention"] == len([urgency for urgency in level.values() if urgency > 0])
    assert set(late_delivery_ids(center_code="gangnam", now=NOW)) == late
    assert gangnam["deliveries"]["late"] == len(late)

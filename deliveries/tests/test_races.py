"""Commands that wait for another command's lock answer with the state after it, never a 500.

Each race is made deterministic: the first command runs in a transaction held open until the
second one is seen waiting for a lock in `pg_stat_activity`, then commits.
"""

from __future__ import annotations

import threading
import time

from django.db import connection, transaction
from django.test import Client

from deliveries import services
from deliveries.models import Delivery
from deliveries.tests.test_api import API, make_order, on_duty, post_json
from realtime.models import Event
from riders.models import Rider


def _waiting_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def race(first, second):
    """Run `first` in an open transaction, start `second` in another thread, commit `first` once
    `second` waits for its lock, and return what `second` returned."""
    holding, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def hold() -> None:
        try:
            with transaction.atomic():
                first()
                holding.set()
                release.wait(30)
        finally:
            holding.set()
            connection.close()

    def run_second() -> None:
        try:
            outcome["result"] = second()
        except Exception as exc:  # surfaced by the assertion below, not lost in the thread
            outcome["error"] = exc
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(30)
    waiter = threading.Thread(target=run_second)
    waiter.start()
    deadline = time.monotonic() + 30
    while not _waiting_for_a_lock():  # a barrier on the database's own state, not a guess
        assert time.monotonic() < deadline, "the second command never waited for the lock"
        time.sleep(0.01)
    release.set()
    holder.join(30)
    waiter.join(30)
    assert "error" not in outcome, outcome.get("error")
    return outcome["result"]


def client_of(demo, username: str) -> Client:
    client = Client()
    client.force_login(demo.user(username))
    return client


def test_assign_with_the_same_version_after_a_racing_assign_is_409_with_the_new_rider(demo_tx):
    """The loser of two assigns sent with one version gets 409 naming the winner's rider."""
    first, second = on_duty(demo_tx.rider("gangnam", 1)), on_duty(demo_tx.rider("gangnam", 2))
    delivery = make_order(demo_tx).delivery
    client = client_of(demo_tx, "dispatch-gangnam")

    response = race(
        lambda: services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=first.pk),
        lambda: post_json(
            client,
            f"{API}/deliveries/{delivery.pk}/assign",
            {"rider": second.pk, "version": delivery.version},
        ),
    )

    assert response.status_code == 409, response.content
    assert response.json()["current"]["rider"] == first.pk
    assert response.json()["current"]["rider_name"] == first.name
    assert Rider.objects.get(pk=second.pk).load == 0


def test_cancel_racing_an_assign_frees_the_rider_and_tells_them(demo_tx):
    """A cancel that waited for an assign sees the new rider: their load drops and they get the revocation."""
    rider = on_duty(demo_tx.rider("gangnam", 1))
    order = make_order(demo_tx)
    client = client_of(demo_tx, "callcenter")

    response = race(
        lambda: services.assign_delivery(actor=None, delivery_id=order.delivery.pk, rider_id=rider.pk),
        lambda: post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "Customer called"}),
    )

    assert response.status_code == 200, response.content
    assert response.json()["delivery"]["status"] == "cancelled"
    assert Rider.objects.get(pk=rider.pk).load == 0
    revoked = Event.objects.filter(stream=f"user:{rider.user_id}", name="assignment.revoked").get()
    assert revoked.data["reason"] == "cancelled"
    assert revoked.data["delivery"]["rider"] == rider.pk


def test_pickup_racing_a_reassign_reports_the_new_rider(demo_tx):
    """A dispatcher's pick-up that waited for a reassign answers with the rider who has it now."""
    first, second = on_duty(demo_tx.rider("gangnam", 1)), on_duty(demo_tx.rider("gangnam", 2))
    delivery = make_order(demo_tx).delivery
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=first.pk)
    client = client_of(demo_tx, "dispatch-gangnam")

    response = race(
        lambda: services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=second.pk),
        lambda: post_json(client, f"{API}/deliveries/{delivery.pk}/pickup"),
    )

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["rider"]) == ("picked_up", second.pk)
    assert response.json()["rider_name"] == second.name


def test_pickup_by_the_replaced_rider_racing_a_reassign_is_refused(demo_tx):
    """The rider who lost the delivery while their pick-up waited is refused, not answered with a 500."""
    first, second = on_duty(demo_tx.rider("gangnam", 1)), on_duty(demo_tx.rider("gangnam", 2))
    delivery = make_order(demo_tx).delivery
    services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=first.pk)
    client = client_of(demo_tx, first.user.username)

    response = race(
        lambda: services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=second.pk),
        lambda: post_json(client, f"{API}/deliveries/{delivery.pk}/pickup"),
    )

    assert response.status_code in (403, 404), response.content
    assert Delivery.objects.get(pk=delivery.pk).status == "assigned"


def test_concurrent_assigns_with_one_version_give_one_200_and_409s(demo_tx):
    """Sixteen dispatchers racing to assign one delivery (the connection pool holds 20): one wins, the rest get 409."""
    riders = [on_duty(demo_tx.rider("gangnam", n)) for n in range(1, 17)]
    delivery = make_order(demo_tx).delivery
    user = demo_tx.user("dispatch-gangnam")
    barrier = threading.Barrier(len(riders))
    statuses: list = [None] * len(riders)
    errors: list = []

    def send(index: int) -> None:
        try:
            client = Client()
            client.force_login(user)
            barrier.wait(timeout=20)
            body = {"rider": riders[index].pk, "version": delivery.version}
            statuses[index] = post_json(client, f"{API}/deliveries/{delivery.pk}/assign", body).status_code
        except Exception as exc:  # surfaced below, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(riders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(statuses) == [200] + [409] * (len(riders) - 1)
    assert sum(Rider.objects.filter(pk__in=[r.pk for r in riders]).values_list("load", flat=True)) == 1

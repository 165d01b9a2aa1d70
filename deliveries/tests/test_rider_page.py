"""The rider page `/rider/`, its state `GET /api/v1/rider/today`, its service worker and manifest."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import StaffProfile
from deliveries import services
from riders.models import PositionSample
from riders.services import set_rider_duty

API = "/api/v1"


def assign_new(demo, rider, *, note: str = ""):
    order = services.create_order(
        actor=None,
        shop_id=demo.shop(rider.center.code).pk,
        customer_name="Park Jiwoo",
        customer_phone="010-5555-6666",
        address="Gangnam-daero 10, Seoul",
        items=[{"name": "Tteokbokki", "qty": 2}],
        note=note,
    )
    return services.assign_delivery(actor=None, delivery_id=order.delivery.pk, rider_id=rider.pk)


def page_today(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="rider-today" type="application/json">') + len(
        '<script id="rider-today" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def test_rider_page_shows_own_active_deliveries_history_and_counts(demo, client):
    """The page carries the rider's active deliveries with their orders, today's finished ones and counts."""
    rider = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 1).pk, on_duty=True)
    active = assign_new(demo, rider, note="Ring twice")
    done = assign_new(demo, rider)
    services.pick_up_delivery(actor=None, delivery_id=done.pk)
    services.deliver_delivery(actor=None, delivery_id=done.pk)
    gone = assign_new(demo, rider)
    services.cancel_order(actor=None, order_id=gone.order_id, reason="Customer called")
    assign_new(demo, set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 2).pk, on_duty=True))  # not theirs
    client.force_login(rider.user)

    response = client.get("/rider/")

    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("<h1") == 1
    assert 'id="rider-chat"' in html
    assert 'rel="manifest"' in html
    today = page_today(response)
    assert [a["delivery"]["id"] for a in today["active"]] == [active.pk]
    assert today["active"][0]["order"]["note"] == "Ring twice"
    assert {d["id"]: d["status"] for d in today["history"]} == {done.pk: "delivered", gone.pk: "cancelled"}
    assert today["counts"] == {"delivered": 1, "cancelled": 1, "distance_m": 0}
    assert today["stream"]["name"] == f"user:{rider.user_id}"
    assert today["stream"]["head"] >= 3
    assert str(active.shop_id) in today["shops"]


def test_rider_today_counts_distance_of_todays_samples(demo, client):
    """Distance is the sum of great-circle steps between today's position samples."""
    rider = demo.rider("gangnam", 1)
    now = timezone.now()
    for i, lat in enumerate([37.5000, 37.5010, 37.5020]):  # two steps of ~111 m
        PositionSample.objects.create(rider=rider, lat=lat, lng=127.0, recorded_at=now - timedelta(seconds=30 - i))
    client.force_login(rider.user)
    body = client.get(f"{API}/rider/today").json()
    assert 220 <= body["counts"]["distance_m"] <= 225


def test_rider_today_api_matches_page_and_needs_few_queries(demo, client, django_assert_max_num_queries):
    """`GET /rider/today` answers the page's state in a bounded number of queries."""
    rider = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 1).pk, on_duty=True)
    for _ in range(3):
        assign_new(demo, rider)
    client.force_login(rider.user)
    with django_assert_max_num_queries(10):
        body = client.get(f"{API}/rider/today").json()
    assert len(body["active"]) == 3
    page = page_today(client.get("/rider/"))
    assert [a["delivery"]["id"] for a in body["active"]] == [a["delivery"]["id"] for a in page["active"]]
    assert (body["stream"], body["counts"]) == (page["stream"], page["counts"])
    assert body["shops"].keys() == page["shops"].keys()


def test_rider_page_needs_a_bounded_number_of_queries(demo, client, django_assert_max_num_queries):
    """The page's queries do not grow with the rider's deliveries."""
    rider = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 1).pk, on_duty=True)
    for _ in range(5):
        assign_new(demo, rider)
    client.force_login(rider.user)
    with django_assert_max_num_queries(12):
        assert client.get("/rider/").status_code == 200


@pytest.mark.parametrize("username", ["dispatch-gangnam", "hq", "callcenter"])
def test_rider_page_and_today_refuse_staff(demo, client, username):
    """Staff get 403 on the rider page and 404 on the rider's state."""
    client.force_login(demo.user(username))
    assert client.get("/rider/").status_code == 403
    assert client.get(f"{API}/rider/today").status_code == 404


def test_rider_page_needs_login(demo, client):
    """Anonymous visitors are sent to the login page."""
    response = client.get("/rider/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("path", ["/dispatch/gangnam/", "/dispatch/", "/orders/", "/dispatch/gangnam/rows/"])
def test_rider_cannot_open_dispatcher_pages(demo, client, path):
    """A rider is refused every staff page."""
    client.force_login(demo.rider("gangnam", 1).user)
    assert client.get(path).status_code == 403


def test_rider_cannot_read_or_command_another_riders_delivery(demo, client):
    """Another rider's delivery answers like a missing one, for reads and commands."""
    other = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 2).pk, on_duty=True)
    delivery = assign_new(demo, other)
    client.force_login(demo.rider("gangnam", 1).user)
    for response in (
        client.get(f"{API}/deliveries/{delivery.pk}"),
        client.post(f"{API}/deliveries/{delivery.pk}/pickup", content_type="application/json"),
        client.get(f"{API}/deliveries/999999"),
    ):
        assert (response.status_code, response.json()) == (404, {"detail": "No such delivery."})


def test_rider_service_worker_and_manifest_are_served_for_the_rider_scope(demo, client):
    """The service worker lists the page and its static files; the manifest starts at /rider/."""
    sw = client.get("/rider/sw.js")
    assert sw.status_code == 200
    assert sw["Content-Type"].startswith("text/javascript")
    assert '"/rider/"' in sw.content.decode() and "rider/rider.js" in sw.content.decode()
    manifest = json.loads(client.get("/rider/manifest.webmanifest").content)
    assert (manifest["start_url"], manifest["scope"], manifest["display"]) == ("/rider/", "/rider/", "standalone")


def test_rider_login_lands_on_the_rider_page(demo, client):
    """A rider logging in lands on /rider/, which opens."""
    response = client.post("/accounts/login/", {"username": "rider-gangnam-01", "password": "demo"}, follow=True)
    assert response.redirect_chain[-1][0] == "/rider/"
    assert response.status_code == 200


def test_rider_page_of_a_rider_user_without_a_rider_is_403(demo, client, django_user_model):
    """A user with the rider role but no rider record is refused, not a 500."""
    user = django_user_model.objects.create_user("rider-to-be", password="x")
    StaffProfile.objects.create(user=user, role=StaffProfile.Role.RIDER)
    client.force_login(user)
    assert client.get("/rider/").status_code == 403
    assert client.get(f"{API}/rider/today").status_code == 404

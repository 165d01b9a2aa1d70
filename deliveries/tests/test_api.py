"""HTTP API v1 for accounts, centers, shops, orders and deliveries (protocol.md §2, §4).

Every refusal sits beside its success and checks that nothing changed: the entity's status,
version and rider, the order count, the timeline and the event log.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.utils import timezone

from core.models import IdempotencyRecord
from deliveries import services
from deliveries.models import Delivery, Order, TimelineEntry
from realtime.models import Event
from riders.models import Rider
from riders.services import set_rider_duty

API = "/api/v1"


# --- helpers -------------------------------------------------------------------------------


def post_json(client, url: str, body=None, **headers):
    """POST `body` as JSON (an empty body when None) with extra request headers."""
    if body is None:
        return client.generic("POST", url, b"", headers=headers)
    return client.post(url, body, content_type="application/json", headers=headers)


def order_body(shop, /, **overrides) -> dict:
    body = {
        "shop": shop.pk,
        "customer_name": "Kim Minji",
        "customer_phone": "010-1234-5678",
        "address": "Teheran-ro 1, Seoul",
        "lat": 37.5,
        "lng": 127.03,
        "items": [{"name": "Fried chicken", "qty": 2}],
        "note": "Ring twice",
    }
    return body | overrides


def make_order(demo, center: str = "gangnam", **overrides) -> Order:
    """An order (and its waiting delivery) taken by the system through the real service."""
    fields = {
        "shop_id": demo.shop(center).pk,
        "customer_name": "Lee Jisoo",
        "customer_phone": "010-2222-3333",
        "address": "Somewhere 5, Seoul",
        "items": [{"name": "Bibimbap", "qty": 1}],
    } | overrides
    return services.create_order(actor=None, **fields)


def on_duty(rider: Rider) -> Rider:
    return set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)


def assigned_order(demo, rider_number: int = 1, center: str = "gangnam") -> tuple[Order, Rider]:
    """An order whose delivery is assigned (by the system) to an on-duty rider of the center."""
    rider = on_duty(demo.rider(center, rider_number))
    order = make_order(demo, center)
    services.assign_delivery(actor=None, delivery_id=order.delivery.pk, rider_id=rider.pk)
    return order, rider


def state(delivery_id: int) -> tuple:
    """Everything a refused command must leave untouched."""
    delivery = Delivery.objects.select_related("order").get(pk=delivery_id)
    return (
        delivery.status,
        delivery.version,
        delivery.rider_id,
        delivery.order.status,
        delivery.order.version,
        TimelineEntry.objects.filter(delivery=delivery).count(),
        Event.objects.count(),
        tuple(Rider.objects.order_by("pk").values_list("pk", "load", "version")),
    )


def counts() -> tuple[int, int, int]:
    return Order.objects.count(), Delivery.objects.count(), Event.objects.count()


def login(client, demo, username: str):
    client.force_login(demo.user(username))
    return client


# --- GET /me --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "role", "centers"),
    [
        ("admin", "hq", ["gangnam", "mapo", "songpa"]),
        ("hq", "hq", ["gangnam", "mapo", "songpa"]),
        ("callcenter", "callcenter", ["gangnam", "mapo", "songpa"]),
        ("dispatch-gangnam", "dispatcher", ["gangnam"]),
        ("dispatch-mapo", "dispatcher", ["mapo"]),
        ("rider-gangnam-01", "rider", ["gangnam"]),
    ],
)
def test_me_reports_role_and_centers(demo, client, username, role, centers):
    """GET /me answers the caller's id, username, role and centers."""
    user = demo.user(username)
    client.force_login(user)
    response = client.get(f"{API}/me")
    assert response.status_code == 200
    assert response.json() == {"id": user.pk, "username": username, "role": role, "centers": centers}


def test_me_anonymous_is_401_json(demo, client):
    """GET /me without a session or token answers 401 with a JSON detail."""
    response = client.get(f"{API}/me")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert set(response.json()) == {"detail"}


def test_me_user_without_profile_has_no_role(demo, client):
    """An account with no staff profile has no role and no centers."""
    user = get_user_model().objects.create_user("nobody", password="x")
    client.force_login(user)
    assert client.get(f"{API}/me").json() == {"id": user.pk, "username": "nobody", "role": None, "centers": []}


def test_me_deactivated_user_is_401(demo, client):
    """A session of a user deactivated since login no longer authenticates."""
    user = demo.user("dispatch-gangnam")
    client.force_login(user)
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert client.get(f"{API}/me").status_code == 401


# --- GET /centers, /shops -------------------------------------------------------------------


def test_centers_hq_sees_every_center(demo, client):
    """HQ gets every center with its name and coordinates, by code."""
    login(client, demo, "hq")
    body = client.get(f"{API}/centers").json()
    assert [c["code"] for c in body] == ["gangnam", "mapo", "songpa"]
    assert body[0] == {"code": "gangnam", "name": "Gangnam", "lat": 37.4979, "lng": 127.0276}


def test_centers_dispatcher_sees_only_own_center(demo, client):
    """A dispatcher gets only the centers they work for."""
    login(client, demo, "dispatch-mapo")
    assert [c["code"] for c in client.get(f"{API}/centers").json()] == ["mapo"]


def test_centers_anonymous_is_401(demo, client):
    """GET /centers needs authentication."""
    assert client.get(f"{API}/centers").status_code == 401


def test_shops_dispatcher_lists_own_center_shops(demo, client):
    """A dispatcher lists the active shops of their own center, by name."""
    login(client, demo, "dispatch-gangnam")
    response = client.get(f"{API}/shops", {"center": "gangnam"})
    assert response.status_code == 200
    shops = response.json()
    assert len(shops) == 6
    assert {s["center"] for s in shops} == {"gangnam"}
    assert [s["name"] for s in shops] == sorted(s["name"] for s in shops)
    assert set(shops[0]) == {"id", "center", "name", "address", "phone", "lat", "lng", "prep_minutes"}


def test_shops_hide_inactive_shops(demo, client):
    """An inactive shop is not listed."""
    shop = demo.shop("gangnam")
    shop.is_active = False
    shop.save(update_fields=["is_active"])
    login(client, demo, "dispatch-gangnam")
    ids = [s["id"] for s in client.get(f"{API}/shops", {"center": "gangnam"}).json()]
    assert shop.pk not in ids
    assert len(ids) == 5


def test_shops_other_center_dispatcher_is_404(demo, client):
    """A dispatcher asking for another center's shops gets 404, as if it did not exist."""
    login(client, demo, "dispatch-mapo")
    response = client.get(f"{API}/shops", {"center": "gangnam"})
    assert response.status_code == 404
    assert "detail" in response.json()


def test_shops_callcenter_sees_every_center(demo, client):
    """Call-center staff list the shops of every center they serve."""
    login(client, demo, "callcenter")
    for code in ("gangnam", "mapo", "songpa"):
        response = client.get(f"{API}/shops", {"center": code})
        assert response.status_code == 200
        assert {s["center"] for s in response.json()} == {code}


def test_shops_rider_is_404(demo, client):
    """A rider cannot list shops, even of their own center."""
    login(client, demo, "rider-gangnam-01")
    assert client.get(f"{API}/shops", {"center": "gangnam"}).status_code == 404


def test_shops_missing_center_is_422(demo, client):
    """GET /shops without `center` is invalid input."""
    login(client, demo, "hq")
    assert client.get(f"{API}/shops").status_code == 422


# --- GET /deliveries ------------------------------------------------------------------------


def test_deliveries_list_newest_first(demo, client):
    """Today's deliveries of the center come newest first, in the delivery entity shape."""
    first, second, third = (make_order(demo) for _ in range(3))
    make_order(demo, "mapo")
    login(client, demo, "dispatch-gangnam")
    response = client.get(f"{API}/deliveries", {"center": "gangnam"})
    assert response.status_code == 200
    body = response.json()
    assert [d["id"] for d in body] == [third.delivery.pk, second.delivery.pk, first.delivery.pk]
    assert body[0]["order"] == third.pk
    assert body[0]["center"] == "gangnam"
    assert body[0]["status"] == "waiting"
    assert body[0]["rider"] is None
    assert body[0]["version"] == 1
    for field in ("shop", "address", "created_at", "assigned_at", "picked_up_at", "delivered_at", "cancelled_at"):
        assert field in body[0]


def test_deliveries_list_filters_by_status(demo, client):
    """`status=` keeps only deliveries in that status."""
    waiting = make_order(demo)
    assigned, _ = assigned_order(demo)
    login(client, demo, "dispatch-gangnam")
    by_status = {
        status: [d["id"] for d in client.get(f"{API}/deliveries", {"center": "gangnam", "status": status}).json()]
        for status in ("waiting", "assigned", "delivered")
    }
    assert by_status == {"waiting": [waiting.delivery.pk], "assigned": [assigned.delivery.pk], "delivered": []}


def test_deliveries_list_limit_and_offset(demo, client):
    """`limit` and `offset` page through the newest-first list."""
    ids = [make_order(demo).delivery.pk for _ in range(5)][::-1]
    login(client, demo, "dispatch-gangnam")
    page = client.get(f"{API}/deliveries", {"center": "gangnam", "limit": 2, "offset": 1}).json()
    assert [d["id"] for d in page] == ids[1:3]
    tail = client.get(f"{API}/deliveries", {"center": "gangnam", "limit": 2, "offset": 4}).json()
    assert [d["id"] for d in tail] == ids[4:]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 2001}, {"offset": -1}, {"limit": "x"}])
def test_deliveries_list_bad_paging_is_422(demo, client, params):
    """A limit outside 1..2000 or a negative offset is invalid input, not a 500."""
    login(client, demo, "dispatch-gangnam")
    assert client.get(f"{API}/deliveries", {"center": "gangnam", **params}).status_code == 422


def test_deliveries_list_includes_open_from_before_today_but_not_finished(demo, client):
    """Yesterday's open deliveries stay on the list; yesterday's finished ones drop off."""
    open_old = make_order(demo)
    done_old = make_order(demo)
    services.cancel_order(actor=None, order_id=done_old.pk, reason="Test")
    Delivery.objects.filter(pk__in=[open_old.delivery.pk, done_old.delivery.pk]).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    login(client, demo, "dispatch-gangnam")
    ids = [d["id"] for d in client.get(f"{API}/deliveries", {"center": "gangnam"}).json()]
    assert open_old.delivery.pk in ids
    assert done_old.delivery.pk not in ids


def test_deliveries_list_foreign_center_is_404(demo, client):
    """A dispatcher listing another center's deliveries gets 404."""
    make_order(demo)
    login(client, demo, "dispatch-mapo")
    assert client.get(f"{API}/deliveries", {"center": "gangnam"}).status_code == 404


def test_deliveries_list_callcenter_and_hq_see_any_center(demo, client):
    """Call-center staff and HQ list the deliveries of any center."""
    order = make_order(demo, "songpa")
    for username in ("callcenter", "hq"):
        login(client, demo, username)
        body = client.get(f"{API}/deliveries", {"center": "songpa"}).json()
        assert [d["id"] for d in body] == [order.delivery.pk]


def test_deliveries_list_rider_is_404(demo, client):
    """A rider cannot list the center's deliveries."""
    assigned_order(demo)
    login(client, demo, "rider-gangnam-01")
    assert client.get(f"{API}/deliveries", {"center": "gangnam"}).status_code == 404


def test_deliveries_list_bad_status_is_422(demo, client):
    """An unknown status is invalid input (422 with a detail list)."""
    login(client, demo, "dispatch-gangnam")
    response = client.get(f"{API}/deliveries", {"center": "gangnam", "status": "lost"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "status"]


# --- GET /deliveries/{id}, /orders/{id} -----------------------------------------------------


def test_delivery_detail_has_timeline(demo, client):
    """The delivery detail carries its order and its timeline: who, through what, from → to."""
    rider = on_duty(demo.rider("gangnam", 1))
    order = services.create_order(
        actor=demo.user("callcenter"),
        shop_id=demo.shop().pk,
        customer_name="Park",
        customer_phone="010-5555-6666",
        address="Gangnam-daero 1",
        items=[{"name": "Pizza", "qty": 1}],
    )
    services.assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=order.delivery.pk, rider_id=rider.pk)
    login(client, demo, "dispatch-gangnam")
    response = client.get(f"{API}/deliveries/{order.delivery.pk}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == order.delivery.pk
    assert body["status"] == "assigned"
    assert body["rider"] == rider.pk
    assert body["version"] == 2
    assert body["order_detail"]["id"] == order.pk
    assert body["order_detail"]["customer_name"] == "Park"
    timeline = [(e["by"], e["source"], e["action"], e["from_status"], e["to_status"]) for e in body["timeline"]]
    assert timeline == [
        ("Call Center", "callcenter", "created", "", "waiting"),
        ("Dispatch Gangnam", "dispatcher", "assigned", "waiting", "assigned"),
    ]
    assert body["timeline"][1]["detail"]["rider"] == rider.pk


@pytest.mark.parametrize("username", ["dispatch-gangnam", "hq", "admin", "callcenter", "rider-gangnam-01"])
def test_delivery_detail_visible_to_center_staff_and_its_rider(demo, client, username):
    """Its center's dispatcher, HQ, call-center staff and its assigned rider see a delivery."""
    order, _ = assigned_order(demo, rider_number=1)
    login(client, demo, username)
    response = client.get(f"{API}/deliveries/{order.delivery.pk}")
    assert response.status_code == 200
    assert response.json()["id"] == order.delivery.pk


@pytest.mark.parametrize("username", ["dispatch-mapo", "rider-gangnam-02", "rider-mapo-01"])
def test_delivery_detail_hidden_from_others_is_404(demo, client, username):
    """Another center's dispatcher and any other rider get 404 for a delivery."""
    order, _ = assigned_order(demo, rider_number=1)
    login(client, demo, username)
    response = client.get(f"{API}/deliveries/{order.delivery.pk}")
    assert response.status_code == 404
    assert "detail" in response.json()


def test_delivery_detail_waiting_delivery_hidden_from_rider(demo, client):
    """A rider does not see a waiting (unassigned) delivery of their center."""
    order = make_order(demo)
    login(client, demo, "rider-gangnam-01")
    assert client.get(f"{API}/deliveries/{order.delivery.pk}").status_code == 404


def test_delivery_detail_unknown_id_is_404(demo, client):
    """An unknown or out-of-range delivery id is 404, never a 500."""
    login(client, demo, "hq")
    assert client.get(f"{API}/deliveries/999999999").status_code == 404
    assert client.get(f"{API}/deliveries/{10**20}").status_code == 404


def test_order_detail_nests_delivery(demo, client):
    """GET /orders/{id} answers the order with its delivery nested."""
    order = make_order(demo)
    login(client, demo, "callcenter")
    response = client.get(f"{API}/orders/{order.pk}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == order.pk
    assert body["status"] == "placed"
    assert body["center"] == "gangnam"
    assert body["items"] == [{"name": "Bibimbap", "qty": 1}]
    assert body["delivery"]["id"] == order.delivery.pk
    assert body["delivery"]["status"] == "waiting"
    assert body["delivery"]["order"] == order.pk


def test_order_detail_foreign_dispatcher_is_404(demo, client):
    """Another center's dispatcher gets 404 for an order; so does an unknown id."""
    order = make_order(demo)
    login(client, demo, "dispatch-mapo")
    assert client.get(f"{API}/orders/{order.pk}").status_code == 404
    assert client.get(f"{API}/orders/999999999").status_code == 404


# --- POST /orders ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "source", "by"),
    [("callcenter", "callcenter", "Call Center"), ("dispatch-gangnam", "dispatcher", "Dispatch Gangnam")],
)
def test_create_order_answers_201_with_waiting_delivery(demo, client, username, source, by):
    """POST /orders creates the order and its waiting delivery in the shop's center (201)."""
    before = counts()
    login(client, demo, username)
    shop = demo.shop("gangnam", 2)
    response = post_json(client, f"{API}/orders", order_body(shop))
    assert response.status_code == 201
    body = response.json()
    assert {"id", "center", "status", "version", "delivery"} <= set(body)
    assert body["center"] == "gangnam"
    assert body["status"] == "placed"
    assert body["version"] == 1
    assert body["shop"] == shop.pk
    assert body["customer_name"] == "Kim Minji"
    assert body["items"] == [{"name": "Fried chicken", "qty": 2}]
    assert body["delivery"]["status"] == "waiting"
    assert body["delivery"]["center"] == "gangnam"
    assert body["delivery"]["order"] == body["id"]
    assert body["delivery"]["rider"] is None
    order = Order.objects.get(pk=body["id"])
    assert order.created_by == demo.user(username)
    entry = order.delivery.timeline.get()
    assert (entry.source, entry.actor_label, entry.action) == (source, by, "created")
    assert counts() == (before[0] + 1, before[1] + 1, before[2] + 2)  # order.created + delivery.created


def test_create_order_other_center_dispatcher_is_403(demo, client):
    """A dispatcher cannot take an order for a shop of another center; nothing is created."""
    before = counts()
    login(client, demo, "dispatch-mapo")
    response = post_json(client, f"{API}/orders", order_body(demo.shop("gangnam")))
    assert response.status_code == 403
    assert "detail" in response.json()
    assert counts() == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"customer_name": "   "}, "customer_name"),
        ({"customer_name": ""}, "customer_name"),
        ({"customer_phone": "call me"}, "customer_phone"),
        ({"customer_phone": "12"}, "customer_phone"),
        ({"address": " "}, "address"),
        ({"items": []}, "items"),
        ({"items": [{"name": "Chicken"}]}, "items"),
        ({"items": [{"name": "Chicken", "qty": 0}]}, "items"),
        ({"items": [{"name": "Chicken", "qty": 1, "price": 3}]}, "items"),
        ({"shop": 999999999}, "shop"),
        ({"lat": 37.5, "lng": None}, "lat"),
        ({"lat": 91.0, "lng": 127.0}, "lat"),
    ],
)
def test_create_order_invalid_field_is_422(demo, client, overrides, field):
    """Invalid order input answers 422 naming the field; nothing is created."""
    before = counts()
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), **overrides))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert {"loc": ["body", field], "type": "value_error"}.items() <= detail[0].items()
    assert [e["loc"] for e in detail] == [["body", field]]
    assert detail[0]["msg"]
    assert counts() == before


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"lat": "37.5", "lng": 127.0}, "lat", "Must be a number."),
        ({"lat": 37.5, "lng": True}, "lng", "Must be a number."),
        ({"customer_name": 12}, "customer_name", "Must be text."),
        ({"items": [{"name": "Chicken", "qty": True}]}, "items", 'Each item needs a "name" and a "qty" from 1 to 99.'),
        ({"items": [{"name": "Chicken", "qty": "2"}]}, "items", 'Each item needs a "name" and a "qty" from 1 to 99.'),
        ({"shop": True}, "shop", None),
    ],
)
def test_create_order_types_are_strict(demo, client, overrides, field, message):
    """A bool is not a number and "37.5" is not a coordinate: 422 on that field; nothing is created."""
    before = counts()
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), **overrides))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field]
    if message is not None:
        assert error["msg"] == message
    assert counts() == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"customer_phone": "call me"}, "customer_phone"),
        ({"customer_name": " "}, "customer_name"),
        ({"lat": 37.5, "lng": None}, "lat"),
        ({"items": []}, "items"),
        ({"note": "N" * 501}, "note"),
        ({"promised_at": "2099-01-01T00:00:00+09:00"}, "promised_at"),
    ],
)
def test_create_order_api_and_service_refuse_with_the_same_message(demo, client, overrides, field):
    """The API's 422 and the service's ValidationError come from one schema: same field, same words."""
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), **overrides))
    body = order_body(demo.shop(), **overrides)
    shop_id = body.pop("shop")
    with pytest.raises(ValidationError) as refused:
        services.create_order(actor=None, shop_id=shop_id, **body)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"loc": ["body", field], "msg": " ".join(refused.value.message_dict[field]), "type": "value_error"}
    ]


def test_create_order_reports_every_invalid_field(demo, client):
    """All invalid fields are reported together."""
    login(client, demo, "callcenter")
    response = post_json(
        client, f"{API}/orders", order_body(demo.shop(), customer_name="", customer_phone="x", items=[])
    )
    assert response.status_code == 422
    assert {e["loc"][-1] for e in response.json()["detail"]} == {"customer_name", "customer_phone", "items"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"shop": "abc", "customer_name": "Kim", "customer_phone": "010-1234-5678", "address": "x", "items": []},
        {"shop": 1, "customer_name": "K" * 101, "customer_phone": "010-1234-5678", "address": "x", "items": []},
        {"shop": 1, "customer_name": "Kim", "customer_phone": "010-1234-5678", "address": "x", "items": "many"},
        {"shop": 1, "customer_name": "Kim", "customer_phone": "010-1234-5678", "address": "x", "items": ["x"]},
        [1, 2],
    ],
)
def test_create_order_schema_violation_is_422(demo, client, body):
    """Missing or ill-typed fields are caught by request validation: 422 with a detail list."""
    before = counts()
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders", body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert all({"loc", "msg", "type"} <= set(e) and e["loc"][0] == "body" for e in detail)
    assert counts() == before


@pytest.mark.parametrize("raw", ["{not json", "", '{"shop": 1,'])
def test_create_order_malformed_json_is_a_client_error(demo, client, raw):
    """A body that is not JSON answers a 4xx JSON detail (ninja: 400), never a 500."""
    before = counts()
    login(client, demo, "callcenter")
    response = client.post(f"{API}/orders", raw, content_type="application/json")
    assert response.status_code in (400, 422)
    assert "detail" in response.json()
    assert counts() == before


def test_create_order_promised_in_the_past_is_422(demo, client):
    """A promised time in the past is refused with a field error."""
    before = counts()
    login(client, demo, "callcenter")
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), promised_at=past))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "promised_at"]
    assert counts() == before


def test_create_order_with_future_promised_time(demo, client):
    """An explicit future promised time (with offset) is kept."""
    login(client, demo, "callcenter")
    promised = timezone.now().replace(microsecond=0) + timedelta(hours=2)
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), promised_at=promised.isoformat()))
    assert response.status_code == 201
    assert Order.objects.get(pk=response.json()["id"]).promised_at == promised


@pytest.mark.parametrize(
    "promised_at",
    [
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-14:00",  # beyond year 9999 once converted to UTC
        "0001-01-01T00:00:00+14:00",  # before year 1 once converted to UTC
        "2099-01-01T00:00:00+09:00",
    ],
)
def test_create_order_promised_too_far_ahead_is_422(demo, promised_at):
    """A promised time past the longest pre-order, or one UTC cannot hold, is a field error; nothing is created."""
    client = Client(raise_request_exception=False)
    client.force_login(demo.user("callcenter"))
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), promised_at=promised_at))
    assert response.status_code == 422, response.content
    assert response.json()["detail"][0]["loc"] == ["body", "promised_at"]
    assert counts() == before


def test_create_order_promised_at_the_longest_pre_order_is_kept(demo, client, settings):
    """A promised time just inside ORDER_PROMISE_MAX_DAYS is accepted."""
    login(client, demo, "callcenter")
    promised = timezone.now().replace(microsecond=0) + timedelta(days=settings.ORDER_PROMISE_MAX_DAYS, minutes=-1)
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), promised_at=promised.isoformat()))
    assert response.status_code == 201
    assert Order.objects.get(pk=response.json()["id"]).promised_at == promised


def test_create_order_promised_time_without_offset_is_not_500(demo):
    """A promised time without a UTC offset is answered 201 or 422, never 500."""
    client = Client(raise_request_exception=False)
    client.force_login(demo.user("callcenter"))
    before = counts()
    naive = (timezone.localtime() + timedelta(hours=2)).replace(tzinfo=None).isoformat()
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), promised_at=naive))
    assert response.status_code in (201, 422)
    if response.status_code == 422:
        assert counts() == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"customer_name": "Kim\u0000"}, "customer_name"),
        ({"address": "Teheran-ro\u0000 1"}, "address"),
        ({"note": "\u0000"}, "note"),
        ({"items": [{"name": "Chicken\u0000", "qty": 1}]}, "items"),
    ],
)
def test_create_order_nul_character_is_422(demo, overrides, field):
    """A NUL character in a text field is a field error (422), never a 500."""
    client = Client(raise_request_exception=False)
    client.force_login(demo.user("callcenter"))
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), **overrides))
    assert counts() == before
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_create_order_oversized_body_is_413_json(demo, settings):
    """A body over the upload limit is refused with 413 and a JSON detail; nothing is created."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    client = Client(raise_request_exception=False)
    client.force_login(demo.user("callcenter"))
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), note="x" * 20_000))
    assert counts() == before
    assert response.status_code == 413
    assert "detail" in response.json()


def test_create_order_rider_is_403(demo, client):
    """A rider cannot take orders; nothing is created."""
    before = counts()
    login(client, demo, "rider-gangnam-01")
    response = post_json(client, f"{API}/orders", order_body(demo.shop()))
    assert response.status_code == 403
    assert counts() == before


def test_create_order_anonymous_is_401(demo, client):
    """An anonymous POST /orders is 401; nothing is created."""
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop()))
    assert response.status_code == 401
    assert counts() == before


def test_create_order_session_without_csrf_is_403(demo):
    """A session POST without the CSRF token is refused with 403; nothing is created."""
    before = counts()
    client = Client(enforce_csrf_checks=True)
    client.force_login(demo.user("callcenter"))
    response = post_json(client, f"{API}/orders", order_body(demo.shop()))
    assert response.status_code == 403
    assert "detail" in response.json()
    assert counts() == before


def test_create_order_session_with_csrf_is_201(demo):
    """A session POST carrying the CSRF cookie and header succeeds."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(demo.user("callcenter"))
    token = _get_new_csrf_string()
    client.cookies["csrftoken"] = token
    response = post_json(client, f"{API}/orders", order_body(demo.shop()), **{"X-CSRFToken": token})
    assert response.status_code == 201


# --- POST /orders/{id}/cancel ---------------------------------------------------------------


def test_cancel_order_cancels_order_and_delivery(demo, client):
    """Cancelling answers the cancelled order with its cancelled delivery and frees the rider."""
    order, rider = assigned_order(demo)
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "Customer changed mind"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["cancel_reason"] == "Customer changed mind"
    assert body["version"] == 2
    assert body["delivery"]["status"] == "cancelled"
    assert body["delivery"]["cancelled_at"] is not None
    rider.refresh_from_db()
    assert rider.load == 0
    entry = TimelineEntry.objects.filter(delivery=order.delivery).last()
    assert (entry.action, entry.actor_label, entry.detail) == (
        "cancelled",
        "Call Center",
        {"reason": "Customer changed mind"},
    )


@pytest.mark.parametrize("body", [{"reason": ""}, {"reason": "   "}, {}, {"reason": "x" * 201}])
def test_cancel_order_without_reason_is_422(demo, client, body):
    """A cancel needs a reason (1–200 characters); without one nothing changes."""
    order = make_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert state(order.delivery.pk) == before


def test_cancel_order_nul_in_reason_is_422(demo):
    """A NUL character in the cancel reason is a field error, never a 500; nothing changes."""
    order = make_order(demo)
    before = state(order.delivery.pk)
    client = Client(raise_request_exception=False)
    client.force_login(demo.user("callcenter"))
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "no\u0000"})
    assert state(order.delivery.pk) == before
    assert response.status_code == 422


def test_cancel_order_already_cancelled_is_409(demo, client):
    """Cancelling a cancelled order is 409 invalid_transition with the current order."""
    order = make_order(demo)
    services.cancel_order(actor=None, order_id=order.pk, reason="First")
    before = state(order.delivery.pk)
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "Again"})
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "invalid_transition"
    assert body["detail"]
    assert body["current"]["id"] == order.pk
    assert body["current"]["status"] == "cancelled"
    assert body["current"]["cancel_reason"] == "First"
    assert body["current"]["delivery"]["status"] == "cancelled"
    assert state(order.delivery.pk) == before


def test_cancel_order_delivered_is_409(demo, client):
    """A delivered order cannot be cancelled."""
    order, rider = assigned_order(demo)
    services.pick_up_delivery(actor=None, delivery_id=order.delivery.pk)
    services.deliver_delivery(actor=None, delivery_id=order.delivery.pk)
    before = state(order.delivery.pk)
    login(client, demo, "hq")
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "Late"})
    assert response.status_code == 409
    assert response.json()["current"]["status"] == "delivered"
    assert state(order.delivery.pk) == before


def test_cancel_order_stale_version_is_409(demo, client):
    """A cancel based on an old order version is refused with the current order and who changed it."""
    order = make_order(demo)
    services.cancel_order(actor=demo.user("dispatch-gangnam"), order_id=order.pk, reason="Shop closed")
    before = state(order.delivery.pk)
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "Customer", "version": 1})
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "stale_version"
    assert body["current"]["version"] == 2
    assert body["changed_by"]["by"] == "Dispatch Gangnam"
    assert state(order.delivery.pk) == before


def test_cancel_order_foreign_dispatcher_is_404(demo, client):
    """Another center's dispatcher gets 404 and the order stays."""
    order = make_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-mapo")
    assert post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "x"}).status_code == 404
    assert state(order.delivery.pk) == before


def test_cancel_order_its_rider_is_403(demo, client):
    """The assigned rider sees the order but may not cancel it."""
    order, _ = assigned_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "rider-gangnam-01")
    assert post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "x"}).status_code == 403
    assert state(order.delivery.pk) == before


def test_cancel_order_unknown_is_404(demo, client):
    """Cancelling an unknown order is 404."""
    login(client, demo, "hq")
    assert post_json(client, f"{API}/orders/999999999/cancel", {"reason": "x"}).status_code == 404


# --- POST /deliveries/{id}/assign -----------------------------------------------------------


def test_assign_delivery_assigns_on_duty_rider(demo, client):
    """A dispatcher assigns a waiting delivery: assigned, the rider's load grows, version + 1."""
    order = make_order(demo)
    rider = on_duty(demo.rider("gangnam", 3))
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": rider.pk, "version": 1})
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["rider"], body["version"]) == ("assigned", rider.pk, 2)
    assert body["rider_name"] == rider.name
    assert body["assigned_at"] is not None
    rider.refresh_from_db()
    assert rider.load == 1


def test_assign_delivery_reassigns(demo, client):
    """Assigning an assigned delivery to another rider moves it and both loads."""
    order, first = assigned_order(demo, rider_number=1)
    second = on_duty(demo.rider("gangnam", 2))
    login(client, demo, "hq")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": second.pk})
    assert response.status_code == 200
    assert response.json()["rider"] == second.pk
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.load, second.load) == (0, 1)
    assert TimelineEntry.objects.filter(delivery=order.delivery).last().action == "reassigned"


def test_assign_delivery_stale_version_is_409_with_who_changed_it(demo, client):
    """Two dispatchers on one delivery: the second, on an old version, gets 409 with the current delivery."""
    order = make_order(demo)
    mine = on_duty(demo.rider("gangnam", 1))
    theirs = on_duty(demo.rider("gangnam", 2))
    hq = Client()
    hq.force_login(demo.user("hq"))
    first = post_json(hq, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": theirs.pk, "version": 1})
    assert first.status_code == 200
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": mine.pk, "version": 1})
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "stale_version"
    assert body["current"]["id"] == order.delivery.pk
    assert body["current"]["version"] == 2
    assert body["current"]["rider"] == theirs.pk
    assert body["current"]["status"] == "assigned"
    assert body["changed_by"]["by"] == "HQ Ops"
    assert body["changed_by"]["action"] == "assigned"
    assert state(order.delivery.pk) == before


def test_assign_delivery_same_rider_is_409(demo, client):
    """Assigning to the rider it already has is an illegal transition."""
    order, rider = assigned_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": rider.pk})
    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"
    assert state(order.delivery.pk) == before


def test_assign_delivery_picked_up_is_409(demo, client):
    """A picked-up delivery cannot be (re)assigned: 409 with the current delivery."""
    order, _ = assigned_order(demo)
    services.pick_up_delivery(actor=None, delivery_id=order.delivery.pk)
    other = on_duty(demo.rider("gangnam", 2))
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": other.pk})
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "invalid_transition"
    assert body["current"]["status"] == "picked_up"
    assert state(order.delivery.pk) == before


def test_assign_delivery_off_duty_rider_is_409(demo, client):
    """An off-duty rider cannot be given a delivery."""
    order = make_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": demo.rider("gangnam", 4).pk})
    assert response.status_code == 409
    assert response.json()["current"]["status"] == "waiting"
    assert state(order.delivery.pk) == before


@pytest.mark.parametrize("rider", ["mapo", "unknown"])
def test_assign_delivery_rider_outside_center_is_422(demo, client, rider):
    """A rider of another center, or no such rider, is a field error on `rider`."""
    order = make_order(demo)
    rider_id = on_duty(demo.rider("mapo", 1)).pk if rider == "mapo" else 999999999
    before = state(order.delivery.pk)
    login(client, demo, "hq")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": rider_id})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "rider"]
    assert state(order.delivery.pk) == before


def test_assign_delivery_foreign_dispatcher_is_404(demo, client):
    """Another center's dispatcher gets 404 and nothing changes."""
    order = make_order(demo)
    rider = on_duty(demo.rider("gangnam", 1))
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-mapo")
    assert post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": rider.pk}).status_code == 404
    assert state(order.delivery.pk) == before


def test_assign_delivery_callcenter_is_403(demo, client):
    """Call-center staff see deliveries but may not assign them: 403, nothing changes."""
    order = make_order(demo)
    rider = on_duty(demo.rider("gangnam", 1))
    before = state(order.delivery.pk)
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": rider.pk})
    assert response.status_code == 403
    assert state(order.delivery.pk) == before


def test_assign_delivery_its_rider_is_403(demo, client):
    """A rider may not reassign their own delivery to someone else."""
    order, _ = assigned_order(demo, rider_number=1)
    other = on_duty(demo.rider("gangnam", 2))
    before = state(order.delivery.pk)
    login(client, demo, "rider-gangnam-01")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": other.pk})
    assert response.status_code == 403
    assert state(order.delivery.pk) == before


def test_assign_delivery_missing_rider_is_422(demo, client):
    """An assign without `rider` is invalid input."""
    order = make_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-gangnam")
    assert post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {}).status_code == 422
    assert state(order.delivery.pk) == before


def test_assign_delivery_unknown_is_404(demo, client):
    """Assigning an unknown delivery is 404."""
    rider = on_duty(demo.rider("gangnam", 1))
    login(client, demo, "hq")
    assert post_json(client, f"{API}/deliveries/999999999/assign", {"rider": rider.pk}).status_code == 404


# --- POST /deliveries/{id}/unassign|pickup|deliver ------------------------------------------


def test_unassign_delivery_returns_it_to_waiting(demo, client):
    """Unassigning (without a body) puts the delivery back to waiting and frees the rider."""
    order, rider = assigned_order(demo)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/unassign")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["rider"], body["version"]) == ("waiting", None, 3)
    rider.refresh_from_db()
    assert rider.load == 0


def test_unassign_delivery_with_current_version(demo, client):
    """Unassign accepts the version the dispatcher was looking at."""
    order, _ = assigned_order(demo)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/unassign", {"version": 2})
    assert response.status_code == 200


def test_unassign_delivery_stale_version_is_409(demo, client):
    """Unassign on an old version is 409 stale_version; the rider keeps it."""
    order, rider = assigned_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/unassign", {"version": 1})
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "stale_version"
    assert (body["current"]["version"], body["current"]["rider"]) == (2, rider.pk)
    assert body["changed_by"]["by"] == "system"
    assert state(order.delivery.pk) == before


def test_unassign_delivery_waiting_is_409(demo, client):
    """A waiting delivery cannot be unassigned."""
    order = make_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/unassign")
    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"
    assert state(order.delivery.pk) == before


def test_unassign_delivery_foreign_dispatcher_is_404(demo, client):
    """Another center's dispatcher cannot unassign."""
    order, _ = assigned_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-songpa")
    assert post_json(client, f"{API}/deliveries/{order.delivery.pk}/unassign").status_code == 404
    assert state(order.delivery.pk) == before


def test_pickup_delivery_by_its_rider(demo, client):
    """The assigned rider picks up their own delivery (timeline source rider)."""
    order, rider = assigned_order(demo, rider_number=1)
    login(client, demo, "rider-gangnam-01")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/pickup")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["version"]) == ("picked_up", 3)
    assert body["picked_up_at"] is not None
    entry = TimelineEntry.objects.filter(delivery=order.delivery).last()
    assert (entry.source, entry.action) == ("rider", "picked_up")


def test_pickup_delivery_by_another_rider_is_404(demo, client):
    """Another rider of the same center gets 404 for a delivery that is not theirs."""
    order, _ = assigned_order(demo, rider_number=1)
    on_duty(demo.rider("gangnam", 2))
    before = state(order.delivery.pk)
    login(client, demo, "rider-gangnam-02")
    assert post_json(client, f"{API}/deliveries/{order.delivery.pk}/pickup").status_code == 404
    assert state(order.delivery.pk) == before


def test_pickup_delivery_by_dispatcher(demo, client):
    """A dispatcher of the center may mark a pickup for the rider."""
    order, _ = assigned_order(demo)
    login(client, demo, "dispatch-gangnam")
    assert post_json(client, f"{API}/deliveries/{order.delivery.pk}/pickup").json()["status"] == "picked_up"


def test_pickup_delivery_waiting_is_409(demo, client):
    """A waiting delivery cannot be picked up."""
    order = make_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "dispatch-gangnam")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/pickup")
    assert response.status_code == 409
    assert response.json()["current"]["status"] == "waiting"
    assert state(order.delivery.pk) == before


def test_pickup_delivery_callcenter_is_403(demo, client):
    """Call-center staff may not mark pickups."""
    order, _ = assigned_order(demo)
    before = state(order.delivery.pk)
    login(client, demo, "callcenter")
    assert post_json(client, f"{API}/deliveries/{order.delivery.pk}/pickup").status_code == 403
    assert state(order.delivery.pk) == before


def test_deliver_delivery_by_its_rider(demo, client):
    """The rider delivers a picked-up delivery: delivered, order delivered, load back to 0."""
    order, rider = assigned_order(demo, rider_number=1)
    services.pick_up_delivery(actor=None, delivery_id=order.delivery.pk)
    login(client, demo, "rider-gangnam-01")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/deliver", {"version": 3})
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["version"]) == ("delivered", 4)
    assert body["delivered_at"] is not None
    order.refresh_from_db()
    rider.refresh_from_db()
    assert (order.status, rider.load) == ("delivered", 0)


def test_deliver_delivery_not_picked_up_is_409(demo, client):
    """An assigned delivery not yet picked up cannot be delivered."""
    order, _ = assigned_order(demo, rider_number=1)
    before = state(order.delivery.pk)
    login(client, demo, "rider-gangnam-01")
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/deliver")
    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"
    assert state(order.delivery.pk) == before


def test_deliver_delivery_by_another_rider_is_404(demo, client):
    """Another rider cannot deliver someone else's delivery."""
    order, _ = assigned_order(demo, rider_number=1)
    services.pick_up_delivery(actor=None, delivery_id=order.delivery.pk)
    before = state(order.delivery.pk)
    login(client, demo, "rider-gangnam-03")
    assert post_json(client, f"{API}/deliveries/{order.delivery.pk}/deliver").status_code == 404
    assert state(order.delivery.pk) == before


def test_delivery_command_anonymous_is_401(demo, client):
    """Delivery commands need authentication."""
    order, _ = assigned_order(demo)
    before = state(order.delivery.pk)
    for command in ("unassign", "pickup", "deliver"):
        assert post_json(client, f"{API}/deliveries/{order.delivery.pk}/{command}").status_code == 401
    assert state(order.delivery.pk) == before


# --- Idempotency-Key ------------------------------------------------------------------------


def test_idempotency_key_retry_returns_first_result(demo, client):
    """Repeating POST /orders with the same key returns the same answer and creates one order."""
    login(client, demo, "callcenter")
    before = counts()
    body = order_body(demo.shop())
    first = post_json(client, f"{API}/orders", body, **{"Idempotency-Key": "order-1"})
    second = post_json(client, f"{API}/orders", body, **{"Idempotency-Key": "order-1"})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert counts() == (before[0] + 1, before[1] + 1, before[2] + 2)


def test_idempotency_key_reused_for_different_body_is_422(demo, client):
    """The same key with a different body is refused (422) and creates nothing."""
    login(client, demo, "callcenter")
    post_json(client, f"{API}/orders", order_body(demo.shop()), **{"Idempotency-Key": "k"})
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop(), note="other"), **{"Idempotency-Key": "k"})
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)
    assert counts() == before


def test_idempotency_key_reused_on_another_endpoint_is_422(demo, client):
    """A key first used for one command cannot be replayed on another."""
    order = make_order(demo)
    login(client, demo, "callcenter")
    post_json(client, f"{API}/orders", order_body(demo.shop()), **{"Idempotency-Key": "k"})
    before = state(order.delivery.pk)
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "x"}, **{"Idempotency-Key": "k"})
    assert response.status_code == 422
    assert state(order.delivery.pk) == before


def test_idempotency_key_is_per_user(demo, client):
    """The same key sent by two users runs two independent commands."""
    body = order_body(demo.shop())
    before = counts()
    login(client, demo, "callcenter")
    first = post_json(client, f"{API}/orders", body, **{"Idempotency-Key": "shared"})
    login(client, demo, "dispatch-gangnam")
    second = post_json(client, f"{API}/orders", body, **{"Idempotency-Key": "shared"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert counts()[0] == before[0] + 2


def test_idempotency_key_refused_command_is_not_recorded(demo, client):
    """A 409 with a key records nothing: after the state is fixed the same key runs the command."""
    order = make_order(demo)
    rider = demo.rider("gangnam", 1)  # off duty: assign is refused
    login(client, demo, "dispatch-gangnam")
    url = f"{API}/deliveries/{order.delivery.pk}/assign"
    refused = post_json(client, url, {"rider": rider.pk}, **{"Idempotency-Key": "assign-1"})
    assert refused.status_code == 409
    assert not IdempotencyRecord.objects.filter(key="assign-1").exists()
    on_duty(rider)
    retried = post_json(client, url, {"rider": rider.pk}, **{"Idempotency-Key": "assign-1"})
    assert retried.status_code == 200
    assert retried.json()["rider"] == rider.pk


def test_idempotency_key_invalid_input_is_not_recorded(demo, client):
    """A 422 with a key records nothing; the corrected request with another key is unaffected."""
    login(client, demo, "callcenter")
    before = counts()
    bad = post_json(client, f"{API}/orders", order_body(demo.shop(), items=[]), **{"Idempotency-Key": "k2"})
    assert bad.status_code == 422
    assert not IdempotencyRecord.objects.filter(key="k2").exists()
    assert counts() == before


def test_idempotency_key_replay_after_state_changed_changes_nothing(demo, client):
    """A retried assign returns the first answer even after the delivery moved on, and changes nothing."""
    order = make_order(demo)
    rider = on_duty(demo.rider("gangnam", 1))
    login(client, demo, "dispatch-gangnam")
    url = f"{API}/deliveries/{order.delivery.pk}/assign"
    first = post_json(client, url, {"rider": rider.pk}, **{"Idempotency-Key": "a"})
    services.unassign_delivery(actor=None, delivery_id=order.delivery.pk)
    before = state(order.delivery.pk)
    again = post_json(client, url, {"rider": rider.pk}, **{"Idempotency-Key": "a"})
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert state(order.delivery.pk) == before


@pytest.mark.parametrize("key", ["k" * 201, ""])
def test_idempotency_key_bad_length_is_422(demo, client, key):
    """An Idempotency-Key that is empty or longer than 200 characters is refused; nothing is created."""
    login(client, demo, "callcenter")
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop()), **{"Idempotency-Key": key})
    assert response.status_code == 422
    assert "detail" in response.json()
    assert counts() == before


def test_idempotency_key_of_200_characters_is_accepted(demo, client):
    """A 200-character key is the longest accepted."""
    login(client, demo, "callcenter")
    response = post_json(client, f"{API}/orders", order_body(demo.shop()), **{"Idempotency-Key": "k" * 200})
    assert response.status_code == 201


def test_idempotency_key_concurrent_retries_create_one_order(demo_tx):
    """Two simultaneous requests with the same key create one order and get the same answer."""
    body = order_body(demo_tx.shop())
    user = demo_tx.user("callcenter")
    clients = [Client(), Client()]
    for c in clients:
        c.force_login(user)
    before = counts()
    barrier = threading.Barrier(len(clients))
    responses: list = [None] * len(clients)
    errors: list = []

    def send(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            responses[index] = post_json(clients[index], f"{API}/orders", body, **{"Idempotency-Key": "race"})
        except Exception as exc:  # surfaced below, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert [r.status_code for r in responses] == [201, 201]
    assert responses[0].json() == responses[1].json()
    assert counts() == (before[0] + 1, before[1] + 1, before[2] + 2)
    assert IdempotencyRecord.objects.filter(key="race").count() == 1

"""HTTP API authentication (protocol.md §2, §4): Bearer API tokens, their scopes, and the OpenAPI document."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from core.models import ApiToken, IdempotencyRecord
from deliveries.models import Delivery, Order, TimelineEntry
from realtime.models import Event
from riders.services import set_rider_duty
from tests import support
from tests.support import bearer, take_order

API = "/api/v1"


def make_token(name: str = "shop-pos", **options) -> tuple[ApiToken, str]:
    return support.make_token(name, **options)


def post_json(client, url: str, body, **headers):
    return client.post(url, body, content_type="application/json", headers=headers)


def order_body(shop, /, **overrides) -> dict:
    return {
        "shop": shop.pk,
        "customer_name": "Kim Minji",
        "customer_phone": "010-1234-5678",
        "address": "Teheran-ro 1, Seoul",
        "items": [{"name": "Fried chicken", "qty": 1}],
    } | overrides


def counts() -> tuple[int, int, int]:
    return Order.objects.count(), Delivery.objects.count(), Event.objects.count()


def delivery_state(delivery_id: int) -> tuple:
    delivery = Delivery.objects.select_related("order").get(pk=delivery_id)
    return (
        delivery.status,
        delivery.version,
        delivery.rider_id,
        delivery.order.status,
        delivery.order.version,
        TimelineEntry.objects.filter(delivery=delivery).count(),
        Event.objects.count(),
    )


ORDER_TAKER = {"commands": ["orders.create", "orders.cancel"], "streams": ["orders:gangnam"]}


# --- commands with a token ------------------------------------------------------------------


def test_token_creates_order_in_scoped_center(demo, client):
    """A token scoped to orders:gangnam creates an order there; the timeline names the token."""
    _, raw = make_token("shop-pos", **ORDER_TAKER)
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop("gangnam")), **bearer(raw))
    assert response.status_code == 201
    body = response.json()
    assert body["center"] == "gangnam"
    assert body["delivery"]["status"] == "waiting"
    order = Order.objects.get(pk=body["id"])
    assert order.created_by is None
    entry = order.delivery.timeline.get()
    assert (entry.source, entry.actor_label, entry.action) == ("api", "API token shop-pos", "created")
    assert counts() == (before[0] + 1, before[1] + 1, before[2] + 2)


def test_token_order_outside_scoped_center_is_403(demo, client):
    """The same token gets 403 for a shop of another center; nothing is created."""
    _, raw = make_token(**ORDER_TAKER)
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop("mapo")), **bearer(raw))
    assert response.status_code == 403
    assert "detail" in response.json()
    assert counts() == before


def test_token_without_command_is_403(demo, client):
    """A token whose commands lack orders.create cannot create orders, even in its streams."""
    _, raw = make_token(commands=["orders.cancel"], streams=["orders:gangnam"])
    before = counts()
    assert post_json(client, f"{API}/orders", order_body(demo.shop("gangnam")), **bearer(raw)).status_code == 403
    assert counts() == before


def test_token_namespace_wildcard_covers_every_center(demo, client):
    """streams=["orders:*"] covers the orders of every center."""
    _, raw = make_token(commands=["orders.create"], streams=["orders:*"])
    for code in ("gangnam", "mapo", "songpa"):
        response = post_json(client, f"{API}/orders", order_body(demo.shop(code)), **bearer(raw))
        assert response.status_code == 201
        assert response.json()["center"] == code


def test_token_wrong_namespace_is_403(demo, client):
    """A deliveries:* scope does not cover orders streams."""
    _, raw = make_token(commands=["orders.create"], streams=["deliveries:*"])
    before = counts()
    assert post_json(client, f"{API}/orders", order_body(demo.shop("gangnam")), **bearer(raw)).status_code == 403
    assert counts() == before


def test_token_delivery_command_outside_its_streams_is_404(demo, client):
    """An order-taking token cannot see deliveries, so assigning one is 404 (as if missing); nothing changes."""
    _, raw = make_token(**ORDER_TAKER)
    order = take_order(demo)
    rider = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 1).pk, on_duty=True)
    before = delivery_state(order.delivery.pk)
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": rider.pk}, **bearer(raw))
    assert response.status_code == 404
    assert delivery_state(order.delivery.pk) == before


def test_token_with_assign_scope_assigns(demo, client):
    """A token with deliveries.assign on deliveries:gangnam assigns; the timeline names the token."""
    _, raw = make_token("dispatch-bot", commands=["deliveries.assign"], streams=["deliveries:gangnam"])
    order = take_order(demo)
    rider = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 1).pk, on_duty=True)
    response = post_json(client, f"{API}/deliveries/{order.delivery.pk}/assign", {"rider": rider.pk}, **bearer(raw))
    assert response.status_code == 200
    assert response.json()["rider"] == rider.pk
    entry = TimelineEntry.objects.filter(delivery=order.delivery).last()
    assert (entry.source, entry.actor_label, entry.action) == ("api", "API token dispatch-bot", "assigned")


def test_token_cancels_order_in_scope(demo, client):
    """An order-taking token cancels an order of its center."""
    _, raw = make_token("shop-pos", **ORDER_TAKER)
    order = take_order(demo)
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "Shop closed"}, **bearer(raw))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    entry = TimelineEntry.objects.filter(delivery=order.delivery).last()
    assert (entry.source, entry.actor_label) == ("api", "API token shop-pos")


def test_token_cancel_outside_scope_is_refused(demo, client):
    """An order-taking token cannot cancel another center's order; nothing changes."""
    _, raw = make_token(**ORDER_TAKER)
    order = take_order(demo, center="mapo")
    before = delivery_state(order.delivery.pk)
    response = post_json(client, f"{API}/orders/{order.pk}/cancel", {"reason": "x"}, **bearer(raw))
    assert response.status_code in (403, 404)
    assert delivery_state(order.delivery.pk) == before


def test_token_idempotency_key_is_per_token(demo, client):
    """A token's key replays its own first answer and is independent of a user's same key."""
    _, raw = make_token(**ORDER_TAKER)
    body = order_body(demo.shop("gangnam"))
    before = counts()
    first = post_json(client, f"{API}/orders", body, **bearer(raw), **{"Idempotency-Key": "k"})
    again = post_json(client, f"{API}/orders", body, **bearer(raw), **{"Idempotency-Key": "k"})
    user = Client()
    user.force_login(demo.user("callcenter"))
    other = post_json(user, f"{API}/orders", body, **{"Idempotency-Key": "k"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 201)
    assert first.json() == again.json()
    assert other.json()["id"] != first.json()["id"]
    assert counts()[0] == before[0] + 2
    assert IdempotencyRecord.objects.filter(key="k").count() == 2


def test_token_needs_no_csrf(demo):
    """A Bearer POST passes without any CSRF cookie or header."""
    _, raw = make_token(**ORDER_TAKER)
    client = Client(enforce_csrf_checks=True)
    response = post_json(client, f"{API}/orders", order_body(demo.shop("gangnam")), **bearer(raw))
    assert response.status_code == 201


# --- refused tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["revoked", "unknown", "malformed"])
def test_token_invalid_read_is_401(demo, client, kind):
    """A revoked, unknown or malformed token is 401 with a JSON detail."""
    _, raw = make_token(streams=["*"], revoked=kind == "revoked")
    header = {"revoked": f"Bearer {raw}", "unknown": "Bearer bros_nope", "malformed": "Bearer"}[kind]
    response = client.get(f"{API}/deliveries", {"center": "gangnam"}, headers={"Authorization": header})
    assert response.status_code == 401
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize("kind", ["revoked", "unknown"])
def test_token_invalid_command_from_test_client_is_401(demo, client, kind):
    """A revoked or unknown token cannot run a command (pytest-django client: no CSRF enforcement)."""
    _, raw = make_token(**ORDER_TAKER, revoked=kind == "revoked")
    secret = raw if kind == "revoked" else "bros_nope"
    before = counts()
    response = post_json(client, f"{API}/orders", order_body(demo.shop("gangnam")), **bearer(secret))
    assert response.status_code == 401
    assert counts() == before


@pytest.mark.parametrize("kind", ["revoked", "unknown", "none"])
def test_token_invalid_command_from_integration_is_401(demo, kind):
    """A real client (no CSRF exemption) with a revoked, unknown or no token gets 401, not a CSRF 403."""
    _, raw = make_token(**ORDER_TAKER, revoked=kind == "revoked")
    headers = {"revoked": bearer(raw), "unknown": bearer("bros_nope"), "none": {}}[kind]
    before = counts()
    client = Client(enforce_csrf_checks=True)
    response = post_json(client, f"{API}/orders", order_body(demo.shop("gangnam")), **headers)
    assert counts() == before
    assert response.status_code == 401


def test_token_revoked_after_use_stops_working(demo, client):
    """Revoking a token takes effect on the next call."""
    token, raw = make_token(streams=["deliveries:gangnam"])
    assert client.get(f"{API}/deliveries", {"center": "gangnam"}, headers=bearer(raw)).status_code == 200
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    assert client.get(f"{API}/deliveries", {"center": "gangnam"}, headers=bearer(raw)).status_code == 401


def test_token_last_used_at_is_recorded(demo, client):
    """A call records the token's last use."""
    token, raw = make_token(streams=["deliveries:gangnam"])
    assert token.last_used_at is None
    client.get(f"{API}/deliveries", {"center": "gangnam"}, headers=bearer(raw))
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert timezone.now() - token.last_used_at < timedelta(seconds=30)


def test_token_last_used_at_is_updated_at_minute_precision(demo, client):
    """A use within a minute of the last one does not rewrite it; a later use does."""
    token, raw = make_token(streams=["deliveries:gangnam"])
    recent = timezone.now() - timedelta(seconds=10)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=recent)
    client.get(f"{API}/deliveries", {"center": "gangnam"}, headers=bearer(raw))
    token.refresh_from_db()
    assert token.last_used_at == recent
    old = timezone.now() - timedelta(minutes=5)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=old)
    client.get(f"{API}/deliveries", {"center": "gangnam"}, headers=bearer(raw))
    token.refresh_from_db()
    assert token.last_used_at > old + timedelta(minutes=4)


def test_token_revoked_use_does_not_touch_last_used_at(demo, client):
    """A refused (revoked) token's last use is not updated."""
    token, raw = make_token(streams=["*"], revoked=True)
    client.get(f"{API}/deliveries", {"center": "gangnam"}, headers=bearer(raw))
    token.refresh_from_db()
    assert token.last_used_at is None


# --- reads with a token ---------------------------------------------------------------------


def test_token_reads_deliveries_of_scoped_center(demo, client):
    """deliveries:gangnam lets a token list gangnam's deliveries and read one of them."""
    order = take_order(demo)
    _, raw = make_token(streams=["deliveries:gangnam"])
    response = client.get(f"{API}/deliveries", {"center": "gangnam"}, headers=bearer(raw))
    assert response.status_code == 200
    assert [d["id"] for d in response.json()] == [order.delivery.pk]
    detail = client.get(f"{API}/deliveries/{order.delivery.pk}", headers=bearer(raw))
    assert detail.status_code == 200
    assert detail.json()["timeline"][0]["action"] == "created"


def test_token_deliveries_outside_scope_is_404(demo, client):
    """orders:gangnam does not let a token read deliveries; deliveries:gangnam does not cover mapo."""
    gangnam = take_order(demo)
    mapo = take_order(demo, center="mapo")
    _, orders_only = make_token("orders-only", streams=["orders:gangnam"])
    _, gangnam_only = make_token("gangnam-only", streams=["deliveries:gangnam"])
    assert client.get(f"{API}/deliveries", {"center": "gangnam"}, headers=bearer(orders_only)).status_code == 404
    assert client.get(f"{API}/deliveries/{gangnam.delivery.pk}", headers=bearer(orders_only)).status_code == 404
    assert client.get(f"{API}/deliveries", {"center": "mapo"}, headers=bearer(gangnam_only)).status_code == 404
    assert client.get(f"{API}/deliveries/{mapo.delivery.pk}", headers=bearer(gangnam_only)).status_code == 404


def test_token_shops_need_orders_scope(demo, client):
    """A token lists shops of the centers its orders streams cover; others are 404."""
    _, raw = make_token(**ORDER_TAKER)
    response = client.get(f"{API}/shops", {"center": "gangnam"}, headers=bearer(raw))
    assert response.status_code == 200
    assert {s["center"] for s in response.json()} == {"gangnam"}
    assert client.get(f"{API}/shops", {"center": "mapo"}, headers=bearer(raw)).status_code == 404


def test_token_reads_back_order_it_may_create(demo, client):
    """A token scoped to orders:gangnam can read back the orders of gangnam (GET /orders/{id})."""
    _, raw = make_token(**ORDER_TAKER)
    created = post_json(client, f"{API}/orders", order_body(demo.shop("gangnam")), **bearer(raw))
    assert created.status_code == 201
    response = client.get(f"{API}/orders/{created.json()['id']}", headers=bearer(raw))
    assert response.status_code == 200


@pytest.mark.parametrize("endpoint", ["deliveries", "shops"])
@pytest.mark.parametrize("center", ["Gangnam", "a:b", ""])
def test_token_read_with_malformed_center_is_404(demo, endpoint, center):
    """A token reading with a center code that is not a valid room gets 404, never a 500."""
    _, raw = make_token(streams=["*"])
    client = Client(raise_request_exception=False)
    response = client.get(f"{API}/{endpoint}", {"center": center}, headers=bearer(raw))
    assert response.status_code == 404


def test_token_me_is_404(demo, client):
    """GET /me is for user sessions: a token gets 404."""
    _, raw = make_token(streams=["*"])
    response = client.get(f"{API}/me", headers=bearer(raw))
    assert response.status_code == 404
    assert "detail" in response.json()


def test_token_centers_is_empty(demo, client):
    """A token has no centers of its own: GET /centers answers an empty list."""
    _, raw = make_token(streams=["*"])
    response = client.get(f"{API}/centers", headers=bearer(raw))
    assert (response.status_code, response.json()) == (200, [])


def test_token_takes_precedence_over_session(demo, client):
    """A request with both a session and a Bearer token acts as the token."""
    client.force_login(demo.user("hq"))
    _, raw = make_token(streams=["*"])
    assert client.get(f"{API}/me", headers=bearer(raw)).status_code == 404
    assert client.get(f"{API}/me").status_code == 200


# --- OpenAPI --------------------------------------------------------------------------------


def test_openapi_lists_every_endpoint(demo, client):
    """/api/v1/openapi.json is public and describes every endpoint of protocol §4 built so far."""
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    paths = doc["paths"]
    expected = {
        "/api/v1/me": "get",
        "/api/v1/centers": "get",
        "/api/v1/shops": "get",
        "/api/v1/riders": "get",
        "/api/v1/deliveries": "get",
        "/api/v1/deliveries/{delivery_id}": "get",
        "/api/v1/orders": "post",
        "/api/v1/orders/{order_id}": "get",
        "/api/v1/orders/{order_id}/cancel": "post",
        "/api/v1/deliveries/{delivery_id}/assign": "post",
        "/api/v1/deliveries/{delivery_id}/unassign": "post",
        "/api/v1/deliveries/{delivery_id}/pickup": "post",
        "/api/v1/deliveries/{delivery_id}/deliver": "post",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), path
    schemes = doc["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    assert any(s.get("in") == "cookie" for s in schemes.values())

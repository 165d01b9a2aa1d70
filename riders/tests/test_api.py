"""HTTP API v1 for riders: a center's riders with status, load and last position (protocol.md §4)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from core.models import ApiToken
from deliveries import services
from riders.models import Rider
from riders.services import set_rider_duty

API = "/api/v1"


def make_assigned_delivery(demo, rider: Rider):
    order = services.create_order(
        actor=None,
        shop_id=demo.shop(rider.center.code).pk,
        customer_name="Lee",
        customer_phone="010-2222-3333",
        address="Somewhere 5",
        items=[{"name": "Bibimbap", "qty": 1}],
    )
    return services.assign_delivery(actor=None, delivery_id=order.delivery.pk, rider_id=rider.pk)


def riders_by_id(response) -> dict[int, dict]:
    return {r["id"]: r for r in response.json()}


@pytest.mark.parametrize("username", ["dispatch-gangnam", "hq", "admin"])
def test_riders_lists_center_riders_with_status_load_and_position(demo, client, username):
    """Its dispatcher and HQ list the center's riders by name with status, load and last position."""
    busy = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 1).pk, on_duty=True)
    available = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 2).pk, on_duty=True)
    offline = demo.rider("gangnam", 3)
    make_assigned_delivery(demo, busy)
    seen_at = timezone.now().replace(microsecond=0)
    Rider.objects.filter(pk=busy.pk).update(
        last_lat=37.51, last_lng=127.04, last_accuracy=7.5, last_position_at=seen_at
    )
    client.force_login(demo.user(username))
    response = client.get(f"{API}/riders", {"center": "gangnam"})
    assert response.status_code == 200
    body = response.json()
    assert len(body) == 20
    assert {r["center"] for r in body} == {"gangnam"}
    assert [r["name"] for r in body] == sorted(r["name"] for r in body)
    rows = riders_by_id(response)
    assert (rows[busy.pk]["status"], rows[busy.pk]["load"], rows[busy.pk]["on_duty"]) == ("busy", 1, True)
    assert (rows[available.pk]["status"], rows[available.pk]["load"]) == ("available", 0)
    assert (rows[offline.pk]["status"], rows[offline.pk]["on_duty"]) == ("offline", False)
    assert (rows[busy.pk]["last_lat"], rows[busy.pk]["last_lng"], rows[busy.pk]["last_accuracy"]) == (
        37.51,
        127.04,
        7.5,
    )
    assert rows[busy.pk]["last_position_at"] is not None
    assert set(rows[offline.pk]) >= {"id", "version", "status", "center", "name", "vehicle", "on_duty", "load"}


@pytest.mark.parametrize("username", ["dispatch-mapo", "callcenter", "rider-gangnam-01"])
def test_riders_hidden_from_non_dispatchers_of_center_is_404(demo, client, username):
    """Another center's dispatcher, call-center staff and riders get 404 for a center's riders."""
    client.force_login(demo.user(username))
    response = client.get(f"{API}/riders", {"center": "gangnam"})
    assert response.status_code == 404
    assert "detail" in response.json()


def test_riders_anonymous_is_401(demo, client):
    """GET /riders needs authentication."""
    assert client.get(f"{API}/riders", {"center": "gangnam"}).status_code == 401


def test_riders_missing_center_is_422(demo, client):
    """GET /riders without `center` is invalid input."""
    client.force_login(demo.user("dispatch-gangnam"))
    assert client.get(f"{API}/riders").status_code == 422


def test_riders_token_is_404(demo, client):
    """An API token cannot list riders, whatever its scope."""
    raw, digest = ApiToken.generate()
    ApiToken.objects.create(name="everything", digest=digest, hint=raw[:12], commands=[], streams=["*"])
    response = client.get(f"{API}/riders", {"center": "gangnam"}, headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 404

"""What a careless integration or an attacker sends: foreign ids look missing, loose types are refused."""

from __future__ import annotations

import pytest
from django.test import Client

from deliveries.tests.test_api import API, assigned_order, make_order, on_duty, post_json, state
from tests.support import bearer, make_token

MISSING = 999_999_999


def logged_in(demo, username: str) -> Client:
    client = Client()
    client.force_login(demo.user(username))
    return client


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/deliveries/{delivery}", None),
        ("post", "/deliveries/{delivery}/assign", {"rider": 1}),
        ("post", "/deliveries/{delivery}/pickup", None),
        ("get", "/orders/{order}", None),
        ("post", "/orders/{order}/cancel", {"reason": "probe"}),
    ],
)
def test_foreign_and_missing_ids_answer_the_same_for_a_user(demo, method, path, body):
    """A dispatcher of mapo probing gangnam's ids gets exactly the answer a missing id gets."""
    order = make_order(demo, "gangnam")
    client = logged_in(demo, "dispatch-mapo")

    def answer(order_id: int, delivery_id: int):
        url = API + path.format(order=order_id, delivery=delivery_id)
        response = client.get(url) if method == "get" else post_json(client, url, body)
        return response.status_code, response.json()

    assert answer(order.pk, order.delivery.pk) == answer(MISSING, MISSING)
    assert answer(MISSING, MISSING)[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "token"),
    [
        ("/orders/{order}/cancel", {"reason": "probe"}, {"commands": ["orders.cancel"], "streams": ["orders:mapo"]}),
        ("/deliveries/{delivery}/pickup", None, {"commands": ["deliveries.pickup"], "streams": ["deliveries:mapo"]}),
    ],
)
def test_foreign_and_missing_ids_answer_the_same_for_a_token(demo, client, path, body, token):
    """A token of mapo probing gangnam's ids gets the answer of a missing id (was 403 vs 404)."""
    order = make_order(demo, "gangnam")
    _, raw = make_token(**token)

    def answer(order_id: int, delivery_id: int):
        response = post_json(client, API + path.format(order=order_id, delivery=delivery_id), body, **bearer(raw))
        return response.status_code, response.json()

    assert answer(order.pk, order.delivery.pk) == answer(MISSING, MISSING)
    assert answer(MISSING, MISSING)[0] == 404


@pytest.mark.parametrize("body", [{"rider": True}, {"rider": "1"}, {"rider": 1.0}, {"rider": 1, "version": "1"}])
def test_assign_with_a_loosely_typed_rider_or_version_is_422(demo, body):
    """`true` is no rider id and "1" no version: refused, nothing assigned."""
    on_duty(demo.rider("gangnam", 1))
    order = make_order(demo)
    before = state(order.delivery.pk)
    response = post_json(logged_in(demo, "dispatch-gangnam"), f"{API}/deliveries/{order.delivery.pk}/assign", body)
    assert response.status_code == 422, response.content
    assert state(order.delivery.pk) == before


@pytest.mark.parametrize("raw", [b"123", b"[]", b'"x"', b'{"version": true}'])
def test_command_with_a_body_that_is_no_object_is_422(demo, raw):
    """A body-optional command refuses a body that is not a JSON object; nothing changes."""
    order, _ = assigned_order(demo)
    before = state(order.delivery.pk)
    client = logged_in(demo, "dispatch-gangnam")
    url = f"{API}/deliveries/{order.delivery.pk}/pickup"
    response = client.generic("POST", url, raw, content_type="application/json")
    assert response.status_code == 422, response.content
    assert state(order.delivery.pk) == before


@pytest.mark.parametrize("raw", [b"", b"null", b"{}", b'{"version": 2}'])
def test_command_with_no_body_or_an_object_runs(demo, raw):
    """Empty, `null`, `{}` and `{"version": n}` are the accepted bodies of a body-optional command."""
    order, _ = assigned_order(demo)
    client = logged_in(demo, "dispatch-gangnam")
    url = f"{API}/deliveries/{order.delivery.pk}/pickup"
    response = client.generic("POST", url, raw, content_type="application/json")
    assert response.status_code == 200, response.content


def test_idempotent_retry_with_other_whitespace_and_key_order_gets_the_first_answer(demo):
    """The same JSON written differently is the same request, not a reused key (was 422)."""
    rider = on_duty(demo.rider("gangnam", 1))
    order = make_order(demo)
    client = logged_in(demo, "dispatch-gangnam")
    url = f"{API}/deliveries/{order.delivery.pk}/assign"
    first = client.generic(
        "POST",
        url,
        f'{{"rider": {rider.pk}, "version": 1}}',
        content_type="application/json",
        headers={"Idempotency-Key": "k1"},
    )
    again = client.generic(
        "POST",
        url,
        f'{{ "version":1,\n "rider":{rider.pk} }}',
        content_type="application/json",
        headers={"Idempotency-Key": "k1"},
    )
    assert first.status_code == 200
    assert (again.status_code, again.json()) == (first.status_code, first.json())

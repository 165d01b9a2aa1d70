"""`POST /api/v1/riders/{id}/duty`: a shift starts and ends through the service, refusals included."""

from __future__ import annotations

import pytest

from core.models import ApiToken
from realtime.models import Event
from riders.models import Rider
from riders.services import set_rider_duty
from riders.tests.test_api import make_assigned_delivery

API = "/api/v1"


def duty(client, rider: Rider, body, **headers):
    return client.post(f"{API}/riders/{rider.pk}/duty", body, content_type="application/json", **headers)


def rider_events(rider: Rider) -> list[dict]:
    return [e.data for e in Event.objects.filter(stream=f"riders:{rider.center.code}", name="rider.status")]


def test_duty_rider_starts_and_ends_own_shift_with_an_event_each(demo, client):
    """A rider starts then ends their own shift; each change is a `rider.status` event and bumps the version."""
    rider = demo.rider("gangnam", 1)
    client.force_login(rider.user)
    started = duty(client, rider, {"on_duty": True, "version": rider.version})
    assert started.status_code == 200, started.content
    assert (started.json()["on_duty"], started.json()["status"]) == (True, "available")
    assert started.json()["version"] == rider.version + 1
    ended = duty(client, rider, {"on_duty": False})
    assert ended.status_code == 200
    assert (ended.json()["on_duty"], ended.json()["status"]) == (False, "offline")
    assert [e["on_duty"] for e in rider_events(rider)] == [True, False]


def test_duty_same_idempotency_key_changes_the_shift_once(demo, client):
    """A retried start (same Idempotency-Key) gets the first answer and emits nothing new."""
    rider = demo.rider("gangnam", 1)
    client.force_login(rider.user)
    first = duty(client, rider, {"on_duty": True}, HTTP_IDEMPOTENCY_KEY="shift-1")
    again = duty(client, rider, {"on_duty": True}, HTTP_IDEMPOTENCY_KEY="shift-1")
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json() == again.json()
    assert len(rider_events(rider)) == 1


@pytest.mark.parametrize("username", ["dispatch-gangnam", "hq"])
def test_duty_dispatcher_and_hq_may_change_a_riders_shift(demo, client, username):
    """The center's dispatcher and HQ may start a rider's shift."""
    rider = demo.rider("gangnam", 2)
    client.force_login(demo.user(username))
    assert duty(client, rider, {"on_duty": True}).json()["on_duty"] is True


@pytest.mark.parametrize("who", ["other-rider", "foreign-rider", "dispatch-mapo", "callcenter"])
def test_duty_others_are_told_no_such_rider(demo, client, who):
    """Another rider, a foreign center's dispatcher and call-center staff get the 404 of a missing rider."""
    rider = demo.rider("gangnam", 1)
    users = {
        "other-rider": demo.rider("gangnam", 2).user,
        "foreign-rider": demo.rider("mapo", 1).user,
        "dispatch-mapo": demo.user("dispatch-mapo"),
        "callcenter": demo.user("callcenter"),
    }
    client.force_login(users[who])
    refused = duty(client, rider, {"on_duty": True})
    missing = client.post(f"{API}/riders/999999/duty", {"on_duty": True}, content_type="application/json")
    assert (refused.status_code, refused.json()) == (404, {"detail": "No such rider."})
    assert (missing.status_code, missing.json()) == (404, {"detail": "No such rider."})
    assert Rider.objects.get(pk=rider.pk).on_duty is False


def test_duty_anonymous_is_401(demo, client):
    """Without a session or token the endpoint answers 401."""
    assert duty(client, demo.rider("gangnam", 1), {"on_duty": True}).status_code == 401


def test_duty_rider_with_active_deliveries_cannot_end_shift(demo, client):
    """Ending a shift with a delivery on the road is 409 with the rider as it is."""
    rider = set_rider_duty(actor=None, rider_id=demo.rider("gangnam", 1).pk, on_duty=True)
    make_assigned_delivery(demo, rider)
    client.force_login(rider.user)
    refused = duty(client, rider, {"on_duty": False})
    assert refused.status_code == 409
    assert refused.json()["code"] == "invalid_transition"
    assert "1 active deliveries" in refused.json()["detail"]
    assert refused.json()["current"]["on_duty"] is True


def test_duty_already_on_and_stale_version_are_409(demo, client):
    """Starting a started shift is refused; so is a stale version, before the state."""
    rider = demo.rider("gangnam", 1)
    client.force_login(rider.user)
    old = rider.version
    duty(client, rider, {"on_duty": True})
    again = duty(client, rider, {"on_duty": True})
    assert (again.status_code, again.json()["code"]) == (409, "invalid_transition")
    stale = duty(client, rider, {"on_duty": False, "version": old})
    assert (stale.status_code, stale.json()["code"]) == (409, "stale_version")


@pytest.mark.parametrize(
    "body",
    [{}, {"on_duty": 1}, {"on_duty": "true"}, {"on_duty": True, "version": "2"}, {"on_duty": True, "version": True}],
)
def test_duty_bad_bodies_are_422(demo, client, body):
    """`on_duty` must be a JSON boolean and `version` an integer."""
    rider = demo.rider("gangnam", 1)
    client.force_login(rider.user)
    assert duty(client, rider, body).status_code == 422
    assert Rider.objects.get(pk=rider.pk).on_duty is False


def test_duty_token_needs_the_command_and_the_centers_stream(demo, client):
    """A token covering the center may change a shift only with `riders.duty`; outside its centers it is 404."""
    rider = demo.rider("gangnam", 1)
    raw, digest = ApiToken.generate()
    ApiToken.objects.create(name="fleet", digest=digest, hint=raw[:12], commands=[], streams=["riders:gangnam"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert duty(client, rider, {"on_duty": True}, **auth).status_code == 403
    ApiToken.objects.filter(name="fleet").update(commands=["riders.duty"])
    assert duty(client, rider, {"on_duty": True}, **auth).json()["on_duty"] is True
    foreign = demo.rider("mapo", 1)
    assert duty(client, foreign, {"on_duty": True}, **auth).json() == {"detail": "No such rider."}

"""A Redis outage (issue 12, bug 3): positions come from PostgreSQL and fixes are refused with 503.

Redis is made unreachable by pointing this process's bus at a closed port (`redis_outage`); the
shared Redis other test runs use keeps running.
"""

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from realtime import registry
from riders.models import Rider
from riders.positions import current_positions, publish_position_batches
from riders.streams import accept_position_frame, positions_join_frames


@pytest.fixture
def stored_rider(demo):
    """An on-duty gangnam rider whose last position is stored in PostgreSQL, 3 s old."""
    rider = demo.rider("gangnam", 2)
    at = timezone.now() - timedelta(seconds=3)
    Rider.objects.filter(pk=rider.pk).update(
        on_duty=True, last_lat=37.51, last_lng=127.04, last_accuracy=6.0, last_position_at=at
    )
    rider.refresh_from_db()
    return rider


def stored(rider: Rider) -> dict:
    ts = rider.last_position_at
    return {
        "rider": rider.pk,
        "lat": 37.51,
        "lng": 127.04,
        "accuracy": 6.0,
        "heading": None,
        "speed": None,
        "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
    }


def test_positions_snapshot_serves_the_stored_positions_while_redis_is_down(demo, stored_rider, redis_outage):
    """`GET /streams/positions:<c>/snapshot` answers 200 with the positions stored in PostgreSQL."""
    client = Client()
    client.force_login(demo.user("dispatch-gangnam"))

    response = client.get("/api/v1/streams/positions:gangnam/snapshot")

    assert response.status_code == 200
    items = response.json()["items"]
    assert stored(stored_rider) in items
    on_duty = set(Rider.objects.filter(center__code="gangnam", on_duty=True).values_list("pk", flat=True))
    assert {item["rider"] for item in items} <= on_duty
    assert items == current_positions("gangnam")


def test_positions_join_frame_carries_the_stored_positions_while_redis_is_down(stored_rider, redis_outage):
    """A new `positions:<c>` subscriber still gets everyone's position first, from PostgreSQL."""
    (frame,) = positions_join_frames("gangnam")

    assert stored(stored_rider) in json.loads(frame)["data"]["positions"]


def test_post_positions_answers_503_with_retry_after_while_redis_is_down(demo, redis_outage):
    """A rider's buffered fixes are refused with 503 and Retry-After, so the app keeps them and retries."""
    client = Client()
    client.force_login(demo.user("rider-gangnam-01"))
    body = {"positions": [{"lat": 37.5, "lng": 127.0, "ts": timezone.now().isoformat()}]}

    response = client.post("/api/v1/positions", json.dumps(body), content_type="application/json")

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert "detail" in response.json()


async def test_position_frame_is_refused_as_internal_while_redis_is_down(demo, redis_outage, settings, monkeypatch):
    """A socket `position` frame gets the protocol's retryable `internal` error, not a crash of the handler."""
    import redis.asyncio
    from channels.db import database_sync_to_async

    import riders.streams
    from core.access import access_for

    down = redis.asyncio.Redis.from_url(settings.REDIS_URL)  # the outage's closed port
    monkeypatch.setattr(riders.streams, "get_hub", lambda: type("Hub", (), {"redis": down})())
    access = await database_sync_to_async(lambda: access_for(demo.user("rider-gangnam-01")))()

    with pytest.raises(registry.FrameRefused) as refused:
        await accept_position_frame(access, {"lat": 37.5, "lng": 127.0})

    assert refused.value.code == "internal"
    await down.aclose()


def test_position_batches_publish_nothing_and_raise_nothing_while_redis_is_down(redis_outage):
    """The hub's once-a-second batch does not raise (and log a traceback) every second of an outage."""
    assert publish_position_batches() == 0

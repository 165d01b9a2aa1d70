"""Live positions (protocol §3 "Positions", §4 `POST /api/v1/positions`): fixes are validated, kept at
most once per rider per second, and batched into one `rider.positions` frame per center per second,
even with several processes taking fixes and publishing at once."""

import json
import math
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone
from ninja import NinjaAPI

from core.api_auth import API_AUTH
from core.models import ApiToken
from realtime.bus import channel_for, get_redis
from riders.api_positions import router as positions_router
from riders.models import PositionSample, Rider
from riders.positions import (
    Fix,
    InvalidFix,
    accept_fixes,
    current_positions,
    forget_position,
    parse_fix,
    positions_snapshot_frame,
    publish_position_batches,
    record_fix,
)

test_api = NinjaAPI(urls_namespace="test-positions", auth=API_AUTH)
test_api.add_router("", positions_router)
urlpatterns = [path("api/v1/", test_api.urls)]

NOW = datetime(2026, 11, 21, 9, 2, 3, 120000, tzinfo=UTC)
THREADS = 8


pytestmark = pytest.mark.usefixtures("no_live_positions")


def fix(seconds: float = 0, *, lat: float = 37.4979, lng: float = 127.0276, base: datetime = NOW) -> Fix:
    return Fix(lat=lat, lng=lng, accuracy=8.5, heading=90.0, speed=4.2, ts=base + timedelta(seconds=seconds))


def frame_at(seconds: float = 0, **fields) -> dict:
    ts = (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return {"type": "position", "lat": 37.4979, "lng": 127.0276, "accuracy": 8.5, "heading": 90, "ts": ts, **fields}


def in_threads(target, count: int = THREADS) -> list:
    """Run `target(i)` in `count` threads started together; return their results in thread order."""
    barrier = threading.Barrier(count)
    results, errors = [None] * count, []

    def run(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except Exception as exc:  # surfaced by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


class Listener:
    """A subscriber to one stream's bus channel that collects its messages."""

    def __init__(self, stream: str):
        self.pubsub = get_redis().pubsub()
        self.pubsub.subscribe(channel_for(stream))
        assert self.pubsub.get_message(timeout=2)["type"] == "subscribe"

    def messages(self, wait: float = 0.3) -> list[bytes]:
        """Return the messages received until none arrives for `wait` seconds."""
        received = []
        while (message := self.pubsub.get_message(timeout=wait)) is not None:
            received.append(message["data"])
        return received

    def frames(self, wait: float = 0.3) -> list[dict]:
        frames = []
        for data in self.messages(wait):
            seq, _, frame = data.partition(b"\n")
            assert seq == b"0"
            frames.append(json.loads(frame))
        return frames

    def close(self):
        self.pubsub.close()


@pytest.fixture
def gangnam_listener():
    listener = Listener("positions:gangnam")
    yield listener
    listener.close()


# parse_fix


def test_parse_fix_accepts_a_complete_fix():
    """A full position frame with a Z timestamp parses into a Fix in UTC."""
    parsed = parse_fix(frame_at(-2, speed=4.2), now=NOW)
    assert parsed == Fix(
        lat=37.4979, lng=127.0276, accuracy=8.5, heading=90.0, speed=4.2, ts=NOW - timedelta(seconds=2)
    )
    assert parsed.ts.utcoffset() == timedelta(0)


def test_parse_fix_accepts_only_lat_and_lng():
    """Optional fields default to None and a missing ts means the fix is as of now."""
    assert parse_fix({"lat": 0, "lng": 0}, now=NOW) == Fix(lat=0.0, lng=0.0, ts=NOW)


def test_parse_fix_accepts_bounds_and_offsets():
    """Range bounds are inclusive, ts may be up to 30 s ahead, and any UTC offset is accepted."""
    parsed = parse_fix(
        {"lat": -90, "lng": 180, "heading": 360, "accuracy": 0, "speed": 0, "ts": "2026-11-21T18:02:33.120+09:00"},
        now=NOW,
    )
    assert (parsed.lat, parsed.lng, parsed.heading) == (-90.0, 180.0, 360.0)
    assert parsed.ts == NOW + timedelta(seconds=30)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lat": 90.0001}, "lat"),
        ({"lat": -91}, "lat"),
        ({"lng": 180.5}, "lng"),
        ({"lng": -181}, "lng"),
        ({"lat": "37.49"}, "lat"),
        ({"lat": True}, "lat"),
        ({"lat": None}, "lat"),
        ({"lat": math.nan}, "lat"),
        ({"lng": math.inf}, "lng"),
        ({"lng": [127]}, "lng"),
        ({"accuracy": -1}, "accuracy"),
        ({"accuracy": "8"}, "accuracy"),
        ({"heading": 360.5}, "heading"),
        ({"heading": -1}, "heading"),
        ({"speed": -0.1}, "speed"),
        ({"speed": math.nan}, "speed"),
        ({"ts": (NOW + timedelta(seconds=31)).isoformat()}, "future"),
        ({"ts": (NOW - timedelta(minutes=11)).isoformat()}, "stale"),
        ({"ts": "2026-11-21T09:02:03"}, "time zone"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": 1763715723}, "ts"),
        ({"ts": "2026-11-21T09:02:03.120Z" + " " * 40}, "ts"),
        ({"altitude": 12}, "unknown field altitude"),
        ({"type": "ping"}, "type"),
    ],
)
def test_parse_fix_rejects_bad_field(fields, message):
    """Each out-of-range, ill-typed, non-finite, future, stale or unknown field raises InvalidFix naming it."""
    with pytest.raises(InvalidFix, match=message):
        parse_fix({**frame_at(), **fields}, now=NOW)


@pytest.mark.parametrize("data", [{"lng": 127.0}, [37.4, 127.0], "37.4,127.0", None])
def test_parse_fix_rejects_missing_lat_and_non_objects(data):
    """A fix without lat, or that is not an object at all, raises InvalidFix."""
    with pytest.raises(InvalidFix):
        parse_fix(data, now=NOW)


# accept_fixes


def test_accept_fixes_keeps_one_fix_per_second():
    """Ten fixes 100 ms apart keep only the first."""
    kept = accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(i / 10) for i in range(10)])
    assert kept == 1
    assert current_positions("gangnam")[0]["ts"] == "2026-11-21T09:02:03.120Z"


def test_accept_fixes_keeps_fixes_a_second_apart():
    """Fixes exactly 1.0 s apart are all kept, and the latest is the one stored."""
    assert accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(i) for i in range(5)]) == 5
    assert current_positions("gangnam")[0]["ts"] == "2026-11-21T09:02:07.120Z"


def test_accept_fixes_drops_out_of_order_fixes():
    """A fix older than the rider's last kept fix is dropped across calls and the newer one stays."""
    assert accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(5, lat=37.5)]) == 1
    assert accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(2, lat=37.2)]) == 0
    assert accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(5, lat=37.5)]) == 0
    assert accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(6, lat=37.6)]) == 1
    assert current_positions("gangnam")[0]["lat"] == 37.6


def test_accept_fixes_takes_one_call_in_time_order():
    """A buffered batch sent out of order is sorted first, so no fix of it is lost to the ordering."""
    assert accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(2, lat=2), fix(0, lat=0), fix(1, lat=1)]) == 3
    assert current_positions("gangnam")[0]["lat"] == 2


def test_accept_fixes_coalesces_each_rider_separately():
    """Riders do not share the once-per-second budget."""
    assert accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(0)]) == 1
    assert accept_fixes(rider_id=2, center_code="gangnam", fixes=[fix(0.1)]) == 1
    assert [p["rider"] for p in current_positions("gangnam")] == [1, 2]


def test_accept_fixes_stores_the_protocol_position_object():
    """The stored latest fix is compact JSON of the position object with a millisecond Z ts."""
    accept_fixes(rider_id=7, center_code="gangnam", fixes=[Fix(lat=37.5, lng=127.0, ts=NOW)])
    raw = get_redis().hget(f"{settings.REDIS_PREFIX}:pos:latest:gangnam", "7")
    assert raw == (
        b'{"rider":7,"lat":37.5,"lng":127.0,"accuracy":null,"heading":null,"speed":null,'
        b'"ts":"2026-11-21T09:02:03.120Z"}'
    )


def test_accept_fixes_concurrent_same_second_keeps_one():
    """Eight threads offering fixes of one rider within the same second keep exactly one between them."""
    kept = in_threads(lambda i: accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(j / 10) for j in range(10)]))
    assert sum(kept) == 1


def test_accept_fixes_concurrent_over_three_seconds_keeps_at_most_three():
    """Threads racing with interleaved fixes over 3 s keep at most one per second, at least one in all."""
    kept = in_threads(
        lambda i: accept_fixes(
            rider_id=1, center_code="gangnam", fixes=[fix(j / 10 + i / 100) for j in range(i % 3, 30, 3)]
        )
    )
    assert 1 <= sum(kept) <= 3


def test_record_fix_reports_whether_the_fix_was_kept():
    """record_fix keeps a first fix and refuses one 0.5 s later."""
    assert record_fix(rider_id=3, center_code="mapo", lat=37.55, lng=126.92, ts=NOW) is True
    assert record_fix(rider_id=3, center_code="mapo", lat=37.56, lng=126.93, ts=NOW + timedelta(seconds=0.5)) is False
    assert current_positions("mapo")[0]["lat"] == 37.55


# publish_position_batches


def test_publish_position_batches_sends_one_frame_with_each_riders_latest(demo, gangnam_listener):
    """One frame per center holds each moved rider's latest fix, in the protocol's shape, without seq."""
    one, two = demo.rider("gangnam", 1), demo.rider("gangnam", 2)
    accept_fixes(rider_id=one.pk, center_code="gangnam", fixes=[fix(0, lat=37.40), fix(1, lat=37.41)])
    accept_fixes(rider_id=two.pk, center_code="gangnam", fixes=[fix(0.5, lat=37.42)])
    assert publish_position_batches(now=NOW + timedelta(seconds=2)) == 1
    (frame,) = gangnam_listener.frames()
    common = {"lng": 127.0276, "accuracy": 8.5, "heading": 90.0, "speed": 4.2}
    assert frame == {
        "type": "event",
        "stream": "positions:gangnam",
        "event": "rider.positions",
        "ts": "2026-11-21T09:02:05.120Z",
        "data": {
            "positions": [
                {"rider": one.pk, "lat": 37.41, **common, "ts": "2026-11-21T09:02:04.120Z"},
                {"rider": two.pk, "lat": 37.42, **common, "ts": "2026-11-21T09:02:03.620Z"},
            ]
        },
    }


def test_publish_position_batches_one_frame_per_dirty_center(demo):
    """Two centers with moved riders get one frame each; the third, with none, gets nothing."""
    listeners = {code: Listener(f"positions:{code}") for code in ("gangnam", "mapo", "songpa")}
    try:
        record_fix(rider_id=demo.rider("gangnam", 1).pk, center_code="gangnam", lat=37.5, lng=127.0, ts=NOW)
        record_fix(rider_id=demo.rider("mapo", 1).pk, center_code="mapo", lat=37.55, lng=126.9, ts=NOW)
        assert publish_position_batches(now=NOW) == 2
        assert [len(listeners[code].messages()) for code in ("gangnam", "mapo", "songpa")] == [1, 1, 0]
    finally:
        for listener in listeners.values():
            listener.close()


def test_publish_position_batches_concurrent_callers_publish_once(demo_tx):
    """Eight processes ticking the same second publish exactly one frame for the center between them."""
    listener = Listener("positions:gangnam")
    try:
        for n in range(1, 6):
            record_fix(rider_id=demo_tx.rider("gangnam", n).pk, center_code="gangnam", lat=37.5, lng=127.0, ts=NOW)
        published = in_threads(lambda i: publish_position_batches(now=NOW + timedelta(seconds=1)))
        assert sum(published) == 1
        (frame,) = listener.frames(wait=0.5)
        assert len(frame["data"]["positions"]) == 5
    finally:
        listener.close()
    assert PositionSample.objects.count() == 5


def test_publish_position_batches_same_second_publishes_nothing_twice(demo, gangnam_listener):
    """A fix taken after this second's batch waits for the next second's batch."""
    rider = demo.rider("gangnam", 1)
    record_fix(rider_id=rider.pk, center_code="gangnam", lat=37.50, lng=127.0, ts=NOW)
    assert publish_position_batches(now=NOW) == 1
    record_fix(rider_id=rider.pk, center_code="gangnam", lat=37.51, lng=127.0, ts=NOW + timedelta(seconds=1))
    assert publish_position_batches(now=NOW + timedelta(milliseconds=500)) == 0
    assert publish_position_batches(now=NOW + timedelta(seconds=1)) == 1
    frames = gangnam_listener.frames()
    assert [f["data"]["positions"][0]["lat"] for f in frames] == [37.50, 37.51]


def test_publish_position_batches_publishes_nothing_without_moves(demo, gangnam_listener):
    """With no new fix since the last batch, later seconds publish nothing."""
    record_fix(rider_id=demo.rider().pk, center_code="gangnam", lat=37.5, lng=127.0, ts=NOW)
    assert publish_position_batches(now=NOW) == 1
    assert publish_position_batches(now=NOW + timedelta(seconds=1)) == 0
    assert publish_position_batches(now=NOW + timedelta(seconds=2)) == 0
    assert len(gangnam_listener.messages()) == 1
    assert not get_redis().smembers(f"{settings.REDIS_PREFIX}:pos:centers")


def test_publish_position_batches_updates_riders_latest_position(demo):
    """The batch writes each rider's last position columns with the published fix."""
    rider = demo.rider()
    record_fix(rider_id=rider.pk, center_code="gangnam", lat=37.51, lng=127.03, accuracy=6.0, ts=NOW)
    publish_position_batches(now=NOW)
    rider.refresh_from_db()
    assert (rider.last_lat, rider.last_lng, rider.last_accuracy, rider.last_position_at) == (37.51, 127.03, 6.0, NOW)


def test_publish_position_batches_keeps_a_newer_stored_position(demo):
    """A batch never overwrites a rider's stored position with an older one."""
    rider = demo.rider()
    Rider.objects.filter(pk=rider.pk).update(last_lat=1.0, last_position_at=NOW + timedelta(seconds=5))
    record_fix(rider_id=rider.pk, center_code="gangnam", lat=37.51, lng=127.03, ts=NOW)
    publish_position_batches(now=NOW)
    rider.refresh_from_db()
    assert rider.last_lat == 1.0


def test_publish_position_batches_samples_each_rider_at_most_every_15_s(demo):
    """A rider moving every second for 31 s gets a history sample at 0, 15 and 30 s only."""
    rider = demo.rider()
    for second in range(31):
        ts = NOW + timedelta(seconds=second)
        record_fix(rider_id=rider.pk, center_code="gangnam", lat=37.5 + second / 1000, lng=127.0, ts=ts)
        assert publish_position_batches(now=ts) == 1
    samples = PositionSample.objects.filter(rider=rider).order_by("recorded_at")
    assert [s.recorded_at for s in samples] == [NOW + timedelta(seconds=s) for s in (0, 15, 30)]
    assert samples[1].lat == pytest.approx(37.515)
    assert (samples[0].heading, samples[0].speed) == (None, None)


def test_publish_position_batches_constant_queries(demo, django_assert_max_num_queries):
    """Storing a batch takes the same few queries for one rider or for a whole center."""
    riders = list(Rider.objects.filter(center__code="gangnam"))
    record_fix(rider_id=riders[0].pk, center_code="gangnam", lat=37.5, lng=127.0, ts=NOW)
    with django_assert_max_num_queries(5):
        publish_position_batches(now=NOW)
    for rider in riders:
        record_fix(rider_id=rider.pk, center_code="gangnam", lat=37.5, lng=127.0, ts=NOW + timedelta(seconds=20))
    with django_assert_max_num_queries(5):
        publish_position_batches(now=NOW + timedelta(seconds=20))
    assert PositionSample.objects.filter(rider__center__code="gangnam").count() == len(riders) + 1


def test_publish_position_batches_skips_riders_that_do_not_exist(demo, gangnam_listener):
    """A fix of an unknown rider id is still published live but stores nothing and breaks nothing."""
    rider = demo.rider()
    record_fix(rider_id=rider.pk, center_code="gangnam", lat=37.5, lng=127.0, ts=NOW)
    record_fix(rider_id=10**9, center_code="gangnam", lat=37.6, lng=127.0, ts=NOW)
    assert publish_position_batches(now=NOW) == 1
    assert PositionSample.objects.filter(recorded_at=NOW).count() == 1
    assert len(gangnam_listener.frames()[0]["data"]["positions"]) == 2


# current_positions and the snapshot frame


def test_current_positions_returns_every_riders_latest(demo):
    """Each rider of the center with a fix is listed once with their latest fix, by id, batches or not."""
    for rider_id in (3, 1, 2):
        accept_fixes(rider_id=rider_id, center_code="gangnam", fixes=[fix(0, lat=rider_id), fix(1, lat=rider_id + 0.5)])
    accept_fixes(rider_id=4, center_code="mapo", fixes=[fix(0)])
    publish_position_batches(now=NOW + timedelta(seconds=1))
    assert [(p["rider"], p["lat"]) for p in current_positions("gangnam")] == [(1, 1.5), (2, 2.5), (3, 3.5)]
    assert current_positions("songpa") == []


def test_positions_snapshot_frame_has_the_batch_shape():
    """The snapshot is an encoded rider.positions event with everyone's latest and no seq."""
    accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(0)])
    frame = json.loads(positions_snapshot_frame("gangnam", now=NOW))
    assert frame == {
        "type": "event",
        "stream": "positions:gangnam",
        "event": "rider.positions",
        "ts": "2026-11-21T09:02:03.120Z",
        "data": {"positions": current_positions("gangnam")},
    }
    assert json.loads(positions_snapshot_frame("songpa"))["data"] == {"positions": []}


def test_forget_position_removes_the_rider_from_the_center():
    """A forgotten rider leaves the center's current positions."""
    accept_fixes(rider_id=1, center_code="gangnam", fixes=[fix(0)])
    accept_fixes(rider_id=2, center_code="gangnam", fixes=[fix(0)])
    forget_position(rider_id=1, center_code="gangnam")
    assert [p["rider"] for p in current_positions("gangnam")] == [2]


# POST /api/v1/positions


def post(client: Client, body, **kwargs):
    content = body if isinstance(body, str) else json.dumps(body)
    return client.post("/api/v1/positions", content, content_type="application/json", **kwargs)


def recent(seconds: float, **fields) -> dict:
    ts = (timezone.now() + timedelta(seconds=seconds)).isoformat()
    return {"lat": 37.4979, "lng": 127.0276, "accuracy": 8.5, "ts": ts, **fields}


@pytest.fixture
def rider_client(demo):
    client = Client()
    client.force_login(demo.user("rider-gangnam-01"))
    return client


@override_settings(ROOT_URLCONF=__name__)
def test_post_positions_accepts_a_riders_fixes(demo, rider_client):
    """A rider's valid fixes are coalesced and stored; invalid entries are listed by index."""
    body = {"positions": [recent(-3), recent(-2.9), recent(-2, lat=91), recent(-1), "nonsense"]}
    response = post(rider_client, body)
    assert response.status_code == 202
    assert response.json() == {
        "accepted": 2,
        "dropped": 1,
        "errors": [
            {"index": 2, "msg": "lat must be between -90 and 90"},
            {"index": 4, "msg": "a position must be an object"},
        ],
    }
    assert [p["rider"] for p in current_positions("gangnam")] == [demo.rider("gangnam", 1).pk]


@override_settings(ROOT_URLCONF=__name__)
def test_post_positions_all_invalid_is_still_accepted(rider_client):
    """A well-formed body whose entries are all invalid answers 202 with nothing accepted."""
    response = post(rider_client, {"positions": [recent(60), recent(-700)]})
    assert response.status_code == 202
    assert response.json() == {
        "accepted": 0,
        "dropped": 0,
        "errors": [{"index": 0, "msg": "ts is in the future"}, {"index": 1, "msg": "stale"}],
    }


@override_settings(ROOT_URLCONF=__name__)
def test_post_positions_refuses_a_dispatcher(demo):
    """Only riders send positions: a dispatcher gets 403 and nothing is stored."""
    client = Client()
    client.force_login(demo.user("dispatch-gangnam"))
    response = post(client, {"positions": [recent(-1)]})
    assert response.status_code == 403
    assert "detail" in response.json()
    assert current_positions("gangnam") == []


@override_settings(ROOT_URLCONF=__name__)
def test_post_positions_refuses_an_api_token(demo):
    """An integration token, whatever its scope, gets 403."""
    raw, digest = ApiToken.generate()
    ApiToken.objects.create(
        name="gps", digest=digest, hint=raw[:12], commands=["positions"], streams=["positions:gangnam"]
    )
    response = post(Client(), {"positions": [recent(-1)]}, headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 403


@override_settings(ROOT_URLCONF=__name__)
def test_post_positions_refuses_anonymous(db):
    """Without a session or token the answer is 401."""
    assert post(Client(), {"positions": [recent(-1)]}).status_code == 401


@override_settings(ROOT_URLCONF=__name__)
def test_post_positions_refuses_too_many_entries(rider_client):
    """More than 500 entries in one request answers 413 and stores nothing."""
    response = post(rider_client, {"positions": [recent(-1)] * 501})
    assert response.status_code == 413
    assert "500" in response.json()["detail"]
    assert current_positions("gangnam") == []


@override_settings(ROOT_URLCONF=__name__)
@pytest.mark.parametrize("body", ['{"positions": 5}', "[]", "{}", '{"positions": {"lat": 1}}', '{"positions": null}'])
def test_post_positions_refuses_a_malformed_body(rider_client, body):
    """A JSON body that is not `{"positions": [...]}` answers 422."""
    response = post(rider_client, body)
    assert response.status_code == 422
    assert "detail" in response.json()


@override_settings(ROOT_URLCONF=__name__)
def test_post_positions_refuses_a_body_that_is_not_json(rider_client):
    """A body that is not JSON at all answers 400 (the API-wide answer to unparsable input)."""
    response = post(rider_client, '{"positions": [')
    assert response.status_code == 400
    assert "detail" in response.json()

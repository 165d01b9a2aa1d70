"""Assignment suggestions (design.md "Assignment suggestions explain themselves"): on-duty riders of a
center ranked by distance to the shop, load and GPS freshness, each with its reason; and the riders
panel rows the dispatcher page carries so the dialog opens without a round trip."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from riders.models import Rider
from riders.positions import record_fix
from riders.services import set_rider_duty
from riders.suggestions import (
    LOAD_PENALTY_KM,
    Suggestion,
    haversine_km,
    rider_board_rows,
    rider_status,
    suggest_riders,
)

# 12:04:30 in Seoul (settings.TIME_ZONE, UTC+9).
NOW = datetime(2026, 11, 21, 3, 4, 30, tzinfo=UTC)
KM_PER_DEGREE_LAT = 111.195  # haversine_km's Earth radius × π / 180
SHOP = (37.5003, 127.0365)  # Gangnam Fried Chicken, the first Gangnam demo shop


pytestmark = pytest.mark.usefixtures("no_live_positions")


def north_of_shop(km: float) -> tuple[float, float]:
    return SHOP[0] + km / KM_PER_DEGREE_LAT, SHOP[1]


def rider(demo, number: int, *, code: str = "gangnam", km: float | None = None, age_s: float | None = 5, load=0):
    """Put a demo rider on duty `km` north of the shop (None: no position) with a stored fix `age_s` old."""
    r = demo.rider(code, number)
    lat, lng = north_of_shop(km) if km is not None else (None, None)
    at = None if km is None or age_s is None else NOW - timedelta(seconds=age_s)
    Rider.objects.filter(pk=r.pk).update(on_duty=True, load=load, last_lat=lat, last_lng=lng, last_position_at=at)
    return r


def suggest(**kwargs) -> list[Suggestion]:
    return suggest_riders(center_code="gangnam", lat=SHOP[0], lng=SHOP[1], now=NOW, **kwargs)


def ranked_ids(**kwargs) -> list[int]:
    return [s.rider_id for s in suggest(**kwargs)]


def reason_of(demo, **placement) -> str:
    r = rider(demo, 1, **placement)
    (suggestion,) = suggest()
    assert suggestion.rider_id == r.pk
    return suggestion.reason


# haversine_km


def test_haversine_km_seoul_city_hall_to_gangnam_station():
    """Seoul City Hall to Gangnam station is about 8.9 km as the crow flies."""
    assert haversine_km(37.5663, 126.9779, 37.4979, 127.0276) == pytest.approx(8.9, abs=0.3)


def test_haversine_km_is_zero_for_one_point_and_symmetric():
    """The distance from a point to itself is 0, and A→B equals B→A."""
    assert haversine_km(*SHOP, *SHOP) == 0
    a, b = (37.5563, 126.9236), (37.5145, 127.1059)
    assert haversine_km(*a, *b) == pytest.approx(haversine_km(*b, *a))
    assert haversine_km(*SHOP, *north_of_shop(1.0)) == pytest.approx(1.0, abs=0.001)


# ranking


def test_suggest_riders_ranks_nearer_rider_first(demo):
    """With equal load and fresh GPS, the rider nearer the shop comes first; score is the distance."""
    far, near, middle = rider(demo, 1, km=3.0), rider(demo, 2, km=0.4), rider(demo, 3, km=1.2)
    suggestions = suggest()
    assert [s.rider_id for s in suggestions] == [near.pk, middle.pk, far.pk]
    assert [s.score for s in suggestions] == pytest.approx([0.4, 1.2, 3.0], abs=0.001)
    assert all(not s.stale for s in suggestions)


def test_suggest_riders_idle_rider_beats_busy_one_closer_by_less_than_the_load_penalty(demo):
    """Each active delivery counts as 1.5 km: 2 active at 0.5 km (3.5) ranks after idle at 2.0 km."""
    busy = rider(demo, 1, km=0.5, load=2)
    idle = rider(demo, 2, km=2.0)
    suggestions = suggest()
    assert [s.rider_id for s in suggestions] == [idle.pk, busy.pk]
    assert suggestions[1].score == pytest.approx(0.5 + 2 * LOAD_PENALTY_KM, abs=0.001)


def test_suggest_riders_busy_rider_beats_idle_one_farther_by_more_than_the_load_penalty(demo):
    """1 active at 0.5 km (2.0) still ranks before an idle rider 3.0 km away: load only penalises."""
    busy = rider(demo, 1, km=0.5, load=1)
    idle = rider(demo, 2, km=3.0)
    assert ranked_ids() == [busy.pk, idle.pk]


def test_suggest_riders_ranks_stale_gps_after_every_fresh_rider(demo):
    """A rider last seen 60 s ago next to the shop ranks after a fresh, busy rider 6 km away."""
    stale_near = rider(demo, 1, km=0.2, age_s=60)
    fresh_far = rider(demo, 2, km=6.0, load=3)
    stale_far = rider(demo, 3, km=1.0, age_s=600)
    suggestions = suggest()
    assert [s.rider_id for s in suggestions] == [fresh_far.pk, stale_near.pk, stale_far.pk]
    assert [s.stale for s in suggestions] == [False, True, True]
    assert suggestions[1].gps_age_s == pytest.approx(60)


def test_suggest_riders_ranks_riders_without_position_last(demo):
    """A rider with no position at all ranks after stale and busy riders, even when idle."""
    unknown = rider(demo, 1, km=None)
    stale_busy = rider(demo, 2, km=4.0, age_s=900, load=4)
    fresh = rider(demo, 3, km=2.0)
    suggestions = suggest()
    assert [s.rider_id for s in suggestions] == [fresh.pk, stale_busy.pk, unknown.pk]
    last = suggestions[-1]
    assert (last.distance_km, last.gps_age_s, last.stale) == (None, None, True)


def test_suggest_riders_position_without_time_is_stale(demo):
    """A stored position with no timestamp (as the demo data has) counts as stale, not as no position."""
    untimed = rider(demo, 1, km=0.3, age_s=None)
    unknown = rider(demo, 2, km=None)
    fresh = rider(demo, 3, km=5.0)
    suggestions = suggest()
    assert [s.rider_id for s in suggestions] == [fresh.pk, untimed.pk, unknown.pk]
    assert suggestions[1].stale and suggestions[1].gps_age_s is None
    assert suggestions[1].distance_km == pytest.approx(0.3, abs=0.001)


def test_suggest_riders_exactly_at_threshold_is_fresh_and_threshold_comes_from_settings(demo):
    """GPS exactly 45 s old is still fresh; RIDER_GPS_STALE_SECONDS moves the line."""
    r = rider(demo, 1, km=1.0, age_s=45)
    (suggestion,) = suggest()
    assert not suggestion.stale
    Rider.objects.filter(pk=r.pk).update(last_position_at=NOW - timedelta(seconds=46))
    assert suggest()[0].stale
    with override_settings(RIDER_GPS_STALE_SECONDS=120):
        assert not suggest()[0].stale


def test_suggest_riders_breaks_score_ties_by_name_then_id(demo):
    """Riders at the same spot with the same load are listed by name, so the list does not shuffle."""
    riders = [rider(demo, n, km=1.0) for n in (1, 2, 3, 4)]
    suggestions = suggest()
    expected = sorted(riders, key=lambda r: (r.name, r.pk))
    assert [s.rider_id for s in suggestions] == [r.pk for r in expected]


def test_suggest_riders_excludes_off_duty_and_other_center_riders(demo):
    """Only on-duty riders of the asked center are suggested."""
    on = rider(demo, 1, km=1.0)
    rider(demo, 2, km=0.1)
    Rider.objects.filter(pk=demo.rider("gangnam", 2).pk).update(on_duty=False)
    rider(demo, 1, code="mapo", km=0.1)
    assert demo.rider("gangnam", 3).on_duty is False  # the rest stay off duty
    assert ranked_ids() == [on.pk]


def test_suggest_riders_includes_rider_put_on_duty_by_the_service(demo):
    """A rider whose shift started through set_rider_duty is suggested, with the demo position."""
    r = demo.rider("gangnam", 7)
    set_rider_duty(actor=None, rider_id=r.pk, on_duty=True)
    (suggestion,) = suggest()
    assert (suggestion.rider_id, suggestion.status, suggestion.load) == (r.pk, "available", 0)
    assert suggestion.distance_km == pytest.approx(haversine_km(r.last_lat, r.last_lng, *SHOP))


def test_suggest_riders_limit_keeps_the_best(demo):
    """`limit` returns only the first riders of the ranking."""
    ids = [rider(demo, n, km=float(n)).pk for n in range(1, 6)]
    assert ranked_ids(limit=2) == ids[:2]
    assert ranked_ids(limit=0) == []
    assert ranked_ids(limit=50) == ids


def test_suggest_riders_reports_status_from_load(demo):
    """Status is available for an idle on-duty rider and busy for one with deliveries, as on the model."""
    idle, busy = rider(demo, 1, km=1.0), rider(demo, 2, km=2.0, load=1)
    by_id = {s.rider_id: s.status for s in suggest()}
    assert by_id == {idle.pk: "available", busy.pk: "busy"}


def test_rider_status_matches_the_model_property():
    """rider_status mirrors Rider.status for every duty and load."""
    for on_duty in (False, True):
        for load in (0, 1, 3):
            assert rider_status(on_duty=on_duty, load=load) == Rider(on_duty=on_duty, load=load).status


# reasons


@pytest.mark.parametrize(
    ("placement", "reason"),
    [
        ({"km": 1.23, "age_s": 4, "load": 2}, "1.2 km · 2 active · GPS 4 s ago"),
        ({"km": 1.0, "age_s": 4.9, "load": 1}, "1.0 km · 1 active · GPS 4 s ago"),
        ({"km": 0.05, "age_s": 0, "load": 0}, "< 0.1 km · idle · GPS 0 s ago"),
        ({"km": 12.345, "age_s": 44, "load": 0}, "12.3 km · idle · GPS 44 s ago"),
        ({"km": 2.0, "age_s": 90, "load": 0}, "2.0 km · idle · last seen 12:03"),
        ({"km": 2.0, "age_s": 30 * 60, "load": 1}, "2.0 km · 1 active · last seen 11:34"),
        ({"km": 2.0, "age_s": 13 * 3600, "load": 0}, "2.0 km · idle · last seen 20 Nov 23:04"),
        ({"km": 0.5, "age_s": None, "load": 0}, "0.5 km · idle · GPS time unknown"),
        ({"km": None, "load": 0}, "no GPS · idle"),
        ({"km": None, "load": 3}, "no GPS · 3 active"),
    ],
)
def test_suggest_riders_reason_text(demo, placement, reason):
    """The reason reads "1.2 km · 2 active · GPS 4 s ago", with "last seen HH:MM" (Seoul time) when stale."""
    assert reason_of(demo, **placement) == reason


def test_suggest_riders_reason_counts_minutes_when_threshold_allows(demo):
    """With a longer stale threshold, a fix minutes old reads "GPS 3 min ago"."""
    with override_settings(RIDER_GPS_STALE_SECONDS=600):
        assert reason_of(demo, km=1.2, age_s=200, load=0) == "1.2 km · idle · GPS 3 min ago"


def test_suggest_riders_reason_clamps_a_fix_from_a_fast_phone_clock(demo):
    """A fix stamped a few seconds in the future is "GPS 0 s ago", never negative."""
    assert reason_of(demo, km=1.2, age_s=-3, load=0) == "1.2 km · idle · GPS 0 s ago"


# live positions


def test_suggest_riders_prefers_live_redis_position_over_stored_columns(demo):
    """The latest fix in Redis decides distance and age; the lagging DB columns do not."""
    moved = rider(demo, 1, km=5.0, age_s=30)  # stored: far away, 30 s ago
    other = rider(demo, 2, km=1.0)
    lat, lng = north_of_shop(0.3)
    assert record_fix(rider_id=moved.pk, center_code="gangnam", lat=lat, lng=lng, ts=NOW - timedelta(seconds=4))
    suggestions = suggest()
    assert [s.rider_id for s in suggestions] == [moved.pk, other.pk]
    assert suggestions[0].distance_km == pytest.approx(0.3, abs=0.001)
    assert suggestions[0].reason == "0.3 km · idle · GPS 4 s ago"


def test_suggest_riders_live_position_revives_a_stale_rider(demo):
    """A rider stale in the database but with a fresh live fix is fresh."""
    r = rider(demo, 1, km=2.0, age_s=None)
    lat, lng = north_of_shop(2.0)
    record_fix(rider_id=r.pk, center_code="gangnam", lat=lat, lng=lng, ts=NOW - timedelta(seconds=2))
    (suggestion,) = suggest()
    assert not suggestion.stale and suggestion.gps_age_s == pytest.approx(2)


def test_suggest_riders_keeps_a_stored_position_newer_than_the_live_one(demo):
    """If the columns are newer than the live fix (the hash was left behind), the newer one wins."""
    r = rider(demo, 1, km=1.0, age_s=3)
    lat, lng = north_of_shop(8.0)
    record_fix(rider_id=r.pk, center_code="gangnam", lat=lat, lng=lng, ts=NOW - timedelta(seconds=20))
    (suggestion,) = suggest()
    assert suggestion.distance_km == pytest.approx(1.0, abs=0.001)
    assert suggestion.gps_age_s == pytest.approx(3)


def test_suggest_riders_uses_given_positions_instead_of_redis(demo):
    """Positions passed by the caller replace the Redis read (no Redis round trip)."""
    r = rider(demo, 1, km=5.0, age_s=30)
    lat, lng = north_of_shop(8.0)
    record_fix(rider_id=r.pk, center_code="gangnam", lat=lat, lng=lng, ts=NOW - timedelta(seconds=1))
    given = {r.pk: {"rider": r.pk, "lat": north_of_shop(0.7)[0], "lng": SHOP[1], "ts": "2026-11-21T03:04:28.000Z"}}
    (suggestion,) = suggest(positions=given)
    assert suggestion.reason == "0.7 km · idle · GPS 2 s ago"
    (suggestion,) = suggest(positions={})  # nothing live: the stored columns
    assert suggestion.distance_km == pytest.approx(5.0, abs=0.001)


# cost


@pytest.mark.parametrize("count", [5, 20])
def test_suggest_riders_costs_one_query_whatever_the_rider_count(demo, django_assert_num_queries, count):
    """One database query for 5 or 20 on-duty riders, with live positions for half of them."""
    riders = [rider(demo, n, km=0.1 * n) for n in range(1, count + 1)]
    for r in riders[::2]:
        record_fix(rider_id=r.pk, center_code="gangnam", lat=SHOP[0], lng=SHOP[1], ts=NOW - timedelta(seconds=1))
    with django_assert_num_queries(1):
        suggestions = suggest()
    assert len(suggestions) == count


# rider_board_rows


def test_rider_board_rows_lists_every_rider_with_off_duty_and_stale_marked(demo):
    """All 20 Gangnam riders, on and off duty, by name; stale or missing GPS is marked; JSON-able."""
    fresh = rider(demo, 1, km=1.0, age_s=5, load=2)
    stale = rider(demo, 2, km=1.0, age_s=120)
    off = demo.rider("gangnam", 3)
    lat, lng = north_of_shop(0.5)
    record_fix(rider_id=off.pk, center_code="gangnam", lat=lat, lng=lng, ts=NOW - timedelta(seconds=3))
    rows = rider_board_rows(center_code="gangnam", now=NOW)
    assert len(rows) == 20
    assert [row["name"] for row in rows] == sorted(row["name"] for row in rows)
    json.dumps(rows)
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == set(Rider.objects.filter(center__code="gangnam").values_list("pk", flat=True))
    assert by_id[fresh.pk] | {"lat": None, "lng": None} == {
        "id": fresh.pk,
        "name": fresh.name,
        "status": "busy",
        "load": 2,
        "vehicle": fresh.vehicle,
        "lat": None,
        "lng": None,
        "gps_age_s": 5.0,
        "stale": False,
        "last_seen": "2026-11-21T03:04:25.000Z",
        "version": fresh.version,
    }
    assert by_id[fresh.pk]["lat"] == pytest.approx(north_of_shop(1.0)[0])
    assert (by_id[stale.pk]["stale"], by_id[stale.pk]["gps_age_s"]) == (True, 120.0)
    assert by_id[off.pk]["status"] == "offline"
    assert (by_id[off.pk]["lat"], by_id[off.pk]["gps_age_s"], by_id[off.pk]["stale"]) == (lat, 3.0, False)
    untouched = by_id[demo.rider("gangnam", 4).pk]  # demo data: a position without a time
    assert untouched["status"] == "offline" and untouched["stale"] and untouched["last_seen"] is None
    assert untouched["lat"] is not None and untouched["gps_age_s"] is None


def test_rider_board_rows_excludes_other_centers(demo):
    """Rows are the asked center's riders only."""
    mapo = {r.pk for r in Rider.objects.filter(center__code="mapo")}
    assert not mapo & {row["id"] for row in rider_board_rows(center_code="gangnam", now=NOW)}


def test_rider_board_rows_costs_one_query(demo, django_assert_num_queries):
    """One query for the whole center, live positions or not."""
    record_fix(rider_id=demo.rider("gangnam", 1).pk, center_code="gangnam", lat=SHOP[0], lng=SHOP[1], ts=NOW)
    with django_assert_num_queries(1):
        rows = rider_board_rows(center_code="gangnam", now=NOW)
    assert len(rows) == 20

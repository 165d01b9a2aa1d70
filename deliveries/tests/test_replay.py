"""The shift replay: reconstruction from records, equality with the live board captured at T, the pages, refusals."""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core.exceptions import CommandRefused
from deliveries import replay, services
from deliveries.models import Delivery
from deliveries.selectors import BoardFilter, board_counts, board_window
from deliveries.simulation import Simulation
from riders.models import PositionSample
from riders.services import set_rider_duty
from tests.support import ORDER_FIELDS

DAY = date(2026, 1, 15)


class Clock:
    """The time every service, `auto_now` field and timeline entry sees: set to a local time of DAY."""

    def __init__(self):
        self.now = None

    def at(self, hhmm: str, day: date = DAY) -> datetime:
        hours, minutes = map(int, hhmm.split(":"))
        self.now = timezone.make_aware(datetime.combine(day, time(hours, minutes)))
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    c.at("09:00")
    monkeypatch.setattr(timezone, "now", lambda: c.now)
    return c


def local(hhmm: str, day: date = DAY) -> datetime:
    hours, minutes = map(int, hhmm.split(":"))
    return timezone.make_aware(datetime.combine(day, time(hours, minutes)))


def order(demo, clock, at: str, *, promised: str = "23:00", center: str = "gangnam", shop: int = 0) -> Delivery:
    clock.at(at)
    placed = services.create_order(
        actor=None, shop_id=demo.shop(center, shop).pk, promised_at=local(promised), **ORDER_FIELDS
    )
    return placed.delivery


def step(clock, at: str, service, **kwargs):
    clock.at(at)
    return service(actor=kwargs.pop("actor", None), **kwargs)


def on_duty(demo, *numbers: int, center: str = "gangnam"):
    riders = [demo.rider(center, n) for n in numbers]
    for rider in riders:
        set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    return riders


def row_of(board: replay.BoardAt, delivery_id: int) -> replay.ReplayRow | None:
    return next((row for row in board.rows if row.id == delivery_id), None)


# ---- reconstruction from hand-built records -------------------------------------------------


def test_board_at_follows_a_delivery_through_assign_reassign_and_cancel(demo, clock):
    """At each moment the row has the status, rider and version the delivery had then, not its final ones."""
    r1, r2 = on_duty(demo, 1, 2)
    d = order(demo, clock, "10:00")
    step(clock, "10:05", services.assign_delivery, delivery_id=d.pk, rider_id=r1.pk)
    step(clock, "10:10", services.assign_delivery, delivery_id=d.pk, rider_id=r2.pk)
    step(clock, "10:20", services.cancel_order, order_id=d.order_id, reason="Customer called")
    clock.at("12:00")
    center = demo.center()

    expected = {
        "10:02": ("waiting", None, "", 1),
        "10:05": ("assigned", r1.pk, r1.name, 2),
        "10:07": ("assigned", r1.pk, r1.name, 2),
        "10:15": ("assigned", r2.pk, r2.name, 3),
        "10:30": ("cancelled", r2.pk, r2.name, 4),
    }
    for at, (status, rider_id, rider_name, version) in expected.items():
        row = row_of(replay.board_at(center, local(at)), d.pk)
        assert (row.status, row.rider_id, row.rider_name, row.version) == (status, rider_id, rider_name, version), at


def test_board_at_version_follows_a_shop_change_as_the_live_board_does(demo, clock):
    """Renaming the shop bumps the delivery's version with a timeline entry: the replay after it has that version."""
    d = order(demo, clock, "10:00")
    shop = demo.shop()
    clock.at("10:10")
    services.save_shop(
        actor=demo.user("hq"),
        shop_id=shop.pk,
        center_id=shop.center_id,
        name=shop.name + " (new)",
        address=shop.address,
        lat=shop.lat,
        lng=shop.lng,
        phone=shop.phone,
        prep_minutes=shop.prep_minutes,
    )
    d.refresh_from_db()
    center = demo.center()

    assert d.version == 2
    assert row_of(replay.board_at(center, local("10:05")), d.pk).version == 1
    assert row_of(replay.board_at(center, local("10:15")), d.pk).version == 2
    (changed, created) = replay.board_at(center, local("10:15")).events
    assert (changed.action, changed.actor_label, created.action) == ("shop_changed", "HQ Ops", "created")


def test_board_at_shows_an_unassigned_delivery_without_its_former_rider(demo, clock):
    """Unassigning clears the rider at that moment; before it the rider is shown."""
    (r1,) = on_duty(demo, 1)
    d = order(demo, clock, "10:00")
    step(clock, "10:05", services.assign_delivery, delivery_id=d.pk, rider_id=r1.pk)
    step(clock, "10:08", services.unassign_delivery, delivery_id=d.pk)
    center = demo.center()

    assert row_of(replay.board_at(center, local("10:06")), d.pk).rider_id == r1.pk
    after = row_of(replay.board_at(center, local("10:09")), d.pk)
    assert (after.status, after.rider_id, after.rider_name) == ("waiting", None, "")


def test_board_at_counts_a_delivered_delivery_only_once_it_is_delivered(demo, clock):
    """Picked up at T counts as picked up; after delivery, as delivered."""
    (r1,) = on_duty(demo, 1)
    d = order(demo, clock, "10:00")
    step(clock, "10:05", services.assign_delivery, delivery_id=d.pk, rider_id=r1.pk)
    step(clock, "10:15", services.pick_up_delivery, delivery_id=d.pk)
    step(clock, "10:30", services.deliver_delivery, delivery_id=d.pk)
    center = demo.center()

    during = replay.board_at(center, local("10:20"))
    assert (during.counts["picked_up"], during.counts["delivered"]) == (1, 0)
    after = replay.board_at(center, local("10:31"))
    assert (after.counts["picked_up"], after.counts["delivered"]) == (0, 1)
    assert row_of(after, d.pk).rider_id == r1.pk


def test_board_at_leaves_out_deliveries_created_after_the_moment(demo, clock):
    """A delivery ordered after T is not on the board at T, nor in its counts."""
    early = order(demo, clock, "10:00")
    late = order(demo, clock, "11:00")
    board = replay.board_at(demo.center(), local("10:30"))

    assert [row.id for row in board.rows] == [early.pk]
    assert board.counts["all"] == 1
    assert late.pk not in [event.delivery_id for event in board.events]


def test_board_at_shows_only_the_moments_own_center(demo, clock):
    """Another center's deliveries and events are never in a replay."""
    order(demo, clock, "10:00", center="mapo")
    board = replay.board_at(demo.center("gangnam"), local("10:30"))
    assert (board.rows, board.events, board.counts["all"]) == ([], [], 0)


def test_board_at_urgency_is_the_boards_rule_at_that_moment(demo, clock, settings):
    """A waiting delivery is not urgent at first, unassigned too long later, then past its ready time, then late."""
    settings.SLA_UNASSIGNED_MINUTES = 2
    d = order(demo, clock, "10:00", promised="10:50")
    prep = demo.shop().prep_minutes
    assert 3 < prep < 49, "the shop's preparation time must fall between the SLA and the promise"
    center = demo.center()

    def urgency(after: timedelta) -> int:
        return row_of(replay.board_at(center, local("10:00") + after), d.pk).urgency

    assert urgency(timedelta(minutes=1)) == 0
    assert urgency(timedelta(minutes=2, seconds=30)) == 1
    assert urgency(timedelta(minutes=prep, seconds=30)) == 2
    assert urgency(timedelta(minutes=51)) == 3


def test_event_list_says_who_did_what_and_when_newest_first(demo, clock):
    """The events before T, newest first, with the actor, the action and the rider named."""
    (r1,) = on_duty(demo, 1)
    dispatcher = demo.user("dispatch-gangnam")
    d = order(demo, clock, "10:00")
    step(clock, "10:05", services.assign_delivery, delivery_id=d.pk, rider_id=r1.pk, actor=dispatcher)
    step(clock, "10:06", services.pick_up_delivery, delivery_id=d.pk)

    events = replay.board_at(demo.center(), local("10:05")).events
    assert [(e.action, e.at) for e in events] == [("assigned", local("10:05")), ("created", local("10:00"))]
    assigned = events[0]
    assert (assigned.actor_label, assigned.rider_name, assigned.order_id) == ("Dispatch Gangnam", r1.name, d.order_id)


def test_riders_at_places_each_rider_at_their_latest_sample_up_to_the_moment(demo, clock):
    """The latest sample at or before T wins; a later one is ignored; none within the window leaves the rider off."""
    r1, r2 = demo.rider("gangnam", 1), demo.rider("gangnam", 2)
    PositionSample.objects.create(rider=r1, lat=37.50, lng=127.0, recorded_at=local("10:00"))
    PositionSample.objects.create(rider=r1, lat=37.51, lng=127.0, recorded_at=local("10:01"))
    PositionSample.objects.create(rider=r1, lat=37.52, lng=127.0, recorded_at=local("10:03"))
    PositionSample.objects.create(rider=r2, lat=37.40, lng=127.0, recorded_at=local("09:00"))

    riders = replay.riders_at(demo.center(), local("10:02"))
    assert [(r.id, r.lat, r.stale) for r in riders] == [(r1.pk, 37.51, True)]
    (fresh,) = replay.riders_at(demo.center(), local("10:01") + timedelta(seconds=10))
    assert (fresh.lat, fresh.stale) == (37.51, False)


def test_delivery_at_gives_the_timeline_up_to_the_moment_only(demo, clock):
    """The delivery's timeline stops at T, and its status is the one it had then."""
    (r1,) = on_duty(demo, 1)
    d = order(demo, clock, "10:00")
    step(clock, "10:05", services.assign_delivery, delivery_id=d.pk, rider_id=r1.pk)
    step(clock, "10:15", services.pick_up_delivery, delivery_id=d.pk)

    then = replay.delivery_at(demo.center(), d.pk, local("10:10"))
    assert [e.action for e in then.events] == ["created", "assigned"]
    assert (then.status, then.rider_name) == ("assigned", r1.name)
    assert replay.delivery_at(demo.center(), d.pk, local("09:59")) is None
    assert replay.delivery_at(demo.center("mapo"), d.pk, local("10:10")) is None


def test_board_at_query_count_does_not_grow_with_the_deliveries(demo, clock):
    """Rows, counts, positions and events take the same number of queries for 2 deliveries or 30."""
    (r1,) = on_duty(demo, 1)
    center = demo.center()

    def queries_for_board() -> int:
        with CaptureQueriesContext(connection) as captured:
            replay.board_at(center, clock.now)
        return len(captured)

    for n in range(2):
        d = order(demo, clock, f"10:{n:02d}")
        step(clock, f"10:{n:02d}", services.assign_delivery, delivery_id=d.pk, rider_id=r1.pk)
    few = queries_for_board()
    for n in range(2, 30):
        order(demo, clock, f"10:{n:02d}")
        PositionSample.objects.create(rider=r1, lat=37.5, lng=127.0, recorded_at=clock.now)
    many = queries_for_board()
    assert few == many <= 4


# ---- a simulated shift: the live board captured at T equals the replay at T -------------------


def live_board(center_code: str, board: BoardFilter) -> tuple[list[tuple], dict[str, int]]:
    """What the board page shows now: its rows (as the replay describes them) and its counts."""
    now = timezone.now()
    rows = board_window(center_code=center_code, board=board, offset=0, limit=replay.ROWS_SHOWN, now=now)
    described = [(d.pk, d.status, d.rider_id, d.version, d.urgency) for d in rows]
    return described, board_counts(center_code=center_code, board=board, now=now)


def replayed_board(center, at: datetime, board: BoardFilter) -> tuple[list[tuple], dict[str, int]]:
    state = replay.board_at(center, at, board=board)
    return [(r.id, r.status, r.rider_id, r.version, r.urgency) for r in state.rows], state.counts


def run_shift(demo, clock, *, seed: int, steps: int, capture_every: int, boards: list[BoardFilter]) -> dict:
    """Play a shift through the services with random commands a minute or so apart; capture the live boards.

    Returns {(moment, board): (rows, counts)} captured right after the commands of that moment.
    """
    rng = random.Random(seed)
    riders = on_duty(demo, 1, 2, 3, 4)
    shops = 3
    captured = {}
    clock.at("08:00")
    for n in range(steps):
        clock.advance(rng.randint(20, 150))
        open_deliveries = list(Delivery.objects.filter(center__code="gangnam", status__in=Delivery.OPEN_STATUSES))
        choice = rng.random()
        try:
            if choice < 0.35 or not open_deliveries:
                promised = clock.now + timedelta(minutes=rng.randint(15, 60))
                services.create_order(
                    actor=None,
                    shop_id=demo.shop("gangnam", rng.randrange(shops)).pk,
                    promised_at=promised,
                    **ORDER_FIELDS,
                )
            else:
                d = rng.choice(open_deliveries)
                if choice < 0.05 + 0.35:
                    services.cancel_order(actor=None, order_id=d.order_id, reason="Customer changed their mind")
                elif d.status in ("waiting", "assigned") and choice < 0.65:
                    services.assign_delivery(actor=None, delivery_id=d.pk, rider_id=rng.choice(riders).pk)
                elif d.status == "assigned" and choice < 0.72:
                    services.unassign_delivery(actor=None, delivery_id=d.pk)
                elif d.status == "assigned":
                    services.pick_up_delivery(actor=None, delivery_id=d.pk)
                elif d.status == "picked_up":
                    services.deliver_delivery(actor=None, delivery_id=d.pk)
        except CommandRefused:
            pass  # assigning to the rider it already has: the service says no, as it would live
        if n % capture_every == capture_every - 1:
            # Captured a little after the commands, so urgency thresholds in between are crossed too.
            clock.advance(rng.randint(1, 600))
            for board in boards:
                captured[(clock.now, board)] = live_board("gangnam", board)
    return captured


def test_replay_at_each_moment_equals_the_live_board_captured_then(demo, clock):
    """During a simulated shift the live board is captured at many moments; the replay of each is identical."""
    boards = [
        BoardFilter(),
        BoardFilter(sort="newest", range="12h"),
        BoardFilter(statuses=("waiting", "assigned")),
        BoardFilter(unassigned=True),
        BoardFilter(rider=demo.rider("gangnam", 2).pk),
        BoardFilter(late_only=True, range="24h"),
    ]
    captured = run_shift(demo, clock, seed=14, steps=240, capture_every=12, boards=boards)
    clock.at("23:59")  # replayed afterwards, when every delivery has moved on
    center = demo.center()

    assert len(captured) == 20 * len(boards)
    assert any(rows for rows, _ in captured.values())
    statuses_seen = {row[1] for rows, _ in captured.values() for row in rows}
    assert statuses_seen == set(Delivery.Status.values), "the shift should pass through every status"
    assert {row[4] for rows, _ in captured.values() for row in rows} >= {0, 3}
    for (moment, board), live in captured.items():
        assert replayed_board(center, moment, board) == live, (moment, board)


def test_replay_equals_the_live_board_during_the_demo_simulation(demo, clock, no_live_positions):
    """The demo simulator runs two hours of shift at 30×; the board captured every 5 minutes replays the same."""
    clock.at("11:00")
    sim = Simulation(centers=["gangnam"], orders_per_minute=2.0, speedup=30.0, rng=random.Random(21))
    boards = [BoardFilter(), BoardFilter(sort="newest", range="24h")]
    captured = {}
    start = clock.now
    for tick in range(240):  # 240 real seconds at 30×: two simulated hours
        clock.now = start + timedelta(seconds=30 * tick)
        sim.step(float(tick))
        if tick % 10 == 9:
            for board in boards:
                captured[(clock.now, board)] = live_board("gangnam", board)
    clock.at("23:59")
    center = demo.center()

    statuses_seen = {row[1] for rows, _ in captured.values() for row in rows}
    assert {"assigned", "picked_up", "delivered"} <= statuses_seen  # the simulator dispatches at once
    for (moment, board), live in captured.items():
        assert replayed_board(center, moment, board) == live, (moment, board)


# ---- the page and its fragments ---------------------------------------------------------------


def iso(at: datetime) -> str:
    return at.isoformat()


@pytest.fixture
def reassigned_and_delivered(demo, clock):
    """Gangnam: one order reassigned then delivered (10:00–10:30), one ordered at 11:00; now is 12:00."""
    r1, r2 = on_duty(demo, 1, 2)
    d = order(demo, clock, "10:00")
    step(clock, "10:05", services.assign_delivery, delivery_id=d.pk, rider_id=r1.pk)
    step(clock, "10:10", services.assign_delivery, delivery_id=d.pk, rider_id=r2.pk)
    step(clock, "10:20", services.pick_up_delivery, delivery_id=d.pk)
    step(clock, "10:30", services.deliver_delivery, delivery_id=d.pk)
    later = order(demo, clock, "11:00")
    clock.at("12:00")
    return d, later, r1, r2


def test_replay_page_shows_the_board_rows_counts_and_events_at_the_chosen_moment(
    client, demo, clock, reassigned_and_delivered
):
    """The GET form's day and time pick the moment: the row as it was, the counts, what happened before it."""
    d, later, r1, _ = reassigned_and_delivered
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("dispatch-replay", args=["gangnam"]), {"date": DAY.isoformat(), "time": "10:07"})
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="replay-delivery-{d.pk}"' in html and 'data-status="assigned"' in html
    assert f'data-rider="{r1.pk}"' in html
    assert f'id="replay-delivery-{later.pk}"' not in html
    assert 'data-count="assigned">Assigned <span class="n">1</span>' in html
    assert 'data-action="assigned"' in html and 'data-action="reassigned"' not in html
    assert response.context["offset_seconds"] == (local("10:07") - response.context["span_start"]).total_seconds()


def test_replay_page_defaults_to_an_hour_ago(client, demo, clock, reassigned_and_delivered):
    """With no moment asked for, the page shows the board an hour before now (11:00 at noon)."""
    d, later, _, _ = reassigned_and_delivered
    client.force_login(demo.user("hq"))
    response = client.get(reverse("dispatch-replay", args=["gangnam"]))
    assert response.status_code == 200
    assert response.context["at"] == local("11:00")
    assert [row.id for row in response.context["state"].rows] == [later.pk, d.pk]


def test_replay_fragment_answers_the_moment_t_for_htmx(client, demo, clock, reassigned_and_delivered):
    """`at/?t=` renders only the moment: the delivery picked up at 10:25, with the events up to then."""
    d, *_ = reassigned_and_delivered
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("replay-at", args=["gangnam"]), {"t": iso(local("10:25"))}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="replay-at"')
    assert 'data-status="picked_up"' in html and 'data-action="picked_up"' in html
    assert "<html" not in html


def test_replay_delivery_timeline_stops_at_the_moment(client, demo, clock, reassigned_and_delivered):
    """A delivery's timeline at 10:12 lists its creation and both assignments, not the pick-up or delivery."""
    d, *_ = reassigned_and_delivered
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("replay-delivery", args=["gangnam", d.pk]), {"t": iso(local("10:12"))})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<strong>reassigned</strong>" in html and "<strong>picked_up</strong>" not in html
    assert "Assigned</span>" in html


def test_replay_page_shows_a_delivery_timeline_without_javascript(client, demo, clock, reassigned_and_delivered):
    """A row's link (`?t=…&delivery=…`) reloads the page with that delivery's timeline up to the moment."""
    d, *_ = reassigned_and_delivered
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("dispatch-replay", args=["gangnam"]), {"t": iso(local("10:06")), "delivery": d.pk})
    html = response.content.decode()
    assert response.context["selected"].delivery.pk == d.pk
    assert "<strong>assigned</strong>" in html and "<strong>reassigned</strong>" not in html


@pytest.mark.parametrize("delivery", ["abc", "²", "-1", "99999999999999999999999", ""])
def test_replay_page_ignores_a_delivery_that_is_not_an_id(client, demo, clock, reassigned_and_delivered, delivery):
    """A `delivery` that is not a delivery id shows the page without a timeline, not an error."""
    client.force_login(demo.user("dispatch-gangnam"))
    query = {"t": iso(local("10:06")), "delivery": delivery}
    response = client.get(reverse("dispatch-replay", args=["gangnam"]), query)
    assert response.status_code == 200
    assert response.context["selected"] is None


def test_replay_delivery_of_another_center_or_not_yet_created_is_not_found(
    client, demo, clock, reassigned_and_delivered
):
    """Another center's delivery, or one created after the moment, is a 404, not its timeline."""
    d, later, *_ = reassigned_and_delivered
    client.force_login(demo.user("dispatch-mapo"))
    assert client.get(reverse("replay-delivery", args=["mapo", d.pk]), {"t": iso(local("10:12"))}).status_code == 404
    client.force_login(demo.user("dispatch-gangnam"))
    url = reverse("replay-delivery", args=["gangnam", later.pk])
    assert client.get(url, {"t": iso(local("10:12"))}).status_code == 404


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"t": "yesterday"}, "Enter the moment as a date and time"),
        ({"t": "2026-13-45T99:00"}, "Enter the moment as a date and time"),
        ({"t": "1999-12-31T10:00"}, "Choose a moment from 2000-01-01 on."),
        ({"t": "\x00"}, "Enter the moment as a date and time"),
        ({}, "Enter the moment as a date and time"),
    ],
)
def test_replay_fragment_refuses_a_bad_moment_with_a_message(client, demo, clock, query, message):
    """A `t` that is not a moment BROS could have recorded is a 400 saying what to type, never a 500."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("replay-at", args=["gangnam"]), query)
    assert response.status_code == 400
    assert message in response.content.decode()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"date": "15/01/2026", "time": "10:00"}, "Enter a day as YYYY-MM-DD."),
        ({"date": "2026-01-15", "time": "25:00"}, "Enter a time as HH:MM or HH:MM:SS."),
        ({"date": "2026-01-15", "time": "10:00+09:00"}, "Enter a time as HH:MM or HH:MM:SS."),
        ({"date": "0001-01-01", "time": "00:00"}, "Choose a moment from 2000-01-01 on."),
    ],
)
def test_replay_page_refuses_a_bad_day_or_time_beside_the_form(client, demo, clock, query, message):
    """The page keeps what was typed, marks the fields and says why (400)."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("dispatch-replay", args=["gangnam"]), query)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html and 'aria-invalid="true"' in html
    assert f'value="{query["date"]}"' in html


def test_replay_of_a_moment_still_to_come_shows_now_and_says_so(client, demo, clock, reassigned_and_delivered):
    """A moment in the future is clamped to now, with a notice."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("replay-at", args=["gangnam"]), {"t": "2099-01-01T00:00"})
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-at="{local("12:00").isoformat()}"' in html
    assert "That moment has not happened yet: showing now (12:00:00)." in html


REPLAY_PATHS = [
    "/dispatch/{c}/replay/",
    "/dispatch/{c}/replay/at/?t=2026-01-15T10:00",
    "/dispatch/{c}/replay/deliveries/1/?t=2026-01-15T10:00",
]


@pytest.mark.parametrize("path", REPLAY_PATHS)
@pytest.mark.parametrize(
    ("username", "center"),
    [
        ("dispatch-gangnam", "mapo"),
        ("dispatch-gangnam", "nowhere"),
        ("callcenter", "gangnam"),
        ("rider-gangnam-01", "gangnam"),
    ],
)
def test_replay_refuses_whoever_may_not_dispatch_the_center(client, demo, username, center, path):
    """As on the board: another center's dispatcher, call-center staff, riders and unknown centers get the 403."""
    client.force_login(demo.user(username))
    response = client.get(path.format(c=center))
    assert response.status_code == 403
    assert "You do not dispatch this center." in response.content.decode()


@pytest.mark.parametrize("path", REPLAY_PATHS)
def test_replay_sends_anonymous_users_to_login(client, db, path):
    """Every replay URL asks an anonymous visitor to log in."""
    response = client.get(path.format(c="gangnam"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_board_links_to_its_replay(client, demo):
    """The board's header has a Replay link to the same center's replay."""
    client.force_login(demo.user("dispatch-gangnam"))
    html = client.get(reverse("dispatch-board", args=["gangnam"])).content.decode()
    assert f'href="{reverse("dispatch-replay", args=["gangnam"])}"' in html


def test_replay_fragment_query_count_does_not_grow_with_the_deliveries(client, demo, clock):
    """The moment fragment takes as many queries for 30 deliveries as for 1."""
    (r1,) = on_duty(demo, 1)
    client.force_login(demo.user("dispatch-gangnam"))
    url = reverse("replay-at", args=["gangnam"])

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url, {"t": iso(clock.now)}).status_code == 200
        return len(captured)

    d = order(demo, clock, "10:00")
    step(clock, "10:00", services.assign_delivery, delivery_id=d.pk, rider_id=r1.pk)
    few = queries()
    for n in range(1, 30):
        order(demo, clock, f"10:{n:02d}")
    assert queries() == few


@given(
    t=st.one_of(
        st.text(max_size=40),
        st.datetimes(
            min_value=datetime(1, 1, 2),
            max_value=datetime(9999, 12, 30),
            timezones=st.sampled_from([None, dt_timezone(timedelta(hours=14)), dt_timezone(timedelta(hours=-12))]),
        ).map(datetime.isoformat),
    ),
    path=st.sampled_from(["/dispatch/gangnam/replay/", "/dispatch/gangnam/replay/at/"]),
)
@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_replay_any_moment_text_is_a_board_or_a_400_never_a_500(demo, t, path):
    """Whatever `t` holds (far-off years, offsets, junk), the page and the fragment answer 200 or 400."""
    client = Client(raise_request_exception=False)
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(path, {"t": t})
    assert response.status_code in (200, 400), (t, response.status_code)


def test_replay_page_day_without_a_time_shows_its_noon(client, demo, clock):
    """The form's day alone means noon of that day."""
    clock.at("15:00")
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("dispatch-replay", args=["gangnam"]), {"date": DAY.isoformat()})
    assert response.status_code == 200
    assert response.context["at"] == local("12:00")

"""The reports page (/reports/): figures against a hand-computed day, CSV exports, query counts, refusals."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.models import StaffProfile
from deliveries import reports, services
from deliveries.models import Delivery
from deliveries.reports_page import _async_lines, csv_lines, hour_chart, spreadsheet_safe
from riders.models import PositionSample
from riders.services import set_rider_duty
from tests.support import ORDER_FIELDS, without_csrf

DAY = date(2026, 1, 15)
HOSTILE = '=HYPERLINK("http://evil.example","click")'


class Clock:
    """The time every service, `auto_now` field and timeline entry sees: set to a local time of DAY."""

    def __init__(self):
        self.now = None

    def at(self, hhmm: str, day: date = DAY) -> datetime:
        hours, minutes = map(int, hhmm.split(":"))
        self.now = timezone.make_aware(datetime.combine(day, time(hours, minutes)))
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    c.at("09:00")
    monkeypatch.setattr(timezone, "now", lambda: c.now)
    return c


def order(demo, clock, at: str, promised: str, *, center="gangnam", **fields):
    clock.at(at)
    return services.create_order(
        actor=None,
        shop_id=demo.shop(center).pk,
        promised_at=timezone.make_aware(datetime.combine(clock.now.date(), time(*map(int, promised.split(":"))))),
        **(ORDER_FIELDS | fields),
    )


def step(clock, at: str, service, **kwargs):
    clock.at(at)
    return service(actor=kwargs.pop("actor", None), **kwargs)


@pytest.fixture
def shift(demo, clock):
    """DAY at gangnam, by hand (minutes): created→assigned, assigned→picked up, picked up→delivered, vs promise.

    A: 2, 8, 20, -20 (rider 1, on time).  B: 4 (first assignment), 10 (after the reassignment to
    rider 2), 30, +10 (late).  C: cancelled at 11:05 by the dispatcher with a hostile reason.
    D: 6, 6, 28, -10 (rider 2, on time). A mapo order the same day must never show for gangnam.
    """
    r1, r2 = demo.rider("gangnam", 1), demo.rider("gangnam", 2)
    clock.at("09:00")
    set_rider_duty(actor=None, rider_id=r1.pk, on_duty=True)
    set_rider_duty(actor=None, rider_id=r2.pk, on_duty=True)
    deliver = services.deliver_delivery
    a = order(demo, clock, "10:00", "10:50").delivery
    step(clock, "10:02", services.assign_delivery, delivery_id=a.pk, rider_id=r1.pk)
    step(clock, "10:10", services.pick_up_delivery, delivery_id=a.pk)
    step(clock, "10:30", deliver, delivery_id=a.pk)
    b = order(demo, clock, "10:20", "11:00").delivery
    step(clock, "10:24", services.assign_delivery, delivery_id=b.pk, rider_id=r1.pk)
    step(clock, "10:30", services.assign_delivery, delivery_id=b.pk, rider_id=r2.pk)
    step(clock, "10:40", services.pick_up_delivery, delivery_id=b.pk)
    step(clock, "11:10", deliver, delivery_id=b.pk)
    c = order(demo, clock, "11:00", "11:50", customer_name="-2+3")
    step(clock, "11:05", services.cancel_order, order_id=c.pk, reason=HOSTILE, actor=demo.user("dispatch-gangnam"))
    d = order(demo, clock, "12:00", "12:50").delivery
    step(clock, "12:06", services.assign_delivery, delivery_id=d.pk, rider_id=r2.pk)
    step(clock, "12:12", services.pick_up_delivery, delivery_id=d.pk)
    step(clock, "12:40", deliver, delivery_id=d.pk)
    order(demo, clock, "10:00", "10:50", center="mapo")
    # Rider 1's samples: three steps north of 0.001° (111.19 m each); 2 minutes tracked, then a long silence.
    for at, lat in (("10:00", 37.500), ("10:01", 37.501), ("10:02", 37.502), ("10:30", 37.503)):
        PositionSample.objects.create(rider=r1, lat=lat, lng=127.0, recorded_at=clock.at(at))
    clock.at("23:00")
    return {"a": a, "b": b, "c": c, "d": d, "r1": r1, "r2": r2}


def period(demo, first=DAY, last=DAY, centers=("gangnam",)) -> reports.Period:
    return reports.Period(first, last, tuple(demo.center(code).pk for code in centers))


def test_summary_counts_the_day_by_final_state(demo, shift, clock):
    """Orders, states, on time (2 of 3 delivered), late, cancelled and reassigned of gangnam's day."""
    figures = reports.summary(period(demo), now=clock.now)
    assert figures["orders"] == 4
    assert (figures["delivered"], figures["cancelled"], figures["waiting"]) == (3, 1, 0)
    assert (figures["on_time"], figures["late"], figures["overdue"], figures["reassigned"]) == (2, 1, 0, 1)
    assert figures["on_time_share"] == pytest.approx(2 / 3)


def test_summary_counts_an_open_delivery_past_its_promise_as_overdue(demo, shift, clock):
    """A delivery still waiting after its promised time is overdue, not late, and listed with the exceptions."""
    late_one = order(demo, clock, "20:00", "20:30")
    clock.at("21:00")
    assert reports.summary(period(demo), now=clock.now)["overdue"] == 1
    rows = list(reports.exceptions(period(demo), now=clock.now))
    assert [r["order_id"] for r in rows] == [shift["b"].order_id, shift["c"].pk, late_one.pk]


def test_stages_give_median_and_p90_per_stage(demo, shift):
    """percentile_cont over the three delivered: the first assignment counts, the pick-up wait is the last rider's."""
    by_key = {s.key: s for s in reports.stages(period(demo))}
    expected = {
        "created_assigned": (4, 5.6, 3),
        "assigned_picked_up": (8, 9.6, 3),
        "picked_up_delivered": (28, 29.6, 3),
        "promised_actual": (-10, 6, 3),
    }
    for key, (median, p90, count) in expected.items():
        stage = by_key[key]
        assert (stage.median_minutes, stage.p90_minutes, stage.count) == (
            pytest.approx(median),
            pytest.approx(p90),
            count,
        ), key


def test_by_hour_groups_orders_by_local_hour(demo, shift):
    """10h: two orders, one late of two delivered; 11h: one cancelled; 12h: one on time; every hour listed."""
    hours = reports.by_hour(period(demo))
    assert len(hours) == 24
    assert hours[10] == {"hour": 10, "orders": 2, "delivered": 2, "late": 1, "cancelled": 0, "late_share": 0.5}
    assert hours[11] | {} == {"hour": 11, "orders": 1, "delivered": 0, "late": 0, "cancelled": 1, "late_share": None}
    assert hours[12]["late_share"] == 0
    assert sum(h["orders"] for h in hours) == 4


def test_by_rider_credits_the_last_rider_and_sums_samples(demo, shift):
    """Rider 1 carried A (on time), rider 2 B (late, reassigned to them) and D; rider 1 tracked 2 minutes, 333 m."""
    riders = {r["rider_id"]: r for r in reports.by_rider(period(demo))}
    r1, r2 = riders[shift["r1"].pk], riders[shift["r2"].pk]
    assert (r1["delivered"], r1["on_time_share"]) == (1, 1.0)
    assert (r2["delivered"], r2["on_time_share"]) == (2, 0.5)
    assert r1["active_seconds"] == pytest.approx(120)
    assert r1["metres"] == pytest.approx(3 * 111.19, abs=0.5)
    assert (r2["metres"], r2["active_seconds"]) == (0, 0)
    assert set(riders) == {shift["r1"].pk, shift["r2"].pk}


def test_exceptions_list_late_and_cancelled_with_reason_and_who(demo, shift, clock):
    """B is late with its reassignment counted; C is cancelled with the reason and the dispatcher's name."""
    rows = list(reports.exceptions(period(demo), now=clock.now))
    assert [(r["order_id"], r["status"]) for r in rows] == [
        (shift["b"].order_id, "delivered"),
        (shift["c"].pk, "cancelled"),
    ]
    late, cancelled = rows
    assert late["reassignments"] == 1 and late["rider__name"] == shift["r2"].name
    assert cancelled["order__cancel_reason"] == HOSTILE
    assert cancelled["cancelled_by"] == demo.user("dispatch-gangnam").get_full_name()


def test_exception_chunks_read_every_row_once_in_keyset_pages(demo, shift, clock):
    """Chunks of one row still give both exceptions, in order, each once."""
    chunks = list(reports.exception_chunks(period(demo), now=clock.now, size=1))
    assert [[r["order_id"] for r in chunk] for chunk in chunks] == [[shift["b"].order_id], [shift["c"].pk]]


def test_an_empty_day_has_zero_figures_and_no_percentiles(demo, shift, clock):
    """The day after: no orders, no stage figures, no riders, nothing late."""
    empty = period(demo, DAY + timedelta(days=1), DAY + timedelta(days=1))
    assert reports.summary(empty, now=clock.now)["orders"] == 0
    assert reports.summary(empty, now=clock.now)["on_time_share"] is None
    assert all(s.median_minutes is None and s.p90_minutes is None and s.count == 0 for s in reports.stages(empty))
    assert sum(h["orders"] for h in reports.by_hour(empty)) == 0
    assert reports.by_rider(empty) == []
    assert list(reports.exceptions(empty, now=clock.now)) == []


def test_a_range_and_two_centers_add_up(demo, shift, clock):
    """Gangnam and mapo over two days: the mapo order is counted too."""
    both = period(demo, DAY, DAY + timedelta(days=1), centers=("gangnam", "mapo"))
    assert reports.summary(both, now=clock.now)["orders"] == 5


# ---- The page ----


def report_url(**params) -> str:
    query = "&".join(
        f"{k}={v}" for k, values in params.items() for v in (values if isinstance(values, list) else [values])
    )
    return f"{reverse('reports')}?{query}"


def test_page_shows_the_days_figures_to_the_dispatcher(client, demo, shift):
    """The dispatcher's report of their day: figures, stages, hours, riders and the cancelled order's reason."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("reports"), {"from": DAY.isoformat()})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-figure="orders">4<' in html
    assert 'data-figure="on_time_share">67 %<' in html
    assert "Delivered vs promised" in html
    assert "&quot;evil.example&quot;" in html or "evil.example" in html
    assert html.count("<h1") == 1
    assert "<svg" in html and "<title" in html and 'scope="col"' in html


def test_page_defaults_to_today_and_says_when_it_is_empty(client, demo):
    """Without parameters: today, all the user's centers, empty states instead of blank tables."""
    client.force_login(demo.user("hq"))
    response = client.get(reverse("reports"))
    assert response.status_code == 200
    html = response.content.decode()
    assert timezone.localdate().isoformat() in html
    assert "No orders in this period." in html
    assert "Nothing late or cancelled in this period." in html


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"from": "2026-13-01"}, "report-from", "Enter a day as YYYY-MM-DD."),
        ({"from": "²"}, "report-from", "Enter a day as YYYY-MM-DD."),
        ({"from": "2026-01-15", "to": "2026-01-14"}, "report-to", "The last day must not be before the first."),
        ({"from": "2025-01-01", "to": "2026-01-01"}, "report-to", "At most 92 days at a time."),
        ({"to": "15/01/2026"}, "report-to", "Enter a day as YYYY-MM-DD."),
        ({"from": "9999-12-31"}, "report-from", "Choose a day from 2000-01-01 to"),
        ({"from": "0001-01-01"}, "report-from", "Choose a day from 2000-01-01 to"),
        ({"from": "2026-01-15\x00"}, "report-from", "Enter a day as YYYY-MM-DD."),
    ],
)
def test_page_refuses_a_bad_period_beside_the_field_keeping_the_input(client, demo, params, field, message):
    """A bad day or range is a 400 with the message next to its field; what was typed stays in the form."""
    client.force_login(demo.user("hq"))
    response = client.get(reverse("reports"), params)
    assert response.status_code == 400
    html = response.content.decode()
    assert f'id="{field}-error">{message}' in html
    for value in params.values():
        assert f'value="{value}"' in html
    assert "data-figure" not in html


@pytest.mark.parametrize("center", ["mapo", "atlantis"])
def test_page_refuses_a_dispatcher_a_center_they_do_not_serve_like_a_missing_one(client, demo, shift, center):
    """gangnam's dispatcher asking for mapo (or for no such center) gets the same 403, page and CSV alike."""
    client.force_login(demo.user("dispatch-gangnam"))
    page = client.get(reverse("reports"), {"from": DAY.isoformat(), "center": ["gangnam", center]})
    export = client.get(reverse("reports-csv", args=["exceptions"]), {"from": DAY.isoformat(), "center": center})
    assert page.status_code == export.status_code == 403
    missing = client.get(reverse("reports"), {"center": "atlantis"})
    assert without_csrf(page.content) == without_csrf(missing.content)


def test_page_limits_a_dispatcher_to_their_center_by_default(client, demo, shift):
    """Without `center` the dispatcher sees gangnam alone (4 orders, not mapo's fifth); HQ sees all centers."""
    client.force_login(demo.user("dispatch-gangnam"))
    assert 'data-figure="orders">4<' in client.get(reverse("reports"), {"from": DAY}).content.decode()
    client.force_login(demo.user("hq"))
    assert 'data-figure="orders">5<' in client.get(reverse("reports"), {"from": DAY}).content.decode()


@pytest.mark.parametrize("username", ["callcenter", "rider-gangnam-01"])
def test_page_refuses_roles_it_is_not_for(client, demo, username):
    """Call center and riders get 403 for the page and the CSVs."""
    client.force_login(demo.user(username))
    assert client.get(reverse("reports")).status_code == 403
    assert client.get(reverse("reports-csv", args=["summary"])).status_code == 403


def test_page_refuses_a_dispatcher_without_a_center(client, demo, django_user_model):
    """A dispatcher not yet assigned to a center has nothing to report on: 403, as on the home page."""
    user = django_user_model.objects.create_user("dispatch-nowhere", password="demo")
    StaffProfile.objects.create(user=user, role=StaffProfile.Role.DISPATCHER)
    client.force_login(user)
    response = client.get(reverse("reports"))
    assert response.status_code == 403


def test_page_sends_anonymous_users_to_login(client, db):
    response = client.get(reverse("reports-csv", args=["riders"]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def _queries(client, url) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def _bulk_day(demo, clock, count: int) -> None:
    """`count` more orders of DAY at gangnam: a third delivered (half of them reassigned first), a third cancelled."""
    first, second = demo.rider("gangnam", 3), demo.rider("gangnam", 4)
    for rider in (first, second):
        if not rider.on_duty:
            set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    for n in range(count):
        delivery = order(demo, clock, f"{10 + n % 10}:{n % 60:02d}", "23:50").delivery
        PositionSample.objects.create(rider=first, lat=37.5 + n / 1000, lng=127.0, recorded_at=clock.now)
        if n % 3 == 0:
            services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=first.pk)
            if n % 2 == 0:
                services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=second.pk)
            services.pick_up_delivery(actor=None, delivery_id=delivery.pk)
            services.deliver_delivery(actor=None, delivery_id=delivery.pk)
        if n % 3 == 1:
            services.cancel_order(actor=None, order_id=delivery.order_id, reason="=1+1")


@pytest.mark.parametrize("table", ["page", "summary", "stages", "hours", "riders", "exceptions"])
def test_queries_per_report_do_not_grow_with_the_deliveries(client, demo, clock, table):
    """The page and each CSV cost the same number of queries for 3 deliveries as for 30."""
    client.force_login(demo.user("hq"))
    url = reverse("reports") if table == "page" else reverse("reports-csv", args=[table])
    _bulk_day(demo, clock, 3)
    few = _queries(client, f"{url}?from={DAY}")
    _bulk_day(demo, clock, 30)
    client.get(url)  # nothing cached between requests but the session: warm it the same way
    many = _queries(client, f"{url}?from={DAY}")
    assert few == many


def test_page_query_count_is_pinned(client, demo, shift, django_assert_num_queries):
    """Session, user, profile and its centers, all center codes, the centers asked for; then the figures:
    summary, stages, hours, exceptions, riders' deliveries, riders' samples; the navigation's boards."""
    client.force_login(demo.user("hq"))
    client.get(reverse("reports"))
    with django_assert_num_queries(13):
        client.get(reverse("reports"), {"from": DAY})


# ---- CSV ----


def _csv(response) -> list[list[str]]:
    assert response.streaming
    text = b"".join(response.streaming_content).decode()
    assert text.startswith("\ufeff")  # Excel then reads it as UTF-8
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))


@pytest.mark.parametrize("cell", ["=1+1", "+82 10", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd", HOSTILE])
def test_spreadsheet_safe_quotes_a_cell_that_could_start_a_formula(cell):
    """A leading = + - @ tab or CR gets an apostrophe, so a spreadsheet shows it as text."""
    assert spreadsheet_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["Kim", "", None, 12, -10.5, "a=b", " =x"])
def test_spreadsheet_safe_leaves_other_cells_alone(cell):
    """Plain text, empty cells and the numbers we computed (negative ones too) are written as they are."""
    assert spreadsheet_safe(cell) == ("" if cell is None else str(cell))


def test_exceptions_csv_escapes_hostile_customer_text(client, demo, shift):
    """The cancelled order's reason and customer name arrive quoted; its other cells as they are."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(reverse("reports-csv", args=["exceptions"]), {"from": DAY})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="bros-exceptions-gangnam-2026-01-15.csv"' in response["Content-Disposition"]
    header, late, cancelled = _csv(response)
    assert header[0] == "order" and late[0] == str(shift["b"].order_id)
    row = dict(zip(header, cancelled, strict=True))
    assert row["cancel_reason"] == "'" + HOSTILE
    assert row["customer"] == "'-2+3"
    assert row["status"] == "cancelled" and row["cancelled"] == "2026-01-15 11:05:00"


def test_each_csv_has_the_tables_figures(client, demo, shift):
    """Summary, stages, hours and riders CSVs carry the same figures as the page."""
    client.force_login(demo.user("dispatch-gangnam"))

    def table(name):
        return _csv(client.get(reverse("reports-csv", args=[name]), {"from": DAY}))

    assert ["orders", "4"] in table("summary") and ["on_time_percent", "66.7"] in table("summary")
    assert ["Created → assigned", "4.0", "5.6", "3"] in table("stages")
    assert ["Delivered vs promised", "-10.0", "6.0", "3"] in table("stages")
    assert ["10", "2", "2", "1", "0", "50.0"] in table("hours")
    riders = table("riders")
    assert riders[0] == ["rider", "delivered", "on_time_percent", "cancelled", "active_hours", "distance_km"]
    assert [shift["r1"].name, "1", "100.0", "0", "0.03", "0.33"] in riders


def test_csv_of_an_unknown_table_or_a_bad_period_is_not_found(client, demo):
    client.force_login(demo.user("hq"))
    assert client.get(reverse("reports-csv", args=["secrets"])).status_code == 404
    assert client.get(reverse("reports-csv", args=["summary"]), {"from": "yesterday"}).status_code == 404


def test_csv_lines_write_100000_rows_in_chunks():
    """A 100,000-row export comes out as one string per chunk, every row there once, hostile ones quoted."""
    chunks = ([[n, "=x" if n % 2 else "ok"] for n in range(start, start + 2000)] for start in range(0, 100_000, 2000))
    parts = csv_lines(["n", "text"], chunks)
    rows = list(csv.reader(io.StringIO("".join(parts).removeprefix("\ufeff"))))
    assert len(rows) == 100_001
    assert rows[1] == ["0", "ok"] and rows[2] == ["1", "'=x"] and rows[-1] == ["99999", "'=x"]


def test_delivery_model_statuses_all_appear_in_the_summary(demo, clock):
    """Every delivery status has its own figure, so a new status cannot silently vanish from the report."""
    figures = reports.summary(period(demo), now=clock.now)
    assert set(Delivery.Status.values) <= set(figures)


def test_hour_chart_marks_each_hour_with_deliveries_by_its_late_share(demo, shift):
    """10h (half late) sits half-way up the plot, 12h (none late) on its floor; hours with no delivery: no mark."""
    chart = hour_chart(reports.by_hour(period(demo)))
    dots = {dot["hour"]: dot["y"] for dot in chart["late_dots"]}
    assert set(dots) == {10, 12}
    assert dots[12] == chart["bottom"]
    assert dots[10] == pytest.approx((chart["pad"] + chart["bottom"]) / 2)
    assert max(bar["h"] for bar in chart["bars"]) == chart["bottom"] - chart["pad"]


def test_page_shows_only_the_first_exceptions_and_points_to_the_csv(client, demo, shift, monkeypatch):
    """With more late and cancelled deliveries than the page shows, it says the CSV has them all."""
    monkeypatch.setattr(reports, "EXCEPTIONS_SHOWN", 1)
    client.force_login(demo.user("dispatch-gangnam"))
    html = client.get(reverse("reports"), {"from": DAY}).content.decode()
    assert "The first 1 are shown; the CSV has them all." in html
    assert html.count("<tr data-order=") == 1


async def test_async_lines_hand_over_every_chunk_under_asgi():
    """The ASGI path yields the sync generator's chunks in order, then stops."""
    parts = [part async for part in _async_lines(iter(["a,b\r\n", "1,2\r\n"]))]
    assert parts == ["a,b\r\n", "1,2\r\n"]

"""The dispatcher board and the HQ overview on the server: urgency, filters, windows, access, drawer, counts."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import Center
from deliveries import selectors, services
from deliveries.board import WINDOW_MAX, read_board_window
from deliveries.models import Delivery, Order, Shop
from deliveries.selectors import (
    URGENCY_LATE,
    URGENCY_NONE,
    URGENCY_NOT_PICKED_UP,
    URGENCY_UNASSIGNED,
    BoardFilter,
)
from deliveries.views import FIRST_WINDOW
from realtime import outbox
from riders.models import Rider
from riders.services import set_rider_duty
from tests.support import without_csrf

BOARD = "/dispatch/gangnam/"
ROWS = "/dispatch/gangnam/rows/"
ROW_ID = re.compile(r'id="delivery-(\d+)"')


# -- helpers -------------------------------------------------------------------------------------------------


def take_order(
    demo,
    *,
    center: str = "gangnam",
    actor=None,
    name: str = "Kim Minjun",
    phone: str = "010-2000-3000",
    address: str = "Teheran-ro 1, Seoul",
    items: list | None = None,
) -> Delivery:
    """Take an order through the real service; return its (waiting) delivery."""
    order = services.create_order(
        actor=actor,
        shop_id=demo.shop(center).pk,
        customer_name=name,
        customer_phone=phone,
        address=address,
        items=items or [{"name": "Fried chicken", "qty": 1}],
    )
    return order.delivery


def on_duty(demo, number: int = 1, center: str = "gangnam") -> Rider:
    rider = demo.rider(center, number)
    if not rider.on_duty:
        set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    return Rider.objects.get(pk=rider.pk)


def move_to(delivery: Delivery, status: str, rider: Rider | None = None, *, actor=None) -> Delivery:
    """Drive a waiting delivery to `status` through the real services."""
    if status in (Delivery.Status.ASSIGNED, Delivery.Status.PICKED_UP, Delivery.Status.DELIVERED):
        services.assign_delivery(actor=actor, delivery_id=delivery.pk, rider_id=rider.pk)
    if status in (Delivery.Status.PICKED_UP, Delivery.Status.DELIVERED):
        services.pick_up_delivery(actor=None, delivery_id=delivery.pk)
    if status == Delivery.Status.DELIVERED:
        services.deliver_delivery(actor=None, delivery_id=delivery.pk)
    if status == Delivery.Status.CANCELLED:
        services.cancel_order(actor=None, order_id=delivery.order_id, reason="Customer called")
    return Delivery.objects.get(pk=delivery.pk)


def created_ago(delivery: Delivery, **ago) -> None:
    """Pretend the delivery was created `ago` earlier (services always stamp now)."""
    Delivery.objects.filter(pk=delivery.pk).update(created_at=timezone.now() - timedelta(**ago))


def promised_ago(delivery: Delivery, **ago) -> None:
    """Move the order's promised time `ago` into the past (the service refuses a past promise)."""
    Order.objects.filter(pk=delivery.order_id).update(promised_at=timezone.now() - timedelta(**ago))


def board_filter(**query) -> BoardFilter:
    return BoardFilter.from_query(QueryDict(urlencode(query, doseq=True)))


def window(*, center: str = "gangnam", offset: int = 0, limit: int = 200, **query):
    return read_board_window(center_code=center, board=board_filter(**query), offset=offset, limit=limit)


def ids(center: str = "gangnam", **query) -> list[int]:
    return [d.pk for d in window(center=center, **query).rows]


def urgency_of(delivery: Delivery) -> int:
    (row,) = [d for d in window().rows if d.pk == delivery.pk]
    return row.urgency


def window_attrs(content: bytes) -> dict[str, str]:
    """The data attributes of the rendered `.window` element."""
    tag = re.search(r'<div class="window"([^>]*)>', content.decode()).group(1)
    return {name: html.unescape(value) for name, value in re.findall(r'data-([\w-]+)="([^"]*)"', tag)}


def row_ids(content: bytes) -> list[int]:
    return [int(pk) for pk in ROW_ID.findall(content.decode())]


def phone_without(number: int) -> str:
    """A valid phone number whose digits cannot contain `number` (so a search for it never matches)."""
    digit = next(d for d in "123456789" if d not in str(number))
    return f"0{digit}{digit}-{digit * 4}-{digit * 4}"


def many_orders(demo, n: int) -> list[Delivery]:
    shop = demo.shop()
    return [
        services.create_order(
            actor=None,
            shop_id=shop.pk,
            customer_name=f"Customer {i}",
            customer_phone="010-2000-3000",
            address=f"Teheran-ro {i}, Seoul",
            items=[{"name": "Fried chicken", "qty": 1}],
        ).delivery
        for i in range(n)
    ]


# -- urgency -------------------------------------------------------------------------------------------------


def test_urgency_fresh_waiting_is_none(demo):
    """A delivery just taken needs no attention yet."""
    assert urgency_of(take_order(demo)) == URGENCY_NONE


def test_urgency_waiting_past_sla_is_unassigned(demo):
    """A delivery waiting longer than SLA_UNASSIGNED_MINUTES (before its ready time) is urgency 1."""
    delivery = take_order(demo)
    assert delivery.shop.prep_minutes > settings.SLA_UNASSIGNED_MINUTES + 1
    created_ago(delivery, minutes=settings.SLA_UNASSIGNED_MINUTES + 1)
    assert urgency_of(delivery) == URGENCY_UNASSIGNED


@pytest.mark.parametrize("status", [Delivery.Status.WAITING, Delivery.Status.ASSIGNED])
def test_urgency_ready_time_passed_and_not_picked_up_is_2(demo, status):
    """Once created + shop.prep_minutes has passed, a waiting or assigned delivery is urgency 2."""
    delivery = move_to(take_order(demo), status, on_duty(demo))
    created_ago(delivery, minutes=delivery.shop.prep_minutes + 1)
    assert urgency_of(delivery) == URGENCY_NOT_PICKED_UP


def test_urgency_picked_up_after_ready_time_is_none(demo):
    """A picked-up delivery is not 'not picked up', however old, until its promise passes."""
    delivery = move_to(take_order(demo), Delivery.Status.PICKED_UP, on_duty(demo))
    created_ago(delivery, minutes=delivery.shop.prep_minutes + 5)
    assert urgency_of(delivery) == URGENCY_NONE


@pytest.mark.parametrize("status", [Delivery.Status.WAITING, Delivery.Status.ASSIGNED, Delivery.Status.PICKED_UP])
def test_urgency_past_promised_time_is_late(demo, status):
    """An open delivery past its promised time is urgency 3, above every other reason."""
    delivery = move_to(take_order(demo), status, on_duty(demo))
    created_ago(delivery, minutes=60)
    promised_ago(delivery, minutes=1)
    assert urgency_of(delivery) == URGENCY_LATE


@pytest.mark.parametrize("status", [Delivery.Status.DELIVERED, Delivery.Status.CANCELLED])
def test_urgency_closed_delivery_is_none(demo, status):
    """A delivered or cancelled delivery never needs attention, even long past its promise."""
    delivery = move_to(take_order(demo), status, on_duty(demo))
    created_ago(delivery, minutes=90)
    promised_ago(delivery, minutes=30)
    assert urgency_of(delivery) == URGENCY_NONE


# -- sorting -------------------------------------------------------------------------------------------------


def test_board_urgent_sort_puts_late_first_and_open_before_closed(demo):
    """'Most urgent first' orders by urgency 3, 2, 1, then open before closed deliveries."""
    rider = on_duty(demo)
    delivered = move_to(take_order(demo), Delivery.Status.DELIVERED, rider)
    cancelled = move_to(take_order(demo), Delivery.Status.CANCELLED)
    fresh = take_order(demo)
    unassigned = take_order(demo)
    created_ago(unassigned, minutes=settings.SLA_UNASSIGNED_MINUTES + 1)
    not_picked_up = take_order(demo)
    created_ago(not_picked_up, minutes=not_picked_up.shop.prep_minutes + 1)
    late = take_order(demo)
    promised_ago(late, minutes=1)

    order = ids(sort="urgent")

    assert order[:4] == [late.pk, not_picked_up.pk, unassigned.pk, fresh.pk]
    assert set(order[4:]) == {delivered.pk, cancelled.pk}
    assert ids() == order  # "urgent" is the default


def test_board_newest_sort_orders_by_created_desc(demo):
    """'Newest first' ignores urgency: the most recently created delivery comes first."""
    oldest, middle, newest = take_order(demo), take_order(demo), take_order(demo)
    created_ago(oldest, minutes=30)
    promised_ago(oldest, minutes=1)  # late, yet last
    created_ago(middle, minutes=10)
    created_ago(newest, minutes=1)
    assert ids(sort="newest") == [newest.pk, middle.pk, oldest.pk]


# -- filters and search --------------------------------------------------------------------------------------


def test_board_filter_parses_query_and_ignores_bad_values(db):
    """The URL query gives statuses, rider, search, range and sort; unknown values fall back to defaults."""
    board = board_filter(status=["waiting", "bogus", "assigned"], rider="7", q="  #12 ", range="24h", sort="newest")
    assert board == BoardFilter(statuses=("waiting", "assigned"), rider=7, search="#12", range="24h", sort="newest")
    assert board_filter(rider="none") == BoardFilter(unassigned=True)
    assert board_filter(rider="x", range="1w", sort="oldest") == BoardFilter()
    assert len(board_filter(q="x" * 500).search) == 100


def test_board_status_filter_takes_several_statuses(demo):
    """Checking several status chips shows deliveries of any of them."""
    rider = on_duty(demo)
    waiting = take_order(demo)
    assigned = move_to(take_order(demo), Delivery.Status.ASSIGNED, rider)
    picked_up = move_to(take_order(demo), Delivery.Status.PICKED_UP, rider)
    assert ids(status="waiting") == [waiting.pk]
    assert set(ids(status=["waiting", "picked_up"])) == {waiting.pk, picked_up.pk}
    assert set(ids()) == {waiting.pk, assigned.pk, picked_up.pk}


def test_board_rider_filter_and_unassigned(demo):
    """rider=<id> shows that rider's deliveries; rider=none only those without a rider."""
    first, second = on_duty(demo, 1), on_duty(demo, 2)
    waiting = take_order(demo)
    of_first = move_to(take_order(demo), Delivery.Status.ASSIGNED, first)
    of_second = move_to(take_order(demo), Delivery.Status.PICKED_UP, second)
    assert ids(rider=str(first.pk)) == [of_first.pk]
    assert ids(rider=str(second.pk)) == [of_second.pk]
    assert ids(rider="none") == [waiting.pk]


@pytest.mark.parametrize("text", ["{n}", "#{n}", " # {n} "])
def test_board_search_finds_order_number(demo, text):
    """Search finds a delivery by its order number, with or without '#'."""
    wanted = take_order(demo)
    # Decoys whose phone and address hold no digit of the number (with order #1, "Teheran-ro 1" would match).
    take_order(demo, phone=phone_without(wanted.order_id), address="Gangnam-daero, Seoul")
    take_order(demo, phone=phone_without(wanted.order_id), address="Gangnam-daero, Seoul")
    assert ids(q=text.format(n=wanted.order_id)) == [wanted.pk]


def test_board_search_hash_number_matches_only_that_order(demo):
    """'#<n>' means an order number: a customer whose phone contains those digits is not a match."""
    wanted = take_order(demo)
    number = str(wanted.order_id)
    if len(number) < 3:  # the phone is searched from three digits on: use an order number that long
        many_orders(demo, 100 - wanted.order_id)
        wanted = take_order(demo)
        number = str(wanted.order_id)
    take_order(demo, phone=f"010-{number}-0000")
    assert ids(q=f"#{number}") == [wanted.pk]


@pytest.mark.parametrize("text", ["01012345678", "010-1234-5678", "1234 5678", "12345678"])
def test_board_search_finds_phone_by_digits(demo, text):
    """Search matches phone digits whatever the dashes or spaces on either side."""
    wanted = take_order(demo, phone="010-1234-5678")
    take_order(demo, phone="02-555-0000")
    assert ids(q=text) == [wanted.pk]


def test_board_search_for_an_address_with_digits_does_not_match_phones(demo):
    """ "Teheran-ro 152" searches addresses: a customer whose phone holds 152 is not a match."""
    wanted = take_order(demo, address="Teheran-ro 152, Seoul")
    take_order(demo, phone="010-1520-0000", address="Yeoksam-ro 7, Seoul")
    assert ids(q="Teheran-ro 152") == [wanted.pk]


@pytest.mark.parametrize("text", ["teheran-ro 152", "Lee Jimin", "jimin"])
def test_board_search_finds_address_and_customer_name(demo, text):
    """Search matches the address or the customer's name, case-insensitively."""
    wanted = take_order(demo, name="Lee Jimin", address="Teheran-ro 152, Seoul")
    take_order(demo, name="Park Seojun", address="Yeoksam-ro 7, Seoul")
    assert ids(q=text) == [wanted.pk]


def test_board_search_without_match_renders_empty_window(client, demo):
    """A search that matches nothing renders the 'no deliveries match' row and a total of 0."""
    take_order(demo)
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(ROWS, {"q": "nothing like this"})
    assert response.status_code == 200
    assert row_ids(response.content) == []
    assert b"No deliveries match these filters." in response.content
    assert window_attrs(response.content)["total"] == "0"


def test_board_range_shows_old_closed_delivery_only_in_longer_range(demo):
    """A delivery closed and created 10 h ago is in the 12 h and 24 h ranges, not the default 4 h."""
    old = move_to(take_order(demo), Delivery.Status.DELIVERED, on_duty(demo))
    created_ago(old, hours=10)
    recent = take_order(demo)
    assert ids() == [recent.pk]
    assert ids(range="4h") == [recent.pk]
    assert set(ids(range="12h")) == {recent.pk, old.pk}
    assert set(ids(range="24h")) == {recent.pk, old.pk}


def test_board_range_always_shows_old_open_delivery(demo):
    """A delivery still open from 30 h ago is on the board in every range; a closed one that old in none."""
    open_old = take_order(demo)
    closed_old = move_to(take_order(demo), Delivery.Status.CANCELLED)
    created_ago(open_old, hours=30)
    created_ago(closed_old, hours=30)
    for board_range in ("4h", "12h", "24h"):
        assert ids(range=board_range) == [open_old.pk]


def test_board_counts_per_status_ignore_status_filter_total_respects_it(demo):
    """Chip counts stay per status whatever is checked; `total` counts only the checked statuses."""
    rider = on_duty(demo)
    take_order(demo), take_order(demo)
    move_to(take_order(demo), Delivery.Status.ASSIGNED, rider)
    move_to(take_order(demo), Delivery.Status.PICKED_UP, rider)
    move_to(take_order(demo), Delivery.Status.DELIVERED, rider)
    move_to(take_order(demo), Delivery.Status.CANCELLED)
    per_status = {"waiting": 2, "assigned": 1, "picked_up": 1, "delivered": 1, "cancelled": 1}

    unfiltered = window().counts
    waiting = window(status="waiting").counts
    two = window(status=["waiting", "assigned"]).counts

    for counts in (unfiltered, waiting, two):
        assert {status: counts[status] for status in per_status} == per_status
    assert (unfiltered["total"], waiting["total"], two["total"]) == (6, 2, 3)
    assert len(window(status="waiting").rows) == 2


def test_board_counts_late_and_attention(demo):
    """`late` counts open deliveries past their promise; `attention` every one with any urgency."""
    late = take_order(demo)
    promised_ago(late, minutes=1)
    unassigned = take_order(demo)
    created_ago(unassigned, minutes=settings.SLA_UNASSIGNED_MINUTES + 1)
    take_order(demo)
    closed_late = move_to(take_order(demo), Delivery.Status.CANCELLED)
    promised_ago(closed_late, minutes=5)

    counts = window().counts

    assert (counts["late"], counts["attention"], counts["total"]) == (1, 2, 4)


def test_board_only_shows_its_own_center(demo):
    """The gangnam board never shows a mapo delivery, nor counts it."""
    gangnam = take_order(demo)
    mapo = take_order(demo, center="mapo")
    assert ids() == [gangnam.pk]
    assert ids(center="mapo") == [mapo.pk]
    assert window().counts["total"] == 1


# -- row windows ---------------------------------------------------------------------------------------------


def test_board_window_offset_and_limit_return_that_slice(demo):
    """A window at offset/limit is exactly that slice of the full ordered list."""
    many_orders(demo, 12)
    everything = ids(sort="newest")
    assert len(everything) == 12
    assert [d.pk for d in window(sort="newest", offset=3, limit=4).rows] == everything[3:7]
    assert [d.pk for d in window(sort="newest", offset=10, limit=5).rows] == everything[10:]
    assert window(sort="newest", offset=20, limit=5).rows == []


def test_board_rows_endpoint_renders_window_partial(client, demo):
    """/rows/ answers the window partial: rows at the offset, total, counts JSON and the stream head."""
    many_orders(demo, 5)
    late = take_order(demo)
    promised_ago(late, minutes=2)
    client.force_login(demo.user("dispatch-gangnam"))

    response = client.get(ROWS, {"offset": 2, "limit": 3, "sort": "newest"})

    assert response.status_code == 200
    attrs = window_attrs(response.content)
    epoch, head = outbox.stream_position("deliveries:gangnam")
    assert (attrs["offset"], attrs["total"], attrs["epoch"], attrs["head"]) == ("2", "6", epoch, str(head))
    assert head >= 6
    counts = json.loads(attrs["counts"])
    assert (counts["waiting"], counts["late"], counts["total"]) == (6, 1, 6)
    assert row_ids(response.content) == ids(sort="newest")[2:5]
    assert f"translateY({2 * 36}px)" in response.content.decode()
    assert b"<html" not in response.content


def out_of_band(content: bytes) -> dict[str, tuple[str, str, str]]:
    """The response's out-of-band elements by id: (hx-swap-oob value, the opening tag, the text inside)."""
    found = re.findall(r'(<\w+ [^>]*\bid="([\w-]+)"[^>]*\bhx-swap-oob="(\w+)"[^>]*>)([^<]*)<', content.decode())
    return {id_: (swap, tag, text) for tag, id_, swap, text in found}


def test_board_rows_for_htmx_carry_counts_total_and_height_out_of_band(client, demo):
    """An htmx rows request also gets every chip count, the total and the list height, to swap out of band."""
    many_orders(demo, 5)
    late = take_order(demo)
    promised_ago(late, minutes=2)
    client.force_login(demo.user("dispatch-gangnam"))

    response = client.get(ROWS, {"offset": 2, "limit": 3, "status": "waiting"}, headers={"HX-Request": "true"})

    oob = out_of_band(response.content)
    counts = json.loads(window_attrs(response.content)["counts"])
    names = [*Delivery.Status.values, "late", "attention"]
    assert {name: oob[f"count-{name}"][2] for name in names} == {name: str(counts[name]) for name in names}
    assert (counts["waiting"], counts["late"], counts["delivered"]) == (6, 1, 0)
    assert all(oob[f"count-{name}"][0] == "true" for name in names)
    assert oob["total"][0::2] == ("innerHTML", "6 deliveries")
    assert oob["spacer"][0] == "true" and f"height: {6 * 36}px" in oob["spacer"][1]
    assert len(row_ids(response.content)) == 3
    assert "HX-Request" in response["Vary"]
    # Each has its element on the page (htmx reports an error for any other), rendered by the same partial.
    page = client.get(BOARD).content.decode()
    assert set(oob) == {*(f"count-{name}" for name in names), "total", "spacer"}
    assert all(f'id="{id_}"' in page for id_ in oob)
    assert oob["count-waiting"][1].replace(' hx-swap-oob="true"', "") in page


def test_board_rows_without_htmx_are_the_window_alone(client, demo):
    """A plain rows request (no HX-Request) answers the window without out-of-band parts."""
    many_orders(demo, 2)
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(ROWS)
    assert window_attrs(response.content)["total"] == "2"
    assert b"hx-swap-oob" not in response.content
    assert "HX-Request" in response["Vary"]


def test_board_rows_ignore_bad_offset_and_limit(client, demo):
    """A negative or non-numeric offset/limit falls back to the defaults instead of failing."""
    many_orders(demo, 3)
    client.force_login(demo.user("dispatch-gangnam"))
    for query in ({"offset": "-5"}, {"offset": "x", "limit": "y"}, {"limit": "0"}):
        response = client.get(ROWS, query)
        assert response.status_code == 200
        assert window_attrs(response.content)["offset"] == "0"


def test_board_rows_huge_offset_is_not_a_server_error(client, demo):
    """An absurd offset answers an empty window, not a 500."""
    client.force_login(demo.user("dispatch-gangnam"))
    client.raise_request_exception = False
    with transaction.atomic():  # the failing query must not poison the test's transaction
        response = client.get(ROWS, {"offset": "9" * 20})
    assert response.status_code == 200


@pytest.mark.parametrize("part", ["page", "rows", "drawer"])
def test_board_renders_a_promised_time_local_time_cannot_hold(client, demo, part):
    """A year-9999 promise stored before promised times were bounded shows in UTC instead of a 500."""
    delivery = take_order(demo)
    # Only old data can hold such a time now: the service refuses it (test_api), so write it directly.
    far = timezone.now().replace(year=9999, month=12, day=31, hour=23, minute=59)
    Order.objects.filter(pk=delivery.order_id).update(promised_at=far)
    client.force_login(demo.user("dispatch-gangnam"))
    path = {"page": BOARD, "rows": ROWS, "drawer": f"{BOARD}deliveries/{delivery.pk}/"}[part]
    response = client.get(path)
    assert response.status_code == 200
    assert "9999-12-31 23:59 UTC" in response.content.decode()


@pytest.mark.parametrize("path", [BOARD, ROWS])
def test_board_search_with_nul_character_is_not_a_server_error(client, demo, path):
    """A search containing a NUL character (pasted junk) answers normally, not with a 500."""
    client.force_login(demo.user("dispatch-gangnam"))
    client.raise_request_exception = False
    with transaction.atomic():
        response = client.get(path, {"q": "Teheran\x00"})
    assert response.status_code == 200


def test_board_limit_capped_and_page_renders_one_screenful(client, demo):
    """With 500 deliveries the page renders FIRST_WINDOW (≤ 60) rows and /rows/ never more than 200."""
    many_orders(demo, 500)
    client.force_login(demo.user("dispatch-gangnam"))

    page = client.get(BOARD)
    rows = client.get(ROWS, {"limit": 1000})

    assert FIRST_WINDOW <= 60
    assert len(row_ids(page.content)) == FIRST_WINDOW
    assert f"height: {500 * 36}px".encode() in page.content
    assert b'aria-rowcount="500"' in page.content
    assert WINDOW_MAX == 200
    assert len(row_ids(rows.content)) == 200
    assert len(window(limit=10_000).rows) == 200


def test_board_rows_query_count_is_constant_in_window_size(client, demo, django_assert_max_num_queries):
    """A window of 60 rows costs the same database queries as one of 10."""
    many_orders(demo, 70)
    client.force_login(demo.user("dispatch-gangnam"))
    client.get(ROWS)  # warm the session
    with CaptureQueriesContext(connection) as small:
        client.get(ROWS, {"limit": 10, "q": "010-2000"})
    with django_assert_max_num_queries(len(small)):
        response = client.get(ROWS, {"limit": 60, "q": "010-2000"})
    assert len(row_ids(response.content)) == 60
    assert len(small) <= 10  # session, user, access (2), stream head, rows, counts


def test_board_page_query_count_is_constant_in_deliveries(client, demo, django_assert_max_num_queries):
    """The board page costs the same queries with 10 or 60 deliveries (rows, riders and counts each once)."""
    client.force_login(demo.user("dispatch-gangnam"))
    on_duty(demo)
    many_orders(demo, 10)
    client.get(BOARD)  # warm the session
    with CaptureQueriesContext(connection) as few:
        assert client.get(BOARD).status_code == 200
    many_orders(demo, 50)
    with django_assert_max_num_queries(len(few)):
        response = client.get(BOARD)
    assert len(row_ids(response.content)) == FIRST_WINDOW
    assert len(few) <= 12  # the rows' queries plus the center and the riders


def test_board_page_carries_stream_head_and_config(client, demo, settings):
    """The page's JSON config resumes the stream exactly after the rows it rendered."""
    settings.SLA_UNASSIGNED_MINUTES = 7  # not the default: the page must read the setting
    many_orders(demo, 3)
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(BOARD)
    config = json.loads(re.search(r'id="board-config"[^>]*>(.*?)</script>', response.content.decode()).group(1))
    epoch, head = outbox.stream_position("deliveries:gangnam")
    assert config["stream"] == {"name": "deliveries:gangnam", "epoch": epoch, "head": head}
    assert (config["center"], config["row_height"], config["window"]) == ("gangnam", 36, FIRST_WINDOW)
    assert config["sla"]["unassigned_minutes"] == 7


def test_board_page_keeps_filters_in_form(client, demo):
    """A reloaded URL with filters renders them pressed/filled and the rows filtered."""
    rider = on_duty(demo)
    waiting = take_order(demo)
    move_to(take_order(demo), Delivery.Status.ASSIGNED, rider)
    client.force_login(demo.user("dispatch-gangnam"))
    content = client.get(
        BOARD, {"status": "waiting", "q": "Teheran", "range": "24h", "sort": "newest"}
    ).content.decode()
    pressed = re.findall(r'class="chip status-(\w+)" aria-pressed="true"', content)
    assert pressed == ["waiting"]
    assert re.findall(r'name="status" value="(\w+)">', content) == ["waiting"]  # only it is sent (not disabled)
    assert 'value="Teheran"' in content
    assert '<option value="24h" selected>' in content
    assert '<option value="newest" selected>' in content
    assert row_ids(content.encode()) == [waiting.pk]


def test_board_row_escapes_customer_text(client, demo):
    """Addresses and names typed by people are escaped in rows and in the drawer."""
    delivery = take_order(demo, name="<b>Eve</b>", address='<img src=x onerror="alert(1)">')
    client.force_login(demo.user("dispatch-gangnam"))
    for url in (ROWS, f"{BOARD}deliveries/{delivery.pk}/"):
        content = client.get(url).content.decode()
        assert "<img src=x" not in content and "<b>Eve" not in content
        assert "&lt;img src=x" in content


# -- access --------------------------------------------------------------------------------------------------


@pytest.fixture
def mapo_delivery(demo) -> Delivery:
    return take_order(demo, center="mapo")


@pytest.mark.parametrize(
    ("username", "center"),
    [
        ("dispatch-gangnam", "mapo"),
        ("dispatch-gangnam", "nowhere"),
        ("dispatch-mapo", "gangnam"),
        ("callcenter", "gangnam"),
        ("callcenter", "mapo"),
        ("rider-gangnam-01", "gangnam"),
    ],
)
@pytest.mark.parametrize("part", ["page", "rows", "drawer"])
def test_board_refuses_users_who_do_not_dispatch_the_center(client, demo, username, center, part):
    """The page, its rows and its drawer answer 403 to anyone who does not dispatch that center."""
    delivery = take_order(demo, center=center if center != "nowhere" else "gangnam")
    path = {"page": "", "rows": "rows/", "drawer": f"deliveries/{delivery.pk}/"}[part]
    client.force_login(demo.user(username))
    response = client.get(f"/dispatch/{center}/{path}")
    assert response.status_code == 403
    assert str(delivery.order_id).encode() not in response.content


def test_board_unknown_center_looks_like_a_foreign_one(client, demo):
    """An unknown center's board is refused exactly like a center the dispatcher does not serve."""
    client.force_login(demo.user("dispatch-gangnam"))
    foreign, unknown = client.get("/dispatch/mapo/"), client.get("/dispatch/nowhere/")
    assert foreign.status_code == unknown.status_code == 403
    assert without_csrf(foreign.content) == without_csrf(unknown.content)


def test_board_anonymous_parts_redirect_to_login(client, demo, mapo_delivery):
    """Rows and drawer, like the page, send an anonymous visitor to the login page."""
    for path in ("/dispatch/mapo/rows/", f"/dispatch/mapo/deliveries/{mapo_delivery.pk}/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("username", ["hq", "admin"])
@pytest.mark.parametrize("center", ["gangnam", "mapo", "songpa"])
def test_board_opens_every_center_for_hq_and_superuser(client, demo, username, center):
    """HQ and superusers open any center's page, rows and drawer."""
    delivery = take_order(demo, center=center)
    client.force_login(demo.user(username))
    page = client.get(f"/dispatch/{center}/")
    assert page.status_code == 200
    assert row_ids(page.content) == [delivery.pk]
    assert b'class="center-switch"' in page.content  # HQ may jump between centers
    assert row_ids(client.get(f"/dispatch/{center}/rows/").content) == [delivery.pk]
    assert client.get(f"/dispatch/{center}/deliveries/{delivery.pk}/").status_code == 200


def test_board_dispatcher_opens_own_center_without_center_switch(client, demo):
    """A dispatcher of one center opens its board; there is no center switch to offer."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(BOARD)
    assert response.status_code == 200
    assert b'class="center-switch"' not in response.content


@pytest.mark.parametrize("username", ["dispatch-gangnam", "hq"])
def test_drawer_of_other_centers_delivery_is_not_found(client, demo, mapo_delivery, username):
    """A mapo delivery asked for through the gangnam board URL is a 404, even for HQ."""
    client.force_login(demo.user(username))
    assert client.get(f"{BOARD}deliveries/{mapo_delivery.pk}/").status_code == 404
    assert client.get(f"{BOARD}deliveries/999999999/").status_code == 404


# -- the drawer ----------------------------------------------------------------------------------------------


def test_drawer_shows_timeline_with_who_and_the_items(client, demo):
    """The drawer lists every timeline entry (action, statuses, who, channel) and the order's items."""
    rider = on_duty(demo, 3)
    delivery = take_order(
        demo,
        actor=demo.user("callcenter"),
        name="Choi Yejun",
        items=[{"name": "Fried chicken", "qty": 2}, {"name": "Cola", "qty": 1}],
    )
    move_to(delivery, Delivery.Status.ASSIGNED, rider, actor=demo.user("dispatch-gangnam"))
    client.force_login(demo.user("dispatch-gangnam"))

    response = client.get(f"{BOARD}deliveries/{delivery.pk}/")

    content = html.unescape(re.sub(r"\s+", " ", response.content.decode()))
    assert response.status_code == 200
    assert f"Order #{delivery.order_id}" in content
    assert "2× Fried chicken, 1× Cola" in content
    assert "Choi Yejun" in content
    created, assigned = re.findall(r"<li>(.*?)</li>", content)
    assert "<strong>created</strong>" in created and "by Call Center (Call center)" in created
    assert "<strong>assigned</strong> waiting → assigned" in assigned
    assert "by Dispatch Gangnam (Dispatcher)" in assigned and f"→ {rider.name}" in assigned
    assert 'data-action="unassign"' in content and 'data-action="cancel"' in content


def test_drawer_query_count_does_not_grow_with_timeline(client, demo, django_assert_max_num_queries):
    """The drawer reads the delivery with its timeline in a fixed number of queries."""
    first, second = on_duty(demo, 1), on_duty(demo, 2)
    delivery = take_order(demo)
    client.force_login(demo.user("dispatch-gangnam"))
    client.get(f"{BOARD}deliveries/{delivery.pk}/")
    with CaptureQueriesContext(connection) as short:
        client.get(f"{BOARD}deliveries/{delivery.pk}/")
    for rider in (first, second, first, second):
        services.assign_delivery(actor=None, delivery_id=delivery.pk, rider_id=rider.pk)
    with django_assert_max_num_queries(len(short)):
        response = client.get(f"{BOARD}deliveries/{delivery.pk}/")
    assert response.content.count(b"<li>") == 5


# -- the HQ overview -----------------------------------------------------------------------------------------


def test_centers_overview_counts_deliveries_late_and_riders(demo):
    """Per center: deliveries per status, late ones, riders on duty / busy / stale GPS / in all."""
    busy, fresh_idle, no_gps = on_duty(demo, 1), on_duty(demo, 2), on_duty(demo, 3)
    now = timezone.now()
    Rider.objects.filter(pk__in=[busy.pk, fresh_idle.pk]).update(last_position_at=now - timedelta(seconds=5))
    Rider.objects.filter(pk=no_gps.pk).update(last_position_at=None)
    stale = on_duty(demo, 4)
    Rider.objects.filter(pk=stale.pk).update(last_position_at=now - timedelta(minutes=5))
    late = take_order(demo)
    promised_ago(late, minutes=3)
    take_order(demo)
    move_to(take_order(demo), Delivery.Status.ASSIGNED, busy)
    move_to(take_order(demo), Delivery.Status.PICKED_UP, busy)
    move_to(take_order(demo), Delivery.Status.DELIVERED, busy)
    move_to(take_order(demo), Delivery.Status.CANCELLED)
    take_order(demo, center="mapo")

    overview = {c["code"]: c for c in selectors.centers_overview(now=timezone.now())}

    assert list(overview) == ["gangnam", "mapo", "songpa"]
    assert overview["gangnam"]["name"] == "Gangnam"
    assert overview["gangnam"]["deliveries"] == {
        "waiting": 2,
        "assigned": 1,
        "picked_up": 1,
        "delivered": 1,
        "cancelled": 1,
        "late": 1,
    }
    assert overview["gangnam"]["riders"] == {"on_duty": 4, "busy": 1, "stale": 2, "total": 20}
    assert overview["mapo"]["deliveries"]["waiting"] == 1
    assert overview["mapo"]["riders"] == {"on_duty": 0, "busy": 0, "stale": 0, "total": 20}
    assert overview["songpa"]["deliveries"] == dict.fromkeys(overview["songpa"]["deliveries"], 0)


def test_centers_overview_leaves_out_closed_deliveries_of_earlier_days(demo):
    """A delivery closed on an earlier day no longer counts; one still open from then does."""
    closed = move_to(take_order(demo), Delivery.Status.CANCELLED)
    still_open = take_order(demo)
    created_ago(closed, hours=30)
    created_ago(still_open, hours=30)
    (gangnam, *_) = selectors.centers_overview(now=timezone.now())
    assert (gangnam["deliveries"]["cancelled"], gangnam["deliveries"]["waiting"]) == (0, 1)


def test_centers_overview_query_count_does_not_grow_with_centers(demo, django_assert_max_num_queries):
    """Every center's numbers come from at most three queries, however many centers there are."""
    take_order(demo)
    with django_assert_max_num_queries(3):
        selectors.centers_overview(now=timezone.now())
    for code in ("jongno", "yongsan", "nowon"):
        center = Center.objects.create(code=code, name=code.title(), lat=37.57, lng=126.98)
        shop = Shop.objects.create(center=center, name=f"{code} shop", address="Jong-ro 1", lat=37.57, lng=126.98)
        services.create_order(
            actor=None,
            shop_id=shop.pk,
            customer_name="Kim",
            customer_phone="010-2000-3000",
            address="Jong-ro 2",
            items=[{"name": "Tea", "qty": 1}],
        )
    with django_assert_max_num_queries(3):
        overview = selectors.centers_overview(now=timezone.now())
    assert {c["code"]: c["deliveries"]["waiting"] for c in overview} == {
        "gangnam": 1,
        "jongno": 1,
        "mapo": 0,
        "nowon": 1,
        "songpa": 0,
        "yongsan": 1,
    }


@pytest.mark.parametrize("path", ["/dispatch/", "/dispatch/overview/cards/"])
def test_overview_opens_for_hq(client, demo, path):
    """HQ sees a card per center with its counts, on the page and in the cards partial."""
    take_order(demo, center="mapo")
    client.force_login(demo.user("hq"))
    response = client.get(path)
    content = response.content.decode()
    assert response.status_code == 200
    assert content.count('class="center-card') == 3
    mapo = content[content.index('data-center="mapo"') :]
    assert re.search(r'data-count="waiting">1<', mapo[: mapo.index("</article>")])


def test_overview_cards_reload_themselves_through_htmx(client, demo):
    """The cards partial carries its own hx-get and triggers, so the cards htmx swaps in keep refreshing."""
    client.force_login(demo.user("hq"))
    for path in ("/dispatch/", "/dispatch/overview/cards/"):
        tag = re.search(r'<div class="cards" id="cards"[^>]*>', client.get(path).content.decode()).group(0)
        assert 'hx-get="/dispatch/overview/cards/"' in tag
        assert 'hx-trigger="overview-refresh, every 30s"' in tag
        assert 'hx-sync="this:queue last"' in tag


@pytest.mark.parametrize("username", ["dispatch-gangnam", "callcenter", "rider-gangnam-01"])
@pytest.mark.parametrize("path", ["/dispatch/", "/dispatch/overview/cards/"])
def test_overview_refuses_everyone_but_hq(client, demo, username, path):
    """The overview and its cards partial answer 403 to dispatchers, call-center staff and riders."""
    client.force_login(demo.user(username))
    assert client.get(path).status_code == 403

"""The call center's pages: intake on /orders/, today's orders, and the order page (deliveries/views_orders.py)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import ApiToken, StaffProfile
from deliveries import services
from deliveries.forms import local_input
from deliveries.models import Delivery, Order
from deliveries.tests.test_services import assigned_delivery, picked_up_delivery
from realtime.models import Event
from riders import positions
from riders.models import Rider
from tests.support import without_csrf

ORDERS = "/orders/"
HTMX = {"HTTP_HX_REQUEST": "true"}


def gangnam_point(demo) -> tuple[float, float]:
    center = demo.center("gangnam")
    return center.lat + 0.005, center.lng + 0.005


def intake(demo, **overrides) -> dict:
    """A complete intake form for the first gangnam shop, as the browser posts it."""
    lat, lng = gangnam_point(demo)
    data = {
        "key": "form-1",
        "customer_phone": "010-5555-0101",
        "customer_name": "Park Jiho",
        "shop": str(demo.shop("gangnam").pk),
        "address": "Teheran-ro 10, Seoul",
        "lat": f"{lat:.6f}",
        "lng": f"{lng:.6f}",
        "item_name": ["Fried chicken", "Cola"],
        "item_qty": ["2", "1"],
        "note": "Ring twice",
        "promised_at": local_input(timezone.now() + timedelta(minutes=40)),
    }
    data.update(overrides)
    return data


def agent(client, demo, username="callcenter"):
    client.force_login(demo.user(username))
    return client


def staff(django_user_model, demo, username: str, role: str, centers: list[str]):
    user = django_user_model.objects.create_user(username=username, password="x")
    profile = StaffProfile.objects.create(user=user, role=role)
    profile.centers.set([demo.center(code) for code in centers])
    return user


def take(demo, *, phone="010-5555-0101", center="gangnam", name="Park Jiho", **fields) -> Order:
    return services.create_order(
        actor=None,
        shop_id=demo.shop(center).pk,
        customer_name=name,
        customer_phone=phone,
        address=fields.pop("address", "Teheran-ro 10, Seoul"),
        items=[{"name": "Fried chicken", "qty": 1}],
        **fields,
    )


# -- the intake page -------------------------------------------------------------------------------------


def test_orders_page_shows_the_intake_form_and_todays_orders_to_call_center(client, demo):
    """The call center gets the intake form (phone first, one h1), shops of its centers and today's orders."""
    order = take(demo)
    response = agent(client, demo).get(ORDERS)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count("<h1") == 1
    assert html.index('name="customer_phone"') < html.index('name="customer_name"') < html.index('name="shop"')
    assert f'id="order-{order.pk}"' in html
    assert demo.shop("mapo").name in html  # the demo agent serves every center
    assert 'name="key" value="' in html


def test_orders_page_lists_only_shops_and_orders_of_the_agents_centers(client, demo, django_user_model):
    """An agent of gangnam sees gangnam's shops and orders, not mapo's."""
    mapo_order = take(demo, center="mapo")
    gangnam_order = take(demo)
    client.force_login(staff(django_user_model, demo, "cc-gangnam", StaffProfile.Role.CALLCENTER, ["gangnam"]))
    html = client.get(ORDERS).content.decode()
    assert demo.shop("mapo").name not in html
    assert f'id="order-{mapo_order.pk}"' not in html
    assert f'id="order-{gangnam_order.pk}"' in html


@pytest.mark.parametrize("username", ["dispatch-gangnam", "rider-gangnam-01"])
def test_orders_page_refuses_roles_that_take_no_orders_here(client, demo, username):
    """Intake is for the call center and HQ: dispatchers and riders are refused."""
    assert agent(client, demo, username).get(ORDERS).status_code == 403
    assert client.post(ORDERS, intake(demo)).status_code == 403


def test_intake_takes_the_order_and_gives_a_fresh_form(client, demo):
    """A complete form takes the order (source call center) and answers its number, a link and an empty form."""
    response = agent(client, demo).post(ORDERS, intake(demo), **HTMX)
    html = response.content.decode()
    order = Order.objects.get(customer_phone="010-5555-0101")
    assert response.status_code == 200
    assert response["HX-Trigger"] == "order-taken"
    assert f"Order <strong>#{order.pk}</strong> taken" in html
    assert f'href="/orders/{order.pk}/"' in html
    assert 'name="customer_phone" ' in html and "010-5555-0101" not in html  # ready for the next call
    assert 'value="form-1"' not in html  # a new key for the next order
    assert order.items == [{"name": "Fried chicken", "qty": 2}, {"name": "Cola", "qty": 1}]
    assert (order.note, order.created_by) == ("Ring twice", demo.user("callcenter"))
    assert order.delivery.timeline.get().source == "callcenter"


def test_intake_promised_time_defaults_from_settings(client, demo, settings):
    """Left empty, the promised time is now plus SLA_DEFAULT_PROMISE_MINUTES; the new form shows that default."""
    before = timezone.now()
    response = agent(client, demo).post(ORDERS, intake(demo, promised_at=""), **HTMX)
    order = Order.objects.get()
    expected = before + timedelta(minutes=settings.SLA_DEFAULT_PROMISE_MINUTES)
    assert abs((order.promised_at - expected).total_seconds()) < 60
    assert 'name="promised_at" type="datetime-local" value="20' in response.content.decode()


def test_intake_refusal_shows_each_message_by_its_field_and_keeps_what_was_typed(client, demo):
    """Bad phone, no items and a past promise are all reported at once; everything typed comes back."""
    data = intake(
        demo,
        customer_phone="12ab",
        item_name=[""],
        item_qty=["1"],
        promised_at=local_input(timezone.now() - timedelta(hours=2)),
        note="Leave at the door",
    )
    response = agent(client, demo).post(ORDERS, data)
    html = response.content.decode()
    assert response.status_code == 422
    assert not Order.objects.exists()
    assert re.search(r'id="err-phone">Enter a phone number like', html)
    assert 'id="err-items">Add at least one item.' in html
    assert 'id="err-promised">The promised time is in the past.' in html
    for typed in ("12ab", "Park Jiho", "Teheran-ro 10, Seoul", "Leave at the door", data["lat"], 'value="form-1"'):
        assert typed in html
    assert 'aria-invalid="true" aria-describedby="err-phone"' in html


def test_intake_refuses_a_form_without_a_point_on_the_map(client, demo):
    """The intake needs the drop-off point (typed or clicked): the message says how to give it."""
    response = agent(client, demo).post(ORDERS, intake(demo, lat="", lng=""), **HTMX)
    assert "Put the address on the map" in response.content.decode()
    assert not Order.objects.exists()


def test_intake_refuses_a_promised_time_that_is_no_date_in_plain_words(client, demo):
    """A promised time that is no date gets a plain message, and stays as typed."""
    html = agent(client, demo).post(ORDERS, intake(demo, promised_at="tomorrow"), **HTMX).content.decode()
    assert 'id="err-promised">Enter a date and time' in html
    assert 'value="tomorrow"' in html


def test_intake_refuses_typed_coordinates_that_are_no_numbers(client, demo):
    """Lat "north" is refused as no number, and kept in the field."""
    html = agent(client, demo).post(ORDERS, intake(demo, lat="north"), **HTMX).content.decode()
    assert 'id="err-lat">Must be a number.' in html
    assert 'value="north"' in html


def test_intake_outside_the_service_area_needs_an_explicit_confirmation(client, demo, settings):
    """A point beyond CENTER_SERVICE_RADIUS_KM of the center is refused until the agent confirms it."""
    center = demo.center("gangnam")
    far = intake(demo, lat=f"{center.lat + 0.2:.6f}")  # about 22 km north
    html = agent(client, demo).post(ORDERS, far, **HTMX).content.decode()
    assert "outside its 8 km service area" in html
    assert 'name="confirm_outside_area"' in html
    assert not Order.objects.exists()

    html = client.post(ORDERS, {**far, "confirm_outside_area": "1"}, **HTMX).content.decode()
    assert "taken for Park Jiho" in html
    assert Order.objects.count() == 1


def test_intake_warns_of_the_same_phone_and_shop_within_ten_minutes_until_confirmed(client, demo):
    """An order from the same phone (any dashes) at the same shop 10 minutes back is shown; confirming takes it."""
    earlier = take(demo, phone="01055550101")
    html = agent(client, demo).post(ORDERS, intake(demo), **HTMX).content.decode()
    assert f"#{earlier.pk} at" in html
    assert "Yes, take this order again" in html
    assert Order.objects.count() == 1

    html = client.post(ORDERS, {**intake(demo), "confirm_duplicate": "1"}, **HTMX).content.decode()
    assert "taken for Park Jiho" in html
    assert Order.objects.count() == 2


def test_intake_does_not_warn_of_an_order_older_than_ten_minutes_or_at_another_shop(client, demo):
    """An earlier order 11 minutes back, or from another shop, is no duplicate."""
    old = take(demo)
    Order.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=11))
    services.create_order(
        actor=None,
        shop_id=demo.shop("gangnam", 1).pk,
        customer_name="Park Jiho",
        customer_phone="010-5555-0101",
        address="x",
        items=[{"name": "Bibimbap", "qty": 1}],
    )
    html = agent(client, demo).post(ORDERS, intake(demo), **HTMX).content.decode()
    assert "taken for Park Jiho" in html


def test_intake_double_submit_takes_one_order(client, demo):
    """The same form sent twice (one key) takes one order; the second answer names the same order."""
    data = intake(demo)
    first = agent(client, demo).post(ORDERS, data, **HTMX).content.decode()
    second = client.post(ORDERS, data, **HTMX).content.decode()
    order = Order.objects.get()
    assert f"Order <strong>#{order.pk}</strong> taken" in first
    assert f"Order <strong>#{order.pk}</strong> taken" in second


def test_intake_after_a_refusal_the_same_key_takes_the_corrected_order(client, demo):
    """A refused submit records nothing under its key: the corrected form (same key) is taken."""
    agent(client, demo).post(ORDERS, intake(demo, customer_phone="x"), **HTMX)
    html = client.post(ORDERS, intake(demo), **HTMX).content.decode()
    assert "taken for Park Jiho" in html
    assert Order.objects.count() == 1


def test_intake_refuses_a_shop_of_another_center_like_a_missing_one(client, demo, django_user_model):
    """An agent of gangnam posting a mapo shop id (or none, or garbage) is told to choose a shop."""
    client.force_login(staff(django_user_model, demo, "cc-gangnam", StaffProfile.Role.CALLCENTER, ["gangnam"]))
    for shop in (str(demo.shop("mapo").pk), "", "99999999999999999999", "²"):
        html = client.post(ORDERS, intake(demo, shop=shop), **HTMX).content.decode()
        assert 'id="err-shop">Choose the shop the customer orders from.' in html
    assert not Order.objects.exists()


@pytest.mark.parametrize(
    "field,value",
    [("item_qty", ["0"]), ("item_qty", ["x"]), ("customer_name", "\x00"), ("promised_at", "tomorrow"), ("lat", "nan")],
)
def test_intake_answers_odd_input_with_messages_never_a_500(client, demo, field, value):
    """Strange values are refused with a message next to a field."""
    data = intake(demo, **{field: value})
    if field == "item_qty":
        data["item_name"] = ["Cola"]
    response = agent(client, demo).post(ORDERS, data)
    assert response.status_code == 422
    assert 'class="field-error"' in response.content.decode()


# -- the customer look-up ----------------------------------------------------------------------------


def test_customer_lookup_offers_a_known_phones_previous_names_and_addresses(client, demo):
    """Typing a known number (any format) offers its earlier name and address, each place once, newest first."""
    take(demo, phone="010-7777-1234", name="Choi Yejun", address="Nonhyeon-ro 5", lat=37.51, lng=127.03)
    take(demo, phone="010-7777-1234", name="Choi Yejun", address="Nonhyeon-ro 5", lat=37.51, lng=127.03)
    take(demo, phone="010 7777 1234", name="Choi Yejun", address="Office: Gangnam-daero 1")
    response = agent(client, demo).get("/orders/customer/", {"customer_phone": "01077771234"})
    html = response.content.decode()
    assert html.count('class="use-customer"') == 2
    assert html.index("Office: Gangnam-daero 1") < html.index("Nonhyeon-ro 5")
    assert 'data-lat="37.51"' in html


def test_customer_lookup_offers_nothing_for_unknown_or_partial_numbers_or_other_centers(
    client, demo, django_user_model
):
    """No suggestions for a few digits, an unknown phone, or a phone known only in another center."""
    take(demo, phone="010-7777-1234", center="mapo")
    client.force_login(staff(django_user_model, demo, "cc-gangnam", StaffProfile.Role.CALLCENTER, ["gangnam"]))
    for phone in ("010", "010-0000-0000", "010-7777-1234", "\x00" * 50):
        assert "use-customer" not in client.get("/orders/customer/", {"customer_phone": phone}).content.decode()


# -- today's orders ------------------------------------------------------------------------------------


def test_order_list_searches_by_phone_number_and_name(client, demo):
    """The list finds an order by phone digits, by "#number" and by part of the name."""
    kim = take(demo, phone="010-1111-2222", name="Kim Minjun")
    lee = take(demo, phone="010-3333-4444", name="Lee Seojun")
    agent(client, demo)

    def found(q):
        html = client.get("/orders/list/", {"q": q}).content.decode()
        return {pk for pk in (kim.pk, lee.pk) if f'id="order-{pk}"' in html}

    assert found("01033334444") == {lee.pk}
    assert found(f"#{kim.pk}") == {kim.pk}
    assert found("minjun") == {kim.pk}
    assert found("") == {kim.pk, lee.pk}
    assert "No order of today matches" in client.get("/orders/list/", {"q": "nobody"}).content.decode()


def test_order_list_shows_an_empty_state(client, demo):
    """Before the first order the list says so."""
    assert "No orders yet today" in agent(client, demo).get("/orders/list/").content.decode()


def test_order_list_shows_status_rider_and_promised_time(client, demo):
    """Each row shows the delivery's status and rider."""
    delivery = assigned_delivery(demo)
    html = agent(client, demo).get("/orders/list/").content.decode()
    row = html[html.index(f'id="order-{delivery.order_id}"') :]
    assert "Assigned" in row[:800] and delivery.rider.name in row[:800]


def test_order_list_query_count_does_not_grow_with_rows(client, demo, django_assert_num_queries):
    """The list costs the same queries for 1 or 20 orders (session, user, profile, its centers, orders)."""
    take(demo)
    agent(client, demo).get("/orders/list/")  # warm the session
    with django_assert_num_queries(5):
        client.get("/orders/list/")
    for _ in range(20):
        take(demo)
    with django_assert_num_queries(5):
        client.get("/orders/list/")


# -- the order page ------------------------------------------------------------------------------------


def test_order_page_shows_status_rider_and_timeline(client, demo):
    """The order page shows the status, rider and who did what, when and from where."""
    delivery = assigned_delivery(demo)
    html = agent(client, demo).get(f"/orders/{delivery.order_id}/").content.decode()
    assert html.count("<h1") == 1
    assert f"Order #{delivery.order_id}" in html
    assert delivery.rider.name in html
    assert "Assigned</strong> to" in html and "via Dispatcher" in html
    assert 'id="open-cancel"' in html


def test_order_page_query_count_is_pinned(client, demo, django_assert_num_queries):
    """The order page reads the order with everything it shows in a fixed number of queries."""
    delivery = assigned_delivery(demo)
    agent(client, demo).get(f"/orders/{delivery.order_id}/")
    with django_assert_num_queries(6):  # session, user, profile, its centers, order + relations, timeline
        client.get(f"/orders/{delivery.order_id}/")
    with django_assert_num_queries(6):
        client.get(f"/orders/{delivery.order_id}/live/")


def test_order_page_shows_the_cancellation_banner_with_reason_and_source(client, demo):
    """A cancelled order's page and live part start with a banner: who, through what, and why."""
    order = take(demo)
    services.cancel_order(actor=demo.user("dispatch-gangnam"), order_id=order.pk, reason="Shop closed early")
    for path in (f"/orders/{order.pk}/", f"/orders/{order.pk}/live/"):
        html = agent(client, demo).get(path).content.decode()
        banner = html[html.index('id="cancel-banner"') :][:400]
        assert "Dispatch Gangnam" in banner and "(Dispatcher)" in banner and "Shop closed early" in banner
        assert 'id="open-cancel"' not in html


@pytest.mark.parametrize("username", ["callcenter", "hq", "dispatch-gangnam"])
def test_order_page_opens_for_call_center_hq_and_the_centers_dispatcher(client, demo, username):
    order = take(demo)
    assert agent(client, demo, username).get(f"/orders/{order.pk}/").status_code == 200


def test_order_page_answers_404_to_riders_and_other_centers_like_a_missing_order(client, demo, django_user_model):
    """A rider (even the order's own), another center's dispatcher or agent get the same 404 as a missing id."""
    delivery = assigned_delivery(demo)
    order_id = delivery.order_id
    missing = agent(client, demo, "dispatch-mapo").get("/orders/999999999/")
    assert missing.status_code == 404
    for user in (
        demo.user("dispatch-mapo"),
        delivery.rider.user,
        demo.user("rider-mapo-01"),
        staff(django_user_model, demo, "cc-mapo", StaffProfile.Role.CALLCENTER, ["mapo"]),
    ):
        client.force_login(user)
        for path in (f"/orders/{order_id}/", f"/orders/{order_id}/live/", f"/orders/{order_id}/rider/"):
            response = client.get(path)
            assert response.status_code == 404
            missing = client.get(path.replace(str(order_id), "999999999"))
            assert without_csrf(response.content) == without_csrf(missing.content)


def test_order_rider_gives_position_and_straight_line_eta_once_picked_up(client, demo, settings):
    """Picked up: the rider's latest fix and distance / RIDER_TYPICAL_SPEED_KMH; before that nothing."""
    settings.RIDER_TYPICAL_SPEED_KMH = 30
    lat, lng = 37.50, 127.03
    order = take(demo, lat=lat, lng=lng)
    assert agent(client, demo).get(f"/orders/{order.pk}/rider/").json()["position"] is None
    delivery = picked_up_delivery(demo)
    Order.objects.filter(pk=delivery.order_id).update(lat=lat, lng=lng)
    positions.record_fix(
        rider_id=delivery.rider_id, center_code="gangnam", lat=lat + 3 / 111.195, lng=lng, ts=timezone.now()
    )
    body = client.get(f"/orders/{delivery.order_id}/rider/").json()
    assert body["position"]["rider"] == delivery.rider_id
    assert body["eta"]["km"] == pytest.approx(3.0, abs=0.01)
    assert body["eta"]["minutes"] == 6


def test_order_page_offers_no_cancel_to_a_dispatcher_of_a_delivered_order(client, demo):
    """A closed order has no cancel button."""
    delivery = picked_up_delivery(demo)
    services.deliver_delivery(actor=None, delivery_id=delivery.pk)
    assert Delivery.objects.get(pk=delivery.pk).status == "delivered"
    assert 'id="open-cancel"' not in agent(client, demo).get(f"/orders/{delivery.order_id}/").content.decode()


def test_orders_page_query_count_does_not_grow_with_centers_shops_or_orders(client, demo, django_assert_num_queries):
    """The intake page reads shops of all centers in one query, and today's orders in one."""
    take(demo)
    agent(client, demo).get(ORDERS)
    # session, user, profile, its centers, centers, shops, orders
    with django_assert_num_queries(7):
        client.get(ORDERS)
    for center in ("mapo", "songpa", "gangnam"):
        take(demo, center=center)
    with django_assert_num_queries(7):
        client.get(ORDERS)


def test_intake_reports_the_area_and_a_duplicate_beside_other_refusals(client, demo):
    """A far point and a recent order from the phone are reported together with a missing address."""
    take(demo)
    center = demo.center("gangnam")
    data = intake(demo, address="", lat=f"{center.lat + 0.2:.6f}")
    html = agent(client, demo).post(ORDERS, data, **HTMX).content.decode()
    assert 'id="err-address">Enter the delivery address.' in html
    assert 'id="err-area">This point is' in html
    assert 'id="err-duplicate">This phone ordered from' in html


def test_age_filter_is_short():
    """Ages in the list read "now", "4 min", "2 h 05"."""
    from deliveries.templatetags.clock import age

    now = timezone.now()
    assert [age(now - timedelta(minutes=m), now) for m in (0, 4, 125)] == ["now", "4 min", "2 h 05"]


def test_cancel_through_a_cancel_scoped_token_tells_the_assigned_rider_with_the_reason(client, demo):
    """The customer app's cancel (token scoped to orders.cancel) sends the rider assignment.revoked with the reason."""
    delivery = picked_up_delivery(demo)
    raw, digest = ApiToken.generate()
    ApiToken.objects.create(
        name="Customer app", digest=digest, hint=raw[:12], commands=["orders.cancel"], streams=["orders:gangnam"]
    )
    response = client.post(
        f"/api/v1/orders/{delivery.order_id}/cancel",
        {"reason": "Ordered by mistake"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 200
    revoked = Event.objects.get(stream=f"user:{delivery.rider.user_id}", name="assignment.revoked")
    assert revoked.data["reason"] == "cancelled"
    assert revoked.data["cancel_reason"] == "Ordered by mistake"
    assert revoked.data["was_picked_up"] is True


def test_order_rider_falls_back_to_the_stored_position_while_redis_is_down(client, demo, redis_outage):
    """Without Redis the ETA uses the rider's last position stored in PostgreSQL."""
    delivery = picked_up_delivery(demo)
    Order.objects.filter(pk=delivery.order_id).update(lat=37.50, lng=127.03)
    Rider.objects.filter(pk=delivery.rider_id).update(
        last_lat=37.50 + 1 / 111.195, last_lng=127.03, last_position_at=timezone.now()
    )
    body = agent(client, demo).get(f"/orders/{delivery.order_id}/rider/").json()
    assert body["position"]["lat"] == pytest.approx(37.50 + 1 / 111.195)
    assert body["eta"]["km"] == pytest.approx(1.0, abs=0.01)

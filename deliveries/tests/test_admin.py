"""The admin for centers, shops, roles, users, orders, deliveries, timelines and riders."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Group, Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from deliveries import services
from deliveries.models import Delivery, Order, Source, TimelineEntry
from realtime.models import Event
from realtime.services import publish_event
from realtime.streams import parse_stream
from riders.admin import RiderForm
from riders.models import PositionSample, Rider
from riders.services import set_rider_duty

MODELS = sorted(
    # realtime's admin (its own models, API tokens, idempotency records) is tested in realtime/tests.
    (model for model in admin.site._registry if type(admin.site._registry[model]).__module__ != "realtime.admin"),
    key=lambda model: model._meta.label,
)
MODEL_IDS = [model._meta.label for model in MODELS]
ADDABLE = {"auth.Group", "auth.User", "core.Center", "deliveries.Shop", "core.StaffProfile", "riders.Rider"}


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def results(response) -> list:
    return list(response.context["cl"].result_list)


@pytest.fixture(autouse=True)
def _unhashed_static(settings):
    """Render admin pages without a collected static manifest (tests run with DEBUG off)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def superuser(client, demo):
    client.force_login(demo.user("admin"))
    return client


def take_order(demo, *, phone: str = "010-1234-5678", name: str = "Kim Test") -> Order:
    return services.create_order(
        actor=None,
        shop_id=demo.shop().pk,
        customer_name=name,
        customer_phone=phone,
        address="Teheran-ro 1, Seoul",
        items=[{"name": "x", "qty": 1}],
    )


def assign(order: Order, rider: Rider) -> Delivery:
    if not Rider.objects.get(pk=rider.pk).on_duty:
        set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    return services.assign_delivery(actor=None, delivery_id=order.delivery.pk, rider_id=rider.pk)


def deliver(order: Order, rider: Rider) -> Delivery:
    assign(order, rider)
    services.pick_up_delivery(actor=None, delivery_id=order.delivery.pk)
    return services.deliver_delivery(actor=None, delivery_id=order.delivery.pk)


def run_action(client, model, action: str, objects, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [obj.pk for obj in objects], **extra}
    return client.post(admin_url(model, "changelist"), data, follow=True)


@pytest.fixture
def one_of_each(demo):
    """At least one row of every model registered here, made through the services."""
    order = take_order(demo)
    PositionSample.objects.create(rider=demo.rider(), lat=37.5, lng=127.03, recorded_at=timezone.now())
    Group.objects.create(name="Night shift")
    chat = {"text": "Rain on Teheran-ro", "client_msg_id": "admin-test"}
    publish_event(
        actor=demo.user("dispatch-gangnam"), stream=parse_stream("chat:gangnam"), event="chat.message", data=chat
    )
    return order


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_admin_changelist_loads(superuser, one_of_each, model):
    """Every registered model's change list renders for the superuser."""
    response = superuser.get(admin_url(model, "changelist"))
    assert response.status_code == 200


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_admin_change_page_loads(superuser, one_of_each, model):
    """Every registered model's change (or view-only) page renders for the superuser."""
    obj = model._default_manager.first()
    assert obj is not None
    response = superuser.get(admin_url(model, "change", quote(obj.pk)))
    assert response.status_code == 200


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_admin_add_page_exists_only_for_configuration(superuser, model):
    """Configuration can be added in admin; orders, deliveries, timelines and positions cannot."""
    response = superuser.get(admin_url(model, "add"))
    assert response.status_code == (200 if model._meta.label in ADDABLE else 403)


def test_admin_non_staff_redirected_to_login(client, demo):
    """A dispatcher without staff status is sent to the admin login."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(admin_url(Order, "changelist"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_user_admin_shows_role_inline(superuser, demo):
    """A user's change page shows their role and centers."""
    user = demo.user("dispatch-gangnam")
    response = superuser.get(admin_url(type(user), "change", user.pk))
    assert b"Role and centers" in response.content
    assert response.context["inline_admin_formsets"][0].formset.forms[0].instance.role == "dispatcher"


def test_order_search_by_number(superuser, demo):
    """Searching "123" or "#123" finds order 123."""
    order = take_order(demo)
    for term in (str(order.pk), f"#{order.pk}", f" # {order.pk} "):
        response = superuser.get(admin_url(Order, "changelist"), {"q": term})
        assert order in results(response), term


def test_order_search_by_number_keeps_filters(superuser, demo):
    """An order-number search still honours the list filters."""
    order = take_order(demo)
    response = superuser.get(admin_url(Order, "changelist"), {"q": f"#{order.pk}", "status__exact": "cancelled"})
    assert order not in results(response)


def test_order_search_by_phone(superuser, demo):
    """Searching a phone number finds the order, with or without dashes."""
    order = take_order(demo, phone="010-9876-5432")
    other = take_order(demo, phone="010-1111-2222")
    for term in ("010-9876-5432", "01098765432", "9876"):
        found = results(superuser.get(admin_url(Order, "changelist"), {"q": term}))
        assert order in found, term
        assert other not in found, term


def test_order_search_by_phone_digits_matches_the_board_rule(superuser, demo):
    """Admin finds a phone from three digits on, like the dispatch board (one rule for both)."""
    order = take_order(demo, phone="010-9876-5432")
    other = take_order(demo, phone="010-1111-2222")
    found = results(superuser.get(admin_url(Order, "changelist"), {"q": "987"}))
    assert order in found
    assert other not in found


def test_order_search_by_customer_name(superuser, demo):
    """Searching a customer's name finds their order."""
    order = take_order(demo, name="Yoon Unusualname")
    response = superuser.get(admin_url(Order, "changelist"), {"q": "unusualname"})
    assert results(response) == [order]


def test_order_change_page_is_read_only(superuser, demo):
    """An order cannot be edited in admin: its page is view-only and a POST is refused."""
    order = take_order(demo)
    url = admin_url(Order, "change", order.pk)
    assert b'name="_save"' not in superuser.get(url).content
    response = superuser.post(url, {"customer_name": "Changed", "status": "delivered"})
    assert response.status_code == 403
    order.refresh_from_db()
    assert (order.customer_name, order.status) == ("Kim Test", Order.Status.PLACED)


def test_order_cancel_action_asks_for_reason(superuser, demo):
    """The cancel action first shows a confirmation page with a reason and changes nothing."""
    order = take_order(demo)
    response = run_action(superuser, Order, "cancel_selected", [order], index=0)
    assert response.status_code == 200
    assert response.templates[0].name == "admin/deliveries/order/cancel_selected_confirmation.html"
    assert b'name="reason"' in response.content
    assert b"Cancelled by admin" in response.content
    order.refresh_from_db()
    assert order.status == Order.Status.PLACED


def test_order_cancel_action_cancels_through_service(superuser, demo):
    """Confirming cancels the order and delivery, records the timeline and emits order.cancelled."""
    order = take_order(demo)
    response = run_action(superuser, Order, "cancel_selected", [order], apply="yes", reason="Customer called")
    order.refresh_from_db()
    assert (order.status, order.cancel_reason, order.version) == (Order.Status.CANCELLED, "Customer called", 2)
    assert order.delivery.status == Delivery.Status.CANCELLED
    entry = TimelineEntry.objects.get(delivery=order.delivery, action="cancelled")
    assert (entry.source, entry.actor, entry.detail) == (
        Source.ADMIN,
        demo.user("admin"),
        {"reason": "Customer called"},
    )
    assert Event.objects.filter(name="order.cancelled", data__id=order.pk).exists()
    assert f"Cancelled: #{order.pk}." in messages_of(response)


def test_order_cancel_action_releases_assigned_rider(superuser, demo):
    """Cancelling an assigned order through admin frees the rider's load."""
    order = take_order(demo)
    assign(order, demo.rider())
    run_action(superuser, Order, "cancel_selected", [order], apply="yes", reason="Shop closed")
    assert demo.rider().load == 0


@pytest.mark.parametrize("final", ["delivered", "cancelled"])
def test_order_cancel_action_refuses_finished_order(superuser, demo, final):
    """Cancelling a delivered or cancelled order shows the service's refusal and changes nothing."""
    order = take_order(demo)
    if final == "delivered":
        deliver(order, demo.rider())
    else:
        services.cancel_order(actor=None, order_id=order.pk, reason="First")
    order.refresh_from_db()
    before = (order.status, order.version, order.cancel_reason, order.delivery.timeline.count())
    response = run_action(superuser, Order, "cancel_selected", [order], apply="yes", reason="Again")
    assert response.status_code == 200
    assert messages_of(response) == [f"#{order.pk}: The order is already {final}."]
    order.refresh_from_db()
    assert (order.status, order.version, order.cancel_reason, order.delivery.timeline.count()) == before


def test_order_cancel_action_reports_each_order(superuser, demo):
    """In a batch, open orders are cancelled and each refusal is reported by order number."""
    open_order, done_order = take_order(demo), take_order(demo)
    deliver(done_order, demo.rider())
    response = run_action(superuser, Order, "cancel_selected", [open_order, done_order], apply="yes", reason="Storm")
    assert set(messages_of(response)) == {
        f"#{done_order.pk}: The order is already delivered.",
        f"Cancelled: #{open_order.pk}.",
    }
    assert Order.objects.get(pk=open_order.pk).status == Order.Status.CANCELLED
    assert Order.objects.get(pk=done_order.pk).status == Order.Status.DELIVERED


def test_order_cancel_action_requires_reason(superuser, demo):
    """An empty reason redisplays the confirmation with an error and cancels nothing."""
    order = take_order(demo)
    response = run_action(superuser, Order, "cancel_selected", [order], apply="yes", reason="  ")
    assert response.context["form"].errors["reason"]
    order.refresh_from_db()
    assert order.status == Order.Status.PLACED


def test_delivery_changelist_queries_do_not_grow_with_rows(superuser, demo):
    """The delivery list costs the same number of queries for 1 row as for 6 (no N+1)."""
    assign(take_order(demo), demo.rider(number=1))
    url = admin_url(Delivery, "changelist")
    superuser.get(url)  # warm per-process caches (content types, permissions)
    with CaptureQueriesContext(connection) as few:
        superuser.get(url)
    for number in range(2, 7):
        assign(take_order(demo), demo.rider(number=number))
    with CaptureQueriesContext(connection) as many:
        response = superuser.get(url)
    assert len(response.context["cl"].result_list) >= 6
    assert len(many) == len(few)


def test_delivery_search_by_order_number_and_rider(superuser, demo):
    """Deliveries are found by order number and by their rider's name."""
    order = take_order(demo)
    rider = demo.rider(number=3)
    assign(order, rider)
    for term in (f"#{order.pk}", rider.name):
        assert order.delivery in results(superuser.get(admin_url(Delivery, "changelist"), {"q": term})), term


def test_delivery_change_page_shows_timeline(superuser, demo):
    """A delivery's page shows its timeline read-only, with no way to add or delete entries."""
    order = take_order(demo)
    assign(order, demo.rider())
    response = superuser.get(admin_url(Delivery, "change", order.delivery.pk))
    timeline = response.context["inline_admin_formsets"][0]
    assert [form.original.action for form in timeline] == ["created", "assigned"]
    assert not timeline.has_add_permission
    assert not timeline.has_delete_permission
    assert b'name="_save"' not in response.content


def test_delivery_pick_up_and_deliver_actions(superuser, demo):
    """The pick-up and deliver actions move an assigned delivery through the services."""
    order = take_order(demo)
    rider = demo.rider()
    assign(order, rider)
    response = run_action(superuser, Delivery, "pick_up_selected", [order.delivery])
    assert f"Marked picked up: #{order.pk}." in messages_of(response)
    assert Delivery.objects.get(pk=order.delivery.pk).status == Delivery.Status.PICKED_UP
    response = run_action(superuser, Delivery, "deliver_selected", [order.delivery])
    assert f"Marked delivered: #{order.pk}." in messages_of(response)
    delivery = Delivery.objects.get(pk=order.delivery.pk)
    assert (delivery.status, delivery.order.status) == (Delivery.Status.DELIVERED, Order.Status.DELIVERED)
    assert demo.rider().load == 0
    entries = TimelineEntry.objects.filter(delivery=delivery, source=Source.ADMIN)
    assert list(entries.values_list("action", flat=True)) == ["picked_up", "delivered"]
    assert Event.objects.filter(name="delivery.delivered", data__id=delivery.pk).exists()


def test_delivery_unassign_action(superuser, demo):
    """Unassigning takes an assigned delivery back to waiting and frees the rider."""
    order = take_order(demo)
    assign(order, demo.rider())
    response = run_action(superuser, Delivery, "unassign_selected", [order.delivery])
    assert f"Unassigned: #{order.pk}." in messages_of(response)
    delivery = Delivery.objects.get(pk=order.delivery.pk)
    assert (delivery.status, delivery.rider) == (Delivery.Status.WAITING, None)
    assert demo.rider().load == 0


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("unassign_selected", "Only an assigned delivery can be unassigned; this one is waiting."),
        ("pick_up_selected", "Only an assigned delivery can be picked up; this one is waiting."),
        ("deliver_selected", "Only a picked-up delivery can be delivered; this one is waiting."),
    ],
)
def test_delivery_action_refuses_illegal_transition(superuser, demo, action, message):
    """A delivery action on a waiting delivery shows the refusal and changes nothing."""
    order = take_order(demo)
    response = run_action(superuser, Delivery, action, [order.delivery])
    assert messages_of(response) == [f"#{order.pk}: {message}"]
    delivery = Delivery.objects.get(pk=order.delivery.pk)
    assert (delivery.status, delivery.version, delivery.timeline.count()) == (Delivery.Status.WAITING, 1, 1)


def test_delivery_actions_need_change_permission(client, demo):
    """A staff user with only view permission sees deliveries but none of the command actions."""
    user = demo.user("hq")
    user.user_permissions.add(Permission.objects.get(content_type__app_label="deliveries", codename="view_delivery"))
    client.force_login(user)
    response = client.get(admin_url(Delivery, "changelist"))
    assert response.status_code == 200
    assert response.context["action_form"] is None


def test_timeline_search_by_order_number(superuser, demo):
    """Timeline entries are found by their order's number."""
    order = take_order(demo)
    response = superuser.get(admin_url(TimelineEntry, "changelist"), {"q": f"#{order.pk}"})
    assert [entry.delivery_id for entry in results(response)] == [order.delivery.pk]


def test_rider_start_shift_action(superuser, demo):
    """Start shift puts an off-duty rider on duty through the service and emits rider.status."""
    rider = demo.rider(number=5)
    response = run_action(superuser, Rider, "start_shift", [rider])
    assert f"Shift started: {rider.name}." in messages_of(response)
    rider.refresh_from_db()
    assert (rider.on_duty, rider.version) == (True, 2)
    assert Event.objects.filter(name="rider.status", data__id=rider.pk, data__on_duty=True).exists()


def test_rider_shift_actions_refuse_with_message(superuser, demo):
    """Ending the shift of a rider with deliveries, or starting one twice, is refused by name."""
    busy, idle = demo.rider(number=6), demo.rider(number=7)
    assign(take_order(demo), busy)
    set_rider_duty(actor=None, rider_id=idle.pk, on_duty=True)
    response = run_action(superuser, Rider, "end_shift", [busy])
    assert messages_of(response) == [f"{busy.name}: {busy.name} still has 1 active deliveries."]
    response = run_action(superuser, Rider, "start_shift", [idle])
    assert messages_of(response) == [f"{idle.name}: {idle.name} is already on duty."]
    assert Rider.objects.get(pk=busy.pk).on_duty


def test_rider_live_state_not_editable(superuser, demo):
    """Saving a rider's profile leaves duty and load alone, whatever the form sends."""
    rider = demo.rider(number=8)
    response = superuser.post(
        admin_url(Rider, "change", rider.pk),
        {
            "user": rider.user_id,
            "center": rider.center_id,
            "name": "Renamed Rider",
            "phone": rider.phone,
            "vehicle": "bicycle",
            "on_duty": "on",
            "load": "5",
        },
    )
    assert response.status_code == 302
    rider.refresh_from_db()
    assert (rider.name, rider.vehicle, rider.on_duty, rider.load) == ("Renamed Rider", "bicycle", False, 0)


def test_rider_profile_save_keeps_live_state_written_meanwhile(superuser, demo, monkeypatch):
    """Saving a rider's profile does not overwrite load or position that a service wrote during the save."""
    rider = demo.rider(number=9)
    clean = RiderForm.clean

    def clean_while_rider_works(form):
        Rider.objects.filter(pk=rider.pk).update(load=2, version=F("version") + 1, last_lat=37.0)
        return clean(form)

    monkeypatch.setattr(RiderForm, "clean", clean_while_rider_works)
    response = superuser.post(
        admin_url(Rider, "change", rider.pk),
        {"center": rider.center_id, "name": "Renamed Rider", "phone": rider.phone, "vehicle": rider.vehicle},
    )
    assert response.status_code == 302
    rider.refresh_from_db()
    # Version 1, then 2 by the service meanwhile, then 3 by the rename.
    assert (rider.name, rider.load, rider.version, rider.last_lat) == ("Renamed Rider", 2, 3, 37.0)


def test_rider_center_change_refused_while_on_duty(superuser, demo):
    """An on-duty rider cannot be moved to another center; an off-duty one can."""
    on_duty, off_duty = demo.rider(number=10), demo.rider(number=11)
    set_rider_duty(actor=None, rider_id=on_duty.pk, on_duty=True)
    mapo = demo.center("mapo")
    for rider in (on_duty, off_duty):
        superuser.post(
            admin_url(Rider, "change", rider.pk),
            {"center": mapo.pk, "name": rider.name, "phone": rider.phone, "vehicle": rider.vehicle},
        )
    assert Rider.objects.get(pk=on_duty.pk).center.code == "gangnam"
    assert Rider.objects.get(pk=off_duty.pk).center.code == "mapo"

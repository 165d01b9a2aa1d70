"""Saving riders, shops and centers in the admin goes through their services, events included."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from core.models import Center, StaffProfile
from deliveries.models import Shop
from deliveries.tests.test_services import make_order
from realtime.models import Event
from riders.models import Rider


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


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def form_errors_of(response) -> list[str]:
    """The errors of the re-rendered admin form (a refused save shows the form again)."""
    return list(response.context["adminform"].form.non_field_errors())


def events_after(last_id: int) -> list[tuple[str, str, dict]]:
    return [(e.stream, e.name, e.data) for e in Event.objects.filter(id__gt=last_id).order_by("id")]


def last_event_id() -> int:
    return Event.objects.order_by("-id").values_list("id", flat=True).first() or 0


def rider_form(rider: Rider, **changes) -> dict:
    return {"center": rider.center_id, "name": rider.name, "phone": rider.phone, "vehicle": rider.vehicle, **changes}


def shop_form(shop: Shop, **changes) -> dict:
    fields = ("center", "name", "address", "phone", "lat", "lng", "prep_minutes")
    form = {field: getattr(shop, f"{field}_id" if field == "center" else field) for field in fields}
    return {**form, "is_active": "on", **changes}


def test_rider_admin_rename_emits_rider_status(superuser, demo):
    """Renaming a rider in the admin bumps its version and emits rider.status with the new name."""
    rider = demo.rider(number=5)
    since = last_event_id()

    response = superuser.post(admin_url(Rider, "change", rider.pk), rider_form(rider, name="Renamed Rider"))

    assert response.status_code == 302
    assert Rider.objects.get(pk=rider.pk).version == rider.version + 1
    ((stream, name, data),) = events_after(since)
    assert (stream, name, data["name"], data["version"]) == ("riders:gangnam", "rider.status", "Renamed Rider", 2)


def test_rider_admin_add_emits_rider_status(superuser, demo):
    """Adding a rider in the admin creates them off duty and emits rider.status on their center's stream."""
    user = get_user_model().objects.create_user("rider-new")
    since = last_event_id()

    response = superuser.post(
        admin_url(Rider, "add"),
        {"user": user.pk, "center": demo.center("mapo").pk, "name": "New Rider", "phone": "", "vehicle": "car"},
    )

    assert response.status_code == 302
    rider = Rider.objects.get(user=user)
    assert (rider.name, rider.on_duty, rider.version) == ("New Rider", False, 1)
    assert [(s, n, d["id"]) for s, n, d in events_after(since)] == [("riders:mapo", "rider.status", rider.pk)]


def test_rider_admin_move_emits_on_both_centers(superuser, demo):
    """Moving an off-duty rider emits rider.status, naming the new center, on the old and the new stream."""
    rider = demo.rider(number=6)
    since = last_event_id()

    superuser.post(admin_url(Rider, "change", rider.pk), rider_form(rider, center=demo.center("mapo").pk))

    assert sorted((s, d["center"]) for s, _, d in events_after(since)) == [
        ("riders:gangnam", "mapo"),
        ("riders:mapo", "mapo"),
    ]


def test_rider_admin_unchanged_save_emits_nothing(superuser, demo):
    """Saving a rider's form without changes keeps the version and emits no event."""
    rider = demo.rider(number=7)
    since = last_event_id()

    response = superuser.post(admin_url(Rider, "change", rider.pk), rider_form(rider))

    assert response.status_code == 302
    assert Rider.objects.get(pk=rider.pk).version == rider.version
    assert events_after(since) == []


def test_rider_admin_reports_service_refusal_and_saves_nothing(client, demo):
    """A staff user allowed by Django but not by BROS gets the refusal on the form, with what they typed."""
    rider = demo.rider(number=5)
    user = get_user_model().objects.create_user("staff-mapo", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="riders", codename__endswith="_rider"))
    StaffProfile.objects.create(user=user, role=StaffProfile.Role.DISPATCHER).centers.set([demo.center("mapo")])
    client.force_login(user)
    since, logged = last_event_id(), LogEntry.objects.count()

    response = client.post(admin_url(Rider, "change", rider.pk), rider_form(rider, name="Renamed Rider"))

    assert response.status_code == 200  # the form again, with what was typed: nothing is lost
    assert form_errors_of(response) == ["You do not manage the riders of this center."]
    assert response.context["adminform"].form["name"].value() == "Renamed Rider"
    assert Rider.objects.get(pk=rider.pk).name == rider.name
    assert (events_after(since), LogEntry.objects.count()) == ([], logged)


def test_shop_admin_rename_emits_updates_of_todays_deliveries(superuser, demo):
    """Renaming a shop in the admin bumps its deliveries of today with delivery.updated and order.updated."""
    shop = demo.shop("gangnam")
    order = make_order(demo)
    since = last_event_id()

    response = superuser.post(admin_url(Shop, "change", shop.pk), shop_form(shop, name="Renamed Shop"))

    assert response.status_code == 302
    assert Shop.objects.get(pk=shop.pk).version == shop.version + 1
    events = {(s, n, d["id"]): d for s, n, d in events_after(since)}
    assert events[("deliveries:gangnam", "delivery.updated", order.delivery.pk)]["shop_name"] == "Renamed Shop"
    assert events[("orders:gangnam", "order.updated", order.pk)]["shop_name"] == "Renamed Shop"


def test_shop_admin_reports_refused_move_with_open_deliveries(superuser, demo):
    """Moving a shop with open deliveries to another center is refused with the service's words."""
    shop = demo.shop("gangnam")
    make_order(demo)

    response = superuser.post(admin_url(Shop, "change", shop.pk), shop_form(shop, center=demo.center("mapo").pk))

    assert form_errors_of(response) == [f"{shop.name} has open deliveries: it cannot move to another center now."]
    assert Shop.objects.get(pk=shop.pk).center.code == "gangnam"


def test_center_admin_saves_through_service_with_code_fixed(superuser, demo):
    """Editing a center changes its name and version; its code cannot be changed from the form."""
    center = demo.center("mapo")

    response = superuser.post(
        admin_url(Center, "change", center.pk), {"code": "elsewhere", "name": "Mapo HQ", "lat": center.lat, "lng": 1.5}
    )

    assert response.status_code == 302
    after = Center.objects.get(pk=center.pk)
    assert (after.code, after.name, after.lng, after.version) == ("mapo", "Mapo HQ", 1.5, center.version + 1)

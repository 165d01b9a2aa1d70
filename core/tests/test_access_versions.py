"""The admin's save paths bump the access version of every user whose role, centers or activity change."""

from __future__ import annotations

import pytest
from django.test import Client

from core.access_versions import parse_version, versions_key
from core.models import Center, StaffProfile
from core.redis_connection import get_redis
from riders.models import Rider


def version(user) -> int:
    return parse_version(get_redis().hget(versions_key(), str(user.pk)))


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run the on-commit callbacks (the bumps) of what happens inside, as a real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def admin_site(demo) -> Client:
    client = Client()
    client.force_login(demo.user("admin"))
    return client


def test_staff_profile_save_in_the_admin_bumps_the_users_access_version(demo, admin_site, committed):
    """Removing a dispatcher from Gangnam in the staff-profile admin bumps their version once it commits."""
    dispatcher = demo.user("dispatch-gangnam")
    profile = StaffProfile.objects.get(user=dispatcher)
    before = version(dispatcher)
    with committed():
        response = admin_site.post(
            f"/admin/core/staffprofile/{profile.pk}/change/",
            {"user": dispatcher.pk, "role": "dispatcher", "centers": [demo.center("mapo").pk]},
        )
    assert response.status_code == 302, response.content[:2000]
    assert list(profile.centers.values_list("code", flat=True)) == ["mapo"]
    assert version(dispatcher) == before + 1


def user_change_data(user, **changes) -> dict:
    """The user admin's change form as the browser posts it back (with the role inline)."""
    profile = StaffProfile.objects.filter(user=user).first()
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "staff-TOTAL_FORMS": "1",
        "staff-INITIAL_FORMS": "1" if profile else "0",
        "staff-MIN_NUM_FORMS": "0",
        "staff-MAX_NUM_FORMS": "1",
        "staff-0-user": user.pk,
    }
    if profile:
        data |= {
            "staff-0-id": profile.pk,
            "staff-0-role": profile.role,
            "staff-0-centers": [c.pk for c in profile.centers.all()],
        }
    data |= changes
    return {k: v for k, v in data.items() if v is not None}


def test_deactivating_a_user_in_the_admin_bumps_their_access_version(demo, admin_site, committed):
    """Unticking "active" on the user admin bumps the version (their sockets then close)."""
    dispatcher = demo.user("dispatch-gangnam")
    before = version(dispatcher)
    with committed():
        data = user_change_data(dispatcher, is_active=None)
        response = admin_site.post(f"/admin/auth/user/{dispatcher.pk}/change/", data)
    assert response.status_code == 302, response.content[:3000]
    dispatcher.refresh_from_db()
    assert (dispatcher.is_active, version(dispatcher)) == (False, before + 1)


def test_moving_a_rider_in_the_admin_bumps_their_access_version(demo, admin_site, committed):
    """Moving an off-duty rider to another center bumps their version; editing their phone does not."""
    rider = demo.rider()
    before = version(rider.user)
    fields = {"user": rider.user_id, "name": rider.name, "phone": "010-9999-0000", "vehicle": rider.vehicle}
    with committed():
        response = admin_site.post(f"/admin/riders/rider/{rider.pk}/change/", fields | {"center": rider.center_id})
    assert response.status_code == 302, response.content[:2000]
    assert version(rider.user) == before
    mapo = Center.objects.get(code="mapo")
    with committed():
        response = admin_site.post(f"/admin/riders/rider/{rider.pk}/change/", fields | {"center": mapo.pk})
    assert response.status_code == 302, response.content[:2000]
    assert Rider.objects.get(pk=rider.pk).center_id == mapo.pk
    assert version(rider.user) == before + 1

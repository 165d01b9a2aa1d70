"""The demo data set of design.md, loaded by `seed_demo`."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from core.models import Center, StaffProfile
from deliveries.models import Shop
from riders.models import Rider


def demo_state() -> dict:
    """Everything seed_demo owns, as comparable plain data."""
    User = get_user_model()
    return {
        "centers": list(Center.objects.order_by("code").values_list("code", "name", "lat", "lng")),
        "shops": list(Shop.objects.order_by("center__code", "name").values_list("center__code", "name", "address")),
        "users": list(
            User.objects.order_by("username").values_list("username", "is_staff", "is_superuser", "password")
        ),
        "profiles": sorted(
            (p.user.username, p.role, tuple(sorted(c.code for c in p.centers.all())))
            for p in StaffProfile.objects.select_related("user").prefetch_related("centers")
        ),
        "riders": list(Rider.objects.order_by("user__username").values_list("user__username", "center__code", "name")),
    }


def test_seed_demo_creates_the_documented_data(demo, settings):
    """seed_demo creates the three Seoul centers, their shops, 20 riders each and every demo account."""
    settings.DEBUG = True
    call_command("seed_demo")
    assert set(Center.objects.values_list("code", flat=True)) == {"gangnam", "mapo", "songpa"}
    for code in ("gangnam", "mapo", "songpa"):
        assert Rider.objects.filter(center__code=code).count() == 20
        assert Shop.objects.filter(center__code=code).exists()
        assert StaffProfile.objects.get(user__username=f"dispatch-{code}").role == "dispatcher"
        assert get_user_model().objects.filter(username=f"rider-{code}-20").exists()
    assert get_user_model().objects.get(username="admin").is_superuser
    assert StaffProfile.objects.get(user__username="hq").role == "hq"
    callcenter = StaffProfile.objects.get(user__username="callcenter")
    assert callcenter.role == "callcenter" and callcenter.centers.count() == 3
    assert demo.user("rider-mapo-07").check_password("demo")


def test_seed_demo_twice_gives_the_same_data(demo, settings):
    """Running seed_demo again changes nothing."""
    settings.DEBUG = True
    call_command("seed_demo")
    first = demo_state()
    call_command("seed_demo")
    assert demo_state() == first


def test_seed_demo_restores_changed_demo_data(demo, settings):
    """A renamed center or a removed profile center comes back to the demo state."""
    settings.DEBUG = True
    Center.objects.filter(code="mapo").update(name="Renamed")
    StaffProfile.objects.get(user__username="callcenter").centers.clear()
    call_command("seed_demo")
    assert Center.objects.get(code="mapo").name == "Mapo"
    assert StaffProfile.objects.get(user__username="callcenter").centers.count() == 3


def test_seed_demo_refuses_without_debug(db, settings):
    """With DEBUG off, demo accounts with a known password are refused unless --force is given."""
    settings.DEBUG = False
    with pytest.raises(CommandError, match="--force"):
        call_command("seed_demo")
    call_command("seed_demo", "--force")
    assert Center.objects.filter(code="gangnam").exists()

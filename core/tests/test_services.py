"""Specification of `save_center` (core/services.py): centers edited in the admin."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from core.exceptions import InvalidTransition, StaleVersion
from core.models import Center
from core.services import save_center


def fields_of(center: Center, **changes) -> dict:
    return {"code": center.code, "name": center.name, "lat": center.lat, "lng": center.lng, **changes}


def test_save_center_changes_name_and_map_centre(demo):
    """A center's name and map centre change with one version up."""
    center = demo.center("mapo")

    saved = save_center(actor=demo.user("hq"), center_id=center.pk, **fields_of(center, name="Mapo West", lat=37.5))

    after = Center.objects.get(pk=center.pk)
    assert (after.name, after.lat, after.version) == ("Mapo West", 37.5, center.version + 1)
    assert saved.version == after.version


def test_save_center_unchanged_keeps_version(demo):
    """Saving a center unchanged keeps its version."""
    center = demo.center("mapo")
    save_center(actor=None, center_id=center.pk, **fields_of(center))
    assert Center.objects.get(pk=center.pk).version == center.version


def test_save_center_creates_center(demo):
    """A new center starts at version 1."""
    center = save_center(actor=demo.user("hq"), code="jongno", name="Jongno", lat=37.57, lng=126.98)
    assert (center.code, center.version) == ("jongno", 1)


def test_save_center_refuses_new_code(demo):
    """A center's code names its streams and pages: it never changes."""
    center = demo.center("mapo")
    with pytest.raises(InvalidTransition):
        save_center(actor=None, center_id=center.pk, **fields_of(center, code="mapo-2", name="Mapo 2"))
    assert Center.objects.get(pk=center.pk).name == center.name


def test_save_center_refuses_bad_code_for_new_center(demo):
    """A new center's code must be a valid stream room."""
    with pytest.raises(ValidationError):
        save_center(actor=None, code="Not A Room", name="X", lat=0, lng=0)
    assert not Center.objects.filter(name="X").exists()


@pytest.mark.parametrize("username", ["dispatch-mapo", "callcenter"])
def test_save_center_refuses_anyone_but_hq(demo, username):
    """Only HQ manages centers."""
    center = demo.center("mapo")
    with pytest.raises(PermissionDenied):
        save_center(actor=demo.user(username), center_id=center.pk, **fields_of(center, name="Mine"))
    assert Center.objects.get(pk=center.pk).name == center.name


def test_save_center_refuses_stale_version(demo):
    """An edit based on an older version of the center is refused."""
    center = demo.center("mapo")
    save_center(actor=None, center_id=center.pk, **fields_of(center, name="Mapo West"))
    with pytest.raises(StaleVersion):
        save_center(actor=None, center_id=center.pk, **fields_of(center, lat=1.0), expected_version=center.version)

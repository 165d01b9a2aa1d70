"""The dispatcher board keeps its riders current while an admin edits them in Django admin.

The admin saves through the rider services, whose `rider.status` events reach the open board
through the outbox, Redis, the hub and the consumer: no reload.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from riders.models import Rider

from . import test_board
from .test_board import live, open_assign_dialog, rider_on_duty, take_order

browse = test_board.browse  # the fixture: a logged-in page of the live server

pytestmark = pytest.mark.browser


def rider_item(page, rider_id: int):
    return page.locator(f"#riders li[data-rider='{rider_id}']")


def rider_option(page, rider_id: int):
    return page.locator(f"select[name=rider] option[value='{rider_id}']")


def test_board_shows_rider_renamed_in_admin_without_reload(browse, demo_tx):
    """Renaming a rider on the admin's change page renames them in an open board's panel, filter and dialog."""
    rider = rider_on_duty(demo_tx, 3, km_from_shop=1.0)
    delivery = take_order(demo_tx)
    page = browse("dispatch-gangnam")
    live(page)
    expect(rider_item(page, rider.pk).locator(".name")).to_have_text(rider.name)
    page.evaluate("() => { window.__notReloaded = true; }")

    admin = browse("admin", f"/admin/riders/rider/{rider.pk}/change/")
    admin.fill("#id_name", "Renamed Rider")
    admin.click("input[name=_save]")
    expect(admin.locator(".messagelist .success")).to_contain_text("Renamed Rider")

    expect(rider_item(page, rider.pk).locator(".name")).to_have_text("Renamed Rider")
    expect(rider_option(page, rider.pk)).to_have_text("Renamed Rider")
    dialog = open_assign_dialog(page, delivery)
    expect(dialog.locator(f".candidates [data-rider='{rider.pk}']")).to_contain_text("Renamed Rider")
    assert page.evaluate("() => window.__notReloaded") is True


def test_board_shows_rider_added_in_admin_without_reload(browse, demo_tx):
    """A rider added through the admin's add form appears, off duty, in an open board's panel and filter."""
    user = get_user_model().objects.create_user("rider-gangnam-new", password="demo")
    page = browse("dispatch-gangnam")
    live(page)
    riders_before = page.locator("#riders li").count()
    page.evaluate("() => { window.__notReloaded = true; }")

    admin = browse.session("admin")
    response = admin.request.post(
        "/admin/riders/rider/add/",
        form={
            "csrfmiddlewaretoken": admin.csrf,
            "user": user.pk,
            "center": demo_tx.center("gangnam").pk,
            "name": "Aaron Newcomer",
            "phone": "010-5555-6666",
            "vehicle": "bicycle",
        },
        max_redirects=0,
    )

    assert response.status == 302, response.text()
    added = Rider.objects.get(user=user)
    expect(rider_item(page, added.pk).locator(".name")).to_have_text("Aaron Newcomer")
    expect(rider_item(page, added.pk).locator(".status")).to_have_text("off duty")
    expect(page.locator("#riders li")).to_have_count(riders_before + 1)
    expect(rider_option(page, added.pk)).to_have_text("Aaron Newcomer")
    assert page.evaluate("() => window.__notReloaded") is True


def test_board_drops_rider_moved_to_another_center_in_admin(browse, demo_tx):
    """Moving an off-duty rider to another center in the admin takes them off the old center's open board."""
    rider = demo_tx.rider("gangnam", 4)
    page = browse("dispatch-gangnam")
    live(page)
    expect(rider_item(page, rider.pk)).to_be_visible()

    admin = browse.session("admin")
    response = admin.request.post(
        f"/admin/riders/rider/{rider.pk}/change/",
        form={
            "csrfmiddlewaretoken": admin.csrf,
            "center": demo_tx.center("mapo").pk,
            "name": rider.name,
            "phone": rider.phone,
            "vehicle": rider.vehicle,
        },
        max_redirects=0,
    )

    assert response.status == 302, response.text()
    expect(rider_item(page, rider.pk)).to_have_count(0)
    expect(rider_option(page, rider.pk)).to_have_count(0)

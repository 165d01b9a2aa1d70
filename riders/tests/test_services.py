"""Specification of the rider services (riders/services.py): shifts, and profiles edited in the admin.

Successes run through `verify_action` and refusals inside `refused`, shared with the delivery
service tests so both check events and "nothing changed" the same way.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError

from core.exceptions import InvalidTransition, StaleVersion
from deliveries.services import assign_delivery, deliver_delivery
from deliveries.tests.test_services import (
    assigned_delivery,
    current_rider,
    on_duty_rider,
    picked_up_delivery,
    refused,
    state_fingerprint,
    user_without_profile,
    verify_action,
)
from riders.models import Rider
from riders.services import create_rider, set_rider_duty, update_rider_profile


def test_set_rider_duty_starts_shift(demo):
    """Starting a shift puts an off-duty rider on duty and available, one version up."""
    rider = demo.rider("gangnam", 1)
    assert (rider.on_duty, rider.status) == (False, Rider.Status.OFFLINE)

    action = verify_action(
        lambda: set_rider_duty(actor=demo.user("dispatch-gangnam"), rider_id=rider.pk, on_duty=True, expected_version=1)
    )

    after = current_rider(rider.pk)
    assert (after.on_duty, after.status, after.load, after.version) == (True, "available", 0, rider.version + 1)
    assert action.result.pk == rider.pk


def test_set_rider_duty_emits_rider_status_only(demo):
    """A shift change emits one rider.status on riders:<center> and writes no delivery timeline."""
    rider = demo.rider("gangnam", 1)

    action = verify_action(lambda: set_rider_duty(actor=demo.user("dispatch-gangnam"), rider_id=rider.pk, on_duty=True))

    assert action.streams == {"riders:gangnam": ["rider.status"]}
    assert action.event("rider.status").data["on_duty"] is True
    assert action.timeline == []


def test_set_rider_duty_ends_shift(demo):
    """Ending the shift of an on-duty rider with no deliveries takes them offline, one version up."""
    rider = on_duty_rider(demo)

    action = verify_action(
        lambda: set_rider_duty(actor=demo.user("dispatch-gangnam"), rider_id=rider.pk, on_duty=False)
    )

    after = current_rider(rider.pk)
    assert (after.on_duty, after.status, after.version) == (False, "offline", rider.version + 1)
    assert action.event("rider.status").data["status"] == "offline"


def test_set_rider_duty_by_rider_themself(demo):
    """A rider starts and ends their own shift."""
    rider = demo.rider("gangnam", 3)

    verify_action(lambda: set_rider_duty(actor=rider.user, rider_id=rider.pk, on_duty=True))
    verify_action(lambda: set_rider_duty(actor=rider.user, rider_id=rider.pk, on_duty=False))

    assert current_rider(rider.pk).version == rider.version + 2


def test_set_rider_duty_ends_shift_after_last_delivery(demo):
    """Once a rider's last delivery is delivered they may end their shift."""
    delivery = picked_up_delivery(demo)
    rider = current_rider(delivery.rider_id)
    deliver_delivery(actor=rider.user, delivery_id=delivery.pk)

    verify_action(lambda: set_rider_duty(actor=rider.user, rider_id=rider.pk, on_duty=False))

    assert current_rider(rider.pk).on_duty is False


@pytest.mark.parametrize("username", ["hq", "admin"])
def test_set_rider_duty_by_hq_in_any_center(demo, username):
    """HQ (and superusers) manage shifts in every center."""
    rider = demo.rider("songpa", 7)

    action = verify_action(lambda: set_rider_duty(actor=demo.user(username), rider_id=rider.pk, on_duty=True))

    assert action.streams == {"riders:songpa": ["rider.status"]}


def test_set_rider_duty_without_actor(demo):
    """The system (actor None) may start a shift."""
    rider = demo.rider("mapo", 2)

    verify_action(lambda: set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True))

    assert current_rider(rider.pk).on_duty is True


def test_set_rider_duty_refuses_starting_shift_twice(demo):
    """Starting the shift of a rider already on duty raises InvalidTransition with the current rider."""
    rider = on_duty_rider(demo)

    with refused(InvalidTransition) as info:
        set_rider_duty(actor=demo.user("dispatch-gangnam"), rider_id=rider.pk, on_duty=True)

    assert (info.value.entity.pk, info.value.entity.on_duty) == (rider.pk, True)


def test_set_rider_duty_refuses_ending_shift_of_off_duty_rider(demo):
    """Ending the shift of a rider already off duty raises InvalidTransition."""
    rider = demo.rider("gangnam", 1)

    with refused(InvalidTransition):
        set_rider_duty(actor=demo.user("dispatch-gangnam"), rider_id=rider.pk, on_duty=False)


@pytest.mark.parametrize("factory", [assigned_delivery, picked_up_delivery])
def test_set_rider_duty_refuses_ending_shift_with_active_deliveries(demo, factory):
    """A rider with an assigned or picked-up delivery cannot go off duty (InvalidTransition)."""
    rider = current_rider(factory(demo).rider_id)

    with refused(InvalidTransition) as info:
        set_rider_duty(actor=rider.user, rider_id=rider.pk, on_duty=False)

    assert info.value.entity.load == 1


def test_set_rider_duty_refuses_stale_version(demo):
    """A shift change with a version one behind raises StaleVersion with the current rider."""
    rider = on_duty_rider(demo)  # version 2

    with refused(StaleVersion) as info:
        set_rider_duty(actor=demo.user("dispatch-gangnam"), rider_id=rider.pk, on_duty=False, expected_version=1)

    assert (info.value.entity.pk, info.value.entity.version, info.value.entity.on_duty) == (rider.pk, 2, True)


def test_set_rider_duty_stale_version_names_who_changed_rider(demo):
    """A stale shift change names who changed the rider last (here the dispatcher who assigned them)."""
    rider = on_duty_rider(demo)
    delivery = assigned_delivery(demo)  # dispatch-gangnam assigns rider 1: rider version 3
    assert delivery.rider_id == rider.pk

    with refused(StaleVersion) as info:
        set_rider_duty(actor=demo.user("hq"), rider_id=rider.pk, on_duty=False, expected_version=2)

    assert info.value.changed_by is not None
    assert info.value.changed_by["by"] == "Dispatch Gangnam"


def test_set_rider_duty_refuses_rider_changing_another_riders_shift(demo):
    """A rider cannot start or end another rider's shift (PermissionDenied)."""
    rider, other = demo.rider("gangnam", 1), demo.rider("gangnam", 2)

    with refused(PermissionDenied):
        set_rider_duty(actor=rider.user, rider_id=other.pk, on_duty=True)


@pytest.mark.parametrize("username", ["dispatch-mapo", "callcenter"])
def test_set_rider_duty_refuses_staff_who_do_not_dispatch_center(demo, username):
    """Another center's dispatcher and the call center cannot change a rider's shift."""
    rider = demo.rider("gangnam", 1)

    with refused(PermissionDenied):
        set_rider_duty(actor=demo.user(username), rider_id=rider.pk, on_duty=True)


def test_set_rider_duty_refuses_user_without_profile(demo):
    """A user with no staff profile cannot change a rider's shift."""
    rider = demo.rider("gangnam", 1)

    with refused(PermissionDenied):
        set_rider_duty(actor=user_without_profile(), rider_id=rider.pk, on_duty=True)


def test_set_rider_duty_checks_permission_before_revealing_state(demo):
    """An outsider is refused with PermissionDenied even when the change would also be an illegal transition."""
    rider = on_duty_rider(demo)

    with refused(PermissionDenied):
        set_rider_duty(actor=demo.user("dispatch-mapo"), rider_id=rider.pk, on_duty=True)


def test_set_rider_duty_off_duty_rider_can_no_longer_be_assigned(demo):
    """After their shift ends a rider is refused new assignments."""
    rider = on_duty_rider(demo)
    set_rider_duty(actor=rider.user, rider_id=rider.pk, on_duty=False)
    delivery = assigned_delivery(demo, rider=2)

    with refused(InvalidTransition):
        assign_delivery(actor=demo.user("dispatch-gangnam"), delivery_id=delivery.pk, rider_id=rider.pk)


# -- profiles (admin) -------------------------------------------------------------------------


def profile(rider: Rider, **changes) -> dict:
    return {"name": rider.name, "phone": rider.phone, "vehicle": rider.vehicle, **changes}


def test_update_rider_profile_renames_rider(demo):
    """Renaming a rider bumps its version and emits rider.status with the new name on its center's stream."""
    rider = demo.rider("gangnam", 2)

    action = verify_action(
        lambda: update_rider_profile(
            actor=demo.user("dispatch-gangnam"), rider_id=rider.pk, **profile(rider, name="Kim Renamed")
        )
    )

    assert current_rider(rider.pk).version == rider.version + 1
    assert action.streams == {"riders:gangnam": ["rider.status"]}
    assert action.event("rider.status").data["name"] == "Kim Renamed"


def test_update_rider_profile_keeps_duty_and_load(demo):
    """A profile edit of a rider at work leaves duty and load as they are."""
    delivery = assigned_delivery(demo, rider=2)

    verify_action(
        lambda: update_rider_profile(actor=None, rider_id=delivery.rider_id, **profile(delivery.rider, vehicle="car"))
    )

    after = current_rider(delivery.rider_id)
    assert (after.vehicle, after.on_duty, after.load) == ("car", True, 1)


def test_update_rider_profile_unchanged_changes_nothing(demo):
    """Saving an unchanged profile neither bumps the version nor emits an event."""
    rider = demo.rider("gangnam", 2)
    before = state_fingerprint()

    update_rider_profile(actor=None, rider_id=rider.pk, **profile(rider), center_id=rider.center_id)

    assert state_fingerprint() == before


def test_update_rider_profile_moves_off_duty_rider_on_both_streams(demo):
    """Moving an off-duty rider emits rider.status, naming the new center, on the old and the new center's stream."""
    rider = demo.rider("gangnam", 2)

    action = verify_action(
        lambda: update_rider_profile(
            actor=demo.user("hq"), rider_id=rider.pk, **profile(rider), center_id=demo.center("mapo").pk
        )
    )

    assert action.streams == {"riders:gangnam": ["rider.status"], "riders:mapo": ["rider.status"]}
    assert {event.data["center"] for event in action.events} == {"mapo"}


def test_update_rider_profile_refuses_moving_on_duty_rider(demo):
    """An on-duty rider cannot move to another center: their board and deliveries would stay behind."""
    rider = on_duty_rider(demo, "gangnam", 2)
    with refused(InvalidTransition):
        update_rider_profile(
            actor=demo.user("hq"), rider_id=rider.pk, **profile(rider), center_id=demo.center("mapo").pk
        )


def test_update_rider_profile_refuses_stale_version(demo):
    """An edit based on an older version of the rider is refused."""
    rider = on_duty_rider(demo, "gangnam", 2)
    with refused(StaleVersion):
        update_rider_profile(actor=None, rider_id=rider.pk, **profile(rider, name="X"), expected_version=1)


def test_update_rider_profile_refuses_dispatcher_of_another_center(demo):
    """A dispatcher of another center may not edit the rider."""
    rider = demo.rider("gangnam", 2)
    with refused(PermissionDenied):
        update_rider_profile(actor=demo.user("dispatch-mapo"), rider_id=rider.pk, **profile(rider, name="X"))


def test_update_rider_profile_refuses_move_to_center_actor_does_not_manage(demo):
    """A dispatcher may not move their rider into a center they do not dispatch."""
    rider = demo.rider("gangnam", 2)
    with refused(PermissionDenied):
        update_rider_profile(
            actor=demo.user("dispatch-gangnam"), rider_id=rider.pk, **profile(rider), center_id=demo.center("mapo").pk
        )


def test_update_rider_profile_refuses_blank_name(demo):
    """A rider needs a name."""
    rider = demo.rider("gangnam", 2)
    with refused(ValidationError):
        update_rider_profile(actor=None, rider_id=rider.pk, **profile(rider, name=""))


def test_create_rider_adds_off_duty_rider_with_event(demo):
    """A new rider starts off duty at version 1, announced by rider.status on its center's stream."""
    user = get_user_model().objects.create_user("rider-gangnam-new")

    action = verify_action(
        lambda: create_rider(
            actor=demo.user("dispatch-gangnam"), user_id=user.pk, center_id=demo.center("gangnam").pk, name="New Rider"
        )
    )

    rider = current_rider(action.result.pk)
    assert (rider.name, rider.on_duty, rider.load, rider.version, rider.vehicle) == (
        "New Rider",
        False,
        0,
        1,
        "motorcycle",
    )
    assert action.streams == {"riders:gangnam": ["rider.status"]}


def test_create_rider_refuses_user_who_is_a_rider_already(demo):
    """One user is at most one rider."""
    with refused(ValidationError):
        create_rider(
            actor=None, user_id=demo.rider("gangnam", 2).user_id, center_id=demo.center("mapo").pk, name="Twin"
        )


def test_create_rider_refuses_dispatcher_of_another_center(demo):
    """A dispatcher adds riders only to the centers they dispatch."""
    user = get_user_model().objects.create_user("rider-mapo-new")
    with refused(PermissionDenied):
        create_rider(actor=demo.user("dispatch-gangnam"), user_id=user.pk, center_id=demo.center("mapo").pk, name="X")

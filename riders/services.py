"""Commands on riders: shifts (duty on/off) and profiles (admin). GPS fixes go through `riders.positions`."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from core import access
from core.access_versions import access_changed
from core.actors import actor_label
from core.exceptions import InvalidTransition, StaleVersion
from core.models import Center
from core.retention import delete_in_batches
from realtime.events import rider_moved_event, rider_status_event
from realtime.outbox import emit
from riders.models import PositionSample, Rider
from riders.positions import forget_position


@transaction.atomic
def set_rider_duty(*, actor, rider_id: int, on_duty: bool, expected_version: int | None = None) -> Rider:
    """Start or end a rider's shift. Locks the rider.

    A rider with active deliveries cannot go off duty: they would be lost to the board.
    """
    # Lock without a join, then read the center: a row joined by the locking query may predate
    # the wait for the lock (see deliveries.services._lock_delivery).
    rider = Rider.objects.select_for_update(no_key=True).get(pk=rider_id)
    access.authorize(actor, "riders.duty", center_code=rider.center.code, rider_id=rider.pk)
    if expected_version is not None and expected_version != rider.version:
        changed_by = {"by": rider.changed_by, "at": rider.changed_at.isoformat()} if rider.changed_at else None
        raise StaleVersion(
            f"The rider changed since you looked (version {expected_version}, now {rider.version}).",
            entity=rider,
            changed_by=changed_by,
        )
    if rider.on_duty == on_duty:
        raise InvalidTransition(f"{rider.name} is already {'on' if on_duty else 'off'} duty.", entity=rider)
    if not on_duty and rider.load:
        raise InvalidTransition(f"{rider.name} still has {rider.load} active deliveries.", entity=rider)
    rider.on_duty = on_duty
    rider.version += 1
    rider.changed_by, rider.changed_at = actor_label(actor), timezone.now()
    rider.save(update_fields=["on_duty", "version", "changed_by", "changed_at"])
    emit([rider_status_event(rider)])
    if not on_duty:  # an off-duty rider leaves the live map
        center_code = rider.center.code
        transaction.on_commit(lambda: forget_position(rider_id=rider.pk, center_code=center_code), robust=True)
    return rider


PROFILE_FIELDS = ("name", "phone", "vehicle")


def _check_may_manage(actor, center_code: str) -> None:
    access.authorize(actor, "riders.manage", center_code=center_code)


def _clean_profile(rider: Rider) -> None:
    """Refuse a profile the columns cannot hold (lengths, vehicle, a user who is a rider already)."""
    rider.full_clean(exclude=["on_duty", "load", "version", "changed_by", "changed_at"])


@transaction.atomic
def create_rider(*, actor, user_id: int, center_id: int, name: str, phone: str = "", vehicle: str = "") -> Rider:
    """Add an off-duty rider to a center; its board sees the new rider at once. Locks nothing."""
    center = Center.objects.filter(pk=center_id).first()
    if center is None:
        raise ValidationError({"center": "No such center."})
    _check_may_manage(actor, center.code)
    rider = Rider(user_id=user_id, center=center, name=name, phone=phone, vehicle=vehicle or Rider.Vehicle.MOTORCYCLE)
    _clean_profile(rider)
    rider.changed_by, rider.changed_at = actor_label(actor), timezone.now()
    rider.save()
    emit([rider_status_event(rider)])
    access_changed(rider.user_id)  # the user now reads the center's rider streams
    return rider


@transaction.atomic
def update_rider_profile(
    *,
    actor,
    rider_id: int,
    name: str,
    phone: str,
    vehicle: str,
    center_id: int | None = None,
    expected_version: int | None = None,
) -> Rider:
    """Change a rider's name, phone, vehicle or (off duty only) center. Locks the rider.

    Duty, load and position are not touched: other services change them concurrently. Moving a
    rider emits `rider.status` on the new center's stream and on the old one, whose boards drop a
    rider whose `center` is no longer theirs. Saving an unchanged profile changes nothing.
    """
    rider = Rider.objects.select_for_update(no_key=True).get(pk=rider_id)
    old_center = rider.center  # read after the lock, see set_rider_duty
    _check_may_manage(actor, old_center.code)
    if expected_version is not None and expected_version != rider.version:
        raise StaleVersion(
            f"The rider changed since you looked (version {expected_version}, now {rider.version}).",
            entity=rider,
            changed_by={"by": rider.changed_by, "at": rider.changed_at.isoformat()} if rider.changed_at else None,
        )
    new_center = old_center
    if center_id is not None and center_id != old_center.pk:
        new_center = Center.objects.filter(pk=center_id).first()
        if new_center is None:
            raise ValidationError({"center": "No such center."})
        _check_may_manage(actor, new_center.code)
        if rider.on_duty:
            raise InvalidTransition(f"End {rider.name}'s shift before moving them to another center.", entity=rider)
    changes = {"name": name, "phone": phone, "vehicle": vehicle}
    if all(getattr(rider, field) == value for field, value in changes.items()) and new_center == old_center:
        return rider
    for field, value in changes.items():
        setattr(rider, field, value)
    rider.center = new_center
    _clean_profile(rider)
    rider.version += 1
    rider.changed_by, rider.changed_at = actor_label(actor), timezone.now()
    rider.save(update_fields=[*PROFILE_FIELDS, "center", "version", "changed_by", "changed_at"])
    events = [rider_status_event(rider)]
    if new_center != old_center:
        events.append(rider_moved_event(rider, from_center_code=old_center.code))
        access_changed(rider.user_id)  # their open sockets leave the old center's streams
    emit(events)
    return rider


def prune_position_samples(*, before) -> int:
    """Delete GPS history recorded before `before` (riders' latest positions are on `Rider`)."""
    return delete_in_batches(PositionSample.objects.filter(recorded_at__lt=before))
